"""The userinfo endpoint (OIDC Core §5.3): bearer tokens (RFC 6750), claims per scope,
revocation, signed answers."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import pytest
import yaml

from services.userinfo.app import make_app as userinfo_app
from shared import jose
from shared.deps import Core
from tests.support.browser import Browser, userinfo_status
from tests.support.clients import EXTRA_CLIENTS
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.malformed import JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD
from tests.support.op import (
    ALICE,
    ISSUER,
    REGISTRY,
    USERS,
    settings_for,
)
from tests.support.services import serving
from tests.support.users import TOKEN_ALICE


async def alice(core):
    return await core.users.lookup("7c0e-alice")


async def mint(core, scopes=("openid", "profile", "email"), *, client_id="web-rp", identity=None,
               claims=None, family="fam"):
    identity = identity or await alice(core)
    return core.tokens.access_token(client_id=client_id, identity=identity, scopes=list(scopes),
                                    family=family, claims=claims)


async def get(http_client, base_url, token=None, *, method="GET", form=None, headers=None, query=""):
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    body = None
    if method == "POST":
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        body = urlencode(form or {})
    return await http_client.fetch(f"{base_url}/konnect/v1/userinfo{query}", method=method,
                                   body=body, headers=hdrs, raise_error=False)


pytestmark = pytest.mark.op(users=tuple(USERS["users"]), service="userinfo", apps=("userinfo",))


@pytest.mark.gen_test
async def test_profile_and_email_claims(http_client, base_url, core):
    minted = await mint(core)
    resp = await get(http_client, base_url, minted.token)
    assert resp.code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    body = json.loads(resp.body)
    ident = await alice(core)
    assert body == {"sub": ident.sub, "name": "Alice Example", "given_name": "Alice",
                    "family_name": "Example", "preferred_username": "alice",
                    "email": "alice@example.test", "email_verified": True}


@pytest.mark.gen_test
@pytest.mark.parametrize("scopes,expected", [
    (("openid",), set()),
    (("openid", "email"), {"email", "email_verified"}),
    (("openid", "konnect/id"), {"id", "username"}),
    (("openid", "konnect/uuid"), {"kc.uuid"}),
])
async def test_claims_follow_the_authorized_scopes(http_client, base_url, core, scopes, expected):
    body = json.loads((await get(http_client, base_url, (await mint(core, scopes)).token)).body)
    assert set(body) - {"sub"} == expected
    if "id" in expected:
        assert body["id"] == 1001 and body["username"] == "alice"
    if "kc.uuid" in expected:
        assert body["kc.uuid"] == "7c0e-alice"


@pytest.mark.gen_test
async def test_raw_sub_scope_returns_the_raw_subject(http_client, base_url, core):
    body = json.loads((await get(http_client, base_url,
                                 (await mint(core, ("openid", "konnect/raw_sub"))).token)).body)
    assert body["sub"] == "7c0e-alice"


@pytest.mark.gen_test
@pytest.mark.parametrize("client_id,email", [("trusted-rp", True), ("web-rp", False)])
async def test_claims_request_userinfo_part(http_client, base_url, core, client_id, email):
    """A standard claim asked for without its scope: a trusted client's claims request is
    authorized as asked (as Konnect's identity/managers/identifier.go), another client's is
    narrowed to the token's scopes; a requested `value` is never echoed (OIDC Core §5.5.1;
    tests/userinfo/test_claims.py)."""
    claims = {"userinfo": {"email": None, "custom": {"value": "x"}, "other": {"essential": True}}}
    body = json.loads((await get(http_client, base_url, (await mint(
        core, ("openid",), claims=claims, client_id=client_id)).token)).body)
    assert ("email" in body) is email and "custom" not in body and "other" not in body
    if email:
        assert body["email"] == "alice@example.test"


@pytest.mark.gen_test
async def test_post_with_form_token(http_client, base_url, core):
    minted = await mint(core)
    resp = await get(http_client, base_url, method="POST", form={"access_token": minted.token})
    assert resp.code == 200 and json.loads(resp.body)["name"] == "Alice Example"


@pytest.mark.gen_test
async def test_query_string_token_is_refused(http_client, base_url, core):
    minted = await mint(core)
    resp = await get(http_client, base_url, query=f"?access_token={minted.token}")
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_missing_token_is_a_bare_challenge(http_client, base_url):
    resp = await get(http_client, base_url)
    assert resp.code == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="konnect"'


@pytest.mark.gen_test
async def test_two_tokens_is_invalid_request(http_client, base_url, core):
    minted = await mint(core)
    resp = await get(http_client, base_url, minted.token, method="POST",
                     form={"access_token": minted.token})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test
@pytest.mark.parametrize("mangle", [
    lambda t: t[:-4] + "AAAA",
    lambda t: "garbage",
    lambda t: t.split(".")[0] + ".e30.",
])
async def test_bad_tokens_are_invalid_token_without_detail(http_client, base_url, core, mangle):
    minted = await mint(core)
    resp = await get(http_client, base_url, mangle(minted.token))
    assert resp.code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert json.loads(resp.body) == {"error": "invalid_token"}


@pytest.mark.gen_test
async def test_expired_token_is_invalid(http_client, base_url, core):
    minted = await mint(core)
    core.tokens.now = lambda: time.time() + 600 + core.settings.clock_skew + 1
    resp = await get(http_client, base_url, minted.token)
    assert resp.code == 401


@pytest.mark.gen_test
async def test_id_token_is_not_accepted(http_client, base_url, core):
    id_token = core.tokens.id_token(client_id="web-rp", identity=await alice(core))
    resp = await get(http_client, base_url, id_token)
    assert resp.code == 401


@pytest.mark.gen_test
async def test_revoked_token_is_refused_at_once(http_client, base_url, core):
    minted = await mint(core, family="fam-r")
    assert (await get(http_client, base_url, minted.token)).code == 200
    sub = (await alice(core)).sub
    await core.store.revoke_jti(minted.jti, minted.exp, sub=sub)
    assert (await get(http_client, base_url, minted.token)).code == 401
    other = await mint(core, family="fam-s")
    await core.store.revoke_family("fam-s", other.exp, sub=sub)
    assert (await get(http_client, base_url, other.token)).code == 401
    third = await mint(core, family="fam-t")
    await core.store.revoke_subject(sub, int(time.time()), 600)
    assert (await get(http_client, base_url, third.token)).code == 401


@pytest.mark.gen_test
async def test_without_openid_scope_is_insufficient_scope(http_client, base_url, core):
    resp = await get(http_client, base_url, (await mint(core, ("profile",))).token)
    assert resp.code == 403 and 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


@pytest.mark.gen_test
async def test_user_removed_or_disabled_in_the_backend(http_client, base_url, core, users_path):
    minted = await mint(core)
    doc = yaml.safe_load(users_path.read_text())
    doc["users"][0]["disabled"] = True
    users_path.write_text(yaml.safe_dump(doc))
    resp = await get(http_client, base_url, minted.token)
    assert resp.code == 401
    doc["users"] = doc["users"][1:]
    users_path.write_text(yaml.safe_dump(doc))
    assert (await get(http_client, base_url, minted.token)).code == 401


@pytest.mark.gen_test
async def test_signed_userinfo_for_registered_clients(http_client, base_url, core):
    minted = await mint(core, client_id="rs256-rp")
    resp = await get(http_client, base_url, minted.token)
    assert resp.code == 200 and resp.headers["Content-Type"] == "application/jwt"
    header, claims = core.keyring.verify(resp.body.decode())
    assert header["alg"] == "RS256"
    assert claims["iss"] == ISSUER and claims["aud"] == "rs256-rp" and claims["name"] == "Alice Example"
    assert jose.unverified_claims(resp.body.decode())["sub"] == (await alice(core)).sub


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("token", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_userinfo_bearer_with_deep_json_is_401(http_client, base_url, token):
    b = Browser(http_client, base_url)
    assert await userinfo_status(b, token) == 401


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_userinfo_refuses_a_form_body_token_on_get(http_client, core, state, redis_url,
                                                         users_path):
    ucore = Core.with_users(settings_for("userinfo", state, redis_url,
                                         ["--users-file", str(users_path)]))
    try:
        access = ucore.tokens.access_token(client_id="web-rp", identity=ALICE,
                                           scopes=["openid", "profile"], family="fam")
        body = urlencode({"access_token": access.token})
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with serving(userinfo_app(ucore.settings, ucore)) as url:
            get = await http_client.fetch(url + "/konnect/v1/userinfo", method="GET", body=body,
                                          headers=form, allow_nonstandard_methods=True,
                                          raise_error=False)
            assert get.code == 400 and json.loads(get.body)["error"] == "invalid_request"
            assert b"alice" not in get.body
            posted = await http_client.fetch(url + "/konnect/v1/userinfo", method="POST",
                                             body=body, headers=form, raise_error=False)
            assert posted.code == 200 and json.loads(posted.body)["sub"] == ALICE.sub
            bearer = await http_client.fetch(url + "/konnect/v1/userinfo", raise_error=False,
                                             headers={"Authorization": "Bearer " + access.token})
            assert bearer.code == 200
    finally:
        await ucore.close()


@pytest.mark.gen_test
async def test_cors_preflight_allows_the_bearer_header_and_lists_its_methods(http_client,
                                                                             base_url):
    resp = await http_client.fetch(base_url + "/konnect/v1/userinfo", method="OPTIONS",
                                   raise_error=False, headers={
                                       "Origin": "https://rp.example.test",
                                       "Access-Control-Request-Method": "GET",
                                       "Access-Control-Request-Headers": "authorization"})
    assert resp.code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in resp.headers


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("loss", ["FLUSHALL", "restart without persistence"])
async def test_losing_redis_data_never_revives_a_revoked_token(http_client, state, users_path,
                                                             private_redis, loss):
    """A revoked access token stays refused at userinfo when Redis loses its data (a
    FLUSHALL, a restore of an older state, a restart without persistence): everything
    issued before the loss is refused (users sign in again), never revived; tokens issued
    after it work."""
    ucore = Core.with_users(settings_for("userinfo", state, private_redis.url,
                                         ["--users-file", str(users_path)]))
    try:
        async with serving(userinfo_app(ucore.settings, ucore)) as url:
            async def status(token: str) -> int:
                resp = await http_client.fetch(url + "/konnect/v1/userinfo", raise_error=False,
                                               headers={"Authorization": "Bearer " + token})
                return resp.code

            await asyncio.sleep(1.1)  # tokens issued in a second after the generation began
            revoked = await mint(ucore, family="fam-revoked")
            kept = await mint(ucore, family="fam-kept")
            assert await status(revoked.token) == 200 and await status(kept.token) == 200
            await ucore.store.revoke_jti(revoked.jti, revoked.exp, sub=(await alice(ucore)).sub)
            assert await status(revoked.token) == 401
            await asyncio.sleep(1.1)
            if loss == "FLUSHALL":
                with private_redis.client() as raw:
                    raw.flushall()
            else:
                private_redis.stop()
                private_redis.start()
            assert await status(revoked.token) == 401  # the revocation is gone; still refused
            assert await status(kept.token) == 401     # as is all that came before
            await asyncio.sleep(1.1)
            fresh = await mint(ucore, family="fam-fresh")
            assert await status(fresh.token) == 200
    finally:
        await ucore.close()
