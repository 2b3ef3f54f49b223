"""The token service: token, revoke, introspect, discovery, JWKS and, when enabled, dynamic
client registration (N processes, SO_REUSEPORT)."""

import re

from shared import discovery, service
from shared.deps import Core

from .grants import Issuer
from .handlers import (DiscoveryHandler, IntrospectHandler, JWKSHandler, RevokeHandler,
                       TokenHandler, encode)
from .register import RegisterHandler


def make_app(settings, deps: Core):
    deps.issuer = Issuer(deps.tokens, deps.store, deps.users)
    deps.assertion_audiences = (settings.iss, discovery.url(settings, "token_endpoint"))
    deps.discovery_json = encode(discovery.document(settings, deps.keyring, deps.scope_definitions))
    deps.jwks_json = encode(deps.keyring.jwks())
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
