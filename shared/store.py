"""Everything in Redis: codes, refresh tokens, the revocation list, replay markers, rate limits.

The only module that imports redis. Every redis failure reaches callers as
`StoreUnavailable` (rendered as 503 temporarily_unavailable with a Retry-After).

The grant scripts are where the single-use rules live, because only an atomic step can
enforce them: `redeem_code` decides whether a code may be redeemed by this request
(client, redirect_uri, PKCE, a sign-out since) and `rotate_refresh` whether a refresh
token may be rotated by it (client, scope, family revoked). They answer with an outcome
(`CodeOutcome`, `RotationOutcome`) that the token endpoint only translates into its
answer; it does not check these rules again. What the store cannot know (the user still
exists, the client's grant types) stays with the caller.

One user, one hash slot. Every key of a user's grants (codes, refresh tokens, their
markers, the revocations of the user's tokens, families and sign-outs) carries the
user's bucket tag `{ttt}` (`tag_of(sub)`: 12 bits of the SHA-256 of the public subject,
4096 buckets), and codes and refresh tokens carry it in their first three characters
(`new_token`), so the token endpoint computes every key from the token it is given and
every script declares every key it touches: the same scripts run on one Redis, behind
Sentinel, and on a Redis Cluster. A bucket's revocations live in one hash,
``revoked:{ttt}``, together with the bucket's generation (``g``): the time from which the
bucket's state is complete. Nothing issued before it is accepted (`is_revoked`, the grant
scripts), so losing Redis's data (FLUSHALL, a restore of an older backup, a failover to a
replica that missed writes) can sign everybody out but never revive a revoked token or a
spent code. A bucket found without a generation starts one at that moment; a primary
found to be another server than the one that acknowledged the last writes, without a
replica's continuity, starts a new one everywhere (`_Guard`).

Durability. Where the deployment has replicas (`replicas=`, default all of them), every
single-use step and revocation is followed by WAIT on the same connection and is only
acknowledged when every replica has it: a failover then cannot bring back a spent code, a
rotated refresh token or a lifted revocation. A shortfall is `StoreUnavailable` (503, retry
in a second), never a silent success. One primary without replicas: one round trip per
grant, as before.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, \
    RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import Unavailable
from .redis_url import CLUSTER, SENTINEL, RedisTarget, parse_url, redact

log = logging.getLogger("konnect.store")

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX = frozenset("0123456789abcdef")

BUCKETS = 4096
ALL_TAGS = tuple(f"{i:03x}" for i in range(BUCKETS))
TOKEN_LENGTH = 46   # tag (3) + 256 random bits (43 base64url characters)


def tag_of(value: str) -> str:
    """The bucket tag of a user (its public `sub`) or of any other key material: 3 hex."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:3]


def new_token(sub: str) -> str:
    """A code or refresh token for a grant of `sub`: the bucket tag, then 256 random bits
    (base64url). The tag routes it to the user's hash slot without a lookup."""
    return tag_of(_check_ident("sub", sub)) + secrets.token_urlsafe(32)


def token_tag(token: str) -> Optional[str]:
    """The bucket tag a code or refresh token carries, or None (not one of ours)."""
    if isinstance(token, str) and len(token) == TOKEN_LENGTH and set(token[:3]) <= _HEX:
        return token[:3]
    return None


# -- Lua ----------------------------------------------------------------------------------

# Shared by the scripts. A bucket (``revoked:{ttt}``, a hash) holds the generation ``g``
# and the revocations of its users: ``j:<jti>`` and ``f:<family>`` (value: until when),
# ``s:<sub>`` ("<not-before> <until>"). The generation is the time from which the bucket's
# state is complete; a bucket without one lost its state (or is new) and starts one now.
_LUA_BUCKET = """
local function bucket(key, now, a, b)
  local v = redis.call('HMGET', key, 'g', a or 'g', b or 'g')
  local g = tonumber(v[1])
  if not g then
    redis.call('HSET', key, 'g', now)
    g = now
  end
  return g, v[2], v[3]
end
local function not_before(v)
  if not v then return false end
  return tonumber(string.match(v, '^(%d+)'))
end
"""

_LUA_GRANT = _LUA_BUCKET + """
local function has_offline(r)
  if type(r['scopes']) ~= 'table' then return false end
  for _, scope in ipairs(r['scopes']) do
    if scope == 'offline_access' then return true end
  end
  return false
end
local function grant_ok(r)
  return type(r) == 'table' and type(r['family']) == 'string'
    and type(r['sub']) == 'string' and r['sub'] ~= ''
    and type(r['created']) == 'number' and r['created'] > 0
end
-- when the grant was first stored here: 'stored' for a family that began elsewhere
-- (a Konnect refresh token exchanged), else its start
local function stored(r)
  return tonumber(r['stored']) or r['created']
end
"""

# put_code, put_refresh, put_client: SET NX EX, after making sure the bucket has a
# generation (so what is stored now is not taken for a survivor of a loss later).
# KEYS: the key, its bucket. ARGV: value, ttl, now.
_PUT = """
redis.call('HSETNX', KEYS[2], 'g', ARGV[3])
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 1 end
return 0
"""

# A code redemption in one round trip (Store.redeem_code). KEYS: the code, its redemption
# marker, the new refresh token, the bucket. ARGV: client_id, redirect_uri, the S256
# challenge of the request's verifier ("" for none or a malformed one), "1" if a
# code_verifier was sent, "1" if the client is public, "1" if the client may get a refresh
# token, the access token's jti, now, the access and refresh token lifetimes.
#
# The code goes (GETDEL) whatever follows: a code is tried once (RFC 6749 §4.1.2). The
# rules, in order (RFC 6749 §4.1.3, RFC 7636 §4.6, OIDC Core §3.1.3.2):
#   - it was issued in the bucket's current generation ('stale' otherwise);
#   - the code was issued to this client, for this redirect_uri (when it named one);
#   - PKCE: a challenge was sent and this verifier's S256 equals it; a verifier without a
#     challenge is refused, and so is a public client without one (RFC 9700 §2.1.1). The
#     challenge is compared as a SHA-256 output, which an attacker cannot steer, so plain
#     string equality leaks nothing useful;
#   - its subject has not signed out since it was issued (auth_time after the not-before).
# Only then are the redemption marker ({family, jti, exp, sub}: a replay revokes them) and,
# for an offline_access grant with time left whose client may refresh, the refresh
# token's record (the code's own record: a refresh finds the same grant) written.
# Returns {outcome, value}: 'unknown' (no code; value: its marker when it was redeemed
# before), 'invalid', 'stale', 'wrong_client', 'wrong_redirect_uri',
# 'verifier_without_challenge', 'pkce_required', 'pkce_mismatch', 'signed_out', 'clash'
# (the refresh token exists: nothing written), 'issued', 'issued_with_refresh'.
_REDEEM_CODE = _LUA_GRANT + """
local value = redis.call('GETDEL', KEYS[1])
if not value then
  local marker = redis.call('GET', KEYS[2])
  if marker then return {'replayed', marker} end
  return {'unknown', false}
end
local ok, r = pcall(cjson.decode, value)
if not ok or not grant_ok(r) then return {'invalid', value} end
local now = tonumber(ARGV[8])
local g, nbf = bucket(KEYS[4], now, 's:' .. r['sub'])
if stored(r) < g then return {'stale', value} end
if r['client_id'] ~= ARGV[1] then return {'wrong_client', value} end
local uri = r['redirect_uri']
if type(uri) == 'string' and uri ~= '' and uri ~= ARGV[2] then
  return {'wrong_redirect_uri', value}
end
local challenge = r['code_challenge']
if type(challenge) ~= 'string' or challenge == '' then
  if ARGV[4] == '1' then return {'verifier_without_challenge', value} end
  if ARGV[5] == '1' then return {'pkce_required', value} end
elseif challenge ~= ARGV[3] then
  return {'pkce_mismatch', value}
end
nbf = not_before(nbf)
if nbf and (tonumber(r['auth_time']) or 0) <= nbf then
  return {'signed_out', value}
end
local access_ttl, refresh_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local lifetime, outcome = access_ttl, 'issued'
local remaining = r['created'] + refresh_ttl - now
if ARGV[6] == '1' and has_offline(r) and remaining > 0 then
  if not redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then
    return {'clash', value}
  end
  lifetime, outcome = refresh_ttl, 'issued_with_refresh'
end
redis.call('SET', KEYS[2], cjson.encode({family = r['family'], jti = ARGV[7],
           exp = now + lifetime, sub = r['sub']}), 'EX', lifetime)
return {outcome, value}
"""

# A refresh-token rotation in one round trip (Store.rotate_refresh). KEYS: the presented
# token, its spent marker, the new token, the bucket. ARGV: client_id, now, the refresh
# token lifetime, then the requested scopes.
#
# The rules (RFC 6749 §6, RFC 6819 §5.2.2.3, RFC 9700 §4.14.2):
#   - a token that is gone but has a spent marker was rotated before: 'reused' (value: the
#     marker, {family, sub}; the caller revokes the family);
#   - another client's token, or scopes beyond the grant's, are refused WITHOUT taking the
#     token ('wrong_client', 'wider_scope'): a put-back after the fact would race the
#     rightful client's concurrent refresh (taken for reuse) and an RFC 7009 revocation
#     (which found no token, answered 200, and the put-back revived it);
#   - otherwise the token is taken and its spent marker set; a grant from before the
#     bucket's generation is 'stale', a revoked family 'revoked'; else the record is stored
#     behind the new token for the family's remaining time ('rotated', with 1 when stored:
#     not when the family's time is up).
# Returns {outcome, value, stored, not-before}.
_ROTATE_REFRESH = _LUA_GRANT + """
local pttl = redis.call('PTTL', KEYS[1])
local value = redis.call('GET', KEYS[1])
if not value then
  local spent = redis.call('GET', KEYS[2])
  if spent then return {'reused', spent, 0, false} end
  return {'unknown', false, 0, false}
end
local ok, r = pcall(cjson.decode, value)
if not ok or not grant_ok(r) then
  redis.call('DEL', KEYS[1])
  return {'invalid', value, 0, false}
end
if r['client_id'] ~= ARGV[1] then return {'wrong_client', value, 0, false} end
if #ARGV > 3 then
  local have = {}
  if type(r['scopes']) == 'table' then
    for _, scope in ipairs(r['scopes']) do have[scope] = true end
  end
  for i = 4, #ARGV do
    if not have[ARGV[i]] then return {'wider_scope', value, 0, false} end
  end
end
redis.call('DEL', KEYS[1])
if pttl > 0 then
  redis.call('SET', KEYS[2], cjson.encode({family = r['family'], sub = r['sub']}), 'PX', pttl)
end
local now = tonumber(ARGV[2])
local g, revoked, nbf = bucket(KEYS[4], now, 'f:' .. r['family'], 's:' .. r['sub'])
if stored(r) < g then return {'stale', value, 0, false} end
if revoked then return {'revoked', value, 0, false} end
nbf = not_before(nbf) or false
local remaining = r['created'] + tonumber(ARGV[3]) - now
if has_offline(r) and remaining > 0 then
  if not redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then
    return {'clash', value, 0, nbf}
  end
  return {'rotated', value, 1, nbf}
end
return {'rotated', value, 0, nbf}
"""

# A refresh token taken for good (revocation, the successor nobody received): the record
# goes (GETDEL) and, in the same step, a spent marker {family, sub} takes its place for the
# record's remaining life, so a later presentation is recognised as reuse (RFC 6819
# §5.2.2.3). KEYS: the token, its spent marker.
_TAKE_REFRESH = """
local pttl = redis.call('PTTL', KEYS[1])
local value = redis.call('GETDEL', KEYS[1])
if not value then return false end
local ok, r = pcall(cjson.decode, value)
if pttl > 0 and ok and type(r) == 'table' and type(r['family']) == 'string' then
  redis.call('SET', KEYS[2], cjson.encode({family = r['family'], sub = r['sub']}), 'PX', pttl)
end
return value
"""

# A refresh-token record that is still a grant: of the current generation, its family not
# revoked. KEYS: the token, the bucket. ARGV: now.
_PEEK_REFRESH = _LUA_GRANT + """
local value = redis.call('GET', KEYS[1])
if not value then return false end
local ok, r = pcall(cjson.decode, value)
if not ok or not grant_ok(r) then return false end
local g, revoked = bucket(KEYS[2], tonumber(ARGV[1]), 'f:' .. r['family'])
if stored(r) < g or revoked then return false end
return value
"""

# A revocation (Store.revoke_jti, revoke_family, revoke_subject). KEYS: the bucket. ARGV:
# now, the field, until when, and for a subject its not-before. An entry only ever grows:
# a later, weaker call can never un-revoke what an earlier one revoked (the not-before
# only moves forward, the until only later). Then a few random entries are sampled and
# the expired ones dropped: the bucket holds the generation and never expires, so this is
# how it sheds what is over. Returns the not-before (subjects) or the until.
_REVOKE = _LUA_BUCKET + """
local now = tonumber(ARGV[1])
bucket(KEYS[1], now)
local field, until_ = ARGV[2], tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], field)
local result
if ARGV[4] == '' then
  if current and (tonumber(current) or 0) > until_ then until_ = tonumber(current) end
  redis.call('HSET', KEYS[1], field, string.format('%d', until_))
  result = until_
else
  local nbf = tonumber(ARGV[4])
  if current then
    local cn, cu = string.match(current, '^(%d+) (%d+)$')
    if cn and tonumber(cn) > nbf then nbf = tonumber(cn) end
    if cu and tonumber(cu) > until_ then until_ = tonumber(cu) end
  end
  redis.call('HSET', KEYS[1], field, string.format('%d %d', nbf, until_))
  result = nbf
end
local sample = redis.call('HRANDFIELD', KEYS[1], 8, 'WITHVALUES')
for i = 1, #sample, 2 do
  if sample[i] ~= 'g' and sample[i] ~= field then
    local u = tonumber(string.match(sample[i + 1], '(%d+)$'))
    if u and u < now then redis.call('HDEL', KEYS[1], sample[i]) end
  end
end
return string.format('%d', result)
"""

# Is a token revoked? KEYS: the bucket. ARGV: now, its iat (auth_time for a logon), its
# jti, family ("" for none), subject. Issued before the generation: revoked (fail closed).
_IS_REVOKED = _LUA_BUCKET + """
local now, iat = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'g', 'j:' .. ARGV[3], 'f:' .. ARGV[4], 's:' .. ARGV[5])
local g = tonumber(v[1])
if not g then
  redis.call('HSET', KEYS[1], 'g', now)
  g = now
end
if iat < g then return 1 end
if (ARGV[3] ~= '' and v[2]) or (ARGV[4] ~= '' and v[3]) then return 1 end
local nbf = not_before(v[4])
if nbf and iat <= nbf then return 1 end
return 0
"""

# A replay marker (Store.first_use). KEYS: the marker, the bucket. ARGV: ttl, now, when the
# item was issued ("": not known). An item from before the generation may have been used
# already (its marker lost with the rest): refused. Without an issue time there is nothing
# to compare: the caller's own clock reading is no issue time (a generation begun by
# another process, or by this call's first connection, a moment after the caller read
# its clock would refuse a first use).
_FIRST_USE = _LUA_BUCKET + """
local g = bucket(KEYS[2], tonumber(ARGV[2]))
if ARGV[3] ~= '' and tonumber(ARGV[3]) < g then return 0 end
if redis.call('SET', KEYS[1], '1', 'EX', ARGV[1], 'NX') then return 1 end
return 0
"""

# A dynamically registered client, unless registered before the bucket's generation (its
# deletion may have been lost). KEYS: the client, the bucket. ARGV: now.
_GET_CLIENT = _LUA_BUCKET + """
local value = redis.call('GET', KEYS[1])
if not value then return false end
local g = bucket(KEYS[2], tonumber(ARGV[1]))
local ok, r = pcall(cjson.decode, value)
if not ok or type(r) ~= 'table' or (tonumber(r['issued_at']) or 0) < g then return false end
return value
"""

# A rate-limit hit: INCR, and the window starts at the first hit (EXPIRE NX).
_HIT = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return count
"""

# DECR only an existing, positive counter: DECR on a key that expired since the hit would
# create it at -1 with no TTL (a credit that never ends).
_GIVE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""

# A new generation for a bucket (lost writes, the operator's `new-generation`): it only
# moves forward. KEYS: the bucket. ARGV: the new generation.
_ADVANCE = """
local g = tonumber(redis.call('HGET', KEYS[1], 'g'))
if not g or g < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'g', ARGV[1]) end
return 1
"""


# Every bucket given without a generation (the first connection to an empty database), or
# moved forward to one (a loss): KEYS are buckets of one slot, ARGV[1] the generation.
_INIT = """
for _, key in ipairs(KEYS) do redis.call('HSETNX', key, 'g', ARGV[1]) end
return 1
"""
_ADVANCE_ALL = """
for _, key in ipairs(KEYS) do
  local g = tonumber(redis.call('HGET', key, 'g'))
  if not g or g < tonumber(ARGV[1]) then redis.call('HSET', key, 'g', ARGV[1]) end
end
return 1
"""


# The group's shared ephemeral material (Store.shared_material). KEYS: its key. ARGV: the
# lifetime in seconds, "1" to start that lifetime again, the record to store when there is
# none ("": store nothing), the SHA-1 of the record the caller holds ("": none).
# Returns 1 when the stored record is the caller's, else the stored record, or false.
_SHARED_MATERIAL = """
local value = redis.call('GET', KEYS[1])
if not value then
  if ARGV[3] == '' then return false end
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
  value = ARGV[3]
elseif ARGV[2] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if redis.sha1hex(value) == ARGV[4] then return 1 end
return value
"""


class _Script:
    """A Lua script run with EVALSHA; on NOSCRIPT (Redis restarted, flushed, or another
    node) with EVAL, which also caches it there. Both go to the node of the first key."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


_SCRIPTS = {name: _Script(src) for name, src in {
    "put": _PUT, "redeem_code": _REDEEM_CODE, "rotate_refresh": _ROTATE_REFRESH,
    "take_refresh": _TAKE_REFRESH, "peek_refresh": _PEEK_REFRESH, "revoke": _REVOKE,
    "is_revoked": _IS_REVOKED, "first_use": _FIRST_USE, "get_client": _GET_CLIENT,
    "hit": _HIT, "give_back": _GIVE_BACK, "advance": _ADVANCE,
    "shared_material": _SHARED_MATERIAL}.items()}


# -- outcomes -----------------------------------------------------------------------------

class CodeOutcome(enum.Enum):
    """What `Store.redeem_code` found and did (the rules: `_REDEEM_CODE`)."""

    UNKNOWN = "unknown"                      # no such code (never issued, or expired)
    REPLAYED = "replayed"                    # redeemed before: `spent` says what it issued
    INVALID = "invalid"                      # a record no grant can come from
    STALE = "stale"                          # issued before Redis lost state (generation)
    WRONG_CLIENT = "wrong_client"
    WRONG_REDIRECT_URI = "wrong_redirect_uri"
    VERIFIER_WITHOUT_CHALLENGE = "verifier_without_challenge"
    PKCE_REQUIRED = "pkce_required"          # a public client's code without a challenge
    PKCE_MISMATCH = "pkce_mismatch"          # no, a malformed or a wrong code_verifier
    SIGNED_OUT = "signed_out"                # its subject signed out after the sign-in
    ISSUED = "issued"                        # marker written
    ISSUED_WITH_REFRESH = "issued_with_refresh"  # marker and refresh record written


@dataclass(frozen=True)
class CodeRedemption:
    """The answer of `Store.redeem_code`."""

    outcome: CodeOutcome
    record: Optional[dict] = None   # the code's grant record (all outcomes but UNKNOWN/REPLAYED)
    spent: Optional[dict] = None    # REPLAYED: {family, jti, exp, sub} of the first redemption
    refresh_token: Optional[str] = None  # ISSUED_WITH_REFRESH: the refresh token stored

    @property
    def issued(self) -> bool:
        return self.outcome in (CodeOutcome.ISSUED, CodeOutcome.ISSUED_WITH_REFRESH)


class RotationOutcome(enum.Enum):
    """What `Store.rotate_refresh` found and did (the rules: `_ROTATE_REFRESH`)."""

    UNKNOWN = "unknown"            # no such token (never issued, expired, or revoked)
    REUSED = "reused"              # rotated before: `family`/`sub` name its family
    INVALID = "invalid"            # a record no grant can come from (taken)
    STALE = "stale"                # issued before Redis lost state (taken)
    WRONG_CLIENT = "wrong_client"  # another client's token (NOT taken)
    WIDER_SCOPE = "wider_scope"    # scopes beyond the grant's (NOT taken)
    REVOKED = "revoked"            # its family is revoked (taken)
    ROTATED = "rotated"            # taken; `token`: the grant goes on behind it


@dataclass(frozen=True)
class Rotation:
    """The answer of `Store.rotate_refresh`."""

    outcome: RotationOutcome
    record: Optional[dict] = None
    family: Optional[str] = None       # REUSED
    sub: Optional[str] = None          # REUSED: the family's subject (its bucket)
    token: Optional[str] = None        # ROTATED: the new refresh token, when stored
    not_before: Optional[int] = None   # ROTATED: the subject's sign-out, if any

    @property
    def stored(self) -> bool:
        return self.token is not None


class StoreUnavailable(Unavailable):
    """Redis cannot be reached, timed out, refused the command, or a write did not reach
    every replica it had to.

    The message names the operation and the redis error class, for the log only; it never
    contains keys, tokens or credentials. `retry_after`: the Retry-After of the 503.
    """

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreConflict(Exception):
    """A single-use record (code, refresh token) already exists under that key.

    With 256-bit random tokens this means a bug (the same token issued twice), so it is an
    exception, not a return value that a caller could ignore.
    """


class _NotDurable(RedisError):
    """A write reached fewer replicas than it must (WAIT): not acknowledged."""


# A connection that broke (not a timeout: a paused Redis must not be waited for twice).
_CONNECTION_LOST = (RedisConnectionError, ConnectionResetError, BrokenPipeError)
# Answers that say the server we write to is no longer (or not yet) the primary.
_NOT_PRIMARY = ("READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING")


def digest(value: str | bytes) -> str:
    """sha256 hex of a token: the only form in which token material appears in a key."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return hashlib.sha256(value).hexdigest()


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: the values are read and written on every grant)."""
    return orjson.dumps(value)


def _loads(raw: bytes | str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def _text(raw: bytes | str) -> str:
    return raw.decode("ascii") if isinstance(raw, bytes) else raw


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _not_before(raw: bytes | str | None) -> int | None:
    """A subject's not-before: "<not-before> <until>" in its bucket, or the scripts' number."""
    if raw is None or raw is False:
        return None
    try:
        return int(_text(raw).split(" ", 1)[0]) if isinstance(raw, (bytes, str)) else int(raw)
    except ValueError:
        return None


def _check_ttl(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
            or ttl < 1:
        raise ValueError(f"ttl must be a number of seconds >= 1, got {ttl!r}")
    return math.ceil(ttl)


def _check_time(what: str, value: float) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a unix time, got {value!r}")
    return math.floor(value)


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must match {_NAME.pattern}, got {name!r}")
    return name


def _check_ident(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _check_record(record: dict) -> dict:
    if not isinstance(record, dict):
        raise ValueError("record must be a dict")
    return record


def _grant_sub(record: dict) -> str:
    """The public subject every grant record carries (`Grant.to_record`): its bucket."""
    _check_record(record)
    return _check_ident('record["sub"]', record.get("sub"))


def _is_not_primary(err: BaseException) -> bool:
    return isinstance(err, ResponseError) and str(err).split(" ", 1)[0] in _NOT_PRIMARY


def _info(raw: bytes | str) -> dict:
    out = {}
    for line in _text(raw).splitlines():
        name, colon, value = line.partition(":")
        if colon and not name.startswith("#"):
            out[name.strip()] = value.strip()
    return out


# -- continuity: was the last acknowledged write kept? ------------------------------------

class _Guard:
    """Checks, on every new connection to a primary, that it still holds every write that
    was acknowledged, and otherwise starts a new generation in its buckets.

    The primary keeps a marker (``server``: hash with its run_id and replication id, no
    TTL). A connection to a primary with another run_id means it restarted (from a
    snapshot or append-only file that may be older than the last acknowledged write, or a
    restored backup) or that another server took over. A replica promoted by a failover
    (its previous replication id is the marker's) kept every acknowledged write when the
    writes waited for every replica. A server that restarted with its append-only file
    (`aof_enabled`, a fresh replication history, the marker still there) kept them too:
    Redis writes every command to the file before it answers. Anything else is a loss:
    every bucket of that primary gets a generation of now + 1, so nothing issued before is
    accepted any more. No marker at all: a new or emptied database, whose buckets start a
    generation now. A restored older backup cannot be told from a restart: after one, run
    `python -m shared.store new-generation` (docs/operations.md).

    A server is verified as a primary of one replication history (run_id and replication
    id): a server that was verified, became a replica and is promoted again has a new
    replication id and is checked again. A check whose writes the primary refuses (not
    enough replicas yet, during a failover) is tried again on the next connection; its
    verdict is logged once.
    """

    def __init__(self, prefix: str, now: Callable[[], float]) -> None:
        self.prefix, self.now = prefix, now
        self.verified: set = set()  # (run_id, replid) this process checked
        self._logged: set = set()   # verdicts logged, (run_id, replid, verdict)
        self._lock: asyncio.Lock | None = None

    async def check(self, conn: Any, *, waits: int, wait_ms: int, cluster: bool,
                    replicated: Optional[bool] = None) -> dict:
        """Returns INFO's server and replication facts; raises RedisConnectionError for a
        replica (one server, Sentinel). One check at a time per process: the others wait
        for it and find the server verified. `replicated`: whether durable writes wait for
        the replicas (default: `waits` > 0), so that a promoted replica holds them all."""
        info = _info(await _raw(conn, "INFO", "server", "replication", "persistence"))
        if info.get("role") != "master":
            if cluster:
                return info  # a replica answers topology questions only
            raise RedisConnectionError("the server is a replica, not the primary")
        if self._identity(info) in self.verified:
            return info
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._identity(info) not in self.verified:
                await self._verify(conn, info, waits=waits, wait_ms=wait_ms, cluster=cluster,
                                   replicated=bool(waits) if replicated is None else replicated)
        return info

    @staticmethod
    def _identity(info: dict) -> tuple:
        return info.get("run_id", ""), info.get("master_replid", "")

    def _log_once(self, info: dict, level: int, message: str, *args: Any) -> None:
        key = (*self._identity(info), message)
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message, *args)

    async def _verify(self, conn: Any, info: dict, *, waits: int, wait_ms: int,
                      cluster: bool, replicated: bool) -> None:
        run_id = info.get("run_id", "")
        tags, marker_key = ALL_TAGS, self.prefix + "server"
        if cluster:
            tags, marker_key = await self._cluster_buckets(conn)
        marker = await _raw(conn, "HGETALL", marker_key)
        marker = {_text(k): _text(v) for k, v in zip(marker[::2], marker[1::2])} \
            if isinstance(marker, list) else {_text(k): _text(v) for k, v in marker.items()}
        replid, replid2 = info.get("master_replid", ""), info.get("master_replid2", "")
        commands: list = []
        if not marker:
            since = int(self.now())
            commands = self._each_slot(_INIT, tags, since, cluster)
            self._log_once(info, logging.INFO, "redis: no generation marker on %s: its "
                           "buckets start now", _server_name(conn))
        elif marker.get("run_id") == run_id:
            pass
        elif replicated and replid2 and replid2 == marker.get("replid"):
            self._log_once(info, logging.INFO, "redis: %s took over from %s with every "
                           "acknowledged write", _server_name(conn),
                           marker.get("run_id", "?")[:8])
        elif info.get("aof_enabled") == "1" and marker.get("replid") != replid \
                and not replid2.strip("0"):
            # restarted and loaded its append-only file (the marker came back with it):
            # Redis writes a command to the file before it answers, so a restart or a
            # kill -9 of Redis keeps every acknowledged write (an OS crash with
            # `appendfsync everysec` can lose the last second: docs/operations.md)
            self._log_once(info, logging.INFO, "redis: %s restarted from its append-only "
                           "file", _server_name(conn))
        else:
            since = int(self.now()) + 1
            self._log_once(info, logging.WARNING, "redis: %s is not the server that "
                           "acknowledged the last writes (restarted, restored, or a failover "
                           "that could lose writes): nothing issued before it took over is "
                           "accepted any more", _server_name(conn))
            commands = self._each_slot(_ADVANCE_ALL, tags, since, cluster)
        if marker.get("run_id") != run_id or marker.get("replid") != replid:
            commands.append(("HSET", marker_key, "run_id", run_id, "replid", replid))
        if commands:
            await _raw_many(conn, commands)
            if waits:
                acked = await _raw(conn, "WAIT", waits, wait_ms)
                if int(acked) < waits:
                    raise _NotDurable(f"generation marker reached {acked} of {waits} replicas")
        self.verified.add(self._identity(info))

    def _each_slot(self, source: str, tags: tuple, since: int, cluster: bool) -> list:
        """One EVAL of `source` per hash slot of the buckets (one for all on one server)."""
        groups: dict[int, list] = {}
        for tag in tags:
            groups.setdefault(_bucket_slot(self.prefix, tag) if cluster else 0,
                              []).append(self._bucket(tag))
        return [("EVAL", source, len(keys), *keys, since) for keys in groups.values()]

    def _bucket(self, tag: str) -> str:
        return f"{self.prefix}revoked:{{{tag}}}"

    async def _cluster_buckets(self, conn: Any) -> tuple:
        """The bucket tags a cluster primary serves, and its marker's key (in its first
        slot)."""
        my_id = _text(await _raw(conn, "CLUSTER", "MYID"))
        ranges = []
        for entry in await _raw(conn, "CLUSTER", "SLOTS"):
            primary = entry[2]
            if len(primary) > 2 and _text(primary[2]) == my_id:
                ranges.append((int(entry[0]), int(entry[1])))
        if not ranges:
            raise RedisConnectionError("this cluster primary serves no slots")
        first = min(low for low, _ in ranges)
        tags = tuple(t for t in ALL_TAGS
                     if any(lo <= _bucket_slot(self.prefix, t) <= hi for lo, hi in ranges))
        return tags, f"{self.prefix}server:{{{_tag_for_slot(first)}}}"


_SLOT_TAGS: dict[int, str] = {}
_BUCKET_SLOTS: dict[tuple, int] = {}


def _bucket_slot(prefix: str, tag: str) -> int:
    key = (prefix, tag)
    if key not in _BUCKET_SLOTS:
        _BUCKET_SLOTS[key] = key_slot(f"{prefix}revoked:{{{tag}}}".encode())
    return _BUCKET_SLOTS[key]


def _tag_for_slot(slot: int) -> str:
    """A hash tag whose slot is `slot` (found by trying: 16384 tries on average)."""
    if slot not in _SLOT_TAGS:
        i = 0
        while True:
            candidate = f"m{i}"
            if key_slot(candidate.encode()) == slot:
                _SLOT_TAGS[slot] = candidate
                break
            i += 1
    return _SLOT_TAGS[slot]


def _server_name(conn: Any) -> str:
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


async def _raw(conn: Any, *args: Any) -> Any:
    await conn.send_command(*args)
    return await conn.read_response()


async def _raw_many(conn: Any, commands: list) -> None:
    """Pipelined on one connection; the first error is raised after reading every answer."""
    await conn.send_packed_command(conn.pack_commands(commands))
    error = None
    for _ in commands:
        try:
            await conn.read_response()
        except ResponseError as err:
            error = error or err
    if error:
        raise error


# -- links: how a command reaches the server that owns its key ----------------------------

class _Link:
    """One Redis server or the primary Sentinel names (`redis-py`'s Redis client)."""

    kind = "single"

    def __init__(self, target: RedisTarget, guard: _Guard, *, socket_timeout: float,
                 connect_timeout: float, health_check_interval: int) -> None:
        self.target, self.guard = target, guard
        self.wait_ms = max(1, int(1000 * (target.wait_timeout or socket_timeout / 2)))
        if self.wait_ms >= socket_timeout * 1000:
            raise ValueError("wait_timeout must be shorter than the Redis timeout")
        self.replicas = target.replicas or 0
        self._warned = False
        self.common = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                           health_check_interval=health_check_interval,
                           retry=Retry(NoBackoff(), 0), client_name="konnect",
                           max_connections=target.max_connections,
                           redis_connect_func=self._on_connect)
        self.client = self._client()

    def _client(self) -> Any:
        return aioredis.Redis.from_url(self.target.url, **self.common)

    async def _on_connect(self, conn: Any) -> None:
        await conn.on_connect()
        await self._count_replicas()
        info = await self.guard.check(conn, waits=self.replicas, wait_ms=self.wait_ms,
                                      cluster=False, replicated=self._replicated())
        if self.target.replicas is None and self.kind == "single" \
                and int(info.get("connected_slaves", 0) or 0) and not self._warned:
            self._warned = True
            log.warning("redis: the primary has replicas but the URL does not wait for them: "
                        "a failover can lose acknowledged writes (use redis+sentinel://, or "
                        "replicas=N)")

    async def _count_replicas(self) -> None:
        """How many replicas a durable write waits for, when the URL does not say."""

    def _replicated(self) -> bool:
        """Whether durable writes wait for replicas (a promoted replica holds them all)."""
        return bool(self.replicas)

    async def execute(self, key: str, args: tuple, durable: bool) -> Any:
        waits = self.replicas if durable else 0
        if not waits:
            return await self.client.execute_command(*args)
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command(*args)
        pipe.execute_command("WAIT", waits, self.wait_ms)
        result, acked = await pipe.execute(raise_on_error=False)
        if isinstance(result, BaseException):
            raise result
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < waits:
            raise _NotDurable(f"the write reached {acked} of {waits} replicas")
        return result

    async def reset(self) -> None:
        """Drop the idle connections: the next command connects anew (and, behind Sentinel,
        asks the Sentinels where the primary is now)."""
        await self.client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self.client.aclose()


class _SentinelLink(_Link):
    """The primary a set of Sentinels names; asks them again on every new connection."""

    kind = "sentinel"

    def _client(self) -> Any:
        t = self.target
        tls = dict(t.tls_options)
        if t.tls:
            tls["ssl"] = True
        sentinel_kwargs = dict(socket_timeout=self.common["socket_timeout"],
                               socket_connect_timeout=self.common["socket_connect_timeout"],
                               retry=Retry(NoBackoff(), 0), username=t.sentinel_username,
                               password=t.sentinel_password, **tls)
        self.sentinel = Sentinel(t.hosts, sentinel_kwargs=sentinel_kwargs)
        return self.sentinel.master_for(t.service, db=t.db, username=t.username,
                                        password=t.password, **tls, **self.common)

    async def _count_replicas(self) -> None:
        if self.target.replicas is not None:
            return
        # every replica the Sentinels know of, down or not: a write waits for all of them
        errors = []
        for sentinel in self.sentinel.sentinels:
            try:
                replicas = await sentinel.sentinel_slaves(self.target.service)
            except RedisError as err:
                errors.append(type(err).__name__)
                continue
            # never fewer than seen before: during a failover a Sentinel may list the new
            # primary's replicas late, and a write must not stop waiting for them meanwhile
            # (a replica removed for good: SENTINEL RESET, then restart the services)
            self.replicas = max(self.replicas, len(replicas))
            return
        raise RedisConnectionError(f"no Sentinel lists the replicas: {', '.join(errors)}")

    def _replicated(self) -> bool:
        return self.target.replicas != 0  # the count may lag during a failover

    async def close(self) -> None:
        await self.client.aclose()
        await self.sentinel.aclose()


class _KonnectCluster(RedisCluster):
    """redis-py's cluster client, with the continuity check on every new connection."""

    link: "_ClusterLink"

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)
        await self.link.on_connect(connection)


class _ClusterLink(_Link):
    """A Redis Cluster: commands go to the primary of their key's slot; the WAIT after a
    durable write goes to the same connection, for the replicas of that shard."""

    kind = "cluster"

    def _client(self) -> Any:
        t = self.target
        kwargs = dict(self.common)
        kwargs.pop("redis_connect_func")
        tls = dict(t.tls_options)
        if t.tls:
            tls["ssl"] = True
        client = _KonnectCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in t.hosts],
            username=t.username, password=t.password, require_full_coverage=False,
            **tls, **kwargs)
        client.link = self
        # every connection of every node (also those a topology refresh makes) runs the
        # continuity check: redis-py's cluster client sets no connect hook of its own here
        client.connection_kwargs["redis_connect_func"] = client.on_connect
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_kwargs["redis_connect_func"] = client.on_connect
        return client

    async def on_connect(self, conn: Any) -> None:
        # right after a failover the slot map may not name this primary yet (no replicas
        # counted for it): whether writes wait for replicas is the deployment's setting
        await self.guard.check(conn, waits=self._shard_replicas(conn), wait_ms=self.wait_ms,
                               cluster=True, replicated=self.target.replicas != 0)

    def _shard_replicas(self, conn: Any) -> int:
        if self.target.replicas is not None:
            return self.target.replicas
        name = f"{conn.host}:{conn.port}"
        slots = self.client.nodes_manager.slots_cache
        for nodes in slots.values():
            if nodes and nodes[0].name == name:
                return len(nodes) - 1
        return 0

    @property
    def replicas(self) -> int:
        """The fewest replicas a shard's durable writes wait for (per shard: its own)."""
        if self.target.replicas is not None:
            return self.target.replicas
        shards = {id(nodes[0]): len(nodes) - 1
                  for nodes in self.client.nodes_manager.slots_cache.values() if nodes}
        return min(shards.values(), default=0)

    @replicas.setter
    def replicas(self, value: int) -> None:
        pass  # per shard, from the slot map

    def _replicas_of(self, slot: int) -> int:
        if self.target.replicas is not None:
            return self.target.replicas
        nodes = self.client.nodes_manager.slots_cache.get(slot) or ()
        return max(0, len(nodes) - 1)

    async def execute(self, key: str, args: tuple, durable: bool) -> Any:
        client = self.client
        if not client.nodes_manager.slots_cache:
            await client.initialize()
        slot = client.keyslot(key)
        for attempt in (1, 2):
            node = client.nodes_manager.get_node_from_slot(slot)
            if node is None:
                raise ClusterDownError(f"no primary serves slot {slot}")
            waits = self._replicas_of(slot) if durable else 0
            commands = [PipelineCommand(0, *args)]
            if waits:
                commands.append(PipelineCommand(1, "WAIT", waits, self.wait_ms))
            try:
                await node.execute_pipeline(commands)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await self._refresh()
                raise
            result = commands[0].result
            if isinstance(result, (MovedError, AskError, TryAgainError, ClusterDownError)) \
                    and attempt == 1:
                await self._refresh()
                continue
            if isinstance(result, BaseException):
                if _is_not_primary(result):
                    await self._refresh()
                raise result
            if waits:
                acked = commands[1].result
                if isinstance(acked, BaseException):
                    raise acked
                if int(acked) < waits:
                    await self._refresh()
                    raise _NotDurable(f"the write reached {acked} of {waits} replicas")
            return result
        raise ClusterDownError("the slot moved twice")

    async def _refresh(self) -> None:
        """Read the slot map again (a failover, a moved slot)."""
        try:
            await self.client.nodes_manager.initialize()
        except RedisError as err:
            log.info("redis cluster: topology refresh failed: %s", type(err).__name__)

    async def reset(self) -> None:
        await self._refresh()

    async def close(self) -> None:
        await self.client.aclose()


_LINKS = {"single": _Link, SENTINEL: _SentinelLink, CLUSTER: _ClusterLink}


# -- the store ----------------------------------------------------------------------------

class Store:
    """All shared state of the provider (docs/architecture.md, "State in Redis").

    Keys (after the prefix; `{t}` is the bucket tag of a user, `tag_of(sub)`):

    - ``code:{t}:<sha256>``      authorization code grant, single use
    - ``code-used:{t}:<sha256>`` what was issued from a redeemed code
    - ``rt:{t}:<sha256>``        refresh-token record; ``rt-spent:{t}:<sha256>`` after use
    - ``revoked:{t}``            the bucket: generation ``g``, revoked ``j:<jti>``,
                                 ``f:<family>``, sign-outs ``s:<sub>`` (a hash, no TTL)
    - ``once:{t}:<kind>:<sha256>``  replay markers (t from the item)
    - ``client:{t}:<client_id>`` a dynamically registered client (t from its id)
    - ``ratelimit:<bucket>:<sha256>`` counters
    - ``kv:<kind>:<sha256>``     JSON values of the services and backends
    - ``ephemeral:<name>``       the group's shared ephemeral key and secret, when none is
                                 configured (`shared_material`)
    - ``server`` (``server:{…}`` per cluster primary)  the continuity marker (`_Guard`)

    Every key but the buckets and markers has a TTL, and values are compact JSON. Every
    method either returns, raises `ValueError` for a bad argument (before any round
    trip), or raises `StoreUnavailable`; nothing waits longer than `timeout` seconds. The
    Store recovers by itself when Redis comes back or a failover is over.
    """

    def __init__(self, link: _Link, *, prefix: str = "konnect:",
                 now: Callable[[], float] = time.time, timeout: float | None = None,
                 max_connections: int = 64) -> None:
        self._link = link
        self.prefix = prefix
        self.now = now
        self._timeout = timeout
        self._down = False
        self._slots = asyncio.Semaphore(max_connections)
        self.max_connections = max_connections

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "konnect:", socket_timeout: float = 2.0,
                 connect_timeout: float = 2.0, health_check_interval: int = 30,
                 now: Callable[[], float] = time.time) -> "Store":
        """A Store for a `--redis-url` (shared/redis_url.py: one server, Sentinel, Cluster);
        connects lazily.

        redis-py 8 defaults to 5 s timeouts and 10 retries with back-off, so a dead Redis
        would hold a request for many seconds: here the timeouts are explicit and redis-py
        retries nothing (`_call` decides: after a broken connection it drops the idle ones
        and runs the command once more). `health_check_interval` PINGs a connection that
        was idle that long before reusing it, so half-open connections are noticed.
        """
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be a non-empty string without { or }")
        target = parse_url(url)
        guard = _Guard(prefix, now)
        link = _LINKS[target.kind](target, guard, socket_timeout=socket_timeout,
                                   connect_timeout=connect_timeout,
                                   health_check_interval=health_check_interval)
        return cls(link, prefix=prefix, now=now, timeout=socket_timeout + connect_timeout,
                   max_connections=target.max_connections)

    # -- plumbing -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """"single", "sentinel" or "cluster"."""
        return self._link.kind

    @property
    def replicas(self) -> int:
        """How many replicas a single-use or revocation write waits for (0: none)."""
        return self._link.replicas

    def key(self, *parts: str) -> str:
        """The full Redis key for `parts` (joined with ':' after the prefix)."""
        return self.prefix + ":".join(parts)

    def _tagged(self, kind: str, tag: str, rest: str) -> str:
        return f"{self.prefix}{kind}:{{{tag}}}:{rest}"

    def bucket(self, tag: str) -> str:
        """The key of a bucket: its generation and its users' revocations."""
        return f"{self.prefix}revoked:{{{tag}}}"

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        acquired = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
                acquired = True
                try:
                    result = await fn()
                except _CONNECTION_LOST:
                    # A restarted Redis leaves every pooled connection dead: drop the idle
                    # ones and run the command once more on a new connection, within the
                    # same timeout, so that a restart costs no request. On a connection
                    # that broke, the command almost always never reached a Redis; if one
                    # ran it just before dying (microseconds), a single-use step now
                    # looks spent and is refused as a replay (its grant revoked): safe,
                    # never a second use. Timeouts are not retried (a paused Redis).
                    await self._link.reset()
                    result = await fn()
        except TimeoutError as err:  # the whole operation's deadline (asyncio.timeout)
            if acquired:
                raise self._failed(op, err, type(err).__name__) from err
            raise self._failed(op, err, f"connection pool exhausted: all {self.max_connections} "
                               "connections of this process were busy for the whole "
                               "timeout") from None
        except (RedisError, OSError) as err:
            if isinstance(err, _NotDurable) or _is_not_primary(err):
                # a failover under way: ask where the primary is on the next connection
                try:
                    await self._link.reset()
                except (RedisError, OSError):
                    pass
            raise self._failed(op, err, f"{type(err).__name__}: {err}") from err
        finally:
            if acquired:
                self._slots.release()
        if self._down:
            self._down = False
            log.info("redis available again")
        return result

    def _failed(self, op: str, err: BaseException, why: str) -> StoreUnavailable:
        if not self._down:
            log.warning("redis unavailable during %s: %s", op, why.split(":", 1)[0]
                        if not why.startswith("connection pool") else why)
        self._down = True
        retry = 1 if isinstance(err, _NotDurable) or _is_not_primary(err) else 5
        return StoreUnavailable(f"redis {op} failed: {why}"[:300], retry_after=retry)

    async def _run(self, op: str, key: str, args: tuple, durable: bool = False) -> Any:
        """One command, on the node of `key`; `durable`: acknowledged only once every
        replica it must reach has it."""
        return await self._call(op, lambda: self._link.execute(key, args, durable))

    async def _script(self, op: str, name: str, keys: list, args: list,
                      durable: bool = False) -> Any:
        script = _SCRIPTS[name]

        async def run() -> Any:
            try:
                return await self._link.execute(
                    keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), durable)
            except NoScriptError:
                return await self._link.execute(
                    keys[0], ("EVAL", script.source, len(keys), *keys, *args), durable)

        return await self._call(op, run)

    async def close(self) -> None:
        """Close the clients and their connection pools."""
        await self._link.close()

    async def ping(self) -> bool:
        """True if Redis answers; raises StoreUnavailable otherwise (health checks)."""
        return bool(await self._run("ping", self.bucket("000"), ("PING",)))

    # -- generations ------------------------------------------------------------------------

    async def initialize(self, since: int | None = None) -> None:
        """Give every bucket without one a generation (default: now), as the first
        connection to an empty database does."""
        await self._all_buckets("initialize", _INIT, int(self.now()) if since is None
                                else int(since))

    async def new_generation(self) -> int:
        """Refuse everything issued until now, everywhere (a restored backup, a failover that
        lost writes: docs/operations.md). Signs everybody out. Returns the generation."""
        since = int(self.now()) + 1
        await self._all_buckets("new_generation", _ADVANCE_ALL, since, durable=True)
        return since

    async def _all_buckets(self, op: str, source: str, since: int,
                           durable: bool = False) -> None:
        groups: dict[int, list] = {}
        cluster = self.mode == CLUSTER
        for tag in ALL_TAGS:
            groups.setdefault(_bucket_slot(self.prefix, tag) if cluster else 0,
                              []).append(self.bucket(tag))
        await asyncio.gather(*(self._run(op, keys[0], ("EVAL", source, len(keys), *keys, since),
                                         durable) for keys in groups.values()))

    async def generation(self, tag: str) -> int | None:
        """A bucket's generation (None: it has none yet)."""
        raw = await self._run("generation", self.bucket(tag), ("HGET", self.bucket(tag), "g"))
        return None if raw is None else int(raw)

    # -- authorization codes (RFC 6749 §4.1.2, §10.5) ---------------------------------------

    async def put_code(self, record: dict, ttl: int) -> str:
        """Store a grant behind a new authorization code for `ttl` seconds and return the
        code (`new_token` of the record's `sub`). The key is ``code:{t}:<sha256(code)>``:
        the code itself never reaches Redis."""
        code = new_token(_grant_sub(record))
        await self._put("put_code", "code", code, record, ttl)
        return code

    async def _put(self, op: str, kind: str, token: str, record: dict, ttl: int) -> None:
        tag = token_tag(token)
        if tag is None:
            raise ValueError("not a token of `new_token`")
        if tag != tag_of(_grant_sub(record)):
            raise ValueError("the token's tag is not its record's subject's")
        value, ex = _dumps(record), _check_ttl(ttl)
        stored = await self._script(op, "put", [self._tagged(kind, tag, digest(token)),
                                                self.bucket(tag)],
                                    [value, ex, int(self.now())])
        if not stored:
            raise StoreConflict(f"{kind} already stored")

    async def redeem_code(self, code: str, *, client_id: str, redirect_uri: str,
                          challenge: str, verifier_sent: bool, public: bool,
                          refresh_allowed: bool, jti: str, now: int,
                          access_ttl: int, refresh_ttl: int) -> CodeRedemption:
        """Redeem a code for this request in ONE round trip (the rules: `_REDEEM_CODE`),
        plus the WAIT for the replicas where there are any.

        `challenge` is the S256 of the request's code_verifier ("" for none or a malformed
        one), `verifier_sent` whether it sent one. When the code may be redeemed, its
        redemption marker ``{family, jti, exp, sub}`` is written (a replay revokes them)
        and, for an offline_access grant with time left whose client may refresh
        (`refresh_allowed`), its record is stored behind a new refresh token (the outcome
        says which; the token is `refresh_token`). The code is spent whatever the outcome.
        A caller that refuses after the writes (the user is gone) removes them with
        `undo_code_redemption`.
        """
        tag = token_tag(_check_ident("code", code))
        args = [_check_ident("client_id", client_id), redirect_uri or "", challenge or "",
                _flag(verifier_sent), _flag(public), _flag(refresh_allowed),
                _check_ident("jti", jti), int(now), _check_ttl(access_ttl),
                _check_ttl(refresh_ttl)]
        if tag is None:
            return CodeRedemption(CodeOutcome.UNKNOWN)
        refresh = tag + secrets.token_urlsafe(32)
        h = digest(code)
        keys = [self._tagged("code", tag, h), self._tagged("code-used", tag, h),
                self._tagged("rt", tag, digest(refresh)), self.bucket(tag)]
        outcome, value = await self._script("redeem_code", "redeem_code", keys, args,
                                            durable=True)
        outcome = _text(outcome)
        if outcome == "clash":
            raise StoreConflict("refresh token already stored")
        if outcome == "replayed":
            return CodeRedemption(CodeOutcome.REPLAYED, spent=_loads(value))
        result = CodeOutcome(outcome)
        return CodeRedemption(result, record=_loads(value) if value else None,
                              refresh_token=refresh
                              if result is CodeOutcome.ISSUED_WITH_REFRESH else None)

    async def undo_code_redemption(self, code: str, refresh_token: str | None) -> None:
        """Delete what `redeem_code` wrote (marker and refresh record) when the redemption
        was refused afterwards: nobody received those tokens."""
        tag = token_tag(_check_ident("code", code))
        if tag is None:
            return
        keys = [self._tagged("code-used", tag, digest(code))]
        if refresh_token and token_tag(refresh_token) == tag:
            keys.append(self._tagged("rt", tag, digest(refresh_token)))
        await self._run("undo_code_redemption", keys[0], ("DEL", *keys))

    # -- refresh tokens (RFC 6749 §6, §10.4; RFC 6819 §5.2.2.3 rotation) ----------------------

    def _refresh_keys(self, token: str) -> tuple[str, str, str] | None:
        tag = token_tag(_check_ident("refresh token", token))
        if tag is None:
            return None
        h = digest(token)
        return self._tagged("rt", tag, h), self._tagged("rt-spent", tag, h), self.bucket(tag)

    async def put_refresh(self, token: str, record: dict, ttl: int) -> None:
        """Store a refresh-token record under ``rt:{t}:<sha256(token)>`` (SET NX EX); the
        token must come from `new_token` for the record's `sub`.

        `record["family"]` (a non-empty string) names the rotation family: every token
        rotated from the same grant shares it. Raises `StoreConflict` if the token exists.
        """
        _check_record(record)
        _check_ident('record["family"]', record.get("family"))
        await self._put("put_refresh", "rt", token, record, ttl)

    async def take_refresh(self, token: str) -> dict | None:
        """Take a refresh token for good: return its record and delete it, or None.

        In the same atomic step ``rt-spent:{t}:<sha256>`` is set to ``{family, sub}`` for the
        record's remaining lifetime, so a later presentation is recognised as reuse
        (`rotate_refresh` answers REUSED) rather than as an unknown token.
        """
        keys = self._refresh_keys(token)
        if keys is None:
            return None
        return _loads(await self._script("take_refresh", "take_refresh", list(keys[:2]), [],
                                         durable=True))

    async def rotate_refresh(self, token: str, *, client_id: str, now: int,
                             refresh_ttl: int, scopes: list | tuple = ()) -> Rotation:
        """Rotate a refresh token for this request in ONE round trip (the rules:
        `_ROTATE_REFRESH`), plus the WAIT for the replicas where there are any: `scopes`
        are the request's (RFC 6749 §6; empty: the grant's).

        On ROTATED the presented token is spent and, unless the family's time is up, the
        grant is stored behind a new token (`Rotation.token`); the subject's not-before is
        read in the same step. WRONG_CLIENT and WIDER_SCOPE leave the token in place. A
        caller that cannot finish (the user directory is down) puts the token back with
        `put_refresh` and removes the new one with `take_refresh`.
        """
        args = [_check_ident("client_id", client_id), int(now), _check_ttl(refresh_ttl),
                *(_check_ident("scope", scope) for scope in scopes)]
        keys = self._refresh_keys(token)
        if keys is None:
            return Rotation(RotationOutcome.UNKNOWN)
        new = token[:3] + secrets.token_urlsafe(32)
        rt, spent, bucket = keys
        outcome, value, stored, nbf = await self._script(
            "rotate_refresh", "rotate_refresh",
            [rt, spent, self._tagged("rt", token[:3], digest(new)), bucket], args, durable=True)
        outcome = _text(outcome)
        if outcome == "clash":
            raise StoreConflict("refresh token already stored")
        if outcome == "reused":
            marker = _loads(value)
            return Rotation(RotationOutcome.REUSED, family=marker.get("family"),
                            sub=marker.get("sub"))
        return Rotation(RotationOutcome(outcome), record=_loads(value) if value else None,
                        token=new if stored else None, not_before=_not_before(nbf or None))

    async def peek_refresh(self, token: str) -> dict | None:
        """A refresh-token record that is still a grant (of the current generation, its
        family not revoked), without redeeming it (introspection, revocation)."""
        keys = self._refresh_keys(token)
        if keys is None:
            return None
        return _loads(await self._script("peek_refresh", "peek_refresh", [keys[0], keys[2]],
                                         [int(self.now())]))

    async def spent_refresh(self, token: str) -> dict | None:
        """``{family, sub}`` of a refresh token that was already redeemed, or None."""
        keys = self._refresh_keys(token)
        if keys is None:
            return None
        return _loads(await self._run("spent_refresh", keys[1], ("GET", keys[1])))

    # -- revocation list (RFC 7009; docs/architecture.md "State in Redis") -----------------

    def _until(self, exp: float) -> int:
        """`exp`, at least a second from now: the entry outlives the token."""
        return max(math.ceil(_check_time("exp", exp)), math.floor(self.now()) + 1)

    async def _revoke(self, op: str, sub: str, field: str, until: int,
                      not_before: str = "") -> Any:
        tag = tag_of(_check_ident("sub", sub))
        return await self._script(op, "revoke", [self.bucket(tag)],
                                  [int(self.now()), field, until, not_before], durable=True)

    async def revoke_jti(self, jti: str, exp: float, *, sub: str) -> None:
        """Revoke one access token of `sub` by its `jti` until its `exp` (RFC 7009 §2.1)."""
        await self._revoke("revoke_jti", sub, "j:" + _check_ident("jti", jti), self._until(exp))

    async def revoke_family(self, family: str, exp: float, *, sub: str) -> None:
        """Revoke every token of a grant/rotation family of `sub` until `exp` (the family's
        last possible expiry), e.g. on refresh-token reuse (RFC 6819 §5.2.2.3) or code
        replay (RFC 6749 §4.1.2)."""
        await self._revoke("revoke_family", sub, "f:" + _check_ident("family", family),
                           self._until(exp))

    async def revoke_subject(self, sub: str, not_before: int, ttl: int) -> None:
        """Revoke every token of `sub` issued at or before `not_before` (logout everywhere).

        `ttl` should be the longest lifetime of any token of that subject. Repeated calls
        keep the latest not-before and the longest remaining TTL.
        """
        _check_time("not_before", not_before)
        # rounded up: a token issued in the same second as the revocation is revoked too
        await self._revoke("revoke_subject", sub, "s:" + sub,
                           math.floor(self.now()) + _check_ttl(ttl),
                           str(math.ceil(not_before)))

    async def subject_not_before(self, sub: str) -> int | None:
        """The subject's not-before (its last sign-out, `revoke_subject`), or None."""
        bucket = self.bucket(tag_of(_check_ident("sub", sub)))
        return _not_before(await self._run("subject_not_before", bucket,
                                           ("HGET", bucket, "s:" + sub)))

    async def is_revoked(self, *, sub: str, iat: float, jti: str | None = None,
                         family: str | None = None) -> bool:
        """True if a token of `sub` issued at `iat` is revoked: by its jti, its family, its
        subject's not-before, or because it is older than its bucket's generation.

        One round trip. Fails closed: if Redis cannot answer this raises
        `StoreUnavailable`, never returns False.
        """
        _check_ident("sub", sub)
        iat = _check_time("iat", iat)
        args = [int(self.now()), iat, "" if jti is None else _check_ident("jti", jti),
                "" if family is None else _check_ident("family", family), sub]
        return bool(await self._script("is_revoked", "is_revoked",
                                       [self.bucket(tag_of(sub))], args))

    # -- replay markers --------------------------------------------------------------------

    async def first_use(self, kind: str, ident: str, ttl: int, *,
                        issued_at: float | None = None) -> bool:
        """True the first time (`kind`, `ident`) is seen within `ttl` seconds, else False.

        One SET NX EX (and the WAIT for the replicas), so concurrent callers cannot both
        see True (e.g. the `jti` of a private_key_jwt client assertion, RFC 7523 §3 item
        7). `issued_at`: when the item was made; one from before its bucket's generation is
        refused (its marker may have been lost with Redis's state). Without it, only what
        the marker itself remembers counts.
        """
        _check_name("kind", kind)
        h = digest(_check_ident("ident", ident))
        tag = tag_of(kind + ":" + h)
        ex, now = _check_ttl(ttl), int(self.now())
        since = "" if issued_at is None else min(_check_time("issued_at", issued_at), now)
        return bool(await self._script(
            "first_use", "first_use",
            [self._tagged("once", tag, f"{kind}:{h}"), self.bucket(tag)],
            [ex, now, since], durable=True))

    # -- rate limits -----------------------------------------------------------------------

    def _rl_key(self, bucket: str, key: str) -> str:
        return self.key("ratelimit", _check_name("bucket", bucket),
                        digest(_check_ident("key", key)))

    async def hit(self, bucket: str, key: str, *, window: int) -> int:
        """Count one attempt for `key` (a user name, an IP, ...) in a fixed window.

        Returns the number of attempts in the current window. INCR and EXPIRE NX run in one
        script, so the window starts at the first attempt and is never extended by later
        ones; with replicas, the count is acknowledged once they have it (a failover does
        not hand out attempts again)."""
        k, ex = self._rl_key(bucket, key), _check_ttl(window)
        return int(await self._script("hit", "hit", [k], [ex], durable=True))

    async def retry_after(self, bucket: str, key: str) -> int:
        """Seconds until the current window of `key` ends (0 if there is none)."""
        k = self._rl_key(bucket, key)
        return max(0, int(await self._run("retry_after", k, ("TTL", k))))

    async def reset(self, bucket: str, key: str) -> None:
        """Forget the attempts of `key` (e.g. after a successful logon)."""
        k = self._rl_key(bucket, key)
        await self._run("reset", k, ("DEL", k))

    async def give_back(self, bucket: str, key: str) -> int:
        """Take back one attempt `hit` counted for `key` (e.g. the IP's hit of a sign-in that
        succeeded), keeping the window's expiry. One script, so it never goes below 0 nor
        outlives the window. Returns the count left."""
        k = self._rl_key(bucket, key)
        return int(await self._script("give_back", "give_back", [k], []))

    # -- dynamically registered clients (OIDC Dynamic Client Registration 1.0) ----------------

    def _client_keys(self, client_id: str) -> tuple[str, str]:
        _check_name("client_id", client_id)
        tag = tag_of("client:" + client_id)
        return self._tagged("client", tag, client_id), self.bucket(tag)

    async def put_client(self, client_id: str, record: dict, ttl: int) -> None:
        """Store a registered client under ``client:{t}:<client_id>`` for `ttl` seconds (SET
        NX EX): every process of every service reads it with `get_client`. The id is issued
        by the server (a restricted alphabet); raises `StoreConflict` if it exists already.
        `record["issued_at"]` dates it against its bucket's generation."""
        key, bucket = self._client_keys(client_id)
        value, ex = _dumps(_check_record(record)), _check_ttl(ttl)
        if not await self._script("put_client", "put", [key, bucket],
                                  [value, ex, int(self.now())], durable=True):
            raise StoreConflict("client id already registered")

    async def get_client(self, client_id: str) -> dict | None:
        """The record `put_client` stored, or None (unknown, expired, or registered before
        Redis lost state: its deletion may have been lost)."""
        key, bucket = self._client_keys(client_id)
        return _loads(await self._script("get_client", "get_client", [key, bucket],
                                         [int(self.now())]))

    # -- the group's shared ephemeral key and secret (shared/ephemeral.py) -----------------

    async def shared_material(self, name: str, *, ttl: int, held: bytes | None = None,
                              refresh: bool = False, candidate: bytes | None = None
                              ) -> bytes | None:
        """The record under ``ephemeral:<name>``, in one round trip: `held` itself when the
        stored record is that one (it does not travel back), another stored record, or None
        when there is none. With a `candidate` and no record, the candidate is stored first
        (atomically: of processes racing, exactly one record wins and all of them get it).
        Storing a record or `refresh` starts its lifetime (`ttl` seconds) again."""
        k = self.key("ephemeral", _check_name("name", name))
        args = [_check_ttl(ttl), _flag(refresh), candidate or b"",
                hashlib.sha1(held).hexdigest() if held else ""]
        value = await self._script("shared_material", "shared_material", [k], args)
        if value == 1:
            return held
        return value or None

    # -- generic JSON values ---------------------------------------------------------------

    def _kv_key(self, kind: str, key: str) -> str:
        return self.key("kv", _check_name("kind", kind), digest(_check_ident("key", key)))

    async def put_json(self, kind: str, key: str, value: Any, ttl: int) -> None:
        """Store a JSON value under ``kv:<kind>:<sha256(key)>`` for `ttl` seconds."""
        k, raw, ex = self._kv_key(kind, key), _dumps(value), _check_ttl(ttl)
        await self._run("put_json", k, ("SET", k, raw, "EX", ex))

    async def get_json(self, kind: str, key: str, *, refresh_ttl: int | None = None) -> Any:
        """The value stored by `put_json`, or None; with `refresh_ttl` its TTL starts again
        (GETEX, the same round trip)."""
        k = self._kv_key(kind, key)
        if refresh_ttl is None:
            return _loads(await self._run("get_json", k, ("GET", k)))
        ex = _check_ttl(refresh_ttl)
        return _loads(await self._run("get_json", k, ("GETEX", k, "EX", ex)))

    async def delete(self, kind: str, key: str) -> bool:
        """Delete a `put_json` value; True if it existed."""
        k = self._kv_key(kind, key)
        return bool(await self._run("delete", k, ("DEL", k)))


def describe(url: str) -> str:
    """The URL for messages: passwords replaced."""
    return redact(url)


def main(argv: Optional[list] = None) -> int:
    """`python -m shared.store new-generation`: refuse every code, token and sign-in issued
    until now (docs/operations.md: after restoring an older backup)."""
    import argparse
    import os
    import sys
    parser = argparse.ArgumentParser(
        prog="python -m shared.store", description="Start a new generation in every bucket: "
        "every code, refresh token, access token and sign-in issued until now is refused "
        "(after restoring an older backup of Redis, or a failover that lost writes).")
    parser.add_argument("command", choices=["new-generation"])
    parser.add_argument("--redis-url", default=os.environ.get("KONNECTD_REDIS_URL"),
                        help="default: $KONNECTD_REDIS_URL")
    parser.add_argument("--redis-prefix", default="konnect:")
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("--redis-url or KONNECTD_REDIS_URL is needed")

    async def run() -> int:
        store = Store.from_url(args.redis_url, prefix=args.redis_prefix)
        try:
            return await store.new_generation()
        finally:
            await store.close()
    try:
        since = asyncio.run(run())
    except (StoreUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"new generation from {since}: everything issued before is refused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
