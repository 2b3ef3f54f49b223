"""What the web application answers the cookie manager is untrusted input: cookie values,
nesting, types and size (shared/users/cookie.py)."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest
import tornado.httpserver

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
