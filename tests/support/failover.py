"""Grants under load across Redis failovers: the driver of tests/store/test_failover.py (a
few failovers) and of bench/failover.py (the full suite, docs/operations.md).

A token service (in-process or the process group) runs on a Redis deployment that fails
over (tests/support/redis_ha.py). Codes are minted into Redis up front (what authorize
stores after sign-in and consent), then `concurrency` clients work the token endpoint
while the failovers happen: they redeem codes, rotate refresh tokens (retrying after a
503, as a client does), revoke refresh and access tokens (RFC 7009), and replay spent
codes and refresh tokens as an attacker would. Every answer is recorded. What must hold:

- no double spend: no code and no refresh token was ever answered 200 twice;
- no lost revocation: no refresh token rotated, and no access token introspected active,
  after its revocation was answered 200;
- no 500 (nor any status but 200, 400 and 503; 503 carries Retry-After);

and what is measured: for each failover, the window of 503s, the latency in it, and how
long until grants are served again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import secrets
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from shared.grants import Grant
from shared.identity import Identity
from shared.store import Store

from tests.support.op import ALICE, SECRET, make_core
from tests.support.services import serving

TOKEN, REVOKE, INTROSPECT = "/konnect/v1/token", "/konnect/v1/revoke", "/konnect/v1/introspect"
SCOPES = ["openid", "profile", "offline_access"]
FORM = "application/x-www-form-urlencoded"
GRANTS = ("code", "refresh")  # the requests that are grants (the others: revoke, introspect)


@dataclass
class Target:
    """A token service and what its clients need."""

    base: str                      # the token service's origin
    client_id: str
    client_secret: str
    redirect_uri: str
    identities: list               # users the service's backend knows
    redis_url: str                 # where codes are minted
    ca: Optional[str] = None


@dataclass
class Answer:
    at: float                      # monotonic start
    took: float                    # seconds
    kind: str                      # code, refresh, replay, revoke_rt, revoke_at, introspect
    status: int
    token: str = ""                # which code or refresh token (replays, double spends)


@dataclass
class Event:
    name: str
    start: float
    end: float
    detail: Any = None


@dataclass
class Findings:
    """What the run found (`Run.check` fills it)."""

    double_spends: list = field(default_factory=list)
    lost_revocations: list = field(default_factory=list)
    bad_statuses: dict = field(default_factory=dict)


def _basic(client_id: str, secret: str) -> str:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class Run:
    """One run: prepared grants, `concurrency` clients, failovers while they work."""

    def __init__(self, target: Target, *, grants: int, concurrency: int = 16,
                 seed: int = 20) -> None:
        self.t, self.grants, self.concurrency = target, grants, concurrency
        self.rng = random.Random(seed)
        self.verifier = secrets.token_urlsafe(48)
        self.challenge = base64.urlsafe_b64encode(
            hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        self.auth = _basic(target.client_id, target.client_secret)
        self.http = AsyncHTTPClient(force_instance=True, max_clients=concurrency * 2)
        self.answers: list[Answer] = []
        self.events: list[Event] = []
        self.codes: list[str] = []           # not yet tried
        self.retry_codes: list[str] = []     # answered 503: the client tries again
        self.live: list[str] = []            # refresh tokens a client holds
        self.access: list[tuple] = []        # (access token, exp) a client holds
        self.spent: list[str] = []           # codes and refresh tokens answered 200 once
        self.ok: dict[str, int] = {}         # 200s per code / refresh token
        self.revoked_rt: dict[str, float] = {}   # refresh token -> when its revocation was 200
        self.revoked_at: dict[str, float] = {}   # access token -> when
        self.findings = Findings()
        self._stop = False

    # -- preparation --------------------------------------------------------------------

    async def prepare(self) -> None:
        """Mint the codes (spread over the identities), `grants` of them."""
        store = Store.from_url(self.t.redis_url)
        # connected before the clock is read, as a service is at start-up: the first
        # connection to an empty database starts its generation, which must not postdate
        # the codes (shared/service.py, check_store)
        await store.ping()
        now = int(time.time())
        records = [Grant(client_id=self.t.client_id, identity=identity, scopes=list(SCOPES),
                         redirect_uri=self.t.redirect_uri, nonce="n", sid="s",
                         code_challenge=self.challenge, code_challenge_method="S256",
                         auth_time=now - 5, created=now).to_record()
                   for identity in self.t.identities]
        todo = [records[i % len(records)] for i in range(self.grants)]

        async def worker() -> None:
            while todo:
                record = todo.pop()
                for _ in range(50):  # a deployment still settling: try again
                    try:
                        self.codes.append(await store.put_code(record, 3600))
                        break
                    except Exception:  # noqa: BLE001 - StoreUnavailable while settling
                        await asyncio.sleep(0.2)
        try:
            await asyncio.gather(*(worker() for _ in range(32)))
        finally:
            await store.close()
        self.rng.shuffle(self.codes)

    # -- requests -----------------------------------------------------------------------

    async def _post(self, path: str, form: dict, kind: str, token: str = "") -> tuple:
        start = time.monotonic()
        try:
            resp = await self.http.fetch(self.t.base + path, method="POST", body=urlencode(form),
                                         headers={"Content-Type": FORM,
                                                  "Authorization": self.auth},
                                         raise_error=False, request_timeout=30,
                                         ca_certs=self.t.ca, validate_cert=bool(self.t.ca))
            status, body = resp.code, resp.body
            if status == 503 and not resp.headers.get("Retry-After"):
                self.findings.bad_statuses["503 without Retry-After"] = \
                    self.findings.bad_statuses.get("503 without Retry-After", 0) + 1
        except (HTTPClientError, OSError) as err:
            status, body = 599, str(err).encode()
        self.answers.append(Answer(start, time.monotonic() - start, kind, status, token))
        if status not in (200, 400, 503):
            key = f"{kind} {status}"
            self.findings.bad_statuses[key] = self.findings.bad_statuses.get(key, 0) + 1
        try:
            return status, json.loads(body) if body else {}
        except ValueError:
            return status, {}

    def _granted(self, token: str, kind: str) -> None:
        self.ok[token] = self.ok.get(token, 0) + 1
        if self.ok[token] > 1:
            self.findings.double_spends.append((kind, token[:8]))
        self.spent.append(token)

    async def redeem(self, code: str) -> None:
        status, body = await self._post(TOKEN, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.t.redirect_uri,
            "code_verifier": self.verifier}, "code", code)
        if status == 200:
            self._granted(code, "code")
            self._keep(body)
        elif status == 503:
            self.retry_codes.append(code)

    def _keep(self, body: dict) -> None:
        if "refresh_token" in body:
            self.live.append(body["refresh_token"])
        self.access.append((body["access_token"], time.time() + body.get("expires_in", 600)))
        del self.access[:-2000]

    async def rotate(self, token: str) -> None:
        status, body = await self._post(TOKEN, {"grant_type": "refresh_token",
                                                "refresh_token": token}, "refresh", token)
        if status == 200:
            self._granted(token, "refresh")
            if token in self.revoked_rt:
                self.findings.lost_revocations.append(("refresh token rotated", token[:8]))
            self._keep(body)
        elif status == 503:
            self.live.append(token)  # the client keeps it and tries again

    async def replay(self) -> None:
        """An attacker with a spent code or refresh token."""
        token = self.rng.choice(self.spent)
        if len(token) == 46 and token in self.ok and token in self._codes_seen:
            await self._post(TOKEN, {"grant_type": "authorization_code", "code": token,
                                     "redirect_uri": self.t.redirect_uri,
                                     "code_verifier": self.verifier}, "replay", token)
        else:
            await self._post(TOKEN, {"grant_type": "refresh_token", "refresh_token": token},
                             "replay", token)
        if self.answers[-1].status == 200:
            self._granted(token, "replay")

    async def revoke_refresh(self, token: str) -> None:
        status, _ = await self._post(REVOKE, {"token": token,
                                              "token_type_hint": "refresh_token"}, "revoke_rt")
        if status == 200:
            self.revoked_rt[token] = time.monotonic()
        elif status == 503:
            self.live.append(token)

    async def revoke_access(self) -> None:
        token, exp = self.access.pop(self.rng.randrange(len(self.access)))
        status, _ = await self._post(REVOKE, {"token": token}, "revoke_at")
        if status == 200:
            self.revoked_at[token] = exp

    async def introspect_revoked(self) -> None:
        token = self.rng.choice(list(self.revoked_at))
        if self.revoked_at[token] < time.time() + 5:
            return  # expired (or about to): inactive anyway
        status, body = await self._post(INTROSPECT, {"token": token}, "introspect")
        if status == 200 and body.get("active"):
            self.findings.lost_revocations.append(("access token active", token[-8:]))

    async def refresh_revoked(self) -> None:
        token = self.rng.choice(list(self.revoked_rt))
        status, _ = await self._post(TOKEN, {"grant_type": "refresh_token",
                                             "refresh_token": token}, "replay", token)
        if status == 200:
            self.findings.lost_revocations.append(("revoked refresh token rotated", token[:8]))
            self._granted(token, "replay")

    # -- the load -------------------------------------------------------------------------

    async def _client(self) -> None:
        while not self._stop:
            r = self.rng.random()
            if r < 0.35 and (self.retry_codes or self.codes):
                await self.redeem((self.retry_codes or self.codes).pop())
            elif r < 0.75 and self.live:
                await self.rotate(self.live.pop(self.rng.randrange(len(self.live))))
            elif r < 0.80 and self.spent:
                await self.replay()
            elif r < 0.85 and len(self.live) > 10:
                await self.revoke_refresh(self.live.pop(self.rng.randrange(len(self.live))))
            elif r < 0.90 and self.access:
                await self.revoke_access()
            elif r < 0.95 and self.revoked_at:
                await self.introspect_revoked()
            elif self.revoked_rt:
                await self.refresh_revoked()
            else:
                await asyncio.sleep(0.01)

    async def run(self, failovers: list[tuple[str, Callable[[], Any]]], *, gap: float = 3.0,
                  settle: float = 3.0) -> None:
        """The clients work while each failover (a blocking call, run in a thread) happens,
        `gap` seconds apart; after the last one, `settle` seconds more."""
        self._codes_seen = set(self.codes)
        clients = [asyncio.ensure_future(self._client()) for _ in range(self.concurrency)]
        try:
            await asyncio.sleep(gap)
            for name, action in failovers:
                start = time.monotonic()
                detail = await asyncio.to_thread(action)
                self.events.append(Event(name, start, time.monotonic(), detail))
                await asyncio.sleep(gap)
            await asyncio.sleep(settle)
        finally:
            self._stop = True
            await asyncio.gather(*clients, return_exceptions=True)

    async def check(self) -> Findings:
        """After the run: every revoked refresh token is refused, every spent code and
        refresh token too, every revoked access token still valid is inactive."""
        for token in list(self.revoked_rt):
            await self.refresh_revoked_one(token)
        for token, exp in list(self.revoked_at.items()):
            if exp > time.time() + 5:
                status, body = await self._post(INTROSPECT, {"token": token}, "introspect")
                if status == 200 and body.get("active"):
                    self.findings.lost_revocations.append(("access token active", token[-8:]))
        for token in list(self.ok):
            form = ({"grant_type": "authorization_code", "code": token,
                     "redirect_uri": self.t.redirect_uri, "code_verifier": self.verifier}
                    if token in self._codes_seen else
                    {"grant_type": "refresh_token", "refresh_token": token})
            status, _ = await self._post(TOKEN, form, "replay", token)
            if status == 200:
                self._granted(token, "replay")
        return self.findings

    async def refresh_revoked_one(self, token: str) -> None:
        status, _ = await self._post(TOKEN, {"grant_type": "refresh_token",
                                             "refresh_token": token}, "replay", token)
        if status == 200:
            self.findings.lost_revocations.append(("revoked refresh token rotated", token[:8]))

    def close(self) -> None:
        self.http.close()

    # -- what was measured ------------------------------------------------------------------

    def report(self) -> dict:
        """Counts, and per failover: the 503 window, latency in it, time to serve again."""
        grants = [a for a in self.answers if a.kind in GRANTS]
        baseline = [a.took for a in grants if a.status == 200
                    and not any(e.start - 1 <= a.at <= e.end + 20 for e in self.events)]
        out: dict[str, Any] = {
            "requests": len(self.answers),
            "grants_ok": sum(1 for a in grants if a.status == 200),
            "grants_503": sum(1 for a in grants if a.status == 503),
            "live_grants_prepared": self.grants,
            "revocations_ok": sum(1 for a in self.answers
                                  if a.kind.startswith("revoke") and a.status == 200),
            "replays_refused": sum(1 for a in self.answers if a.kind == "replay"
                                   and a.status == 400),
            "double_spends": len(self.findings.double_spends),
            "lost_revocations": len(self.findings.lost_revocations),
            "bad_statuses": dict(self.findings.bad_statuses),
            "latency_ms_baseline": _percentiles(baseline),
            "failovers": [],
        }
        for i, event in enumerate(self.events):
            until = self.events[i + 1].start if i + 1 < len(self.events) else float("inf")
            during = [a for a in grants if event.start <= a.at < until]
            unavailable = [a for a in during if a.status == 503]
            last_503 = max((a.at + a.took for a in unavailable), default=event.start)
            first_503 = min((a.at for a in unavailable), default=event.start)
            window = [a.took for a in during if first_503 <= a.at <= last_503]
            out["failovers"].append({
                "kind": event.name, "detail": event.detail,
                "action_s": round(event.end - event.start, 2),
                "window_503_s": round(last_503 - first_503, 2) if unavailable else 0.0,
                "grants_tried": len(during),
                "grants_503": len(unavailable),
                "serving_again_after_s": round(last_503 - event.start, 2),
                "latency_ms_in_window": _percentiles(window),
            })
        return out


def _percentiles(values: list) -> dict:
    if not values:
        return {}
    values = sorted(values)

    def at(q: float) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)
    return {"n": len(values), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "max": round(1000 * values[-1], 1),
            "mean": round(1000 * statistics.fmean(values), 1)}


async def wait_cost(url: str, *, identity: Identity, grants: int = 200) -> dict:
    """What waiting for the replicas costs one grant: `grants` samples of a code
    redemption and a rotation at the store (milliseconds per sample: two grants), with the
    deployment's WAIT (`url`) and without (`replicas=0`), alternated."""
    sep = "&" if "?" in url else "?"
    stores = {"wait": Store.from_url(url), "no_wait": Store.from_url(url + sep + "replicas=0")}
    took: dict[str, list] = {name: [] for name in stores}
    try:
        for store in stores.values():  # connected before the clock is read (as in prepare)
            await store.ping()
        record = Grant(client_id="rp", identity=identity, scopes=list(SCOPES),
                       redirect_uri="x", created=int(time.time())).to_record()
        for name, store in stores.items():  # warm up: connections, scripts
            await _one_grant(store, record)
        for i in range(grants):
            for name, store in (stores.items() if i % 2 else reversed(stores.items())):
                start = time.perf_counter()
                await _one_grant(store, record)
                took[name].append(time.perf_counter() - start)
    finally:
        for store in stores.values():
            await store.close()
    out = {name: _percentiles(values) for name, values in took.items()}
    out["replicas"] = stores["wait"].replicas
    # each sample is a redemption and a rotation: two grants
    out["extra_ms_per_grant_p50"] = round((out["wait"]["p50"] - out["no_wait"]["p50"]) / 2, 2)
    return out


async def _one_grant(store: Store, record: dict) -> None:
    """A redemption and a rotation (two grants) as the token endpoint makes them."""
    code = await store.put_code(record, 60)
    now = int(time.time())
    got = await store.redeem_code(code, client_id="rp", redirect_uri="x", challenge="",
                                  verifier_sent=False, public=False, refresh_allowed=True,
                                  jti=secrets.token_urlsafe(8), now=now, access_ttl=600,
                                  refresh_ttl=3600)
    await store.rotate_refresh(got.refresh_token, client_id="rp", now=now, refresh_ttl=3600)


def identities(n: int = 50) -> list:
    """`n` users (the grants are spread over their buckets)."""
    from dataclasses import replace
    return [replace(ALICE, raw_sub=f"user-{i}", username=f"user{i}") for i in range(n)]


async def run_token_service(state: dict, url: str, failovers: list, *, grants: int,
                            concurrency: int = 8, gap: float = 2.0, settle: float = 3.0,
                            cpu: Optional[Callable[[], float]] = None) -> dict:
    """A token service (in this process, on a port of its own) on the Redis deployment of
    `url` (dev state `state`, tests/support/op.py); `grants` codes minted, then the load
    while `failovers` happen, then the checks. Returns `Run.report()`, with
    `load_cpu_s`: what `cpu()` (CPU seconds of something, e.g. the Redis servers) grew
    by during the load, and `load_s` its duration."""
    from services.token.app import make_app
    core = make_core("token", state, url)
    try:
        async with serving(make_app(core.settings, core)) as base:
            run = Run(Target(base=base, client_id="web-rp", client_secret=SECRET,
                             redirect_uri="https://rp.example.test/cb",
                             identities=identities(), redis_url=url), grants=grants,
                      concurrency=concurrency)
            try:
                await run.prepare()
                cpu_before, start = (cpu() if cpu else 0.0), time.monotonic()
                await run.run(failovers, gap=gap, settle=settle)
                load_s, load_cpu = time.monotonic() - start, (cpu() if cpu else 0.0) - cpu_before
                await run.check()
                return {**run.report(), "load_s": round(load_s, 2),
                        "load_cpu_s": round(load_cpu, 3)}
            finally:
                run.close()
    finally:
        await core.close()
