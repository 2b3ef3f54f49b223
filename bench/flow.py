"""The browser-less sign-in flow, driven by asyncio "browsers" (wrk cannot do multi-step
flows with cookies):

    GET  authorize (no logon)        -> 302 identifier sign-in page
    GET  /signin/v1/identifier       -> 200 page
    POST /signin/v1/identifier/_/logon (XSRF header, Origin)   -> 200 + logon cookie
    GET  authorize                   -> 302 consent page (the demo client is not trusted)
    GET  /signin/v1/consent          -> 200 page
    POST /signin/v1/identifier/_/consent                      -> 200 + consent cookie
    GET  authorize (prompt=none, konnect=<state>)             -> 302 redirect_uri?code=
    POST token (code, PKCE verifier, client_secret_basic)     -> 200 tokens

the same steps as tests/support/agent.py (what the identifier page's script does). Every
flow is a new browser (fresh cookies, fresh connections) from its own source address in
127.0.0.0/8, signing in as one of a pool of users, as distinct people would: the logon
rate limits (per user and per address) apply to them as to anyone. Static assets of the
pages (CSS, script) are not fetched.

`via="direct"`: each request goes to the service that owns the path (shared.topology),
on its own listener; `via="proxy"`: everything through the proxy's issuer URL (TLS).
A flow counts as an error if any step answers something else than expected.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from shared.topology import owner
from tests.support.agent import authorize_again

from .client import Connection, HTTPError
from .load import percentile

AUTHORIZE_PATH = "/signin/v1/identifier/_/authorize"


class FlowError(Exception):
    pass


class Browser:
    def __init__(self, issuer: str, route, *, ca: Optional[str], local_ip: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.route = route          # path -> origin to connect to
        self.ca, self.local_ip = ca, local_ip
        self.cookies: dict = {}
        self.conns: dict = {}
        self.requests = 0

    async def aclose(self) -> None:
        for conn in self.conns.values():
            await conn.aclose()

    async def send(self, method: str, url: str, headers: Optional[dict] = None,
                   body: bytes = b""):
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.issuer:
            raise FlowError(f"left the issuer: {url}")
        origin = self.route(parts.path)
        conn = self.conns.get(origin)
        if conn is None:
            conn = self.conns[origin] = Connection(origin, ca=self.ca, local_ip=self.local_ip)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.requests += 1
        resp = await conn.request(method, target, h, body)
        for cookie in resp.header_list("set-cookie"):
            pair, _, attrs = cookie.partition(";")
            name, _, value = pair.strip().partition("=")
            attrs = attrs.lower()
            if not value or "max-age=0" in attrs or "1970" in attrs:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return resp

    async def api(self, name: str, body: dict):
        # the page's origin, as a browser sends it: the issuer's, whichever listener answers
        return await self.send("POST", f"{self.issuer}/signin/v1/identifier/_/{name}", {
            "Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
            "Origin": self.issuer}, json.dumps(body).encode())


def _expect(resp, status: int, step: str) -> None:
    if resp.status != status:
        raise FlowError(f"{step}: {resp.status} {resp.body[:200]!r}")


def _query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def one_flow(b: Browser, *, client_id: str, basic: str, redirect_uri: str,
                   username: str, password: str, verifier: str, challenge: str) -> None:
    iss = b.issuer
    params = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
              "scope": "openid profile email offline_access", "state": secrets.token_hex(8),
              "nonce": secrets.token_hex(8), "code_challenge": challenge,
              "code_challenge_method": "S256"}
    resp = await b.send("GET", f"{iss}{AUTHORIZE_PATH}?{urlencode(params)}")
    _expect(resp, 302, "authorize")
    page = resp.header("location")
    page = page if page.startswith("http") else iss + page
    _expect(await b.send("GET", page), 200, "sign-in page")
    resp = await b.api("logon", {"state": secrets.token_hex(8), "params": [username, password, "1"]})
    _expect(resp, 200, "logon")
    resp = await b.send("GET", authorize_again(iss, page))
    _expect(resp, 302, "authorize after logon")
    consent = resp.header("location")
    consent = consent if consent.startswith("http") else iss + consent
    if urlsplit(consent).path == "/signin/v1/consent":
        _expect(await b.send("GET", consent), 200, "consent page")
        q = _query(consent)
        state = secrets.token_hex(8)
        resp = await b.api("consent", {
            "state": state, "allow": True, "scope": q.get("scope", ""),
            "client_id": q.get("client_id", ""), "redirect_uri": q.get("redirect_uri", ""),
            "ref": q.get("state", ""), "flow_nonce": q.get("nonce", "")})
        _expect(resp, 200, "consent")
        resp = await b.send("GET", authorize_again(iss, consent, konnect=state, prompt="none"))
        _expect(resp, 302, "authorize after consent")
        consent = resp.header("location")
    if not consent.startswith(redirect_uri):
        raise FlowError(f"no code: {consent[:200]}")
    result = _query(consent)
    if result.get("state") != params["state"] or "code" not in result:
        raise FlowError(f"bad authorization response: {consent[:200]}")
    body = urlencode({"grant_type": "authorization_code", "code": result["code"],
                      "redirect_uri": redirect_uri, "code_verifier": verifier}).encode()
    resp = await b.send("POST", f"{iss}/konnect/v1/token", {
        "Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"}, body)
    _expect(resp, 200, "token")
    tokens = json.loads(resp.body)
    if not {"access_token", "id_token", "refresh_token"} <= tokens.keys():
        raise FlowError(f"token response: {sorted(tokens)}")


def source_address(i: int) -> str:
    """A distinct loopback source address per flow (127.1.0.1, 127.1.0.2, ...)."""
    i += 1
    return f"127.{1 + (i >> 16) % 254}.{(i >> 8) & 255}.{i & 255 or 1}"


async def _run(*, issuer: str, route, ca: Optional[str], users: list, duration: float,
               concurrency: int, max_flows: Optional[int], start_index: int, flow_kw: dict) -> dict:
    deadline = time.monotonic() + duration
    durations: list = []
    counts = {"errors": 0, "requests": 0, "started": 0}
    samples: list = []
    index = [start_index]

    async def worker(w: int) -> None:
        username = users[w % len(users)]
        while time.monotonic() < deadline:
            if max_flows is not None and counts["started"] >= max_flows:
                return
            counts["started"] += 1
            index[0] += 1
            b = Browser(issuer, route, ca=ca, local_ip=source_address(index[0]))
            start = time.monotonic()
            try:
                await one_flow(b, username=username, **flow_kw)
                durations.append((time.monotonic() - start) * 1000)
            except (FlowError, HTTPError, OSError, asyncio.TimeoutError, ValueError) as err:
                counts["errors"] += 1
                if len(samples) < 3:
                    samples.append(f"{type(err).__name__}: {err}"[:300])
            finally:
                counts["requests"] += b.requests
                await b.aclose()

    start = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.monotonic() - start
    durations.sort()
    return {"flows": len(durations), "requests": counts["requests"],
            "duration_s": round(elapsed, 3),
            "rps": round(len(durations) / elapsed, 2) if elapsed else 0.0,   # flows/s
            "http_rps": round(counts["requests"] / elapsed, 2) if elapsed else 0.0,
            "p50_ms": round(percentile(durations, 50), 2) if durations else None,
            "p99_ms": round(percentile(durations, 99), 2) if durations else None,
            "errors": counts["errors"], "error_samples": samples, "tool": "python-flow",
            "next_index": index[0]}


def run_flows(group, *, via: str, users: list, password: str, verifier: str, challenge: str,
              basic: str, redirect_uri: str, duration: float, concurrency: int = 8,
              max_flows: Optional[int] = None, start_index: int = 0) -> dict:
    """Sign-in flows for `duration` seconds with `concurrency` browsers at a time."""
    issuer = group.issuer
    if via == "proxy":
        def route(path: str) -> str:
            return issuer
        ca = group.ca
    else:
        def route(path: str) -> str:
            service = owner(path)
            if service is None:
                raise FlowError(f"no service owns {path}")
            return group.listen(service)
        ca = None
    flow_kw = {"client_id": group.demo["client_id"], "basic": basic,
               "redirect_uri": redirect_uri, "password": password, "verifier": verifier,
               "challenge": challenge}
    return asyncio.run(_run(issuer=issuer, route=route, ca=ca, users=users, duration=duration,
                            concurrency=concurrency, max_flows=max_flows,
                            start_index=start_index, flow_kw=flow_kw))
