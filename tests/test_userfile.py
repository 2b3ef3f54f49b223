"""The users-file backend: passwords, reload without restart, disabled users, the CLI."""

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

from shared.users import make_backend, BackendConfigError
from shared.users.passwords import hash_password, verify_password
from shared.users.userfile import UsersFileBackend, UsersFileError

ROOT = Path(__file__).resolve().parents[1]
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


def test_password_hash_round_trip_and_malformed_hashes():
    assert verify_password("correct horse", HASH)
    assert not verify_password("correct horsE", HASH)
    assert HASH != hash_password("correct horse")
    for bad in ("", "plain", "scrypt$1$8$1$AA$AA", "md5$x", "scrypt$15$8$1$!!$??", None):
        assert verify_password("x", bad) is False


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "shared.users.userfile", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.mark.asyncio
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
