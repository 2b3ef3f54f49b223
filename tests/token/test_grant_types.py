"""Which client may use which grant: dynamically registered clients keep to their grant_types,
the static registry's list stays informational (as Konnect)."""

from __future__ import annotations

import json

import pytest

from shared.grants import Grant
from shared.store import new_token
from tests.support.clients import EXTRA_CLIENTS
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, post, redeem
from tests.support.op import (
    ALICE,
    REGISTRY,
    SECRET,
)
from tests.support.users import TOKEN_ALICE

DYN_WEB = {"redirect_uris": ["https://dyn.example.test/cb"], "client_name": "Dyn RP"}


async def register(http_client, base_url, metadata):
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps(metadata), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 201, resp.body
    body = json.loads(resp.body)
    return body["client_id"], body["client_secret"]


def refresh_keys(redis_server) -> list:
    raw = redis_server.client()
    try:
        return raw.keys("konnect:rt:*")
    finally:
        raw.close()


async def planted_refresh_token(core, client_id, redirect_uri) -> str:
    """A refresh token of `client_id` as the store would hold it (issued before the client's
    registration restricted its grant types, or by a bug)."""
    token = new_token(ALICE.sub)
    grant = Grant(client_id=client_id, identity=ALICE, scopes=["openid", "offline_access"],
                  redirect_uri=redirect_uri, created=int(core.now()))
    await core.store.put_refresh(token, grant.to_record(), 3600)
    return token


pytestmark = pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))


@pytest.mark.gen_test
async def test_client_without_the_refresh_grant_gets_no_refresh_token_and_cannot_refresh(
        http_client, base_url, core, redis_server):
    # registered without grant_types: ["authorization_code"] (RFC 7591 §2)
    client_id, secret = await register(http_client, base_url, DYN_WEB)
    uri = DYN_WEB["redirect_uris"][0]
    resp, issued = await redeem(http_client, base_url, core, client_id, secret, uri)
    assert resp.code == 200 and issued["access_token"], issued
    assert "offline_access" in issued["scope"]
    assert "refresh_token" not in issued
    assert refresh_keys(redis_server) == []  # none stored either
    planted = await planted_refresh_token(core, client_id, uri)
    resp, err = await post(http_client, base_url, "/konnect/v1/token",
                           {"grant_type": "refresh_token", "refresh_token": planted},
                           {"Authorization": basic(client_id, secret)})
    assert resp.code == 400 and err["error"] == "unauthorized_client", err
    assert await core.store.peek_refresh(planted) is not None  # refused before it was taken


@pytest.mark.gen_test
async def test_grant_types_of_the_static_registry_stay_informational(http_client, base_url, core):
    """As in Konnect, which never enforces `grant_types` (identity/clients/models.go): a YAML
    entry listing only authorization_code keeps getting and using refresh tokens, so a
    migrated registry does not break its apps."""
    uri = "https://code-only.example.test/cb"
    resp, issued = await redeem(http_client, base_url, core, "code-only-rp", "code-only", uri)
    assert resp.code == 200 and issued["refresh_token"], issued
    again, rotated = await post(http_client, base_url, "/konnect/v1/token",
                                {"grant_type": "refresh_token",
                                 "refresh_token": issued["refresh_token"]},
                                {"Authorization": basic("code-only-rp", "code-only")})
    assert again.code == 200 and rotated["refresh_token"], rotated


@pytest.mark.gen_test
async def test_clients_registered_for_refresh_or_without_grant_types_refresh_as_before(
        http_client, base_url, core):
    client_id, secret = await register(http_client, base_url, dict(
        DYN_WEB, grant_types=["authorization_code", "refresh_token"]))
    for client_id, secret, uri in ((client_id, secret, DYN_WEB["redirect_uris"][0]),
                                   ("web-rp", SECRET, "https://rp.example.test/cb")):
        resp, issued = await redeem(http_client, base_url, core, client_id, secret, uri)
        assert resp.code == 200 and issued["refresh_token"], issued
        again, rotated = await post(http_client, base_url, "/konnect/v1/token",
                                    {"grant_type": "refresh_token",
                                     "refresh_token": issued["refresh_token"]},
                                    {"Authorization": basic(client_id, secret)})
        assert again.code == 200 and rotated["refresh_token"] != issued["refresh_token"], rotated
