"""The container files agree with each other and with Konnect's Docker conventions, without
Docker: the image's entrypoint run on this host with a stand-in interpreter that prints what
it was given, and Caddy's own parser on the compose group's configuration.
(tests/deploy/test_containers.py runs all of it for real.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"

# Konnect's image (its Dockerfile): secret file variable -> (file name, variable it sets)
KONNECT_SECRETS = {
    "KONNECTD_SIGNING_PRIVATE_KEY_FILE": ("konnectd_signing_private_key", "KONNECTD_SIGNING_PRIVATE_KEY"),
    "KONNECTD_ENCRYPTION_SECRET_FILE": ("konnectd_encryption_secret", "KONNECTD_ENCRYPTION_SECRET"),
    "KONNECTD_KOPANO_SERVER_USERNAME_FILE": ("konnectd_kopano_server_username", "KOPANO_SERVER_USERNAME"),
    "KONNECTD_KOPANO_SERVER_PASSWORD_FILE": ("konnectd_kopano_server_password", "KOPANO_SERVER_PASSWORD"),
    "KONNECTD_LDAP_BIND_DN_FILE": ("konnectd_ldap_bind_dn", "LDAP_BINDDN"),
    "KONNECTD_LDAP_BIND_PASSWORD_FILE": ("konnectd_ldap_bind_password", "LDAP_BINDPW"),
}
# ours, in the same style: the access-token key (docs/operations.md, "Signing keys")
OUR_SECRETS = {
    "KONNECTD_ACCESS_TOKEN_SIGNING_KEY_FILE": ("konnectd_access_token_signing_key",
                                               "KONNECTD_ACCESS_TOKEN_SIGNING_KEY"),
}
ALL_SECRETS = {**KONNECT_SECRETS, **OUR_SECRETS}
PATHS = {"KONNECTD_SIGNING_PRIVATE_KEY", "KONNECTD_ENCRYPTION_SECRET",
         "KONNECTD_ACCESS_TOKEN_SIGNING_KEY"}  # the others: content


def image_env() -> dict:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"([A-Z_]+)=(\S+)", line))
    return env


def test_the_image_sets_konnects_docker_variables():
    env = image_env()
    assert env["KONNECTD_DOCKER_SECRETS_PATH"] == "/run/secrets"
    assert env["KONNECTD_LISTEN"] == "0.0.0.0:8777"
    for variable, (name, _) in ALL_SECRETS.items():
        assert env[variable] == name


def entrypoint(tmp_path: Path, *args: str, **env: str) -> dict:
    """Run the entrypoint with an interpreter that prints its argv and environment."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec python3 -c 'import json, os, sys; "
                    "print(json.dumps({\"argv\": sys.argv[1:], \"env\": dict(os.environ)}))' \"$@\"\n")
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("KONNECT", "KOPANO_", "LDAP_", "ARGS"))}
    base.update({k: v for k, v in image_env().items() if k != "PATH"})
    base.update(KONNECT_PYTHON=str(fake), KONNECTD_DOCKER_SECRETS_PATH=str(tmp_path / "secrets"),
                KONNECTD_USER="", **env)
    result = subprocess.run([str(ENTRYPOINT), *args], env=base, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_serve_runs_the_named_service_with_konnects_flags_and_args(tmp_path):
    out = entrypoint(tmp_path, "serve", "--iss=https://id.example.test", "kc",
                     KONNECT_SERVICE="userinfo", ARGS="--log-level debug")
    assert out["argv"] == ["-m", "services.userinfo", "--metrics-listen=0.0.0.0:6777",
                           "--iss=https://id.example.test", "kc", "--log-level", "debug"]
    assert out["env"]["KONNECTD_LISTEN"] == "0.0.0.0:8777"
    # flags first means serve, as in Konnect's image
    out = entrypoint(tmp_path, "--iss=https://id.example.test", KONNECT_SERVICE="token")
    assert out["argv"][:2] == ["-m", "services.token"]


def test_serve_without_a_service_is_refused_with_a_clear_message(tmp_path):
    for service in ("", "konnectd", "token userinfo"):
        result = subprocess.run([str(ENTRYPOINT), "serve", "kc"], capture_output=True, text=True,
                                timeout=30, env={"PATH": os.environ["PATH"],
                                                 "KONNECT_SERVICE": service})
        assert result.returncode == 2 and "set KONNECT_SERVICE" in result.stderr, service


def test_secret_files_set_konnects_variables(tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for variable, (name, _) in ALL_SECRETS.items():
        (secrets_dir / name).write_text(f"value of {name}")
    out = entrypoint(tmp_path, "serve", KONNECT_SERVICE="identifier",
                     KONNECTD_SIGNING_PRIVATE_KEY="/elsewhere.pem")
    for variable, (name, target) in ALL_SECRETS.items():
        expected = str(secrets_dir / name) if target in PATHS else f"value of {name}"
        assert out["env"][target] == expected, target  # a present file wins, as in Konnect
    # renamed through the *_FILE variables; a missing file sets nothing
    (secrets_dir / "my-key").write_text("k")
    out = entrypoint(tmp_path, "serve", KONNECT_SERVICE="identifier",
                     KONNECTD_SIGNING_PRIVATE_KEY_FILE="my-key",
                     KONNECTD_ENCRYPTION_SECRET_FILE="absent")
    assert out["env"]["KONNECTD_SIGNING_PRIVATE_KEY"] == str(secrets_dir / "my-key")
    assert "KONNECTD_ENCRYPTION_SECRET" not in out["env"]


def test_without_the_access_token_keys_file_konnects_two_secrets_are_enough(tmp_path):
    """Konnect's `docker run` mounts two secrets: no access-token key is set then, and the
    signing key signs access tokens, as in Konnect."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in ("konnectd_signing_private_key", "konnectd_encryption_secret"):
        (secrets_dir / name).write_text("x")
    out = entrypoint(tmp_path, "serve", KONNECT_SERVICE="token")
    assert out["env"]["KONNECTD_SIGNING_PRIVATE_KEY"] == str(secrets_dir / "konnectd_signing_private_key")
    assert "KONNECTD_ACCESS_TOKEN_SIGNING_KEY" not in out["env"]


def test_compose_gives_every_op_service_the_three_secrets_the_image_maps():
    """compose.yaml's secrets are the files the image's *_FILE variables name, all three
    from $KONNECT_SECRETS_DIR under their own names."""
    main = compose("compose.yaml")
    names = {name for name, _ in ALL_SECRETS.values()} - {
        "konnectd_kopano_server_username", "konnectd_kopano_server_password",
        "konnectd_ldap_bind_dn", "konnectd_ldap_bind_password"}
    assert names == {"konnectd_signing_private_key", "konnectd_encryption_secret",
                     "konnectd_access_token_signing_key"}
    assert set(main["secrets"]) == names
    for name, secret in main["secrets"].items():
        assert secret["file"] == "${KONNECT_SECRETS_DIR:-./secrets}/" + name
    for service in ("identifier", "authorize", "token", "userinfo"):
        assert set(main["services"][service]["secrets"]) == names, service


def test_a_service_name_runs_konnect_program_with_its_compose_address(tmp_path):
    out = entrypoint(tmp_path, "token", ARGS="--log-level debug")
    assert out["argv"] == ["-m", "services.token", "--listen", "0.0.0.0:8779",
                           "--log-level", "debug"]


def test_other_commands_run_as_given(tmp_path):
    result = subprocess.run([str(ENTRYPOINT), "sh", "-c", "echo $KONNECTD_ENCRYPTION_SECRET"],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"],
                                 "KONNECTD_DOCKER_SECRETS_PATH": str(tmp_path),
                                 "KONNECTD_ENCRYPTION_SECRET_FILE": "s"})
    assert result.returncode == 0 and result.stdout == "\n"
    (tmp_path / "s").write_bytes(b"x" * 32)
    result = subprocess.run([str(ENTRYPOINT), "sh", "-c", "echo $KONNECTD_ENCRYPTION_SECRET"],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"],
                                 "KONNECTD_DOCKER_SECRETS_PATH": str(tmp_path),
                                 "KONNECTD_ENCRYPTION_SECRET_FILE": "s"})
    assert result.stdout == f"{tmp_path / 's'}\n"


def compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_caddy_finds_the_token_replicas_by_the_token_service_name():
    services = compose("compose.yaml")["services"]
    env = services["caddy"]["environment"]
    assert env["KONNECT_TOKEN_DNS"] == "on"
    assert f"{env['KONNECT_TOKEN_DNS_NAME']}:{env['KONNECT_TOKEN_DNS_PORT']}" \
        == env["KONNECT_TOKEN_LISTEN"]
    assert env["KONNECT_TOKEN_DNS_NAME"] in services


def test_caddy_accepts_the_compose_configuration(tmp_path):
    """Caddy's own parser on deploy/Caddyfile with the caddy service's environment."""
    caddy = shutil.which("caddy")
    assert caddy, "caddy is installed by deploy/install-deps.sh"
    env = {k: str(v) for k, v in compose("compose.yaml")["services"]["caddy"]["environment"].items()}
    env = {k: re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    env.update(PATH=os.environ["PATH"], HOME=str(tmp_path), KONNECT_STATE_DIR=str(tmp_path))
    adapted = subprocess.run([caddy, "adapt", "--config", str(DEPLOY / "Caddyfile"),
                              "--adapter", "caddyfile"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert adapted.returncode == 0, adapted.stderr
    config = json.loads(adapted.stdout)
    handlers = [h for route in _routes(config) for h in route.get("handle", [])
                if h.get("handler") == "reverse_proxy"]
    dynamic = [h for h in handlers if "dynamic_upstreams" in h]
    assert len(dynamic) == 1  # the token route only
    assert dynamic[0]["dynamic_upstreams"] == {"source": "a", "name": "token", "port": "8779",
                                               "refresh": 2_000_000_000}
    assert dynamic[0]["load_balancing"]["selection_policy"] == {"policy": "round_robin"}


def _routes(node):
    if isinstance(node, dict):
        if "handle" in node:
            yield node
        for value in node.values():
            yield from _routes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _routes(value)


def test_the_debian_override_replaces_only_the_redis_and_caddy_images():
    override, main = compose("compose.debian.yaml"), compose("compose.yaml")
    assert set(override) == {"services"}
    assert set(override["services"]) == {"redis", "caddy"}
    for name, service in override["services"].items():
        assert set(service) == {"image", "build"}
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["build"]["args"]["BASE"] == \
            main["services"]["token"]["build"]["args"]["BASE"]  # one base for all


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "images/redis.Dockerfile",
                                        "images/caddy.Dockerfile"])
def test_every_image_takes_its_debian_base_as_a_build_argument(dockerfile):
    text = (DEPLOY / dockerfile).read_text()
    assert "ARG BASE=debian:bookworm-slim\n" in text
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and set(froms) == {"${BASE}"}
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
