"""Everything in Redis (shared/store.py) against a real redis-server: single-use codes, refresh
rotation, the revocation list, replay markers, rate limits, dynamic clients, TTLs, failures."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest

from shared.errors import Unavailable
from shared.store import (CodeOutcome, CodeRedemption, Rotation, RotationOutcome, Store,
                          StoreConflict, StoreUnavailable, digest, new_token, tag_of,
                          token_tag)
from tests.support.store import redemption_marker

NOW = 1_700_000_000
SUB = "sub-alice"

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
    """Every key but the buckets (generation and revocations: `test_generation.py`) and the
    continuity marker."""
    return sorted(k.decode() for k in raw.scan_iter(count=1000)
                  if not k.startswith(b"konnect:revoked:{") and k != b"konnect:server")


def _code_record(**over) -> dict:
    record = {"client_id": "rp", "family": "fam-9", "scopes": ["openid", "offline_access"],
              "redirect_uri": "https://rp/cb", "code_challenge": "chal", "created": NOW,
              "sub": SUB, "identity": {"raw_sub": "a", "backend": "users", "username": "a"}}
    record.update(over)
    return {k: v for k, v in record.items() if v is not None}


REDEEM = dict(client_id="rp", redirect_uri="https://rp/cb", challenge="chal", verifier_sent=True,
              public=False, refresh_allowed=True, jti="jti-9", now=NOW + 10, access_ttl=600,
              refresh_ttl=7200)


ROTATE = dict(client_id="rp", now=NOW + 10, refresh_ttl=7200)


def key(store: Store, kind: str, token: str) -> str:
    return store._tagged(kind, token_tag(token), digest(token))


async def exercise_every_writer(store: Store) -> None:
    code = await store.put_code(_code_record(), 60)
    await store.redeem_code(code, **REDEEM)
    await store.put_code(_code_record(), 60)
    await store.put_refresh(new_token(SUB), _code_record(family="fam"), 600)
    taken = new_token(SUB)
    await store.put_refresh(taken, _code_record(family="fam"), 600)
    await store.take_refresh(taken)
    await store.revoke_jti("jti-1", exp=store.now() + 300, sub=SUB)
    await store.revoke_family("fam", exp=store.now() + 900, sub=SUB)
    await store.revoke_subject(SUB, not_before=int(store.now()), ttl=900)
    await store.first_use("client-assertion", "jti-9", 300)
    await store.hit("logon", "alice", window=60)
    await store.put_json("session", "sid-1", {"sub": "alice"}, 1800)
    await store.put_client("dyn.abc", {"id": "dyn.abc", "issued_at": int(store.now())}, 600)


def writers_with_ttl(ttl):
    return {
        "put_code": lambda s: s.put_code(_code_record(), ttl),
        "redeem_code (access)": lambda s: s.redeem_code(new_token(SUB),
                                                        **{**REDEEM, "access_ttl": ttl}),
        "redeem_code (refresh)": lambda s: s.redeem_code(new_token(SUB),
                                                         **{**REDEEM, "refresh_ttl": ttl}),
        "put_refresh": lambda s: s.put_refresh(new_token(SUB), _code_record(), ttl),
        "revoke_subject": lambda s: s.revoke_subject(SUB, not_before=NOW, ttl=ttl),
        "first_use": lambda s: s.first_use("k", "i", ttl),
        "hit": lambda s: s.hit("logon", "alice", window=ttl),
        "put_json": lambda s: s.put_json("k", "i", 1, ttl),
        "put_client": lambda s: s.put_client("dyn.x", {"issued_at": NOW}, ttl),
    }


SECRET_CODE, SECRET_RT = new_token(SUB), new_token(SUB)


OPERATIONS = {
    "ping": lambda s: s.ping(),
    "put_code": lambda s: s.put_code(_code_record(), 60),
    "redeem_code": lambda s: s.redeem_code(SECRET_CODE, **REDEEM),
    "undo_code_redemption": lambda s: s.undo_code_redemption(SECRET_CODE, SECRET_RT),
    "put_refresh": lambda s: s.put_refresh(new_token(SUB), _code_record(), 60),
    "take_refresh": lambda s: s.take_refresh(SECRET_RT),
    "rotate_refresh": lambda s: s.rotate_refresh(SECRET_RT, **ROTATE),
    "peek_refresh": lambda s: s.peek_refresh(SECRET_RT),
    "subject_not_before": lambda s: s.subject_not_before("alice"),
    "spent_refresh": lambda s: s.spent_refresh(SECRET_RT),
    "revoke_jti": lambda s: s.revoke_jti("j", exp=s.now() + 60, sub=SUB),
    "revoke_family": lambda s: s.revoke_family("f", exp=s.now() + 60, sub=SUB),
    "revoke_subject": lambda s: s.revoke_subject("alice", not_before=int(s.now()), ttl=60),
    "is_revoked": lambda s: s.is_revoked(jti="j", family="f", sub="alice", iat=s.now()),
    "first_use": lambda s: s.first_use("k", "i", 60),
    "hit": lambda s: s.hit("logon", "alice", window=60),
    "retry_after": lambda s: s.retry_after("logon", "alice"),
    "reset": lambda s: s.reset("logon", "alice"),
    "put_json": lambda s: s.put_json("k", "i", {"v": 1}, 60),
    "get_json": lambda s: s.get_json("k", "i"),
    "delete": lambda s: s.delete("k", "i"),
    "get_client": lambda s: s.get_client("dyn.x"),
}


@pytest.fixture
def private_store(private_redis, io_loop):
    s = Store.from_url(private_redis.url, socket_timeout=0.5, connect_timeout=0.5)
    yield s
    io_loop.run_sync(s.close)


def _issued(record: dict, refresh: bool = True) -> CodeRedemption:
    return CodeRedemption(CodeOutcome.ISSUED_WITH_REFRESH if refresh else CodeOutcome.ISSUED,
                          record=record)


def _same(got: CodeRedemption, want: CodeRedemption) -> bool:
    """Equal but for the refresh token the store minted (checked on its own)."""
    return (got.outcome, got.record, got.spent) == (want.outcome, want.record, want.spent) \
        and (got.refresh_token is not None) == (want.outcome is CodeOutcome.ISSUED_WITH_REFRESH)


@pytest.mark.gen_test
async def test_code_is_single_use_and_a_second_redemption_finds_what_the_first_issued(store):
    record = _code_record()
    code = await store.put_code(record, 60)
    first = await store.redeem_code(code, **REDEEM)
    assert _same(first, _issued(record))
    again = await store.redeem_code(code, **{**REDEEM, "jti": "other"})
    assert again == CodeRedemption(CodeOutcome.REPLAYED, spent={
        "family": "fam-9", "jti": "jti-9", "exp": NOW + 10 + 7200, "sub": SUB})
    assert await store.peek_refresh(first.refresh_token) == record


@pytest.mark.gen_test
async def test_codes_and_refresh_tokens_carry_their_users_bucket(store):
    """256 random bits after the tag of the user's `sub`: the token endpoint finds every key
    of the grant from the token alone."""
    code = await store.put_code(_code_record(), 60)
    refresh = (await store.redeem_code(code, **REDEEM)).refresh_token
    for token in (code, refresh, new_token(SUB)):
        assert len(token) == 46 and token_tag(token) == tag_of(SUB)
        assert set(token[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_")
    assert len({new_token(SUB) for _ in range(100)}) == 100
    assert token_tag("x" * 46) is None and token_tag(code[:-1]) is None


@pytest.mark.gen_test
@pytest.mark.parametrize("record", [{"client_id": "rp"}, {"sub": ""}, {"sub": 5}])
async def test_a_code_needs_the_subject_it_is_routed_by(store, record):
    with pytest.raises(ValueError):
        await store.put_code(record, 60)


@pytest.mark.gen_test
async def test_unknown_and_foreign_codes_are_unknown(store, raw):
    for code in (new_token(SUB), "never-issued", "f" * 46):
        assert await store.redeem_code(code, **REDEEM) == CodeRedemption(CodeOutcome.UNKNOWN)
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_redeem_code_writes_marker_and_refresh_record_in_one_step(store, raw):
    record = _code_record()
    code = await store.put_code(record, 60)
    got = await store.redeem_code(code, **REDEEM)
    assert _same(got, _issued(record))
    assert raw.exists(key(store, "code", code)) == 0
    # the refresh record IS the code's record; it lives until created + refresh_ttl
    assert await store.peek_refresh(got.refresh_token) == record
    assert 7180 <= raw.ttl(key(store, "rt", got.refresh_token)) <= 7190
    # the marker names the family and the access token, for as long as the refresh token
    assert await redemption_marker(store, code) == {"family": "fam-9", "jti": "jti-9",
                                                    "exp": NOW + 10 + 7200, "sub": SUB}
    assert 7190 <= raw.ttl(key(store, "code-used", code)) <= 7200


@pytest.mark.parametrize("over,args", [({"scopes": ["openid"]}, {}),
                                       ({}, {"refresh_allowed": False}),
                                       ({"created": NOW - 7200}, {})],
                         ids=["no offline_access", "client may not refresh", "family over"])
@pytest.mark.gen_test
async def test_redeem_code_without_a_refresh_token_writes_only_the_marker(store, raw, over,
                                                                          args):
    record = _code_record(**over)
    code = await store.put_code(record, 60)
    got = await store.redeem_code(code, **{**REDEEM, **args})
    assert _same(got, _issued(record, False))
    assert not [k for k in all_keys(raw) if ":rt:" in k]
    assert (await redemption_marker(store, code))["exp"] == NOW + 10 + 600
    assert 590 <= raw.ttl(key(store, "code-used", code)) <= 600


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
    code = await store.put_code(record, 60)
    got = await store.redeem_code(code, **{**REDEEM, **args})
    assert got == CodeRedemption(outcome, record=record)
    assert all_keys(raw) == []  # taken all the same: a code is tried once


@pytest.mark.gen_test
async def test_code_without_a_challenge_redeems_for_a_confidential_client_without_verifier(
        store):
    record = _code_record(code_challenge=None)
    code = await store.put_code(record, 60)
    got = await store.redeem_code(code, **{**REDEEM, "challenge": "", "verifier_sent": False})
    assert _same(got, _issued(record))


@pytest.mark.gen_test
async def test_undo_code_redemption_removes_marker_and_refresh_record(store, raw):
    code = await store.put_code(_code_record(), 60)
    got = await store.redeem_code(code, **REDEEM)
    await store.undo_code_redemption(code, got.refresh_token)
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_concurrent_redemptions_issue_once_and_the_others_find_it(store):
    code = await store.put_code(_code_record(), 60)
    results = await asyncio.gather(*(store.redeem_code(code, **{**REDEEM, "jti": f"j{i}"})
                                     for i in range(10)))
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["issued_with_refresh"] + ["replayed"] * 9
    (winner,) = [i for i, r in enumerate(results) if r.issued]
    assert (await redemption_marker(store, code))["jti"] == f"j{winner}"
    assert all(r.spent["jti"] == f"j{winner}" for r in results if not r.issued)


@pytest.mark.gen_test
async def test_rotate_refresh_takes_the_token_and_stores_the_grant_behind_the_new_one(store, raw):
    record = _code_record()
    old = new_token(SUB)
    await store.put_refresh(old, record, 60)
    got = await store.rotate_refresh(old, **ROTATE)
    assert got == Rotation(RotationOutcome.ROTATED, record=record, token=got.token)
    assert got.stored and token_tag(got.token) == tag_of(SUB) and got.token != old
    assert await store.peek_refresh(old) is None
    assert await store.spent_refresh(old) == {"family": "fam-9", "sub": SUB}
    assert await store.peek_refresh(got.token) == record
    assert 7180 <= raw.ttl(key(store, "rt", got.token)) <= 7190
    assert await store.rotate_refresh(old, **ROTATE) == \
        Rotation(RotationOutcome.REUSED, family="fam-9", sub=SUB)
    assert await store.rotate_refresh(new_token(SUB), **ROTATE) == \
        Rotation(RotationOutcome.UNKNOWN)
    assert await store.rotate_refresh("not-one-of-ours", **ROTATE) == \
        Rotation(RotationOutcome.UNKNOWN)


@pytest.mark.parametrize("case,outcome,taken", [
    ("other client", RotationOutcome.WRONG_CLIENT, False),
    ("wider scope", RotationOutcome.WIDER_SCOPE, False),
    ("revoked family", RotationOutcome.REVOKED, True),
    ("no offline_access", RotationOutcome.ROTATED, True),
    ("family over", RotationOutcome.ROTATED, True),
    ("no created", RotationOutcome.INVALID, True)])
@pytest.mark.gen_test
async def test_rotate_refresh_stores_nothing_new_when_the_grant_may_not_go_on(store, raw, case,
                                                                              outcome, taken):
    over = {"no offline_access": {"scopes": ["openid"]}, "family over": {"created": NOW - 7200},
            "no created": {"created": None}}.get(case, {})
    record = _code_record(**over)
    old = new_token(SUB)
    await store.put_refresh(old, record, 60)
    if case == "revoked family":
        await store.revoke_family("fam-9", NOW + 60, sub=SUB)
    args = {"other client": {"client_id": "other"},
            "wider scope": {"scopes": ["openid", "profile"]}}.get(case, {})
    got = await store.rotate_refresh(old, **{**ROTATE, **args})
    assert got == Rotation(outcome, record=record)
    assert [k for k in all_keys(raw) if ":rt:" in k] == ([] if taken else [key(store, "rt", old)])
    if taken and case != "no created":
        assert await store.spent_refresh(old) == {"family": "fam-9", "sub": SUB}


@pytest.mark.gen_test
async def test_rotate_refresh_with_narrower_or_the_same_scopes_rotates(store):
    old = new_token(SUB)
    await store.put_refresh(old, _code_record(), 60)
    got = await store.rotate_refresh(old, **ROTATE, scopes=["offline_access"])
    assert got.outcome is RotationOutcome.ROTATED and got.stored


@pytest.mark.gen_test
async def test_concurrent_rotations_of_one_token_store_one_successor(store):
    old = new_token(SUB)
    await store.put_refresh(old, _code_record(), 60)
    results = await asyncio.gather(*(store.rotate_refresh(old, **ROTATE) for _ in range(10)))
    assert sum(1 for r in results if r.stored) == 1
    assert sorted(r.outcome.value for r in results) == ["reused"] * 9 + ["rotated"]


@pytest.mark.gen_test
async def test_grant_scripts_read_the_subjects_not_before_in_the_same_round_trip(store):
    """`redeem_code` refuses a code whose sign-in is not after the subject's sign-out, and
    `rotate_refresh` returns the not-before (the caller waits out that second), without a
    second round trip."""
    await store.revoke_subject("sub-9", NOW, 60)
    signed_out = _code_record(sub="sub-9", auth_time=NOW - 5)
    code = await store.put_code(signed_out, 60)
    assert await store.redeem_code(code, **REDEEM) == \
        CodeRedemption(CodeOutcome.SIGNED_OUT, record=signed_out)
    after = _code_record(sub="sub-9", auth_time=NOW + 1)
    nine = await store.redeem_code(await store.put_code(after, 60), **REDEEM)
    assert _same(nine, _issued(after))
    other = await store.redeem_code(await store.put_code(_code_record(sub="someone-else"), 60),
                                    **REDEEM)
    assert other.issued
    assert (await store.rotate_refresh(nine.refresh_token, **ROTATE)).not_before == NOW
    assert (await store.rotate_refresh(other.refresh_token, **ROTATE)).not_before is None
    assert await store.subject_not_before("sub-9") == NOW
    assert await store.subject_not_before("someone-else") is None


@pytest.mark.gen_test
async def test_token_material_never_appears_in_a_key(store, raw):
    code = await store.put_code(_code_record(), 60)
    kept = await store.put_code(_code_record(), 60)
    rt = (await store.redeem_code(code, **REDEEM)).refresh_token
    await store.take_refresh(rt)
    t = tag_of(SUB)
    assert all_keys(raw) == sorted([f"konnect:code:{{{t}}}:{digest(kept)}",
                                    f"konnect:code-used:{{{t}}}:{digest(code)}",
                                    f"konnect:rt-spent:{{{t}}}:{digest(rt)}"])
    assert not any(code in k or rt in k or kept in k for k in all_keys(raw))


@pytest.mark.gen_test
async def test_values_are_compact_json(store, raw):
    code = await store.put_code({"a": [1, 2], "sub": "x"}, 60)
    assert raw.get(key(store, "code", code)) == b'{"a":[1,2],"sub":"x"}'


@pytest.mark.gen_test
async def test_every_key_written_has_a_ttl_and_the_prefix(store, raw):
    """Only the buckets (a generation, bounded: 4096) and the continuity marker have none."""
    await exercise_every_writer(store)
    keys = all_keys(raw)
    assert {k.split(":")[1] for k in keys} == {"code", "code-used", "rt", "rt-spent", "once",
                                               "ratelimit", "kv", "client"}
    assert all(k.startswith("konnect:") for k in keys)
    assert {k: raw.ttl(k) for k in keys if raw.ttl(k) <= 0} == {}
    persistent = sorted(k.decode() for k in raw.scan_iter(count=1000) if raw.ttl(k) == -1)
    assert all(k.startswith("konnect:revoked:{") or k == "konnect:server" for k in persistent)
    assert len(persistent) <= 4096 + 1


@pytest.mark.gen_test
@pytest.mark.parametrize("ttl", [0, -5, 0.5, True, math.nan, math.inf, "60", None])
@pytest.mark.parametrize("writer", sorted(writers_with_ttl(0)))
async def test_ttl_below_one_second_or_not_a_number_is_refused(store, raw, writer, ttl):
    with pytest.raises(ValueError):
        await writers_with_ttl(ttl)[writer](store)
    assert all_keys(raw) == []


@pytest.mark.gen_test
async def test_revoked_jti_is_revoked_and_others_are_not(clocked):
    await clocked.revoke_jti("at-1", exp=NOW + 300, sub=SUB)
    assert await clocked.is_revoked(jti="at-1", sub=SUB, iat=NOW)
    assert not await clocked.is_revoked(jti="at-2", sub=SUB, iat=NOW)


@pytest.mark.gen_test
async def test_revoked_family_reaches_every_token_of_it(clocked):
    await clocked.revoke_family("fam-1", exp=NOW + 300, sub=SUB)
    assert await clocked.is_revoked(jti="any", family="fam-1", sub=SUB, iat=NOW)
    assert not await clocked.is_revoked(jti="any", family="fam-2", sub=SUB, iat=NOW)


@pytest.mark.gen_test
@pytest.mark.parametrize("iat,revoked", [(NOW - 1, True), (NOW, True), (NOW + 1, False)])
async def test_subject_not_before_revokes_tokens_issued_at_or_before_it(clocked, iat, revoked):
    await clocked.revoke_subject("alice", not_before=NOW, ttl=3600)
    assert await clocked.is_revoked(jti="x", sub="alice", iat=iat) is revoked
    assert not await clocked.is_revoked(sub="bob", iat=iat)


@pytest.mark.gen_test
async def test_fractional_not_before_rounds_up_so_nothing_before_it_escapes(clocked):
    await clocked.revoke_subject("alice", not_before=NOW + 0.4, ttl=60)
    assert await clocked.is_revoked(sub="alice", iat=NOW + 1)
    assert not await clocked.is_revoked(sub="alice", iat=NOW + 2)


def _entry(raw, store: Store, sub: str, field: str):
    value = raw.hget(store.bucket(tag_of(sub)), field)
    return None if value is None else value.decode()


@pytest.mark.gen_test
async def test_revocation_entry_lasts_as_long_as_the_token_and_only_grows(clocked, raw):
    await clocked.revoke_jti("at-1", exp=NOW + 300, sub=SUB)
    await clocked.revoke_family("fam-1", exp=NOW + 7200, sub=SUB)
    assert _entry(raw, clocked, SUB, "j:at-1") == str(NOW + 300)
    assert _entry(raw, clocked, SUB, "f:fam-1") == str(NOW + 7200)
    await clocked.revoke_jti("expired", exp=NOW - 50, sub=SUB)
    assert _entry(raw, clocked, SUB, "j:expired") == str(NOW + 1)  # at least a second
    await clocked.revoke_family("fam-1", exp=NOW + 60, sub=SUB)  # a shorter one: no change
    assert _entry(raw, clocked, SUB, "f:fam-1") == str(NOW + 7200)
    await clocked.revoke_family("fam-1", exp=NOW + 9000, sub=SUB)
    assert _entry(raw, clocked, SUB, "f:fam-1") == str(NOW + 9000)


@pytest.mark.gen_test
async def test_subject_revocation_keeps_latest_not_before_and_longest_ttl(clocked, raw):
    await clocked.revoke_subject("alice", not_before=NOW, ttl=3600)
    await clocked.revoke_subject("alice", not_before=NOW - 100, ttl=60)
    assert _entry(raw, clocked, "alice", "s:alice") == f"{NOW} {NOW + 3600}"
    await clocked.revoke_subject("alice", not_before=NOW + 10, ttl=7200)
    assert _entry(raw, clocked, "alice", "s:alice") == f"{NOW + 10} {NOW + 7200}"
    assert await clocked.is_revoked(sub="alice", iat=NOW + 10)


@pytest.mark.gen_test
async def test_expired_revocations_are_shed_by_later_ones(redis_url, raw, io_loop):
    """The bucket never expires (it holds the generation): each revocation drops a sample
    of the entries that are over, so a bucket holds what is still revoked and little else."""
    t = [NOW]
    s = Store.from_url(redis_url, now=lambda: t[0])
    try:
        for i in range(200):
            await s.revoke_jti(f"old-{i}", exp=NOW + 10, sub=SUB)
        t[0] = NOW + 100  # every one of them is over
        for i in range(100):
            await s.revoke_jti(f"new-{i}", exp=NOW + 1000, sub=SUB)
        fields = [f.decode() for f in raw.hkeys(s.bucket(tag_of(SUB)))]
        assert sum(f.startswith("j:new-") for f in fields) == 100
        assert sum(f.startswith("j:old-") for f in fields) < 100
    finally:
        await s.close()


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
    assert stats == {"evalsha": 1, "hmget": 1}  # the script, and the HMGET it runs
    assert after - before == 3  # the first INFO, the EVALSHA and its HMGET


@pytest.mark.gen_test
@pytest.mark.parametrize("kwargs", [{}, {"sub": "alice"}, {"iat": NOW}, {"sub": "", "iat": NOW},
                                    {"sub": "a", "iat": NOW, "jti": ""},
                                    {"sub": "a", "iat": NOW, "family": ""}])
async def test_is_revoked_refuses_questions_it_cannot_answer(store, kwargs):
    with pytest.raises((ValueError, TypeError)):
        await store.is_revoked(**kwargs)


@pytest.mark.gen_test
async def test_taken_refresh_token_leaves_a_spent_marker_with_its_family(store, raw):
    record = _code_record(family="fam-7")
    rt = new_token(SUB)
    await store.put_refresh(rt, record, 600)
    assert await store.spent_refresh(rt) is None
    assert await store.take_refresh(rt) == record
    assert await store.take_refresh(rt) is None
    assert await store.spent_refresh(rt) == {"family": "fam-7", "sub": SUB}
    assert 590_000 < raw.pttl(key(store, "rt-spent", rt)) <= 600_000  # the token's remaining life
    assert raw.exists(key(store, "rt", rt)) == 0


@pytest.mark.gen_test
async def test_concurrent_takes_of_one_token_take_it_once(store):
    rt = new_token(SUB)
    await store.put_refresh(rt, _code_record(family="fam"), 600)
    results = await asyncio.gather(*(store.take_refresh(rt) for _ in range(20)))
    assert [r["family"] for r in results if r is not None] == ["fam"]
    assert (await store.spent_refresh(rt))["family"] == "fam"


@pytest.mark.gen_test
async def test_unknown_refresh_token_is_neither_live_nor_spent(store):
    for forged in (new_token(SUB), "forged"):
        assert await store.take_refresh(forged) is None
        assert await store.spent_refresh(forged) is None
        assert await store.peek_refresh(forged) is None


@pytest.mark.gen_test
@pytest.mark.parametrize("over", [{"family": None}, {"family": ""}, {"family": 7}])
async def test_refresh_record_needs_a_family(store, over):
    with pytest.raises(ValueError):
        await store.put_refresh(new_token(SUB), _code_record(**over), 600)


@pytest.mark.gen_test
async def test_a_refresh_token_must_carry_its_records_bucket(store):
    for token in ("rt", new_token("someone-else")):
        with pytest.raises(ValueError):
            await store.put_refresh(token, _code_record(), 600)


@pytest.mark.gen_test
async def test_storing_the_same_refresh_token_twice_is_a_conflict(store):
    rt = new_token(SUB)
    await store.put_refresh(rt, _code_record(family="a"), 600)
    with pytest.raises(StoreConflict):
        await store.put_refresh(rt, _code_record(family="b"), 600)


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
    rl = store.key("ratelimit", "logon", digest(user))
    assert all_keys(raw) == [rl]
    raw.pexpire(rl, 2000)  # as if 58 s of the window had passed
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
async def test_dynamic_clients_are_stored_once(store):
    record = {"id": "dyn.abc", "issued_at": int(store.now())}
    await store.put_client("dyn.abc", record, 600)
    with pytest.raises(StoreConflict):
        await store.put_client("dyn.abc", {**record, "other": 1}, 600)
    assert await store.get_client("dyn.abc") == record
    assert await store.get_client("dyn.other") is None


@pytest.mark.gen_test
async def test_stores_with_different_prefixes_do_not_see_each_other(redis_url, raw):
    a = Store.from_url(redis_url, prefix="a:", now=lambda: NOW)
    b = Store.from_url(redis_url, prefix="b:", now=lambda: NOW)
    try:
        code = await a.put_code(_code_record(), 60)
        await a.revoke_jti("j", exp=NOW + 60, sub=SUB)
        await a.put_json("k", "x", 1, 60)
        assert (await b.redeem_code(code, **REDEEM)).outcome is CodeOutcome.UNKNOWN
        assert not await b.is_revoked(jti="j", sub=SUB, iat=NOW)
        assert await b.get_json("k", "x") is None
        assert (await a.redeem_code(code, **REDEEM)).issued
        assert {k.split(":")[0] for k in all_keys(raw)} == {"a", "b"}
        assert not [k for k in all_keys(raw) if k.startswith("b:") and "revoked" not in k
                    and k != "b:server"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.gen_test
async def test_unix_socket_url_works(redis_server, redis_url):
    s = Store.from_url(redis_server.unix_url)
    try:
        assert await s.ping()
        code = await s.put_code(_code_record(via="unix", created=int(s.now())), 60)
        assert (await s.redeem_code(code, **REDEEM)).record["via"] == "unix"
    finally:
        await s.close()


@pytest.mark.parametrize("prefix", ["", "a{b", "x}"])
def test_a_prefix_that_would_break_the_hash_slots_is_refused(prefix):
    with pytest.raises(ValueError):
        Store.from_url("redis://127.0.0.1:1/0", prefix=prefix)


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
    ones are dropped, so no later request meets a dead connection. (This Redis has no
    persistence: it comes back empty, a new generation.)"""
    pool = private_store._link.client.connection_pool
    for first in (lambda: private_store.is_revoked(jti="x", sub=SUB, iat=private_store.now()),
                  lambda: private_store.put_json("k", "first", 1, 60)):
        await asyncio.gather(*(private_store.is_revoked(jti=f"j{i}", sub=SUB,
                                                        iat=private_store.now())
                               for i in range(6)))
        assert len(pool._available_connections) > 1
        private_redis.stop()
        private_redis.start()
        await asyncio.wait_for(first(), BOUND)
        for i in range(6):
            await asyncio.wait_for(private_store.put_json("k", str(i), i, 60), BOUND)
    assert await private_store.get_json("k", "first") == 1


@pytest.mark.gen_test
async def test_revocation_check_fails_closed_when_redis_hangs(private_redis, private_store):
    now = private_store.now()
    await private_store.revoke_jti("revoked-jti", exp=now + 60, sub=SUB)
    await private_store.put_json("k", "a", "value-a", 60)
    await private_store.put_json("k", "b", "value-b", 60)
    private_redis.pause()
    try:
        for run in (lambda: private_store.is_revoked(jti="revoked-jti", sub=SUB, iat=now),
                    lambda: private_store.is_revoked(jti="other", sub=SUB, iat=now),
                    lambda: private_store.get_json("k", "a"),
                    lambda: private_store.ping()):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(run(), BOUND)
    finally:
        private_redis.resume()
    # the timed-out connections were dropped: no late answer is read as a new one's
    assert await private_store.get_json("k", "b") == "value-b"
    assert await private_store.is_revoked(jti="revoked-jti", sub=SUB, iat=now)
    assert not await private_store.is_revoked(jti="other", sub=SUB, iat=now)


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
        (rl,) = client.keys("konnect:ratelimit:*")
        assert 290 < client.ttl(rl) <= 300
        assert await store.give_back("logon-ip", "10.0.0.1") == 1
        assert await store.give_back("logon-ip", "10.0.0.1") == 0
        assert await store.give_back("logon-ip", "10.0.0.1") == 0  # never below 0
        assert int(client.get(rl)) == 0 and client.ttl(rl) > 0
        assert await store.hit("logon-ip", "10.0.0.1", window=300) == 1
    finally:
        client.close()
