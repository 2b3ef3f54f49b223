"""What a person types at sign-in never looks like an outage of the directory: any
username or password ldap3 refuses to send (SASLprep's prohibited characters, text that
is not Unicode, over-long values) is a failed logon, against a real slapd, directly and
through the identifier's logon API."""

from __future__ import annotations

import json

import pytest
from services.identifier.app import make_app as identifier_app
from shared.users import make_backend
from shared.users.base import MAX_PASSWORD, MAX_USERNAME
from shared.users.ldap import LDAPBackend
from tests.support.op import ISSUER, ldap_flags, make_core, make_state

PASSWORD = "input pw*(1)"

REFUSED_PASSWORDS = [
    "\u0000",                     # NUL: SASLprep's ASCII control characters
    PASSWORD + "\u0000",
    "pass\u0007word",             # BEL
    "pass\u0085word",             # NEL: a non-ASCII control character
    "pass\ue000word",             # private use
    "pass\ufdd0word",             # a non-character
    "pass\U000e0001word",         # a tagging character
    "pass\u200eword",             # a change of display direction
    "\u0627" + "a",               # RandALCat and LCat mixed (bidi rule)
    "pass\ud800word",             # an unpaired surrogate: not Unicode at all
    "x" * (MAX_PASSWORD + 1),     # longer than any sign-in may send
]


@pytest.fixture
def alice(slapd_server, ldap_ou) -> str:
    return slapd_server.add_user(ldap_ou, "alice", PASSWORD, "Alice", "Example")


def backend_for(server, ou: str) -> LDAPBackend:
    return LDAPBackend(server.url, ou, binddn=server.admin_dn, bindpw=server.admin_password,
                       timeout=5)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("password", REFUSED_PASSWORDS)
async def test_a_password_ldap3_refuses_is_a_failed_logon_not_an_outage(
        slapd_server, ldap_ou, alice, password, caplog):
    backend = backend_for(slapd_server, ldap_ou)
    try:
        assert await backend.authenticate("alice", password) is None
        assert (await backend.authenticate("alice", PASSWORD)).raw_sub == alice
    finally:
        await backend.close()
    assert "unavailable" not in caplog.text
    assert password not in caplog.text


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("username", ["ali\ud800ce", "alice\u0000", "a" * (MAX_USERNAME + 1),
                                      "alice" + "\u0301" * 300])
async def test_a_username_that_cannot_be_sent_is_a_failed_logon(slapd_server, ldap_ou, alice,
                                                                username, caplog):
    backend = backend_for(slapd_server, ldap_ou)
    try:
        assert await backend.authenticate(username, PASSWORD) is None
    finally:
        await backend.close()
    assert "unavailable" not in caplog.text


@pytest.fixture
def identifier_core(tmp_path, redis_url, slapd_server, ldap_ou, alice, io_loop):
    """The identifier service's Core with the LDAP backend as make_backend builds it."""
    state = make_state(tmp_path)
    core = make_core("identifier", state, redis_url, ldap_flags(slapd_server, ldap_ou))
    core.users = make_backend(core.settings)
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(identifier_core):
    return identifier_app(identifier_core.settings, identifier_core)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("password", ["\u0000", "pass\u0007word", "pass\ue000word"])
async def test_the_logon_api_answers_a_refused_password_like_a_wrong_one(
        http_client, base_url, password, caplog):
    async def logon(pw: str):
        return await http_client.fetch(
            base_url + "/signin/v1/identifier/_/logon", method="POST", raise_error=False,
            headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                     "Origin": ISSUER},
            body=json.dumps({"params": ["alice", pw, "1"], "state": "s1"}))

    wrong, refused = await logon("wrong password"), await logon(password)
    assert wrong.code == refused.code == 204, (wrong.code, refused.code, refused.body)
    assert refused.body == wrong.body
    assert "unavailable" not in caplog.text.lower()
    ok = await logon(PASSWORD)
    assert ok.code == 200 and json.loads(ok.body)["success"] is True
