"""JWS signing and verification: the only module that imports python-jose.

python-jose's key objects make and check the signatures; the compact serialization
around them (RFC 7515 §5.1, §5.2, §7.1) is done here. python-jose lacks PS256/384/512 and EdDSA. They are added through its own extension point
(`jose.jwk.register_key`) with two small key classes that call `cryptography` directly;
RSA-PSS uses a salt as long as the digest (RFC 7518 §3.5, as Konnect does).

Verification never trusts the token to choose how it is checked (RFC 8725 §2.1, §3.1):
the key is found by `kid`, and the header's `alg` must be one the key is pinned to, so
`none`, HS* with a public key and cross-family algorithms are refused before any
cryptography runs. Headers that would make us fetch or embed keys (`jku`, `jwk`, `x5u`,
`x5c`) and any `crit` extension (RFC 7515 §4.1.11) are refused.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Callable, Mapping, Optional, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from jose import jwk
from jose.backends import ECKey, RSAKey
from jose.backends.base import Key
from jose.exceptions import JOSEError

MAX_TOKEN_SIZE = 16 * 1024
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ASYMMETRIC_ALGS = RSA_ALGS | frozenset(EC_ALGS.values()) | {"EdDSA"}
_FORBIDDEN_HEADERS = ("crit", "jku", "jwk", "x5u", "x5c")
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


class JoseError(Exception):
    """A token that cannot be trusted, or a key that cannot be used.

    The message is for logs; callers answer `invalid_token`/`invalid_grant` without it.
    """


def _digest_for(alg: str) -> type[hashes.HashAlgorithm]:
    return hashes.SHA512 if alg == "EdDSA" else _HASHES[alg[-3:]]


class _PSSKey(Key):
    """RSASSA-PSS with SHA-2, MGF1 with the same hash, salt length = hash length (RFC 7518 §3.5)."""

    def __init__(self, key: Any, algorithm: str) -> None:
        if not isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            raise JOSEError("PS* keys must be prebuilt cryptography RSA key objects")
        self._key, self._hash = key, _HASHES[algorithm[-3:]]

    def _padding(self) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self._hash()), salt_length=self._hash.digest_size)

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg, self._padding(), self._hash())

    def verify(self, msg: bytes, sig: bytes) -> bool:
        public = self._key.public_key() if isinstance(self._key, rsa.RSAPrivateKey) else self._key
        try:
            public.verify(sig, msg, self._padding(), self._hash())
            return True
        except InvalidSignature:
            return False


class _EdDSAKey(Key):
    """EdDSA over Ed25519 (RFC 8037 §3.1)."""

    def __init__(self, key: Any, algorithm: str) -> None:
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
            raise JOSEError("EdDSA keys must be prebuilt cryptography Ed25519 key objects")
        self._key = key

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        public = self._key.public_key() if isinstance(self._key, ed25519.Ed25519PrivateKey) else self._key
        try:
            public.verify(sig, msg)
            return True
        except InvalidSignature:
            return False


for _alg in ("PS256", "PS384", "PS512"):
    jwk.register_key(_alg, _PSSKey)
jwk.register_key("EdDSA", _EdDSAKey)


def backend_key(crypto_key: Any, alg: str) -> Key:
    """Build the python-jose key object for one alg, once (a PEM per call costs ~130x)."""
    if alg not in ASYMMETRIC_ALGS:
        raise JoseError(f"algorithm {alg!r} is not allowed")
    if alg.startswith("PS"):
        return _PSSKey(crypto_key, alg)
    if alg == "EdDSA":
        return _EdDSAKey(crypto_key, alg)
    return (RSAKey if alg.startswith("RS") else ECKey)(crypto_key, alg)


class Signer(Protocol):
    kid: str
    alg: str

    def backend(self, alg: str) -> Key: ...


class Verifier(Protocol):
    kid: str
    algs: frozenset

    def backend(self, alg: str) -> Key: ...


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (RFC 8259): orjson, a tenth of the cost of `json` per token."""
    return orjson.dumps(value)


#: deepest nesting of arrays and objects accepted from outside. orjson refuses more than
#: 1024 levels when parsing but serializes only 254, and the stdlib `json` raises
#: RecursionError (not a ValueError) near 1000: what we parse may be stored or re-encoded
#: (claims requests, registration metadata), so the limit sits well below both.
MAX_JSON_DEPTH = 64


def parse_json(data: bytes | str) -> Any:
    """JSON from outside (RFC 8259): any malformed input is a ValueError, never another
    exception (a 400, never a 500). UTF-8 only (§8.1), no NaN/Infinity (§6), nesting at
    most MAX_JSON_DEPTH. Every parser of untrusted JSON (bodies, JOSE segments, the
    `claims` parameter) goes through here."""
    doc = orjson.loads(data)  # orjson.JSONDecodeError is a ValueError (also for depth > 1024)
    opening = ("[", "{") if isinstance(data, str) else (b"[", b"{")
    if data.count(opening[0]) + data.count(opening[1]) > MAX_JSON_DEPTH:  # else it cannot be deeper
        _check_depth(doc)
    return doc


def _check_depth(doc: Any) -> None:
    todo = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError("JSON nested too deeply")
            members = value.values() if isinstance(value, dict) else value
            todo.extend((v, depth + 1) for v in members)


def sign(claims: Mapping[str, Any], key: Signer, *, alg: Optional[str] = None,
         typ: str = "JWT", headers: Optional[Mapping[str, Any]] = None) -> str:
    """Compact JWS of `claims` with the key's pinned alg (or `alg`, if the key allows it).

    The compact serialization is RFC 7515 §7.1 (header and payload base64url-encoded
    without padding, joined by '.'); python-jose's key object makes the signature.
    Building the two segments here instead of through `jose.jws.sign` saves it a second
    JSON encoding (with sorted keys) per token on the token endpoint's hot path.
    """
    alg = alg or key.alg
    header = {"alg": alg, "kid": key.kid, "typ": typ, **(headers or {})}
    try:
        backend = key.backend(alg)
        signing_input = _b64encode(_json(header)) + "." + _b64encode(_json(claims))
        signature = backend.sign(signing_input.encode("ascii"))
    except (JOSEError, ValueError) as err:
        raise JoseError(f"signing failed: {err}") from None
    return signing_input + "." + _b64encode(signature)


def _b64decode(segment: str) -> bytes:
    """base64url without padding (RFC 7515 §2); any other character is refused."""
    if not _B64URL.fullmatch(segment):
        raise JoseError("malformed token segment")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:  # a length no encoder produces (4n+1 characters)
        raise JoseError("malformed token segment") from None


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def unverified_header(token: str, *, max_size: int = MAX_TOKEN_SIZE) -> dict:
    """The JOSE header of a compact JWS, parsed but NOT trusted (only for choosing a key)."""
    if not isinstance(token, str) or len(token) > max_size:
        raise JoseError("token missing or too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("not a compact JWS")
    try:
        header = parse_json(_b64decode(parts[0]))
    except ValueError:
        raise JoseError("malformed token header") from None
    if not isinstance(header, dict):
        raise JoseError("malformed token header")
    return header


def unverified_claims(token: str, *, max_size: int = MAX_TOKEN_SIZE) -> dict:
    """The claims of a compact JWS, NOT verified: for routing decisions only, never for trust."""
    unverified_header(token, max_size=max_size)
    try:
        claims = parse_json(_b64decode(token.split(".")[1]))
    except ValueError:
        raise JoseError("malformed token claims") from None
    if not isinstance(claims, dict):
        raise JoseError("token claims are not a JSON object")
    return claims


def check_header(header: Mapping[str, Any], *, typ: Optional[str] = None) -> None:
    """Refuse headers we never honour; check `typ` when the caller expects one (RFC 8725 §3.11)."""
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise JoseError(f"header parameter {name!r} is not accepted")
    if typ is not None:
        got = header.get("typ")
        if not isinstance(got, str) or _media(got) != _media(typ):
            raise JoseError("unexpected token type")


def _media(value: str) -> str:
    value = value.lower()
    return value[len("application/"):] if value.startswith("application/") else value


def verify(token: str, lookup: Callable[[str], Optional[Verifier]], *,
           typ: Optional[str] = None, max_size: int = MAX_TOKEN_SIZE,
           require_kid: bool = True) -> tuple[dict, dict]:
    """Verify a compact JWS; returns (header, claims). Claims (exp, iss...) are the caller's.

    `lookup(kid)` returns the key for a kid (or None). With `require_kid=False` the lookup
    gets "" when the header has no kid (for clients that register one key, RFC 7515 §4.1.4).
    """
    header = unverified_header(token, max_size=max_size)
    check_header(header, typ=typ)
    kid = header.get("kid", None if require_kid else "")
    if not isinstance(kid, str):
        raise JoseError("token has no kid")
    key = lookup(kid)
    if key is None:
        raise JoseError("unknown kid")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in key.algs:
        raise JoseError("algorithm not allowed for this key")
    # RFC 7515 §5.2: the signature over ASCII(header "." payload), then the payload
    head, payload, signature = token.split(".")
    try:
        valid = key.backend(alg).verify((head + "." + payload).encode("ascii"),
                                        _b64decode(signature))
    except (JOSEError, ValueError, TypeError):  # e.g. an ECDSA signature of the wrong size
        valid = False
    if not valid:
        raise JoseError("signature verification failed")
    try:
        claims = parse_json(_b64decode(payload))
    except ValueError:
        raise JoseError("malformed token claims") from None
    if not isinstance(claims, dict):
        raise JoseError("token claims are not a JSON object")
    return header, claims


def verify_with_keys(token: str, keys: Mapping[str, Verifier], **kwargs: Any) -> tuple[dict, dict]:
    """`verify` against a fixed kid -> key mapping."""
    return verify(token, keys.get, **kwargs)


def left_hash(value: str, alg: str) -> str:
    """at_hash / c_hash / s_hash: left half of the alg's hash, base64url (OIDC Core §3.1.3.6)."""
    digest = hashlib.new(_digest_for(alg).name, value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
