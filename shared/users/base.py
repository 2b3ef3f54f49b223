"""The one async interface every user backend implements (docs/architecture.md, "Shared library").

Backends never block the event loop: network and CPU-heavy work (LDAP, SOAP, password
hashing) runs in a bounded thread pool or natively async. Every network call has a timeout.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Mapping, Optional

from ..errors import Unavailable
from ..identity import Identity


#: the longest username and password a sign-in may send (characters): anything longer is a
#: failed logon before any backend work (the identifier's logon API and every backend)
MAX_USERNAME = 256
MAX_PASSWORD = 1024


class BackendUnavailable(Unavailable):
    """The directory or server behind a backend cannot be reached (rendered as 503)."""


class Deadline:
    """The overall deadline of one backend call (monotonic clock), shared by the event
    loop and the worker thread that does the call's round trips: the worker checks it
    before each step and caps every socket timeout by the time left."""

    def __init__(self, seconds: float, what: str) -> None:
        self.expires = time.monotonic() + seconds
        self.what = what
        self.started = False  # a worker took the call (it did not wait out its time queued)

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def check(self) -> float:
        """The time left; BackendUnavailable when there is none."""
        left = self.remaining()
        if left <= 0:
            raise BackendUnavailable(f"{self.what}: no answer in time")
        return left

    def socket_timeout(self, timeout: float) -> float:
        return min(timeout, self.check())


class UserBackend(abc.ABC):
    #: the manager name (`--identity-manager`) and Konnect's subject salt (`Identity.backend`)
    manager: str = ""
    provider: str = ""
    #: Users sign in at a web application, not at the identifier (the `cookie` manager):
    #: authorize asks `identify` with the browser's cookies instead of reading the
    #: identifier's logon, sends the browser to `--sign-in-uri` to sign in, and shows no
    #: consent page (there is no logon of ours to bind it to: trusted clients only).
    signs_in_elsewhere: bool = False

    @abc.abstractmethod
    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        """The identity if the credentials are right, else None (never says which part was wrong)."""

    @abc.abstractmethod
    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        """The current identity for a raw subject, or None if the user is gone or disabled."""

    async def resolve(self, username: str) -> Optional[Identity]:
        """The identity of an enabled user by username, without a password: for a sign-in
        an external authority vouched for (Konnect's identifier backends'
        ResolveUserByUsername). None when there is no such (enabled) user. Backends that
        cannot look users up by name return None."""
        return None

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        """The user behind a token (its `kc.identity`) as the backend knows them now: for
        userinfo and refresh. Most backends simply look the subject up."""
        return await self.lookup(raw_sub)

    def bind(self, core: Any) -> None:
        """Called once the service's `Core` is built: a backend that needs the store, the
        sealer or the token minter takes them here (cookie, kc with per-user sessions)."""

    async def end_session(self, identity: Identity) -> None:
        """A sign-out of `identity`: end what the backend keeps for the user (kc: the
        user's Kopano session). Most backends keep nothing."""

    async def identify(self, cookie_header: str, accept_language: str = "",
                       user_agent: str = "") -> Optional[Identity]:
        """Who is signed in at the web application with this browser's cookies, or None;
        asked at authorize only when `signs_in_elsewhere`."""
        return None

    async def close(self) -> None:
        """Release connections and threads."""
