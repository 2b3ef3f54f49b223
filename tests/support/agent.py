"""A scripted user agent for end-to-end tests through the proxy: what a person does in a
browser, done with `requests` (cookies per host, TLS verified against the proxy's CA).

It follows redirects itself and, on the identifier's pages, does what their script
(services/identifier/static/app.js) does: POST to the JSON API with the XSRF header and
the page's Origin, then go back to the authorization endpoint.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

from tests.support import apicheck

AUTHORIZE = "/signin/v1/identifier/_/authorize"


def authorize_again(issuer: str, page_url: str, **extra: str) -> str:
    """Where the identifier page's script sends the browser after sign-in or consent: the
    authorization request of the page's query without `flow`, and without the prompts the
    page has just satisfied (login, select_account); `extra` added (konnect, prompt=none)."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(page_url).query).items()}
    query.pop("flow", None)
    prompt = [p for p in query.get("prompt", "").split() if p not in ("login", "select_account")]
    if prompt:
        query["prompt"] = " ".join(prompt)
    else:
        query.pop("prompt", None)
    query.update(extra)
    return f"{issuer}{AUTHORIZE}?{urlencode(query)}"


@dataclass
class Outcome:
    """Where a flow ended: the last URL reached outside the OP (or the page it stopped on)."""

    url: str
    status: int
    body: str = ""
    steps: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict:
        parts = urlsplit(self.url)
        return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


class Agent:
    def __init__(self, issuer: str, ca: Optional[str] = None, timeout: float = 15.0) -> None:
        self.issuer = issuer.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace our CA
        self.session.verify = ca if ca else True
        self.session.hooks["response"].append(apicheck.requests_hook)
        self.timeout = timeout

    def get(self, url: str, **kw) -> requests.Response:
        return self.session.get(url, allow_redirects=False, timeout=self.timeout, **kw)

    def api(self, name: str, body: dict) -> requests.Response:
        return self.session.post(
            f"{self.issuer}/signin/v1/identifier/_/{name}", json=body, timeout=self.timeout,
            headers={"Kopano-Konnect-XSRF": "1", "Origin": self.issuer})

    def _authorize_again(self, page_url: str, **extra: str) -> str:
        return authorize_again(self.issuer, page_url, **extra)

    def run(self, url: str, username: str = "", password: str = "", *, consent: bool = True,
            stop_outside: bool = False, max_steps: int = 20) -> Outcome:
        """Follow `url` like a person: sign in when asked, answer the consent page, and
        follow redirects until a page that is not a redirect (or, with `stop_outside`, the
        first URL outside the issuer's origin, not fetched)."""
        steps: list[str] = []
        for _ in range(max_steps):
            steps.append(url)
            if stop_outside and not url.startswith(self.issuer + "/"):
                return Outcome(url, 0, "", steps)
            path = urlsplit(url).path
            if url.startswith(self.issuer) and path in ("/signin/v1/identifier",
                                                       "/signin/v1/chooseaccount"):
                page = self.get(url)
                if page.status_code != 200:
                    return Outcome(url, page.status_code, page.text, steps)
                resp = self.api("logon", {"state": secrets.token_hex(8),
                                          "params": [username, password, "1"]})
                if resp.status_code != 200:
                    return Outcome(url, resp.status_code, resp.text, steps)
                url = self._authorize_again(url)
                continue
            if url.startswith(self.issuer) and path == "/signin/v1/consent":
                page = self.get(url)
                query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                state = secrets.token_hex(8)
                resp = self.api("consent", {
                    "state": state, "allow": consent, "scope": query.get("scope", ""),
                    "client_id": query.get("client_id", ""),
                    "redirect_uri": query.get("redirect_uri", ""),
                    "ref": query.get("state", ""), "flow_nonce": query.get("nonce", "")})
                if page.status_code != 200 or resp.status_code != 200:
                    return Outcome(url, resp.status_code, resp.text, steps)
                url = self._authorize_again(url, konnect=state, prompt="none")
                continue
            resp = self.get(url)
            if resp.status_code in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.headers["Location"])
                continue
            return Outcome(url, resp.status_code, resp.text, steps)
        raise AssertionError(f"too many steps: {steps}")
