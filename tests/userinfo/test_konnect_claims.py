"""Claims as Konnect releases them: `kc.i.un` and `kc.i.dn` in every identifier user's
`kc.identity` (identifier/user.go `Claims`), `email_verified` whenever the `email` scope is
granted (oidc/claims.go: no omitempty), and userinfo CORS allowing any request header and
HEAD (rs/cors AllowAll in oidc/provider/provider.go, UserInfoHandler)."""

from __future__ import annotations

import json

import pytest
import yaml

from services.userinfo.app import make_app as userinfo_app
from shared.identity import Identity
from shared.users.userfile import UsersFileBackend
from tests.support.op import USERS, make_core, make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("konnect-claims"))


# -- kc.identity -------------------------------------------------------------------------

def test_every_identifier_users_kc_identity_has_its_username_and_display_name():
    nameless = {"identifier-users": Identity(raw_sub="u-1", backend="identifier-users",
                                             username="u1"),
                "identifier-ldap": Identity(raw_sub="uid=u1,dc=x", backend="identifier-ldap",
                                            username="u1"),
                "identifier-kc": Identity(raw_sub="Mg", backend="identifier-kc", username="u1",
                                          extra={"entry_id": "AAAA"})}
    for backend, identity in nameless.items():
        claims = identity.kc_identity()
        assert claims["kc.i.un"] == "u1" and claims["kc.i.dn"] == "", backend
    assert nameless["identifier-kc"].kc_identity() == {
        "kc.i.id": "AAAA", "kc.i.us": "Mg", "kc.i.un": "u1", "kc.i.dn": ""}


# -- userinfo: email_verified, CORS, HEAD -------------------------------------------------

@pytest.fixture
def userinfo_core(state, redis_url, tmp_path, io_loop):
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump(USERS))           # bob has no e-mail address
    core = make_core("userinfo", state, redis_url)
    core.users = UsersFileBackend(str(users))
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(userinfo_core):
    return userinfo_app(userinfo_core.settings, userinfo_core)


async def bearer(core, username, scopes):
    identity = await core.users.authenticate(username, {"alice": "wonderland",
                                                        "bob": "builder"}[username])
    return identity, core.tokens.access_token(client_id="web-rp", identity=identity,
                                              scopes=list(scopes), family="f").token


@pytest.mark.gen_test
async def test_email_scope_always_has_email_verified(http_client, base_url, userinfo_core):
    bob, token = await bearer(userinfo_core, "bob", ("openid", "email"))
    resp = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + token})
    assert json.loads(resp.body) == {"sub": bob.sub, "email_verified": False}
    _, token = await bearer(userinfo_core, "bob", ("openid", "profile"))
    resp = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + token})
    assert "email_verified" not in json.loads(resp.body)


@pytest.mark.gen_test
async def test_userinfo_cors_allows_any_request_header_and_head(http_client, base_url,
                                                                userinfo_core):
    asked = "authorization, x-requested-with, x-custom-trace"
    pre = await http_client.fetch(base_url + "/konnect/v1/userinfo", method="OPTIONS",
                                  headers={"Origin": "https://spa.example.test",
                                           "Access-Control-Request-Method": "HEAD",
                                           "Access-Control-Request-Headers": asked})
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "x-requested-with", "x-custom-trace"}
    assert "HEAD" in pre.headers["Access-Control-Allow-Methods"].split(", ")
    assert "Access-Control-Allow-Credentials" not in pre.headers
    _, token = await bearer(userinfo_core, "alice", ("openid", "profile"))
    get = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                  headers={"Authorization": "Bearer " + token})
    head = await http_client.fetch(base_url + "/konnect/v1/userinfo", method="HEAD",
                                   headers={"Authorization": "Bearer " + token})
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert head.headers["Access-Control-Allow-Origin"] == "*"
    unauthorized = await http_client.fetch(base_url + "/konnect/v1/userinfo", method="HEAD",
                                           raise_error=False)
    assert unauthorized.code == 401 and "Bearer" in unauthorized.headers["WWW-Authenticate"]
