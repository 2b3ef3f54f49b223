"""Konnect's client-controlled guests (`--allow-client-guests`; Konnect's
identity/managers/guest.go): a client vouches for a user that no backend knows.

At the authorization endpoint, with nobody signed in, a request is a guest's when it asks
for the scope `konnect/guestok` and carries a request object signed with a key the client
registered (`jwks`), whose claims request names the guest: `claims.id_token.guest.value`
(and optionally the `email`, `email_verified`, `name`, `family_name`, `given_name` values
to release). The guest's subject is Konnect's formula with the backend name `guest`
(`public_subject(guest, "guest")`); access tokens carry `kc.identity` with `kc.i.id`,
`kc.i.guest: true` and `kc.i.dat` (`e`, `ev`, `n`, `nf`, `ng`). The token endpoint and
userinfo take a guest from that claim (`GuestAware.current`), never from the backend.

Scopes (Konnect's GuestIdentityManager.Authorize): no consent step (`prompt=consent` is
`interaction_required`) and no `offline_access`; a trusted client without
`trusted_scopes` gets what it asked for, any other client `openid`, `konnect/id`,
`profile`, `email` and its `trusted_scopes`, and must have `konnect/guestok` among them.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..identity import Identity
from .base import UserBackend

GUEST = "guest"
GUEST_OK = "konnect/guestok"
SCOPES = ("konnect/id", "profile", "email")
MAX_VALUE = 256
_DATA = (("e", "email"), ("n", "name"), ("nf", "family_name"), ("ng", "given_name"))


def _value(spec: Any) -> Any:
    return spec.get("value") if isinstance(spec, Mapping) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) and len(value) <= MAX_VALUE else ""


def from_claims_request(claims: Any) -> Optional[Identity]:
    """The guest a claims request names (`id_token.guest.value`), or None."""
    wanted = claims.get("id_token") if isinstance(claims, Mapping) else None
    if not isinstance(wanted, Mapping):
        return None
    guest = _text(_value(wanted.get("guest")))
    if not guest:
        return None
    return Identity(raw_sub=guest, backend=GUEST, username="",
                    email=_text(_value(wanted.get("email"))),
                    email_verified=_value(wanted.get("email_verified")) is True,
                    name=_text(_value(wanted.get("name"))),
                    family_name=_text(_value(wanted.get("family_name"))),
                    given_name=_text(_value(wanted.get("given_name"))))


def kc_identity(identity: Identity) -> dict:
    """Konnect's `kc.identity` of a guest."""
    data = {short: getattr(identity, name) for short, name in _DATA if getattr(identity, name)}
    if identity.email_verified:
        data["ev"] = 1
    return {"kc.i.id": identity.raw_sub, "kc.i.guest": True, "kc.i.dat": data}


def from_kc_identity(kc: Mapping[str, Any]) -> Optional[Identity]:
    """The guest of a `kc.identity` map made by `kc_identity`, or None."""
    raw = kc.get("kc.i.id")
    if kc.get("kc.i.guest") is not True or not _text(raw):
        return None
    data = kc.get("kc.i.dat") if isinstance(kc.get("kc.i.dat"), Mapping) else {}
    return Identity(raw_sub=raw, backend=GUEST, username="",
                    email_verified=data.get("ev") == 1,
                    **{name: _text(data.get(short)) for short, name in _DATA})


def approved_scopes(client: Any, requested: list) -> Optional[list]:
    """The scopes a guest's token gets, or None when the client may not have guests."""
    requested = [s for s in requested if s != "offline_access"]
    if client.trusted and not client.trusted_scopes:
        approved = list(requested)
    else:
        allowed = {"openid", *SCOPES, *client.trusted_scopes}
        approved = [s for s in requested if s in allowed]
    return approved if GUEST_OK in approved else None


class GuestAware(UserBackend):
    """A backend that also knows the guests its tokens name (`kc.i.guest`)."""

    def __init__(self, backend: UserBackend) -> None:
        self.backend = backend
        self.manager, self.provider = backend.manager, backend.provider

    def __getattr__(self, name: str) -> Any:  # the wrapped backend's own extras
        return getattr(self.backend, name)

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        return await self.backend.authenticate(username, password)

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return await self.backend.lookup(raw_sub)

    async def resolve(self, username: str) -> Optional[Identity]:
        return await self.backend.resolve(username)

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        if isinstance(kc_identity, Mapping) and kc_identity.get("kc.i.guest") is True:
            return from_kc_identity(kc_identity)
        return await self.backend.current(raw_sub, kc_identity)

    async def close(self) -> None:
        await self.backend.close()
