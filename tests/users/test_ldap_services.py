"""The LDAP backend behind the running token, userinfo and identifier services: claims read
from the directory at request time, deleted and re-created users, an outage."""

from __future__ import annotations

import time

import ldap3
import pytest

from shared import jose
from shared.identity import public_subject
from tests.support.services import ALL_SCOPES, PASSWORD, add_person, delete, ldap_env, modify


@pytest.mark.gen_test
@pytest.mark.parametrize("scopes,expected", [
    (("openid",), {}),
    (("openid", "profile"), {"name": "Lena Example", "given_name": "Lena",
                             "family_name": "Example", "preferred_username": "lena"}),
    (("openid", "email"), {"email": "lena@example.test", "email_verified": False}),
    (("openid", "konnect/id"), {"id": 4711, "username": "lena"}),
    (("openid", "konnect/uuid"), {"kc.uuid": "b5b0-uuid"}),
    (ALL_SCOPES, {"name": "Lena Example", "given_name": "Lena", "family_name": "Example",
                  "preferred_username": "lena", "email": "lena@example.test",
                  "email_verified": False, "id": 4711, "username": "lena",
                  "kc.uuid": "b5b0-uuid"}),
])
async def test_ldap_user_gets_the_claims_of_the_authorized_scopes(ldap_op, slapd_server, ldap_ou,
                                                                  scopes, expected):
    dn = add_person(slapd_server, ldap_ou, "lena")
    identity = await ldap_op.identity("lena", PASSWORD)
    tokens = await ldap_op.tokens(identity, scopes)
    resp, body = await ldap_op.userinfo(tokens["access_token"])
    assert resp.code == 200, body
    assert body == {"sub": public_subject(dn, "identifier-ldap"), **expected}


@pytest.mark.gen_test
async def test_ldap_raw_sub_scope_returns_the_dn(ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD),
                                  ("openid", "konnect/raw_sub"))
    resp, body = await ldap_op.userinfo(tokens["access_token"])
    assert resp.code == 200 and body == {"sub": dn}
    _, id_claims = ldap_op.token_core.keyring.verify(tokens["id_token"])
    assert id_claims["sub"] == dn
    # the access token's sub stays Konnect's public subject (as its oidc/provider/tokens.go)
    assert jose.unverified_claims(tokens["access_token"])["sub"] == \
        public_subject(dn, "identifier-ldap")


@pytest.mark.gen_test
async def test_ldap_claims_are_read_from_the_directory_at_request_time(ldap_op, slapd_server,
                                                                       ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    modify(slapd_server, dn, {"cn": [(ldap3.MODIFY_REPLACE, ["Lena Renamed"])],
                              "mail": [(ldap3.MODIFY_REPLACE, ["lena.r@example.test"])]})
    _, body = await ldap_op.userinfo(tokens["access_token"])
    assert body["name"] == "Lena Renamed" and body["email"] == "lena.r@example.test"


@pytest.mark.gen_test
async def test_ldap_user_deleted_after_issue_is_invalid_token(ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 200
    delete(slapd_server, dn)
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 401
    status, body = await ldap_op.refresh(tokens["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_ldap_user_recreated_with_another_entry_is_not_the_old_token_user(
        ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    delete(slapd_server, dn)
    # same uid, another place in the tree: another DN, so another subject
    other_ou = slapd_server.add_ou("moved", ldap_ou)
    add_person(slapd_server, other_ou, "lena")
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 401


@pytest.mark.gen_test
async def test_stopped_directory_is_503_never_claims_and_recovers(start, private_slapd):
    ou = private_slapd.add_ou("people-outage")
    add_person(private_slapd, ou, "lena")
    op = start(ldap_env(private_slapd, ou), ["--ldap-timeout", "2"])
    tokens = await op.tokens(await op.identity("lena", PASSWORD))
    assert await op.userinfo_status(tokens["access_token"]) == 200
    private_slapd.stop()
    try:
        started = time.monotonic()
        resp, body = await op.userinfo(tokens["access_token"])
        assert resp.code == 503 and body == {
            "error": "temporarily_unavailable",
            "error_description": "the service is temporarily unavailable, try again later"}
        assert resp.headers["Retry-After"] and resp.headers["Cache-Control"] == "no-store"
        assert time.monotonic() - started < 2  # a refused connection is not waited on
        # the token service cannot check the user either: 503, and the refresh token is
        # not used up by the outage
        status, body = await op.refresh(tokens["refresh_token"])
        assert status == 503 and body["error"] == "temporarily_unavailable"
    finally:
        private_slapd.start()
    assert await op.userinfo_status(tokens["access_token"]) == 200
    status, body = await op.refresh(tokens["refresh_token"])
    assert status == 200, body  # the retry after the outage is not mistaken for reuse
    assert await op.userinfo_status(tokens["access_token"]) == 200
    assert await op.userinfo_status(body["access_token"]) == 200
