"""What the token service's handlers hand to client authentication and the grants: the
request's form parameters and its Authorization header, read once, so that neither needs
the Tornado handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional


@dataclass(frozen=True)
class FormRequest:
    """The single-valued form-body parameters an endpoint reads (RFC 6749 §3.2; the handler
    has refused duplicates and parameters sent in the URL) and the Authorization header."""

    params: Mapping[str, str] = field(default_factory=dict)
    authorization: Optional[str] = None

    def get(self, name: str) -> Optional[str]:
        return self.params.get(name)
