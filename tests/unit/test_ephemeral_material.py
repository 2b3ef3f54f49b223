"""Without a configured signing key or encryption secret, the group shares one of each
through Redis (shared/ephemeral.py): every process signs with, and accepts, the same key,
whatever the order they start in, and after Redis lost it; nothing is signed with a
process's own key before the group's is confirmed; Redis down fails closed."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shared import jose
from shared.config import load_settings
from shared.deps import Core
from shared.ephemeral import MaterialError
from shared.keys import KeysUnavailable
from shared.store import StoreUnavailable

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.example.test"


def argv(redis_url: str, prefix: str, *extra: str) -> list[str]:
    return ["--iss", ISSUER, "--redis-url", redis_url, "--redis-prefix", prefix, *extra]


def core_of(redis_url: str, prefix: str, *extra: str) -> Core:
    """A process's dependencies with no signing key and no secret configured (unless
    `extra` configures one)."""
    return Core.from_settings(load_settings(argv(redis_url, prefix, *extra), {}, service="token"))


@pytest.fixture
def prefix() -> str:
    return f"eph-{secrets.token_hex(4)}:"


@pytest.fixture
def cores(redis_url, prefix, io_loop):
    made = []

    def make(*extra: str) -> Core:
        made.append(core_of(redis_url, prefix, *extra))
        return made[-1]

    yield make
    for core in made:
        io_loop.run_sync(core.close)


def agree(cores: list) -> None:
    """Every core verifies what every other signed and opens what it sealed."""
    for signer in cores:
        token = signer.tokens.sign({"sub": "x", "by": id(signer)})
        sealed = signer.sealer.seal("logon", {"by": id(signer)}, 60)
        for other in cores:
            assert other.tokens.verify(token)["by"] == id(signer)
            assert other.sealer.unseal("logon", sealed) == {"by": id(signer)}


@pytest.mark.gen_test
async def test_processes_racing_at_start_share_one_key_and_one_secret(redis_url, prefix):
    """Four real processes start at once against an empty Redis: one record wins, and each
    signs with it; a fifth process (this one) verifies every token and opens every seal."""
    script = (
        "import asyncio, json, sys\n"
        "from shared.config import load_settings\n"
        "from shared.deps import Core\n"
        "async def main():\n"
        "    core = Core.from_settings(load_settings(sys.argv[1:], {}, service='token'))\n"
        "    await core.shared_material.ensure()\n"
        "    print(json.dumps({'token': core.tokens.sign({'sub': 'racer'}),\n"
        "                      'sealed': core.sealer.seal('logon', {'ok': 1}, 600)}))\n"
        "    await core.close()\n"
        "asyncio.run(main())\n")
    racers = [subprocess.Popen([sys.executable, "-c", script, *argv(redis_url, prefix)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for _ in range(4)]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
        assert b"NO --SIGNING-PRIVATE-KEY AND --ENCRYPTION-SECRET CONFIGURED" in err
    mine = core_of(redis_url, prefix)
    try:
        await mine.shared_material.ensure()
        kids = {jose.unverified_header(r["token"])["kid"] for r in results}
        assert kids == {mine.keyring.signer.kid}  # one key for all five
        for result in results:
            assert mine.tokens.verify(result["token"]) == {"sub": "racer"}
            assert mine.sealer.unseal("logon", result["sealed"]) == {"ok": 1}
    finally:
        await mine.close()


@pytest.mark.gen_test
async def test_nothing_is_signed_or_sealed_before_the_groups_material_is_confirmed(cores):
    core = cores()
    with pytest.raises(KeysUnavailable):
        core.tokens.sign({"sub": "x"})
    with pytest.raises(KeysUnavailable):
        core.sealer.seal("logon", {}, 60)
    with pytest.raises(KeysUnavailable):
        core.keyring.jwks()
    await core.shared_material.ensure()
    assert core.tokens.verify(core.tokens.sign({"sub": "x"})) == {"sub": "x"}


@pytest.mark.gen_test
async def test_a_process_started_later_takes_the_groups_material(cores):
    first = cores()
    await first.shared_material.ensure()
    token = first.tokens.sign({"sub": "early"})
    later = cores()
    await later.shared_material.ensure()
    assert later.tokens.verify(token) == {"sub": "early"}
    assert later.keyring.jwks() == first.keyring.jwks()
    agree([first, later])


@pytest.mark.gen_test
async def test_when_redis_loses_it_every_process_ends_up_with_the_same_material(cores, redis_server,
                                                                               prefix, caplog):
    """A flush (or a Redis restarted without its data), then a new process stores a new
    record before the running ones notice: at their next request they take it, drop their
    old key, and all agree again; nobody keeps signing with a key the others lack."""
    a, b = cores(), cores()
    await asyncio.gather(a.shared_material.ensure(), b.shared_material.ensure())
    old_token = a.tokens.sign({"sub": "before"})
    raw = redis_server.client()
    try:
        assert raw.delete(f"{prefix}ephemeral:key-and-secret") == 1
    finally:
        raw.close()
    c = cores()
    await c.shared_material.ensure()                    # first after the loss: a new record
    assert c.keyring.signer.kid != a.keyring.signer.kid
    with caplog.at_level(logging.WARNING, logger="konnect.ephemeral"):
        await asyncio.gather(a.shared_material.ensure(), b.shared_material.ensure())
    assert any("changed in Redis" in r.getMessage() for r in caplog.records)
    assert a.keyring.signer.kid == b.keyring.signer.kid == c.keyring.signer.kid
    agree([a, b, c])
    for core in (a, b, c):  # the old key is gone everywhere alike
        with pytest.raises(Exception, match="unknown kid|signature"):
            core.tokens.verify(old_token)


@pytest.mark.gen_test
async def test_when_redis_loses_it_and_a_running_process_asks_first_it_puts_it_back(
        cores, redis_server, prefix):
    a = cores()
    await a.shared_material.ensure()
    token = a.tokens.sign({"sub": "kept"})
    raw = redis_server.client()
    try:
        raw.delete(f"{prefix}ephemeral:key-and-secret")
        await a.shared_material.ensure()                 # the next request: put back
        assert raw.ttl(f"{prefix}ephemeral:key-and-secret") > 86000
    finally:
        raw.close()
    later = cores()
    await later.shared_material.ensure()
    assert later.tokens.verify(token) == {"sub": "kept"}  # tokens and sign-ins survive


@pytest.mark.gen_test
async def test_redis_down_fails_closed_with_503(io_loop):
    from tests.support.group import free_port  # nothing listens there
    core = core_of(f"redis://127.0.0.1:{free_port()}/0", "down:", "--redis-timeout", "1")
    try:
        with pytest.raises(StoreUnavailable):
            await core.shared_material.ensure()
        with pytest.raises(KeysUnavailable):
            core.tokens.sign({"sub": "x"})
    finally:
        await core.close()


@pytest.mark.gen_test
async def test_a_configured_secret_seals_the_shared_key_in_redis(cores, redis_server, prefix,
                                                                 tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_bytes(secrets.token_bytes(32))
    a = cores("--encryption-secret", str(secret))
    await a.shared_material.ensure()
    name = a.shared_material.name
    assert name.startswith("key.") and not a.sealer.ephemeral
    raw = redis_server.client()
    try:
        record = orjson.loads(raw.get(f"{prefix}ephemeral:{name}"))
    finally:
        raw.close()
    assert set(record) == {"v", "kid", "sealed_key"}  # no private key member in the clear
    b = cores("--encryption-secret", str(secret))
    await b.shared_material.ensure()
    agree([a, b])
    other = tmp_path / "other.key"
    other.write_bytes(secrets.token_bytes(32))
    c = cores("--encryption-secret", str(other))     # another secret: another record
    assert c.shared_material.name != name


@pytest.mark.gen_test
async def test_a_record_this_process_cannot_use_is_503_and_left_alone(cores, redis_server,
                                                                      prefix, caplog):
    raw = redis_server.client()
    key = f"{prefix}ephemeral:key-and-secret"
    try:
        raw.set(key, b'{"v": 1, "kid": "x", "key": {"kty": "RSA"}, "secret": "c2hvcnQ"}', ex=60)
        core = cores()
        with caplog.at_level(logging.ERROR, logger="konnect.ephemeral"):
            with pytest.raises(MaterialError):
                await core.shared_material.ensure()
        assert raw.get(key).startswith(b'{"v": 1, "kid": "x"')  # never overwritten
        assert any(key in r.getMessage() for r in caplog.records)
    finally:
        raw.close()
    with pytest.raises(KeysUnavailable):
        core.tokens.sign({"sub": "x"})


def test_every_process_warns_loudly_and_never_logs_the_material(redis_url, prefix, caplog,
                                                                io_loop):
    with caplog.at_level(logging.WARNING):
        core = core_of(redis_url, prefix)
    try:
        [warning] = [r.getMessage() for r in caplog.records if r.name == "konnect.ephemeral"]
        assert "NO --SIGNING-PRIVATE-KEY AND --ENCRYPTION-SECRET CONFIGURED" in warning
        assert f"{prefix}ephemeral:key-and-secret" in warning and "Not for production" in warning
        io_loop.run_sync(core.shared_material.ensure)
        private = core.keyring.signer.private.private_numbers()
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert str(private.d) not in logged and str(private.p) not in logged
    finally:
        io_loop.run_sync(core.close)


@pytest.mark.gen_test(timeout=30)
async def test_every_request_confirms_the_material_and_the_jwks_follows_it(cores, http_client,
                                                                          redis_server, prefix):
    """`BaseHandler.prepare`: a request that may sign or verify first asks Redis; the JWKS
    of a running process shows the group's key after Redis lost the old one and another
    process made a new one; the health check does not depend on it."""
    import tornado.httpserver
    import tornado.testing

    from services.token.app import make_app
    core = cores()
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_app(core.settings, core))
    server.add_sockets([sock])
    url = f"http://127.0.0.1:{port}"
    try:
        first = json.loads((await http_client.fetch(url + "/konnect/v1/jwks.json")).body)
        assert [k["kid"] for k in first["keys"]] == [core.keyring.signer.kid, "default"]
        raw = redis_server.client()
        try:
            raw.delete(f"{prefix}ephemeral:key-and-secret")
        finally:
            raw.close()
        newcomer = cores()
        await newcomer.shared_material.ensure()
        again = json.loads((await http_client.fetch(url + "/konnect/v1/jwks.json")).body)
        assert again == newcomer.keyring.jwks() != first
        redis_server.stop()
        try:
            down = await http_client.fetch(url + "/konnect/v1/jwks.json", raise_error=False)
            assert down.code == 503 and json.loads(down.body)["error"] == "temporarily_unavailable"
            health = await http_client.fetch(url + "/health-check", raise_error=False)
            assert health.code == 200
        finally:
            redis_server.start()
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.gen_test
async def test_concurrent_first_requests_of_a_process_take_one_record_quietly(cores, caplog):
    core = cores()
    with caplog.at_level(logging.WARNING, logger="konnect.ephemeral"):
        await asyncio.gather(*(core.shared_material.ensure() for _ in range(8)))
    assert not [r for r in caplog.records if "changed" in r.getMessage()]
    other = cores()
    await other.shared_material.ensure()
    agree([core, other])
