"""The userinfo service: `/konnect/v1/userinfo`."""

from shared import discovery, service
from shared.deps import Core

from .handlers import UserInfoHandler


def make_app(settings, deps: Core):
    return service.application([
        (discovery.PATHS["userinfo_endpoint"], UserInfoHandler, {"deps": deps}),
    ], deps)


def main(argv=None) -> None:
    service.run("userinfo", make_app, Core.with_users, argv)
