"""The `dummy` backend (Konnect's identity/managers/dummy.go): one fixed user, for tests and
demos only.

It signs in the user `dummy` with ANY non-empty password, so it refuses to be built
unless explicitly allowed (`--allow-dummy-backend`, KONNECTD_ALLOW_DUMMY_BACKEND=yes);
a service configured with it otherwise stops at start-up with a clear message.
"""

from __future__ import annotations

from typing import Optional

from ..identity import Identity
from .base import UserBackend

PROVIDER = "dummy"
DUMMY = Identity(raw_sub="dummy", backend=PROVIDER, username="dummy", name="Foo Dummy",
                 given_name="Foo", family_name="Dummy", email="dummy@dummy.local")


class DummyBackend(UserBackend):
    manager = "dummy"
    provider = PROVIDER

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        if username.casefold() == "dummy" and password:
            return DUMMY
        return None

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return DUMMY if raw_sub == "dummy" else None
