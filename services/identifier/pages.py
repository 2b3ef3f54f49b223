"""The sign-in web pages: identifier (sign in), choose account, consent, welcome, goodbye,
and the sign-out confirmation of end session (endsession.py).

Server-rendered, one first-party script, no third-party resources. In English and the
fifteen languages of Konnect's identifier/i18n (i18n/<tag>.json, translated here):
`?lang=` (the switch), then the request's `ui_locales`, then `Accept-Language`. CSP: the one script by nonce, no inline style,
`frame-ancestors 'none'` against clickjacking.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from urllib.parse import urlencode

from shared import discovery, scopes as scopelib
from shared.errors import INVALID_REQUEST, OAuth2Error
from shared.web import PageHandler

from . import authorities

I18N = os.path.join(os.path.dirname(__file__), "i18n")


def _catalog(tag: str) -> dict:
    with open(os.path.join(I18N, tag + ".json"), encoding="utf-8") as stream:
        return json.load(stream)


# Every page string in every language of discovery's ui_locales_supported, one file each
# (services/identifier/i18n/<tag>.json); a missing file stops the service at import.
CATALOGS = {tag: _catalog(tag) for tag in discovery.UI_LOCALES}
MESSAGES = {tag: {k: v for k, v in doc.items() if not k.startswith("_")}
            for tag, doc in CATALOGS.items()}
LANGUAGES = tuple((tag, MESSAGES[tag]["language_name"]) for tag in discovery.UI_LOCALES)
# lower-case tag -> ours: the tags themselves, and each primary language subtag (pt-BR and
# pt find pt-PT, the only Portuguese; no is Norwegian, nb the written form we have)
_MATCH = {**{tag.split("-")[0].lower(): tag for tag in MESSAGES}, "no": "nb",
          **{tag.lower(): tag for tag in MESSAGES}}
# the consent page's words for the scope groups without a scopes.yaml description
SCOPE_WORDS = {"basic": "scope_basic", scopelib.OFFLINE: "scope_offline_access",
               "kopano/gc": "scope_kopano_gc"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")


def _accepted(accept: str) -> list:
    """Accept-Language's language ranges, most preferred first (RFC 9110 §12.4.2, §12.5.4):
    `;` and `q=` may have whitespace around them and `q` any case; `q=0` means "not
    acceptable"; equal weights keep the client's order (the sort is stable, by weight only);
    a malformed weight drops that element. Only the first 64 elements are read."""
    ranked = []
    for part in accept.split(",", 64)[:64]:
        tag, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.match(value) else -1.0
        if tag and q > 0:
            ranked.append((q, tag))
    ranked.sort(key=lambda item: item[0], reverse=True)
    return [tag for _, tag in ranked]


def supported(tag: str) -> str | None:
    """Our language for a BCP 47 tag: the same tag (any case), else its primary language."""
    tag = tag.strip().lower()
    return _MATCH.get(tag) or _MATCH.get(tag.split("-")[0])


def choose_language(explicit: str | None, accept: str, ui_locales: str = "") -> str:
    """The page's language: the switch (`?lang=`), else the first supported of the
    authorization request's `ui_locales` (OpenID Connect Core 1.0 §3.1.2.1: space-separated
    BCP47 tags in order of preference; discovery lists `ui_locales_supported`), else
    Accept-Language, else English."""
    if explicit in MESSAGES:
        return explicit
    for tag in [*ui_locales.split()[:16], *_accepted(accept)]:
        if (found := supported(tag)) is not None:
            return found
    return "en"


BRANDING_PATH = "/signin/v1/branding/"
BRANDING_FILES = ("logo.svg", "brand.css")


def branding(settings) -> dict:
    """A deployment's replacements (--identifier-client-path: logo.svg, brand.css), as URLs
    under BRANDING_PATH for the files that exist."""
    directory = getattr(settings, "identifier_client_path", None)
    if not directory:
        return {}
    return {name: BRANDING_PATH + name for name in BRANDING_FILES
            if os.path.isfile(os.path.join(directory, name))}


class SigninPage(PageHandler):
    csp = CSP

    def initialize(self, deps=None, view: str = "identifier") -> None:
        super().initialize(deps)
        self.view = view

    async def get(self) -> None:
        client_name = ""
        if self.view == "consent":  # a dynamic client is in Redis: Core.lookup_client
            client = await self.deps.lookup_client(self.get_query_argument("client_id", ""),
                                                   self.get_query_argument("redirect_uri", ""))
            # Only a client the OP knows is named. The raw `client_id` of a link anyone can
            # write ("Your Bank would like to: ...") shown on the OP's own page as the asking
            # application is client impersonation: the server SHOULD "provide the resource
            # owner with information about the client" (RFC 6749 §10.2), not an attacker's
            # words. authorize sends only verified clients here.
            if client is None:
                raise OAuth2Error(INVALID_REQUEST, "unknown client")
            client_name = client.display_name
        if self.view == "identifier" and await self.to_default_authority():
            return
        self.show(client_name=client_name)

    async def to_default_authority(self) -> bool:
        """With a `default` authority the sign-in page is the authority's (SSO-only sites,
        Konnect's handleIdentifier): the browser goes straight there."""
        default = authorities.upstreams(self.deps).default
        if default is None or self.get_query_argument("flow", "") not in ("", "oidc", "oauth"):
            return False
        await authorities.start(self, default, authorities.original_query(self))
        return True

    def authority_links(self) -> list:
        """(name, URL) of each authority the sign-in page offers beside the password form."""
        query = authorities.original_query(self)
        return [(a.display_name, authorities.START_PATH + "?" + urlencode(
            {"authority_id": a.id, **query})) for a in authorities.upstreams(self.deps).offered()]

    # HEAD: GET's status and headers without the body (RFC 9110 §9.3.2; a GET-only resource
    # should answer it, §9.1). Tornado sends Content-Length and drops the body for HEAD.
    head = get

    def show(self, *, client_name: str = "", confirm: str = "", stay: str = "",
             form_origin: str = "") -> None:
        """Render the view. The one script is allowed by a per-response nonce;
        `form_origin` is where a form's answer may redirect (CSP form-action governs it)."""
        nonce = secrets.token_urlsafe(18)
        csp = self.csp.replace("script-src 'self'", f"script-src 'nonce-{nonce}'")
        if form_origin:
            csp = csp.replace("form-action 'self'", f"form-action 'self' {form_origin}")
        self.set_header("Content-Security-Policy", csp)
        lang = choose_language(self.get_query_argument("lang", None),
                               self.request.headers.get("Accept-Language", ""),
                               self.get_query_argument("ui_locales", ""))
        t = MESSAGES[lang]
        words: list = []
        if self.view == "consent":
            seen = set()
            for scope in scopelib.parse(self.get_query_argument("scope", "")):
                group, text = self.deps.scope_definitions.describe(scope)
                if text is None:
                    key = SCOPE_WORDS.get(group)
                    text = t[key] if key else t["scope_other"].format(scope=scope)
                if group not in seen:
                    seen.add(group)
                    words.append((group, text))

        def lang_query(code: str) -> str:
            args = {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}
            args["lang"] = code
            return urlencode(args)

        self.set_header("Content-Language", lang)
        self.render("page.html", view=self.view, lang=lang, t=t, product="Konnect",
                    login_hint=self.get_query_argument("login_hint", ""), client_name=client_name,
                    scope_words=words, confirm=confirm, stay=stay,
                    done=self.get_query_argument("done", "") == "1", languages=LANGUAGES, lang_query=lang_query,
                    nonce=nonce, branding=branding(self.deps.settings),
                    authority_links=self.authority_links() if self.view == "identifier" else [],
                    messages_json=json.dumps(t).replace("</", "<\\/"))
