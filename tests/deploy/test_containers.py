"""Containers for real: the image of deploy/Dockerfile built from a clean copy of the
repository, the compose group of deploy/compose.yaml started and driven through its Caddy,
and a container started the way Konnect's README starts konnectd.

Docker runs here as root (tests/support/docker.py starts dockerd when none runs, and stops
it afterwards). No image registry is reachable, so every image stands on a Debian bookworm
base made with debootstrap from Debian's packages, and the official redis and caddy images
are replaced by deploy/compose.debian.yaml's, built from Debian's packages too. Containers
talk to each other on networks the tests create and to the host's loopback through
published ports; only the image builds use the host's network (package registries).

The measurements (build times, image sizes, `up` to the first token) are written to
test-artifacts/containers.json; docs/operations.md quotes them. Deselect with -m "not docker".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.agent import Agent
from tests.support.docker import ROOT, Compose, Daemon, clean_tree, unavailable
from tests.support.group import free_port
from tests.support.kopano_standin import KopanoStandIn, KopanoUser

pytestmark = pytest.mark.docker

PROJECT = "konnecttest"
SERVICES = ("identifier", "authorize", "token", "userinfo")
UID = 10001  # the image's user `konnect`
PASSWORD = "correct horse battery staple"
MEASURED: dict = {}


def _record(**values) -> None:
    MEASURED.update(values)
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "containers.json").write_text(json.dumps(MEASURED, indent=2, sort_keys=True) + "\n")


# --- fixtures: the daemon, the images, the group ------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    d = Daemon(tmp_path_factory.mktemp("docker")).start()
    yield d
    d.stop()
    if d.own:  # the daemon started here is gone, and its containerd with it
        assert d.process.poll() is not None


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return clean_tree(tmp_path_factory.mktemp("clean") / "konnect-py")


def _write_secret_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chown(path, UID, UID)  # the services' user reads it (docs/operations.md)
    path.chmod(0o400)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    """Konnect's two Docker secrets as files, an RSA key (PKCS#8 PEM) and 32 random bytes,
    and ours in their style, the access-token key (EC P-256, PKCS#8 PEM)."""
    directory = tmp_path_factory.mktemp("secrets")
    directory.chmod(0o755)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_secret_file(directory / "konnectd_signing_private_key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_secret_file(directory / "konnectd_encryption_secret", secrets.token_bytes(32))
    _write_secret_file(directory / "konnectd_access_token_signing_key",
                       ec.generate_private_key(ec.SECP256R1()).private_bytes(
                           serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()))
    return directory, key.public_key().public_numbers().n


@pytest.fixture(scope="module")
def compose(daemon, tree, secrets_dir):
    started = time.monotonic()
    base = daemon.base_image()
    _record(base_image_seconds=round(time.monotonic() - started, 1))
    port = free_port()
    c = Compose(daemon, tree, PROJECT, ["compose.yaml", "compose.debian.yaml"], env={
        "OIDC_ISSUER_IDENTIFIER": f"https://localhost:{port}",
        "KONNECT_PROXY_PORT": str(port), "KONNECT_PROXY_BIND": "127.0.0.1",
        "KONNECT_SECRETS_DIR": str(secrets_dir[0]),
        "KONNECT_BASE_IMAGE": base, "TOKEN_PROCS": "2"})
    c.issuer = f"https://localhost:{port}"
    c("down", "--volumes", "--remove-orphans", check=False)  # a failed earlier run's leftovers
    yield c
    c("down", "--volumes", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def images(daemon, compose):
    started = time.monotonic()
    built = compose.build()
    _record(build_seconds=round(time.monotonic() - started, 1),
            image_bytes={image: daemon.image_size(image) for image in built})
    return built


def basic(client_id: str, secret: str) -> str:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class Group:
    """The running compose group as a relying party sees it: issuer, CA, its client."""

    def __init__(self, compose: Compose, ca: str, client: dict) -> None:
        self.compose, self.issuer, self.ca, self.client = compose, compose.issuer, ca, client
        self.auth = {"Authorization": basic(client["id"], client["secret"])}

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca
        return s

    def authorize(self, agent: Agent, **extra: str) -> tuple[dict, dict]:
        """A code flow up to the redirect: (the authorization response, the request)."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        params = {"client_id": self.client["id"], "redirect_uri": self.client["redirect_uri"],
                  "response_type": "code", "scope": "openid profile email offline_access",
                  "state": secrets.token_hex(8), "nonce": secrets.token_hex(8),
                  "code_challenge": challenge.rstrip(b"=").decode(),
                  "code_challenge_method": "S256", **extra}
        outcome = agent.run(f"{self.issuer}/signin/v1/identifier/_/authorize?{urlencode(params)}",
                            "alice", PASSWORD, stop_outside=True)
        assert outcome.url.startswith(self.client["redirect_uri"]), (outcome.status,
                                                                      outcome.body[:300])
        return outcome.params, dict(params, code_verifier=verifier)

    def redeem(self, s: requests.Session, code: str, request: dict) -> requests.Response:
        return s.post(self.issuer + "/konnect/v1/token", headers=self.auth, timeout=30, data={
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": request["redirect_uri"], "code_verifier": request["code_verifier"]})

    def refresh(self, s: requests.Session, token: str) -> requests.Response:
        return s.post(self.issuer + "/konnect/v1/token", headers=self.auth, timeout=30,
                      data={"grant_type": "refresh_token", "refresh_token": token})

    def userinfo(self, s: requests.Session, access_token: str) -> requests.Response:
        return s.get(self.issuer + "/konnect/v1/userinfo", timeout=30,
                     headers={"Authorization": "Bearer " + access_token})

    def tokens(self, agent: Agent) -> dict:
        response, request = self.authorize(agent)
        answer = self.redeem(agent.session, response["code"], request)
        assert answer.status_code == 200, answer.text
        return answer.json()


def _wait(what: str, check, timeout: float = 90.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, AssertionError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


@pytest.fixture(scope="module")
def group(compose, images, tmp_path_factory):
    """`up` the group with a user and a client added the way docs/operations.md says."""
    client = {"id": "container-test", "secret": secrets.token_urlsafe(32),
              "redirect_uri": f"https://localhost:{free_port()}/callback"}
    registry = ("clients:\n"
                f"  - id: {client['id']}\n"
                "    name: Container test\n"
                f"    secret: {client['secret']}\n"
                "    application_type: web\n"
                f"    redirect_uris: [{client['redirect_uri']}]\n")
    compose("run", "--rm", "-T", "init")  # the empty users file and registry
    compose("run", "--rm", "-T", "init", "python", "-m", "shared.users.userfile", "add",
            "/var/lib/konnect/users.yaml", "alice", "--name", "Alice Example",
            "--email", "alice@example.test", "--password-stdin", input=PASSWORD + "\n")
    compose("run", "--rm", "-T", "init", "sh", "-c",
            "umask 077; cat > /var/lib/konnect/identifier-registration.yaml", input=registry)
    started = time.monotonic()
    compose("up", "-d", "--no-build")
    ca_file = tmp_path_factory.mktemp("caddy-ca") / "root.crt"

    def caddy_ca() -> bool:
        out = compose("exec", "-T", "caddy", "cat",
                      "/data/caddy/data/pki/authorities/local/root.crt", check=False)
        if out.returncode == 0 and "BEGIN CERTIFICATE" in out.stdout:
            ca_file.write_text(out.stdout)
            return True
        return False

    try:
        _wait("Caddy's local CA", caddy_ca)
        g = Group(compose, str(ca_file), client)
        _wait("discovery through Caddy", lambda: g.session().get(
            g.issuer + "/.well-known/openid-configuration", timeout=5).status_code == 200)
        g.tokens(Agent(g.issuer, g.ca))  # the first token of the group
    except BaseException:
        print(compose.logs())
        raise
    _record(up_to_first_token_seconds=round(time.monotonic() - started, 1))
    return g


# --- the image ------------------------------------------------------------------------------------

def test_images_build_from_a_clean_tree(daemon, tree, images):
    assert not (tree / ".venv").exists() and not (tree / ".state").exists()
    assert set(images) == {"konnect-op:latest", "konnect-redis:bookworm", "konnect-caddy:bookworm"}
    # only what the services run: no tests, no dev or test packages, no pip
    listing = daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "sh",
                            "konnect-op:latest", "-c",
                            "ls /opt/konnect; ls /opt/konnect/venv/lib/python3.11/site-packages; "
                            "ls /opt/konnect/deploy").stdout.split()
    assert {"shared", "services", "deploy", "venv"} <= set(listing)
    for absent in ("tests", "demo", "bench", ".venv", ".state", ".git", "pytest", "pip",
                   "playwright", "matplotlib", "supervisor", "honcho", "Caddyfile", "build-ca"):
        assert absent not in listing, absent
    assert "tornado" in listing and "redis" in listing and "zeep" in listing


def test_the_image_runs_as_its_user_and_refuses_serve_without_a_service(daemon, images):
    config = daemon.inspect("konnect-op:latest")[0]["Config"]
    assert config["User"] == "konnect:konnect"
    assert config["Entrypoint"] == ["/opt/konnect/deploy/docker-entrypoint.sh"]
    refused = daemon.docker("run", "--rm", "--network", "none", "konnect-op:latest", "serve",
                            "--iss=https://mykonnect.local", "kc", check=False)
    assert refused.returncode == 2 and "set KONNECT_SERVICE" in refused.stderr
    # started as root, the command still runs as konnect (Konnect's KONNECTD_USER)
    ids = daemon.docker("run", "--rm", "--network", "none", "--user", "0", "konnect-op:latest",
                        "python", "-c", "import os; print(os.getuid(), os.getgid(), os.getgroups())")
    assert ids.stdout.split("\n")[0] == f"{UID} {UID} []"


# --- a container started the way Konnect's README starts konnectd ---------------------------------

def test_konnect_readme_docker_run_serves_with_its_secrets_and_flags(daemon, images, secrets_dir,
                                                                    tmp_path):
    """Konnect's README: `docker run --read-only --user ... -v KEY:/run/secrets/konnectd_
    signing_private_key:ro -v SECRET:/run/secrets/konnectd_encryption_secret:ro --env
    KOPANO_SERVER_DEFAULT_URI=file:///run/kopano/server.sock --volume /run/kopano:/run/kopano
    --publish 127.0.0.1:8777:8777 IMAGE serve --iss=https://mykonnect.local kc`; plus the
    service of the container (KONNECT_SERVICE) and Redis. The Kopano server is the SOAP
    stand-in on a unix socket of the host, mounted as Konnect's README mounts /run/kopano;
    its service account comes from Konnect's other two secret files."""
    directory, modulus = secrets_dir
    kc_secrets = tmp_path / "kc-secrets"
    kc_secrets.mkdir(mode=0o755)
    _write_secret_file(kc_secrets / "konnectd_kopano_server_username", b"konnect")
    _write_secret_file(kc_secrets / "konnectd_kopano_server_password", b"service pass")
    users = [KopanoUser("konnect", "service pass", 1),
             KopanoUser("alice", PASSWORD, 3, "Alice Example", "alice@example.test")]
    network = f"{PROJECT}-readme"
    daemon.docker("network", "create", network)
    names = []
    try:
        with KopanoStandIn(users, unix_socket=True) as kc:
            Path(kc.socket_path).parent.chmod(0o755)
            Path(kc.socket_path).chmod(0o666)
            names.append(f"{network}-redis")
            daemon.docker("run", "-d", "--rm", "--name", names[-1], "--network", network,
                          "--network-alias", "redis", "--read-only", "konnect-redis:bookworm")
            ports = {}
            for service in ("identifier", "token"):
                ports[service] = free_port()
                names.append(f"{network}-{service}")
                daemon.docker(
                    "run", "-d", "--rm", "--name", names[-1], "--network", network,
                    "--read-only", f"--user={UID}:{UID}",
                    "--volume", f"{directory}/konnectd_signing_private_key:"
                                "/run/secrets/konnectd_signing_private_key:ro",
                    "--volume", f"{directory}/konnectd_encryption_secret:"
                                "/run/secrets/konnectd_encryption_secret:ro",
                    *(a for f in kc_secrets.iterdir()
                      for a in ("--volume", f"{f}:/run/secrets/{f.name}:ro")),
                    "--env", "KOPANO_SERVER_DEFAULT_URI=file:///run/kopano/server.sock",
                    "--volume", f"{Path(kc.socket_path).parent}:/run/kopano:rw",
                    "--publish", f"127.0.0.1:{ports[service]}:8777",
                    "--env", f"KONNECT_SERVICE={service}",
                    "--env", "KONNECTD_REDIS_URL=redis://redis:6379/0",
                    "konnect-op:latest", "serve", "--iss=https://mykonnect.local", "kc")
            s = requests.Session()
            s.trust_env = False
            token = f"http://127.0.0.1:{ports['token']}"
            doc = _wait("discovery", lambda: s.get(
                token + "/.well-known/openid-configuration", timeout=5).json())
            assert doc["issuer"] == "https://mykonnect.local"
            jwks = s.get(token + "/konnect/v1/jwks.json", timeout=5).json()
            signer = [k for k in jwks["keys"] if k["kid"] == "konnectd_signing_private_key"]
            assert signer, jwks  # Konnect's kid: the secret's file name
            n = int.from_bytes(base64.urlsafe_b64decode(signer[0]["n"] + "=="), "big")
            assert n == modulus  # the key of /run/secrets, not a random one
            # Konnect's two secrets only: no access-token key, the signing key signs them
            assert {k["kty"] for k in jwks["keys"]} == {"RSA"}
            # the identifier signs a user in against the Kopano server through the socket,
            # and seals its logon cookie with the secret of /run/secrets
            identifier = f"http://127.0.0.1:{ports['identifier']}"
            _wait("identifier", lambda: s.get(identifier + "/health-check", timeout=5).ok)
            logon = s.post(identifier + "/signin/v1/identifier/_/logon", timeout=15,
                           json={"state": "s1", "params": ["alice", PASSWORD, "1"]},
                           headers={"Kopano-Konnect-XSRF": "1",
                                    "Origin": "https://mykonnect.local",
                                    "Host": "mykonnect.local",
                                    "X-Forwarded-Proto": "https"})
            if logon.status_code != 200:
                print(daemon.docker("logs", names[1], check=False).stderr[-6000:])
            assert logon.status_code == 200, logon.text
            assert "__Host-KKT=" in logon.headers.get("Set-Cookie", "")
            assert any(call[0] == "alice" and call[3] == 0 for call in kc.state.logons)
            assert "unix" in kc.state.transports
            for name in names[1:]:  # Konnect's flags on the command line, the user it gave
                top = daemon.docker("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
                assert top[-3:] == ["--iss=https://mykonnect.local", "kc", ""], top
                assert "--metrics-listen=0.0.0.0:6777" in top
                assert daemon.inspect(name)[0]["HostConfig"]["ReadonlyRootfs"] is True
    finally:
        for name in names:
            daemon.docker("rm", "--force", name, check=False)
        daemon.docker("network", "rm", network, check=False)


# --- the compose group ------------------------------------------------------------------------------

def test_whole_browser_flow_through_the_groups_caddy(group):
    """Sign-in, consent, code, token, userinfo, refresh, sign-out: all through Caddy."""
    agent = Agent(group.issuer, group.ca)
    s = agent.session
    response, request = group.authorize(agent)
    assert response["iss"] == group.issuer and response["state"] == request["state"]
    tokens = group.redeem(s, response["code"], request)
    assert tokens.status_code == 200, tokens.text
    tokens = tokens.json()
    assert {"access_token", "id_token", "refresh_token"} <= tokens.keys()
    info = group.userinfo(s, tokens["access_token"])
    assert info.status_code == 200 and info.json()["email"] == "alice@example.test"
    refreshed = group.refresh(s, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert group.userinfo(s, new["access_token"]).status_code == 200
    # the ID token signed RS256 with the key of the compose secret, under Konnect's kid
    # (its file name); the access token ES256 with the access-token key's secret
    heads = [json.loads(base64.urlsafe_b64decode(new[name].split(".")[0] + "=="))
             for name in ("access_token", "id_token")]
    assert [(h["kid"], h["alg"]) for h in heads] == [
        ("konnectd_access_token_signing_key", "ES256"), ("konnectd_signing_private_key", "RS256")]
    # sign-out (what the sign-out page's script does): the access token stops working and
    # the browser has no session any more
    out = agent.api("logoff", {"state": "out1"})
    assert out.status_code == 200, out.text
    assert group.userinfo(s, new["access_token"]).status_code == 401
    silent, _ = group.authorize(agent, prompt="none")
    assert silent["error"] == "login_required"


def _token_log_lines(daemon: Daemon, name: str, since: str) -> int:
    out = daemon.docker("logs", "--since", since, name)
    text = out.stdout + out.stderr
    return len(re.findall(r"POST /konnect/v1/token 200 ", text))


def _healthy(daemon: Daemon, names: list[str]) -> bool:
    return all((c["State"].get("Health") or {}).get("Status") == "healthy"
               for c in daemon.inspect(*names))


def test_token_service_scaled_to_three_containers_all_answer_grants(group):
    compose, daemon = group.compose, group.compose.daemon
    compose("up", "-d", "--no-build", "--no-recreate", "--scale", "token=3")
    names = compose.containers("token")
    assert len(names) == 3
    _wait("three healthy token containers", lambda: _healthy(daemon, names), timeout=120)
    time.sleep(3)  # Caddy looks the name up again every 2 s
    agent = Agent(group.issuer, group.ca)
    chains = [group.tokens(agent)["refresh_token"] for _ in range(6)]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    failures: list = []

    def rotate(token: str) -> None:
        s = group.session()
        for _ in range(10):
            answer = group.refresh(s, token)
            if answer.status_code != 200:
                failures.append(answer.text)
                return
            token = answer.json()["refresh_token"]

    threads = [threading.Thread(target=rotate, args=(t,)) for t in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    answered = {name: _token_log_lines(daemon, name, since) for name in names}
    _record(grants_per_token_container=sorted(answered.values()))
    assert sum(answered.values()) >= 60 and all(answered.values()), answered


def test_token_container_killed_under_load_fails_only_its_requests_and_restarts(group):
    compose, daemon = group.compose, group.compose.daemon
    names = compose.containers("token")
    assert len(names) >= 2
    victim = daemon.inspect(names[0])[0]
    pid, restarts = victim["State"]["Pid"], victim["RestartCount"]
    results: list = []
    stop = threading.Event()
    agent = Agent(group.issuer, group.ca)
    refresh = [group.tokens(agent)["refresh_token"] for _ in range(2)]

    def load(kind: int) -> None:
        s = group.session()
        token = refresh[kind] if kind < len(refresh) else None
        while not stop.is_set():
            try:
                if token:  # grants, each on the refresh token the last one returned
                    answer = group.refresh(s, token)
                    if answer.status_code == 200:
                        token = answer.json()["refresh_token"]
                    else:
                        token = None  # in flight when killed: rotated or not, it is spent
                else:
                    answer = s.get(group.issuer + "/konnect/v1/jwks.json", timeout=30)
                results.append(answer.status_code)
            except requests.RequestException:
                results.append(0)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)  # a crash, not `docker stop`: the restart policy applies

    def restarted() -> bool:
        c = daemon.inspect(names[0])[0]
        return c["RestartCount"] > restarts and c["State"]["Running"] and c["State"]["Pid"] != pid

    assert _wait("the killed token container restarted", restarted, timeout=60, every=0.2)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)
    failures = [r for r in results if r != 200]
    _record(kill_under_load={"requests": len(results), "failed": failures})
    # only the requests in flight in the killed process fail: one per load thread at most
    assert len(results) > 50 and len(failures) <= len(threads), (len(results), failures)
    _wait("the restarted container healthy", lambda: _healthy(daemon, [names[0]]), timeout=120)


def test_redis_recreated_brings_back_no_spent_code_or_revocation(group):
    compose = group.compose
    agent = Agent(group.issuer, group.ca)
    s = agent.session
    response, request = group.authorize(agent)
    first = group.redeem(s, response["code"], request)
    assert first.status_code == 200
    tokens = first.json()
    rotated = group.refresh(s, tokens["refresh_token"])
    assert rotated.status_code == 200
    live = rotated.json()
    revoked = s.post(group.issuer + "/konnect/v1/revoke", headers=group.auth, timeout=30,
                     data={"token": live["access_token"], "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    (old,) = [c["Id"] for c in compose.daemon.inspect(*compose.containers("redis"))]
    compose("rm", "--stop", "--force", "redis")  # the container is gone; the volume stays
    compose("up", "-d", "--no-build", "--no-deps", "redis")
    (new,) = [c["Id"] for c in compose.daemon.inspect(*compose.containers("redis"))]
    assert new != old
    # the live refresh token still works: the records came back from the volume

    def refreshed():
        answer = group.refresh(s, live["refresh_token"])
        return answer if answer.status_code != 503 else None  # 503 until Redis answers

    again = _wait("Redis back", refreshed, timeout=60)
    assert again.status_code == 200, again.text
    assert group.userinfo(s, live["access_token"]).status_code == 401  # still revoked
    reuse = group.refresh(s, tokens["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    replay = group.redeem(s, response["code"], request)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_every_containers_healthcheck_turns_healthy(group):
    compose, daemon = group.compose, group.compose.daemon
    names = compose.containers()
    checked = {}
    for c in daemon.inspect(*names):
        if c["Config"].get("Healthcheck"):
            checked[c["Name"].lstrip("/")] = c["Config"]["Labels"]["com.docker.compose.service"]
    assert set(checked.values()) == {"redis", *SERVICES}  # Caddy's image has no health check
    _wait("every health check healthy", lambda: _healthy(daemon, list(checked)), timeout=120)


def test_containers_run_as_non_root_on_a_read_only_root(group):
    compose, daemon = group.compose, group.compose.daemon
    for name in compose.containers():
        c = daemon.inspect(name)[0]
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        assert c["HostConfig"]["ReadonlyRootfs"] is True, name
        status = daemon.docker("exec", name, "cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M).groups()
        assert "0" not in uids, (name, uids)
        if service in SERVICES:
            assert uids == (str(UID), str(UID))
            write = daemon.docker("exec", name, "sh", "-c", "echo x > /opt/konnect/x",
                                  check=False)
            assert write.returncode != 0 and "Read-only file system" in write.stderr
            assert c["HostConfig"]["CapDrop"] == ["ALL"]


def test_compose_down_leaves_nothing_running(group):
    compose, daemon = group.compose, group.compose.daemon
    compose("down", "--volumes", "--remove-orphans")
    assert compose.containers(all=True) == []
    label = f"label=com.docker.compose.project={PROJECT}"
    assert daemon.docker("network", "ls", "--quiet", "--filter", label).stdout.split() == []
    assert daemon.docker("volume", "ls", "--quiet", "--filter", label).stdout.split() == []
    if daemon.own:  # our own daemon runs nothing else
        assert daemon.docker("ps", "--quiet").stdout.split() == []
