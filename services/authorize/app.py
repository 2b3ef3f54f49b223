"""The authorize service: the authorization endpoint (and, later, the check-session iframe)."""

from shared import discovery, service
from shared.deps import Core

from .handlers import AuthorizeHandler


def make_app(settings, deps: Core):
    return service.application([
        (discovery.PATHS["authorization_endpoint"], AuthorizeHandler, {"deps": deps}),
    ], deps)


def main(argv=None) -> None:
    service.run("authorize", make_app, Core.from_settings, argv)
