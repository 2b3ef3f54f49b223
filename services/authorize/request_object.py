"""Request objects: the `request` parameter (OIDC Core §6.1 and §6.3; Konnect's
oidc/payload/authentication.go).

A JWT carrying the authorization parameters. Signed objects are verified with the
client's registered `jwks`, the algorithm pinned by the key (and by the client's
`request_object_signing_alg` when registered); unsigned objects (`alg: none`, §6.1) are
accepted only from clients that registered no signing algorithm, and give no more trust
than the query itself. Members of the object supersede the query (§6.3.3); `client_id` and
`response_type`, when present in both, must agree (§6.1). `iss`, `aud`, `exp` and `nbf` are
checked when present (Konnect ignored them: fixed). `request_uri` is refused elsewhere.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from shared import jose
from shared.clients import Client
from shared.keys import client_key_lookup

MAX_SIZE = 16384
CLOCK_SKEW = 60
# Members of the object that replace query parameters (§6.3.3).
OVERRIDES = ("scope", "claims", "redirect_uri", "state", "nonce", "prompt", "id_token_hint",
             "max_age", "login_hint", "ui_locales", "code_challenge", "code_challenge_method",
             "response_mode", "registration")
MUST_MATCH = ("client_id", "response_type")


class RequestObjectError(Exception):
    pass


def _unsigned_claims(token: str, header: dict) -> dict:
    """The members of an Unsecured JWT (RFC 7519 §6). Its header is held to the same rules
    as a signed object's (`jose.check_header`): `crit` names extensions this OP does not
    understand, so the object MUST be rejected (RFC 7515 §4.1.11), and
    `jku`/`jwk`/`x5u`/`x5c` are never honoured."""
    parts = token.split(".")
    if len(parts) != 3 or parts[2] != "":
        raise RequestObjectError("an unsigned request object must have an empty signature")
    try:
        jose.check_header(header)
        return jose.unverified_claims(token, max_size=MAX_SIZE)
    except jose.JoseError as err:
        raise RequestObjectError(str(err)) from None


def open_request_object(token: str, client: Client, issuer: str, now: float) -> dict:
    """The verified members of a request object, or RequestObjectError."""
    if not isinstance(token, str) or len(token) > MAX_SIZE:
        raise RequestObjectError("request object too large")
    try:
        header = jose.unverified_header(token, max_size=MAX_SIZE)
    except jose.JoseError as err:
        raise RequestObjectError(str(err)) from None
    alg, registered = header.get("alg"), client.request_object_signing_alg
    if alg == "none":
        if registered and registered != "none":
            raise RequestObjectError(f"request objects of this client must use {registered}")
        claims = _unsigned_claims(token, header)
    else:
        if registered and alg != registered:
            raise RequestObjectError(f"request objects of this client must use {registered}")
        keys = client_key_lookup(client.jwks)
        if keys is None:
            raise RequestObjectError("no keys are registered for this client")
        try:
            _, claims = jose.verify(token, keys, max_size=MAX_SIZE, require_kid=False)
        except jose.JoseError as err:
            raise RequestObjectError(f"request object: {err}") from None
    _check_claims(claims, client, issuer, now)
    return claims


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_claims(claims: dict, client: Client, issuer: str, now: float) -> None:
    if "iss" in claims and claims["iss"] != client.id:
        raise RequestObjectError("request object iss is not the client")
    if "aud" in claims:
        aud = claims["aud"]
        if issuer not in (aud if isinstance(aud, list) else [aud]):
            raise RequestObjectError("request object audience is not this issuer")
    if "exp" in claims and (not _number(claims["exp"]) or claims["exp"] < now - CLOCK_SKEW):
        raise RequestObjectError("request object expired")
    if "nbf" in claims and (not _number(claims["nbf"]) or claims["nbf"] > now + CLOCK_SKEW):
        raise RequestObjectError("request object not yet valid")


def merged_params(get: Callable[..., Optional[str]], claims: dict) -> Callable[..., Optional[str]]:
    """A parameter getter where the object's members supersede the query (§6.3.3)."""
    for name in MUST_MATCH:
        if name in claims and claims[name] != get(name):
            raise RequestObjectError(f"{name} in the request object differs from the query")
    values: dict[str, str] = {}
    for name in OVERRIDES:
        if name not in claims:
            continue
        value = claims[name]
        if name == "claims":
            if not isinstance(value, dict):
                raise RequestObjectError("claims in the request object must be an object")
            values[name] = json.dumps(value)
        elif name == "max_age":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RequestObjectError("max_age in the request object must be a number")
            values[name] = str(value)
        elif isinstance(value, str):
            values[name] = value
        else:
            raise RequestObjectError(f"{name} in the request object has the wrong type")

    def get_merged(name: str, default: Optional[str] = None) -> Optional[str]:
        if name == "request":
            return None  # consumed: the hand-off carries the merged parameters
        if name in values:
            return values[name]
        return get(name, default)

    return get_merged
