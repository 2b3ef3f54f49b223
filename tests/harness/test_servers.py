"""The test servers themselves: real slapd and redis-server processes, started, stopped and
found as the suite relies on them (tests/support/servers.py)."""

from __future__ import annotations

import os
import socket

import ldap3
import pytest
import redis
from ldap3.core.exceptions import LDAPException, LDAPNoSuchObjectResult

from tests.support.servers import RedisServer, ServerNotFound, SlapdServer


def _connection(server_url: str, user: str, password: str, **kw) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server(server_url, get_info=ldap3.NONE, connect_timeout=5),
                            user=user, password=password, receive_timeout=5, **kw)


def _close(conn: ldap3.Connection) -> None:
    sock = conn.socket  # ldap3 2.9.1 leaves the socket of a failed connect open
    try:
        conn.unbind()
    finally:
        if sock is not None:
            sock.close()


def who_am_i(server_url: str, user: str, password: str) -> str:
    conn = _connection(server_url, user, password, raise_exceptions=True)
    try:
        conn.bind()
        return conn.extend.standard.who_am_i()
    finally:
        _close(conn)


def can_bind(server_url: str, user: str, password: str) -> bool:
    conn = _connection(server_url, user, password)
    try:
        return conn.bind()
    finally:
        _close(conn)


def exists(slapd: SlapdServer, dn: str) -> bool:
    conn = slapd.connect()
    try:
        return conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[])
    except LDAPNoSuchObjectResult:
        return False
    finally:
        conn.unbind()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_slapd_answers_a_service_bind_as_admin(slapd_server):
    assert who_am_i(slapd_server.url, slapd_server.admin_dn, slapd_server.admin_password) \
        == f"dn:{slapd_server.admin_dn}"
    assert slapd_server.base_dn == "dc=example,dc=test"
    assert exists(slapd_server, slapd_server.people_dn)


def test_slapd_answers_on_its_ldapi_socket(slapd_server):
    assert slapd_server.ldapi_url.startswith("ldapi://%2F")
    conn = slapd_server.connect(ldapi=True)
    try:
        assert conn.extend.standard.who_am_i() == f"dn:{slapd_server.admin_dn}"
    finally:
        conn.unbind()


def test_wrong_admin_password_is_refused(slapd_server):
    assert not can_bind(slapd_server.url, slapd_server.admin_dn, "not-the-password")


def test_user_added_in_the_test_binds_with_its_password_only(slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "alice", "c@rol*(pw)", "Alice", "Anders")
    assert dn == f"uid=alice,{ldap_ou}"
    assert who_am_i(slapd_server.url, dn, "c@rol*(pw)") == f"dn:{dn}"
    assert not can_bind(slapd_server.url, dn, "wrong")


def test_user_entry_has_the_given_attributes_and_a_hashed_password(slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "bob", "pw-bob", "Bob", "Brown",
                               extra_attrs={"telephoneNumber": "+49 30 1234"})
    conn = slapd_server.connect()
    try:
        conn.search(dn, "(objectClass=inetOrgPerson)", search_scope=ldap3.BASE,
                    attributes=["uid", "cn", "givenName", "sn", "mail", "telephoneNumber",
                                "userPassword"])
        entry = conn.entries[0]
    finally:
        conn.unbind()
    assert entry.cn.value == "Bob Brown" and entry.givenName.value == "Bob"
    assert entry.mail.value == "bob@example.test"
    assert entry.telephoneNumber.value == "+49 30 1234"
    password = entry.userPassword.value
    assert (password.decode() if isinstance(password, bytes) else password).startswith("{SSHA}")


def test_users_cannot_read_each_others_password(slapd_server, ldap_ou):
    alice = slapd_server.add_user(ldap_ou, "alice", "pw-a", "Alice", "A")
    bob = slapd_server.add_user(ldap_ou, "bob", "pw-b", "Bob", "B")
    conn = slapd_server.connect(alice, "pw-a")
    try:
        conn.search(bob, "(objectClass=*)", search_scope=ldap3.BASE,
                    attributes=["uid", "userPassword"])
        assert conn.entries[0].uid.value == "bob"
        assert not conn.response[0]["raw_attributes"].get("userPassword")
    finally:
        conn.unbind()


def test_per_test_ou_is_named_after_the_test(slapd_server, ldap_ou):
    assert ldap_ou == f"ou=test_per_test_ou_is_named_after_the_test,{slapd_server.base_dn}"
    assert exists(slapd_server, ldap_ou)


@pytest.mark.parametrize("case", ["a/b", "x y"])
def test_per_test_ou_name_is_sanitised(ldap_ou, case):
    assert ldap_ou.startswith("ou=test_per_test_ou_name_is_sanitised_")
    assert "/" not in ldap_ou and " " not in ldap_ou


def test_temporary_ou_is_removed_with_its_entries(slapd_server):
    with slapd_server.temporary_ou("scratch") as ou:
        user = slapd_server.add_user(ou, "carol", "pw", "Carol", "Clark")
        inner = slapd_server.add_ou("nested", parent=ou)
        assert exists(slapd_server, user) and exists(slapd_server, inner)
    assert not exists(slapd_server, ou)
    assert not exists(slapd_server, user)


def test_slapd_stop_and_start_keeps_address_and_entries(private_slapd):
    ou = private_slapd.add_ou("restart")
    dn = private_slapd.add_user(ou, "dave", "pw-d", "Dave", "D")
    url, ldapi, pid = private_slapd.url, private_slapd.ldapi_url, private_slapd.pid
    private_slapd.stop()
    assert gone(pid) and not private_slapd.running
    with pytest.raises(LDAPException):
        who_am_i(url, dn, "pw-d")
    private_slapd.start()
    assert (private_slapd.url, private_slapd.ldapi_url) == (url, ldapi)
    assert private_slapd.pid != pid
    assert who_am_i(url, dn, "pw-d") == f"dn:{dn}"


def test_slapd_moves_to_another_port_when_its_port_is_taken(tmp_path_factory):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        with SlapdServer(tmp_path_factory.mktemp("slapd-taken"), ports=[taken]) as server:
            assert server.port != taken
            assert who_am_i(server.url, server.admin_dn, server.admin_password)


def test_missing_slapd_says_what_to_install(tmp_path):
    with pytest.raises(ServerNotFound, match="slapd not found: apt-get install slapd ldap-utils"):
        SlapdServer(tmp_path, executable="no-such-slapd-binary")


def test_redis_answers_on_tcp_and_on_its_unix_socket(redis_server):
    for client in (redis.Redis.from_url(redis_server.url),
                   redis.Redis.from_url(redis_server.unix_url)):
        try:
            assert client.ping()
            assert client.info("server")["process_id"] == redis_server.pid
        finally:
            client.close()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.unix_url == f"unix://{redis_server.socket_path}?db=0"


def test_redis_has_no_persistence(redis_server):
    client = redis_server.client()
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_redis_stop_and_start_keeps_port_and_socket(private_redis):
    url, unix_url, pid = private_redis.url, private_redis.unix_url, private_redis.pid
    private_redis.stop()
    assert gone(pid) and not private_redis.running
    client = private_redis.client(socket_connect_timeout=2)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
        private_redis.start()
        assert (private_redis.url, private_redis.unix_url) == (url, unix_url)
        assert client.ping() and client.info("server")["process_id"] == private_redis.pid
    finally:
        client.close()


def test_redis_moves_to_another_port_when_its_port_is_taken(tmp_path_factory):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        with RedisServer(tmp_path_factory.mktemp("redis-taken"), ports=[taken]) as server:
            assert server.port != taken
            client = server.client()
            try:
                assert client.info("server")["process_id"] == server.pid
            finally:
                client.close()


def test_servers_leave_no_process_behind(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis-gone")) as r:
        redis_pid = r.pid
    with SlapdServer(tmp_path_factory.mktemp("slapd-gone")) as s:
        slapd_pid = s.pid
        s.pause()  # even a stopped (SIGSTOP) server is terminated
    assert gone(redis_pid) and gone(slapd_pid)


def test_missing_redis_server_says_what_to_install(tmp_path):
    with pytest.raises(ServerNotFound,
                       match="redis-server not found: apt-get install redis-server"):
        RedisServer(tmp_path, executable="no-such-redis-server")
