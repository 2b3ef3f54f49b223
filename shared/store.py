"""Everything in Redis: codes, refresh tokens, the revocation list, replay markers, rate limits.

The only module that imports redis. Every key carries one prefix and a TTL; every redis
failure reaches callers as `StoreUnavailable` (rendered as 503 temporarily_unavailable).

The two grant scripts are where the single-use rules live, because only an atomic step
can enforce them: `redeem_code` decides whether a code may be redeemed by this request
(client, redirect_uri, PKCE, a sign-out since) and `rotate_refresh` whether a refresh
token may be rotated by it (client, scope, family revoked). They answer with an outcome
(`CodeOutcome`, `RotationOutcome`) that the token endpoint only translates into its
answer; it does not check these rules again. What the store cannot know (the user still
exists, the client's grant types) stays with the caller.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .errors import Unavailable

log = logging.getLogger("konnect.store")

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# A refresh token taken for good (revocation, the successor nobody received): the record
# goes (GETDEL) and, in the same step, a marker holding the family id takes its place for
# the record's remaining life, so a later presentation is recognised as reuse (RFC 6819
# §5.2.2.3).
_TAKE_REFRESH = """
local pttl = redis.call('PTTL', KEYS[1])
local value = redis.call('GETDEL', KEYS[1])
if not value then return false end
local ok, record = pcall(cjson.decode, value)
if pttl > 0 and ok and type(record) == 'table' and type(record['family']) == 'string' then
  redis.call('SET', KEYS[2], cjson.encode(record['family']), 'PX', pttl)
end
return value
"""

# Lua shared by the grant scripts.
_LUA_GRANT = """
local function has_offline(r)
  if type(r['scopes']) ~= 'table' then return false end
  for _, scope in ipairs(r['scopes']) do
    if scope == 'offline_access' then return true end
  end
  return false
end
-- The not-before of a grant record's subject (written by a sign-out, Store.revoke_subject),
-- or false. Records carry the public `sub` (Grant.to_record).
local function not_before(r, prefix)
  if type(r['sub']) ~= 'string' or r['sub'] == '' then return false end
  return redis.call('GET', prefix .. r['sub'])
end
local function grant_ok(r)
  return type(r) == 'table' and type(r['family']) == 'string'
    and type(r['created']) == 'number' and r['created'] > 0
end
"""

# A code redemption in one round trip (Store.redeem_code). KEYS: the code, its redemption
# marker, the new refresh token. ARGV: client_id, redirect_uri, the S256 challenge of the
# request's verifier ("" for none or a malformed one), "1" if a code_verifier was sent,
# "1" if the client is public, "1" if the client may get a refresh token, the access
# token's jti, now, the access and refresh token lifetimes, the `revoked:sub:` prefix.
#
# The code goes (GETDEL) whatever follows: a code is tried once (RFC 6749 §4.1.2). The
# rules, in order (RFC 6749 §4.1.3, RFC 7636 §4.6, OIDC Core §3.1.3.2):
#   - the code was issued to this client, for this redirect_uri (when it named one);
#   - PKCE: a challenge was sent and this verifier's S256 equals it; a verifier without a
#     challenge is refused, and so is a public client without one (RFC 9700 §2.1.1). The
#     challenge is compared as a SHA-256 output, which an attacker cannot steer, so plain
#     string equality leaks nothing useful;
#   - its subject has not signed out since it was issued (auth_time after the not-before).
# Only then are the redemption marker ({family, jti, exp}: a replay revokes them) and, for
# an offline_access grant with time left whose client may refresh, the refresh token's
# record (the code's own record: a refresh finds the same grant) written.
# Returns {outcome, value}: 'unknown' (no code; value: its marker when it was redeemed
# before), 'invalid', 'wrong_client', 'wrong_redirect_uri', 'verifier_without_challenge',
# 'pkce_required', 'pkce_mismatch', 'signed_out', 'clash' (the refresh token exists:
# nothing written), 'issued', 'issued_with_refresh'.
_REDEEM_CODE = _LUA_GRANT + """
local value = redis.call('GETDEL', KEYS[1])
if not value then
  local marker = redis.call('GET', KEYS[2])
  if marker then return {'replayed', marker} end
  return {'unknown', false}
end
local ok, r = pcall(cjson.decode, value)
if not ok or not grant_ok(r) then return {'invalid', value} end
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
local nbf = not_before(r, ARGV[11])
if nbf and (tonumber(r['auth_time']) or 0) <= tonumber(nbf) then
  return {'signed_out', value}
end
local now, access_ttl, refresh_ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local lifetime, outcome = access_ttl, 'issued'
local remaining = r['created'] + refresh_ttl - now
if ARGV[6] == '1' and has_offline(r) and remaining > 0 then
  if not redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then
    return {'clash', value}
  end
  lifetime, outcome = refresh_ttl, 'issued_with_refresh'
end
redis.call('SET', KEYS[2], cjson.encode({family = r['family'], jti = ARGV[7],
           exp = now + lifetime}), 'EX', lifetime)
return {outcome, value}
"""

# A refresh-token rotation in one round trip (Store.rotate_refresh). KEYS: the presented
# token, its spent marker, the new token. ARGV: the `revoked:family:` prefix, client_id,
# now, the refresh token lifetime, the `revoked:sub:` prefix, then the requested scopes.
#
# The rules (RFC 6749 §6, RFC 6819 §5.2.2.3, RFC 9700 §4.14.2):
#   - a token that is gone but has a spent marker was rotated before: 'reused' (value: its
#     family; the caller revokes it);
#   - another client's token, or scopes beyond the grant's, are refused WITHOUT taking the
#     token ('wrong_client', 'wider_scope'): a put-back after the fact would race the
#     rightful client's concurrent refresh (taken for reuse) and an RFC 7009 revocation
#     (which found no token, answered 200, and the put-back revived it);
#   - otherwise the token is taken and its spent marker set; a revoked family is
#     'revoked'; else the record is stored behind the new token for the family's remaining
#     time ('rotated', with 1 when stored: not when the family's time is up).
# Returns {outcome, value, stored, not-before}.
_ROTATE_REFRESH = _LUA_GRANT + """
local pttl = redis.call('PTTL', KEYS[1])
local value = redis.call('GET', KEYS[1])
if not value then
  local family = redis.call('GET', KEYS[2])
  if family then return {'reused', family, 0, false} end
  return {'unknown', false, 0, false}
end
local ok, r = pcall(cjson.decode, value)
if not ok or not grant_ok(r) then
  redis.call('DEL', KEYS[1])
  return {'invalid', value, 0, false}
end
if r['client_id'] ~= ARGV[2] then return {'wrong_client', value, 0, false} end
if #ARGV > 5 then
  local have = {}
  if type(r['scopes']) == 'table' then
    for _, scope in ipairs(r['scopes']) do have[scope] = true end
  end
  for i = 6, #ARGV do
    if not have[ARGV[i]] then return {'wider_scope', value, 0, false} end
  end
end
redis.call('DEL', KEYS[1])
if pttl > 0 then redis.call('SET', KEYS[2], cjson.encode(r['family']), 'PX', pttl) end
if redis.call('EXISTS', ARGV[1] .. r['family']) == 1 then
  return {'revoked', value, 0, false}
end
local nbf = not_before(r, ARGV[5])
local remaining = r['created'] + tonumber(ARGV[4]) - tonumber(ARGV[3])
if has_offline(r) and remaining > 0 then
  if not redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then
    return {'clash', value, 0, nbf}
  end
  return {'rotated', value, 1, nbf}
end
return {'rotated', value, 0, nbf}
"""

# A subject's not-before time only moves forward and its entry only lives longer, so a
# later, weaker call can never un-revoke tokens that an earlier call revoked.
# A connection that broke (not a timeout: a paused Redis must not be waited for twice).
_CONNECTION_LOST = (RedisConnectionError, ConnectionResetError, BrokenPipeError)

# DECR only an existing, positive counter: DECR on a key that expired since the hit would
# create it at -1 with no TTL (a credit that never ends).
_GIVE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""

_REVOKE_SUBJECT = """
local nbf = tonumber(ARGV[1])
local ttl_ms = tonumber(ARGV[2]) * 1000
local current = redis.call('GET', KEYS[1])
if current then
  local cur = tonumber(current)
  if cur and cur > nbf then nbf = cur end
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > ttl_ms then ttl_ms = pttl end
end
redis.call('SET', KEYS[1], string.format('%d', nbf), 'PX', string.format('%d', ttl_ms))
return string.format('%d', nbf)
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
    """A Lua script run with EVALSHA, loaded again on NOSCRIPT (Redis restarted or flushed).

    redis-py's `Script` does the same but checks `isinstance(client, Pipeline)` on every
    call, a slow typing-Protocol check that showed in the token endpoint's profile; EVALSHA
    goes straight to `execute_command` for the same reason.
    """

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._client, self._source = client, source
        self._sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    async def __call__(self, keys: list = (), args: list = ()) -> Any:
        run = self._client.execute_command
        try:
            return await run("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(self._source)
            return await run("EVALSHA", self._sha, len(keys), *keys, *args)


class CodeOutcome(enum.Enum):
    """What `Store.redeem_code` found and did (the rules: `_REDEEM_CODE`)."""

    UNKNOWN = "unknown"                      # no such code (never issued, or expired)
    REPLAYED = "replayed"                    # redeemed before: `spent` says what it issued
    INVALID = "invalid"                      # a record no grant can come from
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
    spent: Optional[dict] = None    # REPLAYED: {family, jti, exp} of the first redemption

    @property
    def issued(self) -> bool:
        return self.outcome in (CodeOutcome.ISSUED, CodeOutcome.ISSUED_WITH_REFRESH)


class RotationOutcome(enum.Enum):
    """What `Store.rotate_refresh` found and did (the rules: `_ROTATE_REFRESH`)."""

    UNKNOWN = "unknown"            # no such token (never issued, expired, or revoked)
    REUSED = "reused"              # rotated before: `family` is its family
    INVALID = "invalid"            # a record no grant can come from (taken)
    WRONG_CLIENT = "wrong_client"  # another client's token (NOT taken)
    WIDER_SCOPE = "wider_scope"    # scopes beyond the grant's (NOT taken)
    REVOKED = "revoked"            # its family is revoked (taken)
    ROTATED = "rotated"            # taken; `stored`: the grant goes on behind the new token


@dataclass(frozen=True)
class Rotation:
    """The answer of `Store.rotate_refresh`."""

    outcome: RotationOutcome
    record: Optional[dict] = None
    family: Optional[str] = None       # REUSED
    stored: bool = False               # ROTATED: the new token's record was written
    not_before: Optional[int] = None   # ROTATED: the subject's sign-out, if any


class StoreUnavailable(Unavailable):
    """Redis cannot be reached, timed out, or refused the command.

    The message names the operation and the redis error class, for the log only; it never
    contains keys, tokens or credentials.
    """


class StoreConflict(Exception):
    """A single-use record (code, refresh token) already exists under that key.

    With 256-bit random tokens this means a bug (the same token issued twice), so it is an
    exception, not a return value that a caller could ignore.
    """


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


def _not_before(raw: bytes | None) -> int | None:
    """A subject's not-before as the grant scripts return it (`revoke_subject` writes it)."""
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _check_ttl(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
            or ttl < 1:
        raise ValueError(f"ttl must be a number of seconds >= 1, got {ttl!r}")
    return math.ceil(ttl)


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must match {_NAME.pattern}, got {name!r}")
    return name


def _check_ident(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


class Store:
    """All shared state of the provider, in one Redis database (docs/architecture.md, "State
    in Redis").

    Keys (after the prefix):

    - ``code:<sha256>``          authorization code grant, single use
    - ``code-used:<sha256>``     what was issued from a redeemed code
    - ``rt:<sha256>``            refresh-token record; ``rt-spent:<sha256>`` after rotation
    - ``revoked:jti:<jti>``, ``revoked:family:<id>``, ``revoked:sub:<sub>`` (not-before)
    - ``once:<kind>:<sha256>``   replay markers
    - ``ratelimit:<bucket>:<sha256>`` counters
    - ``client:<client_id>``     a dynamically registered client (its secret only as a hash)
    - ``kv:<kind>:<sha256>``     JSON values of the services and backends
    - ``ephemeral:<name>``       the group's shared ephemeral key and secret, when none is
      configured (`shared_material`)

    Every key is written with a TTL and values are compact JSON. Every method either
    returns, raises `ValueError` for a bad argument (before any round trip), or raises
    `StoreUnavailable`; nothing waits longer than `timeout` seconds. The Store recovers by
    itself when Redis comes back (connections are re-established on the next call).
    Multi-key scripts assume one Redis primary (not Redis Cluster).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "konnect:",
                 now: Callable[[], float] = time.time, timeout: float | None = None) -> None:
        """Wrap a `redis.asyncio.Redis` client; the Store owns it and `close()` closes it.

        `timeout` bounds each operation as a whole (connect + command); `from_url` sets it
        to connect_timeout + socket_timeout.
        """
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        self._redis = client
        self.prefix = prefix
        self.now = now
        self._timeout = timeout
        self._down = False
        self._take_refresh_script = _Script(client, _TAKE_REFRESH)
        self._revoke_subject_script = _Script(client, _REVOKE_SUBJECT)
        self._give_back_script = _Script(client, _GIVE_BACK)
        self._rotate_refresh_script = _Script(client, _ROTATE_REFRESH)
        self._redeem_code_script = _Script(client, _REDEEM_CODE)
        self._shared_material_script = _Script(client, _SHARED_MATERIAL)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "konnect:", socket_timeout: float = 2.0,
                 connect_timeout: float = 2.0, health_check_interval: int = 30,
                 now: Callable[[], float] = time.time) -> "Store":
        """A Store for a ``redis://``, ``rediss://`` or ``unix://`` URL; connects lazily.

        redis-py 8 defaults to 5 s timeouts and 10 retries with back-off, so a dead Redis
        would hold a request for many seconds: here the timeouts are explicit and redis-py
        retries nothing (`_call` decides: after a broken connection it drops the idle ones
        and runs the command once more). `health_check_interval` PINGs a
        connection that was idle that long before reusing it, so half-open connections are
        noticed.
        """
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=health_check_interval,
            retry=Retry(NoBackoff(), 0),
            client_name="konnect",
        )
        return cls(client, prefix=prefix, now=now, timeout=socket_timeout + connect_timeout)

    # -- plumbing -------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """The full Redis key for `parts` (joined with ':' after the prefix)."""
        return self.prefix + ":".join(parts)

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
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
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                    result = await fn()
        except (RedisError, OSError) as err:  # builtin TimeoutError is an OSError
            if not self._down:
                log.warning("redis unavailable during %s: %s", op, type(err).__name__)
            self._down = True
            raise StoreUnavailable(f"redis {op} failed: {type(err).__name__}: {err}"[:300]) \
                from err
        if self._down:
            self._down = False
            log.info("redis available again")
        return result

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._redis.aclose()

    async def ping(self) -> bool:
        """True if Redis answers; raises StoreUnavailable otherwise (health checks)."""
        return bool(await self._call("ping", self._redis.ping))

    # -- authorization codes (RFC 6749 §4.1.2, §10.5) ---------------------------------------

    async def put_code(self, code: str, record: dict, ttl: int) -> None:
        """Store the grant behind an authorization code for `ttl` seconds (SET NX EX).

        The key is ``code:<sha256(code)>``: the code itself never reaches Redis.
        Raises `StoreConflict` if that code is already stored.
        """
        k = self.key("code", digest(_check_ident("code", code)))
        value, ex = _dumps(_check_record(record)), _check_ttl(ttl)
        if not await self._call("put_code", lambda: self._redis.set(k, value, ex=ex, nx=True)):
            raise StoreConflict("authorization code already stored")

    async def redeem_code(self, code: str, *, client_id: str, redirect_uri: str,
                          challenge: str, verifier_sent: bool, public: bool,
                          refresh_allowed: bool, jti: str, refresh_token: str, now: int,
                          access_ttl: int, refresh_ttl: int) -> CodeRedemption:
        """Redeem a code for this request in ONE round trip (the rules: `_REDEEM_CODE`).

        `challenge` is the S256 of the request's code_verifier ("" for none or a malformed
        one), `verifier_sent` whether it sent one. When the code may be redeemed, its
        redemption marker ``{family, jti, exp}`` is written (a replay revokes them) and, for
        an offline_access grant with time left whose client may refresh
        (`refresh_allowed`), its record is stored behind `refresh_token` (the outcome says
        which). The code is spent whatever the outcome. A refresh-token clash raises
        `StoreConflict` (nothing written). A caller that refuses after the writes (the user
        is gone) removes them with `undo_code_redemption`.
        """
        h = digest(_check_ident("code", code))
        keys = [self.key("code", h), self.key("code-used", h),
                self.key("rt", digest(_check_ident("refresh token", refresh_token)))]
        args = [_check_ident("client_id", client_id), redirect_uri or "", challenge or "",
                _flag(verifier_sent), _flag(public), _flag(refresh_allowed),
                _check_ident("jti", jti), int(now), _check_ttl(access_ttl),
                _check_ttl(refresh_ttl), self.key("revoked", "sub", "")]
        outcome, value = await self._call("redeem_code", lambda: self._redeem_code_script(
            keys=keys, args=args))
        outcome = _text(outcome)
        if outcome == "clash":
            raise StoreConflict("refresh token already stored")
        if outcome == "replayed":
            return CodeRedemption(CodeOutcome.REPLAYED, spent=_loads(value))
        return CodeRedemption(CodeOutcome(outcome), record=_loads(value) if value else None)

    async def undo_code_redemption(self, code: str, refresh_token: str) -> None:
        """Delete what `redeem_code` wrote (marker and refresh record) when the redemption
        was refused afterwards: nobody received those tokens."""
        keys = [self.key("code-used", digest(_check_ident("code", code))),
                self.key("rt", digest(_check_ident("refresh token", refresh_token)))]
        await self._call("undo_code_redemption", lambda: self._redis.delete(*keys))

    # -- refresh tokens (RFC 6749 §6, §10.4; RFC 6819 §5.2.2.3 rotation) ----------------------

    async def put_refresh(self, token: str, record: dict, ttl: int) -> None:
        """Store a refresh-token record under ``rt:<sha256(token)>`` (SET NX EX).

        `record["family"]` (a non-empty string) names the rotation family: every token
        rotated from the same grant shares it. Raises `StoreConflict` if the token exists.
        """
        k = self.key("rt", digest(_check_ident("refresh token", token)))
        _check_record(record)
        _check_ident('record["family"]', record.get("family"))
        value, ex = _dumps(record), _check_ttl(ttl)
        if not await self._call("put_refresh", lambda: self._redis.set(k, value, ex=ex, nx=True)):
            raise StoreConflict("refresh token already stored")

    async def take_refresh(self, token: str) -> dict | None:
        """Take a refresh token for good: return its record and delete it, or None.

        In the same atomic step ``rt-spent:<sha256>`` is set to the record's family for the
        record's remaining lifetime, so a later presentation is recognised as reuse
        (`rotate_refresh` answers REUSED) rather than as an unknown token.
        """
        h = digest(_check_ident("refresh token", token))
        keys = [self.key("rt", h), self.key("rt-spent", h)]
        return _loads(await self._call(
            "take_refresh", lambda: self._take_refresh_script(keys=keys)))

    async def rotate_refresh(self, token: str, new_token: str, *, client_id: str, now: int,
                             refresh_ttl: int, scopes: list | tuple = ()) -> Rotation:
        """Rotate a refresh token for this request in ONE round trip (the rules:
        `_ROTATE_REFRESH`): `scopes` are the request's (RFC 6749 §6; empty: the grant's).

        On ROTATED the presented token is spent and, unless the family's time is up, the
        grant is stored behind `new_token` (`stored`; a clash raises `StoreConflict`); the
        subject's not-before is read in the same step. WRONG_CLIENT and WIDER_SCOPE leave
        the token in place. A caller that cannot finish (the user directory is down) puts
        the token back with `put_refresh` and removes the new one with `take_refresh`.
        """
        h = digest(_check_ident("refresh token", token))
        keys = [self.key("rt", h), self.key("rt-spent", h),
                self.key("rt", digest(_check_ident("refresh token", new_token)))]
        args = [self.key("revoked", "family", ""), _check_ident("client_id", client_id),
                int(now), _check_ttl(refresh_ttl), self.key("revoked", "sub", ""),
                *(_check_ident("scope", scope) for scope in scopes)]
        outcome, value, stored, nbf = await self._call(
            "rotate_refresh", lambda: self._rotate_refresh_script(keys=keys, args=args))
        outcome = _text(outcome)
        if outcome == "clash":
            raise StoreConflict("refresh token already stored")
        if outcome == "reused":
            return Rotation(RotationOutcome.REUSED, family=_loads(value))
        return Rotation(RotationOutcome(outcome), record=_loads(value) if value else None,
                        stored=bool(stored), not_before=_not_before(nbf or None))

    async def peek_refresh(self, token: str) -> dict | None:
        """A refresh-token record without redeeming it (introspection, revocation)."""
        k = self.key("rt", digest(_check_ident("refresh token", token)))
        return _loads(await self._call("peek_refresh", lambda: self._redis.get(k)))

    async def spent_refresh_family(self, token: str) -> str | None:
        """The family of a refresh token that was already redeemed, or None."""
        k = self.key("rt-spent", digest(_check_ident("refresh token", token)))
        return _loads(await self._call("spent_refresh_family", lambda: self._redis.get(k)))

    # -- revocation list (RFC 7009; docs/architecture.md "State in Redis") -----------------

    def _remaining(self, exp: float) -> int:
        """Seconds until `exp`, rounded up, at least 1: the entry outlives the token."""
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise ValueError(f"exp must be a unix time, got {exp!r}")
        return max(1, math.ceil(exp - self.now()))

    async def _revoke(self, op: str, k: str, exp: float) -> None:
        ttl = self._remaining(exp)

        async def run() -> None:
            # SET NX keeps an existing entry; EXPIRE GT only ever lengthens it.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(k, _dumps(int(exp)), ex=ttl, nx=True)
                pipe.expire(k, ttl, gt=True)
                await pipe.execute()

        await self._call(op, run)

    async def revoke_jti(self, jti: str, exp: float) -> None:
        """Revoke one token by its `jti` until its `exp` (RFC 7009 §2.1)."""
        await self._revoke("revoke_jti", self.key("revoked", "jti", _check_ident("jti", jti)), exp)

    async def revoke_family(self, family: str, exp: float) -> None:
        """Revoke every token of a grant/rotation family until `exp` (the family's last
        possible expiry), e.g. on refresh-token reuse (RFC 6819 §5.2.2.3) or code replay
        (RFC 6749 §4.1.2)."""
        await self._revoke("revoke_family",
                           self.key("revoked", "family", _check_ident("family", family)), exp)

    async def revoke_subject(self, sub: str, not_before: int, ttl: int) -> None:
        """Revoke every token of `sub` issued at or before `not_before` (logout everywhere).

        `ttl` should be the longest lifetime of any token of that subject. Repeated calls
        keep the latest not-before and the longest remaining TTL.
        """
        k = self.key("revoked", "sub", _check_ident("sub", sub))
        if isinstance(not_before, bool) or not isinstance(not_before, (int, float)) \
                or not math.isfinite(not_before):
            raise ValueError(f"not_before must be a unix time, got {not_before!r}")
        # rounded up: a token issued in the same second as the revocation is revoked too
        args = [math.ceil(not_before), _check_ttl(ttl)]
        await self._call("revoke_subject",
                         lambda: self._revoke_subject_script(keys=[k], args=args))

    async def subject_not_before(self, sub: str) -> int | None:
        """The subject's not-before (its last sign-out, `revoke_subject`), or None."""
        k = self.key("revoked", "sub", _check_ident("sub", sub))
        return _not_before(await self._call("subject_not_before", lambda: self._redis.get(k)))

    async def is_revoked(self, *, jti: str | None = None, family: str | None = None,
                         sub: str | None = None, iat: float | None = None) -> bool:
        """True if the token is revoked by its jti, its family, or its subject's not-before.

        One round trip (a single MGET over the keys that apply). Fails closed: if Redis
        cannot answer this raises `StoreUnavailable`, never returns False.
        """
        keys, kinds = [], []
        if jti is not None:
            keys.append(self.key("revoked", "jti", _check_ident("jti", jti)))
            kinds.append("jti")
        if family is not None:
            keys.append(self.key("revoked", "family", _check_ident("family", family)))
            kinds.append("family")
        if sub is not None:
            if iat is None:
                raise ValueError("is_revoked(sub=...) needs the token's iat")
            keys.append(self.key("revoked", "sub", _check_ident("sub", sub)))
            kinds.append("sub")
        if not keys:
            raise ValueError("is_revoked needs at least one of jti, family, sub")
        # execute_command: redis-py's `mget` wrapper re-inspects its arguments on each call
        values = await self._call("is_revoked",
                                  lambda: self._redis.execute_command("MGET", *keys))
        for kind, raw in zip(kinds, values):
            if raw is None:
                continue
            if kind != "sub" or iat <= int(_loads(raw)):
                return True
        return False

    # -- replay markers --------------------------------------------------------------------

    async def first_use(self, kind: str, ident: str, ttl: int) -> bool:
        """True the first time (`kind`, `ident`) is seen within `ttl` seconds, else False.

        One SET NX EX, so concurrent callers cannot both see True (e.g. the `jti` of a
        private_key_jwt client assertion, RFC 7523 §3 item 7).
        """
        k = self.key("once", _check_name("kind", kind), digest(_check_ident("ident", ident)))
        ex = _check_ttl(ttl)
        return bool(await self._call("first_use",
                                     lambda: self._redis.set(k, b"1", ex=ex, nx=True)))

    # -- rate limits -----------------------------------------------------------------------

    def _rl_key(self, bucket: str, key: str) -> str:
        return self.key("ratelimit", _check_name("bucket", bucket),
                        digest(_check_ident("key", key)))

    async def hit(self, bucket: str, key: str, *, window: int) -> int:
        """Count one attempt for `key` (a user name, an IP, ...) in a fixed window.

        Returns the number of attempts in the current window. INCR and EXPIRE NX run in one
        MULTI, so the window starts at the first attempt and is never extended by later ones.
        """
        k, ex = self._rl_key(bucket, key), _check_ttl(window)

        async def run() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(k)
                pipe.expire(k, ex, nx=True)
                count, _ = await pipe.execute()
            return int(count)

        return await self._call("hit", run)

    async def retry_after(self, bucket: str, key: str) -> int:
        """Seconds until the current window of `key` ends (0 if there is none)."""
        k = self._rl_key(bucket, key)
        return max(0, int(await self._call("retry_after", lambda: self._redis.ttl(k))))

    async def reset(self, bucket: str, key: str) -> None:
        """Forget the attempts of `key` (e.g. after a successful logon)."""
        k = self._rl_key(bucket, key)
        await self._call("reset", lambda: self._redis.delete(k))

    async def give_back(self, bucket: str, key: str) -> int:
        """Take back one attempt `hit` counted for `key` (e.g. the IP's hit of a sign-in that
        succeeded), keeping the window's expiry. One script, so it never goes below 0 nor
        outlives the window. Returns the count left."""
        k = self._rl_key(bucket, key)
        return int(await self._call("give_back", lambda: self._give_back_script(keys=[k])))

    # -- dynamically registered clients (OIDC Dynamic Client Registration 1.0) ----------------

    async def put_client(self, client_id: str, record: dict, ttl: int) -> None:
        """Store a registered client under ``client:<client_id>`` for `ttl` seconds (SET NX
        EX): every process of every service reads it with `get_client`. The id is issued by
        the server (a restricted alphabet); raises `StoreConflict` if it exists already."""
        k = self.key("client", _check_name("client_id", client_id))
        value, ex = _dumps(_check_record(record)), _check_ttl(ttl)
        if not await self._call("put_client", lambda: self._redis.set(k, value, ex=ex, nx=True)):
            raise StoreConflict("client id already registered")

    async def get_client(self, client_id: str) -> dict | None:
        """The record `put_client` stored, or None (unknown or expired)."""
        k = self.key("client", _check_name("client_id", client_id))
        return _loads(await self._call("get_client", lambda: self._redis.get(k)))

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
        value = await self._call("shared_material", lambda: self._shared_material_script(
            keys=[k], args=args))
        if value == 1:
            return held
        return value or None

    # -- generic JSON values ---------------------------------------------------------------

    def _kv_key(self, kind: str, key: str) -> str:
        return self.key("kv", _check_name("kind", kind), digest(_check_ident("key", key)))

    async def put_json(self, kind: str, key: str, value: Any, ttl: int) -> None:
        """Store a JSON value under ``kv:<kind>:<sha256(key)>`` for `ttl` seconds."""
        k, raw, ex = self._kv_key(kind, key), _dumps(value), _check_ttl(ttl)
        await self._call("put_json", lambda: self._redis.set(k, raw, ex=ex))

    async def get_json(self, kind: str, key: str, *, refresh_ttl: int | None = None) -> Any:
        """The value stored by `put_json`, or None; with `refresh_ttl` its TTL starts again
        (GETEX, the same round trip)."""
        k = self._kv_key(kind, key)
        if refresh_ttl is None:
            return _loads(await self._call("get_json", lambda: self._redis.get(k)))
        ex = _check_ttl(refresh_ttl)
        return _loads(await self._call("get_json", lambda: self._redis.getex(k, ex=ex)))

    async def delete(self, kind: str, key: str) -> bool:
        """Delete a `put_json` value; True if it existed."""
        k = self._kv_key(kind, key)
        return bool(await self._call("delete", lambda: self._redis.delete(k)))


def _check_record(record: dict) -> dict:
    if not isinstance(record, dict):
        raise ValueError("record must be a dict")
    return record
