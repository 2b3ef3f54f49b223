"""Everything in Redis (shared/store.py) against a real redis-server: single-use codes, refresh
rotation, the revocation list, replay markers, rate limits, dynamic clients, TTLs, failures."""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket

import pytest

from shared.errors import Unavailable
from shared.store import (CodeOutcome, CodeRedemption, Rotation, RotationOutcome, Store,
                          StoreConflict, StoreUnavailable, digest)
from tests.support.store import redemption_marker

NOW = 1_700_000_000


BOUND = 5.0  # an operation that takes longer than this is hanging


@pytest.fixture
def raw(redis_server, redis_url):
    """A plain synchronous client on the same (flushed) database, to look behind the Store."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def clocked(redis_url, io_loop):
    """A Store whose clock stands still at NOW."""
    s = Store.from_url(redis_url, now=lambda: NOW)
    yield s
    io_loop.run_sync(s.close)


def all_keys(raw) -> list[str]:
    return sorted(k.decode() for k in raw.scan_iter(count=1000))


def _code_record(**over) -> dict:
    record = {"client_id": "rp", "family": "fam-9", "scopes": ["openid", "offline_access"],
              "redirect_uri": "https://rp/cb", "code_challenge": "chal", "created": NOW,
              "identity": {"raw_sub": "a", "backend": "users", "username": "a"}}
    record.update(over)
    return {k: v for k, v in record.items() if v is not None}


REDEEM = dict(client_id="rp", redirect_uri="https://rp/cb", challenge="chal", verifier_sent=True,
              public=False, refresh_allowed=True, jti="jti-9", refresh_token="rt-9",
              now=NOW + 10, access_ttl=600, refresh_ttl=7200)


ROTATE = dict(client_id="rp", now=NOW + 10, refresh_ttl=7200)


async def exercise_every_writer(store: Store) -> None:
    await store.put_code("code", _code_record(), 60)
    await store.redeem_code("code", **REDEEM)
    await store.put_code("code-kept", _code_record(), 60)
    await store.put_refresh("rt-kept", {"family": "fam"}, 600)
    await store.put_refresh("rt-taken", {"family": "fam"}, 600)
    await store.take_refresh("rt-taken")
    await store.revoke_jti("jti-1", exp=store.now() + 300)
    await store.revoke_family("fam", exp=store.now() + 900)
    await store.revoke_subject("alice", not_before=int(store.now()), ttl=900)
    await store.first_use("client-assertion", "jti-9", 300)
    await store.hit("logon", "alice", window=60)
    await store.put_json("session", "sid-1", {"sub": "alice"}, 1800)


def writers_with_ttl(ttl):
    return {
        "put_code": lambda s: s.put_code("c", {}, ttl),
        "redeem_code (access)": lambda s: s.redeem_code("c", **{**REDEEM, "access_ttl": ttl}),
        "redeem_code (refresh)": lambda s: s.redeem_code("c", **{**REDEEM, "refresh_ttl": ttl}),
        "put_refresh": lambda s: s.put_refresh("r", {"family": "f"}, ttl),
        "revoke_subject": lambda s: s.revoke_subject("alice", not_before=NOW, ttl=ttl),
        "first_use": lambda s: s.first_use("k", "i", ttl),
        "hit": lambda s: s.hit("logon", "alice", window=ttl),
        "put_json": lambda s: s.put_json("k", "i", 1, ttl),
    }


SECRET_CODE, SECRET_RT = "code-that-must-not-be-logged", "rt-that-must-not-be-logged"


OPERATIONS = {
    "ping": lambda s: s.ping(),
    "put_code": lambda s: s.put_code(SECRET_CODE, {"a": 1}, 60),
    "redeem_code": lambda s: s.redeem_code(SECRET_CODE, **{**REDEEM, "refresh_token": SECRET_RT}),
    "undo_code_redemption": lambda s: s.undo_code_redemption(SECRET_CODE, SECRET_RT),
    "put_refresh": lambda s: s.put_refresh(SECRET_RT, {"family": "f"}, 60),
    "take_refresh": lambda s: s.take_refresh(SECRET_RT),
    "rotate_refresh": lambda s: s.rotate_refresh(SECRET_RT, SECRET_CODE, **ROTATE),
    "peek_refresh": lambda s: s.peek_refresh(SECRET_RT),
    "subject_not_before": lambda s: s.subject_not_before("alice"),
    "spent_refresh_family": lambda s: s.spent_refresh_family(SECRET_RT),
    "revoke_jti": lambda s: s.revoke_jti("j", exp=s.now() + 60),
    "revoke_family": lambda s: s.revoke_family("f", exp=s.now() + 60),
    "revoke_subject": lambda s: s.revoke_subject("alice", not_before=int(s.now()), ttl=60),
    "is_revoked": lambda s: s.is_revoked(jti="j", family="f", sub="alice", iat=0),
    "first_use": lambda s: s.first_use("k", "i", 60),
    "hit": lambda s: s.hit("logon", "alice", window=60),
    "retry_after": lambda s: s.retry_after("logon", "alice"),
    "reset": lambda s: s.reset("logon", "alice"),
    "put_json": lambda s: s.put_json("k", "i", {"v": 1}, 60),
    "get_json": lambda s: s.get_json("k", "i"),
    "delete": lambda s: s.delete("k", "i"),
}


@pytest.fixture
def private_store(private_redis, io_loop):
    s = Store.from_url(private_redis.url, socket_timeout=0.5, connect_timeout=0.5)
    yield s
    io_loop.run_sync(s.close)


def _issued(record: dict, refresh: bool = True) -> CodeRedemption:
    return CodeRedemption(CodeOutcome.ISSUED_WITH_REFRESH if refresh else CodeOutcome.ISSUED,
                          record=record)


@pytest.mark.gen_test
async def test_code_is_single_use_and_a_second_redemption_finds_what_the_first_issued(store):
    record = _code_record()
    await store.put_code("code-1", record, 60)
    assert await store.redeem_code("code-1", **REDEEM) == _issued(record)
    again = await store.redeem_code("code-1", **{**REDEEM, "jti": "other", "refresh_token": "r2"})
    assert again == CodeRedemption(CodeOutcome.REPLAYED, spent={
        "family": "fam-9", "jti": "jti-9", "exp": NOW + 10 + 7200})
    assert await store.peek_refresh("r2") is None


@pytest.mark.gen_test
async def test_storing_the_same_code_twice_is_a_conflict(store):
    await store.put_code("dup", _code_record(first=True), 60)
    with pytest.raises(StoreConflict):
        await store.put_code("dup", _code_record(first=False), 60)
    assert (await store.redeem_code("dup", **REDEEM)).record["first"] is True


@pytest.mark.gen_test
async def test_unknown_code_is_unknown(store, raw):
    assert await store.redeem_code("never-issued", **REDEEM) == \
        CodeRedemption(CodeOutcome.UNKNOWN)
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_redeem_code_writes_marker_and_refresh_record_in_one_step(store, raw):
    record = _code_record()
    await store.put_code("c-9", record, 60)
    assert await store.redeem_code("c-9", **REDEEM) == _issued(record)
    assert raw.exists(store.key("code", digest("c-9"))) == 0
    # the refresh record IS the code's record; it lives until created + refresh_ttl
    assert await store.peek_refresh("rt-9") == record
    assert 7180 <= raw.ttl(store.key("rt", digest("rt-9"))) <= 7190
    # the marker names the family and the access token, for as long as the refresh token
    assert await redemption_marker(store, "c-9") == {"family": "fam-9", "jti": "jti-9",
                                                     "exp": NOW + 10 + 7200}
    assert 7190 <= raw.ttl(store.key("code-used", digest("c-9"))) <= 7200


@pytest.mark.parametrize("over,args", [({"scopes": ["openid"]}, {}),
                                       ({}, {"refresh_allowed": False}),
                                       ({"created": NOW - 7200}, {})],
                         ids=["no offline_access", "client may not refresh", "family over"])
@pytest.mark.gen_test
async def test_redeem_code_without_a_refresh_token_writes_only_the_marker(store, raw, over,
                                                                          args):
    record = _code_record(**over)
    await store.put_code("c-10", record, 60)
    assert await store.redeem_code("c-10", **{**REDEEM, **args}) == _issued(record, False)
    assert await store.peek_refresh("rt-9") is None
    assert (await redemption_marker(store, "c-10"))["exp"] == NOW + 10 + 600
    assert 590 <= raw.ttl(store.key("code-used", digest("c-10"))) <= 600


@pytest.mark.parametrize("over,args,outcome", [
    ({}, {"client_id": "other"}, CodeOutcome.WRONG_CLIENT),
    ({}, {"redirect_uri": "https://rp/cb2"}, CodeOutcome.WRONG_REDIRECT_URI),
    ({}, {"challenge": "wrong"}, CodeOutcome.PKCE_MISMATCH),
    ({}, {"challenge": "", "verifier_sent": False}, CodeOutcome.PKCE_MISMATCH),
    ({}, {"challenge": "", "verifier_sent": True}, CodeOutcome.PKCE_MISMATCH),  # malformed
    ({"code_challenge": None}, {}, CodeOutcome.VERIFIER_WITHOUT_CHALLENGE),
    ({"code_challenge": None}, {"challenge": "", "verifier_sent": False, "public": True},
     CodeOutcome.PKCE_REQUIRED),
    ({"created": None}, {}, CodeOutcome.INVALID), ({"created": 0}, {}, CodeOutcome.INVALID),
    ({"family": None}, {}, CodeOutcome.INVALID)])
@pytest.mark.gen_test
async def test_redeem_code_that_may_not_be_redeemed_by_this_request_writes_nothing(
        store, raw, over, args, outcome):
    record = _code_record(**over)
    await store.put_code("c-11", record, 60)
    got = await store.redeem_code("c-11", **{**REDEEM, **args})
    assert got == CodeRedemption(outcome, record=record)
    assert all_keys(raw) == []  # taken all the same: a code is tried once


@pytest.mark.gen_test
async def test_code_without_a_challenge_redeems_for_a_confidential_client_without_verifier(
        store):
    record = _code_record(code_challenge=None)
    await store.put_code("c-12", record, 60)
    got = await store.redeem_code("c-12", **{**REDEEM, "challenge": "", "verifier_sent": False})
    assert got == _issued(record)


@pytest.mark.gen_test
async def test_redeem_code_refresh_clash_is_a_conflict_and_writes_no_marker(store):
    await store.put_refresh("rt-9", {"family": "someone-else"}, 60)
    await store.put_code("c-14", _code_record(), 60)
    with pytest.raises(StoreConflict):
        await store.redeem_code("c-14", **REDEEM)
    assert await store.peek_refresh("rt-9") == {"family": "someone-else"}
    assert await redemption_marker(store, "c-14") is None


@pytest.mark.gen_test
async def test_undo_code_redemption_removes_marker_and_refresh_record(store, raw):
    await store.put_code("c-15", _code_record(), 60)
    await store.redeem_code("c-15", **REDEEM)
    await store.undo_code_redemption("c-15", "rt-9")
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_concurrent_redemptions_issue_once_and_the_others_find_it(store):
    await store.put_code("c-16", _code_record(), 60)
    results = await asyncio.gather(*(store.redeem_code("c-16", **{**REDEEM, "jti": f"j{i}",
                                                                  "refresh_token": f"r{i}"})
                                     for i in range(10)))
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["issued_with_refresh"] + ["replayed"] * 9
    (winner,) = [i for i, r in enumerate(results) if r.issued]
    assert (await redemption_marker(store, "c-16"))["jti"] == f"j{winner}"
    assert all(r.spent["jti"] == f"j{winner}" for r in results if not r.issued)


@pytest.mark.gen_test
async def test_rotate_refresh_takes_the_token_and_stores_the_grant_behind_the_new_one(store, raw):
    record = _code_record()
    await store.put_refresh("old-1", record, 60)
    assert await store.rotate_refresh("old-1", "new-1", **ROTATE) == \
        Rotation(RotationOutcome.ROTATED, record=record, stored=True)
    assert await store.peek_refresh("old-1") is None
    assert await store.spent_refresh_family("old-1") == "fam-9"
    assert await store.peek_refresh("new-1") == record
    assert 7180 <= raw.ttl(store.key("rt", digest("new-1"))) <= 7190
    assert await store.rotate_refresh("old-1", "new-2", **ROTATE) == \
        Rotation(RotationOutcome.REUSED, family="fam-9")
    assert await store.rotate_refresh("never", "new-3", **ROTATE) == \
        Rotation(RotationOutcome.UNKNOWN)


@pytest.mark.parametrize("case,outcome,taken", [
    ("other client", RotationOutcome.WRONG_CLIENT, False),
    ("wider scope", RotationOutcome.WIDER_SCOPE, False),
    ("revoked family", RotationOutcome.REVOKED, True),
    ("no offline_access", RotationOutcome.ROTATED, True),
    ("family over", RotationOutcome.ROTATED, True),
    ("no created", RotationOutcome.INVALID, True)])
@pytest.mark.gen_test
async def test_rotate_refresh_stores_nothing_new_when_the_grant_may_not_go_on(store, case,
                                                                              outcome, taken):
    over = {"no offline_access": {"scopes": ["openid"]}, "family over": {"created": NOW - 7200},
            "no created": {"created": None}}.get(case, {})
    record = _code_record(**over)
    await store.put_refresh("old-2", record, 60)
    if case == "revoked family":
        await store.revoke_family("fam-9", NOW + 60)
    args = {"other client": {"client_id": "other"},
            "wider scope": {"scopes": ["openid", "profile"]}}.get(case, {})
    got = await store.rotate_refresh("old-2", "new-3", **{**ROTATE, **args})
    assert got == Rotation(outcome, record=record)
    assert await store.peek_refresh("new-3") is None
    assert (await store.peek_refresh("old-2") is None) is taken
    if taken and case != "no created":
        assert await store.spent_refresh_family("old-2") == "fam-9"


@pytest.mark.gen_test
async def test_rotate_refresh_with_narrower_or_the_same_scopes_rotates(store):
    record = _code_record()
    await store.put_refresh("old-5", record, 60)
    got = await store.rotate_refresh("old-5", "new-5", **ROTATE, scopes=["offline_access"])
    assert got.outcome is RotationOutcome.ROTATED and got.stored


@pytest.mark.gen_test
async def test_rotate_refresh_clash_is_a_conflict(store):
    await store.put_refresh("taken-name", {"family": "x"}, 60)
    await store.put_refresh("old-3", _code_record(), 60)
    with pytest.raises(StoreConflict):
        await store.rotate_refresh("old-3", "taken-name", **ROTATE)
    assert await store.peek_refresh("taken-name") == {"family": "x"}


@pytest.mark.gen_test
async def test_concurrent_rotations_of_one_token_store_one_successor(store):
    await store.put_refresh("old-4", _code_record(), 60)
    results = await asyncio.gather(*(store.rotate_refresh("old-4", f"succ-{i}", **ROTATE)
                                     for i in range(10)))
    assert sum(1 for r in results if r.stored) == 1
    assert sorted(r.outcome.value for r in results) == ["reused"] * 9 + ["rotated"]


@pytest.mark.gen_test
async def test_grant_scripts_read_the_subjects_not_before_in_the_same_round_trip(store):
    """A record with `sub` (as authorize writes it): `redeem_code` refuses a code whose
    sign-in is not after the subject's sign-out, and `rotate_refresh` returns the not-before
    (the caller waits out that second), without a second round trip."""
    await store.revoke_subject("sub-9", NOW, 60)
    signed_out = _code_record(sub="sub-9", auth_time=NOW - 5)
    await store.put_code("c-17", signed_out, 60)
    assert await store.redeem_code("c-17", **REDEEM) == \
        CodeRedemption(CodeOutcome.SIGNED_OUT, record=signed_out)
    after = _code_record(sub="sub-9", auth_time=NOW + 1)
    await store.put_code("c-18", after, 60)
    assert await store.redeem_code("c-18", **REDEEM) == _issued(after)
    await store.put_code("c-19", _code_record(sub="someone-else"), 60)
    assert (await store.redeem_code("c-19", **{**REDEEM, "refresh_token": "rt-19"})).issued
    assert (await store.rotate_refresh("rt-9", "new-9", **ROTATE)).not_before == NOW
    assert (await store.rotate_refresh("rt-19", "new-19", **ROTATE)).not_before is None
    assert await store.subject_not_before("sub-9") == NOW
    assert await store.subject_not_before("someone-else") is None


@pytest.mark.gen_test
async def test_token_material_never_appears_in_a_key(store, raw):
    code, rt = "C0DE-raw-value-xyz", "RT-raw-value-abc"
    await store.put_code(code, _code_record(), 60)
    await store.put_code(code + "-kept", _code_record(), 60)
    await store.redeem_code(code, **{**REDEEM, "refresh_token": rt})
    await store.take_refresh(rt)
    keys = all_keys(raw)
    assert keys == sorted([
        f"konnect:code:{hashlib.sha256((code + '-kept').encode()).hexdigest()}",
        f"konnect:code-used:{hashlib.sha256(code.encode()).hexdigest()}",
        f"konnect:rt-spent:{hashlib.sha256(rt.encode()).hexdigest()}",
    ])
    assert not any(code in k or rt in k for k in keys)


@pytest.mark.gen_test
async def test_values_are_compact_json(store, raw):
    await store.put_code("c", {"a": [1, 2], "b": "x"}, 60)
    assert raw.get(store.key("code", digest("c"))) == b'{"a":[1,2],"b":"x"}'


@pytest.mark.gen_test
async def test_every_key_written_has_a_ttl_and_the_prefix(store, raw):
    await exercise_every_writer(store)
    keys = all_keys(raw)
    kinds = {k.split(":")[1] for k in keys}
    assert kinds == {"code", "code-used", "rt", "rt-spent", "revoked", "once", "ratelimit",
                     "kv"}
    assert {k.split(":")[2] for k in keys if k.startswith("konnect:revoked:")} == \
        {"jti", "family", "sub"}
    assert all(k.startswith("konnect:") for k in keys)
    assert {k: raw.ttl(k) for k in keys if raw.ttl(k) <= 0} == {}


@pytest.mark.gen_test
@pytest.mark.parametrize("ttl", [0, -5, 0.5, True, math.nan, math.inf, "60", None])
@pytest.mark.parametrize("writer", sorted(writers_with_ttl(0)))
async def test_ttl_below_one_second_or_not_a_number_is_refused(store, raw, writer, ttl):
    with pytest.raises(ValueError):
        await writers_with_ttl(ttl)[writer](store)
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_revoked_jti_is_revoked_and_others_are_not(clocked):
    await clocked.revoke_jti("at-1", exp=NOW + 300)
    assert await clocked.is_revoked(jti="at-1")
    assert not await clocked.is_revoked(jti="at-2")


@pytest.mark.gen_test
async def test_revoked_family_reaches_every_token_of_it(clocked):
    await clocked.revoke_family("fam-1", exp=NOW + 300)
    assert await clocked.is_revoked(jti="any", family="fam-1")
    assert not await clocked.is_revoked(jti="any", family="fam-2")


@pytest.mark.gen_test
@pytest.mark.parametrize("iat,revoked", [(NOW - 1, True), (NOW, True), (NOW + 1, False)])
async def test_subject_not_before_revokes_tokens_issued_at_or_before_it(clocked, iat, revoked):
    await clocked.revoke_subject("alice", not_before=NOW, ttl=3600)
    assert await clocked.is_revoked(jti="x", sub="alice", iat=iat) is revoked
    assert not await clocked.is_revoked(sub="bob", iat=iat)


@pytest.mark.gen_test
async def test_fractional_not_before_rounds_up_so_nothing_before_it_escapes(clocked):
    await clocked.revoke_subject("alice", not_before=NOW + 0.4, ttl=60)
    assert await clocked.is_revoked(sub="alice", iat=NOW + 0.3)
    assert not await clocked.is_revoked(sub="alice", iat=NOW + 2)


@pytest.mark.gen_test
async def test_revocation_entry_expires_with_token_lifetime(clocked, raw):
    await clocked.revoke_jti("at-1", exp=NOW + 300)
    await clocked.revoke_family("fam-1", exp=NOW + 7200)
    assert 299_000 < raw.pttl(clocked.key("revoked", "jti", "at-1")) <= 300_000
    assert 7_199_000 < raw.pttl(clocked.key("revoked", "family", "fam-1")) <= 7_200_000


@pytest.mark.gen_test
async def test_revocation_entry_lives_at_least_a_second_and_only_grows(clocked, raw):
    await clocked.revoke_jti("expired", exp=NOW - 50)
    assert 0 < raw.pttl(clocked.key("revoked", "jti", "expired")) <= 1000
    key = clocked.key("revoked", "family", "fam")
    await clocked.revoke_family("fam", exp=NOW + 600)
    await clocked.revoke_family("fam", exp=NOW + 60)  # a shorter one must not shorten it
    assert 599_000 < raw.pttl(key) <= 600_000
    await clocked.revoke_family("fam", exp=NOW + 1200)
    assert 1_199_000 < raw.pttl(key) <= 1_200_000


@pytest.mark.gen_test
async def test_subject_revocation_keeps_latest_not_before_and_longest_ttl(clocked, raw):
    key = clocked.key("revoked", "sub", "alice")
    await clocked.revoke_subject("alice", not_before=NOW, ttl=3600)
    await clocked.revoke_subject("alice", not_before=NOW - 100, ttl=60)
    assert raw.get(key) == str(NOW).encode()
    assert 3_599_000 < raw.pttl(key) <= 3_600_000
    await clocked.revoke_subject("alice", not_before=NOW + 10, ttl=7200)
    assert raw.get(key) == str(NOW + 10).encode()
    assert 7_199_000 < raw.pttl(key) <= 7_200_000
    assert await clocked.is_revoked(sub="alice", iat=NOW + 10)


@pytest.mark.gen_test
async def test_is_revoked_is_one_round_trip(clocked, raw):
    await clocked.revoke_subject("alice", not_before=NOW, ttl=60)
    await clocked.ping()  # the pooled connection exists: its set-up commands are not counted
    raw.config_resetstat()
    before = raw.info("stats")["total_commands_processed"]
    assert await clocked.is_revoked(jti="j", family="f", sub="alice", iat=NOW)
    after = raw.info("stats")["total_commands_processed"]
    stats = {name.removeprefix("cmdstat_"): v["calls"]
             for name, v in raw.info("commandstats").items()}
    assert stats.pop("info") >= 1 and stats.pop("config|resetstat") == 1
    assert stats == {"mget": 1}
    assert after - before == 2  # the first INFO and the MGET


@pytest.mark.gen_test
@pytest.mark.parametrize("kwargs", [{}, {"sub": "alice"}, {"jti": ""}, {"family": ""}])
async def test_is_revoked_refuses_questions_it_cannot_answer(store, kwargs):
    with pytest.raises(ValueError):
        await store.is_revoked(**kwargs)


@pytest.mark.gen_test
async def test_taken_refresh_token_leaves_a_spent_marker_with_its_family(store, raw):
    record = {"family": "fam-7", "client_id": "rp", "scope": "openid offline_access"}
    await store.put_refresh("rt-1", record, 600)
    assert await store.spent_refresh_family("rt-1") is None
    assert await store.take_refresh("rt-1") == record
    assert await store.take_refresh("rt-1") is None
    assert await store.spent_refresh_family("rt-1") == "fam-7"
    spent = store.key("rt-spent", digest("rt-1"))
    assert 590_000 < raw.pttl(spent) <= 600_000  # the rotated token's remaining life
    assert raw.exists(store.key("rt", digest("rt-1"))) == 0


@pytest.mark.gen_test
async def test_concurrent_refreshes_with_one_token_rotate_exactly_once(store):
    await store.put_refresh("rt-race", {"family": "fam"}, 600)
    results = await asyncio.gather(*(store.take_refresh("rt-race") for _ in range(20)))
    assert [r for r in results if r is not None] == [{"family": "fam"}]
    assert await store.spent_refresh_family("rt-race") == "fam"


@pytest.mark.gen_test
async def test_unknown_refresh_token_is_neither_live_nor_spent(store):
    assert await store.take_refresh("forged") is None
    assert await store.spent_refresh_family("forged") is None


@pytest.mark.gen_test
@pytest.mark.parametrize("record", [{}, {"family": ""}, {"family": 7}])
async def test_refresh_record_needs_a_family(store, record):
    with pytest.raises(ValueError):
        await store.put_refresh("rt", record, 600)


@pytest.mark.gen_test
async def test_storing_the_same_refresh_token_twice_is_a_conflict(store):
    await store.put_refresh("rt", {"family": "a"}, 600)
    with pytest.raises(StoreConflict):
        await store.put_refresh("rt", {"family": "b"}, 600)


@pytest.mark.gen_test
async def test_first_use_is_true_once_per_kind_and_ident(store):
    assert await store.first_use("client-assertion", "jti-1", 300)
    assert not await store.first_use("client-assertion", "jti-1", 300)
    assert await store.first_use("client-assertion", "jti-2", 300)
    assert await store.first_use("request-object", "jti-1", 300)


@pytest.mark.gen_test
async def test_concurrent_first_use_lets_exactly_one_through(store):
    results = await asyncio.gather(*(store.first_use("k", "same", 60) for _ in range(20)))
    assert results.count(True) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("name", ["", "a:b", "x y", "k" * 65, None])
async def test_kind_and_bucket_names_are_checked(store, name):
    with pytest.raises(ValueError):
        await store.first_use(name, "i", 60)
    with pytest.raises(ValueError):
        await store.hit(name, "k", window=60)
    with pytest.raises(ValueError):
        await store.put_json(name, "k", 1, 60)


@pytest.mark.gen_test
async def test_rate_limit_counts_hits_in_a_window_that_later_hits_do_not_extend(store, raw):
    user = "Älice *)(uid=*\n:x"
    assert [await store.hit("logon", user, window=60) for _ in range(3)] == [1, 2, 3]
    assert 59 <= await store.retry_after("logon", user) <= 60
    key = store.key("ratelimit", "logon", digest(user))
    assert all_keys(raw) == [key]
    raw.pexpire(key, 2000)  # as if 58 s of the window had passed
    assert await store.hit("logon", user, window=60) == 4
    assert await store.retry_after("logon", user) <= 2
    await store.reset("logon", user)
    assert await store.retry_after("logon", user) == 0
    assert await store.hit("logon", user, window=60) == 1


@pytest.mark.gen_test
async def test_rate_limit_keys_are_separate_per_bucket_and_key(store):
    await store.hit("logon", "alice", window=60)
    assert await store.hit("logon", "bob", window=60) == 1
    assert await store.hit("logon-ip", "alice", window=60) == 1
    assert await store.retry_after("logon", "carol") == 0


@pytest.mark.gen_test
async def test_generic_json_values(store, raw):
    await store.put_json("session", "sid-1", {"sub": "alice", "n": [1]}, 120)
    assert await store.get_json("session", "sid-1") == {"sub": "alice", "n": [1]}
    assert 110 <= raw.ttl(store.key("kv", "session", digest("sid-1"))) <= 120
    assert await store.delete("session", "sid-1")
    assert not await store.delete("session", "sid-1")
    assert await store.get_json("session", "sid-1") is None


@pytest.mark.gen_test
async def test_stores_with_different_prefixes_do_not_see_each_other(redis_url, raw):
    a = Store.from_url(redis_url, prefix="a:", now=lambda: NOW)
    b = Store.from_url(redis_url, prefix="b:", now=lambda: NOW)
    try:
        await a.put_code("code", _code_record(), 60)
        await a.revoke_jti("j", exp=NOW + 60)
        await a.put_json("k", "x", 1, 60)
        assert (await b.redeem_code("code", **REDEEM)).outcome is CodeOutcome.UNKNOWN
        assert not await b.is_revoked(jti="j")
        assert await b.get_json("k", "x") is None
        assert (await a.redeem_code("code", **REDEEM)).issued
        assert {k.split(":")[0] for k in all_keys(raw)} == {"a"}
    finally:
        await a.close()
        await b.close()


@pytest.mark.gen_test
async def test_unix_socket_url_works(redis_server, redis_url):
    s = Store.from_url(redis_server.unix_url)
    try:
        assert await s.ping()
        await s.put_code("code", _code_record(via="unix"), 60)
        assert (await s.redeem_code("code", **REDEEM)).record["via"] == "unix"
    finally:
        await s.close()


def test_empty_prefix_is_refused():
    with pytest.raises(ValueError):
        Store.from_url("redis://127.0.0.1:1/0", prefix="")


def test_store_unavailable_is_rendered_as_503():
    assert issubclass(StoreUnavailable, Unavailable)


@pytest.mark.gen_test
@pytest.mark.parametrize("op", sorted(OPERATIONS))
async def test_stopped_redis_is_store_unavailable_and_the_same_store_recovers(
        private_redis, private_store, op):
    run = OPERATIONS[op]
    await asyncio.wait_for(run(private_store), BOUND)  # a pooled connection exists now
    private_redis.stop()
    with pytest.raises(StoreUnavailable) as err:
        await asyncio.wait_for(run(private_store), BOUND)
    assert SECRET_CODE not in str(err.value) and SECRET_RT not in str(err.value)
    private_redis.start()
    await asyncio.wait_for(run(private_store), BOUND)
    assert await private_store.ping()


@pytest.mark.gen_test
async def test_a_redis_restart_costs_no_request(private_redis, private_store):
    """A restart leaves every pooled connection dead (requests must be back to 100 % at
    once): the command that meets one runs again on a new connection, and the other idle
    ones are dropped, so no later request meets a dead connection."""
    for first in (lambda: private_store.is_revoked(jti="x"),
                  lambda: private_store.put_json("k", "first", 1, 60)):
        await asyncio.gather(*(private_store.is_revoked(jti=f"j{i}") for i in range(6)))
        assert len(private_store._redis.connection_pool._available_connections) > 1
        private_redis.stop()
        private_redis.start()
        await asyncio.wait_for(first(), BOUND)
        for i in range(6):
            await asyncio.wait_for(private_store.put_json("k", str(i), i, 60), BOUND)
    assert await private_store.get_json("k", "first") == 1


@pytest.mark.gen_test
async def test_revocation_check_fails_closed_when_redis_hangs(private_redis, private_store):
    await private_store.revoke_jti("revoked-jti", exp=private_store.now() + 60)
    await private_store.put_json("k", "a", "value-a", 60)
    await private_store.put_json("k", "b", "value-b", 60)
    private_redis.pause()
    try:
        for run in (lambda: private_store.is_revoked(jti="revoked-jti"),
                    lambda: private_store.is_revoked(jti="other"),
                    lambda: private_store.get_json("k", "a"),
                    lambda: private_store.ping()):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(run(), BOUND)
    finally:
        private_redis.resume()
    # the timed-out connections were dropped: no late answer is read as a new one's
    assert await private_store.get_json("k", "b") == "value-b"
    assert await private_store.is_revoked(jti="revoked-jti")
    assert not await private_store.is_revoked(jti="other")


@pytest.mark.gen_test
async def test_closed_port_is_store_unavailable_not_a_hang():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = sock.getsockname()[1]
        s = Store.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5,
                           connect_timeout=0.5)  # connects lazily: no error here
        try:
            for op in ("ping", "is_revoked", "redeem_code", "hit"):
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(OPERATIONS[op](s), BOUND)
        finally:
            await s.close()


@pytest.mark.gen_test
async def test_server_that_never_answers_is_store_unavailable_not_a_hang():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        port = sock.getsockname()[1]
        s = Store.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3,
                           connect_timeout=0.3)
        try:
            for op in ("is_revoked", "redeem_code"):
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(OPERATIONS[op](s), BOUND)
        finally:
            await s.close()


@pytest.mark.gen_test
async def test_store_give_back_undoes_one_hit_and_keeps_the_window(store, redis_server):
    assert await store.give_back("logon-ip", "10.0.0.1") == 0  # nothing to give back
    client = redis_server.client()
    try:
        assert client.keys("konnect:ratelimit:*") == []  # and nothing created
        for _ in range(3):
            await store.hit("logon-ip", "10.0.0.1", window=300)
        assert await store.give_back("logon-ip", "10.0.0.1") == 2
        (key,) = client.keys("konnect:ratelimit:*")
        assert 290 < client.ttl(key) <= 300
        assert await store.give_back("logon-ip", "10.0.0.1") == 1
        assert await store.give_back("logon-ip", "10.0.0.1") == 0
        assert await store.give_back("logon-ip", "10.0.0.1") == 0  # never below 0
        assert int(client.get(key)) == 0 and client.ttl(key) > 0
        assert await store.hit("logon-ip", "10.0.0.1", window=300) == 1
    finally:
        client.close()
