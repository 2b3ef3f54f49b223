"""`KONNECT_REDIS=sentinel make run`: the group on a Redis primary with two replicas and three
Sentinels (deploy/bin/konnect-program), its services pointed at the Sentinels. A user signed
in before a SENTINEL FAILOVER keeps working after it: the refresh token rotates once the
group serves new sign-ins again (within 20 s, by itself: no service restarted), and the
token it rotated cannot be spent a second time."""

from __future__ import annotations

import time

import pytest
import redis

from tests.support.agent import Agent
from tests.support.group import Group, free_port
from tests.support.http import basic

pytestmark = pytest.mark.group

SERVING_AGAIN_WITHIN = 20.0


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    ports = {f"KONNECT_{name}_LISTEN": f"127.0.0.1:{free_port()}"
             for name in ("REDIS_REPLICA1", "REDIS_REPLICA2", "SENTINEL1", "SENTINEL2",
                          "SENTINEL3")}
    with Group(tmp_path_factory.mktemp("group-sentinel"), token_procs=2,
               extra_env={"KONNECT_REDIS": "sentinel", **ports}) as g:
        yield g


def sentinel(g: Group) -> redis.Redis:
    host, port = g.env["KONNECT_SENTINEL1_LISTEN"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=5, decode_responses=True)


def primary_port(g: Group) -> int:
    with sentinel(g) as s:
        return int(s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "konnect")[1])


def replicas_online(g: Group) -> int:
    with redis.Redis(host="127.0.0.1", port=primary_port(g), socket_timeout=5) as primary:
        info = primary.info("replication")
    return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
               and v.get("state") == "online")


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def refresh(g: Group, agent: Agent, token: str):
    demo = g.demo
    return agent.session.post(g.issuer + "/konnect/v1/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": token},
        headers={"Authorization": basic(demo["client_id"], demo["client_secret"])})


def test_the_ha_variant_serves_through_a_sentinel_failover(group):
    g = group
    pids = {p: g.pids(p) for p in ("token", "userinfo", "authorize", "identifier")}
    # both replicas in sync with the primary (until then it refuses writes: 503) and known
    # to the Sentinels
    wait_for("the Sentinels see two replicas", lambda: len(
        sentinel(g).execute_command("SENTINEL", "REPLICAS", "konnect")) == 2)
    wait_for("two replicas online", lambda: replicas_online(g) == 2)
    agent = Agent(g.issuer, g.ca)
    tokens = g.code_flow(agent)
    first = refresh(g, agent, tokens["refresh_token"])
    assert first.status_code == 200, first.text
    live = first.json()["refresh_token"]

    old = primary_port(g)
    with sentinel(g) as s:
        assert s.execute_command("SENTINEL", "FAILOVER", "konnect")
    started = time.monotonic()
    wait_for("a new primary", lambda: primary_port(g) != old)

    while True:  # the group comes back by itself: a new sign-in gets its tokens again
        try:
            assert g.code_flow(Agent(g.issuer, g.ca))["access_token"]
            break
        except AssertionError:
            assert time.monotonic() - started < SERVING_AGAIN_WITHIN, "not serving again"
            time.sleep(0.5)
    rotated = refresh(g, agent, live)  # signed in before the failover: still signed in
    assert rotated.status_code == 200, rotated.text
    again = refresh(g, agent, live)  # and the token it rotated is spent, on the new primary
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert {p: g.pids(p) for p in pids} == pids
