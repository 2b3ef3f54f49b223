"""The one async interface every user backend implements (design.md §2 "users").

Backends never block the event loop: network and CPU-heavy work (LDAP, SOAP, password
hashing) runs in a bounded thread pool or natively async. Every network call has a timeout.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Optional

from ..errors import Unavailable
from ..identity import Identity


class BackendUnavailable(Unavailable):
    """The directory or server behind a backend cannot be reached (rendered as 503)."""


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

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        """The user behind a token (its `kc.identity`) as the backend knows them now: for
        userinfo and refresh. Most backends simply look the subject up."""
        return await self.lookup(raw_sub)

    async def identify(self, cookie_header: str, accept_language: str = "",
                       user_agent: str = "") -> Optional[Identity]:
        """Who is signed in at the web application with this browser's cookies, or None;
        asked at authorize only when `signs_in_elsewhere`."""
        return None

    def bind_sealer(self, sealer: Any) -> None:
        """The encryption secret's sealer, handed over once `Core` has built it, for a
        backend that seals something into tokens (the cookie backend: the forwarded
        cookies). The others need none."""

    async def close(self) -> None:
        """Release connections and threads."""
