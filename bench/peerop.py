"""The peer: panva's oidc-provider (bench/peer/provider.mjs), one Node process, measured
with the same scenarios and wrk method as our group.

Codes come from the peer's own authorization endpoint: one headless sign-in and consent
through its development pages (plain HTML forms and cookies), after which every
`GET /auth` with the session cookie answers a redirect with a fresh code; wrk issues those
requests and records the codes (never during a measured run).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

from . import load
from .client import Connection
from .scenarios import FORM, basic_auth, pkce_pair

PEER_DIR = Path(__file__).resolve().parent / "peer"


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def ensure_installed() -> None:
    """`npm ci` from the committed lock file when node_modules is missing."""
    if (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed for the peer (bench/peer)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, check=True,
                   capture_output=True, text=True, timeout=300)


def installed_version() -> str:
    try:
        doc = json.loads((PEER_DIR / "node_modules" / "oidc-provider" / "package.json").read_text())
        return doc["version"]
    except (OSError, ValueError, KeyError):
        return ""


class Peer:
    name = "peer"

    def __init__(self, workdir: Path, port: int, *, jwt_access_tokens: bool = False) -> None:
        self.jwt_access_tokens = jwt_access_tokens
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.client_id = "bench-rp"
        self.client_secret = "bench-" + secrets.token_urlsafe(24)
        self.redirect_uri = "http://127.0.0.1:9/cb"   # never contacted: codes are read from Location
        self.verifier, self.challenge = pkce_pair()
        self.basic = basic_auth(self.client_id, self.client_secret)
        self.process: Optional[subprocess.Popen] = None
        self.cookie = ""
        self._tokens: Optional[dict] = None
        self._tokens_minted = 0.0
        self._counter = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        ensure_installed()
        config = self.workdir / "peer-config.json"
        config.write_text(json.dumps({"client_id": self.client_id,
                                      "client_secret": self.client_secret,
                                      "redirect_uri": self.redirect_uri,
                                      "jwt_access_tokens": self.jwt_access_tokens}))
        log = open(self.workdir / "peer.log", "wb")
        self.process = subprocess.Popen(["node", str(PEER_DIR / "provider.mjs"), str(self.port),
                                         str(config)], cwd=PEER_DIR, stdout=log,
                                        stderr=subprocess.STDOUT,
                                        env=dict(os.environ, NODE_ENV="production"))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("peer exited: " + (self.workdir / "peer.log").read_text()[-2000:])
            if "ready" in (self.workdir / "peer.log").read_text():
                return
            time.sleep(0.1)
        raise RuntimeError("peer not ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def pids(self) -> dict:
        return {"node": self.process.pid} if self.process else {}

    # -- sign-in and minting ------------------------------------------------------------

    def auth_target(self) -> str:
        return "/auth?" + urlencode({
            "client_id": self.client_id, "response_type": "code",
            "scope": "openid email profile" + (" api" if self.jwt_access_tokens else ""),
            "redirect_uri": self.redirect_uri,
            "state": "bench-state", "nonce": "bench-nonce", "code_challenge": self.challenge,
            "code_challenge_method": "S256"})

    async def _sign_in(self) -> str:
        """Log in and consent once; returns the first code (the session cookie is kept)."""
        conn = Connection(self.issuer)
        jar: dict = {}

        async def go(method: str, url: str, body: bytes = b""):
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
            if body:
                headers["Content-Type"] = FORM
            resp = await conn.request(method, urlsplit(url).path + (
                "?" + urlsplit(url).query if urlsplit(url).query else ""), headers, body)
            for cookie in resp.header_list("set-cookie"):
                pair = cookie.split(";", 1)[0]
                name, _, value = pair.partition("=")
                if value and "expires=Thu, 01 Jan 1970" not in cookie:
                    jar[name.strip()] = value
                else:
                    jar.pop(name.strip(), None)
            return resp

        url = self.issuer + self.auth_target()
        try:
            for _ in range(16):
                if url.startswith(self.redirect_uri):
                    self.cookie = "; ".join(f"{k}={v}" for k, v in jar.items()
                                            if k.startswith("_session"))
                    return parse_qs(urlsplit(url).query)["code"][0]
                resp = await go("GET", url)
                if resp.status in (302, 303):
                    url = urljoin(url, resp.header("location"))
                    continue
                html = resp.body.decode("utf-8", "replace")
                action = re.search(r'<form[^>]*action="([^"]+)"', html)
                if resp.status != 200 or not action:
                    raise RuntimeError(f"peer sign-in: {resp.status} at {url}: {html[:200]}")
                if 'name="login"' in html:
                    fields = {"prompt": "login", "login": "bench-user", "password": "any"}
                else:
                    fields = {"prompt": "consent"}
                resp = await go("POST", urljoin(url, action.group(1)), urlencode(fields).encode())
                if resp.status not in (302, 303):
                    raise RuntimeError(f"peer form: {resp.status} {resp.body[:200]!r}")
                url = urljoin(url, resp.header("location"))
            raise RuntimeError("peer sign-in: too many steps")
        finally:
            await conn.aclose()

    def sign_in(self) -> str:
        return asyncio.run(self._sign_in())

    def _file(self, kind: str) -> Path:
        self._counter += 1
        path = self.workdir / f"peer-{kind}-{self._counter}.txt"
        path.write_text("")
        return path

    def mint_codes(self, n: int) -> Path:
        if not self.cookie:
            self.sign_in()
        out = self._file("codes")
        made = 0
        while made < n:
            want = int((n - made) * 1.05) + 64
            feed = self.workdir / "peer-auth-feed.txt"
            feed.write_text("x\n" * want)     # one line per request: stops at `want`
            spec = load.Spec("peer-mint", self.issuer + self.auth_target(), "GET",
                             {"Cookie": self.cookie}, "", str(feed))
            if load.wrk_available():
                load.record_with_wrk(spec, record=str(out), pattern="[?&]code=([^&]+)",
                                     header="Location", wanted=n)
            else:
                self._mint_python(out, n - made)
            before, made = made, len([x for x in out.read_text().split("\n") if x])
            if made == before:
                raise RuntimeError("the peer issued no code")
        lines = [x for x in out.read_text().split("\n") if x][:n]
        out.write_text("\n".join(lines) + "\n")
        return out

    def _mint_python(self, out: Path, n: int) -> None:
        async def run() -> None:
            conn = Connection(self.issuer)
            try:
                with open(out, "a") as f:
                    for _ in range(n):
                        resp = await conn.request("GET", self.auth_target(), {"Cookie": self.cookie})
                        m = re.search(r"[?&]code=([^&]+)", resp.header("location") or "")
                        if m:
                            f.write(m.group(1) + "\n")
            finally:
                await conn.aclose()
        asyncio.run(run())

    def code_body(self) -> str:
        return (f"grant_type=authorization_code&code={{}}&redirect_uri="
                f"{quote(self.redirect_uri, safe='')}&code_verifier={self.verifier}")

    def token_headers(self) -> dict:
        return {"Authorization": self.basic, "Content-Type": FORM}

    def tokens(self, max_age: float = 120.0) -> dict:
        """A token response (access token for /me; the refresh token is reused: not
        rotated), renewed when older than `max_age` seconds."""
        if self._tokens is None or time.monotonic() - self._tokens_minted > max_age:
            self._tokens_minted = time.monotonic()
            codes = self.mint_codes(1)
            holder = self._file("tokens")
            spec = load.Spec("peer-sample", self.issuer + "/token", "POST", self.token_headers(),
                             self.code_body(), str(codes))
            load.run_python(spec, duration=10, connections=1, max_requests=1,
                            record=(str(holder), r"^(.*)$"))
            text = holder.read_text().strip()
            if not text:
                raise RuntimeError("the peer issued no tokens")
            self._tokens = json.loads(text.splitlines()[0])
        return self._tokens

    # -- specs -----------------------------------------------------------------------------

    def spec(self, endpoint: str, via: str = "direct", *, feed: Optional[Path] = None) -> load.Spec:
        if endpoint == "token_code":
            return load.Spec(endpoint, self.issuer + "/token", "POST", self.token_headers(),
                             self.code_body(), str(feed))
        if endpoint == "token_refresh":
            body = "grant_type=refresh_token&refresh_token=" + quote(self.tokens()["refresh_token"])
            return load.Spec(endpoint, self.issuer + "/token", "POST", self.token_headers(), body)
        if endpoint == "userinfo":
            return load.Spec(endpoint, self.issuer + "/me", "GET",
                             {"Authorization": "Bearer " + self.tokens()["access_token"]})
        if endpoint == "discovery":
            return load.Spec(endpoint, self.issuer + "/.well-known/openid-configuration")
        if endpoint == "jwks":
            return load.Spec(endpoint, self.issuer + "/jwks")
        raise ValueError(endpoint)

    def prepare(self, endpoint: str, requests_needed: int, **_: object) -> Optional[Path]:
        return self.mint_codes(requests_needed) if endpoint == "token_code" else None
