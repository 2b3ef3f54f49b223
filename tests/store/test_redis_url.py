"""`--redis-url` (shared/redis_url.py): one server, Sentinel and Cluster URLs with their
parameters, refused with a clear message that never shows a password; and a pool that
runs out of connections answers "pool exhausted", not a lost connection."""

from __future__ import annotations

import asyncio

import pytest

from shared.redis_url import CLUSTER, SENTINEL, SINGLE, parse_url, redact
from shared.store import Store, StoreUnavailable


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_both_credentials():
    t = parse_url("redis+sentinel://konnect:data%40pw@10.0.0.1:26379,[::1]:26380,s3:26381"
                  "/mymaster/2?sentinel_username=sen&sentinel_password=s%26pw&replicas=1"
                  "&wait_timeout=500&max_connections=16")
    assert t.kind == SENTINEL and not t.tls
    assert t.hosts == (("10.0.0.1", 26379), ("::1", 26380), ("s3", 26381))
    assert (t.service, t.db) == ("mymaster", 2)
    assert (t.username, t.password) == ("konnect", "data@pw")           # the data nodes'
    assert (t.sentinel_username, t.sentinel_password) == ("sen", "s&pw")  # the Sentinels'
    assert (t.replicas, t.wait_timeout, t.max_connections) == (1, 0.5, 16)


def test_a_cluster_url_names_its_nodes_and_tls_options():
    t = parse_url("rediss+cluster://:pw@n1:7000,n2:7001?ssl_ca_certs=/etc/ca.pem"
                  "&ssl_check_hostname=no")
    assert t.kind == CLUSTER and t.tls and t.hosts == (("n1", 7000), ("n2", 7001))
    assert t.password == "pw" and t.replicas is None  # default: every replica of a shard
    assert dict(t.tls_options) == {"ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": False}


def test_a_one_server_url_stays_what_it_was_without_our_parameters():
    t = parse_url("redis://:pw@127.0.0.1:6379/3?replicas=1&socket_keepalive=true")
    assert t.kind == SINGLE and t.replicas == 1
    assert t.url == "redis://:pw@127.0.0.1:6379/3?socket_keepalive=true"
    assert parse_url("unix:///run/redis.sock?db=1").kind == SINGLE


@pytest.mark.parametrize("url,why", [
    ("redis+sentinel://:hunter2@h:26379", "service"),
    ("redis+sentinel://:hunter2@h:26379/m/1/x", "/service_name[/db]"),
    ("redis+sentinel://:hunter2@h/m", "needs a port"),
    ("redis+sentinel://:hunter2@h:99999/m", "1 to 65535"),
    ("redis+sentinel://:hunter2@h:1/m?sentinel_password=hunter2&replicas=x", "replicas"),
    ("redis+cluster://:hunter2@h:1?sentinel_password=hunter2", "redis+sentinel"),
    ("redis+cluster://:hunter2@h:1/3", "database 0"),
    ("redis+cluster://:hunter2@h:1?ssl_ca_certs=/ca", "needs TLS"),
    ("redis+cluster://:hunter2@h:1?nope=1", "unknown parameter"),
    ("redis+cluster://:hunter2@h:1?replicas=1&replicas=2", "twice"),
    ("redis://:hunter2@h:1,h2:2/0", "several hosts"),
    ("memcached://:hunter2@h:1", "must start with"),
])
def test_bad_urls_are_refused_clearly_without_the_password(url, why):
    with pytest.raises(ValueError) as err:
        parse_url(url)
    assert why in str(err.value) and "hunter2" not in str(err.value)


def test_redact_hides_every_password():
    shown = redact("redis+sentinel://u:p1@h:1/m?sentinel_password=p2&replicas=1")
    assert "p1" not in shown and "p2" not in shown and "replicas=1" in shown


@pytest.mark.gen_test(timeout=30)
async def test_more_calls_than_connections_during_a_pause_wait_for_a_connection(private_redis):
    """150 concurrent calls while Redis pauses for half a second: they queue for the 64
    connections of the pool and all succeed (redis-py alone answered "too many
    connections", taken for a lost connection)."""
    store = Store.from_url(private_redis.url)
    try:
        assert await store.ping()
        with private_redis.client() as raw:
            raw.execute_command("CLIENT", "PAUSE", 500, "ALL")
        results = await asyncio.gather(
            *(store.is_revoked(sub="s", iat=store.now() + 5, jti=f"j{i}") for i in range(150)),
            return_exceptions=True)
        assert results == [False] * 150
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_pool_busy_for_the_whole_timeout_is_a_clear_503(private_redis):
    store = Store.from_url(private_redis.url + "?max_connections=2", socket_timeout=0.3,
                           connect_timeout=0.3)
    try:
        assert await store.ping()
        for _ in range(store.max_connections):  # every connection held by other requests
            await store._slots.acquire()
        with pytest.raises(StoreUnavailable) as err:
            await store.is_revoked(sub="s", iat=store.now(), jti="j")
        assert "connection pool exhausted: all 2 connections" in str(err.value)
        assert err.value.retry_after
    finally:
        await store.close()
