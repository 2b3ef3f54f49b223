"""Fourth review, user backends: each test fails without its fix and runs against the real
thing (a web application stand-in on its own port, the Kopano stand-in, a real slapd)."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest
import tornado.httpserver
import tornado.testing
import tornado.web

from shared.users.base import BackendUnavailable
from shared.users.cookie import CookieBackend

ANSWER: dict = {}
SEEN_COOKIES: list = []


class WebAppMe(tornado.web.RequestHandler):
    """A web application's "who is signed in" endpoint whose answer each test sets."""

    async def post(self) -> None:
        SEEN_COOKIES.append(dict((k, v.value) for k, v in self.cookies.items()))
        if ANSWER.get("stream"):  # an endless answer, 16 KiB every 10 ms
            self.set_status(200)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                self.write(b" " * 16384)
                try:
                    await self.flush()
                except Exception:  # noqa: BLE001 - the OP hung up
                    return
                await asyncio.sleep(0.01)
            return self.finish()
        self.set_status(ANSWER.get("status", 200))
        self.finish(ANSWER.get("body", b""))


@pytest.fixture
def webapp(io_loop):
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/me", WebAppMe)]))
    server.add_sockets([sock])
    ANSWER.clear()
    SEEN_COOKIES.clear()
    backend = CookieBackend(f"http://127.0.0.1:{port}/me", ["webapp"], timeout=4.0)
    yield backend
    io_loop.run_sync(backend.close)
    server.stop()


@pytest.mark.gen_test
async def test_cookie_quoted_value_does_not_smuggle_another_cookie(webapp):
    ANSWER["status"] = 401
    await webapp.identify('webapp="x; admin=1"; admin=2')
    for seen in SEEN_COOKIES:  # the backend never sees a cookie outside the configured names
        assert set(seen) <= {"webapp"}, seen
    assert webapp.forwarded("webapp=abc; admin=2") == "webapp=abc"


@pytest.mark.gen_test
async def test_cookie_deeply_nested_answer_is_503_not_a_crash(webapp):
    ANSWER["body"] = '{"sub": "alice", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(BackendUnavailable):
        await webapp.identify("webapp=s")


@pytest.mark.gen_test
async def test_cookie_answer_with_wrong_types_is_refused(webapp):
    for doc in ({"sub": "alice", "name": {"first": "A"}}, {"sub": "alice", "email": ["a@x"]},
                {"sub": "a" * 60000}, {"sub": "alice\nadmin"}):
        ANSWER["body"] = json.dumps(doc)
        with pytest.raises(BackendUnavailable):
            await webapp.identify("webapp=s")
    ANSWER["body"] = json.dumps({"sub": "alice", "name": "Alice", "email": None, "id": 3})
    identity = await webapp.identify("webapp=s")
    assert (identity.raw_sub, identity.name, identity.email, identity.numeric_id) == \
        ("alice", "Alice", "", 3)
    ANSWER["body"] = json.dumps({"sub": "alice", "id": 2 ** 70})
    huge = await webapp.identify("webapp=s")  # was id 2**70: records could not be encoded
    assert huge.numeric_id is None and orjson.dumps(huge.to_record())


@pytest.mark.gen_test(timeout=20)
async def test_cookie_endless_answer_is_cut_off_at_the_cap(webapp):
    ANSWER["stream"] = True
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await webapp.identify("webapp=s")
    assert time.monotonic() - started < 2.0  # not the whole 4 s timeout


# --- kc: a Kopano server that answers 200 with something that is not a SOAP answer -------

from tests.support.kopano_standin import KopanoStandIn, KopanoUser, _envelope  # noqa: E402
from shared.users.kc import KCBackend  # noqa: E402

SOAP_EMPTY_BODY = (b'<?xml version="1.0"?><SOAP-ENV:Envelope xmlns:SOAP-ENV='
                   b'"http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body/></SOAP-ENV:Envelope>')


@pytest.fixture
def kopano():
    with KopanoStandIn([KopanoUser("alice", "pw", 3, "Alice", "a@x.test", exid=b"2"),
                        KopanoUser("konnect", "sp", 1)]) as server:
        yield server


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


# --- ldap, against the real slapd ------------------------------------------------------------

from shared.users.ldap import Attributes, LDAPBackend  # noqa: E402

LDAP_PASSWORD = "pw-4b"


@pytest.fixture
def ldap_make(slapd_server, ldap_ou):
    built = []

    def factory(**kw):
        backend = LDAPBackend(slapd_server.url, ldap_ou, binddn=slapd_server.admin_dn,
                              bindpw=slapd_server.admin_password, timeout=5, **kw)
        built.append(backend)
        return backend

    yield factory
    for backend in built:
        asyncio.run(backend.close())


def ldap_add(server, ou, uid, **extra):
    return server.add_user(ou, uid, LDAP_PASSWORD, uid.capitalize(), "Example",
                           extra_attrs=extra or None)


@pytest.mark.asyncio
async def test_ldap_uidnumber_beyond_64_bits_is_an_invalid_record_not_a_500(
        ldap_make, slapd_server, ldap_ou):
    ldap_add(slapd_server, ldap_ou, "huge", employeeNumber="9" * 5000)
    ldap_add(slapd_server, ldap_ou, "wide", employeeNumber=str(2 ** 64))
    ldap_add(slapd_server, ldap_ou, "fits", employeeNumber=str(-2 ** 63))
    backend = ldap_make(attributes=Attributes(uidnumber="employeeNumber"))
    assert await backend.authenticate("huge", LDAP_PASSWORD) is None  # was ValueError
    assert await backend.authenticate("wide", LDAP_PASSWORD) is None  # was unencodable
    fits = await backend.authenticate("fits", LDAP_PASSWORD)
    assert fits.numeric_id == -2 ** 63 and orjson.dumps(fits.to_record())


@pytest.mark.asyncio
async def test_ldap_binary_sub_attribute_values_give_distinct_subjects(
        ldap_make, slapd_server, ldap_ou):
    # two users whose octet-string sub attribute differs only in non-UTF-8 octets
    ldap_add(slapd_server, ldap_ou, "oct1", audio=b"\xff\xfe-1")
    ldap_add(slapd_server, ldap_ou, "oct2", audio=b"\xfe\xff-1")
    backend = ldap_make(attributes=Attributes(sub=("audio",)))
    one = await backend.authenticate("oct1", LDAP_PASSWORD)
    two = await backend.authenticate("oct2", LDAP_PASSWORD)
    assert one.raw_sub == "audio=%FF%FE-1" and two.raw_sub == "audio=%FE%FF-1"  # as Go encodes
    assert one.sub != two.sub  # was one subject ("audio=%EF%BF%BD%EF%BF%BD-1") for both


@pytest.mark.asyncio
async def test_ldap_non_ascii_sub_attribute_keeps_its_subject_and_round_trips(
        ldap_make, slapd_server, ldap_ou):
    slapd_server.add_user(ldap_ou, "jöns+x", LDAP_PASSWORD, "Jöns", "Example",
                          mail="jons@example.test", extra_attrs={"employeeNumber": "ä 1"})
    backend = ldap_make(attributes=Attributes(sub=("uid", "employeeNumber")))
    user = await backend.authenticate("jöns+x", LDAP_PASSWORD)
    assert user.raw_sub == "employeeNumber=%C3%A4+1&uid=j%C3%B6ns%2Bx"  # unchanged encoding
    assert await backend.lookup(user.raw_sub) == user
    assert await backend.lookup("employeeNumber=%C3%A4+1&uid=j%F6ns%2Bx") is None
