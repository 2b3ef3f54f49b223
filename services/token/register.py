"""Dynamic client registration: `POST /konnect/v1/register` (OpenID Connect Dynamic Client
Registration 1.0 §3, RFC 7591 §3; konnect.md §2.9), routed only with
`--allow-dynamic-client-registration`.

The metadata is checked by the rules of the static registry (shared/clients.py: each
field's rule, then `parse_entry`) plus what only a self-registered client needs: no trust,
no `insecure`, https post-logout URIs for web clients, algorithms this server can actually
sign with, size caps, nothing into the OP's own endpoints. Konnect's dynamic clients were stateless
(the client id a JWT signed with the OP key, §5.6); ours are stored in Redis
(`client:<id>`, with the secret only as a SHA-256), so every process of every service
finds them, they outlive a key rotation, and an operator can delete one. No initial access
token and no RFC 7592 management, as in Konnect; registrations are rate-limited per client
IP instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import replace
from typing import Any, Awaitable, Optional

from shared import discovery
from shared.clients import (DYNAMIC_PREFIX, Client, RegistryError, alg_problem,
                            application_type_problem, auth_method_problem, dynamic_record,
                            jwks_problems, parse_entry, redirect_uri_problem, uri_problem)
from shared.errors import (INVALID_CLIENT_METADATA, INVALID_REDIRECT_URI, METHOD_NOT_ALLOWED,
                           TOO_MANY_REQUESTS, OAuth2Error)
from shared.origins import into_op
from shared.web import BaseHandler

log = logging.getLogger("konnect.register")

MAX_BODY = 16 * 1024
MAX_URIS = 20
MAX_CONTACTS = 10
MAX_KEYS = 10
MAX_TEXT = 256
RATE_WINDOW, RATE_LIMIT = 3600, 20  # registrations per client IP per hour
NO_EXPIRY_TTL = 10 * 365 * 86400  # "never" still needs a TTL (design.md §3)

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


def _metadata_error(description: str) -> OAuth2Error:
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
        raise _metadata_error(f"{name} must be a string")
    if len(value) > limit:
        raise _metadata_error(f"{name} is longer than {limit} characters")
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
            raise _metadata_error("response_types contains an unsupported value")
    for value in grant_types:
        if value not in GRANT_TYPES:
            raise _metadata_error("grant_types contains an unsupported value")
    for value in response_types:
        parts = value.split()
        if "code" in parts and "authorization_code" not in grant_types:
            raise _metadata_error("grant_types conflict with response_types")
        if ("id_token" in parts or "token" in parts) and "implicit" not in grant_types:
            raise _metadata_error("grant_types conflict with response_types")


def _check_jwks(jwks: Any) -> Optional[dict]:
    """The registry's rule (`jwks_problems`) after the size cap; only the key set is kept."""
    if jwks is None:
        return None
    if isinstance(jwks, dict) and isinstance(jwks.get("keys"), list) \
            and len(jwks["keys"]) > MAX_KEYS:
        raise _metadata_error(f"jwks has more than {MAX_KEYS} keys")
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
            raise _metadata_error(why)
    ignored = [name for name in IGNORED if body.get(name) is not None]
    if ignored:
        log.info("registration: ignored metadata %s (not supported)", ", ".join(ignored))
    subject_type = body.get("subject_type")
    if subject_type is not None and subject_type != "public":
        raise _metadata_error("subject_type must be public")
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
            raise _metadata_error(f"contacts entries are limited to {MAX_TEXT} characters")
    client_uri = _string(body, "client_uri", 2048)
    if client_uri:
        if uri_problem(client_uri) or not client_uri.lower().startswith(("https://", "http://")):
            raise _metadata_error("client_uri must be an absolute http(s) URL")
        entry["uri"] = client_uri
    for name in ("id_token_signed_response_alg", "userinfo_signed_response_alg"):
        alg = _string(body, name)
        if alg and alg not in signing_algs:  # a silent fallback would break the client
            raise _metadata_error(f"{name} must be one of " + ", ".join(signing_algs))
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


def registration_response(client: Client, *, secret: Optional[str], issued_at: int,
                          expires_at: int, default_id_token_alg: str) -> dict:
    """OIDC Registration §3.2: the credentials and the metadata as registered."""
    body: dict[str, Any] = {"client_id": client.id, "client_id_issued_at": issued_at,
                            "client_secret_expires_at": expires_at}
    if secret:
        body["client_secret"] = secret
    body.update({
        "redirect_uris": list(client.redirect_uris),
        "response_types": list(client.response_types),
        "grant_types": list(client.grant_types),
        "application_type": client.application_type,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "id_token_signed_response_alg": client.id_token_signed_response_alg or default_id_token_alg,
        "subject_type": "public",
    })
    optional = {"client_name": client.name, "client_uri": client.uri,
                "contacts": list(client.contacts),
                "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
                "jwks": client.jwks,
                "userinfo_signed_response_alg": client.userinfo_signed_response_alg,
                "request_object_signing_alg": client.request_object_signing_alg,
                "token_endpoint_auth_signing_alg": client.token_endpoint_auth_signing_alg}
    body.update({k: v for k, v in optional.items() if v})
    return body


class RegisterHandler(BaseHandler):
    """`POST /konnect/v1/register` with a JSON body; 201 with the client's credentials."""

    allow = ("POST",)  # the `Allow` of the 405 below (RFC 9110 §15.5.6)

    def prepare(self) -> Optional[Awaitable[None]]:
        if self.request.method != "POST":
            raise OAuth2Error(METHOD_NOT_ALLOWED, "use POST", status=405)
        return super().prepare()

    def get(self) -> None:  # prepare() answers; these exist so tornado routes the method
        pass

    put = delete = patch = get

    async def post(self) -> None:
        deps = self.deps
        store, ip = deps.store, self.client_ip or "unknown"
        if await store.hit("register-ip", ip, window=RATE_WINDOW) > RATE_LIMIT:
            raise OAuth2Error(TOO_MANY_REQUESTS, "too many registrations, try again later",
                              status=429, retry_after=await store.retry_after("register-ip", ip))
        if len(self.request.body) > MAX_BODY:
            raise _metadata_error(f"registration requests are limited to {MAX_BODY} bytes")
        body = self.json_body()
        client_id = DYNAMIC_PREFIX + secrets.token_urlsafe(24)
        client = parse_registration(body, client_id=client_id,
                                    signing_algs=deps.keyring.signing_algs,
                                    issuer=deps.settings.iss)
        secret = None
        if client.token_endpoint_auth_method in ("client_secret_basic", "client_secret_post"):
            secret = secrets.token_urlsafe(32)
            client = _with_secret_hash(client, secret)
        issued_at = int(deps.now())
        lifetime = deps.settings.dynamic_client_secret_expiration
        # Konnect §5.6: with a secret lifetime the whole client ends then (ours: the record).
        expires_at = issued_at + lifetime if lifetime else 0
        ttl = lifetime or max(NO_EXPIRY_TTL, deps.settings.refresh_token_expiration)
        record = dynamic_record(client, issued_at=issued_at, expires_at=expires_at)
        await store.put_client(client.id, record, ttl)
        default_alg = deps.keyring.id_token_signer().alg
        self.write_json(registration_response(client, secret=secret, issued_at=issued_at,
                                              expires_at=expires_at,
                                              default_id_token_alg=default_alg), status=201)


def _with_secret_hash(client: Client, secret: str) -> Client:
    return replace(client, secret_sha256=hashlib.sha256(secret.encode("utf-8")).hexdigest())
