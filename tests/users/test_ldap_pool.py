"""The LDAP backend's pooled service connections and its one deadline per operation,
against a real slapd: connections are reused and bounded, a dead one is replaced, a hung
directory answers every caller within the deadline, an exhausted pool is a clear 503."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from shared.users import BackendUnavailable
from shared.users.ldap import LDAPBackend

PASSWORD = "pool pw*(1)"


def add(server, ou: str, uid: str) -> str:
    return server.add_user(ou, uid, PASSWORD, uid.capitalize(), "Example")


def connections_to(port: int) -> int:
    """Established TCP connections of this process to 127.0.0.1:`port` (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def backend_for(server, ou: str, **kw) -> LDAPBackend:
    kw.setdefault("timeout", 5)
    return LDAPBackend(server.url, ou, binddn=server.admin_dn, bindpw=server.admin_password, **kw)


@pytest.mark.gen_test(timeout=60)
async def test_lookups_and_logons_reuse_one_service_connection(slapd_server, ldap_ou):
    dns = [add(slapd_server, ldap_ou, f"user{i}") for i in range(5)]
    backend = backend_for(slapd_server, ldap_ou)
    try:
        before = connections_to(slapd_server.port)
        for _ in range(10):
            for dn in dns:
                assert (await backend.lookup(dn)).raw_sub == dn
            assert (await backend.authenticate("user1", PASSWORD)).raw_sub == dns[1]
        # one long-lived service connection; the user binds' own connections are closed
        assert connections_to(slapd_server.port) - before == 1
    finally:
        await backend.close()
    assert connections_to(slapd_server.port) == before


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_lookups_never_open_more_connections_than_workers(slapd_server, ldap_ou):
    dns = [add(slapd_server, ldap_ou, f"user{i}") for i in range(4)]
    backend = backend_for(slapd_server, ldap_ou, workers=3)
    try:
        before = connections_to(slapd_server.port)
        for _ in range(5):
            found = await asyncio.gather(*(backend.lookup(dn) for dn in dns * 10))
            assert [i.raw_sub for i in found] == dns * 10
            assert 1 <= connections_to(slapd_server.port) - before <= 3
    finally:
        await backend.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_restarted_directory_is_no_error_the_dead_connection_is_replaced(
        private_slapd, caplog):
    ou = private_slapd.people_dn
    dn = add(private_slapd, ou, "alice")
    backend = backend_for(private_slapd, ou)
    try:
        assert (await backend.lookup(dn)).raw_sub == dn
        private_slapd.stop()   # the pooled connection dies with it
        private_slapd.start()  # same port
        caplog.set_level(logging.INFO, logger="konnect.users.ldap")
        assert (await backend.lookup(dn)).raw_sub == dn
        assert (await backend.authenticate("alice", PASSWORD)).raw_sub == dn
        assert "pooled connection failed" in caplog.text and "unavailable" not in caplog.text
        assert connections_to(private_slapd.port) == 1
    finally:
        await backend.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_hung_directory_answers_every_logon_within_the_deadline(private_slapd):
    """A directory that accepts TCP and never answers: 50 concurrent logons on 8 threads,
    each answered 503 within its one deadline (timeout + 1 s at most), whatever it waited
    for (a thread, a connect, a bind, a search); then the directory comes back and a logon
    works on a bounded number of connections."""
    ou = private_slapd.people_dn
    dn = add(private_slapd, ou, "alice")
    timeout = 2
    backend = backend_for(private_slapd, ou, timeout=timeout, workers=8)
    try:
        assert (await backend.lookup(dn)).raw_sub == dn  # one pooled connection, then hang
        private_slapd.pause()

        async def logon() -> float:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await backend.authenticate("alice", PASSWORD)
            return time.monotonic() - started

        try:
            elapsed = await asyncio.gather(*(logon() for _ in range(50)))
        finally:
            private_slapd.resume()
        assert max(elapsed) <= timeout + 1, sorted(elapsed)[-5:]
        assert (await backend.authenticate("alice", PASSWORD)).raw_sub == dn
        assert connections_to(private_slapd.port) <= 8
    finally:
        await backend.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_exhausted_pool_is_a_clear_503(private_slapd, caplog):
    ou = private_slapd.people_dn
    dn = add(private_slapd, ou, "alice")
    backend = backend_for(private_slapd, ou, timeout=1, workers=2)
    try:
        private_slapd.pause()
        try:
            results = await asyncio.gather(*(backend.lookup(dn) for _ in range(6)),
                                           return_exceptions=True)
        finally:
            private_slapd.resume()
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        # those that waited on the directory, and those that never got a thread (whether a
        # queued one got a thread just before its deadline is a race: either line may be
        # missing, never both)
        assert "no answer within 1 s" in caplog.text or "all 2 connections busy" in caplog.text
        assert (await backend.lookup(dn)).raw_sub == dn
    finally:
        await backend.close()
