"""Scopes, the claims each scope releases, and `scopes.yaml` (Konnect's scopes.go,
identifier/meta/scopes/).

Scopes the active manager does not support are dropped from a request (Konnect's
behaviour; RFC 6749 §3.3 lets the server grant fewer scopes and say so in `scope`).
`--allow-scope` replaces the manager's list, `offline_access` included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

OPENID = "openid"
OFFLINE = "offline_access"

PROFILE_CLAIMS = ("name", "family_name", "given_name", "preferred_username")
EMAIL_CLAIMS = ("email", "email_verified")
CLAIMS_BY_SCOPE = {"profile": PROFILE_CLAIMS, "email": EMAIL_CLAIMS}
SCOPE_OF_CLAIM = {claim: scope for scope, claims in CLAIMS_BY_SCOPE.items() for claim in claims}

MANAGER_SCOPES = {
    "users": (OFFLINE, "profile", "email", "konnect/id", "konnect/uuid", "konnect/raw_sub"),
    "ldap": (OFFLINE, "profile", "email", "konnect/id", "konnect/uuid", "konnect/raw_sub"),
    "kc": (OFFLINE, "profile", "email", "konnect/id", "konnect/uuid", "konnect/raw_sub", "kopano/gc"),
    "cookie": ("profile", "email", "konnect/id"),
    "dummy": ("profile", "email"),
}

BASIC = ("openid", "email", "profile", "konnect/id", "konnect/uuid", "konnect/raw_sub")
# What the identifier API's `meta.scopes.definitions` says of a scope without a scopes.yaml
# definition (Konnect's identifier/meta/scopes/scopes.go): the `id` names the consent
# screen's text; a higher priority is listed first.
DEFAULT_DEFINITIONS = {"basic": {"priority": 20, "id": "scope_alias_basic"},
                       OFFLINE: {"priority": 10, "id": "scope_offline_access"}}
# Definitions an identity manager adds over scopes.yaml (Konnect's identifier/backends/kc.go
# `scopesMeta`, which replaces a scopes.yaml definition of the same name).
MANAGER_DEFINITIONS = {"kc": {"kopano/gc": {
    "description": "Read and write your Kopano Groupware data"}}}


class ScopesError(Exception):
    pass


_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_scope_token(name: Any) -> bool:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). A scopes.yaml key that
    is not one (YAML `~:` or `yes:` are null and true, "my scope" has a space) would become
    a supported scope named "None", "True" or one no request can ever name."""
    return isinstance(name, str) and bool(_SCOPE_TOKEN.fullmatch(name))


def parse(value: Optional[str]) -> list[str]:
    """A scope string as an ordered list without duplicates (RFC 6749 §3.3)."""
    seen: list[str] = []
    for item in (value or "").split(" "):
        if item and item not in seen:
            seen.append(item)
    return seen


def join(scopes: Iterable[str]) -> str:
    return " ".join(scopes)


@dataclass
class ScopeDefinitions:
    """The contents of scopes.yaml: `mapping` (scope -> alias) and `scopes` (definitions)."""

    mapping: dict = field(default_factory=dict)
    definitions: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[str]) -> "ScopeDefinitions":
        if not path:
            return cls()
        try:
            with open(path, "rb") as stream:
                doc = yaml.safe_load(stream) or {}
        except OSError as err:
            raise ScopesError(f"{path}: cannot read scopes file ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise ScopesError(f"{path}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(doc, dict):
            raise ScopesError(f"{path}: expected a mapping with 'mapping' and 'scopes'")
        mapping, definitions = doc.get("mapping") or {}, doc.get("scopes") or {}
        if not isinstance(mapping, dict) or not isinstance(definitions, dict):
            raise ScopesError(f"{path}: 'mapping' and 'scopes' must be mappings")
        for name, spec in definitions.items():
            if not is_scope_token(name):
                raise ScopesError(f"{path}: scopes key {name!r} is not a scope name")
            if spec is not None and not isinstance(spec, dict):
                raise ScopesError(f"{path}: scopes.{name} must be a mapping")
            description = (spec or {}).get("description")
            if description is not None and not isinstance(description, str):
                raise ScopesError(f"{path}: scopes.{name}.description must be a string")
            priority = (spec or {}).get("priority")
            if priority is not None and (not isinstance(priority, int)
                                         or isinstance(priority, bool)):
                raise ScopesError(f"{path}: scopes.{name}.priority must be a whole number")
        for name, alias in mapping.items():
            if not is_scope_token(name) or not is_scope_token(alias):
                raise ScopesError(f"{path}: mapping {name!r}: {alias!r} must map a scope name "
                                  "to an alias name")
        return cls({str(k): str(v) for k, v in mapping.items()},
                   {str(k): dict(v or {}) for k, v in definitions.items()})

    def alias(self, scope: str) -> str:
        """The group a scope is shown in: scopes.yaml's mapping, else `basic` for the
        identity scopes, else the scope itself (Konnect's identifier/meta/scopes/scopes.go)."""
        return self.mapping.get(scope) or ("basic" if scope in BASIC else scope)

    def meta(self, scopes: Iterable[str], manager: str = "") -> dict:
        """The identifier API's `meta.scopes` for the requested scopes: `mapping` (scope ->
        alias, for the scopes that have one) and `definitions` (alias -> priority,
        description or id), as Konnect's `NewScopesFromIDs` builds them."""
        defined = {**self.definitions, **MANAGER_DEFINITIONS.get(manager, {})}
        mapping, definitions = {}, {}
        for scope in scopes:
            alias = self.alias(scope)
            if alias != scope:
                mapping[scope] = alias
            spec = defined.get(alias)
            if spec is not None:
                definition = {"priority": spec.get("priority") or 0}
                for key in ("description", "id"):
                    if spec.get(key):
                        definition[key] = str(spec[key])
                definitions[alias] = definition
            elif alias in DEFAULT_DEFINITIONS:
                definitions[alias] = dict(DEFAULT_DEFINITIONS[alias])
        return {"mapping": mapping, "definitions": definitions}

    def describe(self, scope: str) -> tuple[str, Optional[str]]:
        """(group, scopes.yaml's description of the scope or its group, or None) for the
        consent page, which has its own words, per language, for the others."""
        alias = self.alias(scope)
        for key in (scope, alias):
            spec = self.definitions.get(key)
            if spec and spec.get("description"):
                return alias, str(spec["description"])
        return alias, None


def supported(manager: str, allow_scope: Sequence[str] = (),
              definitions: Optional[ScopeDefinitions] = None) -> list[str]:
    """`scopes_supported` for discovery: openid first, then the manager's (Konnect's
    oidc/provider/provider.go)."""
    if allow_scope:
        scopes = list(allow_scope)
    else:
        scopes = list(MANAGER_SCOPES.get(manager, ()))
        if definitions and manager in ("users", "ldap", "kc"):
            scopes += [s for s in definitions.definitions if s not in scopes]
    return [OPENID] + [s for s in scopes if s != OPENID]


RAW_SUB = "konnect/raw_sub"
KOPANO_GC = "kopano/gc"


def backend_claims(identity: Any, scopes: Iterable[str]) -> dict:
    """Claims of a scope the user backend adds (Konnect's identifier/backends/kc.go
    `UserClaims`): `kopano/gc/id`, the raw subject, with the `kopano/gc` scope. Userinfo
    always has them, the ID token only when no access token comes with it (Konnect's
    oidc/provider/tokens.go: the extra claims of `!withAccessToken`)."""
    return {"kopano/gc/id": identity.raw_sub} if KOPANO_GC in scopes else {}


def subject(identity: Any, scopes: Iterable[str]) -> str:
    """The `sub` of the ID token and of userinfo for a grant of `scopes`: the raw backend
    subject with `konnect/raw_sub`, else the public (hashed) one (Konnect's oidc/provider/subject.go).

    One rule for the authorization endpoint's ID tokens (implicit, hybrid), the token
    endpoint's and userinfo: OIDC Core §3.3.3.6 (hybrid: both ID tokens' `sub` MUST be
    identical) and §5.3.2 (userinfo `sub` MUST equal the ID token's). The access token's
    `sub` stays the public one (as Konnect's oidc/provider/tokens.go)."""
    return identity.raw_sub if RAW_SUB in scopes else identity.sub


def narrow_claims(claims: Optional[dict], scopes: Iterable[str], *,
                  within: Optional[Iterable[str]] = None) -> Optional[dict]:
    """The claims request (OIDC Core §5.5) without the standard claims of scopes not
    granted: `email` only with `email`, `name` only with `profile` (§5.4; Konnect filters
    the claims request to the approved scopes: identity/managers/identifier.go). Other members (`sub`,
    `auth_time`, names no scope releases) stay: they are a record of the request, and
    userinfo never echoes a requested `value` (services/userinfo/handlers.py).

    `within`: narrow only the claims of these scopes. A refresh with a narrower `scope`
    (RFC 6749 §6) drops the claims of the scopes it leaves out (`within` = the grant's
    scopes), while claims a trusted client was given as asked, without their scope
    (as in Konnect's identity/managers/identifier.go), stay with the grant as they were issued."""
    if not claims:
        return claims
    granted = set(scopes)
    narrowed = set(within) if within is not None else None

    def keep(name: str) -> bool:
        scope = SCOPE_OF_CLAIM.get(name)
        if scope is None or scope in granted:
            return True
        return narrowed is not None and scope not in narrowed

    return {member: ({name: spec for name, spec in wanted.items() if keep(name)}
                     if isinstance(wanted, dict) else wanted)
            for member, wanted in claims.items()}


def standard_claims(identity: Any) -> dict:
    """The standard claims (OIDC Core §5.1) of `profile` and `email` an `Identity` holds,
    by claim name, empty ones included: the one mapping from identity fields to claim
    names, for the authorization endpoint's ID tokens, the token endpoint's and userinfo."""
    return {"name": identity.name, "given_name": identity.given_name,
            "family_name": identity.family_name, "preferred_username": identity.username,
            "email": identity.email, "email_verified": identity.email_verified}


def claims_for(scopes: Iterable[str], identity_claims: Mapping[str, object]) -> dict:
    """Standard claims released by `profile`/`email` (OIDC Core §5.4), empty values left
    out, except `email_verified`: with the `email` scope it is always there, true or false
    (Konnect's oidc/claims.go EmailClaims has no omitempty on it)."""
    result: dict = {}
    for scope in scopes:
        for claim in CLAIMS_BY_SCOPE.get(scope, ()):
            value = identity_claims.get(claim)
            if claim == "email_verified":
                result[claim] = bool(value)
            elif value not in (None, ""):
                result[claim] = value
    return result
