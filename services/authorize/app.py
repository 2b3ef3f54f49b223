"""The authorize service: the authorization endpoint and the check-session iframe."""

from shared import discovery, service
from shared.deps import Core

from .check_session import CheckSessionHandler
from .handlers import AuthorizeHandler


def make_app(settings, deps: Core):
    return service.application([
        (discovery.PATHS["authorization_endpoint"], AuthorizeHandler, {"deps": deps}),
        (discovery.PATHS["check_session_iframe"], CheckSessionHandler, {"deps": deps}),
    ], deps)


def make_deps(settings) -> Core:
    """The user backend only for the cookie manager: it decides at the authorization
    endpoint (the others sign in through the identifier)."""
    if settings.identity_manager == "cookie":
        return Core.with_users(settings)
    return Core.from_settings(settings)


def main(argv=None) -> None:
    service.run("authorize", make_app, make_deps, argv)
