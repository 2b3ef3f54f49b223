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

    async def close(self) -> None:
        """Release connections and threads."""
