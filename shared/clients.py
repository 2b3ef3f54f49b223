"""The client registry: `identifier-registration.yaml` (Konnect's identity/clients/).

Every entry is validated at load. An entry with a problem is skipped with a loud warning
naming every problem, as Konnect skips it; unknown keys are ignored with a warning (a
likely meant key named). A file that cannot be read as a registry at all stops the
start-up, and so does a registered signing alg no key signs (`unsignable`, `Core`).
Redirect URIs match exactly, query included (RFC 6749 §3.1.2.2, RFC 9700 §4.1.3), with
one exception for native clients: a registered http loopback URI matches any port and any
loopback host (RFC 8252 §7.3, §8.3). Secrets compare in constant time.

Dynamically registered clients (services/token/register.py) are validated by the same
per-field rules (`*_problem(s)`) and `parse_entry`, stored in Redis as `dynamic_record` and
read back by `client_from_record` (`Core.lookup_client` does the lookup); their ids carry
`DYNAMIC_PREFIX`. Origins and where a URI leads are shared/origins.py's.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import urlsplit

import yaml

from .keys import KeyLoadError, client_key
from .origins import is_loopback_host, is_op_path, origin_of

log = logging.getLogger("konnect.clients")

MAX_CLIENT_ID = 255
MAX_URI = 2048
# A static client's secret shorter than this is warned about at load (OIDC Core §16.19;
# RFC 6819 §5.1.4.2.2: secrets with enough entropy); not refused, Konnect files keep working.
MIN_SECRET = 16
# Top-level keys of the registry file: `clients`, and Konnect's `authorities`
# (shared/authorities/registry.py).
_TOP_LEVEL = frozenset({"clients", "authorities"})
ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
APPLICATION_TYPES = ("web", "native")
_LISTS = ("redirect_uris", "origins", "trusted_scopes", "post_logout_redirect_uris",
          "contacts", "grant_types", "response_types")
_STRINGS = ("secret", "name", "uri", "token_endpoint_auth_method",
            "token_endpoint_auth_signing_alg", "request_object_signing_alg",
            "id_token_signed_response_alg", "userinfo_signed_response_alg")
_BOOLS = ("trusted", "insecure")
_ALG_FIELDS = ("request_object_signing_alg", "id_token_signed_response_alg",
               "userinfo_signed_response_alg", "token_endpoint_auth_signing_alg")
_KNOWN = {"id", "application_type", "jwks", *_LISTS, *_STRINGS, *_BOOLS}
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# Schemes that run or read something in the browser instead of reaching a client
# (Keycloak CVE-2026-9086 accepted `JaVaScRiPt:` and `data:` at registration).
_NEVER_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "about", "blob",
                            "filesystem"})
# Ids of dynamically registered clients: the prefix, then 32 random base64url characters.
DYNAMIC_PREFIX = "dyn."
_DYNAMIC_ID = re.compile(r"^dyn\.[A-Za-z0-9_-]{32}$")


class RegistryError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("client registry: " + "; ".join(problems))
        self.problems = problems


def uri_problem(uri: Any) -> Optional[str]:
    """Why a redirect URI can never be accepted (None if it can): RFC 6749 §3.1.2."""
    if not isinstance(uri, str) or not uri:
        return "must be a non-empty string"
    if len(uri) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    if _BAD_CHARS.search(uri):
        return "contains whitespace or control characters"
    if "\\" in uri:  # browsers read a backslash as a slash: the host would differ
        return "must not contain a backslash"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URI"
    if not parts.scheme or not _SCHEME.match(parts.scheme):
        return "must be absolute"
    if parts.scheme.lower() in _NEVER_SCHEMES:
        return f"must not use the {parts.scheme.lower()}: scheme"
    if "#" in uri:
        return "must not contain a fragment"
    if "@" in parts.netloc:
        return "must not contain user information"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "must have a host"
    return None


def is_dynamic_id(client_id: Any) -> bool:
    """True for an id this server could have issued at dynamic registration."""
    return isinstance(client_id, str) and bool(_DYNAMIC_ID.match(client_id))


@dataclass(frozen=True)
class Client:
    id: str
    redirect_uris: tuple = ()
    secret: str = ""
    name: str = ""
    application_type: str = "web"
    origins: tuple = ()
    trusted: bool = False
    trusted_scopes: tuple = ()
    insecure: bool = False
    jwks: Optional[dict] = field(default=None, repr=False)
    request_object_signing_alg: str = ""
    id_token_signed_response_alg: str = ""
    userinfo_signed_response_alg: str = ""
    token_endpoint_auth_method: str = ""
    token_endpoint_auth_signing_alg: str = ""
    post_logout_redirect_uris: tuple = ()
    contacts: tuple = ()
    uri: str = ""
    grant_types: tuple = ()
    response_types: tuple = ()
    implicit: bool = False
    dynamic: bool = False
    secret_sha256: str = field(default="", repr=False)  # dynamic clients: only the hash is kept

    def __repr__(self) -> str:
        return f"Client(id={self.id!r}, application_type={self.application_type!r}, trusted={self.trusted})"

    @property
    def has_secret(self) -> bool:
        return bool(self.secret or self.secret_sha256)

    @property
    def is_public(self) -> bool:
        return not self.has_secret and self.token_endpoint_auth_method != "private_key_jwt"

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def check_secret(self, presented: Optional[str]) -> bool:
        """Constant-time comparison (RFC 6749 §10.3 / RFC 6819 §5.1.4.2.2)."""
        if not self.has_secret or not isinstance(presented, str):
            return False
        if self.secret_sha256:
            computed = hashlib.sha256(presented.encode("utf-8")).hexdigest()
            return hmac.compare_digest(self.secret_sha256.encode("ascii"), computed.encode("ascii"))
        return hmac.compare_digest(self.secret.encode("utf-8"), presented.encode("utf-8"))

    def redirect_uri_ok(self, uri: Any) -> bool:
        """Exact match, or the native loopback rule of RFC 8252 §7.3."""
        if uri_problem(uri) is not None:
            return False
        if uri in self.redirect_uris:
            return True
        if self.application_type != "native":
            return False
        got = urlsplit(uri)
        if got.scheme != "http" or not is_loopback_host(got.hostname):
            return False
        for registered in self.redirect_uris:
            want = urlsplit(registered)
            if want.scheme == "http" and is_loopback_host(want.hostname) and want.query == got.query \
                    and want.path in ("", got.path):
                return True
        return False

    def post_logout_redirect_uri_ok(self, uri: Any) -> bool:
        """OIDC RP-Initiated Logout §3: registered post-logout URIs, else the redirect URIs."""
        if uri_problem(uri) is not None:
            return False
        if self.post_logout_redirect_uris:
            return uri in self.post_logout_redirect_uris
        return self.redirect_uri_ok(uri)


def redirect_uri_problem(client_type: str, insecure: bool, uri: Any, *,
                         hint: bool = True) -> Optional[str]:
    """Why `uri` cannot be registered for a client of this type (None if it can), by the
    rules of Konnect's identity/clients/registry.go. `hint` names the registry's `insecure`
    switch (not for dynamic clients)."""
    problem = uri_problem(uri)
    if problem:
        return problem
    parts = urlsplit(uri)
    if client_type == "web":
        if parts.scheme == "https" or (parts.scheme == "http" and insecure):
            return None
        return "must use https" + (" (or set insecure: yes)" if hint and parts.scheme == "http" else "")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "http is only allowed with a loopback host for native clients"
    return None


_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _origin_problems(origin: str) -> list[str]:
    """An origin is `scheme://host[:port]` (RFC 6454 §6.1): a valid port, no userinfo, path,
    query or fragment, never a script scheme. A malformed one is a problem of its entry
    instead of loading as a value no browser ever sends."""
    problem = uri_problem(origin)
    if problem:
        return [problem]
    parts = urlsplit(origin)
    if not parts.netloc or parts.path or "?" in origin:
        return ["must be scheme://host[:port]"]
    return []


# The rules of one metadata field each, shared by the registry file and dynamic
# registration (services/token/register.py): a problem as text, or None / [] if none.

def application_type_problem(value: Any) -> Optional[str]:
    return None if value in APPLICATION_TYPES else "application_type must be web or native"


def alg_problem(name: str, value: str) -> Optional[str]:
    """A signing algorithm a client registers (JWS, RFC 7518 §3.1): never none or HS*."""
    if value and value not in ALGS:
        return f"{name} {value!r} is not supported (" + ", ".join(ALGS) + ")"
    return None


def auth_method_problem(method: str, jwks: Any) -> Optional[str]:
    """`token_endpoint_auth_method` (OIDC Core §9): a method we support; private_key_jwt
    needs the keys its assertions are verified with."""
    if method and method not in AUTH_METHODS:
        return "token_endpoint_auth_method must be one of " + ", ".join(AUTH_METHODS)
    if method == "private_key_jwt" and not jwks:
        return "private_key_jwt needs jwks"
    return None


def jwks_problems(jwks: Any) -> list[str]:
    """Every registered key must be a usable public signing key (RFC 7517 §4, §5): one that
    `client_key` refuses was skipped silently when a request object or private_key_jwt
    assertion came, and a key with private members (RFC 7518 §6.2.2, §6.3.2, §6.4) puts a
    secret in the registry. A set without keys verifies nothing. Two keys with one `kid`
    (or two without) are refused: `client_key_lookup` keeps the last, so the other never
    verified anything, and a `kid` must pick one key (RFC 7517 §4.5, RFC 7515 §4.1.4)."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        return ["jwks must be a mapping with a 'keys' list"]
    keys = jwks["keys"]
    if not keys:
        return ["jwks has no keys"]
    problems: list[str] = []
    kids: set = set()
    for i, jwk in enumerate(keys):
        if not isinstance(jwk, Mapping):
            problems.append(f"jwks.keys[{i}] must be a mapping")
            continue
        if any(m in jwk for m in _PRIVATE_JWK_MEMBERS):
            problems.append(f"jwks.keys[{i}] must be a public key (it has private members)")
            continue
        try:
            kid = client_key(jwk).kid
        except (KeyLoadError, ValueError, TypeError) as err:
            problems.append(f"jwks.keys[{i}] cannot be used: {err}")
            continue
        if kid in kids:
            problems.append(f"jwks.keys[{i}] repeats the kid {kid[:80]!r}" if kid else
                            f"jwks.keys[{i}]: only one key may be without a kid")
        kids.add(kid)
    return problems


def unknown_fields(entry: Mapping) -> list[str]:
    """The keys of a registry entry we do not know, each with a likely meant one: ignored
    with a warning, as Konnect's YAML decoding ignores them (a misspelt key only ever
    leaves a setting at its default, checked like any other)."""
    found = []
    for name in sorted(set(map(str, entry)) - _KNOWN):
        meant = difflib.get_close_matches(name, sorted(_KNOWN), n=1, cutoff=0.75)
        found.append(f"{name} (did you mean {meant[0]}?)" if meant else name)
    return found


def _validate(entry: Any) -> tuple[Optional[Client], list[str]]:
    if not isinstance(entry, Mapping):
        return None, ["must be a mapping"]
    problems: list[str] = []
    client_id = entry.get("id")
    if not isinstance(client_id, str) or not client_id:
        problems.append("id is required")
    elif len(client_id) > MAX_CLIENT_ID or _BAD_CHARS.search(client_id):
        problems.append(f"id must be at most {MAX_CLIENT_ID} printable characters without spaces")
    values: dict[str, Any] = {}
    for name in _LISTS:
        value = entry.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{name} must be a list of strings")
            value = []
        values[name] = tuple(value)
    for name in _STRINGS:
        value = entry.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a string")
        values[name] = value if isinstance(value, str) else ""
    for name in _BOOLS:
        value = entry.get(name, False)
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false")
        values[name] = value is True
    app_type = entry.get("application_type") or "web"
    jwks = entry.get("jwks")
    problems += [p for p in (application_type_problem(app_type),
                             *(alg_problem(name, values[name]) for name in _ALG_FIELDS),
                             auth_method_problem(values["token_endpoint_auth_method"], jwks))
                 if p]
    if not values["redirect_uris"]:
        problems.append("redirect_uris is required (at least one)")
    for i, uri in enumerate(values["redirect_uris"]):
        problem = redirect_uri_problem(app_type, values["insecure"], uri)
        if problem:
            problems.append(f"redirect_uris[{i}] {problem}")
    for i, uri in enumerate(values["post_logout_redirect_uris"]):
        problem = uri_problem(uri)
        if problem:
            problems.append(f"post_logout_redirect_uris[{i}] {problem}")
    for i, origin in enumerate(values["origins"]):
        problems += [f"origins[{i}] {p}" for p in _origin_problems(origin)]
    if jwks is not None:
        problems += jwks_problems(jwks)
    if problems:
        return None, problems
    if app_type == "web" and not values["origins"]:
        values["origins"] = (origin_of(values["redirect_uris"][0]),)
    values["origins"] = tuple(o.lower() for o in values["origins"])
    return Client(id=client_id, application_type=app_type,
                  jwks=dict(jwks) if jwks else None, **values), []


def parse_entry(entry: Any) -> Client:
    """One registry entry (a mapping with the YAML keys of Konnect's
    identity/clients/models.go) as a `Client`, validated as at load; raises `RegistryError`
    with every problem."""
    client, problems = _validate(entry)
    if problems:
        raise RegistryError(problems)
    return client


_RECORD_STRINGS = ("name", "uri", "application_type", "token_endpoint_auth_method",
                   "token_endpoint_auth_signing_alg", "request_object_signing_alg",
                   "id_token_signed_response_alg", "userinfo_signed_response_alg", "secret_sha256")
_RECORD_LISTS = ("redirect_uris", "origins", "post_logout_redirect_uris", "contacts",
                 "grant_types", "response_types")


def dynamic_record(client: Client, *, issued_at: int, expires_at: int) -> dict:
    """What is stored in Redis for a dynamically registered client (never the secret)."""
    record: dict[str, Any] = {"id": client.id, "issued_at": issued_at, "expires_at": expires_at}
    for name in _RECORD_STRINGS:
        record[name] = getattr(client, name)
    for name in _RECORD_LISTS:
        record[name] = list(getattr(client, name))
    record["jwks"] = client.jwks
    return record


def client_from_record(record: Any, *, now: float) -> Optional[Client]:
    """The client of a `dynamic_record`, or None once it expired (`expires_at`, 0 = never).

    Dynamic clients are never trusted and never insecure, whatever the record says."""
    if not isinstance(record, Mapping) or not is_dynamic_id(record.get("id")):
        return None
    expires_at = record.get("expires_at") or 0
    if not isinstance(expires_at, (int, float)) or (expires_at and expires_at <= now):
        return None
    try:
        values = {name: str(record.get(name) or "") for name in _RECORD_STRINGS}
        values.update({name: tuple(str(v) for v in record.get(name) or ()) for name in _RECORD_LISTS})
    except TypeError:
        log.warning("dynamic client %s: malformed record ignored", record.get("id"))
        return None
    jwks = record.get("jwks")
    return Client(id=record["id"], jwks=dict(jwks) if isinstance(jwks, Mapping) else None,
                  dynamic=True, trusted=False, insecure=False, **values)


class ClientRegistry:
    def __init__(self, clients: Mapping[str, Client] | None = None, *, issuer: str = "") -> None:
        self._clients: dict[str, Client] = dict(clients or {})
        self.issuer_origin = origin_of(issuer) if issuer else ""
        self.authorities: Any = ()  # the `authorities:` list (authorities.registry.Authorities)
        self.skipped: dict[str, list[str]] = {}  # entry label -> why it was skipped
        self._blocked: frozenset = frozenset()   # ids of skipped entries: never implicit

    @classmethod
    def from_document(cls, doc: Any, *, issuer: str, source: str = "registry") -> "ClientRegistry":
        """The registry of a parsed YAML document. What makes the whole file unreadable is a
        `RegistryError` (start-up error); an entry with a problem is skipped with a loud
        warning, as Konnect's identity/clients/registry.go skips it, and so are all entries
        of a duplicated id (which one was meant is unknown). A skipped id is never taken
        for an implicitly trusted client (`lookup`). Unknown keys are ignored with a
        warning (`unknown_fields`)."""
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise RegistryError([f"{source}: expected a mapping with a 'clients' list"])
        unknown = sorted(set(map(str, doc)) - _TOP_LEVEL)
        if unknown and "clients" not in doc:
            # `client:` for `clients:` would start the OP without any client, all of them
            # failing while the OP looks healthy: the one misspelling refused at start-up
            raise RegistryError([f"{source}: unknown top-level key(s) " + ", ".join(unknown)
                                 + " and no 'clients' list (expected 'clients', 'authorities')"])
        if unknown:
            log.warning("%s: unknown top-level key(s) %s ignored (expected 'clients', "
                        "'authorities')", source, ", ".join(unknown))
        from .authorities.registry import parse_authorities  # it uses jwks_problems of ours
        authorities, problems = parse_authorities(doc.get("authorities"), issuer=issuer)
        problems = [f"{source}: {p}" for p in problems]
        entries = doc.get("clients") or []
        if not isinstance(entries, list):
            raise RegistryError([f"{source}: 'clients' must be a list"])
        ids = [e.get("id") if isinstance(e, Mapping) else None for e in entries]
        duplicated = {i for i in ids if isinstance(i, str) and ids.count(i) > 1}
        clients: dict[str, Client] = {}
        skipped: dict[str, list[str]] = {}
        blocked: set = set(duplicated)
        for i, entry in enumerate(entries):
            label = f"clients[{i}]"
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                label += f' (id "{entry["id"][:80]}")'
            if isinstance(entry, Mapping) and (extra := unknown_fields(entry)):
                log.warning("%s: %s: unknown field(s) ignored: %s", source, label,
                            ", ".join(extra))
            client, found = _validate(entry)
            if ids[i] in duplicated:
                found.append("duplicate id: every entry of this id is skipped")
            if found:
                skipped[label] = found
                if isinstance(ids[i], str):
                    blocked.add(ids[i])
                log.warning("%s: CLIENT SKIPPED, %s: %s", source, label, "; ".join(found))
                continue
            clients[client.id] = client
            if client.secret and len(client.secret) < MIN_SECRET:
                log.warning("%s: client %r has a secret of %d characters; use at least %d "
                            "random ones (RFC 6819 §5.1.4.2.2)", source, client.id[:80],
                            len(client.secret), MIN_SECRET)
        if problems:
            raise RegistryError(problems)
        registry = cls(clients, issuer=issuer)
        registry.authorities = authorities
        registry.skipped, registry._blocked = skipped, frozenset(blocked)
        return registry

    @classmethod
    def load(cls, path: Optional[str], *, issuer: str,
             logger: logging.Logger = log) -> "ClientRegistry":
        if not path:
            logger.info("no client registry configured: only clients on the issuer's origin work")
            return cls(issuer=issuer)
        try:
            with open(path, "rb") as stream:
                doc = yaml.safe_load(stream)
        except OSError as err:
            raise RegistryError([f"{path}: cannot read ({err.strerror})"]) from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise RegistryError([f"{path}: not valid YAML{where}"]) from None
        registry = cls.from_document(doc, issuer=issuer, source=path)
        logger.info("client registry loaded: %d client(s)", len(registry))
        return registry

    def unsignable(self, can_sign: frozenset) -> list[str]:
        """A start-up problem for each client whose registered `id_token_signed_response_alg`
        or `userinfo_signed_response_alg` no signing key signs (`Keyring.can_sign`): its
        tokens would fail, and signing another alg instead would break the client."""
        problems = []
        for client in self:
            for name in ("id_token_signed_response_alg", "userinfo_signed_response_alg"):
                alg = getattr(client, name)
                if alg and alg not in can_sign:
                    problems.append(f"client {client.id[:80]!r}: {name} {alg} cannot be signed "
                                    "with the configured keys (they sign "
                                    + ", ".join(sorted(can_sign)) + ")")
        return problems

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(self._clients.values())

    def add(self, client: Client) -> None:
        if client.id in self._clients:
            raise ValueError(f"client {client.id!r} exists")
        self._clients[client.id] = client

    def get(self, client_id: Any) -> Optional[Client]:
        if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID:
            return None
        return self._clients.get(client_id)

    def lookup(self, client_id: Any, redirect_uri: Any) -> Optional[Client]:
        """The client for an authorization request, or None.

        Unregistered ids are accepted only with a redirect URI on the issuer's own origin,
        as trusted implicit clients (Konnect's identity/clients/registry.go); never an id with
        the dynamic prefix (an expired or unknown dynamic client must not turn into a trusted
        one), and never
        a redirect URI into the OP's own endpoints (`is_op_path`): a redirect to the
        authorization endpoint would carry an implicit response's fragment on to a second
        request's redirect (RFC 9110 §10.2.2), to any client's URI (RFC 9700 §4.1.3, §4.11).
        """
        client = self.get(client_id)
        if client is not None:
            return client
        if not isinstance(client_id, str) or client_id.startswith(DYNAMIC_PREFIX) \
                or client_id in self._blocked:  # a skipped entry is no trusted client
            return None
        if not client_id or len(client_id) > MAX_CLIENT_ID \
                or _BAD_CHARS.search(client_id) or uri_problem(redirect_uri) is not None:
            return None
        if self.issuer_origin and origin_of(redirect_uri) == self.issuer_origin \
                and not is_op_path(redirect_uri):
            return Client(id=client_id, redirect_uris=(redirect_uri,), trusted=True,
                          implicit=True, origins=(self.issuer_origin,))
        return None

    def with_client(self, client: Client) -> "ClientRegistry":
        copy = ClientRegistry(self._clients, issuer="")
        copy.issuer_origin = self.issuer_origin
        copy.authorities = self.authorities
        copy.skipped, copy._blocked = self.skipped, self._blocked
        copy._clients[client.id] = replace(client)
        return copy
