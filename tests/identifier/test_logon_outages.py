"""Only a wrong password counts against the sign-in limits (10 per user, 50 per client IP in
5 minutes). Attempts are counted before the password is checked (concurrent guesses cannot
overshoot), and every answer that is not "wrong credentials" gives its hits back: an outage
of the user backend (slapd stopped, a Kopano server answering faults, a directory that
never answers) or of Redis is a 503 for as long as it lasts, and once it is over the user
signs in with the right password and the IP may try again; nobody is locked out by it."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import tornado.httpserver
import tornado.simple_httpclient
import tornado.testing

from services.identifier.api import LOGON_IP_LIMIT, LOGON_LIMIT
from services.identifier.app import make_app as identifier_app
from shared.deps import Core
from shared.store import Store
from tests.support.kopano_standin import KopanoStandIn, KopanoUser
from tests.support.op import ISSUER, ldap_flags, make_state, settings_for
from tests.support.services import PASSWORD, add_person
from tests.support.silent import SilentServer
from tests.support.users import cheap_hash

USER = "lena"
# the attempts made during an outage: more than the user's limit for her, with her own
# password, and more than the IP's limit in all (the others are unknown users)
DURING = [(USER, PASSWORD)] * (LOGON_LIMIT + 1) + \
    [(f"other{i}", "whatever") for i in range(LOGON_IP_LIMIT - LOGON_LIMIT)]
assert len(DURING) > LOGON_IP_LIMIT


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("logon-outages"))


def build(state, redis_url, flags) -> Core:
    return Core.with_users(settings_for("identifier", state, redis_url,
                                        [*flags, "--user-cache-ttl", "0"]))


def ldap_stopped(request, state, redis_url, stack):
    slapd = request.getfixturevalue("private_slapd")
    ou = slapd.add_ou("people-outage")
    add_person(slapd, ou, USER)
    core = build(state, redis_url, [*ldap_flags(slapd, ou), "--ldap-timeout", "2"])
    return SimpleNamespace(core=core, during=DURING, begin=slapd.stop, end=slapd.start)


def kc_failing(request, state, redis_url, stack):
    kc = stack.enter_context(KopanoStandIn([KopanoUser(USER, PASSWORD, 3, "Lena")]))
    core = build(state, redis_url, ["--identity-manager", "kc", "--kopano-server-default-uri",
                                    kc.url, "--kc-timeout", "2"])
    return SimpleNamespace(core=core, during=DURING, begin=lambda: setattr(kc, "fault", True),
                           end=lambda: setattr(kc, "fault", False))


def redis_refusing(keys: str, during: list):
    """Redis answers, but refuses the commands on all keys but `keys` (an ACL: NOPERM, as
    a misconfigured or half-failed Redis refuses them), in the middle of a sign-in."""
    def scenario(request, state, redis_url, stack):
        server, io_loop = request.getfixturevalue("private_redis"), request.getfixturevalue("io_loop")
        users = request.getfixturevalue("tmp_path") / "users.yaml"
        users.write_text(json.dumps({"users": [{"username": USER, "id": 3, "uuid": "u-lena",
                                                "password": cheap_hash(PASSWORD)}]}))
        core = build(state, redis_url, ["--users-file", str(users)])
        shared, core.store = core.store, Store.from_url(server.url)
        stack.callback(io_loop.run_sync, shared.close)
        admin = server.client()
        stack.callback(admin.close)

        def begin():
            admin.execute_command("ACL", "SETUSER", "default", "resetkeys", *keys.split())

        def end():
            admin.execute_command("ACL", "SETUSER", "default", "allkeys")

        return SimpleNamespace(core=core, during=during, begin=begin, end=end)
    return scenario


SCENARIOS = {
    "slapd stopped": ldap_stopped,
    "kopano server failing": kc_failing,
    # the IP's counter refused after the user's was counted: every attempt
    "redis refusing the ip counter": redis_refusing(
        "~konnect:[^r]* ~konnect:r[^a]* ~konnect:ratelimit:logon-user:*", DURING),
    # both counted and the password right, then the revocation list (the sign-in's
    # not-before) refused: only her sign-ins get that far
    "redis refusing the revocation list": redis_refusing(
        "~konnect:[^r]* ~konnect:ratelimit:*", [(USER, PASSWORD)] * (LOGON_IP_LIMIT + 1)),
}


@pytest.fixture(params=list(SCENARIOS))
def outage(request, state, redis_url, io_loop):
    with ExitStack() as stack:
        found = SCENARIOS[request.param](request, state, redis_url, stack)
        yield found
        io_loop.run_sync(found.core.close)


@pytest.fixture
def app(outage):
    return identifier_app(outage.core.settings, outage.core)


async def logon(http_client, base_url, username, password) -> int:
    resp = await http_client.fetch(
        base_url + "/signin/v1/identifier/_/logon", method="POST", raise_error=False,
        request_timeout=30, body=json.dumps({"state": "s", "params": [username, password, "1"]}),
        headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                 "Origin": ISSUER})
    return resp.code


@pytest.mark.gen_test(timeout=120)
async def test_an_outage_locks_nobody_out(http_client, base_url, outage):
    assert await logon(http_client, base_url, USER, PASSWORD) == 200
    outage.begin()
    try:
        answers = [await logon(http_client, base_url, u, p) for u, p in outage.during]
    finally:
        outage.end()
    assert set(answers) == {503}, answers
    # over: her password signs her in, and the IP still has all its attempts
    assert await logon(http_client, base_url, USER, PASSWORD) == 200
    assert await logon(http_client, base_url, "nobody", "wrong") == 204


@pytest.mark.gen_test(timeout=120)
async def test_wrong_passwords_still_count_after_an_outage(http_client, base_url, outage):
    """The give-back is for outages only: wrong passwords between 503s keep counting."""
    outage.begin()
    try:
        assert {await logon(http_client, base_url, USER, PASSWORD) for _ in range(3)} == {503}
    finally:
        outage.end()
    answers = [await logon(http_client, base_url, USER, f"wrong{i}") for i in range(LOGON_LIMIT)]
    assert set(answers) == {204}
    assert await logon(http_client, base_url, USER, PASSWORD) == 429


@pytest.fixture
def silent():
    with SilentServer() as server:
        yield server


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("backend", ["ldap", "kc"])
async def test_concurrent_sign_ins_to_a_silent_backend_are_503_not_429(state, redis_url,
                                                                       silent, io_loop, backend):
    """A directory or Kopano server that accepts connections and never answers: two waves
    of as many sign-ins as the limits allow, at once. Each attempt is counted while it
    waits (so the limits hold for concurrent ones) and given back with its 503, so the
    second wave is answered like the first."""
    flags = ["--identity-manager", "ldap", "--ldap-uri", f"ldap://127.0.0.1:{silent.port}",
             "--ldap-binddn", "cn=admin,dc=example,dc=test", "--ldap-bindpw", "x",
             "--ldap-basedn", "dc=example,dc=test", "--ldap-timeout", "1"] \
        if backend == "ldap" else ["--identity-manager", "kc", "--kopano-server-default-uri",
                                   f"http://127.0.0.1:{silent.port}/", "--kc-timeout", "1"]
    core = build(state, redis_url, flags)
    server = tornado.httpserver.HTTPServer(identifier_app(core.settings, core))
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    client = tornado.simple_httpclient.SimpleAsyncHTTPClient(force_instance=True,
                                                             max_clients=LOGON_IP_LIMIT + 10)
    wave = [(USER, PASSWORD)] * LOGON_LIMIT + \
        [(f"other{i}", "pw") for i in range(LOGON_IP_LIMIT - LOGON_LIMIT - 1)]
    try:
        for _ in range(2):
            answers = await asyncio.gather(*(logon(client, f"http://127.0.0.1:{port}", u, p)
                                             for u, p in wave))
            assert set(answers) == {503}, answers
    finally:
        client.close()
        server.stop()
        await core.close()
