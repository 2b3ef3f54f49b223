"""The authorize service: the authorization endpoint and the check-session iframe."""

from shared import discovery, service
from shared.deps import Core

from .check_session import CheckSessionHandler
from .handlers import AuthorizeHandler


def make_app(settings, deps: Core):
    """The authorization endpoint at its path for the identity manager (the cookie
    manager's is Konnect's /konnect/v1/authorize, the others' the identifier's)."""
    return service.application([
        (discovery.path(settings, "authorization_endpoint"), AuthorizeHandler, {"deps": deps}),
        (discovery.PATHS["check_session_iframe"], CheckSessionHandler, {"deps": deps}),
    ], deps)


def make_deps(settings) -> Core:
    """With the user backend: the cookie manager decides at the authorization endpoint,
    and for the others a logon is a session only while the backend still returns its user
    (shared.session.current_logon: disabled or removed users get no tokens)."""
    return Core.with_users(settings)


def main(argv=None) -> None:
    service.run("authorize", make_app, make_deps, argv)
