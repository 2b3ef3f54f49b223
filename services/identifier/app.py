"""The identifier service: route table and `main()` (routes arrive with their issue)."""

from shared import service
from shared.deps import Core


def make_app(settings, deps: Core):
    return service.application([], deps)


def main(argv=None) -> None:
    service.run("identifier", make_app, Core.with_users, argv)
