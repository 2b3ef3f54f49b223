"""Grants under load across real Redis failovers, on loopback: a primary with two replicas
and three Sentinels (SENTINEL FAILOVER, kill -9 of the primary, CLIENT PAUSE of the
primary), and a three-primary Redis Cluster (a primary killed). The smaller variant of the
failover suite (bench/failover.py runs ten of each over ten thousand grants; its results are
in docs/operations.md).

Whatever the failover: no code or refresh token is answered 200 twice, no revocation that
was answered 200 is lost, no answer is a 500, and the token service serves grants again by
itself (tests/support/failover.py describes the load and what is checked)."""

from __future__ import annotations

import gc
import json
import logging

import pytest

from tests.support.failover import run_token_service
from tests.support.redis_ha import ClusterGroup, SentinelGroup

pytestmark = [
    pytest.mark.op(service="token", apps=("token",)),
    # redis-py keeps a pool's in-use connections in a WeakSet: a Sentinel connection whose
    # connect was cut short by a failover is closed by the garbage collector, not the pool
    pytest.mark.filterwarnings("ignore:unclosed Connection:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]

SERVING_AGAIN_WITHIN = 20.0  # seconds after a failover began (the requirement)


async def _run(state, url: str, failovers, grants: int) -> dict:
    report = await run_token_service(state, url, failovers, grants=grants, concurrency=8,
                                     gap=2.0, settle=3.0)
    gc.collect()  # those connections go now, under this module's warning filters
    return report


def _assert_safe(report: dict) -> None:
    print("failover report:", json.dumps(report))  # shown when the test fails
    assert report["double_spends"] == 0, report
    assert report["lost_revocations"] == 0, report
    assert report["bad_statuses"] == {}, report  # no 500, no 503 without Retry-After
    assert report["grants_ok"] > 0 and report["revocations_ok"] > 0, report
    for event in report["failovers"]:
        assert event["serving_again_after_s"] <= SERVING_AGAIN_WITHIN, event


@pytest.mark.gen_test(timeout=300)
async def test_sentinel_failovers_spend_nothing_twice_and_lose_no_revocation(
        state, tmp_path_factory, caplog):
    caplog.set_level(logging.INFO, logger="konnect.store")
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        report = await _run(state, group.url(), [
            ("SENTINEL FAILOVER", group.failover),
            ("kill -9 of the primary", group.kill_primary),
            ("CLIENT PAUSE of the primary", group.pause_primary)], grants=600)
    _assert_safe(report)
    assert [e["kind"] for e in report["failovers"]] == [
        "SENTINEL FAILOVER", "kill -9 of the primary", "CLIENT PAUSE of the primary"]
    # every write waited for every replica: each promoted replica had them all, so no
    # failover may start a new generation (which would sign every user out)
    store_log = [r.getMessage() for r in caplog.records if r.name == "konnect.store"]
    assert sum("took over from" in m for m in store_log) == 3, store_log
    assert not [m for m in store_log if "is not the server" in m]


@pytest.mark.gen_test(timeout=300)
async def test_a_cluster_primary_killed_spends_nothing_twice_and_loses_no_revocation(
        state, tmp_path_factory, caplog):
    caplog.set_level(logging.INFO, logger="konnect.store")
    with ClusterGroup(tmp_path_factory.mktemp("cluster")) as group:
        report = await _run(state, group.url(), [("cluster primary killed", group.kill_master)],
                            grants=400)
    _assert_safe(report)
    store_log = [r.getMessage() for r in caplog.records if r.name == "konnect.store"]
    assert any("took over from" in m for m in store_log), store_log
    assert not [m for m in store_log if "is not the server" in m]
