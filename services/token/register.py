"""Dynamic client registration: `POST /konnect/v1/register` (OpenID Connect Dynamic Client
Registration 1.0 §3, RFC 7591 §3; Konnect's oidc/payload/registration.go), routed only with
`--allow-dynamic-client-registration`.

The metadata is checked by `shared.registration.parse_registration` (the static registry's
rules plus those of a self-registered client). Konnect's dynamic clients were stateless
(the client id a JWT signed with the OP key: its identity/clients/models.go `SetDynamic`);
ours are stored in Redis (`client:<id>`, with the secret only as a SHA-256), so every
process of every service finds them, they outlive a key rotation, and an operator can
delete one. No initial access token and no RFC 7592 management, as in Konnect;
registrations are rate-limited per client IP instead.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace
from typing import Any, Awaitable, Optional

from shared.clients import DYNAMIC_PREFIX, Client, dynamic_record
from shared.errors import METHOD_NOT_ALLOWED, TOO_MANY_REQUESTS, OAuth2Error
from shared.registration import metadata_error, parse_registration
from shared.web import BaseHandler

MAX_BODY = 16 * 1024
RATE_WINDOW, RATE_LIMIT = 3600, 20  # registrations per client IP per hour
NO_EXPIRY_TTL = 10 * 365 * 86400  # "never" still needs a TTL (docs/architecture.md, "State in Redis")


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
            raise metadata_error(f"registration requests are limited to {MAX_BODY} bytes")
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
        # Konnect (identity/clients/models.go): with a secret lifetime the whole client ends
        # then (ours: the record).
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
