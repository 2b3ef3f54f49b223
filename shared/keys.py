"""Signing and validation keys: loading, policy, the keyring and the JWKS document.

Files are read once at start-up into `cryptography` key objects and python-jose backend
objects; nothing is parsed per request. Algorithms are pinned by key type
(`our_key_algs`): an RSA key signs and verifies RS256/384/512 and PS256/384/512, as
Konnect's, an EC key only its curve's ES alg, Ed25519 EdDSA, and a key whose JWK names an
`alg` only that one; the alg in a token header can only ever pick among those, never HS*,
`none` or another family (RFC 8725 §3.1). A client's registered alg is signed exactly, or
not at all (`AlgorithmNotSigned`). Client keys (private_key_jwt, request objects) without
an `alg` accept their family's algorithms only.

Key files (as in Konnect's bootstrap/utils.go): `.json` is a JWK; else PEM (PKCS#1, PKCS#8, SEC1
EC; public PKIX/PKCS#1 for validation keys). The kid is the JWK's `kid`, else the file
name without extension; for a symlink, the name of its target (rotation by symlink).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import jose
from .errors import Unavailable

log = logging.getLogger("konnect.keys")

MIN_RSA_BITS = 2048
MIN_RSA_EXPONENT = 65537
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MAX_KEY_FILE = 64 * 1024


class KeyLoadError(Exception):
    """A key file that cannot be used; the message names the file, never key material."""


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise KeyLoadError(f"JWK member {what!r} missing")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        raise KeyLoadError(f"JWK member {what!r} is not base64url") from None


def _int(value: Any, what: str) -> int:
    return int.from_bytes(_b64u_decode(value, what), "big")


def key_family(crypto_key: Any) -> str:
    if isinstance(crypto_key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA"
    if isinstance(crypto_key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "EC"
    if isinstance(crypto_key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "OKP"
    raise KeyLoadError(f"unsupported key type {type(crypto_key).__name__}")


def family_algs(crypto_key: Any) -> frozenset:
    """The algorithms a key type may ever be used with (RFC 7518 §3.1, RFC 8037 §3.1)."""
    family = key_family(crypto_key)
    if family == "RSA":
        return jose.RSA_ALGS
    if family == "OKP":
        return frozenset({"EdDSA"})
    return frozenset({jose.EC_ALGS[_CURVES[crypto_key.curve.name]]})


def check_policy(crypto_key: Any) -> None:
    """Refuse weak or unsupported keys: RSA < 2048 bits or e < 65537, EC off P-256/384/521."""
    family = key_family(crypto_key)
    if family == "RSA":
        public = crypto_key.public_key() if isinstance(crypto_key, rsa.RSAPrivateKey) else crypto_key
        if public.key_size < MIN_RSA_BITS:
            raise KeyLoadError(f"RSA key has {public.key_size} bits; at least {MIN_RSA_BITS} required")
        if public.public_numbers().e < MIN_RSA_EXPONENT:
            raise KeyLoadError(f"RSA public exponent must be at least {MIN_RSA_EXPONENT}")
    elif family == "EC" and crypto_key.curve.name not in _CURVES:
        raise KeyLoadError(f"EC curve {crypto_key.curve.name} is not supported (P-256, P-384, P-521)")


def public_jwk(crypto_key: Any) -> dict:
    """Public JWK members of a key (RFC 7518 §6, RFC 8037 §2)."""
    public = crypto_key.public_key() if hasattr(crypto_key, "private_bytes") else crypto_key
    family = key_family(public)
    if family == "RSA":
        n = public.public_numbers()
        return {"kty": "RSA", "n": _b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": _b64u(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}
    if family == "EC":
        n, size = public.public_numbers(), (public.curve.key_size + 7) // 8
        return {"kty": "EC", "crv": _CURVES[public.curve.name],
                "x": _b64u(n.x.to_bytes(size, "big")), "y": _b64u(n.y.to_bytes(size, "big"))}
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64u(raw)}


def private_jwk(crypto_key: Any) -> dict:
    """Private JWK of a key, for the `keys jwk-from-pem` command."""
    jwk = public_jwk(crypto_key)
    family = key_family(crypto_key)
    if family == "RSA":
        p = crypto_key.private_numbers()
        for name, value in (("d", p.d), ("p", p.p), ("q", p.q), ("dp", p.dmp1), ("dq", p.dmq1), ("qi", p.iqmp)):
            jwk[name] = _b64u(value.to_bytes((value.bit_length() + 7) // 8, "big"))
    elif family == "EC":
        size = (crypto_key.curve.key_size + 7) // 8
        jwk["d"] = _b64u(crypto_key.private_numbers().private_value.to_bytes(size, "big"))
    else:
        jwk["d"] = _b64u(crypto_key.private_bytes(serialization.Encoding.Raw,
                                                  serialization.PrivateFormat.Raw,
                                                  serialization.NoEncryption()))
    return jwk


def key_from_jwk(data: Mapping[str, Any], *, private: bool) -> Any:
    """A cryptography key object from a JWK dict (RFC 7517/7518/8037)."""
    if not isinstance(data, Mapping):
        raise KeyLoadError("JWK must be a JSON object")
    kty = data.get("kty")
    has_private = "d" in data
    if private and not has_private:
        raise KeyLoadError("JWK is not a private key")
    try:
        if kty == "RSA":
            pub = rsa.RSAPublicNumbers(_int(data.get("e"), "e"), _int(data.get("n"), "n"))
            if not (private and has_private):
                return pub.public_key()
            d = _int(data.get("d"), "d")
            if all(k in data for k in ("p", "q", "dp", "dq", "qi")):
                p, q = _int(data["p"], "p"), _int(data["q"], "q")
                dp, dq, qi = _int(data["dp"], "dp"), _int(data["dq"], "dq"), _int(data["qi"], "qi")
            else:
                p, q = rsa.rsa_recover_prime_factors(pub.n, pub.e, d)
                dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
            return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, pub).private_key()
        if kty == "EC":
            curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
            curve = curves.get(data.get("crv"))
            if curve is None:
                raise KeyLoadError(f"EC curve {data.get('crv')!r} is not supported")
            pub = ec.EllipticCurvePublicNumbers(_int(data.get("x"), "x"), _int(data.get("y"), "y"), curve)
            if not (private and has_private):
                return pub.public_key()
            return ec.EllipticCurvePrivateNumbers(_int(data["d"], "d"), pub).private_key()
        if kty == "OKP":
            if data.get("crv") != "Ed25519":
                raise KeyLoadError(f"OKP curve {data.get('crv')!r} is not supported (Ed25519)")
            if private and has_private:
                return ed25519.Ed25519PrivateKey.from_private_bytes(_b64u_decode(data["d"], "d"))
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64u_decode(data.get("x"), "x"))
    except KeyLoadError:
        raise
    except (ValueError, TypeError) as err:
        raise KeyLoadError(f"invalid {kty} JWK: {err}") from None
    raise KeyLoadError(f"JWK key type {kty!r} is not supported (RSA, EC, OKP)")


def kid_for_path(path: str | Path) -> str:
    """The file name without extension; for a symlink, its target's (as Konnect's
    bootstrap/utils.go)."""
    return Path(path).resolve().stem


def _read(path: str | Path) -> tuple[bytes, int]:
    """The bytes and permission bits of a regular key file of at most 64 KiB.

    Anything else is refused before a byte is read: a directory, a
    device (a symlink to /dev/zero would read without end), a FIFO (O_NONBLOCK: opening
    it does not wait for a writer), a socket. The read itself is capped too, so a file
    that grows after the check cannot make it unbounded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise KeyLoadError(f"{path}: cannot read key file ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyLoadError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
        chunks, size = [], 0
        while size <= _MAX_KEY_FILE:
            chunk = os.read(fd, _MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > _MAX_KEY_FILE:
            raise KeyLoadError(f"{path}: file too large for a key (over {_MAX_KEY_FILE} bytes)")
        return b"".join(chunks), stat.S_IMODE(st.st_mode)
    except OSError as err:
        raise KeyLoadError(f"{path}: cannot read key file ({err.strerror or err})") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _warn_if_exposed(path: str | Path, mode: int) -> None:
    """docs/operations.md: private keys are 0600. OpenSSH refuses others; the choice is refusing or a
    loud warning; we warn, because existing Konnect installations may hold their keys at
    0640 (group `kopano`) or 0644, and refusing would stop them at upgrade."""
    if mode & 0o066:
        who = " and ".join(w for w, bits in (("group", 0o060), ("others", 0o006)) if mode & bits)
        log.warning("PRIVATE KEY FILE %s HAS MODE %04o: it is readable or writable by %s; "
                    "anyone who can read it can sign tokens as this OP. chmod 600 it "
                    "(owner: the service user)", path, mode, who)


def _check_jwk_members(doc: Mapping[str, Any], *, private: bool) -> None:
    """Types and intended use of a JWK's optional members (RFC 7517 §4.2-4.5)."""
    for name in ("alg", "kid", "use"):
        if name in doc and not isinstance(doc[name], str):
            raise KeyLoadError(f"JWK member {name!r} must be a string")
    use = doc.get("use")
    if use is not None and use != "sig":  # RFC 7517 §4.2: "enc" keys are for encryption
        raise KeyLoadError(f"JWK has \"use\": {use!r}; a signing or validation key must "
                           "have \"use\": \"sig\" or none")
    ops = doc.get("key_ops")
    if ops is not None:  # RFC 7517 §4.3: the operations the key is intended for
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise KeyLoadError("JWK member 'key_ops' must be a list of strings")
        usable = {"sign"} if private else {"verify", "sign"}  # a private JWK may validate
        if not usable & set(ops):
            raise KeyLoadError(f"JWK \"key_ops\" {ops!r} does not allow "
                               + ("signing" if private else "verifying"))


def _load_pem(data: bytes, *, private: bool) -> Any:
    loaders = [lambda d: serialization.load_pem_private_key(d, password=None)]
    if not private:
        loaders.insert(0, serialization.load_pem_public_key)
    for loader in loaders:
        try:
            return loader(data)
        except (ValueError, TypeError):
            continue
        except Exception:  # cryptography raises UnsupportedAlgorithm for odd key types
            continue
    raise KeyLoadError("not a usable PEM " + ("private key" if private else "key")
                       + " (PKCS#1, PKCS#8, SEC1" + ("" if private else ", PKIX") + ")")


def load_key_file(path: str | Path, *, private: bool = True) -> tuple[str, Any, Optional[str]]:
    """(kid, cryptography key, alg from the JWK or None) from one key file.

    Only regular files are read; a private key readable by group or others is loaded
    with a loud warning (see `_warn_if_exposed`).
    """
    data, mode = _read(path)
    try:
        if str(path).endswith(".json"):
            try:
                doc = json.loads(data)
            except ValueError:
                raise KeyLoadError("not valid JSON") from None
            key = key_from_jwk(doc, private=private)
            _check_jwk_members(doc, private=private)
            kid = doc.get("kid") or kid_for_path(path)
            alg = doc.get("alg")
        else:
            key, kid, alg = _load_pem(data, private=private), kid_for_path(path), None
        check_policy(key)
    except KeyLoadError as err:
        raise KeyLoadError(f"{path}: {err}") from None
    if hasattr(key, "private_bytes"):
        _warn_if_exposed(path, mode)
    if not isinstance(kid, str) or not kid:
        raise KeyLoadError(f"{path}: kid must be a non-empty string")
    if alg is not None and alg not in family_algs(key):
        raise KeyLoadError(f"{path}: alg {alg!r} does not fit a {key_family(key)} key")
    return kid, key, alg


@dataclass
class VerificationKey:
    """A public key under a kid, with the algorithms it may verify (`algs`) and its
    default one (`alg`). A key with ONE algorithm is pinned to it, and the JWKS says so."""

    kid: str
    public: Any = field(repr=False)
    algs: frozenset
    alg: str
    _backends: dict = field(default_factory=dict, repr=False)

    @property
    def kty(self) -> str:
        return key_family(self.public)

    @property
    def pinned(self) -> bool:
        return len(self.algs) == 1

    def backend(self, alg: str) -> Any:
        if alg not in self.algs:
            raise jose.JoseError("algorithm not allowed for this key")
        if alg not in self._backends:
            self._backends[alg] = jose.backend_key(self.public, alg)
        return self._backends[alg]

    def public_jwk(self) -> dict:
        """RFC 7517 §4.4: `alg` only for a key pinned to one algorithm. An RSA key that
        signs every RS*/PS* algorithm has none (as Konnect publishes its keys): naming one
        would make relying parties that honour it refuse the others."""
        jwk = {**public_jwk(self.public), "kid": self.kid, "use": "sig"}
        if self.pinned:
            jwk["alg"] = self.alg
        return jwk


@dataclass
class SigningKey(VerificationKey):
    """A private key that signs `algs`; `alg` is what it signs unless asked for another.
    `for_alg` is the same key bound to another of its algorithms (what `jose.sign` and
    the at_hash/c_hash of an ID token read as `alg`)."""

    private: Any = field(default=None, repr=False)
    _views: dict = field(default_factory=dict, repr=False)

    def backend(self, alg: str) -> Any:
        if alg not in self.algs:
            raise jose.JoseError("algorithm not allowed for this key")
        if alg not in self._backends:
            self._backends[alg] = jose.backend_key(self.private, alg)
        return self._backends[alg]

    def for_alg(self, alg: str) -> "SigningKey":
        if alg == self.alg:
            return self
        if alg not in self.algs:
            raise jose.JoseError("algorithm not allowed for this key")
        view = self._views.get(alg)
        if view is None:  # built once; it shares the key's backends
            view = self._views[alg] = SigningKey(
                kid=self.kid, public=self.public, algs=self.algs, alg=alg,
                _backends=self._backends, private=self.private, _views=self._views)
        return view

    def verifier(self) -> VerificationKey:
        return VerificationKey(kid=self.kid, public=self.public, algs=self.algs, alg=self.alg)


def client_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """A client's registered public JWK (private_key_jwt, request objects)."""
    if not isinstance(jwk, Mapping) or jwk.get("use") not in (None, "sig"):
        raise KeyLoadError("client key is not for signatures")
    _check_jwk_members(jwk, private=False)
    key = key_from_jwk(jwk, private=False)
    check_policy(key)
    algs = family_algs(key)
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algs:
            raise KeyLoadError(f"alg {alg!r} does not fit a {key_family(key)} key")
        algs = frozenset({alg})
    return VerificationKey(kid=str(jwk.get("kid") or ""), public=key, algs=algs,
                           alg=alg or sorted(algs)[0])


def client_key_lookup(jwks: Optional[Mapping[str, Any]]) -> Optional[Callable[[str], Any]]:
    """kid -> key over a client's registered `jwks` (private_key_jwt, request objects), for
    `jose.verify(..., require_kid=False)`: a client with ONE usable key may omit the kid
    (RFC 7515 §4.1.4). None when the client registered no usable key."""
    keys = {}
    for jwk in (jwks or {}).get("keys", []):
        try:
            key = client_key(jwk)
        except KeyLoadError:
            continue
        keys[key.kid] = key
    if not keys:
        return None
    single = next(iter(keys.values())) if len(keys) == 1 else None
    return lambda kid: keys.get(kid) or single


def our_key_algs(crypto_key: Any, alg: Optional[str]) -> frozenset:
    """What one of OUR keys (a signing or validation key) signs or verifies: the JWK's
    `alg` when it names one (the key is pinned to it), else every algorithm of its type
    (`family_algs`): RS256…PS512 for an RSA key, as Konnect's oidc/provider/provider.go
    `SetSigningKey` signs with one, the curve's ES alg for EC, EdDSA for Ed25519. Never an
    alg the key type cannot have, never HS* or none (RFC 8725 §3.1)."""
    return frozenset({alg}) if alg else family_algs(crypto_key)


def _default_alg(algs: frozenset, signing_method: str) -> str:
    """What a key signs when nobody asked for an alg: `--signing-method` when it can,
    else PS256 for RSA (Konnect's default), else its one alg."""
    if signing_method in algs:
        return signing_method
    return "PS256" if "PS256" in algs else sorted(algs)[0]


#: the order of the algorithms in discovery's `*_signing_alg_values_supported`
ALG_ORDER = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
             "EdDSA")
#: ID tokens signed by versions before RSA keys signed every RSA alg name an RS256-pinned
#: copy of the RSA key, `<kid>-rs256`: still verified (an `id_token_hint` may be old), no
#: longer published or signed with
LEGACY_RS256_SUFFIX = "-rs256"


class AlgorithmNotSigned(Exception):
    """No signing key signs this algorithm (a client registered one our keys cannot sign:
    refused at start-up and at registration, so only a client registered under other keys
    gets here). Never answered with another algorithm instead."""


class KeysUnavailable(Unavailable):
    """The group's shared ephemeral key or secret is not confirmed yet (shared/ephemeral.py):
    nothing is signed, verified, sealed or opened with material the other processes may
    not have (503 `temporarily_unavailable`)."""


class Keyring:
    """All keys of this OP: the signer, other signing keys, validation-only keys, and the
    key that signs access tokens (`access_signer`: the signer unless one was configured
    with `--access-token-signing-key`).

    `ephemeral`: the signer is the group's shared ephemeral key (no `--signing-private-key`,
    shared/ephemeral.py). Such a keyring is not `ready` until that module has confirmed its
    key with Redis, and `adopt_signer` swaps in the group's key in place, so every holder of
    this object (tokens, handlers, backends) signs with the group's key at once.
    """

    def __init__(self, signer: SigningKey, signing: Sequence[SigningKey],
                 validation: Sequence[VerificationKey], *, ephemeral: bool = False,
                 access_signer: Optional[SigningKey] = None) -> None:
        self.ephemeral = ephemeral
        self.ready = not ephemeral
        self._validation = list(validation)
        self._configured_access = access_signer
        self._install(signer, signing)

    def _install(self, signer: SigningKey, signing: Sequence[SigningKey]) -> None:
        self.signer = signer
        self.access_signer = self._configured_access or signer
        keys = {key.kid: key for key in signing}
        keys[signer.kid] = signer
        keys[self.access_signer.kid] = self.access_signer
        # the signer first: what a client's registered alg is signed with when it can
        self._signing = {signer.kid: signer, **{k: v for k, v in keys.items() if k != signer.kid}}
        published: dict[str, VerificationKey] = {key.kid: key for key in self._validation}
        for key in self._signing.values():
            published[key.kid] = key.verifier()
        published["default"] = signer.verifier()
        self._jwks = {"keys": [dict(key.public_jwk(), kid=kid) for kid, key in published.items()]}
        verify = dict(published)
        for kid, key in published.items():
            alias = kid + LEGACY_RS256_SUFFIX
            if kid != "default" and key.kty == "RSA" and alias not in verify:
                verify[alias] = VerificationKey(kid=alias, public=key.public,
                                                algs=frozenset({"RS256"}), alg="RS256")
        self._verify = verify
        algs = set().union(*(key.algs for key in self._signing.values()))
        self.can_sign = frozenset(algs)
        self._signing_algs = tuple([signer.alg] + [a for a in ALG_ORDER
                                                   if a in algs and a != signer.alg])

    def adopt_signer(self, kid: str, private: Any, signing_method: str) -> None:
        """Sign with the group's shared ephemeral key from now on (shared/ephemeral.py)."""
        algs = family_algs(private)
        self._install(_signing_key(kid, private, algs, _default_alg(algs, signing_method)), [])
        self.ready = True

    def _check_ready(self) -> None:
        if not self.ready:
            raise KeysUnavailable("the group's shared ephemeral signing key is not confirmed yet")

    @property
    def signing_algs(self) -> list[str]:
        """Algs we can sign with, the signer's first (discovery's *_signing_alg_values_supported)."""
        return list(self._signing_algs)

    def id_token_signer(self, registered_alg: Optional[str] = None) -> SigningKey:
        """The key bound to a client's registered alg (`AlgorithmNotSigned` when no key
        signs it: never another alg instead); without one RS256 where we sign it (the
        default of OIDC Registration §2), else the signer's alg."""
        if registered_alg:
            return self.signer_for(registered_alg)
        return self.signer_for("RS256" if "RS256" in self.can_sign else None)

    def access_token_signer(self, registered_alg: Optional[str] = None) -> SigningKey:
        """A client's registered alg where we sign it (Konnect signs a client's access
        tokens like its ID tokens), else the access-token key."""
        if registered_alg and registered_alg in self.can_sign:
            return self.signer_for(registered_alg)
        self._check_ready()
        return self.access_signer

    def signer_for(self, alg: Optional[str] = None) -> SigningKey:
        """The signer bound to `alg` (None: its own), else the first signing key that signs
        `alg`; `AlgorithmNotSigned` when none does."""
        self._check_ready()
        if alg is None or alg == self.signer.alg:
            return self.signer
        for key in self._signing.values():
            if alg in key.algs:
                return key.for_alg(alg)
        raise AlgorithmNotSigned(f"no signing key signs {alg} (we sign "
                                 + ", ".join(self._signing_algs) + ")")

    def verification_key(self, kid: str) -> Optional[VerificationKey]:
        self._check_ready()
        return self._verify.get(kid)

    def jwks(self) -> dict:
        """The JWK Set (RFC 7517 §5): public parts only, built once per set of keys."""
        self._check_ready()
        return self._jwks

    def sign(self, claims: Mapping[str, Any], *, alg: Optional[str] = None, typ: str = "JWT") -> str:
        return jose.sign(claims, self.signer_for(alg), typ=typ)

    def verify(self, token: str, **kwargs: Any) -> tuple[dict, dict]:
        return jose.verify(token, self.verification_key, **kwargs)


def _signing_key(kid: str, key: Any, algs: frozenset, alg: str) -> SigningKey:
    return SigningKey(kid=kid, public=key.public_key(), algs=algs, alg=alg, private=key)


def _validation_keys(directory: Path, logger: logging.Logger) -> list[VerificationKey]:
    """The `*.pem`/`*.json` files of the validation keys directory. A file that cannot be
    used is skipped with a warning, as Konnect's bootstrap/utils.go `addValidatorsFromPath`
    does: a missing validation key only refuses the tokens it would have verified, so it
    must not stop the OP (a signing key that cannot be loaded does). The first file of a
    kid wins, the others are skipped with a warning (Konnect too)."""
    keys: dict[str, VerificationKey] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix in (".pem", ".json")):
        try:
            kid, key, alg = load_key_file(path, private=False)
        except KeyLoadError as err:
            logger.warning("VALIDATION KEY SKIPPED: %s; tokens signed with it are refused", err)
            continue
        if kid in keys:
            logger.warning("validation key %s skipped: kid %r is already loaded from another "
                           "file", path, kid)
            continue
        public = key.public_key() if hasattr(key, "private_bytes") else key
        algs = our_key_algs(public, alg)
        keys[kid] = VerificationKey(kid=kid, public=public, algs=algs, alg=_default_alg(algs, ""))
    return list(keys.values())


def load_keyring(paths: Iterable[str], *, signing_kid: Optional[str] = None,
                 signing_method: str = "PS256", validation_keys_path: Optional[str] = None,
                 access_token_key: Optional[str] = None,
                 ephemeral_signer: Optional[tuple[str, Any]] = None,
                 logger: logging.Logger = log) -> Keyring:
    """Load every key; one `KeyLoadError` lists every problem.

    The signer is deterministic (Konnect's depended on Go's map order): the key whose kid equals
    `signing_kid`, else the first key, which is then also known under `signing_kid`.
    `access_token_key`: a key file that signs access tokens instead of the signer (an EC
    key: ES256); published and verified like every signing key.
    `ephemeral_signer`: (kid, private key) of the group's shared ephemeral key when no
    signing key is configured (shared/ephemeral.py); that keyring starts not `ready`.
    """
    problems: list[str] = []
    signing: list[SigningKey] = []
    if signing_method not in jose.ASYMMETRIC_ALGS:
        problems.append(f"signing method {signing_method!r} is not supported")
    for path in paths or ():
        try:
            kid, key, alg = load_key_file(path, private=True)
            algs = our_key_algs(key, alg)
            signing.append(_signing_key(kid, key, algs, _default_alg(algs, signing_method)))
        except KeyLoadError as err:
            problems.append(str(err))
    access_signer = None
    if access_token_key:
        try:
            kid, key, alg = load_key_file(access_token_key, private=True)
            algs = our_key_algs(key, alg)
            access_signer = _signing_key(kid, key, algs, _default_alg(algs, signing_method))
        except KeyLoadError as err:
            problems.append(str(err))
        if access_signer is not None and any(k.kid == access_signer.kid for k in signing):
            problems.append(f"{access_token_key}: kid {access_signer.kid!r} is also a signing "
                            "key's: the access-token key needs a kid of its own")
    validation: list[VerificationKey] = []
    if validation_keys_path:
        directory = Path(validation_keys_path)
        if not directory.is_dir():
            problems.append(f"{validation_keys_path}: validation keys path is not a directory")
        else:
            validation = _validation_keys(directory, logger)
    if not signing and ephemeral_signer is None:
        problems.append("no signing key")
    if problems:
        raise KeyLoadError("; ".join(problems))
    if not signing:
        kid, private = ephemeral_signer
        algs = family_algs(private)
        signer = _signing_key(kid, private, algs, _default_alg(algs, signing_method))
        return Keyring(signer, [], validation, ephemeral=True, access_signer=access_signer)
    chosen = next((k for k in signing if signing_kid and k.kid == signing_kid), signing[0])
    if signing_method not in chosen.algs:
        if signing_method in family_algs(chosen.private):
            reason = f"its JWK pins alg {chosen.alg}"
        else:
            reason = f"it is an {key_family(chosen.private)} key"
        raise KeyLoadError(f"signing method {signing_method} cannot be used with the signing "
                           f"key {chosen.kid!r}: {reason}")
    if signing_kid and chosen.kid != signing_kid:
        chosen = _signing_key(signing_kid, chosen.private, chosen.algs, chosen.alg)
    return Keyring(chosen, signing, validation, access_signer=access_signer)
