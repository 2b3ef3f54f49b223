"""What an external authority's sign-in asks of the user backends: the user by name,
without a password (`UserBackend.resolve`), with the identity and subject a password
sign-in of that user gets. LDAP against a real slapd, Kopano against the SOAP stand-in
(tests/support/kopano_standin.py), the users file."""

from __future__ import annotations

import pytest
import yaml

from shared.users.kc import KCBackend
from shared.users.ldap import LDAPBackend
from shared.users.passwords import hash_password
from shared.users.userfile import UsersFileBackend
from tests.support.kopano_standin import KopanoStandIn, KopanoUser

PASSWORD = "resolve me*(pw)"


@pytest.fixture
def ldap(slapd_server, ldap_ou, io_loop):
    for uid in ("alice", "bob"):
        slapd_server.add_user(ldap_ou, uid, PASSWORD, uid.capitalize(), "Example")
    slapd_server.add_user(ldap_ou, "carol", PASSWORD, "Carol", "Example",
                          extra_attrs={"employeeType": "disabled"})
    backend = LDAPBackend(slapd_server.url, ldap_ou, binddn=slapd_server.admin_dn,
                          bindpw=slapd_server.admin_password, timeout=5,
                          user_filter="(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))")
    yield backend
    io_loop.run_sync(backend.close)


@pytest.mark.gen_test
async def test_ldap_resolves_a_user_by_login_without_a_password(ldap):
    alice = await ldap.resolve("alice")
    assert alice == await ldap.authenticate("alice", PASSWORD)
    assert alice.sub == (await ldap.authenticate("alice", PASSWORD)).sub
    for name in ("nobody", "carol", "a*", "*", "alice)(uid=*", ""):  # unknown, disabled, filters
        assert await ldap.resolve(name) is None, name


@pytest.fixture
def kc(io_loop):
    users = [KopanoUser("alice", "correct horse", 3, "Alice Example", "alice@example.test",
                        exid=b"2"),
             KopanoUser("carol", "pw", 5, "Carol", non_active=True),
             KopanoUser("konnect", "service pass", 1)]
    with KopanoStandIn(users) as server:
        backend = KCBackend(server.url, username="konnect", password="service pass", timeout=5)
        yield backend
        io_loop.run_sync(backend.close)


@pytest.mark.gen_test
async def test_kopano_resolves_a_user_on_the_global_session(kc):
    alice = await kc.resolve("alice")
    assert alice is not None and alice.sub == (await kc.authenticate("alice", "correct horse")).sub
    assert alice.username == "alice" and alice.email == "alice@example.test"
    for name in ("nobody", "carol", ""):  # unknown, not active
        assert await kc.resolve(name) is None, name


@pytest.mark.gen_test
async def test_the_users_file_resolves_enabled_users(tmp_path):
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": [
        {"username": "alice", "password": hash_password("pw"), "id": 1},
        {"username": "dora", "password": hash_password("pw"), "id": 2, "disabled": True}]}))
    backend = UsersFileBackend(str(path))
    try:
        assert (await backend.resolve("alice")).sub == (await backend.authenticate("alice", "pw")).sub
        assert await backend.resolve("dora") is None and await backend.resolve("nobody") is None
    finally:
        await backend.close()
