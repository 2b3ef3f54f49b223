"""The deployment files agree with the address table and the routing table."""

from __future__ import annotations

import ast
import configparser
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import keytool
from shared.healthcheck import listen_url
from shared.options import DEFAULT_LISTEN, SERVICES
from shared.topology import EXACT_ROUTES, owner, read_addresses

ROOT = Path(__file__).resolve().parents[2]


DEPLOY = ROOT / "deploy"


PROGRAM = DEPLOY / "bin" / "konnect-program"


ADDRESSES = read_addresses()


# Paths the proxies must route like shared.topology.owner(), and paths they must not route.
IDENTIFIER_SAMPLES = (
    "/signin/v1/identifier", "/signin/v1/identifier/_/logon", "/signin/v1/identifier/_/logoff",
    "/signin/v1/identifier/_/hello", "/signin/v1/identifier/_/consent",
    "/signin/v1/identifier/_/endsession", "/signin/v1/identifier/_/authorizex",
    "/signin/v1/chooseaccount", "/signin/v1/consent", "/signin/v1/welcome",
    "/signin/v1/goodbye", "/signin/v1/static/app.js", "/signin/v1/",
)


UNROUTED = (
    "/", "/health-check", "/metrics", "/konnect/v1/tokenx", "/konnect/v1/token/",
    "/konnect/v1/jwksxjson", "/konnect/v1/jwks.json.bak", "/xwell-known/openid-configuration",
    "/.well-known/openid-configurationx", "/konnect/", "/konnect/v1/", "/signin/v1",
    "/signin/v2/identifier", "/etc/passwd", "/konnect/v1/session/check-sessionxhtml",
)


ROUTED = tuple(p for paths in EXACT_ROUTES.values() for p in paths) + IDENTIFIER_SAMPLES


def _between(text: str, start: str, end: str) -> str:
    head, found, rest = text.partition(start)
    assert found, f"marker {start!r} missing"
    rest = rest.partition("\n")[2]  # the rest of the marker's line is a comment
    block, found, _ = rest.partition(end)
    assert found, f"marker {end!r} missing"
    return block


def caddy_routes() -> list[tuple[list[str], str]]:
    """[(path patterns, service)] of the Caddyfile's ROUTES block, in order."""
    text = (DEPLOY / "Caddyfile").read_text()
    block = _between(text, "# ROUTES", "# END ROUTES")
    matchers: dict[str, list[str]] = {}
    routes: list[tuple[list[str], str]] = []
    current = None
    for line in block.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"@(\w+) path (.+)", line):
            assert m.group(1) not in matchers, line
            matchers[m.group(1)] = m.group(2).split()
        elif m := re.fullmatch(r"handle @(\w+) \{", line):
            current = m.group(1)
        elif m := re.fullmatch(r"reverse_proxy \{\$KONNECT_([A-Z]+)_LISTEN\} \{", line):
            assert current is not None, "reverse_proxy outside a handle block"
            routes.append((matchers.pop(current), m.group(1).lower()))
            current = None
    assert not matchers, f"matchers without a route: {matchers}"
    # nothing outside the block proxies anything
    assert text.count("reverse_proxy") == block.count("reverse_proxy")
    return routes


def caddy_route(routes, path: str):
    """Caddy's `path` matcher (case-insensitive; exact, or a prefix with a final `*`);
    named-matcher `handle` blocks are tried in order and the first match wins."""
    for patterns, service in routes:
        for pattern in patterns:
            assert pattern.count("*") in (0, 1) and "*" not in pattern[:-1], pattern
            p, q = pattern.lower(), path.lower()
            if (p.endswith("*") and q.startswith(p[:-1])) or p == q:
                return service
    return None


def apache_routes() -> list[tuple[re.Pattern, str]]:
    text = (DEPLOY / "apache" / "konnect.conf").read_text()
    block = _between(text, "# ROUTES", "# END ROUTES")
    routes = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'ProxyPassMatch\s+"([^"]+)"\s+"([^"]+)"', line)
        assert m, f"unexpected line in ROUTES: {line}"
        regex, target = m.groups()
        assert regex.startswith("^(") and regex.endswith(")$"), regex  # $1 is the whole path
        if target == "balancer://konnect-token$1":
            service = "token"
        else:
            t = re.fullmatch(r"http://\$\{KONNECT_([A-Z]+)_LISTEN\}\$1", target)
            assert t, target
            service = t.group(1).lower()
        routes.append((re.compile(regex), service))
    # nothing outside the block proxies anything; the balancer is the token service
    proxying = re.findall(r"^\s*(?:ProxyPass|ProxyPassMatch|RewriteRule)\b.*$", text, re.M)
    assert len(proxying) == len(routes)
    balancer = _between(text, '<Proxy "balancer://konnect-token">', "</Proxy>")
    assert re.findall(r'BalancerMember\s+"([^"]+)"', balancer) == ["http://${KONNECT_TOKEN_LISTEN}"]
    return routes


def apache_route(routes, path: str):
    for regex, service in routes:
        if m := regex.search(path):
            assert m.group(1) == path, (regex.pattern, path)
            return service
    return None


def caddy_text() -> str:
    """The Caddyfile and the snippets it may import (deploy/*.caddy)."""
    return "".join(p.read_text() for p in [DEPLOY / "Caddyfile", *sorted(DEPLOY.glob("*.caddy"))])


def caddy_default_imports() -> list[str]:
    """Files the Caddyfile imports when no variable says otherwise (snippets aside)."""
    files = []
    for target in re.findall(r"^\s*import\s+(\S+)", (DEPLOY / "Caddyfile").read_text(), re.M):
        target = re.sub(r"\{\$[A-Za-z0-9_]+:([^}]*)\}", r"\1", target)
        if (DEPLOY / target).is_file():
            files.append(target)
    return files


def caddy_variables(text: str | None = None) -> tuple[set, set]:
    """({$NAME} without default, {$NAME:default})."""
    found = re.findall(r"\{\$([A-Za-z0-9_]+)(:[^}]*)?\}", caddy_text() if text is None else text)
    return {n for n, d in found if not d}, {n for n, d in found if d}


def apache_variables() -> set:
    return set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", (DEPLOY / "apache" / "konnect.conf").read_text()))


def supervisord_variables() -> set:
    return set(re.findall(r"%\(ENV_([A-Za-z0-9_]+)\)s", (DEPLOY / "supervisord.conf").read_text()))


def exported_by_program(program: str) -> set:
    """Names konnect-program exports before it runs `program` (the common part before the
    `case` and that program's branch)."""
    text = PROGRAM.read_text()
    common, found, branches = text.partition('case "$program" in')
    assert found
    branch = re.search(rf"^\s*(?:[a-z|]*\|)?{program}(?:\|[a-z|]*)?\)\n(.*?);;", branches,
                       re.M | re.S)
    assert branch, program
    names = set()
    for line in (common + branch.group(1)).splitlines():
        for part in re.findall(r"\bexport\s+([^;|&]+)", line):
            names |= set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", part))
    return names


def set_by_run_py() -> set:
    """Names prepare_environment() puts into the programs' environment."""
    tree = ast.parse((DEPLOY / "run.py").read_text())
    (func,) = [n for n in ast.walk(tree)
               if isinstance(n, ast.FunctionDef) and n.name == "prepare_environment"]
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            names |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    names.add(target.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "setdefault" and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


# Names the proxy and process configs use beyond deploy/addresses.env, and who sets them
# (Caddy's {$NAME:default} need nobody: KONNECT_PROXY_HTTP_PORT, KONNECT_CADDY_TLS, ...).
CADDY_FROM_PROGRAM = {"KONNECT_STATE_DIR", "KONNECT_PROXY_SITE", "KONNECT_PROXY_HOST",
                      "KONNECT_ISSUER_PATH"}
APACHE_FROM_PROGRAM = {"KONNECT_APACHE_DIR", "KONNECT_APACHE_USER", "KONNECT_PROXY_HOST",
                       "KONNECT_PROXY_PORT", "KONNECT_TLS_CERT", "KONNECT_TLS_KEY",
                       "KONNECT_HSTS_MAX_AGE", "KONNECT_ISSUER_PATH_RE"}


SUPERVISORD_FROM_RUN_PY = {"KONNECT_STATE_DIR", "KONNECT_START_REDIS", "KONNECT_START_CADDY",
                           "KONNECT_START_APACHE", "KONNECT_START_DEMO", "KONNECT_START_SENTINEL"}
# make run's HA variant (KONNECT_REDIS=sentinel): supervisord only, not in the Procfile
HA_PROGRAMS = {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}


def procfile() -> dict[str, str]:
    table = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            table[name.strip()] = command.strip()
    return table


def supervisord_commands() -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(DEPLOY / "supervisord.conf")
    return {section.split(":", 1)[1]: parser.get(section, "command")
            for section in parser.sections() if section.startswith("program:")}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KONNECT", "OIDC_", "LDAP_", "KOPANO_", "XDG_"))
           and k not in ADDRESSES}
    env.update(extra)
    return env


def stub(bin_dir: Path, name: str, command: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{command}\n")
    path.chmod(0o755)


def self_signed(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def default(value) -> str:
    """A compose value with every ${NAME:-default} replaced by its default."""
    text = str(value)
    assert not re.search(r"\$\{[A-Za-z0-9_]+\}", text), f"{text}: no default"
    return re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", text)


def port_of(listen: str) -> str:
    return listen.rpartition(":")[2]


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


UNITS = ("konnect-identifier.service", "konnect-authorize.service", "konnect-token@.service",
         "konnect-userinfo.service")


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
             "CapabilityBoundingSet": ""}


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.healthcheck", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=clean_env(**env))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def userinfo(tmp_path_factory):
    """A real `python -m services.userinfo` on a free port; yields its address."""
    state = tmp_path_factory.mktemp("userinfo")
    keys = keytool.generate(state, "ec")
    (state / "users.yaml").write_text("users: []\n")
    cmd = [sys.executable, "-m", "services.userinfo", "--iss", "https://idp.example.test",
           "--listen", "127.0.0.1:0", "--signing-method", "ES256",
           "--signing-private-key", keys["link"], "--encryption-secret", keys["secret"],
           "--redis-url", "redis://127.0.0.1:1/0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=clean_env(KONNECTD_USERS_FILE=str(state / "users.yaml")))
    seen = []
    try:
        while True:
            line = proc.stderr.readline()
            assert line, "userinfo did not start:\n" + "".join(seen)
            seen.append(line)
            if m := re.search(r"listening on ([0-9.]+:\d+)", line):
                break
        yield m.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stderr.close()


def test_topology_samples_are_what_the_table_says():
    assert {owner(p) for p in IDENTIFIER_SAMPLES} == {"identifier"}
    assert {owner(p) for p in UNROUTED} == {None}
    assert set(EXACT_ROUTES) | {"identifier"} == set(SERVICES)


@pytest.mark.parametrize("path", ROUTED + UNROUTED)
def test_caddyfile_routes_each_path_to_its_owner(path):
    assert caddy_route(caddy_routes(), path) == owner(path)


@pytest.mark.parametrize("path", ROUTED + UNROUTED)
def test_apache_routes_each_path_to_its_owner(path):
    assert apache_route(apache_routes(), path) == owner(path)


def test_both_proxies_send_traffic_to_every_service():
    assert {s for _, s in caddy_routes()} == set(SERVICES)
    assert {s for _, s in apache_routes()} == set(SERVICES)


def test_every_variable_of_the_configs_is_set_by_addresses_env_program_or_run_py():
    required, _ = caddy_variables()
    assert required - ADDRESSES.keys() == CADDY_FROM_PROGRAM
    assert apache_variables() - ADDRESSES.keys() == APACHE_FROM_PROGRAM
    # supervisord reads its own environment: the one run.py prepares (it is not a child of
    # konnect-program)
    assert supervisord_variables() - ADDRESSES.keys() == SUPERVISORD_FROM_RUN_PY
    assert CADDY_FROM_PROGRAM <= exported_by_program("caddy")
    assert APACHE_FROM_PROGRAM <= exported_by_program("apache")
    assert SUPERVISORD_FROM_RUN_PY <= set_by_run_py()


def test_every_name_of_addresses_env_is_used():
    used = (PROGRAM.read_text() + caddy_text()
            + (DEPLOY / "apache" / "konnect.conf").read_text()
            + (DEPLOY / "supervisord.conf").read_text() + (DEPLOY / "run.py").read_text())
    assert [n for n in ADDRESSES if n not in used] == []


def test_default_listen_is_the_address_table():
    assert set(DEFAULT_LISTEN) == set(SERVICES)
    for service in SERVICES:
        assert DEFAULT_LISTEN[service] == ADDRESSES[f"KONNECT_{service.upper()}_LISTEN"]


def test_supervisord_and_procfile_run_the_same_commands():
    proc, sup = procfile(), supervisord_commands()
    for name, command in proc.items():
        assert command == f"deploy/bin/konnect-program {name}"
    for name, command in sup.items():
        assert command == f"%(here)s/bin/konnect-program {name}"
    assert set(proc) <= set(sup)
    # the alternative proxy and the HA variant's servers: not in the Procfile
    assert set(sup) - set(proc) == {"apache"} | HA_PROGRAMS
    assert {c.replace("%(here)s/", "deploy/") for n, c in sup.items() if n in proc} \
        == set(proc.values())
    # every program name is one konnect-program knows
    text = PROGRAM.read_text()
    for name in sup:
        assert re.search(rf"^\s*(?:[a-z|]*\|)?{name}(?:\|[a-z|]*)?\)", text, re.M), name


def test_caddy_validates_the_caddyfile_as_konnect_program_runs_it(tmp_path):
    """konnect-program caddy, with `caddy run` replaced by `caddy validate`: the environment
    is exactly the one the program builds from addresses.env."""
    caddy = shutil.which("caddy")
    assert caddy, "caddy is installed by deploy/install-deps.sh"
    stub(tmp_path / "bin", "caddy", f'[ "$1" = run ] && shift\nexec "{caddy}" validate "$@"')
    result = subprocess.run([str(PROGRAM), "caddy"], capture_output=True, text=True, timeout=60,
                            env=clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                                          KONNECT_STATE_DIR=str(tmp_path / "state"),
                                          HOME=str(tmp_path), KONNECT_PROXY_WAIT="0"))
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


def test_apache_accepts_its_config_as_konnect_program_runs_it(tmp_path):
    apache = shutil.which("apache2") or "/usr/sbin/apache2"
    assert Path(apache).exists(), "apache2 is installed by deploy/install-deps.sh"
    state = tmp_path / "state"
    self_signed(state / "tls")  # where konnect-program points Apache by default
    stub(tmp_path / "bin", "apache2", f'exec "{apache}" -t "$@"')
    result = subprocess.run([str(PROGRAM), "apache"], capture_output=True, text=True, timeout=60,
                            env=clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                                          KONNECT_STATE_DIR=str(state), KONNECT_PROXY_WAIT="0"))
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stderr
    assert "not defined" not in result.stderr  # Apache only warns about an unset ${VAR}


def test_supervisord_parses_its_config_with_the_environment_run_py_gives(tmp_path, monkeypatch):
    from supervisor.options import ServerOptions

    (tmp_path / "run").mkdir()
    for name in [n for n in os.environ if n.startswith(("KONNECT", "TOKEN_PROCS"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KONNECT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TOKEN_PROCS", ADDRESSES["TOKEN_PROCS"])
    for flag, value in (("REDIS", "true"), ("CADDY", "true"), ("APACHE", "false"),
                        ("DEMO", "false"), ("SENTINEL", "false")):
        monkeypatch.setenv(f"KONNECT_START_{flag}", value)
    options = ServerOptions()
    options.realize(args=["-c", str(DEPLOY / "supervisord.conf")])
    (group,) = options.process_group_configs
    assert group.name == "konnect"
    processes = {p.name: p for p in group.process_configs}
    programs = {}
    for name, process in processes.items():
        programs.setdefault(re.sub(r"_\d+$", "", name), []).append(process)
    ha = ["redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"]
    assert list(programs) == ["redis", *ha, "identifier", "authorize", "token", "userinfo",
                              "caddy", "apache", "demo"]
    assert sorted(processes) == sorted(
        ["redis", *ha, "identifier", "authorize", "userinfo", "caddy", "apache", "demo"]
        + [f"token_{i}" for i in range(int(ADDRESSES["TOKEN_PROCS"]))])
    for name, procs in programs.items():
        for process in procs:
            assert process.command == f"{DEPLOY}/bin/konnect-program {name}"
    autostart = {name: procs[0].autostart for name, procs in programs.items()}
    assert autostart == {"redis": True, "identifier": True, "authorize": True, "token": True,
                         "userinfo": True, "caddy": True, "apache": False, "demo": False,
                         **{name: False for name in ha}}
    assert options.nodaemon is True


def test_compose_services_ports_and_environment_agree_with_addresses_env():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"redis", "init", *SERVICES, "caddy"}
    issuer = ADDRESSES["OIDC_ISSUER_IDENTIFIER"]
    redis_port = port_of(ADDRESSES["KONNECT_REDIS_LISTEN"])
    for name in SERVICES:
        svc = services[name]
        env = svc["environment"]
        listen = env[f"KONNECT_{name.upper()}_LISTEN"]
        assert listen == f"0.0.0.0:{port_of(ADDRESSES[f'KONNECT_{name.upper()}_LISTEN'])}"
        assert svc["command"] == ["deploy/bin/konnect-program", name]
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "shared.healthcheck",
                                              "--service", name]
        assert default(env["OIDC_ISSUER_IDENTIFIER"]) == issuer
        assert env["KONNECTD_REDIS_URL"] == f"redis://redis:{redis_port}/0"
        # key and secret: Docker secrets with Konnect's names, found by the entrypoint
        assert "KONNECTD_SIGNING_PRIVATE_KEY" not in env and "KONNECTD_ENCRYPTION_SECRET" not in env
        assert svc["secrets"] == ["konnectd_signing_private_key", "konnectd_encryption_secret",
                                  "konnectd_access_token_signing_key"]
        assert "state:/var/lib/konnect" in svc["volumes"]
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert "ports" not in svc  # only the proxy is published
    assert default(services["token"]["deploy"]["replicas"]) == ADDRESSES["TOKEN_PROCS"]
    assert "--port" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--port") + 1] \
        == redis_port
    assert services["redis"]["image"] == "redis:7"
    # Caddy: the same Caddyfile, its upstreams the service host names with the table's ports
    caddy = services["caddy"]
    assert caddy["image"] == "caddy:2"
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    env = caddy["environment"]
    imports = caddy_default_imports()
    for name in imports:  # relative imports resolve next to the mounted Caddyfile
        assert f"./{name}:/etc/caddy/{name}:ro" in caddy["volumes"]
    required, _ = caddy_variables("".join((DEPLOY / n).read_text()
                                          for n in ["Caddyfile", *imports]))
    assert required <= set(env), "every {$VAR} without default of the Caddyfile is set"
    for name in SERVICES:
        assert env[f"KONNECT_{name.upper()}_LISTEN"] == \
            f"{name}:{port_of(ADDRESSES[f'KONNECT_{name.upper()}_LISTEN'])}"
    assert default(env["KONNECT_PROXY_SITE"]) == issuer
    # Caddy starts once every service answers its health check (a request would otherwise
    # meet a service still starting: a 502), as konnect-program makes the proxies wait
    assert caddy["depends_on"] == {name: {"condition": "service_healthy"} for name in SERVICES}
    (published,) = caddy["ports"]
    issuer_port = issuer.rpartition(":")[2]
    assert default(published) == f"{ADDRESSES['KONNECT_PROXY_BIND']}:{issuer_port}:{issuer_port}"
    trusted = services["identifier"]["environment"]["KONNECTD_TRUSTED_PROXY"]
    assert trusted == caddy["networks"]["konnect"]["ipv4_address"] + "/32"
    assert set(doc["secrets"]) == {"konnectd_signing_private_key", "konnectd_encryption_secret",
                                   "konnectd_access_token_signing_key"}
    for name, secret in doc["secrets"].items():
        assert default(secret["file"]) == f"./secrets/{name}"
    # init makes the users file and the registry the services are pointed at
    script = " ".join(services["init"]["command"])
    assert "users.yaml" in script and "identifier-registration.yaml" in script
    assert script.split("\n")[0].endswith("umask 077")  # files private
    assert services["init"]["restart"] == "no"
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"


def test_dockerfile_one_service_per_container_non_root_with_health_check():
    instructions = dockerfile()
    get = lambda op: [arg for o, arg in instructions if o == op]  # noqa: E731
    # any Debian bookworm base (the official slim one by default); a build stage for pip
    assert get("ARG") == ["BASE=debian:bookworm-slim"]
    assert get("FROM") == ["${BASE} AS build", "${BASE}"]
    (user,) = get("USER")
    assert user.split(":")[0] not in ("root", "0")
    entrypoint = "/opt/konnect/deploy/docker-entrypoint.sh"
    assert json.loads(get("ENTRYPOINT")[0]) == [entrypoint]
    assert json.loads(get("CMD")[0]) == ["help"]
    (health,) = get("HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == [entrypoint, "healthcheck"]
    assert any("-r /tmp/konnect/image.txt -c /tmp/konnect/constraints.txt" in r
               for r in get("RUN"))
    for arg in get("COPY"):
        if not arg.startswith("--from="):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", " ".join(get("ENV"))))
    for name in SERVICES:
        key = f"KONNECT_{name.upper()}_LISTEN"
        assert env[key] == f"0.0.0.0:{port_of(ADDRESSES[key])}"
    assert env["KONNECT_PYTHON"] == "/opt/konnect/venv/bin/python"  # konnect-program's
    # `python -m shared....` works from any directory (compose's init cds to the volume)
    assert env["PYTHONPATH"] == get("WORKDIR")[0] == "/opt/konnect"


def test_systemd_units_run_konnect_program_hardened(tmp_path):
    directory = DEPLOY / "systemd"
    assert sorted(p.name for p in directory.iterdir()) == sorted([*UNITS, "konnect.target"])
    for name in UNITS:
        service = name.split("-", 1)[1].split("@")[0].split(".")[0]
        u = unit(name)
        s = u["Service"]
        assert s["ExecStart"] == f"/opt/konnect/deploy/bin/konnect-program {service}"
        assert s["EnvironmentFile"] == "/etc/konnect/konnectd.env"
        assert s["Restart"] == "on-failure"
        assert s["User"] not in ("root", "0")
        for key, value in HARDENING.items():
            assert s[key] == value, (name, key)
        assert u["Install"]["WantedBy"] == "konnect.target"
        assert u["Unit"]["PartOf"] == "konnect.target"
    assert unit("konnect.target")["Install"]["WantedBy"] == "multi-user.target"
    if not shutil.which("systemd-analyze"):
        return  # the parse above is the check on a machine without systemd
    # systemd's own parser, on copies pointing at this checkout's konnect-program
    copies = tmp_path / "units"
    copies.mkdir()
    for path in directory.iterdir():
        (copies / path.name).write_text(path.read_text().replace("/opt/konnect/", f"{ROOT}/"))
    env = clean_env(SYSTEMD_UNIT_PATH=f"{copies}:")
    names = [n.replace("@.", "@1.") for n in UNITS] + ["konnect.target"]
    result = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True,
                            text=True, timeout=60, cwd=copies, env=env)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    for name in names[:-1]:
        security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                                   "--threshold=20", name], capture_output=True, text=True,
                                  timeout=60, cwd=copies, env=env)
        assert security.returncode == 0, security.stdout[-2000:]


def test_listen_addresses_become_loopback_urls():
    assert listen_url("0.0.0.0:8779") == "http://127.0.0.1:8779/health-check"
    assert listen_url("[::]:8779") == "http://[::1]:8779/health-check"
    assert listen_url("10.1.2.3:80") == "http://10.1.2.3:80/health-check"


def test_healthcheck_passes_for_a_running_service(userinfo):
    for args, env in ((("http://" + userinfo + "/health-check",), {}),
                      (("--listen", userinfo), {}),
                      (("--service", "userinfo"), {"KONNECT_USERINFO_LISTEN": userinfo})):
        result = healthcheck(*args, **env)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), args


def test_healthcheck_fails_for_a_closed_port_with_one_line_per_failure(userinfo):
    port = closed_port()
    result = healthcheck(f"http://127.0.0.1:{port}/health-check", "--listen", userinfo,
                         f"http://{userinfo}/not-the-health-check")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"http://127.0.0.1:{port}/health-check: Connection refused",
        f"http://{userinfo}/not-the-health-check: HTTP 404"]


def test_healthcheck_defaults_to_the_four_services_of_the_environment(userinfo):
    port = closed_port()
    env = {f"KONNECT_{s.upper()}_LISTEN": f"127.0.0.1:{port}" for s in SERVICES}
    env["KONNECT_USERINFO_LISTEN"] = userinfo
    result = healthcheck(**env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"http://127.0.0.1:{port}/health-check: "
                                          "Connection refused"] * 3


def test_healthcheck_gives_up_on_a_silent_listener():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        result = healthcheck("--timeout", "0.5", "--listen",
                             "127.0.0.1:%d" % silent.getsockname()[1])
    assert result.returncode == 1
    assert result.stdout.endswith(": no answer within 0.5s\n")


@pytest.mark.parametrize("proxy", ["caddy", "apache"])
def test_the_proxy_does_not_start_while_a_service_does_not_answer(tmp_path, userinfo, proxy):
    """konnect-program starts a proxy only once every service answers its health check
    (no 502 for a request to a service still starting): here one never does, so after
    KONNECT_PROXY_WAIT seconds it exits 1 (supervisord tries again) without running the
    proxy. The proxy binary is a stand-in that records being run."""
    ran = tmp_path / "proxy-ran"
    stub(tmp_path / "bin", proxy if proxy == "caddy" else "apache2", f'touch "{ran}"')
    env = {f"KONNECT_{s.upper()}_LISTEN": userinfo for s in SERVICES}
    env["KONNECT_TOKEN_LISTEN"] = f"127.0.0.1:{closed_port()}"
    result = subprocess.run([str(PROGRAM), proxy], capture_output=True, text=True, timeout=60,
                            env=clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                                          KONNECT_STATE_DIR=str(tmp_path / "state"),
                                          KONNECT_PROXY_WAIT="1", **env))
    assert result.returncode == 1 and not ran.exists()
    assert f"{env['KONNECT_TOKEN_LISTEN']}/health-check: Connection refused" in result.stderr
    assert "not starting the proxy" in result.stderr
    # all four answering (the one userinfo service stands for all): the proxy runs at once
    env["KONNECT_TOKEN_LISTEN"] = userinfo
    result = subprocess.run([str(PROGRAM), proxy], capture_output=True, text=True, timeout=60,
                            env=clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                                          KONNECT_STATE_DIR=str(tmp_path / "state"),
                                          KONNECT_PROXY_WAIT="1", **env))
    assert result.returncode == 0 and ran.exists(), result.stderr


def test_healthcheck_waits_until_every_url_answers(userinfo):
    port = closed_port()
    result = healthcheck("--wait", "0.5", "--listen", userinfo, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stdout == f"http://127.0.0.1:{port}/health-check: Connection refused\n"
    assert healthcheck("--wait", "5", "--listen", userinfo).returncode == 0


def test_healthcheck_refuses_bad_arguments():
    result = healthcheck("--listen", "no-port")
    assert result.returncode == 2 and "expected host:port" in result.stderr


@pytest.mark.parametrize("issuer, expected", [
    ("https://localhost:8443", "off 0"),
    ("https://LOCALHOST:8443", "off 0"),  # browsers fold the case
    ("https://app.localhost", "off 0"),
    ("https://127.0.0.1:9443", "off 0"),
    ("https://[::1]", "off 0"),
    ("https://[::1]:8443", "off 0"),
    ("https://id.example.com", "on 31536000"),
    ("https://ID.Example.com:8443/konnect", "on 31536000"),
])
def test_hsts_is_on_for_real_hosts_only(tmp_path, issuer, expected):
    """HSTS pins a host on every port (RFC 6797 §8.1): never by default for localhost."""
    fake = tmp_path / "caddy"
    fake.write_text('#!/bin/sh\necho "$KONNECT_HSTS $KONNECT_HSTS_MAX_AGE"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONNECT_", "OIDC_"))}
    env.update(PATH=f"{tmp_path}:{env['PATH']}", OIDC_ISSUER_IDENTIFIER=issuer,
               KONNECT_STATE_DIR=str(tmp_path / "state"), KONNECT_PROXY_WAIT="0")
    out = subprocess.run([str(PROGRAM), "caddy"], env=env, capture_output=True, text=True,
                         timeout=10)
    assert out.stdout.strip() == expected, out.stderr
    env["KONNECT_HSTS_MAX_AGE"] = "600"
    out = subprocess.run([str(PROGRAM), "caddy"], env=env, capture_output=True, text=True,
                         timeout=10)
    assert out.stdout.strip() == "on 600"
    env["KONNECT_HSTS_MAX_AGE"] = "a year"
    out = subprocess.run([str(PROGRAM), "caddy"], env=env, capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2 and "KONNECT_HSTS_MAX_AGE" in out.stderr
