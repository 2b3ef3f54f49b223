"""An upstream OpenID Provider (Konnect's identity/authorities/oidc.go, done to the spec).

- Metadata: OpenID Connect Discovery 1.0 (§4: `<iss>/.well-known/openid-configuration`, or
  `metadata_endpoint`; §4.3: its `issuer` must be the configured `iss`), or the explicit
  `authorization_endpoint` and `jwks` of the entry (`discover: no`). Kept for
  METADATA_TTL; an ID token with an unknown `kid` refreshes it at most once a minute
  (key rotation upstream).
- The request: `response_type` `code` (the code flow, OIDC Core §3.1) or Konnect's
  default `id_token` (§3.2; returned by `form_post`, OAuth 2.0 Form Post Response Mode,
  since tokens never travel in a query: OAuth 2.0 Multiple Response Type Encoding
  Practices §2.1, which is why Konnect's `response_mode=query` is not sent); always
  `state`, `nonce` and PKCE S256 (RFC 7636; RFC 9700 §2.1.1).
- The answer: `state` is the browser's (the caller checks it against its sealed cookie);
  an `iss` parameter must be the issuer (RFC 9207 §2.4); the code is redeemed at the
  token endpoint with the PKCE verifier; the ID token is verified (§3.1.3.7): signature
  with the upstream's keys, the algorithm pinned by key type (never `none`, never HMAC),
  `iss`, `aud` (and `azp` with several audiences), `exp`, `iat`, and the `nonce`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlencode, urlsplit

from .. import jose
from ..keys import client_key_lookup
from .fetch import UpstreamError, fetch_json
from .registry import Authority

log = logging.getLogger("konnect.authorities")

METADATA_TTL = 3600
REFRESH_AFTER = 60  # seconds between refreshes forced by an unknown kid
MAX_CLAIM_LENGTH = 256


class AuthorityResponseError(Exception):
    """The upstream's answer is refused (log text; the browser sees a fixed message).
    `error`: the upstream's own OAuth error code when it sent one."""

    def __init__(self, reason: str, error: str = "") -> None:
        super().__init__(reason)
        self.error = error


@dataclass
class Metadata:
    authorization_endpoint: str
    token_endpoint: str
    end_session_endpoint: str
    userinfo_endpoint: str
    keys: Optional[Callable[[str], Any]]
    fetched: float


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _https(url: Any, authority: Authority) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return bool(parts.hostname) and (parts.scheme == "https"
                                     or (authority.insecure and parts.scheme == "http"))


class OIDCAuthority:
    """One `authority_type: oidc` entry with its fetched metadata."""

    def __init__(self, authority: Authority, *, now: Callable[[], float] = time.time,
                 skew: int = 30) -> None:
        self.authority = authority
        self.now, self.skew = now, skew
        self._meta: Optional[Metadata] = None
        self._static_keys = client_key_lookup(authority.jwks) if authority.jwks else None

    # -- metadata ---------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        a = self.authority
        return a.metadata_endpoint or a.iss.rstrip("/") + "/.well-known/openid-configuration"

    async def metadata(self, *, refresh: bool = False) -> Metadata:
        meta = self._meta
        if meta is not None and not refresh and self.now() - meta.fetched < METADATA_TTL:
            return meta
        if meta is not None and refresh and self.now() - meta.fetched < REFRESH_AFTER:
            return meta
        a = self.authority
        if not a.discover:
            self._meta = Metadata(a.authorization_endpoint, "", "", "", self._static_keys,
                                  self.now())
            return self._meta
        _, doc = await fetch_json(self.discovery_url, insecure=a.insecure)
        if doc.get("issuer") != a.iss:  # OpenID Connect Discovery 1.0 §4.3
            raise UpstreamError(f"discovery issuer {str(doc.get('issuer'))[:120]!r} is not "
                                f"the configured iss {a.iss!r}")
        authorization = a.authorization_endpoint or doc.get("authorization_endpoint")
        token = doc.get("token_endpoint") or ""
        end_session = doc.get("end_session_endpoint") or ""
        if not _https(authorization, a):
            raise UpstreamError("discovery has no usable authorization_endpoint")
        if a.response_type == "code" and not _https(token, a):
            raise UpstreamError("discovery has no usable token_endpoint")
        if end_session and not _https(end_session, a):
            end_session = ""
        userinfo = doc.get("userinfo_endpoint") or ""
        if userinfo and not _https(userinfo, a):
            userinfo = ""
        keys = self._static_keys
        if keys is None:
            jwks_uri = doc.get("jwks_uri")
            if not _https(jwks_uri, a):
                raise UpstreamError("discovery has no usable jwks_uri")
            _, jwks = await fetch_json(jwks_uri, insecure=a.insecure)
            if not isinstance(jwks.get("keys"), list):
                raise UpstreamError("the upstream JWKS has no keys list")
            keys = client_key_lookup(jwks)  # unusable keys (enc, oct, unknown) are skipped
            if keys is None:
                raise UpstreamError("the upstream JWKS has no usable signing key")
        self._meta = Metadata(authorization, token if isinstance(token, str) else "",
                              end_session, userinfo, keys, self.now())
        return self._meta

    # -- the authentication request -----------------------------------------------------------

    def authentication_request(self, meta: Metadata, *, redirect_uri: str,
                               passed: dict) -> tuple[str, dict]:
        """The URL to send the browser to, and the flow state to seal into its cookie.
        `passed`: the parameters of the original request that keep their meaning upstream
        (prompt, max_age, ui_locales, ...), as Konnect's writeOAuth2Start passes them."""
        a = self.authority
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        query = {"client_id": a.client_id, "response_type": a.response_type,
                 "scope": " ".join(a.scopes), "redirect_uri": redirect_uri,
                 "state": state, "nonce": nonce,
                 "code_challenge": challenge, "code_challenge_method": "S256"}
        if a.response_type != "code":
            query["response_mode"] = "form_post"
        query.update({k: v for k, v in passed.items() if v})
        separator = "&" if urlsplit(meta.authorization_endpoint).query else "?"
        return (meta.authorization_endpoint + separator + urlencode(query),
                {"state": state, "nonce": nonce, "verifier": verifier})

    # -- the answer -----------------------------------------------------------------------------

    async def complete(self, params: dict, flow: dict, *, redirect_uri: str) -> tuple[dict, str]:
        """The verified ID token claims of the upstream's answer, and the ID token (`params`: the callback's
        parameters, state already matched by the caller)."""
        a = self.authority
        if params.get("error"):
            raise AuthorityResponseError("the upstream answered an error", params["error"][:64])
        iss = params.get("iss")
        if iss is not None and iss != a.iss:  # RFC 9207 §2.4
            raise AuthorityResponseError(f"the answer's iss {iss[:120]!r} is not the authority's")
        meta = await self.metadata()
        if a.response_type == "code":
            code = params.get("code")
            if not code or params.get("id_token") or params.get("access_token"):
                raise AuthorityResponseError("a code answer must carry a code and no tokens")
            id_token, access_token = await self._redeem(meta, code, flow["verifier"], redirect_uri)
        else:
            id_token, access_token = params.get("id_token"), ""
            if not id_token or params.get("code"):
                raise AuthorityResponseError("an id_token answer must carry an id_token")
        claims = await self.verify_id_token(id_token, nonce=flow["nonce"])
        if a.identity_claim_name not in claims and access_token and meta.userinfo_endpoint:
            # The code flow's ID token need not carry profile claims (OIDC Core §5.4: they
            # are returned by userinfo when an access token is issued); ask userinfo, whose
            # sub must be the ID token's (§5.3.2).
            _, info = await fetch_json(meta.userinfo_endpoint, insecure=a.insecure,
                                       headers={"Authorization": f"Bearer {access_token}"})
            if info.get("sub") != claims["sub"]:
                raise AuthorityResponseError("userinfo is about another sub")
            if a.identity_claim_name in info:
                claims = {**claims, a.identity_claim_name: info[a.identity_claim_name]}
        return claims, id_token

    async def _redeem(self, meta: Metadata, code: str, verifier: str,
                      redirect_uri: str) -> tuple[str, str]:
        a = self.authority
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": verifier}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if a.client_secret:  # client_secret_basic (RFC 6749 §2.3.1: form-encoded id:secret)
            from urllib.parse import quote
            pair = f"{quote(a.client_id, safe='')}:{quote(a.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:  # a public client: PKCE is its proof
            form["client_id"] = a.client_id
        status, doc = await fetch_json(meta.token_endpoint, method="POST",
                                       body=urlencode(form).encode(), headers=headers,
                                       insecure=a.insecure, accept_error=True)
        if status != 200:
            raise AuthorityResponseError(f"the token endpoint answered {status} "
                                         f"{str(doc.get('error'))[:64]}")
        id_token = doc.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise AuthorityResponseError("the token response has no id_token")
        access_token = doc.get("access_token")
        return id_token, access_token if isinstance(access_token, str) else ""

    async def verify_id_token(self, token: Any, *, nonce: str) -> dict:
        a = self.authority
        if not isinstance(token, str):
            raise AuthorityResponseError("the id_token is not a string")
        meta = await self.metadata()
        try:
            _, claims = self._verify(meta, token)
        except jose.JoseError as err:
            if str(err) != "unknown kid" or not a.discover:
                raise AuthorityResponseError(f"id_token: {err}") from None
            meta = await self.metadata(refresh=True)  # the upstream may have rotated keys
            try:
                _, claims = self._verify(meta, token)
            except jose.JoseError as err2:
                raise AuthorityResponseError(f"id_token: {err2}") from None
        now = self.now()
        if claims.get("iss") != a.iss:
            raise AuthorityResponseError("id_token: iss is not the authority's")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if a.client_id not in audiences:
            raise AuthorityResponseError("id_token: not for our client_id")
        if len(audiences) > 1 and claims.get("azp") != a.client_id:
            raise AuthorityResponseError("id_token: several audiences and azp is not ours")
        if "azp" in claims and claims["azp"] != a.client_id:
            raise AuthorityResponseError("id_token: azp is another client")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _number(exp) or exp + self.skew <= now:
            raise AuthorityResponseError("id_token: expired or without exp")
        if not _number(iat) or iat - self.skew > now:
            raise AuthorityResponseError("id_token: iat missing or in the future")
        if not isinstance(claims.get("nonce"), str) or \
                not secrets.compare_digest(claims["nonce"], nonce):
            raise AuthorityResponseError("id_token: nonce does not match this sign-in")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthorityResponseError("id_token: no sub")
        return claims

    def _verify(self, meta: Metadata, token: str) -> tuple[dict, dict]:
        if meta.keys is None:
            raise jose.JoseError("no keys")
        return jose.verify(token, meta.keys, require_kid=False)

    def identity_value(self, claims: dict) -> Any:
        """The value of `identity_claim_name` (Konnect's IdentityClaimValue)."""
        return claims.get(self.authority.identity_claim_name)

    def end_session_url(self, meta: Metadata, *, id_token: str, post_logout: str,
                        state: str) -> Optional[str]:
        """RP-Initiated Logout 1.0 §2 at the upstream, or None when it has no endpoint."""
        if not meta.end_session_endpoint:
            return None
        query = {"id_token_hint": id_token, "post_logout_redirect_uri": post_logout,
                 "state": state, "client_id": self.authority.client_id}
        separator = "&" if urlsplit(meta.end_session_endpoint).query else "?"
        return meta.end_session_endpoint + separator + urlencode(query)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
