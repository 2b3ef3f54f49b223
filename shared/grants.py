"""The grant: what a user authorized for a client, as stored behind a code or refresh token.

authorize writes it behind a code (`Store.put_code`, single use); the token service
redeems it and, with `offline_access`, stores it again behind a refresh token
(`Store.put_refresh`) under the same `family`, rotated on every use. The family id is
also the `kc.family` claim of every access token issued from the grant, so revoking the
family revokes them all (docs/architecture.md, "State in Redis").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from .identity import Identity


def new_family() -> str:
    return secrets.token_urlsafe(18)


@dataclass
class Grant:
    client_id: str
    identity: Identity
    scopes: list
    family: str = field(default_factory=new_family)
    redirect_uri: str = ""
    response_type: str = "code"
    claims: Optional[dict] = None            # the authorized claims request (OIDC Core §5.5)
    nonce: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""
    auth_time: int = 0
    sid: str = ""
    created: int = 0                        # when the family began (first grant)

    def to_record(self) -> dict:
        """The JSON-ready record (shallow: it is serialized at once, never mutated).

        It also holds the identity's public `sub` (not a field: derived), so that the
        store's grant scripts can read the subject's sign-out (`revoked:sub:<sub>`) in the
        same round trip as the code or refresh token."""
        record = {name: getattr(self, name) for name in _FIELDS}
        record["identity"] = self.identity.to_record()
        record["sub"] = self.identity.sub
        return {k: v for k, v in record.items() if v not in (None, "")}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Grant":
        if not isinstance(record, Mapping) or "identity" not in record:
            raise ValueError("not a grant record")
        values = {k: v for k, v in record.items() if k in _FIELDS}
        values["identity"] = Identity.from_record(record["identity"])
        values["scopes"] = list(values.get("scopes") or [])
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(Grant))
