"""A short, bounded-staleness cache of a directory backend's entries (`ldap`, `kc`).

Token, refresh, userinfo, authorize and the identifier's hello ask the backend for the
user behind a subject on every request (`UserBackend.current`). With a directory behind
it, that is a network round trip and its decoding per request for what rarely changes.
`CachedBackend` answers those lookups from a copy for at most `ttl` seconds:

* the bound: an entry is used until `ttl` seconds after the directory was ASKED for it
  (not after it answered), so a user disabled, removed or changed in the directory is
  seen by every process of every service within `ttl` seconds: refresh, userinfo, new
  codes and sign-in sessions end by then. A user the directory does not return (None) is
  remembered for the same time;
* sign-in (`authenticate`) always asks the directory, and its fresh answer replaces the
  copy;
* sign-out, revocation and refresh-token reuse never go through here: they live in Redis
  and take effect at once;
* concurrent lookups of one subject make one directory request (the others wait for it);
  a failure (`BackendUnavailable`) is never remembered;
* at most `max_entries` subjects are kept (least recently used go first).

Each process has its own copy; `ttl` 0 turns the cache off (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional

from ..identity import Identity
from .base import UserBackend

DEFAULT_MAX_ENTRIES = 10000


class CachedBackend(UserBackend):
    def __init__(self, inner: UserBackend, ttl: float, *,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self.ttl, self.max_entries, self.clock = inner, ttl, max_entries, clock
        self.manager, self.provider = inner.manager, inner.provider
        self._entries: OrderedDict[str, tuple[float, Optional[Identity]]] = OrderedDict()
        self._pending: dict[str, asyncio.Future] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped backend's own attributes
        return getattr(self.inner, name)

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        asked = self.clock()
        identity = await self.inner.authenticate(username, password)
        if identity is not None:
            self._remember(identity.raw_sub, asked, identity)
        return identity

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        entry = self._entries.get(raw_sub)
        if entry is not None:
            if self.clock() < entry[0]:
                self._entries.move_to_end(raw_sub)
                return entry[1]
            del self._entries[raw_sub]
        pending = self._pending.get(raw_sub)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(raw_sub))
            self._pending[raw_sub] = pending
            pending.add_done_callback(lambda done: self._settled(raw_sub, done))
        # shielded: a caller that gives up does not cancel the others' answer
        return await asyncio.shield(pending)

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        if type(self.inner).current is not UserBackend.current:
            return await self.inner.current(raw_sub, kc_identity)  # not a plain lookup
        return await self.lookup(raw_sub)

    # The rest of the interface goes to the wrapped backend as it is (tests/users/
    # test_user_cache.py checks that every method of `UserBackend` is forwarded).

    def bind(self, core: Any) -> None:
        self.inner.bind(core)

    async def resolve(self, username: str) -> Optional[Identity]:
        return await self.inner.resolve(username)  # an authority's sign-in: always asked

    async def identify(self, cookie_header: str, accept_language: str = "",
                       user_agent: str = "") -> Optional[Identity]:
        return await self.inner.identify(cookie_header, accept_language, user_agent)

    async def end_session(self, identity: Identity) -> None:
        await self.inner.end_session(identity)

    async def close(self) -> None:
        self._entries.clear()
        await self.inner.close()

    async def _fetch(self, raw_sub: str) -> Optional[Identity]:
        asked = self.clock()
        identity = await self.inner.lookup(raw_sub)
        self._remember(raw_sub, asked, identity)
        return identity

    def _settled(self, raw_sub: str, done: asyncio.Future) -> None:
        self._pending.pop(raw_sub, None)
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have given up on it

    def _remember(self, raw_sub: str, asked: float, identity: Optional[Identity]) -> None:
        known = self._entries.get(raw_sub)
        if known is not None and known[0] > asked + self.ttl:
            return  # a newer answer (a sign-in meanwhile) stays
        self._entries[raw_sub] = (asked + self.ttl, identity)
        self._entries.move_to_end(raw_sub)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def cached(backend: UserBackend, ttl: float) -> UserBackend:
    """`backend` behind the cache, or as it is when `ttl` is 0."""
    return CachedBackend(backend, ttl) if ttl > 0 else backend
