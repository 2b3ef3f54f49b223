"""The `authorities:` entries of the registry file, with Konnect's keys and defaults.

Konnect's identity/authorities/models.go names the keys; oidc.go and saml2.go give the
defaults (OIDC: scopes `openid profile`, response type `id_token`, PKCE `S256`, identity
claim `preferred_username`; SAML2: identity attribute `uid`, our entity ID
`<issuer>/signin/v1/identifier/saml2/metadata`). Konnect skipped a broken entry with a
warning; here every problem stops the start (a broken client entry is skipped, as in
Konnect): a `default` authority that silently disappeared would put the password form
back in front of users whose site never had local passwords.

One key is ours, not Konnect's: `metadata_signing_certificates` (saml2), the certificate(s)
whose key signs the IdP's metadata (saml2.py verifies the metadata with them): a PEM file's
absolute path or PEM text, or a list of them (several for a key rollover).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..clients import jwks_problems
from ..origins import is_loopback_host

log = logging.getLogger("konnect.authorities")

OIDC, SAML2 = "oidc", "saml2"
TYPES = (OIDC, SAML2)
#: the response types we ask an upstream OP for: Konnect's `id_token` (its default, kept for
#: registrations that only allow it) and the code flow (recommended)
RESPONSE_TYPES = ("id_token", "code")
KEYS = frozenset({
    "id", "name", "authority_type", "iss", "client_id", "client_secret", "entity_id",
    "trusted", "insecure", "default", "discover", "scopes", "response_type",
    "code_challenge_method", "metadata_endpoint", "authorization_endpoint", "jwks",
    "identity_claim_name", "identity_aliases", "identity_alias_required",
    "end_session_enabled", "metadata_signing_certificates"})
BOOLEANS = ("trusted", "insecure", "default", "identity_alias_required", "end_session_enabled")
STRINGS = ("id", "name", "authority_type", "iss", "client_id", "client_secret", "entity_id",
           "response_type", "code_challenge_method", "metadata_endpoint",
           "authorization_endpoint", "identity_claim_name")
#: where our SAML2 service provider lives (Konnect's identifier/identifier.go routes)
SAML2_METADATA_PATH = "/signin/v1/identifier/saml2/metadata"


@dataclass(frozen=True)
class Authority:
    id: str
    name: str
    authority_type: str
    iss: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    entity_id: str = ""
    trusted: bool = False
    insecure: bool = False
    default: bool = False
    discover: bool = True
    scopes: tuple = ()
    response_type: str = ""
    code_challenge_method: str = ""
    metadata_endpoint: str = ""
    authorization_endpoint: str = ""
    jwks: Optional[Mapping[str, Any]] = field(default=None, repr=False)
    identity_claim_name: str = ""
    identity_aliases: Mapping[str, str] = field(default_factory=dict, repr=False)
    identity_alias_required: bool = False
    end_session_enabled: bool = False
    #: DER of each certificate that may sign the SAML2 metadata (ours, not Konnect's)
    metadata_signing_certificates: tuple = field(default=(), repr=False)

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def local_username(self, value: Any) -> Optional[str]:
        """The local username for the upstream's identity claim value, or None when the
        entry refuses it: the value is not a non-empty string, or no alias maps it while
        `identity_alias_required` (Konnect's IdentityClaimValue: an alias replaces the
        value; without one the value itself is the username)."""
        if not isinstance(value, str) or not value or len(value) > 256:
            return None
        alias = self.identity_aliases.get(value)
        if alias:
            return alias
        if self.identity_alias_required:
            return None
        return value


def _https_problem(name: str, value: str, insecure: bool) -> Optional[str]:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and insecure and is_loopback_host(parts.hostname):
        return None  # a loopback upstream for development, only with insecure
    return f"{name} must be an https:// URL (has {value[:120]!r})"


def _entry(entry: Any, issuer: str) -> tuple[Optional[Authority], list[str]]:
    if not isinstance(entry, Mapping):
        return None, ["must be a mapping"]
    problems: list[str] = []
    unknown = sorted(set(map(str, entry)) - KEYS)
    if unknown:  # a misspelt `identity_alias_required` would quietly admit everyone
        problems.append("unknown key(s) " + ", ".join(unknown))
    values: dict[str, Any] = {}
    for name in STRINGS:
        value = entry.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a string")
            value = None
        values[name] = (value or "").strip() if name != "client_secret" else (value or "")
    for name in BOOLEANS:
        value = entry.get(name, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            problems.append(f"{name} must be yes or no")
            value = False
        values[name] = value
    discover = entry.get("discover")
    if discover is not None and not isinstance(discover, bool):
        problems.append("discover must be yes or no")
        discover = None
    scopes = entry.get("scopes")
    if scopes is not None and (not isinstance(scopes, list)
                               or not all(isinstance(s, str) and s and " " not in s
                                          for s in scopes)):
        problems.append("scopes must be a list of scope names")
        scopes = None
    aliases = entry.get("identity_aliases") or {}
    if not isinstance(aliases, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        problems.append("identity_aliases must map names to names")
        aliases = {}
    jwks = entry.get("jwks")
    if jwks is not None:
        found = jwks_problems(jwks)  # the registry's one rule for a client's keys too
        problems += found
        jwks = None if found else {"keys": list(jwks["keys"])}
    if not values["id"]:
        values["id"] = values["name"]  # Konnect: "authority has no id, using name"
    if not values["id"]:
        problems.append("id (or name) is required")
    kind = values["authority_type"]
    if kind not in TYPES:
        problems.append(f"authority_type must be oidc or saml2 (has {kind!r})")
    insecure = values["insecure"]
    if kind == OIDC:
        problems += _oidc(values, discover, jwks, insecure)
        discover_value = values.pop("_discover")
        values["scopes"] = tuple(scopes) if scopes else ("openid", "profile")
        if "openid" not in values["scopes"]:
            problems.append("scopes must contain openid (the sign-in needs an ID token)")
        values["identity_claim_name"] = values["identity_claim_name"] or "preferred_username"
    elif kind == SAML2:
        if discover is False:
            problems.append("saml2 must use discover (Konnect's rule): the IdP's metadata "
                            "is fetched from metadata_endpoint")
        if not values["metadata_endpoint"]:
            problems.append("metadata_endpoint is required for saml2")
        elif values["metadata_endpoint"].startswith("file://"):
            # the IdP's metadata kept by the operator (an IdP that does not publish it)
            path = values["metadata_endpoint"][len("file://"):]
            if not path.startswith("/") or not os.path.isfile(path):
                problems.append("metadata_endpoint file:// must name an existing file by "
                                "its absolute path")
        else:
            problem = _https_problem("metadata_endpoint", values["metadata_endpoint"], insecure)
            problems += [problem] if problem else []
        if not shutil.which("xmlsec1"):  # pysaml2 verifies every signature with it
            problems.append("saml2 needs xmlsec1 on the PATH (Debian package xmlsec1)")
        certs, found = _certificates(entry.get("metadata_signing_certificates"))
        problems += found
        values["metadata_signing_certificates"] = certs
        values["entity_id"] = values["entity_id"] or issuer.rstrip("/") + SAML2_METADATA_PATH
        values["identity_claim_name"] = values["identity_claim_name"] or "uid"
        values["scopes"] = tuple(scopes or ())
        discover_value = True
    else:
        discover_value = bool(discover)
    if kind != SAML2 and entry.get("metadata_signing_certificates") is not None:
        problems.append("metadata_signing_certificates is for saml2 authorities")
    if problems:
        return None, problems
    values.pop("_discover", None)
    return Authority(**{**values, "discover": discover_value, "jwks": jwks,
                        "identity_aliases": dict(aliases)}), []


def _certificates(value: Any) -> tuple[tuple, list[str]]:
    """`metadata_signing_certificates`: absolute paths of PEM files or PEM text, one or a
    list, each holding one or more X.509 certificates; their DER, and every problem. Only
    the key in a certificate is used (its dates and issuer are not checked: the operator
    names the key to trust, as SAML metadata trust anchors are)."""
    if value is None:
        return (), []
    name = "metadata_signing_certificates"
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        return (), [f"{name} must be a PEM file's absolute path or PEM text, or a list of them"]
    found, problems = [], []
    for item in items:
        text = item.strip()
        if text.startswith("-----BEGIN"):
            where, data = "PEM text", text.encode("ascii", "replace")
        else:
            where = text[:200]
            if not text.startswith("/"):
                problems.append(f"{name}: {where!r} is neither an absolute path nor PEM text")
                continue
            try:
                with open(text, "rb") as stream:
                    data = stream.read(1024 * 1024)
            except OSError as err:
                problems.append(f"{name}: {where}: {err.strerror}")
                continue
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            problems.append(f"{name}: {where} holds no PEM certificate")
            continue
        found += [c.public_bytes(Encoding.DER) for c in certs]
    return tuple(dict.fromkeys(found)), problems


def _oidc(values: dict, discover: Optional[bool], jwks: Any, insecure: bool) -> list[str]:
    problems = []
    if not values["client_id"]:
        problems.append("client_id is required for oidc")
    values["response_type"] = values["response_type"] or "id_token"
    if values["response_type"] not in RESPONSE_TYPES:
        problems.append("response_type must be id_token or code")
    values["code_challenge_method"] = values["code_challenge_method"] or "S256"
    if values["code_challenge_method"] != "S256":
        problems.append("code_challenge_method must be S256 (RFC 7636 §4.2: plain only "
                        "where S256 cannot be done)")
    if not values["iss"]:
        problems.append("iss is required for oidc: the ID token's issuer is checked against it")
    else:
        problem = _https_problem("iss", values["iss"], insecure)
        problems += [problem] if problem else []
    # Konnect: discovery unless `discover: no`; from metadata_endpoint when it is set, else
    # from the issuer's /.well-known/openid-configuration (OpenID Connect Discovery §4)
    values["_discover"] = discover is not False
    for name in ("metadata_endpoint", "authorization_endpoint"):
        if values[name]:
            problem = _https_problem(name, values[name], insecure)
            problems += [problem] if problem else []
    if not values["_discover"]:
        if not values["authorization_endpoint"]:
            problems.append("authorization_endpoint is required without discovery")
        if not jwks:
            problems.append("jwks is required without discovery (the ID token's keys)")
        if values["response_type"] == "code":
            problems.append("response_type code needs discovery (the token endpoint)")
    return problems


class Authorities:
    """The parsed `authorities:` list: by id, and the `default` one if any."""

    def __init__(self, entries: tuple = ()) -> None:
        self.entries = tuple(entries)
        self._by_id = {a.id: a for a in self.entries}
        self.default = next((a for a in self.entries if a.default), None)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def get(self, authority_id: Any) -> Optional[Authority]:
        return self._by_id.get(authority_id) if isinstance(authority_id, str) else None

    def of_type(self, kind: str) -> list:
        return [a for a in self.entries if a.authority_type == kind]


def parse_authorities(entries: Any, *, issuer: str) -> tuple[Authorities, list[str]]:
    """The authorities of a registry document's `authorities:` value, and every problem."""
    if entries is None:
        return Authorities(), []
    if not isinstance(entries, list):
        return Authorities(), ["'authorities' must be a list"]
    problems: list[str] = []
    found, seen, defaults = [], set(), []
    for i, entry in enumerate(entries):
        label = f"authorities[{i}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("id") or entry.get("name"), str):
            label += f' (id "{(entry.get("id") or entry.get("name"))[:80]}")'
        authority, errors = _entry(entry, issuer)
        problems += [f"{label}: {p}" for p in errors]
        if authority is None:
            continue
        if authority.id in seen:
            problems.append(f"{label}: duplicate id")
        seen.add(authority.id)
        if authority.default:
            defaults.append(authority.id)
        found.append(authority)
    if len(defaults) > 1:  # Konnect kept the first and warned; which one signs users in
        problems.append("authorities: only one may be default (" + ", ".join(defaults) + ")")
    saml = [a.id for a in found if a.authority_type == SAML2]
    if len(saml) > 1:  # one SP metadata and one ACS, as Konnect (which served the default's)
        problems.append("authorities: at most one saml2 authority (" + ", ".join(saml) + ")")
    return Authorities(tuple(found)), problems
