"""`python -m shared.keytool`: create signing keys and the encryption secret; PEM -> JWK.

`generate` does what Konnect's setup does (scripts/kopano-konnectd.binscript): a dated key file
`konnect-YYYYMMDD-XXXX.pem` (mode 0600), a stable relative symlink
`konnectd-signing-private-key.pem` pointing at it (so the kid is the dated name and a
rotation is a new file plus a moved link), and a 32-byte `konnectd-encryption-secret.key`
if there is none yet.

The defaults are the production keys (docs/operations.md, "Signing keys"): the signing
key is RSA-2048 (ID tokens RS256, as every relying party can verify them), and beside it,
the first time, an EC P-256 key for access tokens (`konnect-at-YYYYMMDD-XXXX.pem` behind
the link `konnectd-access-token-private-key.pem`; `--access-token-signing-key`), which
signs ES256 at a fraction of an RSA signature's cost. `generate --access-token` makes a
new access-token key (its rotation); `--no-access-token-key` makes only the signing key.
Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .keys import KeyLoadError, check_policy, kid_for_path, load_key_file, private_jwk, public_jwk

LINK_NAME = "konnectd-signing-private-key.pem"
ACCESS_TOKEN_LINK_NAME = "konnectd-access-token-private-key.pem"
DEFAULT_RSA_BITS = 2048
SECRET_NAME = "konnectd-encryption-secret.key"
SECRET_BYTES = 32
_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


class ToolError(Exception):
    pass


def _write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ToolError(f"{path} exists (use --force to replace it)") from None
    except OSError as err:
        raise ToolError(f"{path}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def new_key(kind: str, *, bits: int = DEFAULT_RSA_BITS, curve: str = "P-256"):
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ec":
        key = ec.generate_private_key(_CURVES[curve]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    try:
        check_policy(key)
    except KeyLoadError as err:
        raise ToolError(str(err)) from None
    return key


def write_secret(path: Path, *, force: bool = False) -> Path:
    _write_private(path, secrets.token_bytes(SECRET_BYTES), force=force)
    return path


def generate(out_dir: Path, kind: Optional[str] = None, *, bits: int = DEFAULT_RSA_BITS,
             curve: str = "P-256", link: bool = True, today: Optional[dt.date] = None,
             access_token: bool = False, access_token_key: bool = True) -> dict:
    """Create a dated key (and the link and secret); returns the paths and the kid.

    The signing key is `kind` (default RSA); with `link`, an access-token key (EC P-256)
    is made too when the directory has none yet and `access_token_key` is true. With
    `access_token`, only an access-token key is made (default type EC) and linked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if access_token:
        return _dated_key(out_dir, kind or "ec", bits=bits, curve=curve, prefix="konnect-at",
                          link=ACCESS_TOKEN_LINK_NAME if link else None, today=today)
    result = _dated_key(out_dir, kind or "rsa", bits=bits, curve=curve, prefix="konnect",
                        link=LINK_NAME if link else None, today=today)
    if link and access_token_key and not (out_dir / ACCESS_TOKEN_LINK_NAME).is_symlink() \
            and not (out_dir / ACCESS_TOKEN_LINK_NAME).exists():
        extra = _dated_key(out_dir, "ec", curve="P-256", prefix="konnect-at",
                           link=ACCESS_TOKEN_LINK_NAME, today=today)
        result.update({"access_token_key": extra["key"], "access_token_kid": extra["kid"],
                       "access_token_link": extra["link"]})
    return result


def _dated_key(out_dir: Path, kind: str, *, bits: int = DEFAULT_RSA_BITS, curve: str = "P-256",
               prefix: str, link: Optional[str], today: Optional[dt.date]) -> dict:
    key = new_key(kind, bits=bits, curve=curve)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    stamp = (today or dt.date.today()).strftime("%Y%m%d")
    while True:
        path = out_dir / f"{prefix}-{stamp}-{secrets.token_hex(2)}.pem"
        if not path.exists():
            break
    _write_private(path, pem)
    result = {"key": str(path), "kid": path.stem}
    if link:
        link_path = out_dir / link
        if link_path.exists() and not link_path.is_symlink():
            raise ToolError(f"{link_path} is a regular file; move it away to link the new key")
        tmp = out_dir / f".{link}.{secrets.token_hex(4)}"
        tmp.symlink_to(path.name)
        tmp.replace(link_path)
        result["link"] = str(link_path)
    secret = out_dir / SECRET_NAME
    if not secret.exists():
        write_secret(secret)
        result["secret"] = str(secret)
    return result


def jwk_from_pem(path: Path, *, kid: Optional[str] = None, use: Optional[str] = "sig",
                 public_only: bool = False) -> dict:
    """The JWK of a PEM key (private unless `public_only` or the PEM is public)."""
    try:
        file_kid, key, _ = load_key_file(path, private=False)
    except KeyLoadError as err:
        raise ToolError(str(err)) from None
    is_private = hasattr(key, "private_bytes")
    jwk = private_jwk(key) if is_private and not public_only else public_jwk(key)
    jwk["kid"] = kid or file_kid or kid_for_path(path)
    if use:
        jwk["use"] = use
    return jwk


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.keytool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="create a signing key, its symlink and the "
                         "encryption secret (and, the first time, an access-token key)")
    gen.add_argument("--type", choices=("rsa", "ec", "ed25519"), default=None,
                     help="key type (default: rsa; with --access-token: ec)")
    gen.add_argument("--bits", type=int, default=DEFAULT_RSA_BITS,
                     help=f"RSA key size (default {DEFAULT_RSA_BITS}, minimum 2048)")
    gen.add_argument("--curve", choices=sorted(_CURVES), default="P-256")
    gen.add_argument("--out-dir", default=".", help="directory for the files (default: .)")
    gen.add_argument("--no-link", dest="link", action="store_false",
                     help=f"do not point {LINK_NAME} (or {ACCESS_TOKEN_LINK_NAME}) at the new key")
    gen.add_argument("--access-token", action="store_true",
                     help=f"make a new access-token key only, linked as {ACCESS_TOKEN_LINK_NAME}")
    gen.add_argument("--no-access-token-key", dest="access_token_key", action="store_false",
                     help="do not add an access-token key (access tokens are then signed "
                          "with the signing key, as in Konnect)")
    sec = sub.add_parser("secret", help="write a 32-byte encryption secret")
    sec.add_argument("out")
    sec.add_argument("--force", action="store_true", help="replace an existing file")
    conv = sub.add_parser("jwk-from-pem", help="print a PEM key as a JWK")
    conv.add_argument("pem")
    conv.add_argument("--kid")
    conv.add_argument("--use", default="sig")
    conv.add_argument("--yaml", action="store_true", help="print YAML instead of JSON")
    conv.add_argument("--public", action="store_true", help="only the public part")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            result = generate(Path(args.out_dir), args.type, bits=args.bits, curve=args.curve,
                              link=args.link, access_token=args.access_token,
                              access_token_key=args.access_token_key)
            for name in ("key", "link", "secret"):
                if name in result:
                    print(f"{name}: {result[name]}")
            print(f"kid: {result['kid']}")
            if "access_token_key" in result:
                print(f"access-token key: {result['access_token_key']}")
                print(f"access-token link: {result['access_token_link']}")
                print(f"access-token kid: {result['access_token_kid']}")
        elif args.command == "secret":
            print(write_secret(Path(args.out), force=args.force))
        else:
            jwk = jwk_from_pem(Path(args.pem), kid=args.kid, use=args.use, public_only=args.public)
            print(yaml.safe_dump(jwk, sort_keys=False) if args.yaml else json.dumps(jwk, indent=2))
    except ToolError as err:
        print(f"keytool: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
