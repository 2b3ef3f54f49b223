"""Who signed in: the identity every backend returns, and Konnect's public subject.

The public `sub` is Konnect's (identity/managers/utils.go), so subjects survive a migration:
base64url_nopad(BLAKE2b-512(key="konnect-IDToken-v1", raw_sub + " " + backend)) + "@konnect".
The identity travels inside sealed cookies, code records and the `kc.identity` claim of
access tokens; `to_record`/`from_record` are its one serialisation.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Mapping, Optional

SUBJECT_KEY = b"konnect-IDToken-v1"


def public_subject(raw_sub: str, backend: str) -> str:
    digest = hashlib.blake2b(f"{raw_sub} {backend}".encode("utf-8"), key=SUBJECT_KEY,
                             digest_size=64).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii") + "@konnect"


@dataclass(frozen=True)
class Identity:
    """A user as a backend knows them. `raw_sub` is stable per backend; `backend` salts `sub`."""

    raw_sub: str
    backend: str
    username: str = ""  # none for the cookie manager (the web application sends none)
    name: str = ""
    given_name: str = ""
    family_name: str = ""
    email: str = ""
    email_verified: bool = False
    numeric_id: Optional[int] = None
    uuid: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def sub(self) -> str:
        return public_subject(self.raw_sub, self.backend)

    def kc_identity(self) -> dict:
        """The `kc.identity` map of access tokens, as Konnect fills it per manager.

        Identifier backends (Konnect's identifier/user.go `Claims`): `kc.i.un` and `kc.i.dn`
        always (empty when unknown); for the Kopano server (kc) backend `kc.i.id` is the
        user's entry ID, which Kopano services log on with, and the raw subject travels in
        `kc.i.us`; every other backend puts the raw subject in `kc.i.id`. The cookie
        manager (Konnect's identity/managers/cookie.go): `kc.i.id` and what userinfo needs
        to replay the web application's answer (`cookie.v`, `cookie.al`, `cookie.ua`).
        `raw_sub_of` reads either form.
        """
        if self.backend == "guest":  # Konnect's client-controlled guests
            from .users.guest import kc_identity
            return kc_identity(self)
        if self.backend == "cookie":
            result = {"kc.i.id": self.raw_sub}
            result.update({k: v for k, v in self.extra.items() if k.startswith("cookie.")})
            return result
        entry_id = self.extra.get("entry_id") if self.backend == "identifier-kc" else None
        if entry_id:
            result = {"kc.i.id": entry_id, "kc.i.us": self.raw_sub}
        else:
            result = {"kc.i.id": self.raw_sub}
        result.update({"kc.i.un": self.username, "kc.i.dn": self.name})
        return result

    @staticmethod
    def raw_sub_of(kc_identity: Mapping[str, Any]) -> Optional[str]:
        """The raw subject in a `kc.identity` map made by `kc_identity`."""
        value = kc_identity.get("kc.i.us") or kc_identity.get("kc.i.id")
        return value if isinstance(value, str) and value else None

    def to_record(self) -> dict:
        record = {name: getattr(self, name) for name in _FIELDS}
        record["extra"] = dict(self.extra)  # shallow: the record is serialized at once
        record = {k: v for k, v in record.items()
                  if v not in (None, "", {}, False) or k in ("raw_sub", "backend", "username")}
        if self.email_verified:
            record["email_verified"] = True
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Identity":
        if not isinstance(record, Mapping) or not {"raw_sub", "backend"} <= record.keys():
            raise ValueError("not an identity record")
        values = {k: v for k, v in record.items() if k in _FIELDS}
        values["extra"] = dict(values.get("extra") or {})
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(Identity))
