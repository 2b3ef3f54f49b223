"""Losing Redis's state never revives a revoked token nor a spent code (shared/store.py,
the buckets' generations and the continuity marker): a FLUSHALL, a restart without
persistence, or `python -m shared.store new-generation` after a restore refuse everything
issued before; a restart from the append-only file keeps every grant."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from shared.store import RotationOutcome, Store, new_token
from tests.support.clock import SteppingClock
from tests.support.redis_ha import RedisNode

SUB = "sub-alice"
ROOT = __file__.rsplit("/tests/", 1)[0]


def _record(created: int) -> dict:
    return {"client_id": "rp", "family": "fam-1", "scopes": ["openid", "offline_access"],
            "created": created, "sub": SUB,
            "identity": {"raw_sub": "a", "backend": "users", "username": "a"}}


async def _state(store: Store) -> tuple[str, int]:
    """A refresh token and a revoked access token (jti "gone"), issued in a second after
    the one the database's generation started in (the first connection starts it)."""
    assert await store.ping()
    await asyncio.sleep(1.1)
    before = int(store.now())
    token = new_token(SUB)
    await store.put_refresh(token, _record(before), 3600)
    await store.revoke_jti("gone", before + 600, sub=SUB)
    assert await store.is_revoked(sub=SUB, iat=before, jti="gone")
    assert not await store.is_revoked(sub=SUB, iat=before, jti="kept")
    await asyncio.sleep(1.1)  # what comes next happens in a later second
    return token, before


async def _rotate(store: Store, token: str) -> RotationOutcome:
    rotation = await store.rotate_refresh(token, client_id="rp", now=int(store.now()),
                                          refresh_ttl=3600)
    return rotation.outcome


@pytest.mark.gen_test(timeout=60)
async def test_a_restart_from_the_append_only_file_keeps_every_grant(tmp_path):
    with RedisNode(tmp_path, options=("--appendonly", "yes", "--appendfsync", "everysec")) \
            as node:
        store = Store.from_url(node.url)
        try:
            token, before = await _state(store)
            node.kill()  # kill -9: what Redis wrote to its file before answering is kept
            node.start()
            assert not await store.is_revoked(sub=SUB, iat=before, jti="kept")
            assert await store.is_revoked(sub=SUB, iat=before, jti="gone")
            assert await _rotate(store, token) == RotationOutcome.ROTATED
        finally:
            await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_restart_without_persistence_refuses_what_came_before(private_redis):
    store = Store.from_url(private_redis.url)
    try:
        token, before = await _state(store)
        private_redis.stop()
        private_redis.start()  # empty: the revocation of "gone" is lost
        assert await store.is_revoked(sub=SUB, iat=before, jti="gone")
        assert await store.is_revoked(sub=SUB, iat=before, jti="kept")
        assert await _rotate(store, token) == RotationOutcome.UNKNOWN
        assert not await store.is_revoked(sub=SUB, iat=int(store.now()) + 2, jti="new")
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_flushall_refuses_what_came_before(private_redis):
    store = Store.from_url(private_redis.url)
    try:
        _, before = await _state(store)
        with private_redis.client() as raw:
            raw.flushall()
        assert await store.is_revoked(sub=SUB, iat=before, jti="gone")
        assert await store.is_revoked(sub=SUB, iat=before, jti="kept")
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_new_generation_command_refuses_everything_issued_before(private_redis):
    store = Store.from_url(private_redis.url)
    try:
        token, before = await _state(store)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "shared.store", "new-generation",
                             "--redis-url", private_redis.url],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "everything issued before is refused" in done.stdout
        assert await store.is_revoked(sub=SUB, iat=before, jti="kept")
        assert await _rotate(store, token) == RotationOutcome.STALE
        assert not await store.is_revoked(sub=SUB, iat=int(store.now()) + 2, jti="new")
    finally:
        await store.close()


def test_new_generation_command_without_redis_is_an_error_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "shared.store", "new-generation",
                           "--redis-url", "redis://:secret@127.0.0.1:1/0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


@pytest.mark.gen_test(timeout=30)
async def test_a_first_use_at_the_first_connection_to_an_empty_database_counts(private_redis):
    """The caller reads the clock; its first connection then finds no generation marker and
    starts the database's generation a moment later, in the next second. A first use
    without an issue time (the state of a sign-in through an upstream OP) is still the
    first, not "already used"; one with an issue time from before the generation is
    refused as before."""
    start = 1_800_000_000.7
    store = Store.from_url(private_redis.url, now=SteppingClock(start, step=0.6))
    try:
        assert await store.first_use("authority-state", "state-1", 600)
        assert await store.generation("000") > int(start)  # the generation began later
        assert not await store.first_use("authority-state", "state-1", 600)
        assert await store.first_use("authority-state", "state-2", 600)
        assert not await store.first_use("client-assertion", "jti-1", 600,
                                         issued_at=int(start) - 5)
    finally:
        await store.close()
