"""Several token processes on one SO_REUSEPORT address with one Redis: load spread, races
across processes, kill -9, key rotation."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import tornado.httpclient
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared import jose
from shared.keys import SigningKey
from shared.users.userfile import UsersFileBackend
from tests.support.http import basic
from tests.support.op import ALICE, ISSUER, SECRET, make_core, make_state, mint_code

ROOT = Path(__file__).resolve().parents[2]


LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


SAMPLE = re.compile(r'^konnect_http_requests_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


REDIRECT = "https://rp.example.test/cb"


USERS = {"users": [{"username": "alice", "name": "Alice Example", "given_name": "Alice",
                    "family_name": "Example", "email": "alice@example.test",
                    "email_verified": True, "id": 1001, "uuid": ALICE.raw_sub}]}


def write_users(directory: Path) -> Path:
    path = directory / "users.yaml"
    path.write_text(yaml.safe_dump(USERS))
    return path


def code_body(code: str) -> str:
    return urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT})


def refresh_body(token: str) -> str:
    return urlencode({"grant_type": "refresh_token", "refresh_token": token})


AUTH = {"Authorization": basic("web-rp", SECRET), **FORM}


class TokenProcess:
    """One `python -m services.token` with its own metrics listener; stderr to a file (a
    pipe nobody reads would fill up with access-log lines and stall the process)."""

    def __init__(self, state: dict, users: Path, redis_url: str, listen: str, log: Path) -> None:
        self.metrics_sock, self.metrics_port = tornado.testing.bind_unused_port(reuse_port=True)
        self.log = log
        cmd = [sys.executable, "-m", "services.token", "--iss", ISSUER, "--listen", listen,
               "--signing-private-key", state["key"], "--encryption-secret", state["secret"],
               "--identifier-registration-conf", state["registry"], "--redis-url", redis_url,
               "--with-metrics", "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KONNECTD_", "LDAP_", "KOPANO_", "OIDC_", "PROMETHEUS_"))}
        env["KONNECTD_USERS_FILE"] = str(users)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        self.address = self._wait_ready()
        self.metrics_sock.close()  # the process holds the port now (SO_REUSEPORT reservation)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = LISTENING.search(text)
            if found and "metrics on" in text:
                return f"{found.group(1)}:{found.group(2)}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("token process did not start:\n" + self.log.read_text(errors="replace"))

    def counts(self, handler: str) -> dict:
        """{status: count} of requests this process answered with `handler`."""
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", self.metrics_port,
                                                           timeout=10)) as conn:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        out: dict = {}
        for labels, value in SAMPLE.findall(text):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if pairs.get("handler") == handler:
                out[pairs["status"]] = out.get(pairs["status"], 0) + int(float(value))
        return out

    def total(self, handler: str, status: str | None = None) -> int:
        counts = self.counts(handler)
        return counts.get(status, 0) if status else sum(counts.values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    def __init__(self, directory: Path, redis_url: str) -> None:
        self.state = make_state(directory / "state")
        self.users = write_users(directory)
        self.redis_url = redis_url
        self.procs: list[TokenProcess] = []
        first = TokenProcess(self.state, self.users, redis_url, "127.0.0.1:0", directory / "t0.log")
        self.procs.append(first)
        self.address = first.address
        self.procs.append(TokenProcess(self.state, self.users, redis_url, self.address,
                                       directory / "t1.log"))
        assert self.procs[1].address == self.address
        self.url = f"http://{self.address}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def pinned(self) -> list:
        """One kept-alive connection to each process, in process order: a new connection
        reaches one of them at random; the health-check counters say which."""
        host, port = self.address.split(":")
        found: dict = {}
        for _ in range(200):
            before = [p.total("HealthCheckHandler") for p in self.procs]
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/health-check")
            assert conn.getresponse().read() == b"ok\n"
            after = [p.total("HealthCheckHandler") for p in self.procs]
            which = [i for i, (a, b) in enumerate(zip(after, before)) if a > b]
            assert len(which) == 1
            if which[0] in found:
                conn.close()
            else:
                found[which[0]] = conn
            if len(found) == len(self.procs):
                return [found[i] for i in range(len(self.procs))]
        raise AssertionError("connections never reached every process")


def request(conn: http.client.HTTPConnection, path: str, body: str, headers: dict) -> tuple:
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data) if data else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_server):
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_server.url)
    yield c
    c.stop()


@pytest.fixture
def minter(cluster, redis_url, io_loop):
    """A Core in the test process on the same Redis: mints codes as authorize would."""
    core = make_core("token", cluster.state, redis_url)
    yield core
    io_loop.run_sync(core.close)


def client() -> tornado.httpclient.AsyncHTTPClient:
    # SimpleAsyncHTTPClient: a new connection per request, so SO_REUSEPORT picks anew each time
    return tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=16)


def keytool(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "shared.keytool", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def kid_of(output: str) -> str:
    return re.search(r"^kid: (\S+)$", output, re.M).group(1)


@contextlib.asynccontextmanager
async def restarted(base: dict, redis_url: str, users: Path, validation: Path | None):
    """What restarting token and userinfo with the key files as they are now gives: a new
    Core (keys are read at start-up) serving both apps on one port."""
    extra = ["--validation-keys-path", str(validation)] if validation else []
    core = make_core("token", base, redis_url, extra)
    core.users = UsersFileBackend(str(users))
    rules = []
    for make in (token_app, userinfo_app):
        rules += make(core.settings, core).wildcard_router.rules
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application(rules))
    server.add_sockets([sock])
    try:
        yield core, f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()
        await core.close()


async def issue(http, url: str, core) -> dict:
    resp = await http.fetch(url + "/konnect/v1/token", method="POST", headers=AUTH,
                            body=code_body(await mint_code(core)))
    return json.loads(resp.body)


async def userinfo_status(http, url: str, access_token: str) -> int:
    resp = await http.fetch(url + "/konnect/v1/userinfo", raise_error=False,
                            headers={"Authorization": "Bearer " + access_token})
    return resp.code


async def active(http, url: str, token: str) -> bool:
    resp = await http.fetch(url + "/konnect/v1/introspect", method="POST", headers=AUTH,
                            body=urlencode({"token": token}))
    return json.loads(resp.body)["active"]


async def jwks_kids(http, url: str) -> set:
    resp = await http.fetch(url + "/konnect/v1/jwks.json")
    return {k["kid"] for k in json.loads(resp.body)["keys"]}


def forged_access_token(claims: dict, kid: str) -> str:
    """The claims of a real access token, signed by a key that is in no keyring."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = SigningKey(kid=kid, public=key.public_key(), algs=frozenset({"PS256"}),
                        alg="PS256", private=key)
    return jose.sign(claims, signer)


@pytest.mark.gen_test
async def test_requests_are_spread_over_both_processes(cluster, minter):
    before = [p.total("TokenHandler", "200") for p in cluster.procs]
    http = client()
    try:
        codes = [await mint_code(minter) for _ in range(40)]
        responses = await asyncio.gather(*[
            http.fetch(cluster.url + "/konnect/v1/token", method="POST", body=code_body(code),
                       headers=AUTH, raise_error=False) for code in codes])
    finally:
        http.close()
    assert [r.code for r in responses] == [200] * 40
    served = [p.total("TokenHandler", "200") - b for p, b in zip(cluster.procs, before)]
    assert sum(served) == 40 and all(n > 0 for n in served), served


@pytest.mark.gen_test
async def test_a_code_is_redeemed_once_across_the_processes(cluster, minter):
    conns = await asyncio.to_thread(cluster.pinned)
    try:
        for _ in range(10):
            code = await mint_code(minter)
            results = await asyncio.gather(*[
                asyncio.to_thread(request, conn, "/konnect/v1/token", code_body(code), AUTH)
                for conn in conns])
            statuses = sorted(status for status, _ in results)
            assert statuses == [200, 400], results
            assert [b["error"] for s, b in results if s == 400] == ["invalid_grant"]
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.gen_test
async def test_refresh_rotated_through_one_process_is_reuse_at_the_other(cluster, minter):
    conns = await asyncio.to_thread(cluster.pinned)
    first, second = conns
    try:
        status, issued = await asyncio.to_thread(request, first, "/konnect/v1/token",
                                                 code_body(await mint_code(minter)), AUTH)
        assert status == 200
        status, rotated = await asyncio.to_thread(request, second, "/konnect/v1/token",
                                                  refresh_body(issued["refresh_token"]), AUTH)
        assert status == 200 and rotated["refresh_token"] != issued["refresh_token"]
        status, err = await asyncio.to_thread(request, first, "/konnect/v1/token",
                                              refresh_body(issued["refresh_token"]), AUTH)
        assert status == 400 and err["error"] == "invalid_grant"
        # the reuse revoked the whole family, in both processes
        for conn, token in ((second, rotated["refresh_token"]), (first, rotated["refresh_token"])):
            status, err = await asyncio.to_thread(request, conn, "/konnect/v1/token",
                                                  refresh_body(token), AUTH)
            assert status == 400 and err["error"] == "invalid_grant"
        for conn in conns:
            status, info = await asyncio.to_thread(
                request, conn, "/konnect/v1/introspect",
                urlencode({"token": rotated["access_token"]}), AUTH)
            assert status == 200 and info == {"active": False}
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.gen_test
async def test_kill_9_of_one_process_fails_only_its_in_flight_requests(tmp_path, redis_url):
    cluster = await asyncio.to_thread(Cluster, tmp_path, redis_url)
    core = make_core("token", cluster.state, redis_url)
    http = client()
    concurrency, total, kill_after = 8, 240, 60
    victim = cluster.procs[0]
    outcomes: list = []  # (started, finished, status or exception name)
    state = {"done": 0, "killed_at": None}
    # No request starts between SIGKILL and the reaping of the process (a few ms in which
    # the kernel may still queue new connections on the dying listener): every request
    # that can fail is one that was in flight when the signal went out.
    open_gate = asyncio.Event()
    open_gate.set()
    try:
        codes = [await mint_code(core) for _ in range(total)]
        queue: asyncio.Queue = asyncio.Queue()
        for code in codes:
            queue.put_nowait(code)

        async def worker() -> None:
            while not queue.empty():
                await open_gate.wait()
                if queue.empty():
                    break
                code = queue.get_nowait()
                started = time.monotonic()
                try:
                    resp = await http.fetch(cluster.url + "/konnect/v1/token", method="POST",
                                            body=code_body(code), headers=AUTH,
                                            raise_error=False, request_timeout=20)
                    outcome = resp.code if resp.code != 599 else type(resp.error).__name__
                except Exception as err:  # noqa: BLE001 - a dropped connection, classified below
                    outcome = type(err).__name__
                outcomes.append((started, time.monotonic(), outcome))
                state["done"] += 1

        async def killer() -> None:
            while state["done"] < kill_after:
                await asyncio.sleep(0.005)
            open_gate.clear()
            state["killed_at"] = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.proc.wait)
            open_gate.set()

        await asyncio.gather(killer(), *[worker() for _ in range(concurrency)])
        survivor = cluster.procs[1]
        assert victim.proc.returncode == -signal.SIGKILL and survivor.proc.poll() is None
        failed = [o for o in outcomes if o[2] != 200]
        # only requests in flight when the process was killed may fail, and only as dropped
        # connections: never an HTTP error, never a request started after the kill
        assert len(failed) <= concurrency, failed
        assert all(not isinstance(status, int) for _, _, status in failed), failed
        assert all(started < state["killed_at"] for started, _, _ in failed), failed
        after = [o for o in outcomes if o[0] > state["killed_at"]]
        assert len(after) > total // 2 and all(status == 200 for _, _, status in after)
        assert len(outcomes) == total
        # the survivor keeps serving on the shared address
        resp = await http.fetch(cluster.url + "/konnect/v1/token", method="POST",
                                body=code_body(await mint_code(core)), headers=AUTH)
        assert resp.code == 200
    finally:
        http.close()
        await core.close()
        await asyncio.to_thread(cluster.stop)


@pytest.mark.gen_test
async def test_key_rotation_keeps_old_tokens_valid_and_refuses_unknown_keys(tmp_path, redis_url):
    keys, validation = tmp_path / "keys", tmp_path / "validation"
    validation.mkdir()
    state = make_state(tmp_path / "state")  # the registry; keys and secret come from keytool
    kid_a = kid_of(keytool("generate", "--bits", "2048", "--out-dir", str(keys)))
    base = dict(state, key=str(keys / "konnectd-signing-private-key.pem"),
                secret=str(keys / "konnectd-encryption-secret.key"))
    users = write_users(tmp_path)
    http = client()
    try:
        # before: key A signs
        async with restarted(base, redis_url, users, None) as (core, url):
            assert core.keyring.signer.kid == kid_a
            old = await issue(http, url, core)
            assert jose.unverified_header(old["access_token"])["kid"] == kid_a
            old_claims = core.keyring.verify(old["access_token"])[1]

        # phase 1: key B is published (validation key) everywhere before anything signs with it
        kid_b = kid_of(keytool("generate", "--bits", "2048", "--no-link", "--out-dir", str(keys)))
        (validation / f"{kid_b}.json").write_text(
            keytool("jwk-from-pem", "--public", str(keys / f"{kid_b}.pem")))
        async with restarted(base, redis_url, users, validation) as (phase1, url1):
            assert phase1.keyring.signer.kid == kid_a
            assert {kid_a, kid_b} <= await jwks_kids(http, url1)
            # phase 2, rolling: the link moves to B, A's public key joins the validation keys
            (keys / "konnectd-signing-private-key.pem").unlink()
            (keys / "konnectd-signing-private-key.pem").symlink_to(f"{kid_b}.pem")
            (validation / f"{kid_a}.json").write_text(
                keytool("jwk-from-pem", "--public", str(keys / f"{kid_a}.pem")))
            (validation / f"{kid_b}.json").unlink()
            async with restarted(base, redis_url, users, validation) as (phase2, url2):
                assert phase2.keyring.signer.kid == kid_b
                assert {kid_a, kid_b} <= await jwks_kids(http, url2)
                new = await issue(http, url2, phase2)
                assert jose.unverified_header(new["access_token"])["kid"] == kid_b
                # mid-rollout both generations accept both generations' tokens
                for url in (url1, url2):
                    for tokens in (old, new):
                        assert await userinfo_status(http, url, tokens["access_token"]) == 200
                        assert await active(http, url, tokens["access_token"])
                # the ID token of the old key still verifies (id_token_hint after rotation)
                assert phase2.keyring.verify(old["id_token"])[1]["aud"] == "web-rp"
                # the old refresh token refreshes at a restarted process, with the new key
                resp = await http.fetch(url2 + "/konnect/v1/token", method="POST", headers=AUTH,
                                        body=refresh_body(old["refresh_token"]))
                refreshed = json.loads(resp.body)
                assert jose.unverified_header(refreshed["access_token"])["kid"] == kid_b
                assert await userinfo_status(http, url1, refreshed["access_token"]) == 200
                # a key in neither the signing nor the validation keys is refused everywhere,
                # whatever kid it claims
                for kid in ("konnect-19990101-dead", kid_a, kid_b):
                    forged = forged_access_token(dict(old_claims, jti=f"forged-{kid}"), kid)
                    for url in (url1, url2):
                        assert await userinfo_status(http, url, forged) == 401
                        assert not await active(http, url, forged)

        # phase 3, after the longest token lifetime: A removed; what it signed is refused
        (validation / f"{kid_a}.json").unlink()
        (keys / f"{kid_a}.pem").unlink()
        async with restarted(base, redis_url, users, validation) as (after, url3):
            assert kid_a not in await jwks_kids(http, url3)
            assert await userinfo_status(http, url3, old["access_token"]) == 401
            assert await userinfo_status(http, url3, refreshed["access_token"]) == 200
    finally:
        http.close()
