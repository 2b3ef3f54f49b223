"""The UserInfo endpoint (OpenID Connect Core §5.3, RFC 6750).

The access token comes from `Authorization: Bearer` or, for POST, the form body
(RFC 6750 §2.1, §2.2: the body method MUST NOT be used with GET, so a GET carrying one is
`invalid_request`), never the query string (§2.3 is refused: URLs end up in logs).
It is checked for signature (pinned alg, known kid), times, issuer, `kc.isAccessToken`,
then against the revocation list in one Redis round trip; if Redis cannot answer, the
answer is 503, never claims. The claims come from the user backend, so a user deleted or
disabled there gets `invalid_token`.
"""

from __future__ import annotations

import re
from typing import Any

from shared import scopes as scopelib
from shared.clients import DYNAMIC_PREFIX
from shared.errors import INSUFFICIENT_SCOPE, INVALID_REQUEST, INVALID_TOKEN, OAuth2Error
from shared.identity import Identity
from shared.tokens import TokenError, is_revoked
from shared.web import FORM, CORSHandler


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 §5.6.2 field name


def _invalid_token(detail: str) -> OAuth2Error:
    # RFC 6750 §3.1: no detail for the client beyond the error code.
    return OAuth2Error(INVALID_TOKEN, "", detail=detail, status=401, auth_scheme="Bearer")


class _NoToken(OAuth2Error):
    """RFC 6750 §3.1: a request without credentials gets a challenge without an error code."""

    def __init__(self) -> None:
        super().__init__(INVALID_TOKEN, "an access token is required", status=401,
                         auth_scheme="Bearer", detail="no access token")

    def headers(self) -> list:
        return [("WWW-Authenticate", 'Bearer realm="konnect"')]


def userinfo_claims(identity: Identity, claims: dict, *, as_asked: bool = False) -> dict:
    """OIDC Core §5.4 claims per scope, Konnect's extensions (its UserInfoHandler,
    oidc/provider/handlers.go).

    Only claims about the user that the OP itself knows (the backend's, now) and that
    the grant allows are released (OIDC Core §5.3.2). A claims request (§5.5) can ask
    for a standard claim by name; its `value`/`values` only say which value the client
    would like (§5.5.1), they are never data to echo: Konnect echoed unknown names with a
    `value`, so a client could put `kc.isAccessToken`, `kc.identity`, `nonce`... into a
    userinfo JWT signed by the OP (konnect-compatibility.md: fixed).

    A standard claim asked for in `claims.userinfo` is released when its scope is among
    the token's (a refresh may have narrowed them, RFC 6749 §6), or when the claims request
    was authorized as asked (`as_asked`: a trusted client, as Konnect's
    identity/managers/identifier.go)."""
    scopes = claims.get("kc.authorizedScopes") or []
    out: dict[str, Any] = {"sub": scopelib.subject(identity, scopes)}
    values = scopelib.standard_claims(identity)
    out.update(scopelib.claims_for(scopes, values))
    if "konnect/id" in scopes:
        if identity.numeric_id:
            out["id"] = identity.numeric_id
        out["username"] = identity.username or out["sub"]
    if "konnect/uuid" in scopes and identity.uuid:
        out["kc.uuid"] = identity.uuid
    out.update(scopelib.backend_claims(identity, scopes))
    requested = ((claims.get("kc.authorizedClaims") or {}).get("userinfo") or {})
    if isinstance(requested, dict):
        if not as_asked:
            requested = scopelib.narrow_claims({"userinfo": requested}, scopes)["userinfo"]
        for name in requested:
            if name in values and values[name] not in ("", None):
                out.setdefault(name, values[name])
    return out


def claims_authorized_as_asked(client: Any, client_id: Any) -> bool:
    """Whether a token's claims request was authorized without narrowing to its scopes:
    a trusted client's without consent (authorize `_respond`, as Konnect's
    identity/managers/identifier.go). An id the registry does not know and that has no
    dynamic prefix (ours, or Konnect's `dyn.<JWT>`) can only be an implicitly trusted
    client's (Konnect's identity/clients/registry.go; its lookup needs the redirect URI), or
    one removed since."""
    if client is not None:
        return bool(client.trusted)
    return isinstance(client_id, str) and not client_id.startswith(DYNAMIC_PREFIX)


class UserInfoHandler(CORSHandler):
    """CORS as Konnect's userinfo (rs/cors AllowAll in oidc/provider/provider.go): any
    origin, HEAD, GET and POST, every request header the browser asks for; never
    credentials (the token is the credential, not a cookie)."""

    cors_headers = ("Authorization", "Content-Type")

    def cors_allowed_headers(self) -> list:
        # the Fetch standard's `*` would not cover `Authorization`: the asked-for names are
        # echoed (well-formed ones only), so the preflight's answer varies with them
        self.set_header("Vary", "Access-Control-Request-Headers")
        asked = self.request.headers.get("Access-Control-Request-Headers", "")
        names = [n.strip() for n in asked.split(",") if _TOKEN.fullmatch(n.strip())]
        return names[:64] or list(self.cors_headers)

    def _bearer(self) -> str:
        if "access_token" in self.request.query_arguments:
            raise OAuth2Error(INVALID_REQUEST, "access token in the query string is not accepted")
        header = self.request.headers.get_list("Authorization")
        form = self.request.body_arguments.get("access_token", [])
        if form and self.request.method != "POST":
            raise OAuth2Error(INVALID_REQUEST, "the access_token form parameter is only "
                              "accepted with POST")
        if len(header) > 1 or len(form) > 1 or (header and form):
            raise OAuth2Error(INVALID_REQUEST, "more than one access token")
        if header:
            scheme, _, token = header[0].partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise OAuth2Error(INVALID_REQUEST, "expected a Bearer token")
            return token.strip()
        if form:
            return self.param("access_token") or ""
        raise _NoToken()

    async def _answer(self) -> None:
        token = self._bearer()
        deps = self.deps
        try:
            claims = deps.tokens.validate_access_token(token)
        except TokenError as err:
            raise _invalid_token(str(err)) from None
        if await is_revoked(deps.store, claims):
            raise _invalid_token("token revoked")
        if scopelib.OPENID not in (claims.get("kc.authorizedScopes") or []):
            raise OAuth2Error(INSUFFICIENT_SCOPE, "the openid scope is required", status=403,
                              auth_scheme="Bearer")
        raw_sub = Identity.raw_sub_of(claims["kc.identity"])
        identity = await deps.users.current(raw_sub, claims["kc.identity"]) if raw_sub else None
        if identity is None or identity.sub != claims["sub"]:
            raise _invalid_token("user no longer available")
        client = await deps.lookup_client(claims.get("aud"))
        body = userinfo_claims(identity, claims,
                               as_asked=claims_authorized_as_asked(client, claims.get("aud")))
        alg = client.userinfo_signed_response_alg if client else ""
        if alg:  # signed with exactly that alg (keys.AlgorithmNotSigned otherwise, a 500)
            # OIDC Core §5.3.2: signed, with `iss` and `aud`. Nothing in it is the client's
            # choice, and it has neither `kc.isAccessToken` nor `exp`, so neither our access
            # token validation nor `open_id_token_hint` takes it (RFC 8725 §3.12: mutually
            # exclusive validation rules). `typ` stays "JWT": our access and ID tokens carry
            # that generic type too (Konnect's, oidc/provider/tokens.go), so another value here
            # would not set it apart from them, and RPs whose JWT processors accept only
            # "JWT" (RFC 7519 §5.1) would refuse it.
            body.update(iss=deps.settings.iss, aud=claims["aud"])
            self.set_header("Content-Type", "application/jwt")
            self.finish(deps.tokens.sign(body, alg=alg, typ="JWT"))
            return
        self.write_json(body)

    async def get(self) -> None:
        await self._answer()

    head = get  # as GET without the body, as Konnect's UserInfoHandler (RFC 9110 §9.3.2)

    async def post(self) -> None:
        if self.request.body:
            self.require_media_type(FORM)
        await self._answer()
