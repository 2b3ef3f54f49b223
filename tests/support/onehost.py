"""The four services on one origin, as the proxy puts them (design of docs/architecture.md),
for in-process handler tests with pytest-tornado; and a `Browser` that carries cookies by
hand, as a browser would, plus the identifier page script's calls (`api`, `sign_in`)."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import tornado.web
import yaml

from services.authorize.app import make_app as authorize_app
from services.identifier.app import make_app as identifier_app
from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared.users.passwords import hash_password
from shared.users.userfile import UsersFileBackend

ALICE_ENTRY = {"username": "alice", "password": "wonderland", "name": "Alice Example",
               "email": "alice@example.test", "email_verified": True, "id": 1001,
               "uuid": "u-alice"}


def users_backend(path: Path, entries=(ALICE_ENTRY,)) -> UsersFileBackend:
    """A users file at `path` with `entries` (plain passwords, hashed here)."""
    path.write_text(yaml.safe_dump({"users": [
        {**entry, "password": hash_password(entry["password"])} for entry in entries]}))
    return UsersFileBackend(str(path))


def identifier_core(state: dict, redis_url: str, users_path: Path, extra=()):
    """A `Core` for the identifier (tests.support.op.make_core) with alice in a users file."""
    from tests.support.op import make_core
    core = make_core("identifier", state, redis_url, extra)
    core.users = users_backend(users_path)
    return core


def one_origin_app(core) -> tornado.web.Application:
    """identifier, authorize, token and userinfo routes in one application."""
    rules = []
    for make in (identifier_app, authorize_app, token_app, userinfo_app):
        application = make(core.settings, core)
        rules += [r for r in application.wildcard_router.rules
                  if r.matcher.regex.pattern != "/health-check$"]
        if make is identifier_app:
            settings = application.settings
    return tornado.web.Application(rules, **{k: v for k, v in settings.items()
                                             if k in ("template_path", "static_path",
                                                      "static_url_prefix", "static_handler_class")})


class Browser:
    def __init__(self, http_client, base_url):
        self.http, self.base, self.cookies = http_client, base_url, {}

    def _store(self, resp):
        for header in resp.headers.get_list("Set-Cookie"):
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if not morsel.value or str(morsel["max-age"]) == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def fetch(self, url, **kw):
        headers = kw.pop("headers", {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        target = url if url.startswith("http") else self.base + url
        resp = await self.http.fetch(target, headers=headers, follow_redirects=False,
                                     raise_error=False, **kw)
        self._store(resp)
        return resp

    async def api(self, name, body, **headers):
        hdrs = {"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                "Origin": self.base, **headers}
        return await self.fetch(f"/signin/v1/identifier/_/{name}", method="POST",
                                body=json.dumps(body), headers=hdrs)


def authorize_url(**params):
    base = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
            "response_type": "code", "scope": "openid profile email", "state": "xyz", "nonce": "n-1"}
    base.update(params)
    return "/signin/v1/identifier/_/authorize?" + urlencode({k: v for k, v in base.items() if v is not None})


def query_of(location):
    parts = urlsplit(location)
    return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


async def sign_in(browser, username="alice", password="wonderland"):
    return await browser.api("logon", {"state": "s1", "params": [username, password, "1"]})
