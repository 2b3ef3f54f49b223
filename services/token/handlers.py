"""Handlers of the token service: token, revoke, introspect, discovery, JWKS."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Optional

import tornado.web

from shared.errors import (INVALID_REQUEST, METHOD_NOT_ALLOWED, UNAUTHORIZED_CLIENT,
                           UNSUPPORTED_GRANT_TYPE, OAuth2Error)
from shared.grants import Grant
from shared.tokens import TokenError, is_revoked
from shared.web import FORM, CORSHandler

from . import grants, konnect_refresh
from .clientauth import authenticate
from .request import FormRequest

GRANTS = {"authorization_code": grants.authorization_code, "refresh_token": grants.refresh_token}
# What client authentication reads (clientauth.authenticate) at every endpoint here; it
# also reads `redirect_uri` (an implicit client's) except at introspection.
CLIENT_PARAMS = ("client_id", "client_secret", "client_assertion", "client_assertion_type")


def _not_in_body(name: str) -> OAuth2Error:
    return OAuth2Error(INVALID_REQUEST, f"parameter {name} must be sent in the request body, "
                       "not in the URL")


class FormHandler(CORSHandler):
    """POST endpoints taking `application/x-www-form-urlencoded` (RFC 6749 §3.2).

    CORS for any origin, as Konnect's token endpoint (oidc/provider/provider.go), so browser-based
    clients can redeem codes; the preflight also allows `Authorization` (Konnect's did not). No
    cookies are read here and credentials are never allowed, so `*` exposes nothing.

    Parameters come from the form body only: client credentials MUST NOT be in the request
    URI (RFC 6749 §2.3.1), and the token, revocation and introspection requests are sent
    form-encoded in the body (RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1). A parameter this
    endpoint reads that arrives in the query is `invalid_request`, refused before anything
    is looked up or spent; query parameters no endpoint reads are ignored.
    """

    body_params: tuple = CLIENT_PARAMS
    allow = ("POST", "OPTIONS")  # RFC 9110 §15.5.6: a 405's Allow; also the CORS methods
    cors_headers = ("Authorization", "Content-Type", "Accept", "X-Requested-With")

    def prepare(self) -> Optional[Awaitable[None]]:
        if self.request.method == "OPTIONS":
            return None
        if self.request.method != "POST":
            raise OAuth2Error(METHOD_NOT_ALLOWED, "use POST", status=405)
        self.require_media_type(FORM)
        for name in self.body_params:
            if name in self.request.query_arguments:
                raise _not_in_body(name)
        return super().prepare()

    def form(self) -> FormRequest:
        """The parameters this endpoint reads (`body_params`), each once and from the body
        (see the class docstring), with the Authorization header."""
        params = {}
        for name in self.body_params:  # prepare() refused them in the query
            value = self.param(name)
            if value is not None:
                params[name] = value
        return FormRequest(params, self.request.headers.get("Authorization"))

    def get(self) -> None:  # prepare() answers; these exist so tornado routes the method
        pass

    put = delete = patch = get

    async def client(self, request: FormRequest, *, confidential: bool = False):
        deps = self.deps
        return await authenticate(request, lookup=deps.lookup_client, store=deps.store,
                                  audiences=deps.assertion_audiences, now=deps.now,
                                  confidential=confidential)


class TokenHandler(FormHandler):
    body_params = CLIENT_PARAMS + ("redirect_uri", "grant_type", "code", "code_verifier",
                                   "refresh_token", "scope")

    async def post(self) -> None:
        request = self.form()
        grant_type = request.get("grant_type")
        if not grant_type:
            raise OAuth2Error(INVALID_REQUEST, "grant_type is required")
        run = GRANTS.get(grant_type)
        if run is None:
            raise OAuth2Error(UNSUPPORTED_GRANT_TYPE, "grant_type not supported")
        auth = await self.client(request)
        if not grants.grant_type_allowed(auth.client, grant_type):
            # RFC 6749 §5.2: the authenticated client is not authorized for this grant type
            raise OAuth2Error(UNAUTHORIZED_CLIENT, "the client is not registered for this "
                              "grant type")
        body = await run(request, auth.client, self.deps.issuer)
        self.write_json(body)


class RevokeHandler(FormHandler):
    """RFC 7009: revoke a refresh token (its whole family) or an access token (its jti).

    Public clients authenticate with their client_id alone here (RFC 7009 §2.1, §5) and
    can only ever revoke their own tokens."""

    body_params = CLIENT_PARAMS + ("redirect_uri", "token", "token_type_hint")

    async def post(self) -> None:
        request = self.form()  # token_type_hint: optional, only a hint (§2.1)
        token = request.get("token")
        if not token:
            raise OAuth2Error(INVALID_REQUEST, "token is required")
        client = (await self.client(request)).client
        deps = self.deps
        if "." in token:
            await self._revoke_access(token, client)
        else:
            record = await deps.store.peek_refresh(token)
            if record and record.get("client_id") == client.id:
                grant = Grant.from_record(record)
                await deps.store.take_refresh(token)
                await deps.store.revoke_family(
                    grant.family, deps.tokens.family_until(grant.created + deps.tokens.refresh_ttl),
                    sub=record["sub"])
            elif record is None:
                # Already spent: rotated, or taken by a refresh that is still running and may
                # put it back after a failure (grants.refresh_token). Its family ends, so
                # that nothing of it works after this 200 (RFC 7009 §2.2, RFC 6819
                # §5.2.2.3). The spent marker names no client; whoever holds a 256-bit
                # token of the family may end it.
                spent = await deps.store.spent_refresh(token)
                if spent:
                    await deps.store.revoke_family(spent["family"], deps.tokens.family_until(),
                                                   sub=spent["sub"])
        self.set_status(200)  # §2.2: also for invalid or unknown tokens
        self.finish()

    async def _revoke_access(self, token: str, client) -> None:
        """An access token of ours (its jti), or a refresh token konnectd issued before the
        switch (it can no longer be exchanged; what it was exchanged for ends)."""
        try:
            claims = self.deps.tokens.verify(token)
        except TokenError:
            return
        if claims.get("kc.isAccessToken") is True and claims.get("aud") == client.id \
                and isinstance(claims.get("jti"), str) and isinstance(claims.get("exp"), int):
            until = self.deps.tokens.accepted_until(claims["exp"])
            if until > self.deps.now() and isinstance(claims.get("sub"), str) and claims["sub"]:
                await self.deps.store.revoke_jti(claims["jti"], until, sub=claims["sub"])
        elif claims.get("kc.isRefreshToken") is True:
            await konnect_refresh.revoke(token, client, self.deps.tokens, self.deps.store)


class IntrospectHandler(FormHandler):
    """RFC 7662: the state of a token issued to the calling client (or any, if trusted).

    The caller must authenticate with real credentials (a secret or private_key_jwt):
    §2.1 requires authorization at this endpoint and §4 warns of token scanning, so public
    clients (`none`) and implicitly trusted clients get 401 `invalid_client`. Only a
    registered client marked `trusted` sees the state of other clients' tokens; for anyone
    else such a token is `{"active": false}` (§2.2).
    """

    body_params = CLIENT_PARAMS + ("token", "token_type_hint")

    async def post(self) -> None:
        request = self.form()
        token = request.get("token")
        if not token:
            raise OAuth2Error(INVALID_REQUEST, "token is required")
        client = (await self.client(request, confidential=True)).client
        sees_all = client.trusted and not client.implicit and not client.dynamic
        info = await (self._access(token) if "." in token else self._refresh(token))
        if info is None or (info.get("client_id") != client.id and not sees_all):
            info = None
        self.write_json(dict(info, active=True) if info else {"active": False})

    async def _access(self, token: str) -> Optional[dict]:
        try:
            claims = self.deps.tokens.validate_access_token(token)
        except TokenError:
            return None
        if await is_revoked(self.deps.store, claims):
            return None
        keep = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope")
        info = {k: claims[k] for k in keep if k in claims}
        info["token_type"] = "Bearer"
        info["username"] = claims["kc.identity"].get("kc.i.un", "")
        return info

    async def _refresh(self, token: str) -> Optional[dict]:
        record = await self.deps.store.peek_refresh(token)  # None: revoked too
        if not record:
            return None
        grant = Grant.from_record(record)
        return {"client_id": grant.client_id, "sub": grant.identity.sub, "scope": " ".join(grant.scopes),
                "exp": grant.created + self.deps.tokens.refresh_ttl, "iat": grant.created,
                "token_type": "refresh_token", "username": grant.identity.username,
                "iss": self.deps.settings.iss}


class PublicDocumentHandler(CORSHandler):
    """Discovery and JWKS: public, cacheable for a short while, CORS for any origin."""

    content_type = "application/json"
    cors_headers = ("Accept", "Content-Type")

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "public, max-age=300")
        self.clear_header("Pragma")

    def body(self) -> bytes:
        raise NotImplementedError

    def compute_etag(self) -> Optional[str]:
        """Cacheable: a validator for conditional requests (RFC 9110 §8.8.3)."""
        return tornado.web.RequestHandler.compute_etag(self)

    def get(self) -> None:
        self.set_header("Content-Type", self.content_type)
        self.finish(self.body())

    # HEAD answers GET's status and headers (Content-Length, ETag, and 304 on a matching
    # If-None-Match) without the body (RFC 9110 §9.3.2, §8.6, §13.1.2): Tornado computes
    # them from the written body and drops the body itself for HEAD.
    head = get


class DiscoveryHandler(PublicDocumentHandler):
    def body(self) -> bytes:
        return self.deps.discovery_json


class JWKSHandler(PublicDocumentHandler):
    content_type = "application/jwk-set+json"

    def body(self) -> bytes:
        """The keyring's JWKS, encoded once per set of keys (the group's shared ephemeral key
        may change while the process runs: shared/ephemeral.py)."""
        deps, jwks = self.deps, self.deps.keyring.jwks()
        if deps.jwks_source is not jwks:
            deps.jwks_json, deps.jwks_source = encode(jwks), jwks
        return deps.jwks_json


def encode(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode("utf-8")
