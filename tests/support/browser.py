"""A browser for the in-process services: cookies carried by hand, redirects not followed,
and the identifier JSON API as the sign-in page calls it (XSRF header, the Origin of the
issuer's pages, where the browser would have loaded them)."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from tornado.httputil import HTTPHeaders

from tests.support.op import ISSUER

TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
WEB_RP = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb"}


class Browser:
    #: the origin of the pages whose scripts call the API: the issuer's (the services check it)
    origin = ISSUER

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
                "Origin": self.origin, **headers}
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


async def signed_in(http_client, base_url, username="alice", password="wonderland") -> Browser:
    """A new browser with `username` signed in."""
    b = Browser(http_client, base_url)
    assert (await sign_in(b, username, password)).code == 200
    return b


async def userinfo(b: Browser, access_token: str):
    """The userinfo answer for a Bearer access token."""
    return await b.http.fetch(b.base + "/konnect/v1/userinfo", raise_error=False,
                              headers={"Authorization": "Bearer " + access_token})


async def userinfo_status(b: Browser, access_token: str) -> int:
    """The HTTP status userinfo answers for a Bearer access token."""
    return (await userinfo(b, access_token)).code


async def post_form(b: Browser, path: str, form: dict, auth: Optional[str] = None):
    """A form POST to a token-service endpoint with client credentials (default: the
    trusted client's)."""
    from tests.support.http import TRUSTED_AUTH
    return await b.http.fetch(b.base + path, method="POST", raise_error=False,
                              headers={"Authorization": auth or TRUSTED_AUTH,
                                       "Content-Type": "application/x-www-form-urlencoded"},
                              body=urlencode(form))


async def token_request(b: Browser, form: dict, auth: Optional[str] = None):
    """A token request (default: the trusted client's credentials)."""
    return await post_form(b, "/konnect/v1/token", form, auth)


async def code_for(b: Browser, scope: str = "openid profile") -> str:
    """A code for the trusted client, silently, for the signed-in user of `b`."""
    resp = await b.fetch(authorize_url(response_type="code", scope=scope, prompt="none", **TRUSTED))
    assert resp.code == 302, resp.body
    return query_of(resp.headers["Location"])["code"]


async def register(b: Browser, **metadata) -> dict:
    """A dynamically registered web client (the registration endpoint must be on)."""
    body = {"redirect_uris": ["https://dyn.example.test/cb"], **metadata}
    resp = await b.http.fetch(b.base + "/konnect/v1/register", method="POST", raise_error=False,
                              body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.code == 201, resp.body
    return json.loads(resp.body)


# The same cookie twice, as browsers send it when a sibling subdomain (Domain=) or a page at
# another path set one of the same name beside ours (more specific path first, RFC 6265
# §5.4): in either order, split over two Cookie fields (HTTP/2, RFC 9113 §8.2.3), spaced.
SHAPES = ["ours first", "planted first", "two fields", "spaces"]


def cookie_headers(name: str, ours: str, planted: str, shape: str, extra: str = "") -> list:
    """The Cookie field values of a request carrying `name` twice (`SHAPES`); `extra` is
    more `; name=value` pairs."""
    if shape == "ours first":
        return [f"{name}={ours}; {name}={planted}{extra}"]
    if shape == "planted first":
        return [f"{name}={planted}; {name}={ours}{extra}"]
    if shape == "two fields":
        return [f"{name}={ours}{extra}", f"{name}={planted}"]
    return [f"{name} = {planted} ;{name}={ours}{extra}"]


async def send_cookies(http_client, base_url, path: str, cookies: list, **kw):
    """A request with exactly these Cookie fields (no jar), redirects not followed."""
    headers = HTTPHeaders(kw.pop("headers", {}))
    for value in cookies:
        headers.add("Cookie", value)
    return await http_client.fetch(base_url + path, headers=headers, follow_redirects=False,
                                   raise_error=False, **kw)
