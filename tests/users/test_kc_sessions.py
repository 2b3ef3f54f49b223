"""The kc backend with per-user Kopano sessions (no KOPANO_SERVER_USERNAME, no client
certificate), as Konnect's identifier/backends/kc.go: the logon's own session is kept for
the user, later lookups run on it, and when it is gone a single sign-on logon (KCOIDC, an
access token of this OP for the user's entry ID) makes a new one. Every backend here is
another "process": its own KCBackend and Core, sharing one real Redis.

Against the Kopano SOAP stand-in (tests/support/kopano_standin.py), which checks the
KCOIDC token against the OP's published keys as kopano-server with libkcoidc does."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
import redis

from shared import discovery
from shared.config import load_settings
from shared.deps import Core
from shared.identity import Identity
from shared.keys import load_keyring
from shared.users.kc import UserSessions, make_abeid
from tests.support.kopano_standin import KopanoStandIn, KopanoUser, NO_UID_AUTH
from tests.support.op import make_state, settings_for

ALICE_ENTRY_ID = base64.b64encode(make_abeid(b"2", 3)).decode()  # as the server sends it
REBUILT_ENTRY_ID = base64.b64encode(make_abeid(b"2")).decode()   # from the raw subject: id 0


def make_users():
    return [KopanoUser("alice", "correct horse", 3, "Alice Example", "alice@example.test",
                       exid=b"2"),
            KopanoUser("bob", "builder", 4, "Bob Builder", "bob@example.test", exid=b"bob")]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("kc-sessions"))


@pytest.fixture
def kc():
    with KopanoStandIn(make_users(), unix_socket=True) as server:
        yield server


@pytest.fixture
def processes(state, redis_url, kc, io_loop):
    """`processes(n)`: n Cores (as n service processes) with the kc backend in per-user
    mode; the stand-in trusts the OP's keys as published in JWKS and discovery."""
    made = []

    def make(n=1, uri=None, extra=()):
        for _ in range(n):
            settings = settings_for("identifier", state, redis_url, [
                "--identity-manager", "kc", "--kopano-server-default-uri", uri or kc.url,
                "--kc-timeout", "5", "--user-cache-ttl", "0", *extra])
            made.append(Core.with_users(settings))
        core = made[0]
        kc.trust_issuer(core.keyring.jwks(),
                        discovery.document(core.settings, core.keyring)[
                            "id_token_signing_alg_values_supported"])
        return made[-n:]

    yield make
    for core in made:
        io_loop.run_sync(core.close)


def sso_sessions(kc):
    return [s.session for s in kc.state.sso_logons if s.er == 0]


@pytest.mark.gen_test
async def test_sign_in_keeps_the_users_own_session_and_every_process_looks_up_on_it(processes, kc):
    identifier, authorize, userinfo = processes(3)
    alice = await identifier.users.authenticate("alice", "correct horse")
    assert alice.raw_sub == "Mg" and alice.username == "alice"
    # a registered logon (no NO_REGISTER_SESSION), and never by the socket peer's uid
    assert [(name, flags) for name, _, flags, _ in kc.state.logons] == [("alice", NO_UID_AUTH)]
    [sid] = kc.live_sessions("alice")
    assert sid not in kc.state.logoffs
    for core in (authorize, userinfo, identifier):
        assert await core.users.current(alice.raw_sub, alice.kc_identity()) == alice
    assert kc.state.sso_logons == []                         # the logon's own session served
    assert [s for op, s in kc.state.session_calls if op == "getUser"][-3:] == [sid] * 3


@pytest.mark.gen_test
async def test_without_a_session_a_lookup_signs_on_with_a_kcoidc_token_of_this_op(processes, kc):
    authorize, token = processes(2)
    alice = await authorize.users.lookup("Mg")
    assert alice is not None and alice.email == "alice@example.test"
    [sso] = kc.state.sso_logons
    assert (sso.er, sso.reason, sso.prefix) == (0, "", b"KCOIDC")
    assert sso.username == REBUILT_ENTRY_ID                  # szUsername: the entry ID
    claims = sso.claims
    assert claims["iss"] == authorize.settings.iss and claims["aud"] == "konnect"
    assert claims["sub"] == REBUILT_ENTRY_ID
    assert claims["kc.identity"] == {"kc.i.id": REBUILT_ENTRY_ID}
    assert claims["kc.isAccessToken"] is True and "kopano/gc" in claims["kc.authorizedScopes"]
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert sso.header["alg"] in authorize.keyring.signing_algs
    # the new session is the user's for every process: no second single sign-on
    assert (await token.users.lookup("Mg")).username == "alice"
    assert len(kc.state.sso_logons) == 1
    assert kc.live_sessions("alice") == [sso.session]


@pytest.mark.gen_test
async def test_a_session_the_server_ended_is_replaced_by_single_sign_on(processes, kc):
    identifier, userinfo = processes(2)
    alice = await identifier.users.authenticate("alice", "correct horse")
    [first] = kc.live_sessions("alice")
    kc.advance(kc.session_timeout + 1)                       # idle: the server ends it
    assert kc.live_sessions("alice") == []
    assert await userinfo.users.current(alice.raw_sub, alice.kc_identity()) == alice
    assert ("getUser", first) in kc.state.session_calls      # tried, END_OF_SESSION
    [second] = sso_sessions(kc)
    assert kc.live_sessions("alice") == [second] and second != first
    # the entry ID the token carries (kc.i.id), as Konnect's GetUser takes it
    assert kc.state.sso_logons[0].username == ALICE_ENTRY_ID
    kc.end_sessions()                                        # a server restart
    assert await identifier.users.lookup(alice.raw_sub) == alice
    assert len(sso_sessions(kc)) == 2


@pytest.mark.gen_test
async def test_regular_use_keeps_the_session_alive(processes, kc):
    identifier, token = processes(2)
    await identifier.users.authenticate("alice", "correct horse")
    [sid] = kc.live_sessions("alice")
    for _ in range(4):                                       # 4 x 200 s > the 300 s timeout
        kc.advance(200)
        assert (await token.users.lookup("Mg")).username == "alice"
    assert kc.live_sessions("alice") == [sid] and kc.state.sso_logons == []


@pytest.mark.gen_test
async def test_refused_single_sign_on_means_the_user_is_gone(processes, kc, tmp_path):
    identifier, userinfo = processes(2)
    alice = await identifier.users.authenticate("alice", "correct horse")
    kc.set_active("alice", False)                            # disabled in Kopano
    kc.end_sessions()
    assert await userinfo.users.current(alice.raw_sub, alice.kc_identity()) is None
    assert kc.state.sso_logons[-1].reason == "no such user"
    kc.set_active("alice", True)
    kc.enable_sso = False                                    # server.cfg enable_sso = no
    assert await userinfo.users.lookup("Mg") is None
    kc.enable_sso = True
    other = make_state(tmp_path / "other")                   # another OP's keys
    kc.trust_issuer(load_keyring([Path(other["key"])]).jwks(), ["PS256", "RS256"])
    assert await userinfo.users.lookup("Mg") is None
    assert kc.state.sso_logons[-1].reason == "unknown kid"
    assert kc.live_sessions("alice") == []


@pytest.mark.gen_test
async def test_sign_out_logs_the_users_session_off(processes, kc):
    identifier, other = processes(2)
    alice = await identifier.users.authenticate("alice", "correct horse")
    [sid] = kc.live_sessions("alice")
    await other.users.end_session(alice)
    assert sid in kc.state.logoffs and kc.live_sessions("alice") == []
    assert await identifier.users.sessions.get(alice.raw_sub) == 0
    await other.users.end_session(alice)                     # nothing left: nothing to do
    assert kc.state.logoffs.count(sid) == 1


@pytest.mark.gen_test
async def test_session_ids_are_sealed_per_user_in_redis_and_never_logged(processes, kc, redis_url,
                                                                          caplog):
    caplog.set_level(logging.DEBUG)
    identifier, authorize = processes(2)
    await identifier.users.authenticate("alice", "correct horse")
    await authorize.users.lookup("Mg")
    kc.end_sessions()
    assert await authorize.users.lookup("bob") is None      # no such user: refused SSO
    assert await authorize.users.lookup("Ym9i") is not None  # bob by single sign-on
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.keys("*") if b"kc-session" in k]
        values = {k: client.get(k) for k in keys}
        ttls = [client.ttl(k) for k in keys]
    finally:
        client.close()
    assert len(keys) == 2 and all(0 < ttl <= 240 for ttl in ttls)
    sids = [str(s) for s in kc.state.sessions] + [str(s) for s in kc.state.logoffs]
    for key, value in values.items():
        assert b"Mg" not in key and b"Ym9i" not in key       # hashed names
        assert not any(sid.encode() in value for sid in sids)  # sealed, not in clear
    tokens = [s.token for s in kc.state.sso_logons]
    assert tokens and sids
    for line in caplog.messages:
        assert not any(sid in line for sid in sids) and not any(t in line for t in tokens)


@pytest.mark.gen_test
async def test_a_session_stored_under_another_users_key_does_not_open(processes, kc, redis_url):
    identifier, userinfo = processes(2)
    await identifier.users.authenticate("alice", "correct horse")
    client = redis.Redis.from_url(redis_url)
    try:
        [alice_key] = [k for k in client.keys("*") if b"kc-session" in k]
        sessions = userinfo.users.sessions
        bob_key = userinfo.store._kv_key(UserSessions.KIND, "Ym9i")
        client.set(bob_key, client.get(alice_key), ex=100)   # someone who can write Redis
    finally:
        client.close()
    assert await sessions.get("Ym9i") == 0
    bob = await userinfo.users.lookup("Ym9i")
    assert bob.username == "bob" and len(sso_sessions(kc)) == 1  # bob's own, by single sign-on


@pytest.mark.gen_test
async def test_a_local_admin_socket_peer_does_not_sign_anyone_in(processes, kc):
    """Kopano authenticates a logon over its unix socket by the peer's uid (root, kopano:
    local_admin_users) unless the client sends KOPANO_LOGON_NO_UID_AUTH (0x0001)."""
    kc.local_admin_peer = True
    [identifier] = processes(1, uri=kc.file_uri)
    assert await identifier.users.authenticate("alice", "wrong password") is None
    assert (await identifier.users.authenticate("alice", "correct horse")).username == "alice"
    assert kc.state.transports == {"unix"}


def test_access_tokens_live_the_session_timeout_minus_60_s_as_konnect(state):
    def expiration(*argv, env=None):
        settings = load_settings(["--iss", "https://idp.example.test", "--identity-manager",
                                  "kc", *argv], env or {}, service="token")
        return settings.access_token_expiration

    assert expiration() == 240                                 # 300 s sessions
    assert expiration(env={"KOPANO_SERVER_SESSION_TIMEOUT": "900"}) == 600
    assert expiration("--access-token-expiration", "100") == 100
    assert expiration(env={"KOPANO_SERVER_SESSION_TIMEOUT": "120"}) == 60
    assert expiration(env={"KOPANO_SERVER_USERNAME": "konnect"}) == 600  # global session
    ldap = load_settings(["--iss", "https://idp.example.test"], {}, service="token")
    assert ldap.access_token_expiration == 600


@pytest.mark.gen_test
async def test_an_unbound_per_user_backend_is_unavailable_not_a_wrong_answer(kc, state, redis_url):
    from shared.users import BackendUnavailable
    from shared.users.kc import KCBackend
    backend = KCBackend(kc.url, timeout=5)                   # no Core: no store to share in
    try:
        with pytest.raises(BackendUnavailable, match="store"):
            await backend.lookup("Mg")
        assert kc.state.calls == []
    finally:
        await backend.close()


def test_identity_of_a_sign_in_and_of_a_lookup_agree(state):
    """The Identity record the logon cookie carries keeps the entry ID lookups use."""
    alice = Identity(raw_sub="Mg", backend="identifier-kc", username="alice",
                     extra={"entry_id": ALICE_ENTRY_ID})
    assert Identity.from_record(json.loads(json.dumps(alice.to_record()))).kc_identity()[
        "kc.i.id"] == ALICE_ENTRY_ID
