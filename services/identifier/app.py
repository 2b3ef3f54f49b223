"""The identifier service: sign-in pages, the identifier JSON API, end session."""

import os

from shared import service
from shared.deps import Core

from .api import ConsentHandler, HelloHandler, LogoffHandler, LogonHandler
from .endsession import EndSessionHandler
from .pages import SigninPage

HERE = os.path.dirname(__file__)
API = "/signin/v1/identifier/_/"


def make_app(settings, deps: Core):
    args = {"deps": deps}
    pages = [(path, SigninPage, {"deps": deps, "view": view}) for path, view in (
        ("/signin/v1/identifier", "identifier"), ("/signin/v1/chooseaccount", "chooseaccount"),
        ("/signin/v1/consent", "consent"), ("/signin/v1/welcome", "welcome"),
        ("/signin/v1/goodbye", "goodbye"))]
    return service.application([
        *pages,
        (API + "hello", HelloHandler, args),
        (API + "logon", LogonHandler, args),
        (API + "logoff", LogoffHandler, args),
        (API + "consent", ConsentHandler, args),
        (API + "endsession", EndSessionHandler, args),
    ], deps, template_path=os.path.join(HERE, "templates"),
        static_path=os.path.join(HERE, "static"), static_url_prefix="/signin/v1/static/")


def main(argv=None) -> None:
    service.run("identifier", make_app, Core.with_users, argv)
