"""The token service: token, revoke, introspect, discovery, JWKS and, when enabled, dynamic
client registration (N processes, SO_REUSEPORT)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from shared import discovery, service
from shared.deps import Core

from .grants import Issuer
from .handlers import (DiscoveryHandler, IntrospectHandler, JWKSHandler, RevokeHandler,
                       TokenHandler, encode)
from .register import RegisterHandler


@dataclass
class TokenDeps(Core):
    """What the token service's handlers use: the shared `Core` and what this service
    builds from it once at start-up."""

    issuer: Issuer | None = None
    assertion_audiences: tuple = ()   # the `aud` values a private_key_jwt assertion may name
    discovery_json: bytes = b""
    jwks_json: bytes = b""     # the JWKS handler's encoding of `jwks_source`
    jwks_source: Any = None

    @classmethod
    def from_core(cls, core: Core) -> "TokenDeps":
        settings = core.settings
        deps = cls(**{f.name: getattr(core, f.name) for f in dataclasses.fields(Core)})
        deps.issuer = Issuer(deps.tokens, deps.store, deps.users,
                             requires_pkce=deps.requires_pkce)
        deps.assertion_audiences = (settings.iss, discovery.url(settings, "token_endpoint"))
        deps.discovery_json = encode(discovery.document(settings, deps.keyring,
                                                        deps.scope_definitions))
        return deps


def make_app(settings, core: Core):
    deps = TokenDeps.from_core(core)
    args = {"deps": deps}
    routes = [
        *((re.escape(path), DiscoveryHandler, args) for path in discovery.discovery_paths(settings)),
        (discovery.PATHS["jwks_uri"], JWKSHandler, args),
        (discovery.PATHS["token_endpoint"], TokenHandler, args),
        (discovery.PATHS["revocation_endpoint"], RevokeHandler, args),
        (discovery.PATHS["introspection_endpoint"], IntrospectHandler, args),
    ]
    if settings.allow_dynamic_client_registration:  # otherwise the JSON 404, as discovery says
        routes.append((discovery.PATHS["registration_endpoint"], RegisterHandler, args))
    return service.application(routes, deps)


def main(argv=None) -> None:
    service.run("token", make_app, Core.with_users, argv)
