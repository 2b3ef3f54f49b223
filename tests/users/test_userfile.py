"""The users file backend and its command-line tool (shared/users/userfile.py)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shared.users import BackendConfigError, make_backend
from shared.users.passwords import hash_password, verify_password
from shared.users.userfile import UsersFileBackend, UsersFileError

ROOT = Path(__file__).resolve().parents[2]


HASH = hash_password("correct horse")


def write(path: Path, users) -> Path:
    path.write_text(yaml.safe_dump({"users": users}))
    # a distinct mtime even on coarse file systems
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    return path


@pytest.fixture
def users_file(tmp_path):
    return write(tmp_path / "users.yaml", [
        {"username": "alice", "password": HASH, "name": "Alice", "email": "a@example.test",
         "email_verified": True, "id": 1001, "uuid": "u-alice"},
        {"username": "mallory", "password": HASH, "disabled": True, "uuid": "u-mallory"},
    ])


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "shared.users.userfile", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_password_hash_round_trip_and_malformed_hashes():
    assert verify_password("correct horse", HASH)
    assert not verify_password("correct horsE", HASH)
    assert HASH != hash_password("correct horse")
    for bad in ("", "plain", "scrypt$1$8$1$AA$AA", "md5$x", "scrypt$15$8$1$!!$??", None):
        assert verify_password("x", bad) is False


@pytest.mark.gen_test
async def test_authenticate_and_lookup(users_file):
    backend = UsersFileBackend(str(users_file))
    try:
        alice = await backend.authenticate("Alice", "correct horse")
        assert alice.username == "alice" and alice.raw_sub == "u-alice" and alice.numeric_id == 1001
        assert alice.backend == "identifier-users" and alice.email_verified
        assert await backend.authenticate("alice", "wrong") is None
        assert await backend.authenticate("nobody", "correct horse") is None
        assert await backend.authenticate("alice", "") is None
        assert await backend.authenticate("mallory", "correct horse") is None
        assert (await backend.lookup("u-alice")).name == "Alice"
        assert await backend.lookup("u-mallory") is None
        assert await backend.lookup("missing") is None
    finally:
        await backend.close()


@pytest.mark.gen_test
async def test_changes_are_picked_up_and_a_broken_edit_keeps_the_last_good(users_file, caplog):
    backend = UsersFileBackend(str(users_file))
    try:
        assert await backend.lookup("u-bob") is None
        write(users_file, [{"username": "bob", "password": HASH, "uuid": "u-bob"}])
        assert (await backend.lookup("u-bob")).username == "bob"
        assert await backend.lookup("u-alice") is None
        users_file.write_text("users: [ {broken")
        assert (await backend.lookup("u-bob")).username == "bob"
        assert any("keeping the previous version" in r.message for r in caplog.records)
    finally:
        await backend.close()


@pytest.mark.gen_test
async def test_password_checks_do_not_block_the_event_loop(users_file):
    backend = UsersFileBackend(str(users_file))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        start = time.monotonic()
        for _ in range(3):
            await backend.authenticate("alice", "correct horse")
        elapsed = time.monotonic() - start
        assert ticks >= max(1, int(elapsed / 0.005) // 4)
    finally:
        task.cancel()
        await backend.close()


def test_broken_file_at_start_is_a_clear_error(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(yaml.safe_dump({"users": [{"username": "a"}, {"username": "A"}, {"name": "x"}]}))
    with pytest.raises(UsersFileError) as info:
        UsersFileBackend(str(path))
    assert "duplicate username" in str(info.value) and "username is required" in str(info.value)
    with pytest.raises(UsersFileError, match="cannot read"):
        UsersFileBackend(str(tmp_path / "missing.yaml"))


def test_make_backend_needs_a_users_file(tmp_path):
    class S:
        identity_manager = "users"
        users_file = None
    with pytest.raises(BackendConfigError, match="--users-file"):
        make_backend(S())
    S.identity_manager = "guest"  # Konnect's add-on manager: not a backend here
    with pytest.raises(BackendConfigError, match="not available"):
        make_backend(S())


@pytest.mark.gen_test
async def test_cli_adds_users_and_sets_passwords(tmp_path):
    path = tmp_path / "users.yaml"
    added = run_cli("add", str(path), "carol", "--name", "Carol C", "--email", "c@example.test",
                    "--password-stdin", stdin="first pass\n")
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = run_cli("add", str(path), "carol", "--password-stdin", stdin="x\n")
    assert again.returncode == 2 and "exists" in again.stderr
    backend = UsersFileBackend(str(path))
    try:
        carol = await backend.authenticate("carol", "first pass")
        assert carol.name == "Carol C" and carol.numeric_id == 1001 and carol.uuid
        changed = run_cli("passwd", str(path), "carol", "--password-stdin", stdin="second pass\n")
        assert changed.returncode == 0
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000))
        assert await backend.authenticate("carol", "first pass") is None
        assert (await backend.authenticate("carol", "second pass")).uuid == carol.uuid
    finally:
        await backend.close()
    assert run_cli("passwd", str(path), "nobody", "--password-stdin", stdin="x\n").returncode == 2
    assert "carol" in run_cli("list", str(path)).stdout


@pytest.mark.parametrize("users,needle", [
    ([{"username": "alice", "password": HASH, "uuid": "u-1"},
      {"username": "mallory", "password": HASH, "uuid": "u-1"}],
     "users[1] (mallory) and users[0] (alice) have the same subject 'u-1'"),
    ([{"username": "u-2", "password": HASH},
      {"username": "eve", "password": HASH, "uuid": "u-2"}],
     "users[1] (eve) and users[0] (u-2) have the same subject 'u-2'"),
    ([{"username": "bob", "password": HASH, "uuid": 12},
      {"username": "12", "password": HASH}],
     "users[1] (12) and users[0] (bob) have the same subject '12'"),
])
def test_two_users_with_one_subject_are_refused(tmp_path, users, needle):
    """OIDC Core §2: sub is locally unique and never reassigned. raw sub = uuid, else
    username: two entries sharing it would get one another's userinfo."""
    with pytest.raises(UsersFileError) as info:
        UsersFileBackend(str(write(tmp_path / "u.yaml", users)))
    assert needle in str(info.value)


@pytest.mark.gen_test
async def test_a_reload_giving_two_users_one_subject_keeps_the_last_good_version(users_file,
                                                                                 caplog):
    backend = UsersFileBackend(str(users_file))
    try:
        write(users_file, [
            {"username": "alice", "password": HASH, "name": "Alice", "uuid": "u-alice"},
            {"username": "mallory", "password": hash_password("m"), "name": "Mallory",
             "uuid": "u-alice"},
        ])
        assert (await backend.lookup("u-alice")).name == "Alice"
        assert await backend.authenticate("mallory", "m") is None
        [record] = [r for r in caplog.records if "keeping the previous version" in r.message]
        assert record.levelname == "ERROR"
        assert "users[1] (mallory) and users[0] (alice) have the same subject" in record.message
    finally:
        await backend.close()


@pytest.mark.parametrize("name", ["alice ", " alice", "alice\t", "\u00a0alice"])
def test_usernames_with_leading_or_trailing_white_space_are_refused(tmp_path, name):
    users = [{"username": "alice", "password": HASH, "uuid": "u1"},
             {"username": name, "password": HASH, "uuid": "u2"}]
    with pytest.raises(UsersFileError, match="leading or trailing white space"):
        UsersFileBackend(str(write(tmp_path / "u.yaml", users)))


def test_usernames_equal_after_nfc_and_lower_casing_are_refused(tmp_path):
    users = [{"username": "jos\u00e9", "password": HASH, "uuid": "u1"},        # NFC
             {"username": "JOSE\u0301", "password": HASH, "uuid": "u2"}]       # NFD, upper
    with pytest.raises(UsersFileError) as info:
        UsersFileBackend(str(write(tmp_path / "u.yaml", users)))
    assert "'JOSE\\u0301' and 'jos\\xe9' (users[0]) are the same name" in str(info.value)


@pytest.mark.gen_test
@pytest.mark.parametrize("stored", ["jos\u00e9", "jose\u0301"])
async def test_sign_in_matches_usernames_in_nfc_whatever_form_either_side_uses(tmp_path, stored):
    path = write(tmp_path / "u.yaml", [{"username": stored, "password": HASH, "uuid": "u-jose"}])
    backend = UsersFileBackend(str(path))
    try:
        for typed in ("jos\u00e9", "jose\u0301", "JOS\u00c9", "JOSE\u0301"):
            assert (await backend.authenticate(typed, "correct horse")).raw_sub == "u-jose"
        for typed in ("jose", "jos\u00e9 ", "jos\u00e9\u200b"):
            assert await backend.authenticate(typed, "correct horse") is None
    finally:
        await backend.close()


@pytest.mark.parametrize("content,needle", [
    ("users: [\n  - {username: a- username: alice\n", "not valid YAML (line"),
    ("- username: alice\n  password: x\n", "top level must be a mapping with a 'users' list"),
    ("just a string\n", "top level must be a mapping"),
    ("users:\n- {username: alice, uuid: u1}\n- {username: bob, uuid: u1}\n", "same subject 'u1'"),
])
@pytest.mark.parametrize("command", ["add", "list"])
def test_cli_on_a_broken_file_prints_one_line_and_exits_2(tmp_path, content, needle, command):
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    result = run_cli(command, str(path), *(["bob", "--password-stdin"] if command == "add" else []),
                     stdin="pw\n")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert path.read_text() == content                      # never rewritten


def test_a_top_level_list_is_refused_by_the_backend_too(tmp_path):
    """It used to load as a file without users: every sign-in failed, silently."""
    path = tmp_path / "u.yaml"
    path.write_text("- username: alice\n  password: x\n")
    with pytest.raises(UsersFileError, match="top level must be a mapping"):
        UsersFileBackend(str(path))


def test_cli_refuses_white_space_and_stores_usernames_in_nfc(tmp_path):
    path = tmp_path / "u.yaml"
    refused = run_cli("add", str(path), "bob ", "--password-stdin", stdin="pw\n")
    assert refused.returncode == 2 and "white space" in refused.stderr and not path.exists()
    added = run_cli("add", str(path), "jose\u0301", "--password-stdin", stdin="pw\n")
    assert added.returncode == 0, added.stderr
    assert yaml.safe_load(path.read_text())["users"][0]["username"] == "jos\u00e9"
    again = run_cli("add", str(path), "JOS\u00c9", "--password-stdin", stdin="pw\n")
    assert again.returncode == 2 and "exists" in again.stderr
