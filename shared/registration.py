"""The metadata rules of a self-registered client (OpenID Connect Dynamic Client
Registration 1.0 §2, RFC 7591 §2): for the registration endpoint
(services/token/register.py) and for Konnect's stateless `dyn.<JWT>` clients, whose
registration is read from their id (shared/konnect_clients.py). One set of rules, so a
client Konnect registered gets no more than one registered here would.

The rules of the static registry (shared/clients.py: each field's rule, then `parse_entry`)
plus what only a self-registered client needs: no trust, no `insecure`, https post-logout
URIs for web clients, algorithms this server can actually sign with, size caps, nothing
into the OP's own endpoints.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

from . import discovery
from .clients import (Client, RegistryError, alg_problem, application_type_problem,
                      auth_method_problem, jwks_problems, parse_entry, redirect_uri_problem,
                      uri_problem)
from .errors import INVALID_CLIENT_METADATA, INVALID_REDIRECT_URI, OAuth2Error
from .origins import into_op

log = logging.getLogger("konnect.register")

MAX_URIS = 20
MAX_CONTACTS = 10
MAX_KEYS = 10
MAX_TEXT = 256

GRANT_TYPES = ("authorization_code", "implicit", "refresh_token")
# Metadata we understand but cannot honour, and whose absence would hand out in the clear
# what the client asked to be encrypted: refused (RFC 7591 §3.2.1 lets a server reject a
# value) instead of ignored as Konnect ignored it.
REFUSED = {
    "id_token_encrypted_response_alg": "encrypted ID tokens are not supported",
    "id_token_encrypted_response_enc": "encrypted ID tokens are not supported",
    "userinfo_encrypted_response_alg": "encrypted userinfo responses are not supported",
    "userinfo_encrypted_response_enc": "encrypted userinfo responses are not supported",
    "request_object_encryption_alg": "encrypted request objects are not supported",
    "request_object_encryption_enc": "encrypted request objects are not supported",
}
# Metadata we do not honour and whose absence weakens nothing: ignored, like any member we
# do not understand (RFC 7591 §2; Konnect's oidc/payload/registration.go reads none of
# them), and left out of the response, which lists only what is registered (§3.2.1).
# jwks_uri: the keys must be inline (`jwks`), else private_key_jwt is refused and request
# objects fail to verify; request_uris: `request_uri` is refused at authorize;
# sector_identifier_uri: only for pairwise subjects (refused below); default_max_age: the
# client sends max_age with each request; software_statement: RFC 7591 §2.3 lets a server
# that does not support them ignore them.
IGNORED = ("jwks_uri", "request_uris", "sector_identifier_uri", "default_max_age",
           "software_statement")
# RFC 6749 §5.2: the characters an error_description may hold
_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def metadata_error(description: str) -> OAuth2Error:
    return OAuth2Error(INVALID_CLIENT_METADATA, description)


def _refuse(problem: Optional[str], error: str = INVALID_CLIENT_METADATA) -> None:
    """Answer a problem found by a rule of the registry (shared/clients.py). Its text is
    the description when RFC 6749 §5.2 allows its characters (it may quote the client's
    value), else a generic one, the text going to the log only."""
    if problem:
        safe = bool(_DESCRIPTION.fullmatch(problem))
        raise OAuth2Error(error, problem if safe else "client metadata is invalid",
                          detail=problem)


def _string(body: dict, name: str, limit: int = MAX_TEXT) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise metadata_error(f"{name} must be a string")
    if len(value) > limit:
        raise metadata_error(f"{name} is longer than {limit} characters")
    return value


def _strings(body: dict, name: str, limit: int, error: str = INVALID_CLIENT_METADATA) -> list:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OAuth2Error(error, f"{name} must be an array of strings")
    if len(value) > limit:
        raise OAuth2Error(error, f"{name} has more than {limit} entries")
    return value


def _check_types(response_types: list, grant_types: list) -> None:
    """OIDC Registration §2: the grant types must cover the response types."""
    for value in response_types:
        if value not in discovery.RESPONSE_TYPES:
            raise metadata_error("response_types contains an unsupported value")
    for value in grant_types:
        if value not in GRANT_TYPES:
            raise metadata_error("grant_types contains an unsupported value")
    for value in response_types:
        parts = value.split()
        if "code" in parts and "authorization_code" not in grant_types:
            raise metadata_error("grant_types conflict with response_types")
        if ("id_token" in parts or "token" in parts) and "implicit" not in grant_types:
            raise metadata_error("grant_types conflict with response_types")


def _check_jwks(jwks: Any) -> Optional[dict]:
    """The registry's rule (`jwks_problems`) after the size cap; only the key set is kept."""
    if jwks is None:
        return None
    if isinstance(jwks, dict) and isinstance(jwks.get("keys"), list) \
            and len(jwks["keys"]) > MAX_KEYS:
        raise metadata_error(f"jwks has more than {MAX_KEYS} keys")
    _refuse("; ".join(jwks_problems(jwks)))
    return {"keys": [dict(jwk) for jwk in jwks["keys"]]}


def parse_registration(body: dict, *, client_id: str, signing_algs: list,
                       issuer: str = "") -> Client:
    """The client described by a registration request, or the OAuth2Error to answer.

    Unknown members are ignored (RFC 7591 §2); `redirect_uris` problems are
    `invalid_redirect_uri`, every other problem `invalid_client_metadata` (§3.3). A
    redirect URI into the OP's own endpoints (`origins.into_op`: its origin however
    spelled, its path however encoded) is refused: a response sent there would be carried
    on by the OP to wherever that request points (RFC 9700 §4.11, §4.1); so is a
    post-logout redirect URI into them (OIDC RP-Initiated Logout 1.0 §3: the OP redirects
    the browser there after signing out; it must not land back in an OP action).
    """
    for name, why in REFUSED.items():
        if body.get(name) is not None:
            raise metadata_error(why)
    ignored = [name for name in IGNORED if body.get(name) is not None]
    if ignored:
        log.info("registration: ignored metadata %s (not supported)", ", ".join(ignored))
    subject_type = body.get("subject_type")
    if subject_type is not None and subject_type != "public":
        raise metadata_error("subject_type must be public")
    app_type = body.get("application_type")
    app_type = "web" if app_type is None else app_type  # null is absent (RFC 7591 §2)
    _refuse(application_type_problem(app_type))

    redirect_uris = _strings(body, "redirect_uris", MAX_URIS, INVALID_REDIRECT_URI)
    if not redirect_uris:
        raise OAuth2Error(INVALID_REDIRECT_URI, "redirect_uris is required")
    post_logout = _strings(body, "post_logout_redirect_uris", MAX_URIS)
    for member, uris, error in (("redirect_uris", redirect_uris, INVALID_REDIRECT_URI),
                                ("post_logout_redirect_uris", post_logout,
                                 INVALID_CLIENT_METADATA)):
        for i, uri in enumerate(uris):  # post-logout URIs too: https for web clients
            problem = redirect_uri_problem(app_type, False, uri, hint=False)
            if not problem and into_op(uri, issuer):
                problem = "must not point at the OpenID Provider's own endpoints"
            _refuse(problem and f"{member}[{i}] {problem}", error)

    response_types = _strings(body, "response_types", len(discovery.RESPONSE_TYPES)) or ["code"]
    grant_types = _strings(body, "grant_types", len(GRANT_TYPES)) or ["authorization_code"]
    _check_types(response_types, grant_types)

    method = _string(body, "token_endpoint_auth_method") or "client_secret_basic"
    jwks = _check_jwks(body.get("jwks"))
    problem = auth_method_problem(method, jwks)
    if problem and "jwks_uri" in ignored:
        problem += " (jwks_uri is not supported: register the keys inline)"
    _refuse(problem)

    entry: dict[str, Any] = {
        "id": client_id, "application_type": app_type, "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": post_logout, "response_types": response_types,
        "grant_types": grant_types, "token_endpoint_auth_method": method,
        "name": _string(body, "client_name"),
        "contacts": _strings(body, "contacts", MAX_CONTACTS),
        "jwks": jwks,
    }
    for contact in entry["contacts"]:
        if len(contact) > MAX_TEXT:
            raise metadata_error(f"contacts entries are limited to {MAX_TEXT} characters")
    client_uri = _string(body, "client_uri", 2048)
    if client_uri:
        if uri_problem(client_uri) or not client_uri.lower().startswith(("https://", "http://")):
            raise metadata_error("client_uri must be an absolute http(s) URL")
        entry["uri"] = client_uri
    for name in ("id_token_signed_response_alg", "userinfo_signed_response_alg"):
        alg = _string(body, name)
        if alg and alg not in signing_algs:  # a silent fallback would break the client
            raise metadata_error(f"{name} must be one of " + ", ".join(signing_algs))
        entry[name] = alg
    for name in ("request_object_signing_alg", "token_endpoint_auth_signing_alg"):
        entry[name] = _string(body, name)
        _refuse(alg_problem(name, entry[name]))
    try:
        # the rules of the static registry; nothing here sets trusted, insecure or origins
        return parse_entry(entry)
    except RegistryError as err:
        raise OAuth2Error(INVALID_CLIENT_METADATA, "client metadata is invalid",
                          detail="; ".join(err.problems)) from None
