"""Shared fixtures: real redis-server and slapd processes (tests/support/servers.py), and
the in-process OP of the service tests (tests/support/fixtures.py, the `op` marker).

Session servers start lazily, the first time a test asks for them. Tests that stop or pause
a server use `private_redis` / `private_slapd`, so the shared ones are never disturbed.
Async tests run on pytest-tornado (`@pytest.mark.gen_test`); fixtures are synchronous and
use the test's `io_loop` for asynchronous set-up and tear-down.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import tornado.ioloop

from shared.store import Store
from tests.support import apicheck
from tests.support.servers import RedisServer, SlapdServer
from tests.support.store import trusted_buckets

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture
def io_loop():
    """pytest-tornado's `io_loop`, without its leak: Tornado's `IOLoop()` remembers the
    current asyncio loop to restore it later, and when there is none asyncio makes one up on
    the spot, which nobody ever closes (found later by the garbage collector, in whatever
    test runs then). With no current loop set explicitly, there is nothing to remember."""
    asyncio.set_event_loop(None)
    loop = tornado.ioloop.IOLoop()
    loop.make_current()
    yield loop
    loop.clear_current()
    loop.close(all_fds=True)

apicheck.install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the tail of every running process group's log
    (tests/support/group.py): what the services said is the first thing a failure in CI
    needs, and the group's state directory is gone by then."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    from tests.support.group import RUNNING
    for group in list(RUNNING):
        report.sections.append((f"log of the group at {group.issuer} (last 6000 characters)",
                                group.output()[-6000:]))


@pytest.fixture(autouse=True)
def identifier_api_responses_match_the_description():
    """Fails a test that got an identifier API response docs/identifier-api.yaml does not
    describe (tests/support/apicheck.py); responses of module and session fixtures count
    for the first test that uses them."""
    yield
    found = apicheck.take()
    if found:
        pytest.fail("identifier API responses that do not match docs/identifier-api.yaml:\n"
                    + "\n".join(found[:20]), pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole run (TCP on 127.0.0.1 and a unix socket)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session Redis, database 0 flushed before the test (its buckets as a deployment
    that never lost state has them: `trusted_buckets`)."""
    if not redis_server.running:  # a test that stopped it by mistake must not break the rest
        redis_server.start()
    client = redis_server.client()
    try:
        client.flushdb()
        trusted_buckets(client)
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def store(redis_url, io_loop):
    """A `Store` on the flushed session Redis, closed after the test."""
    s = Store.from_url(redis_url)
    yield s
    io_loop.run_sync(s.close)


@pytest.fixture
def private_redis(tmp_path_factory):
    """A redis-server of this test's own, free to be stopped, restarted or paused."""
    with RedisServer(tmp_path_factory.mktemp("redis-private")) as server:
        yield server


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory):
    """One slapd for the whole run: suffix dc=example,dc=test with ou=people, admin bind."""
    with SlapdServer(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture
def private_slapd(tmp_path_factory):
    """A slapd of this test's own, free to be stopped and restarted."""
    with SlapdServer(tmp_path_factory.mktemp("slapd-private")) as server:
        yield server


def _ou_name(request) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name).strip("_")[:64] or "test"


@pytest.fixture
def ldap_ou(slapd_server, request) -> str:
    """An ou named after the test, under the base DN, deleted with its entries afterwards."""
    if not slapd_server.running:
        slapd_server.start()
    with slapd_server.temporary_ou(_ou_name(request)) as dn:
        yield dn
