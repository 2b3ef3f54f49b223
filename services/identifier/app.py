"""The identifier service: sign-in pages, the identifier JSON API, end session."""

import os

import tornado.web

from shared import service
from shared.deps import Core

from . import authorities
from .api import ConsentHandler, HelloHandler, LogoffHandler, LogonHandler
from .endsession import EndSessionHandler
from .pages import BRANDING_PATH, SigninPage

HERE = os.path.dirname(__file__)
API = "/signin/v1/identifier/_/"


class StaticHandler(tornado.web.StaticFileHandler):
    """`/signin/v1/static/*` (the pages' script and style sheet): `nosniff`, so a browser
    uses a file only as the type it is served as (Fetch §3.5 "X-Content-Type-Options")."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 405:  # RFC 9110 §15.5.6: a 405 MUST carry Allow
            self.set_header("Allow", "GET, HEAD")
        super().write_error(status_code, **kwargs)


class BrandingHandler(StaticHandler):
    """The deployment's branding files, with the same security headers as static files."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'self'")


def make_app(settings, deps: Core):
    args = {"deps": deps}
    pages = [(path, SigninPage, {"deps": deps, "view": view}) for path, view in (
        ("/signin/v1/identifier", "identifier"), ("/signin/v1/chooseaccount", "chooseaccount"),
        ("/signin/v1/consent", "consent"), ("/signin/v1/welcome", "welcome"),
        ("/signin/v1/goodbye", "goodbye"))]
    extra = []
    if settings.identifier_client_path:  # a deployment's logo.svg / brand.css
        extra.append((BRANDING_PATH + r"(logo\.svg|brand\.css)", BrandingHandler,
                      {"path": str(settings.identifier_client_path)}))
    if settings.disable_identifier_client:  # Konnect: the JSON API without the web pages
        pages = []
    return service.application([
        *pages,
        *extra,
        (API + "hello", HelloHandler, args),
        (API + "logon", LogonHandler, args),
        (API + "logoff", LogoffHandler, args),
        (API + "consent", ConsentHandler, args),
        (API + "endsession", EndSessionHandler, args),
        *authorities.routes(deps),
    ], deps, template_path=os.path.join(HERE, "templates"),
        static_path=os.path.join(HERE, "static"), static_url_prefix="/signin/v1/static/",
        static_handler_class=StaticHandler)


def main(argv=None) -> None:
    service.run("identifier", make_app, Core.with_users, argv)
