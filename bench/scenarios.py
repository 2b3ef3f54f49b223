"""The benchmark scenarios against our process group, and what they need beforehand.

Single-use material is prepared outside the measured runs:
- authorization codes are minted straight into Redis (`Store.put_code` with a `Grant`,
  exactly what the authorize service stores after sign-in and consent), with a PKCE S256
  challenge whose verifier every token request sends;
- refresh tokens come from redeeming such codes at the token endpoint (each refresh
  token is rotated on use, so every request needs its own);
- the access token for userinfo comes from one redemption (it stays valid for the
  access-token lifetime; the revocation check runs on every request regardless);
- codes (and so refresh tokens) are spread round-robin over the bench's people (`people`:
  the demo user, or the bench users in the users file or the directory), resolved once
  through the group's own backend configuration, so that their subjects are the group's;
- authorize (code minting for a signed-in user) sends the logon cookie of one real
  sign-in at the identifier's logon API, for an implicitly trusted client on the
  issuer's origin (no consent step), with `prompt=none`; every answer must be a redirect
  carrying a code (`Spec.expect_location`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote, urlencode

from shared.grants import Grant
from shared.session import LOGON_COOKIE
from shared.store import Store
from shared.topology import owner
from shared.users.userfile import UsersFileBackend

from . import load

TOKEN_PATH = "/konnect/v1/token"
USERINFO_PATH = "/konnect/v1/userinfo"
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/konnect/v1/jwks.json"
AUTHORIZE_PATH = "/signin/v1/identifier/_/authorize"
AUTHORIZE_CLIENT = "bench-rp"   # implicitly trusted: its redirect URI is on the issuer's origin
SCOPES = ["openid", "profile", "email", "offline_access"]
FORM = "application/x-www-form-urlencoded"
REFRESH_PATTERN = r'"refresh_token":"([^"]+)"'
LUA_REFRESH_PATTERN = '"refresh_token":"([^"]+)"'

# What each scenario measures (the rows of the results table).
ENDPOINTS = ("token_code", "token_refresh", "userinfo", "authorize", "discovery", "jwks")


def pkce_pair() -> tuple:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def basic_auth(client_id: str, secret: str) -> str:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


@dataclass
class Material:
    """Files of single-use items and the facts every request repeats."""

    workdir: Path
    verifier: str
    challenge: str
    redirect_uri: str
    basic: str


class OurTarget:
    """Our group (tests.support.group.Group): URLs direct and through the proxy, and
    the minting of codes, refresh tokens and an access token."""

    name = "ours"

    def __init__(self, group, workdir: Path, *, backend: Optional[Callable] = None) -> None:
        """`backend()`: a user backend configured as the group's (default: its users file)."""
        self.group = group
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        demo = group.demo
        self.client_id, self.client_secret = demo["client_id"], demo["client_secret"]
        self.people = [(demo["username"], demo["password"])]
        self.redirect_uri = registered_redirect_uri(group, self.client_id)
        self.verifier, self.challenge = pkce_pair()
        self.basic = basic_auth(self.client_id, self.client_secret)
        self.redis_url = f"redis://{group.env['KONNECT_REDIS_LISTEN']}/0"
        self._backend = backend or (lambda: UsersFileBackend(str(Path(group.state) / "users.yaml")))
        self._identities: Optional[list] = None
        self._access_token: Optional[str] = None
        self._access_minted = 0.0
        self._logon: Optional[str] = None
        self._counter = 0

    def use_people(self, names: list, password: str) -> None:
        """Spread codes, refresh tokens and the sign-in over these users from now on."""
        self.people = [(name, password) for name in names]
        self._identities, self._access_token, self._logon = None, None, None

    # -- addresses ---------------------------------------------------------------------

    def base(self, via: str, service: str) -> str:
        return self.group.issuer if via == "proxy" else self.group.listen(service)

    @property
    def ca(self) -> str:
        return self.group.ca

    # -- single-use material -------------------------------------------------------------

    def _file(self, kind: str) -> Path:
        self._counter += 1
        path = self.workdir / f"{kind}-{self._counter}.txt"
        path.write_text("")
        return path

    async def _people(self) -> list:
        """The identities of `people`, as the group's backend signs them in."""
        if self._identities is None:
            users = self._backend()
            try:
                found = [await users.authenticate(name, password) for name, password in self.people]
            finally:
                await users.close()
            if None in found:
                raise RuntimeError(f"a bench user cannot sign in: {self.people[found.index(None)][0]}")
            self._identities = found
        return self._identities

    async def _mint(self, n: int, concurrency: int = 64) -> list:
        people = await self._people()
        store = Store.from_url(self.redis_url, prefix="konnect:")
        now = int(time.time())
        records = [Grant(client_id=self.client_id, identity=identity, scopes=list(SCOPES),
                         redirect_uri=self.redirect_uri, nonce="bench-nonce",
                         code_challenge=self.challenge, code_challenge_method="S256",
                         auth_time=now - 5, sid="bench-sid", created=now).to_record()
                   for identity in people]
        queue = [records[i % len(records)] for i in range(n)]
        codes: list = []

        async def worker() -> None:
            while queue:
                codes.append(await store.put_code(queue.pop(), 900))

        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, n)))))
        finally:
            await store.close()
        return codes

    def mint_codes(self, n: int) -> Path:
        """n fresh authorization codes in Redis; returns the feed file (one per line)."""
        codes = asyncio.run(self._mint(n))
        path = self._file("codes")
        path.write_text("\n".join(codes) + "\n")
        return path

    def code_body(self) -> str:
        return (f"grant_type=authorization_code&code={{}}&redirect_uri="
                f"{quote(self.redirect_uri, safe='')}&code_verifier={self.verifier}")

    def token_headers(self) -> dict:
        return {"Authorization": self.basic, "Content-Type": FORM}

    def mint_refresh_tokens(self, n: int, *, use_wrk: bool = True) -> Path:
        """n refresh tokens, each from redeeming a fresh code at the token endpoint
        (directly, not through the proxy: this is preparation, not measurement)."""
        out = self._file("refresh")
        out.write_text("")
        made = 0
        while made < n:
            want = n - made
            if use_wrk and load.wrk_available() and want > 200:
                # a few extra: requests in flight when the feed runs out are cut off
                codes = self.mint_codes(int(want * 1.05) + 64)
                spec = load.Spec("mint-refresh", self.base("direct", "token") + TOKEN_PATH,
                                 "POST", self.token_headers(), self.code_body(), str(codes))
                res = load.record_with_wrk(spec, record=str(out), pattern=LUA_REFRESH_PATTERN,
                                           wanted=n)
            else:
                codes = self.mint_codes(want)
                spec = load.Spec("mint-refresh", self.base("direct", "token") + TOKEN_PATH,
                                 "POST", self.token_headers(), self.code_body(), str(codes))
                res = load.run_python(spec, duration=max(5.0, want / 50), connections=8,
                                      max_requests=want, record=(str(out), REFRESH_PATTERN))
            before, made = made, len([x for x in out.read_text().split("\n") if x])
            if made == before:
                raise RuntimeError(f"no refresh token could be minted: {res}")
        lines = [x for x in out.read_text().split("\n") if x][:n]
        out.write_text("\n".join(lines) + "\n")
        return out

    def access_token(self, max_age: float = 120.0) -> str:
        """An access token from a real code redemption, re-minted when older than
        `max_age` seconds (access tokens live 10 minutes by default; a run is longer)."""
        if self._access_token is None or time.monotonic() - self._access_minted > max_age:
            self._access_token = None
            self._access_minted = time.monotonic()
            codes = self.mint_codes(1)
            spec = load.Spec("mint-access", self.base("direct", "token") + TOKEN_PATH, "POST",
                             self.token_headers(), self.code_body(), str(codes))
            holder = self._file("access")
            res = load.run_python(spec, duration=10, connections=1, max_requests=1,
                                  record=(str(holder), r'"access_token":"([^"]+)"'))
            tokens = [x for x in holder.read_text().split("\n") if x]
            if res["errors"] or not tokens:
                raise RuntimeError(f"no access token: {res}")
            self._access_token = tokens[0]
        return self._access_token

    def sample_token_response(self) -> str:
        """The body of one code redemption (to count the signatures in a response)."""
        codes = self.mint_codes(1)
        spec = load.Spec("sample", self.base("direct", "token") + TOKEN_PATH, "POST",
                         self.token_headers(), self.code_body(), str(codes))
        holder = self._file("sample")
        load.run_python(spec, duration=10, connections=1, max_requests=1,
                        record=(str(holder), r"^(.*)$"))
        return holder.read_text().strip()

    def logon_cookie(self) -> str:
        """The logon cookie of one real sign-in (the first of `people`) at the identifier's
        logon API, on its own listener (preparation, not measurement)."""
        if self._logon is None:
            from .flow import Browser

            async def sign_in() -> str:
                b = Browser(self.group.issuer, lambda path: self.group.listen(owner(path)),
                            ca=None, local_ip="127.0.0.1")
                try:
                    name, password = self.people[0]
                    resp = await b.api("logon", {"state": "bench", "params": [name, password, "1"]})
                    if resp.status != 200 or LOGON_COOKIE not in b.cookies:
                        raise RuntimeError(f"bench sign-in failed: {resp.status} {resp.body[:200]!r}")
                    return b.cookies[LOGON_COOKIE]
                finally:
                    await b.aclose()
            self._logon = asyncio.run(sign_in())
        return self._logon

    def authorize_query(self) -> str:
        return urlencode({"client_id": AUTHORIZE_CLIENT, "response_type": "code",
                          "redirect_uri": self.group.issuer + "/bench/callback",
                          "scope": "openid profile email", "state": "bench-state",
                          "nonce": "bench-nonce", "code_challenge": self.challenge,
                          "code_challenge_method": "S256", "prompt": "none"})

    # -- specs -----------------------------------------------------------------------------

    def spec(self, endpoint: str, via: str, *, feed: Optional[Path] = None) -> load.Spec:
        if endpoint == "token_code":
            return load.Spec(endpoint, self.base(via, "token") + TOKEN_PATH, "POST",
                             self.token_headers(), self.code_body(), str(feed), ca=self.ca)
        if endpoint == "token_refresh":
            return load.Spec(endpoint, self.base(via, "token") + TOKEN_PATH, "POST",
                             self.token_headers(), "grant_type=refresh_token&refresh_token={}",
                             str(feed), ca=self.ca)
        if endpoint == "userinfo":
            return load.Spec(endpoint, self.base(via, "userinfo") + USERINFO_PATH, "GET",
                             {"Authorization": "Bearer " + self.access_token()}, ca=self.ca)
        if endpoint == "authorize":
            return load.Spec(endpoint, self.base(via, "authorize") + AUTHORIZE_PATH + "?"
                             + self.authorize_query(), "GET",
                             {"Cookie": f"{LOGON_COOKIE}={self.logon_cookie()}"}, ca=self.ca,
                             expect_location="code=")
        if endpoint == "discovery":
            return load.Spec(endpoint, self.base(via, "token") + DISCOVERY_PATH, ca=self.ca)
        if endpoint == "jwks":
            return load.Spec(endpoint, self.base(via, "token") + JWKS_PATH, ca=self.ca)
        raise ValueError(endpoint)

    def prepare(self, endpoint: str, requests_needed: int, *, use_wrk: bool = True) -> Optional[Path]:
        """The feed a run of `endpoint` needs for up to `requests_needed` requests."""
        if endpoint == "token_code":
            return self.mint_codes(requests_needed)
        if endpoint == "token_refresh":
            return self.mint_refresh_tokens(requests_needed, use_wrk=use_wrk)
        return None


def registered_redirect_uri(group, client_id: str) -> str:
    """The first redirect URI the group's registry holds for the demo client."""
    import yaml

    doc = yaml.safe_load((Path(group.state) / "identifier-registration.yaml").read_text())
    for client in doc.get("clients") or []:
        if client.get("id") == client_id and client.get("redirect_uris"):
            return client["redirect_uris"][0]
    return group.demo_url + "/callback"


def count_signatures(token_response: str) -> dict:
    """Which JWS values a token response holds: {field: alg} (k = their number)."""
    import json
    body = json.loads(token_response)
    found = {}
    for name, value in body.items():
        if isinstance(value, str) and re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", value):
            header = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
            found[name] = header.get("alg")
    return found


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="konnect-bench-"))


def add_bench_users(group, n: int, password: Optional[str] = None) -> tuple:
    """n users (bench-user-0 ...) added to the group's users file, all with one password
    (hashed once): the sign-in flow signs in as different people. The users backend
    reloads the file when it changes."""
    import os

    import yaml

    from shared.users.passwords import hash_password

    password = password or secrets.token_urlsafe(12)
    encoded = hash_password(password)
    path = Path(group.state) / "users.yaml"
    doc = yaml.safe_load(path.read_text()) or {}
    users = doc.setdefault("users", [])
    have = {u.get("username") for u in users}
    names = []
    for i in range(n):
        name = f"bench-user-{i}"
        names.append(name)
        if name not in have:
            users.append({"username": name, "password": encoded, "name": f"Bench User {i}",
                          "email": f"{name}@example.test", "email_verified": True,
                          "id": 50000 + i, "uuid": secrets.token_hex(16)})
    tmp = path.with_suffix(".bench-tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return names, password
