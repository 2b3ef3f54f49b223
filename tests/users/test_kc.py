"""The Kopano server backend over SOAP (shared/users/kc.py), against the stand-in of the server
(tests/support/kopano_standin.py)."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import pytest
from lxml import etree

from shared.config import load_settings
from shared.identity import Identity, public_subject
from shared.users import BackendConfigError, BackendUnavailable, make_backend
from shared.users.kc import WSDL_PATH, KCBackend, abeid_exid, make_abeid
from tests.support.kopano_standin import KCERR_LOGON_FAILED, KopanoStandIn, KopanoUser, _envelope

# A v1 ABEID as a Kopano server sends it: user id 3, ExID "2" (base64 "Mg==", NUL-padded).
ALICE_ENTRY_ID = "AAAAAKwhqVBA0+5Isxn7p1MwRCUBAAAABgAAAAMAAABNZz09AAAAAA=="


BOB_PASSWORD = "hunter2 </szPassword><szPassword>x</szPassword> & <!-- \u00e9"
NO_UID_AUTH, NO_REGISTER_SESSION = 0x0001, 0x0002  # kcore.h


def make_users():
    return [
        KopanoUser("alice", "correct horse", 3, "Alice Example", "alice@example.test", exid=b"2",
                   given_name="Alicia", surname="Example-Props"),
        KopanoUser("bob", BOB_PASSWORD, 4, "Bob van Builder", "bob@example.test",
                   exid=b"\xfb\xef\xff"),
        KopanoUser("carol", "pw", 5, "Carol", non_active=True),
        KopanoUser("konnect", "service pass", 1),
    ]


@pytest.fixture
def kc():
    with KopanoStandIn(make_users(), unix_socket=True) as server:
        yield server


@pytest.fixture(params=["tcp", "unix"])
def uri(request, kc):
    yield kc.url if request.param == "tcp" else kc.file_uri
    assert kc.state.transports <= {request.param}             # really over that transport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend(uri, io_loop):
    b = KCBackend(uri, username="konnect", password="service pass", timeout=5)
    yield b
    io_loop.run_sync(b.close)


def global_logons(kc):
    return [entry for entry in kc.state.logons if entry[0] == "konnect"]


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections (backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


SOAP_EMPTY_BODY = (b'<?xml version="1.0"?><SOAP-ENV:Envelope xmlns:SOAP-ENV='
                   b'"http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body/></SOAP-ENV:Envelope>')


@pytest.fixture
def kopano():
    with KopanoStandIn([KopanoUser("alice", "pw", 3, "Alice", "a@x.test", exid=b"2"),
                        KopanoUser("konnect", "sp", 1)]) as server:
        yield server


def test_abeid_helpers_agree_with_a_server_entry_id():
    raw = base64.b64decode(ALICE_ENTRY_ID)
    assert make_abeid(b"2", 3) == raw == KopanoUser("a", "", 3, exid=b"2").entry_id
    assert abeid_exid(raw) == b"2"
    assert abeid_exid(raw.rstrip(b"\0")) == b"2"
    assert abeid_exid(raw[:4] + bytes(16) + raw[20:]) is None       # another provider's GUID
    assert abeid_exid(b"garbage") is None and abeid_exid(None) is None


@pytest.mark.gen_test
async def test_logon_maps_claims_and_logs_off(backend, kc):
    alice = await backend.authenticate("ALICE", "correct horse")
    assert alice == Identity(
        raw_sub="Mg", backend="identifier-kc", username="alice", name="Alice Example",
        given_name="Alicia", family_name="Example-Props", email="alice@example.test",
        email_verified=True, numeric_id=3, uuid="Mg", extra={"entry_id": ALICE_ENTRY_ID})
    assert alice.sub == public_subject("Mg", "identifier-kc")
    bob = await backend.authenticate("bob", BOB_PASSWORD)        # no properties: split the name
    assert (bob.raw_sub, bob.given_name, bob.family_name) == ("--__", "Bob", "van Builder")
    user_logons = [e for e in kc.state.logons if e[0] != "konnect"]
    assert [(e[0], e[2]) for e in user_logons] == [("ALICE", NO_UID_AUTH | NO_REGISTER_SESSION),
                                                   ("bob", NO_UID_AUTH | NO_REGISTER_SESSION)]
    assert user_logons[1][1] == BOB_PASSWORD                    # XML-escaped on the way, intact
    assert [e[2] for e in global_logons(kc)] == [0]
    assert len(kc.state.sessions) == 1                          # only the global session
    await backend.close()
    assert kc.state.sessions == {}


@pytest.mark.gen_test
@pytest.mark.parametrize("username, password", [
    ("alice", "wrong"), ("alice", "Correct horse"), ("nobody", "correct horse"),
    ("carol", "pw"), ("alice", ""), ("", "correct horse"),
])
async def test_bad_credentials_give_none(backend, kc, username, password):
    assert await backend.authenticate(username, password) is None
    assert all(e[3] == KCERR_LOGON_FAILED for e in kc.state.logons)
    assert kc.state.sessions == {}


@pytest.mark.gen_test
async def test_lookup_returns_the_same_identity_until_the_user_is_removed(backend, kc):
    alice = await backend.authenticate("alice", "correct horse")
    assert await backend.lookup(alice.raw_sub) == alice
    bob = await backend.authenticate("bob", BOB_PASSWORD)
    assert await backend.lookup("--__") == bob
    kc.remove_user("alice")
    assert await backend.lookup(alice.raw_sub) is None
    assert await backend.lookup("NQ") is None                   # carol: not active
    for junk in ("", "!!", "Zm9v"):
        assert await backend.lookup(junk) is None


@pytest.mark.gen_test
async def test_global_session_is_reused_renewed_when_idle_and_after_end_of_session(kc):
    clock = Clock()
    b = KCBackend(kc.url, username="konnect", password="service pass", session_timeout=300,
                  now=clock)
    try:
        for _ in range(3):
            assert (await b.lookup("Mg")).username == "alice"
        assert len(global_logons(kc)) == 1
        first = next(iter(kc.state.sessions))
        clock.now += 241                                        # idle past timeout - 60 s
        assert (await b.lookup("Mg")).username == "alice"
        assert len(global_logons(kc)) == 2 and first in kc.state.logoffs
        kc.end_sessions()                                       # server restart: END_OF_SESSION
        assert (await b.lookup("Mg")).username == "alice"
        assert len(global_logons(kc)) == 3
    finally:
        await b.close()


@pytest.mark.gen_test
async def test_refused_global_session_is_unavailable_not_a_failed_logon(kc):
    b = KCBackend(kc.url, username="konnect", password="wrong service pass")
    try:
        with pytest.raises(BackendUnavailable, match="global session"):
            await b.authenticate("alice", "correct horse")
        with pytest.raises(BackendUnavailable, match="global session"):
            await b.lookup("Mg")
    finally:
        await b.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("where", ["stopped tcp", "missing socket", "silent server"])
async def test_unreachable_server_is_unavailable_quickly(kc, silent_port, tmp_path, where):
    uri = {"stopped tcp": kc.url, "missing socket": f"file://{tmp_path}/none.sock",
           "silent server": f"http://127.0.0.1:{silent_port}/"}[where]
    kc.stop()
    b = KCBackend(uri, username="konnect", password="service pass", timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await b.authenticate("alice", "correct horse")
        with pytest.raises(BackendUnavailable):
            await b.lookup("Mg")
        assert time.monotonic() - start < 3
    finally:
        await b.close()


@pytest.mark.gen_test
async def test_soap_faults_are_unavailable_not_a_failed_logon(backend, kc):
    kc.fault = True
    with pytest.raises(BackendUnavailable):
        await backend.authenticate("alice", "correct horse")
    kc.fault = False
    assert (await backend.authenticate("alice", "correct horse")).username == "alice"


@pytest.mark.gen_test
async def test_client_is_built_from_the_local_wsdl_without_network(kc, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access while building the SOAP client")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    b = KCBackend(kc.url)
    monkeypatch.undo()
    try:
        assert b._client.wsdl.location == str(WSDL_PATH)
        with pytest.raises(Exception, match="refusing to fetch"):
            b._client.transport.load("http://schemas.xmlsoap.org/soap/encoding/")
        tree = etree.parse(str(WSDL_PATH))
        assert not [e for e in tree.iter() if isinstance(e.tag, str)
                    and etree.QName(e).localname in ("import", "include", "redefine")]
    finally:
        await b.close()


@pytest.mark.gen_test
async def test_make_backend_builds_kc_from_settings(kc):
    settings = load_settings(
        ["--iss", "https://idp.example.test", "--identity-manager", "kc",
         "--kopano-server-default-uri", kc.file_uri],
        {"KOPANO_SERVER_USERNAME": "konnect", "KOPANO_SERVER_PASSWORD": "service pass"},
        service="identifier")
    b = make_backend(settings)
    try:
        assert isinstance(b.inner, KCBackend) and b.manager == "kc" and b.provider == "identifier-kc"
        assert (await b.authenticate("alice", "correct horse")).raw_sub == "Mg"
        assert (await b.lookup("Mg")).email == "alice@example.test"
    finally:
        await b.close()
    for bad in ("ftp://kopano/", "file://", "http:///nohost"):
        with pytest.raises(BackendConfigError):
            KCBackend(bad)
    with pytest.raises(BackendConfigError, match="https"):
        KCBackend("http://kopano:236/", client_certificate="c.pem", client_private_key="k.pem")


@pytest.mark.gen_test
async def test_concurrent_authenticate_calls_complete_without_blocking_the_loop(kc):
    kc.delay = 0.1                                             # each SOAP answer takes 100 ms
    b = KCBackend(kc.url, username="konnect", password="service pass", max_workers=4)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        logins = [("alice", "correct horse"), ("bob", BOB_PASSWORD), ("alice", "nope")] * 3
        start = time.monotonic()
        results = await asyncio.gather(*(b.authenticate(u, p) for u, p in logins))
        elapsed = time.monotonic() - start
        assert [r.username if r else None for r in results] == ["alice", "bob", None] * 3
        assert elapsed < 2.0          # one at a time: 9 logons + 12 lookups x 100 ms > 2.1 s
        assert ticks >= elapsed / 0.01 / 3
        assert len(global_logons(kc)) == 1                      # established once, shared
    finally:
        task.cancel()
        await b.close()


@pytest.mark.gen_test
async def test_trickling_server_is_unavailable_at_the_deadline_and_frees_every_worker(uri, kc):
    """A server that sends one byte every 50 ms never trips a 0.5 s read
    timeout; the overall deadline (the timeout) answers 503, and the workers let go, so the
    pool serves again as soon as the server does."""
    kc.trickle = 0.05
    b = KCBackend(uri, username="konnect", password="service pass", timeout=0.5, max_workers=2)
    try:
        start = time.monotonic()
        calls = [b.authenticate("alice", "correct horse"), b.lookup("Mg"),
                 b.authenticate("bob", BOB_PASSWORD), b.lookup("--__")]  # 4 calls, 2 workers
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert time.monotonic() - start < 1.5 + 1.0                        # one deadline
        assert await _wait_for(lambda: kc.trickling == 0, 2), "a worker still reads"
        kc.trickle = 0
        alice = await asyncio.wait_for(b.authenticate("alice", "correct horse"), 5)
        assert alice is not None and alice.username == "alice"
    finally:
        kc.trickle = 0
        await b.close()


@pytest.mark.gen_test
async def test_deadline_covers_waiting_for_the_global_session(kc):
    """A lookup queued behind a hung global-session logon answers within its own deadline."""
    kc.trickle = 0.05
    b = KCBackend(kc.url, username="konnect", password="service pass", timeout=0.3,
                  max_workers=4)
    try:
        start = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(b.lookup("Mg") for _ in range(4)), return_exceptions=True), 10)
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert time.monotonic() - start < 0.9 + 1.0
    finally:
        kc.trickle = 0
        await b.close()


def test_kc_timeout_setting_reaches_the_backend(kc):
    settings = load_settings(
        ["--iss", "https://idp.example.test", "--identity-manager", "kc",
         "--kopano-server-default-uri", kc.url, "--kc-timeout", "4"], {}, service="identifier")
    b = make_backend(settings)
    try:
        assert (b.timeout, b.deadline) == (4, 4)       # one deadline for a whole call
        assert b._client.transport.operation_timeout == 4
    finally:
        asyncio.run(b.close())
    default = load_settings(["--iss", "https://idp.example.test"], {}, service="identifier")
    assert default.kc_timeout == 10


@pytest.mark.gen_test(timeout=30)
async def test_kc_non_soap_answer_is_503_not_a_crash(kopano):
    backend = KCBackend(kopano.url, username="konnect", password="sp", timeout=2)
    try:
        for body in (b"garbage, not XML", SOAP_EMPTY_BODY):
            kopano.answer = lambda _request, b=body: (200, b)
            with pytest.raises(BackendUnavailable):
                await backend.authenticate("alice", "pw")
            with pytest.raises(BackendUnavailable):
                await backend.lookup("Mg")
    finally:
        await backend.close()


@pytest.mark.gen_test(timeout=30)
async def test_kc_answer_without_an_error_code_is_503_not_user_gone(kopano):
    backend = KCBackend(kopano.url, username="konnect", password="sp", timeout=2)
    real = kopano.answer

    def garbled_get_user(request: bytes):
        code, body = real(request)
        if b"getUserResponse" in body:  # the same answer with its `er` garbled
            body = _envelope("getUserResponse", [("er", "garbage")])
        return code, body

    kopano.answer = garbled_get_user
    try:
        with pytest.raises(BackendUnavailable):  # was None: "the user is gone", tokens dead
            await backend.lookup("Mg")
    finally:
        await backend.close()
