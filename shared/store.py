"""Everything in Redis: codes, refresh tokens, the revocation list, replay markers, rate limits.

The only module that imports redis. Every key carries one prefix and a TTL; every redis
failure reaches callers as `StoreUnavailable` (rendered as 503 temporarily_unavailable).
It does not decide protocol outcomes: the grants and handlers do (design.md §3).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from typing import Any, Awaitable, Callable, TypeVar

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

# Atomic refresh-token redemption: the record goes (GETDEL) and, in the same step, a
# marker holding the family id takes its place for the record's remaining life, so a
# second presentation of the rotated token is recognised as reuse (RFC 6819 §5.2.2.3).
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

# The end of a code redemption in one round trip: the new refresh token's record (SET NX,
# as put_refresh) and then the code's redemption marker (as mark_code_redeemed).
_FINISH_CODE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""

# Lua shared by the grant scripts: does a decoded grant record hold offline_access?
_LUA_GRANT = """
local function has_offline(r)
  if type(r['scopes']) ~= 'table' then return false end
  for _, scope in ipairs(r['scopes']) do
    if scope == 'offline_access' then return true end
  end
  return false
end
"""

# Lua shared by the grant scripts: the not-before of a grant record's subject (written by
# a sign-out, Store.revoke_subject), or false. The record carries the public `sub` (the
# authorize service adds it; records without one are not checked: older codes and refresh
# families, documented in docs/architecture.md).
_LUA_NOT_BEFORE = """
local function not_before(r, prefix)
  if type(r['sub']) ~= 'string' or r['sub'] == '' then return false end
  return redis.call('GET', prefix .. r['sub'])
end
"""

# A whole code redemption in one round trip (Store.redeem_code). KEYS: the code, its
# redemption marker, the new refresh token. ARGV: client_id, redirect_uri, the S256
# challenge of the request's verifier ("" for none), the access token's jti, now, the
# access and refresh token lifetimes, the `revoked:sub:` key prefix. The code goes
# (GETDEL) in any case; only when the record is this client's, for this redirect_uri and
# this verifier, are the redemption marker and (with offline_access) the refresh token's
# record written: the refresh record is the code's own record, so a refresh grant finds
# the same grant. Returns {record, outcome, not-before}: outcome 0 nothing written, 1
# marker, 2 marker and refresh record, -1 the refresh token exists (nothing written); the
# not-before of the record's `sub` (its sign-out, Store.revoke_subject) or false.
# ARGV[9] "1" (`provisional`): a matching record without `created` (an older code, redeemed
# in two steps by the caller) gets its marker here too, outcome 0 all the same: written
# later, a concurrent second redemption between the GETDEL and that write found neither
# code nor marker and revoked nothing (RFC 6749 §4.1.2: SHOULD revoke what was issued).
_REDEEM_CODE = _LUA_GRANT + _LUA_NOT_BEFORE + """
local value = redis.call('GETDEL', KEYS[1])
if not value then return false end
local ok, r = pcall(cjson.decode, value)
if not ok or type(r) ~= 'table' then return {value, 0, false} end
local nbf = not_before(r, ARGV[8])
if r['client_id'] ~= ARGV[1] or type(r['family']) ~= 'string' then return {value, 0, nbf} end
local legacy = type(r['created']) ~= 'number' or r['created'] <= 0
if legacy and ARGV[9] ~= '1' then return {value, 0, nbf} end
local uri, challenge = r['redirect_uri'], r['code_challenge']
if uri ~= nil and uri ~= '' and uri ~= ARGV[2] then return {value, 0, nbf} end
if challenge == nil then challenge = '' end
if challenge ~= ARGV[3] then return {value, 0, nbf} end
local now, access_ttl, refresh_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if legacy then
  -- provisional marker (ARGV[9]): the caller issues in a second step with this jti
  redis.call('SET', KEYS[2], cjson.encode({family = r['family'], jti = ARGV[4],
             exp = now + refresh_ttl}), 'EX', refresh_ttl)
  return {value, 0, nbf}
end
local lifetime, outcome = access_ttl, 1
local remaining = r['created'] + refresh_ttl - now
if has_offline(r) and remaining > 0 then
  if not redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then return {value, -1, nbf} end
  lifetime, outcome = refresh_ttl, 2
end
redis.call('SET', KEYS[2], cjson.encode({family = r['family'], jti = ARGV[4], exp = now + lifetime}),
           'EX', lifetime)
return {value, outcome, nbf}
"""

# A refresh-token rotation in one round trip (Store.rotate_refresh). KEYS: the presented
# token, its spent marker, the new token. ARGV: the `revoked:family:` key prefix,
# client_id, now, the refresh token lifetime, the `revoked:sub:` key prefix. As
# take_refresh, the token goes (GETDEL) and its spent marker takes its place; the family's
# revocation and the subject's not-before are read; and when the record is this client's,
# the family not revoked and the grant has offline_access and time left, the record is
# stored again behind the new token (SET NX). Returns {record, revoked, written,
# not-before}: written 1 stored, 0 not, -1 the new token exists, -2 refused and NOT taken
# (ARGV[6] "1": another client's record, or ARGV[7..] scopes beyond the grant's); not-
# before or false. Refusing without taking leaves no window in which the token is gone:
# a put-back after the fact raced a concurrent rightful refresh (taken for reuse, RFC 6819
# §5.2.2.3: family revoked) and an RFC 7009 §2.1 revocation (which found no token, answered
# 200, and the put-back brought the token back alive).
_ROTATE_REFRESH = _LUA_GRANT + _LUA_NOT_BEFORE + """
local pttl = redis.call('PTTL', KEYS[1])
local value = redis.call('GET', KEYS[1])
if not value then return false end
local ok, r = pcall(cjson.decode, value)
if ARGV[6] == '1' and ok and type(r) == 'table' then
  local refused = r['client_id'] ~= ARGV[2]
  if not refused and #ARGV > 6 then
    local have = {}
    if type(r['scopes']) == 'table' then
      for _, scope in ipairs(r['scopes']) do have[scope] = true end
    end
    for i = 7, #ARGV do
      if not have[ARGV[i]] then refused = true end
    end
  end
  if refused then return {value, 0, -2, false} end
end
redis.call('DEL', KEYS[1])
local revoked, written, nbf = 0, 0, false
if ok and type(r) == 'table' and type(r['family']) == 'string' then
  nbf = not_before(r, ARGV[5])
  if pttl > 0 then
    redis.call('SET', KEYS[2], cjson.encode(r['family']), 'PX', pttl)
  end
  revoked = redis.call('EXISTS', ARGV[1] .. r['family'])
  if revoked == 0 and r['client_id'] == ARGV[2] and type(r['created']) == 'number' then
    local remaining = r['created'] + tonumber(ARGV[4]) - tonumber(ARGV[3])
    if has_offline(r) and remaining > 0 then
      if redis.call('SET', KEYS[3], value, 'EX', remaining, 'NX') then written = 1
      else written = -1 end
    end
  end
end
return {value, revoked, written, nbf}
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


REDEEM_UNCHECKED, REDEEM_MARKED, REDEEM_WITH_REFRESH = 0, 1, 2  # Store.redeem_code outcomes


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
    """All shared state of the provider, in one Redis database (design.md §3).

    Keys (after the prefix):

    - ``code:<sha256>``          authorization code grant, single use
    - ``code-used:<sha256>``     what was issued from a redeemed code
    - ``rt:<sha256>``            refresh-token record; ``rt-spent:<sha256>`` after rotation
    - ``revoked:jti:<jti>``, ``revoked:family:<id>``, ``revoked:sub:<sub>`` (not-before)
    - ``once:<kind>:<sha256>``   replay markers
    - ``ratelimit:<bucket>:<sha256>`` counters
    - ``client:<client_id>``     a dynamically registered client (its secret only as a hash)
    - ``kv:<kind>:<sha256>``     generic JSON values

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
        self._finish_code_script = _Script(client, _FINISH_CODE)
        self._rotate_refresh_script = _Script(client, _ROTATE_REFRESH)
        self._redeem_code_script = _Script(client, _REDEEM_CODE)

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

    async def take_code(self, code: str) -> dict | None:
        """Redeem a code: return its grant and delete it in one GETDEL, or None.

        RFC 6749 §4.1.2: a code is single use; concurrent redemptions of one code get the
        record exactly once.
        """
        k = self.key("code", digest(_check_ident("code", code)))
        return _loads(await self._call("take_code", lambda: self._redis.getdel(k)))

    async def mark_code_redeemed(self, code: str, info: dict, ttl: int) -> None:
        """Remember what was issued from a redeemed code (``code-used:<sha256>``).

        RFC 6749 §4.1.2 / §10.5: if the code is presented again, the token endpoint SHOULD
        revoke the tokens issued from it; `info` holds their ids (jti, family, ...), `ttl`
        their lifetime.
        """
        k = self.key("code-used", digest(_check_ident("code", code)))
        value, ex = _dumps(_check_record(info)), _check_ttl(ttl)
        await self._call("mark_code_redeemed", lambda: self._redis.set(k, value, ex=ex))

    async def finish_code_redemption(self, code: str, info: dict, ttl: int, *,
                                     refresh: tuple | None = None) -> None:
        """`mark_code_redeemed` and, when a refresh token was issued, `put_refresh`, in
        ONE round trip (one script): the two writes that end a code redemption.

        `refresh` is ``(token, record, ttl)``; its SET NX still raises `StoreConflict` if
        the token exists. Either write failing raises `StoreUnavailable` as usual.
        """
        k = self.key("code-used", digest(_check_ident("code", code)))
        value, ex = _dumps(_check_record(info)), _check_ttl(ttl)
        if refresh is None:
            await self._call("mark_code_redeemed", lambda: self._redis.set(k, value, ex=ex))
            return
        token, record, refresh_ttl = refresh
        rk = self.key("rt", digest(_check_ident("refresh token", token)))
        _check_record(record)
        _check_ident('record["family"]', record.get("family"))
        args = [_dumps(record), _check_ttl(refresh_ttl), value, ex]
        stored = await self._call("finish_code_redemption", lambda: self._finish_code_script(
            keys=[rk, k], args=args))
        if not stored:
            raise StoreConflict("refresh token already stored")

    async def redeem_code(self, code: str, *, client_id: str, redirect_uri: str,
                          challenge: str, jti: str, refresh_token: str, now: int,
                          access_ttl: int, refresh_ttl: int,
                          provisional: bool = False) -> tuple[dict | None, int, int | None]:
        """A code redemption in ONE round trip: `take_code` and, in the same step, the
        writes of `finish_code_redemption`, when the record matches the request.

        The writes happen only if the record's client_id, redirect_uri (when it has one)
        and code_challenge (`challenge` is the S256 of the request's verifier, "" for
        none) equal the request's and the record carries its `created` time. Then the
        marker ``{family, jti, exp}`` is written (its TTL: the refresh lifetime if a
        refresh token was stored, else the access token's) and, when the grant has
        offline_access and time left, the code's record is stored behind
        `refresh_token` (SET NX; a clash raises `StoreConflict`, nothing written).

        Returns ``(record, outcome, not_before)``: ``(None, 0, None)`` for an unknown or
        spent code; outcome `REDEEM_UNCHECKED` (nothing written: the caller checks the
        record and finishes the old way, or refuses), `REDEEM_MARKED` or
        `REDEEM_WITH_REFRESH`; `not_before` the subject's not-before (`revoke_subject`,
        read in the same script from the record's `sub`) or None. A caller that refuses
        after a write undoes it with `undo_code_redemption`.

        With `provisional`, a record that matches but has no `created` time (an older
        code) also gets its marker ``{family, jti, exp: now + refresh_ttl}`` in the same
        step (outcome still `REDEEM_UNCHECKED`): the caller issues with that `jti` and
        `finish_code_redemption` overwrites it. No window in which the code is gone but
        unmarked (a concurrent replay must revoke what is issued, RFC 6749 §4.1.2).
        """
        h = digest(_check_ident("code", code))
        keys = [self.key("code", h), self.key("code-used", h),
                self.key("rt", digest(_check_ident("refresh token", refresh_token)))]
        args = [_check_ident("client_id", client_id), redirect_uri or "", challenge or "",
                _check_ident("jti", jti), int(now), _check_ttl(access_ttl),
                _check_ttl(refresh_ttl), self.key("revoked", "sub", "")]
        if provisional:
            args.append("1")
        result = await self._call("redeem_code", lambda: self._redeem_code_script(
            keys=keys, args=args))
        if not result:
            return None, REDEEM_UNCHECKED, None
        value, outcome, nbf = result
        if outcome < 0:
            raise StoreConflict("refresh token already stored")
        return _loads(value), int(outcome), _not_before(nbf)

    async def undo_code_redemption(self, code: str, refresh_token: str) -> None:
        """Delete what `redeem_code` wrote (marker and refresh record) when the redemption
        was refused afterwards: nobody received those tokens."""
        keys = [self.key("code-used", digest(_check_ident("code", code))),
                self.key("rt", digest(_check_ident("refresh token", refresh_token)))]
        await self._call("undo_code_redemption", lambda: self._redis.delete(*keys))

    async def code_redemption(self, code: str) -> dict | None:
        """What `mark_code_redeemed` recorded for this code, or None."""
        k = self.key("code-used", digest(_check_ident("code", code)))
        return _loads(await self._call("code_redemption", lambda: self._redis.get(k)))

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
        """Redeem a refresh token for rotation: return its record and delete it, or None.

        In the same atomic step (a Lua script) ``rt-spent:<sha256>`` is set to the record's
        family for the record's remaining lifetime, so `spent_refresh_family` can tell a
        replayed, already rotated token (revoke the family, RFC 6819 §5.2.2.3) from an
        unknown one.
        """
        h = digest(_check_ident("refresh token", token))
        keys = [self.key("rt", h), self.key("rt-spent", h)]
        return _loads(await self._call(
            "take_refresh", lambda: self._take_refresh_script(keys=keys)))

    async def rotate_refresh(self, token: str, new_token: str, *, client_id: str, now: int,
                             refresh_ttl: int, keep_refused: bool = False,
                             scopes: list | tuple = ()) -> tuple:
        """A refresh-token rotation in ONE round trip: `take_refresh`, whether the record's
        family is on the revocation list (what `is_revoked(family=...)` answers) and, when
        the record is `client_id`'s, its family not revoked, the grant holds offline_access
        and time is left (created + `refresh_ttl` > `now`), the same record stored behind
        `new_token` for that remaining time (SET NX; a clash raises `StoreConflict`). The
        subject's not-before (`revoke_subject`, from the record's `sub`) is read too.

        Returns ``(record, revoked, stored, not_before)``; ``(None, False, False, None)``
        for an unknown or spent token; `not_before` is None when there is none. The presented token is taken either way. A caller that refuses after
        `stored` removes the new token (`take_refresh`) and may put the old one back.

        With `keep_refused`, a record of another client, or `scopes` (the request's, RFC
        6749 §6) beyond the record's, is returned WITHOUT being taken (nothing written):
        ``(record, False, None, None)``, `stored` None. The caller refuses; there is no
        put-back, so no window for a concurrent refresh or revocation (RFC 7009 §2.1).
        """
        h = digest(_check_ident("refresh token", token))
        keys = [self.key("rt", h), self.key("rt-spent", h),
                self.key("rt", digest(_check_ident("refresh token", new_token)))]
        args = [self.key("revoked", "family", ""), _check_ident("client_id", client_id),
                int(now), _check_ttl(refresh_ttl), self.key("revoked", "sub", "")]
        if keep_refused:
            args.append("1")
            args.extend(_check_ident("scope", scope) for scope in scopes)
        result = await self._call("rotate_refresh", lambda: self._rotate_refresh_script(
            keys=keys, args=args))
        if not result:
            return None, False, False, None
        value, revoked, stored, nbf = result
        if stored == -2:
            return _loads(value), False, None, None
        if stored < 0:
            raise StoreConflict("refresh token already stored")
        return _loads(value), bool(revoked), bool(stored), _not_before(nbf)

    async def peek_refresh(self, token: str) -> dict | None:
        """A refresh-token record without redeeming it (introspection, revocation checks)."""
        k = self.key("rt", digest(_check_ident("refresh token", token)))
        return _loads(await self._call("peek_refresh", lambda: self._redis.get(k)))

    async def spent_refresh_family(self, token: str) -> str | None:
        """The family of a refresh token that was already redeemed, or None."""
        k = self.key("rt-spent", digest(_check_ident("refresh token", token)))
        return _loads(await self._call("spent_refresh_family", lambda: self._redis.get(k)))

    # -- revocation list (RFC 7009; design.md §3) ------------------------------------------

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
