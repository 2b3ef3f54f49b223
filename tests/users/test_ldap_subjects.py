"""Which LDAP attribute a subject comes from, against a real slapd: a renamed user and a
newcomer given the freed name keep apart with entryUUID subjects, share one with DN (or
uid) subjects, which the backend warns about at start-up; what `make run` sets by
default; entries without the numeric-id attribute sign in as in Konnect."""

from __future__ import annotations

import logging

import ldap3
import pytest

from shared.users.ldap import Attributes, LDAPBackend

PASSWORD = "subject pw*(1)"
WARNING = "can be renamed and then given to someone else"


def backend_for(server, ou: str, **kw) -> LDAPBackend:
    return LDAPBackend(server.url, ou, binddn=server.admin_dn, bindpw=server.admin_password,
                       timeout=5, **kw)


def rename(server, dn: str, new_rdn: str) -> None:
    conn = server.connect()
    try:
        conn.modify_dn(dn, new_rdn)
        # the login attribute follows the RDN, as directory tools do on a rename
        conn.modify(dn.replace(dn.split(",")[0], new_rdn, 1),
                    {"uid": [(ldap3.MODIFY_REPLACE, [new_rdn.split("=", 1)[1]])]})
    finally:
        conn.unbind()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("sub, newcomer_inherits", [
    ((), True),               # the DN: Konnect's default
    (("uid",), True),         # a renamable attribute
    (("entryUUID",), False),  # RFC 4530: assigned once, never reused
])
async def test_a_newcomer_given_a_freed_username_gets_the_old_subject_only_if_it_is_mutable(
        slapd_server, ldap_ou, sub, newcomer_inherits):
    backend = backend_for(slapd_server, ldap_ou, attributes=Attributes(sub=sub))
    try:
        first = slapd_server.add_user(ldap_ou, "carol", PASSWORD, "Carol", "First")
        carol = await backend.authenticate("carol", PASSWORD)
        rename(slapd_server, first, "uid=carol2")
        slapd_server.add_user(ldap_ou, "carol", "newcomer pw", "Carol", "Second")
        newcomer = await backend.authenticate("carol", "newcomer pw")
        assert newcomer.family_name == "Second"
        assert (newcomer.raw_sub == carol.raw_sub) is newcomer_inherits
        assert (newcomer.sub == carol.sub) is newcomer_inherits
        # whom the first carol's tokens and sessions now reach
        holder = await backend.lookup(carol.raw_sub)
        if newcomer_inherits:
            assert holder is None or holder.family_name == "Second"
        else:
            assert holder.family_name == "First" and holder.username == "carol2"
    finally:
        await backend.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("sub, warned", [((), True), (("uid",), True), (("mail", "entryUUID"), True),
                                         (("entryUUID",), False), (("objectGUID",), False),
                                         (("entryuuid",), False)])
async def test_subjects_from_a_mutable_attribute_are_warned_about_at_start(
        slapd_server, ldap_ou, caplog, sub, warned):
    caplog.set_level(logging.WARNING, logger="konnect.users.ldap")
    backend = backend_for(slapd_server, ldap_ou, attributes=Attributes(sub=sub))
    await backend.close()
    assert (WARNING in caplog.text) is warned
    if warned:
        assert "LDAP_SUB_ATTRIBUTES=entryUUID" in caplog.text


def test_make_run_gives_ldap_entryuuid_subjects_unless_told_otherwise(tmp_path):
    from deploy.run import prepare_environment
    base = {"OIDC_ISSUER_IDENTIFIER": "https://localhost:8443",
            "KONNECTD_IDENTITY_MANAGER": "ldap"}
    env = dict(base)
    prepare_environment(env, tmp_path / "a")
    assert env["LDAP_SUB_ATTRIBUTES"] == "entryUUID"
    kept = dict(base, LDAP_SUB_ATTRIBUTES="")   # an existing Konnect site's DN subjects
    prepare_environment(kept, tmp_path / "b")
    assert kept["LDAP_SUB_ATTRIBUTES"] == ""
    users = dict(base, KONNECTD_IDENTITY_MANAGER="users")
    prepare_environment(users, tmp_path / "c")
    assert "LDAP_SUB_ATTRIBUTES" not in users


@pytest.mark.gen_test(timeout=60)
async def test_an_entry_without_the_numeric_id_attribute_signs_in_without_an_id(
        slapd_server, ldap_ou):
    """Konnect's identifier/backends/ldap.go: an entry without LDAP_UIDNUMBER_ATTRIBUTE
    signs in with id 0, which no `id` claim carries; an unparsable value is refused."""
    with_id = slapd_server.add_user(ldap_ou, "dan", PASSWORD, "Dan", "Example",
                                    extra_attrs={"employeeNumber": "4711"})
    without = slapd_server.add_user(ldap_ou, "eve", PASSWORD, "Eve", "Example")
    slapd_server.add_user(ldap_ou, "fay", PASSWORD, "Fay", "Example",
                          extra_attrs={"employeeNumber": "n/a"})
    backend = backend_for(slapd_server, ldap_ou, attributes=Attributes(uidnumber="employeeNumber"))
    try:
        dan = await backend.authenticate("dan", PASSWORD)
        assert (dan.raw_sub, dan.numeric_id) == (with_id, 4711)
        eve = await backend.authenticate("eve", PASSWORD)
        assert (eve.raw_sub, eve.numeric_id) == (without, None)
        assert (await backend.lookup(without)) == eve
        assert await backend.authenticate("fay", PASSWORD) is None
    finally:
        await backend.close()
