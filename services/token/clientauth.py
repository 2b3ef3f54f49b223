"""Client authentication at the token, revocation and introspection endpoints.

RFC 6749 §2.3.1 (client_secret_basic: id and secret form-urlencoded before base64, so
they are URL-decoded after; client_secret_post), RFC 7523 §2.2 / OIDC Core §9
(private_key_jwt: `iss` = `sub` = client id, `aud` = the endpoint, `exp`, single-use
`jti`), and `none` for public clients (which must then use PKCE, RFC 9700 §2.1.1).
A client may use one method per request (RFC 6749 §2.3).

Introspection asks for `confidential=True`: a real client authentication (a secret or
private_key_jwt), never `none` and never an implicitly trusted client (RFC 7662 §2.1:
the endpoint MUST require authorization, against token scanning, §4).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import unquote_plus

from shared import jose
from shared.clients import Client
from shared.errors import INVALID_CLIENT, INVALID_REQUEST, OAuth2Error
from shared.keys import client_key_lookup

from .request import FormRequest

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 600
CLOCK_SKEW = 30  # seconds tolerated on a client assertion's exp, nbf and iat (RFC 7519 §4.1.4)


def _invalid(detail: str, basic: bool) -> OAuth2Error:
    return OAuth2Error(INVALID_CLIENT, "client authentication failed", detail=detail,
                       status=401, auth_scheme="Basic")


@dataclass
class Authenticated:
    client: Client
    method: str


def parse_basic(header: Optional[str]) -> Optional[tuple[str, str]]:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise OAuth2Error(INVALID_CLIENT, "malformed Basic credentials", status=401,
                          auth_scheme="Basic") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuth2Error(INVALID_CLIENT, "malformed Basic credentials", status=401,
                          auth_scheme="Basic")
    return unquote_plus(user), unquote_plus(password)


async def authenticate(request: FormRequest, *, lookup: Callable[[str, Optional[str]], Any],
                       store: Any, audiences: tuple, now: Callable[[], float],
                       confidential: bool = False) -> Authenticated:
    """The authenticated client of this request, or an `invalid_client` (401) error.

    With `confidential`, only a registered client that proved a credential passes: the
    registry is asked without a redirect URI (so no implicit client comes into being) and
    method `none` is refused.
    """
    result = await _authenticate(request, lookup, store, audiences, now, confidential)
    if confidential and (result.method == "none" or result.client.implicit):
        raise _invalid("client credentials are required at this endpoint", False)
    return result


async def _authenticate(request: FormRequest, lookup: Callable[[str, Optional[str]], Any],
                        store: Any,
                        audiences: tuple, now: Callable[[], float],
                        confidential: bool) -> Authenticated:
    basic = parse_basic(request.authorization)
    form_id = request.get("client_id")
    form_secret = request.get("client_secret")
    assertion = request.get("client_assertion")
    assertion_type = request.get("client_assertion_type")
    methods = [m for m, used in (("client_secret_basic", basic), ("client_secret_post", form_secret),
                                 ("private_key_jwt", assertion)) if used]
    if len(methods) > 1:
        raise OAuth2Error(INVALID_REQUEST, "more than one client authentication method used")
    # the redirect URI only names an implicitly trusted client (Konnect's implicit trust of
    # redirect URIs on the issuer's origin, identifier/clients.go)
    redirect_uri = None if confidential else request.get("redirect_uri")
    if assertion:
        if assertion_type != ASSERTION_TYPE:
            raise OAuth2Error(INVALID_REQUEST, "unsupported client_assertion_type")
        return await _private_key_jwt(assertion, form_id, lookup, store, audiences, now, redirect_uri)
    if basic:
        client_id, secret = basic
        if form_id is not None and form_id != client_id:
            raise _invalid("client_id in body differs from Basic credentials", True)
    else:
        client_id, secret = form_id, form_secret
    if not client_id:
        raise _invalid("no client_id", bool(basic))
    client = await lookup(client_id, redirect_uri)
    if client is None:
        raise _invalid("unknown client", bool(basic))
    if client.token_endpoint_auth_method == "private_key_jwt":
        raise _invalid("client must authenticate with private_key_jwt", bool(basic))
    if client.has_secret:
        if not client.check_secret(secret):
            raise _invalid("wrong client secret", bool(basic))
        return Authenticated(client, methods[0] if methods else "none")
    return Authenticated(client, "none")


async def _private_key_jwt(assertion: str, form_id: Optional[str], lookup: Any, store: Any,
                           audiences: tuple, now: Callable[[], float],
                           redirect_uri: Optional[str]) -> Authenticated:
    try:
        claims = jose.unverified_claims(assertion)
    except jose.JoseError:
        raise _invalid("malformed client assertion", False) from None
    client_id = claims.get("sub")
    if not isinstance(client_id, str) or claims.get("iss") != client_id:
        raise _invalid("assertion iss/sub must be the client id", False)
    if form_id is not None and form_id != client_id:
        raise _invalid("client_id differs from the assertion", False)
    client = await lookup(client_id, redirect_uri)
    keys = client_key_lookup(client.jwks) if client is not None else None
    if keys is None:
        raise _invalid("client has no registered keys", False)
    try:
        header, claims = jose.verify(assertion, keys, require_kid=False)
    except jose.JoseError as err:
        raise _invalid(f"client assertion: {err}", False) from None
    # OIDC Dynamic Client Registration §2 `token_endpoint_auth_signing_alg`: requests whose
    # JWT is not signed with the registered alg MUST be rejected (the key's family is wider)
    registered_alg = client.token_endpoint_auth_signing_alg
    if registered_alg and header.get("alg") != registered_alg:
        raise _invalid("assertion not signed with the registered alg", False)
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if not any(a in audiences for a in auds):
        raise _invalid("assertion audience is not this server", False)
    t, exp, jti = now(), claims.get("exp"), claims.get("jti")
    if not _is_time(exp) or exp < t - CLOCK_SKEW or exp > t + MAX_ASSERTION_LIFETIME:
        raise _invalid("assertion expired or too long-lived", False)
    # RFC 7523 §3 item 5: MUST NOT be accepted before `nbf`; item 6 leaves `iat` to us: one
    # from the future (beyond the skew) is refused, as is either claim that is no NumericDate
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not _is_time(value) or value > t + CLOCK_SKEW):
            raise _invalid(f"assertion {name} is in the future or malformed", False)
    if not isinstance(jti, str) or not jti:
        raise _invalid("assertion has no jti", False)
    # made at its iat, or at the earliest its exp allows (a marker older than Redis's
    # state may have been lost: Store.first_use)
    iat = claims.get("iat")
    made = iat if _is_time(iat) else exp - MAX_ASSERTION_LIFETIME
    if not await store.first_use("client-assertion", f"{client_id} {jti}", int(exp - t) + 60,
                                 issued_at=made):
        raise _invalid("client assertion replayed", False)
    return Authenticated(client, "private_key_jwt")


def _is_time(value: Any) -> bool:
    """A JWT NumericDate (RFC 7519 §2): a JSON number, not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
