"""`make run`: the whole process group in the foreground (docs/architecture.md, "Processes").

    python deploy/run.py            (what `make run` does after installing what is missing)

On first run it creates the development state in `$KONNECT_STATE_DIR` (default `.state/`):
a signing key and the encryption secret, a client registry with the demo client, a users
file with the demo user. Then it fills in the environment for the programs (only where the
caller has not set a variable: every `KONNECTD_*`, `LDAP_*`, `KOPANO_*` and
`OIDC_ISSUER_IDENTIFIER` given by the user reaches the services unchanged), and replaces
itself with supervisord (deploy/supervisord.conf), which runs Redis, the four services
(token with `TOKEN_PROCS` processes), Caddy (once the services answer: konnect-program) and
the demo relying party. The URLs and credentials are printed when the group answers (every
service's health check, the discovery document through the proxy, the demo app), by a
small watcher started beside supervisord (`announce`). Ctrl-C or SIGTERM stops all of them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT))

from shared import keytool  # noqa: E402
from shared.topology import read_addresses  # noqa: E402
from shared.users.passwords import hash_password  # noqa: E402

DEMO_CLIENT_ID = "konnect-demo"
DEMO_USER = "demo"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def demo_origin(env: dict) -> str:
    """Through Caddy: https on the issuer's host (same-site with the OP); with Apache the
    app itself, plain http on loopback."""
    if env.get("KONNECT_PROXY", "caddy") == "caddy":
        host = urlsplit(env["OIDC_ISSUER_IDENTIFIER"]).hostname
        return f"https://{host}:{env['KONNECT_DEMO_PORT']}"
    host, _, port = env["KONNECT_DEMO_LISTEN"].rpartition(":")
    return f"http://{host}:{port}"


def ensure_state(state: Path, env: dict) -> dict:
    """Create what is missing of the dev state; return the demo facts (client, user)."""
    state.mkdir(parents=True, exist_ok=True)
    keys = state / "keys"
    if not (keys / keytool.LINK_NAME).exists():
        keytool.generate(keys)  # the production keys: RSA-2048 and an EC access-token key
    elif not (keys / keytool.ACCESS_TOKEN_LINK_NAME).exists():
        keytool.generate(keys, access_token=True)  # a state made before there was one
    origin = demo_origin(env)
    demo_file = state / "demo.json"
    if demo_file.exists():
        demo = json.loads(demo_file.read_text())
    else:
        demo = {"client_id": DEMO_CLIENT_ID, "client_secret": secrets.token_urlsafe(24),
                "username": DEMO_USER, "password": secrets.token_urlsafe(9)}
        _write_private(demo_file, json.dumps(demo, indent=2) + "\n")
    registry = state / "identifier-registration.yaml"
    if not registry.exists():
        _write_private(registry, (
            "# Development registry written by deploy/run.py (the demo relying party).\n"
            "clients:\n"
            f"  - id: {demo['client_id']}\n"
            "    name: Konnect demo app\n"
            f"    secret: \"{demo['client_secret']}\"\n"
            + ("    insecure: yes   # with Apache the demo serves plain http on loopback\n"
               if origin.startswith("http:") else "") +
            f"    redirect_uris: [\"{origin}/callback\"]\n"
            f"    post_logout_redirect_uris: [\"{origin}/\"]\n"))
    users = state / "users.yaml"
    if not users.exists():
        _write_private(users, (
            "# Development users written by deploy/run.py; add more with\n"
            "#   .venv/bin/python -m shared.users.userfile add .state/users.yaml NAME\n"
            "users:\n"
            f"  - username: {demo['username']}\n"
            f"    password: \"{hash_password(demo['password'])}\"\n"
            "    name: Demo User\n    given_name: Demo\n    family_name: User\n"
            "    email: demo@example.test\n    email_verified: true\n"
            f"    id: 1000\n    uuid: {secrets.token_hex(16)}\n"))
    return demo


def dev_certificate(directory: Path, host: str) -> None:
    """A self-signed certificate for Apache in development (Caddy has its own CA)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(host or "localhost"), x509.DNSName("localhost")]
    for ip in ("127.0.0.1", "::1"):
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host or "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(key_path, 0o640)  # Apache reads it as root before dropping privileges


def prepare_environment(env: dict, state: Path) -> dict:
    """The programs' environment: the caller's variables win, then addresses.env, then the
    dev state. Returns the demo facts."""
    for name, value in read_addresses().items():
        env.setdefault(name, value)
    env["KONNECT_STATE_DIR"] = str(state)
    demo = ensure_state(state, env)
    redis_given = "KONNECTD_REDIS_URL" in env
    sentinel = env.get("KONNECT_REDIS", "single") == "sentinel"
    sentinels = ",".join((env["KONNECT_SENTINEL1_LISTEN"], env["KONNECT_SENTINEL2_LISTEN"],
                          env["KONNECT_SENTINEL3_LISTEN"]))
    proxy = env.setdefault("KONNECT_PROXY", "caddy")
    if proxy == "apache" and "KONNECT_TLS_CERT" not in env:
        dev_certificate(state / "tls", urlsplit(env["OIDC_ISSUER_IDENTIFIER"]).hostname or "")
    if "KONNECTD_SIGNING_PRIVATE_KEY" not in env:  # our keys, not beside the caller's own
        env.setdefault("KONNECTD_ACCESS_TOKEN_SIGNING_KEY",
                       str(state / "keys" / keytool.ACCESS_TOKEN_LINK_NAME))
    if env.get("KONNECTD_IDENTITY_MANAGER") == "ldap" and not any(
            name in env for name in ("LDAP_SUB_ATTRIBUTES", "KONNECTD_LDAP_SUB_ATTRIBUTES")):
        # subjects that no rename can pass to someone else (docs/operations.md, "LDAP
        # subjects"); LDAP_SUB_ATTRIBUTES= (empty) keeps Konnect's DN subjects
        env["LDAP_SUB_ATTRIBUTES"] = "entryUUID"
    defaults = {
        "KONNECTD_SIGNING_PRIVATE_KEY": str(state / "keys" / keytool.LINK_NAME),
        "KONNECTD_ENCRYPTION_SECRET": str(state / "keys" / keytool.SECRET_NAME),
        "KONNECTD_IDENTIFIER_REGISTRATION_CONF": str(state / "identifier-registration.yaml"),
        "KONNECTD_USERS_FILE": str(state / "users.yaml"),
        # HA variant: the Sentinels name the primary; every single-use write waits for
        # both replicas (shared/redis_url.py)
        "KONNECTD_REDIS_URL": f"redis+sentinel://{sentinels}/konnect/0?replicas=2" if sentinel
        else f"redis://{env['KONNECT_REDIS_LISTEN']}/0",
        # the proxy is on loopback: believe its X-Forwarded-* (and nobody else's)
        "KONNECTD_TRUSTED_PROXY": "127.0.0.1/32 ::1/128",
        "KONNECTD_METRICS_DIR": str(state / "run" / "metrics"),
        "KONNECT_START_REDIS": "false" if redis_given else "true",
        "KONNECT_START_SENTINEL": "true" if sentinel and not redis_given else "false",
        "KONNECT_START_CADDY": "true" if proxy == "caddy" else "false",
        "KONNECT_START_APACHE": "true" if proxy == "apache" else "false",
        "KONNECT_START_DEMO": "true",
        "KONNECT_DEMO_ISSUER": env["OIDC_ISSUER_IDENTIFIER"],
        "KONNECT_DEMO_ORIGIN": demo_origin(env),
        "KONNECT_CADDY_EXTRA": str(DEPLOY / "caddy-demo.caddy"),
        "KONNECT_DEMO_CLIENT_ID": demo["client_id"],
        "KONNECT_DEMO_CLIENT_SECRET": demo["client_secret"],
        "KONNECT_DEMO_CA": str(state / "tls" / "cert.pem") if proxy == "apache" else
        str(state / "caddy" / "data" / "pki" / "authorities" / "local" / "root.crt"),
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in defaults.items():
        env.setdefault(name, value)
    metrics = Path(env["KONNECTD_METRICS_DIR"])
    shutil.rmtree(metrics, ignore_errors=True)  # counters of a previous run are not ours
    metrics.mkdir(parents=True, exist_ok=True)
    (state / "run").mkdir(parents=True, exist_ok=True)
    return demo


def problems(env: dict) -> list[str]:
    """What would stop the group from starting, found before anything starts."""
    found = []
    issuer = urlsplit(env["OIDC_ISSUER_IDENTIFIER"])
    if issuer.scheme != "https" or not re.fullmatch(r"[A-Za-z0-9/._~%-]*", issuer.path):
        found.append(f"OIDC_ISSUER_IDENTIFIER={env['OIDC_ISSUER_IDENTIFIER']!r}: make run "
                     "needs https://host[:port][/path] (a path of letters, digits and "
                     "/._~%- only)")
    tokens = env.get("TOKEN_PROCS", "")
    if not tokens.isdigit() or not 1 <= int(tokens) <= 64:
        found.append(f"TOKEN_PROCS={tokens!r}: a number from 1 to 64")
    if env.get("KONNECT_PROXY") not in ("caddy", "apache"):
        found.append(f"KONNECT_PROXY={env.get('KONNECT_PROXY')!r}: caddy or apache")
    if env.get("KONNECT_REDIS", "single") not in ("single", "sentinel"):
        found.append(f"KONNECT_REDIS={env.get('KONNECT_REDIS')!r}: single or sentinel")
    proxy_binary = "apache2" if env.get("KONNECT_PROXY") == "apache" else "caddy"
    ha = ("redis-sentinel",) if env.get("KONNECT_REDIS") == "sentinel" else ()
    for program in (proxy_binary, "redis-server", *ha, "supervisord"):
        if not shutil.which(program, path=env.get("PATH", "") + os.pathsep
                            + str(ROOT / ".venv" / "bin")):
            if not (program == "apache2" and Path("/usr/sbin/apache2").exists()):
                found.append(f"{program} not found (run `make run`, which installs it)")
    port = issuer.port or 443
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((env.get("KONNECT_PROXY_BIND", "127.0.0.1"), port))
        except OSError as err:
            found.append(f"the proxy cannot listen on port {port}: {err.strerror}")
    return found


def preflight(env: dict) -> list[str]:
    """Build each service's settings and dependencies as the service will: a bad variable
    or file stops `make run` here, with every problem listed, instead of four services
    failing in a restart loop."""
    from shared.config import ConfigError, StartupError, load_settings
    from shared.deps import Core

    found: list[str] = []
    for service in ("identifier", "authorize", "token", "userinfo"):
        listen = env[f"KONNECT_{service.upper()}_LISTEN"]
        try:
            settings = load_settings(["--listen", listen], env, service=service)
            Core.with_users(settings)
        except (ConfigError, StartupError) as err:
            found += [f"{service}: {p}" for p in err.problems if f"{service}: {p}" not in found]
    # the same problem reported by four services is one problem
    unique = []
    for problem in found:
        text = problem.split(": ", 1)[1]
        if text not in [u.split(": ", 1)[1] for u in unique]:
            unique.append(problem)
    return unique


READY = "Konnect-compatible OpenID Provider: ready"
#: seconds the group has to answer before the watcher gives up saying so
READY_WAIT = 180


def banner(env: dict, demo: dict) -> str:
    issuer = env["OIDC_ISSUER_IDENTIFIER"].rstrip("/")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(issuer))  # endpoints: shared/discovery.py
    lines = [
        "",
        f"  {READY}",
        f"    issuer        {issuer}",
        f"    discovery     {issuer}/.well-known/openid-configuration",
        f"    sign-in page  {origin}/signin/v1/identifier",
    ]
    if env.get("KONNECT_START_DEMO") == "true":
        lines += [
            f"    demo app      {demo_origin(env)}/   (click 'Sign in')",
            f"    demo user     {demo['username']} / {demo['password']}",
            f"    demo client   {demo['client_id']} / {demo['client_secret']}",
        ]
    if env.get("KONNECTD_IDENTITY_MANAGER") == "ldap":
        subjects = env.get("LDAP_SUB_ATTRIBUTES") or env.get("KONNECTD_LDAP_SUB_ATTRIBUTES")
        lines.append(f"    ldap subjects {subjects or 'the entry DN'}   (LDAP_SUB_ATTRIBUTES; "
                     "docs/operations.md)")
    lines += [
        f"    token procs   {env['TOKEN_PROCS']}",
        f"    state         {env['KONNECT_STATE_DIR']}",
        f"    proxy         {env['KONNECT_PROXY']}, TLS root: {env['KONNECT_DEMO_CA']}",
        "                  (your browser will warn once; or trust that file)",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def readiness_checks(env: dict) -> list:
    """What must answer before the banner: every service's health check, the discovery
    document through the proxy (the development certificate is not checked) and the demo
    app (healthcheck.wait's (url, insecure, method) tuples)."""
    from shared.healthcheck import service_urls
    from shared.options import SERVICES
    checks = [(url, False, "POST") for url in service_urls(SERVICES, env)]
    checks.append((env["OIDC_ISSUER_IDENTIFIER"].rstrip("/") + "/.well-known/openid-configuration",
                   True, "GET"))
    if env.get("KONNECT_START_DEMO") == "true":
        checks.append((demo_origin(env) + "/", True, "GET"))
    return checks


def announce() -> None:
    """`run.py --announce`, started beside supervisord: waits until the group answers, then
    prints the banner it reads on stdin, so that what it shows works at once. Ends with
    the group (PR_SET_PDEATHSIG: its parent becomes supervisord)."""
    from shared.healthcheck import wait
    _stop_with_parent()
    text = sys.stdin.read()
    env = dict(os.environ)
    problems = wait(readiness_checks(env), READY_WAIT)
    if problems:
        print(f"make run: the group does not answer after {READY_WAIT} s (see the log above; "
              "supervisorctl -c deploy/supervisord.conf status):", *problems, sep="\n  ",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    print(text, flush=True)


def _stop_with_parent() -> None:
    """`make run` stays our parent: when it dies, even by SIGKILL, supervisord must stop
    the group too, not live on as an orphan. Linux's PR_SET_PDEATHSIG survives the exec
    into supervisord. (Ctrl-C reaches every process of the terminal's group, and make
    passes SIGTERM on to us.)"""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        raise SystemExit(1)


def main() -> None:
    env = dict(os.environ)
    state = Path(env.get("KONNECT_STATE_DIR") or ROOT / ".state").resolve()
    demo = prepare_environment(env, state)
    found = problems(env) or preflight(env)
    if found:
        print("make run: cannot start:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2)
    print(f"make run: starting the process group ({state}); the addresses follow once it "
          "answers. Ctrl-C stops everything.", flush=True)
    supervisord = shutil.which("supervisord", path=str(ROOT / ".venv" / "bin")) \
        or shutil.which("supervisord")
    os.chdir(ROOT)
    _stop_with_parent()
    watcher = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--announce"],
                               stdin=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    watcher.stdin.write(banner(env, demo))
    watcher.stdin.close()
    argv = [supervisord, "-c", str(DEPLOY / "supervisord.conf")]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # say so explicitly (supervisord warns otherwise)
    os.execve(supervisord, argv, env)


if __name__ == "__main__":
    announce() if sys.argv[1:] == ["--announce"] else main()
