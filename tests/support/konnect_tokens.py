"""What konnectd issued, made here the way it made it: refresh and access tokens, the
`dyn.<JWT>` ids and secrets of its dynamically registered clients, and its logon cookie.
The migration tests (tests/token/test_konnect_migration.py, tests/e2e/test_konnect_migration.py)
present them to us as a relying party would after the switch.

Built from Konnect's source (github.com/Kopano-dev/konnect), independently of our code:

- JWS: dgrijalva/jwt-go `NewWithClaims` (header `{"alg", "typ": "JWT"}`) plus the key's
  `kid` (oidc/provider/tokens.go); Go's encoding/json writes a map's members sorted and a
  struct's in field order, compact, with <, > and & escaped; the signature as jwt-go makes
  it: RS* PKCS#1 v1.5, PS* with a salt as long as the hash (bootstrap/bootstrap.go sets
  `PSSSaltLengthEqualsHash`), ES* r||s, EdDSA. PS256 is konnectd's default
  `--signing-method` (cmd/konnectd/serve.go).
- Refresh token: oidc/provider/tokens.go `makeRefreshToken`, claims.go
  `RefreshTokenClaims`: jwt-go's `StandardClaims` (`aud`, `exp`, `jti`, `iat`, `iss`, `sub`,
  each omitted when empty) then `kc.isRefreshToken`, `kc.approvedScopes`,
  `kc.approvedClaims` (omitted when nil), `kc.ref`, `kc.identity`, `kc.provider` (omitted
  when empty); `exp` = now + `--refresh-token-expiration` (3 years), `jti` 24 random
  characters, `kc.ref` 32 (identity/managers/identifier.go `ApproveScopes`), `sub` the
  public subject (identity/managers/utils.go `getPublicSubject`).
- Access token: tokens.go `makeAccessToken`, claims.go `AccessTokenClaims`; ID token:
  tokens.go `makeIDToken`, oidc/claims.go `IDTokenClaims`.
- `kc.identity` of an identifier user: identifier/user.go `Claims` (`kc.i.un`, `kc.i.dn`)
  plus the backend's (identifier/backends/ldap.go: `kc.i.id` = the entry ID).
- Dynamic client: identity/clients/models.go `SetDynamic`/`makeSecret`, claims.go
  `RegistrationClaims` (StandardClaims `exp` (only with a secret duration), `iat`, `sub`,
  then `ClientRegistration`'s JSON members in field order, empty ones omitted), with the
  defaults oidc/payload/registration.go `Validate` fills in.
- Logon cookie `__Secure-KKT`: identifier/identifier.go `SetUserToLogonCookie`: go-jose
  `jwt.Encrypted` with A256GCMKW / A256GCM under the 32-byte encryption secret (`SetKey`),
  claims `iss` (the backend's name), `aud` "2019012201", `sub`, `iat` and the user's claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from typing import Any, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REFRESH_TOKEN_DURATION = 60 * 60 * 24 * 365 * 3   # --refresh-token-expiration default
ACCESS_TOKEN_DURATION = 60 * 10                    # --access-token-expiration default
CLIENT_SECRET_SALT = "konnect-client-v1"           # DynamicStatelessClientStaticSaltV1
SUBJECT_SALT = b"konnect-IDToken-v1"               # KonnectIDTokenSubjectSaltV1
LOGON_AUDIENCE = "2019012201"                      # identifier/identifier.go audienceMarker


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def go_json(value: Any) -> bytes:
    """Go's encoding/json: compact, HTML characters escaped (dict order = what Go writes)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def _omit_empty(members: list) -> dict:
    """`omitempty` members: dropped when "", 0, False, None or empty."""
    return {name: value for name, value, omitempty in members
            if not (omitempty and value in ("", 0, False, None, [], {}))}


def sign(claims: dict, key: Any, kid: str, alg: str = "PS256") -> str:
    """A compact JWS as jwt-go signs it, with the header konnectd sets."""
    header = {"alg": alg, "kid": kid, "typ": "JWT"}   # a Go map: members sorted
    signing_input = (b64(go_json(header)) + "." + b64(go_json(claims))).encode("ascii")
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}.get(alg[-3:])
    if alg.startswith("RS"):
        signature = key.sign(signing_input, padding.PKCS1v15(), digest())
    elif alg.startswith("PS"):
        signature = key.sign(signing_input, padding.PSS(mgf=padding.MGF1(digest()),
                                                        salt_length=digest.digest_size), digest())
    elif alg.startswith("ES"):
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest())))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        signature = key.sign(signing_input)
    else:
        raise ValueError(alg)
    return signing_input.decode("ascii") + "." + b64(signature)


def random_string(n: int) -> str:
    """kgol/rndm GenerateRandomString: n URL-safe random characters."""
    return secrets.token_urlsafe(n)[:n]


def public_subject(raw: str, backend: str) -> str:
    digest = hashlib.blake2b(raw.encode() + b" " + backend.encode(), key=SUBJECT_SALT,
                             digest_size=64).digest()
    return b64(digest) + "@konnect"


def identifier_identity(entry_id: str, username: str, display_name: str) -> dict:
    """`kc.identity` of an LDAP (or users-file) identifier user: a Go map, sorted."""
    return dict(sorted({"kc.i.dn": display_name, "kc.i.id": entry_id,
                        "kc.i.un": username}.items()))


def refresh_token(key: Any, kid: str, *, issuer: str, client_id: str, raw_sub: str,
                  backend: str, identity: dict, scopes: list,
                  claims_request: Optional[dict] = None, alg: str = "PS256",
                  now: Optional[int] = None, duration: int = REFRESH_TOKEN_DURATION,
                  provider: Optional[str] = None, extra: Optional[dict] = None) -> str:
    """konnectd's refresh token for a user of the identifier manager `backend`."""
    now = int(time.time()) if now is None else now
    claims = _omit_empty([
        ("aud", client_id, True), ("exp", now + duration, True),
        ("jti", random_string(24), True), ("iat", now, True), ("iss", issuer, True),
        ("sub", public_subject(raw_sub, backend), True),
        ("kc.isRefreshToken", True, False), ("kc.approvedScopes", list(scopes), False),
        ("kc.approvedClaims", claims_request, True), ("kc.ref", random_string(32), False),
        ("kc.identity", identity, False),
        ("kc.provider", backend if provider is None else provider, True),
    ])
    claims.update(extra or {})
    return sign(claims, key, kid, alg)


def access_token(key: Any, kid: str, *, issuer: str, client_id: str, raw_sub: str,
                 backend: str, identity: dict, scopes: list, alg: str = "PS256",
                 now: Optional[int] = None) -> str:
    """konnectd's access token."""
    now = int(time.time()) if now is None else now
    claims = _omit_empty([
        ("aud", client_id, True), ("exp", now + ACCESS_TOKEN_DURATION, True),
        ("jti", random_string(24), True), ("iat", now, True), ("iss", issuer, True),
        ("sub", public_subject(raw_sub, backend), True),
        ("kc.isAccessToken", True, False), ("kc.authorizedScopes", list(scopes), False),
        ("kc.authorizedClaims", None, True), ("kc.identity", identity, False),
        ("kc.provider", backend, True),
    ])
    return sign(claims, key, kid, alg)


def id_token(key: Any, kid: str, *, issuer: str, client_id: str, raw_sub: str, backend: str,
             nonce: str = "", sid: str = "", alg: str = "PS256", now: Optional[int] = None,
             duration: int = 3600) -> str:
    """konnectd's ID token of the code flow (tokens.go `makeIDToken`, oidc/claims.go
    `IDTokenClaims`: StandardClaims, `nonce`, then the session's `sid`)."""
    now = int(time.time()) if now is None else now
    claims = _omit_empty([
        ("aud", client_id, True), ("exp", now + duration, True), ("iat", now, True),
        ("iss", issuer, True), ("sub", public_subject(raw_sub, backend), True),
        ("nonce", nonce, True), ("sid", sid, True),
    ])
    return sign(claims, key, kid, alg)


def dynamic_client(key: Any, kid: str, *, redirect_uris: list, name: str = "",
                   application_type: str = "", grant_types: Optional[list] = None,
                   token_endpoint_auth_method: str = "",
                   id_token_signed_response_alg: str = "",
                   post_logout_redirect_uris: Optional[list] = None,
                   contacts: Optional[list] = None, uri: str = "",
                   secret_duration: int = 0, alg: str = "PS256",
                   now: Optional[int] = None, extra: Optional[dict] = None) -> tuple[str, str]:
    """(client_id, client_secret) of a client konnectd registered dynamically, with the
    defaults its registration filled in (`grant_types` authorization_code,
    `application_type` web, `id_token_signed_response_alg` RS256,
    `token_endpoint_auth_method` client_secret_basic)."""
    now = int(time.time()) if now is None else now
    secret = os.urandom(64)
    digest = hashlib.blake2b((name + " " + CLIENT_SECRET_SALT).encode(), key=secret,
                             digest_size=64).digest()
    claims = _omit_empty([
        ("exp", now + secret_duration if secret_duration else 0, True),
        ("iat", now, True), ("sub", b64(digest), True),
        ("contacts", contacts, True), ("name", name, True), ("uri", uri, True),
        ("grant_types", grant_types or ["authorization_code"], True),
        ("application_type", application_type or "web", True),
        ("redirect_uris", redirect_uris, True),
        ("id_token_signed_response_alg", id_token_signed_response_alg or "RS256", True),
        ("userinfo_signed_response_alg", "", True),
        ("request_object_signing_alg", "", True),
        ("token_endpoint_auth_method", token_endpoint_auth_method or "client_secret_basic", True),
        ("token_endpoint_auth_signing_alg", "", True),
        ("post_logout_redirect_uris", post_logout_redirect_uris, True),
    ])
    claims.update(extra or {})
    return "dyn." + sign(claims, key, kid, alg), b64(secret)


def logon_cookie(secret: bytes, *, backend: str, raw_sub: str, identity: dict,
                 logon_at: Optional[int] = None) -> str:
    """The value of konnectd's `__Secure-KKT` logon cookie (a compact JWE, RFC 7516 §7.1):
    A256GCMKW wraps a random content key (RFC 7518 §4.7), A256GCM encrypts the claims."""
    logon_at = int(time.time()) if logon_at is None else logon_at
    # go-jose merges the standard and the user's claims into one map: members sorted
    claims = dict(sorted({"aud": LOGON_AUDIENCE, "iat": logon_at, "iss": backend,
                          "sub": raw_sub, **identity}.items()))
    cek, wrap_iv, iv = os.urandom(32), os.urandom(12), os.urandom(12)
    wrapped = AESGCM(secret).encrypt(wrap_iv, cek, None)
    header = {"alg": "A256GCMKW", "enc": "A256GCM", "iv": b64(wrap_iv), "tag": b64(wrapped[-16:])}
    protected = b64(go_json(header))
    sealed = AESGCM(cek).encrypt(iv, go_json(claims), protected.encode("ascii"))
    return ".".join([protected, b64(wrapped[:-16]), b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])


def rsa_key() -> rsa.RSAPrivateKey:
    """konnectd's documented key: `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096`."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)
