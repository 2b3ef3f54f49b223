"""Konnect's stateless dynamic clients: `dyn.<JWT>` client ids that konnectd issued at
its registration endpoint before the switch (docs/konnect-compatibility.md, "Migrating
from konnectd").

What konnectd did (its identity/clients/models.go `SetDynamic` and `makeSecret`,
identity/clients/claims.go `RegistrationClaims`, identity/clients/registry.go
`getDynamicClient`, oidc/payload/registration.go):

- the client id is "dyn." + a JWT signed with its signing key (its default signing method,
  the key's `kid` in the header, `typ` JWT);
- the JWT's claims are the registration (Go's JSON of `ClientRegistration`, every member
  omitted when empty: `contacts`, `name`, `uri`, `grant_types`, `application_type`,
  `redirect_uris`, `id_token_signed_response_alg`, `userinfo_signed_response_alg`,
  `request_object_signing_alg`, `token_endpoint_auth_method`,
  `token_endpoint_auth_signing_alg`, `post_logout_redirect_uris`; never `jwks`, which it
  did not keep) next to `sub`, `iat` and, with `--dynamic-client-secret-expiration`, `exp`;
  no `iss`, no `aud`;
- the client secret is 64 random bytes, base64url without padding, and `sub` is
  base64url(BLAKE2b-512 keyed with those bytes, over name + " " + "konnect-client-v1"):
  the secret is checked by computing `sub` again, and was required at the token endpoint
  from every dynamic client, `none` included.

Here such an id names a client while the key that signed it is one of ours (a signing key
or a validation key): the signature is verified by `kid` with the algorithm that key is
pinned to, `exp` (when there is one) and `iat` are checked, and the registration must pass
the rules a client registering here today must pass (`shared.registration`): redirect URIs
match exactly, nothing into the OP's own endpoints, only algorithms we sign. It is
dynamic (never trusted, never insecure) and authenticates with its secret, as in Konnect.
Konnect did not enforce a dynamic client's `grant_types` (it filled in
`authorization_code` and still issued refresh tokens for `offline_access`), so neither
do we for these clients: every grant, as for the static registry's clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from . import jose
from .clients import DYNAMIC_PREFIX, Client
from .errors import OAuth2Error
from .origins import origin_of
from .registration import parse_registration

log = logging.getLogger("konnect.clients")

SECRET_SALT = b"konnect-client-v1"  # Konnect's DynamicStatelessClientStaticSaltV1
SECRET_BYTES = 64                   # rndm.GenerateRandomBytes(64) in makeSecret
# a compact JWS after the prefix: three base64url segments
_KONNECT_ID = re.compile(r"^dyn\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_SUB = re.compile(r"^[A-Za-z0-9_-]{86}$")  # 64 bytes, base64url without padding
# Konnect's JSON member -> the registration request's (OIDC Registration §2)
_MEMBERS = {"name": "client_name", "uri": "client_uri", "contacts": "contacts",
            "grant_types": "grant_types", "application_type": "application_type",
            "redirect_uris": "redirect_uris",
            "post_logout_redirect_uris": "post_logout_redirect_uris",
            "id_token_signed_response_alg": "id_token_signed_response_alg",
            "userinfo_signed_response_alg": "userinfo_signed_response_alg",
            "request_object_signing_alg": "request_object_signing_alg",
            "token_endpoint_auth_method": "token_endpoint_auth_method",
            "token_endpoint_auth_signing_alg": "token_endpoint_auth_signing_alg"}
# What Konnect's registration accepted (oidc/payload/registration.go `Validate`)
_AUTH_METHODS = ("client_secret_basic", "none")
# the id the rules see: a registry id is at most 255 characters, a JWT is longer; the real
# id's form is vouched for by its signature
_PLACEHOLDER_ID = DYNAMIC_PREFIX + "konnect"


def is_konnect_id(client_id: Any) -> bool:
    """True for an id of the form of Konnect's stateless clients ("dyn." + a compact JWS)."""
    return isinstance(client_id, str) and len(client_id) <= jose.MAX_TOKEN_SIZE \
        and bool(_KONNECT_ID.match(client_id))


def secret_hash(secret: str, name: str) -> Optional[str]:
    """Konnect's `sub` of a dynamic client for a presented secret, or None when the secret
    cannot be one of Konnect's (not base64url of 64 bytes)."""
    if not isinstance(secret, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", secret):
        return None
    try:
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != SECRET_BYTES:
        return None
    digest = hashlib.blake2b(name.encode("utf-8") + b" " + SECRET_SALT, key=raw,
                             digest_size=64).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class KonnectClient(Client):
    """A client of a `dyn.<JWT>` id: always has a secret, checked by Konnect's formula."""

    secret_sub: str = field(default="", repr=False)

    @property
    def has_secret(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        """Its name, else where it redirects to: the id is a JWT of a kilobyte or more,
        nothing a user can read on the consent page."""
        return self.name or origin_of(self.redirect_uris[0])

    def check_secret(self, presented: Optional[str]) -> bool:
        computed = secret_hash(presented, self.name) if isinstance(presented, str) else None
        if computed is None:
            return False
        return hmac.compare_digest(computed.encode("ascii"), self.secret_sub.encode("ascii"))


def konnect_client(client_id: str, keyring: Any, *, now: float, skew: int, issuer: str,
                   signing_algs: list) -> Optional[KonnectClient]:
    """The client a Konnect `dyn.<JWT>` id names, or None (not signed by a key of ours,
    expired, or a registration our rules refuse: the client registers again)."""
    if not is_konnect_id(client_id):
        return None
    try:
        _, claims = keyring.verify(client_id[len(DYNAMIC_PREFIX):])
    except jose.JoseError:
        return None
    # Konnect's registration JWT has neither `iss` nor `aud`; every token an OP signs
    # (ours, or konnectd's access, refresh and ID tokens) has `iss`: none of them can pose
    # as a client id (RFC 8725 §2.8, §3.12)
    if "iss" in claims or "aud" in claims or not _SUB.match(str(claims.get("sub", ""))):
        return None
    exp, iat = claims.get("exp"), claims.get("iat")
    for value in (exp, iat):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return None
    if (exp is not None and exp <= now) or (iat is not None and iat > now + skew):
        return None
    body = {ours: claims[theirs] for theirs, ours in _MEMBERS.items() if theirs in claims}
    name = body.get("client_name", "")
    if body.get("token_endpoint_auth_method", "client_secret_basic") not in _AUTH_METHODS \
            or not isinstance(name, str):
        return None
    try:
        parsed = parse_registration(body, client_id=_PLACEHOLDER_ID, signing_algs=signing_algs,
                                    issuer=issuer)
    except OAuth2Error as err:
        log.warning("Konnect dynamic client %r refused: %s (it must register again)",
                    name[:80], err.detail or err.description)
        return None
    values = {f.name: getattr(parsed, f.name) for f in fields(Client)}
    values.update(id=client_id, dynamic=True, trusted=False, insecure=False, grant_types=())
    return KonnectClient(**values, secret_sub=claims["sub"])
