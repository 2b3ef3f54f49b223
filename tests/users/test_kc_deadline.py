"""One deadline per logon and per lookup of the kc backend (--kc-timeout), whatever the
number of SOAP requests and Redis round trips inside it: against a Kopano server that
accepts TCP and never answers, 50 concurrent sign-ins answer 503 within the timeout + 1 s,
and so do 50 concurrent lookups, with a global session and with per-user sessions."""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.simple_httpclient

from services.identifier.app import make_app as identifier_app
from shared.deps import Core
from shared.users import BackendUnavailable
from tests.support.op import ISSUER, make_state, settings_for
from tests.support.silent import SilentServer

TIMEOUT = 2          # --kc-timeout, seconds
BOUND = TIMEOUT + 1  # every answer within one deadline (and a second for the rest)
CONCURRENT = 50


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("kc-deadline"))


@pytest.fixture
def silent():
    with SilentServer() as server:
        yield server


@pytest.fixture(params=["per-user sessions", "global session"])
def core(request, state, redis_url, silent, io_loop):
    env = ["--kopano-server-username", "konnect"] if request.param == "global session" else []
    settings = settings_for("identifier", state, redis_url, [
        "--identity-manager", "kc", "--kopano-server-default-uri",
        f"http://127.0.0.1:{silent.port}/", "--kc-timeout", str(TIMEOUT), *env])
    core = Core.with_users(settings)
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return identifier_app(core.settings, core)


async def timed(awaitable):
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        result = await awaitable
    except BackendUnavailable as err:
        result = err
    return result, loop.time() - start


@pytest.mark.gen_test(timeout=60)
async def test_fifty_concurrent_sign_ins_to_a_silent_server_answer_503_within_the_timeout(
        core, http_server, base_url, silent):
    """Each sign-in's backend call ends within the timeout + 1 s (measured around the real
    call); the HTTP answers come at most a little later, and well before the three timeouts
    the backend used to allow a call."""
    backend_calls = []
    authenticate = core.users.authenticate

    async def measured(username, password):
        result, seconds = await timed(authenticate(username, password))
        backend_calls.append(seconds)
        if isinstance(result, Exception):
            raise result
        return result

    core.users.authenticate = measured
    client = tornado.simple_httpclient.SimpleAsyncHTTPClient(force_instance=True,
                                                             max_clients=CONCURRENT + 10)

    async def sign_in(i):
        return await client.fetch(
            base_url + "/signin/v1/identifier/_/logon", method="POST", raise_error=False,
            request_timeout=30, body=json.dumps({"state": "s", "params": [f"user{i}", "pw", "1"]}),
            headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                     "Origin": ISSUER})

    try:
        answers = await asyncio.gather(*(timed(sign_in(i)) for i in range(CONCURRENT)))
    finally:
        client.close()
    assert [resp.code for resp, _ in answers] == [503] * CONCURRENT
    assert all(b"temporarily_unavailable" in resp.body for resp, _ in answers)
    assert len(backend_calls) == CONCURRENT and max(backend_calls) <= BOUND
    assert max(seconds for _, seconds in answers) < 3 * TIMEOUT
    assert silent.accepted >= 1                          # it really hung on the server


@pytest.mark.gen_test(timeout=60)
async def test_fifty_concurrent_lookups_of_a_silent_server_are_unavailable_within_the_timeout(
        core, silent):
    users = core.users
    calls = [users.lookup("Mg") if i % 2 else users.current("Mg", {"kc.i.id": "x"})
             for i in range(CONCURRENT)]
    answers = await asyncio.gather(*(timed(call) for call in calls))
    assert all(isinstance(result, BackendUnavailable) for result, _ in answers)
    assert max(seconds for _, seconds in answers) <= BOUND
    assert silent.accepted >= 1
