"""The token service over HTTP against real Redis: grants, client auth, rotation, revocation,
introspection, discovery and JWKS."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from services.token.app import make_app
from shared import jose
from shared.grants import Grant
from shared.identity import Identity
from shared.deps import Core
from shared.keys import SigningKey, public_jwk
from shared.users.passwords import hash_password
from tests.support.op import (ALICE, ISSUER, SECRET, make_state, mint_code, pkce_pair,
                                settings_for)

CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
JWT_CLIENT = f"""
  - id: jwt-rp
    token_endpoint_auth_method: private_key_jwt
    redirect_uris: [https://jwt.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(CLIENT_KEY), kid="c1"))}
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    from tests.support.op import REGISTRY
    directory = tmp_path_factory.mktemp("token-state")
    state = make_state(directory, REGISTRY + JWT_CLIENT)
    # the users backend knows alice (as tests.support.op.ALICE), so the token service
    # looks her up at every grant, as in production
    state["users"] = str(directory / "users.yaml")
    Path(state["users"]).write_text(yaml.safe_dump({"users": [{
        "username": ALICE.username, "password": hash_password("alice-password"),
        "name": ALICE.name, "given_name": ALICE.given_name, "family_name": ALICE.family_name,
        "email": ALICE.email, "email_verified": True, "id": ALICE.numeric_id,
        "uuid": ALICE.uuid}]}))
    return state


@pytest.fixture
def core(state, redis_url, io_loop):
    core = Core.with_users(settings_for("token", state, redis_url,
                                        ["--users-file", state["users"]]))
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return make_app(core.settings, core)


def basic(client_id: str, secret: str) -> str:
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


async def post(http_client, base_url, path, form, headers=None):
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    body = form if isinstance(form, str) else urlencode(form)
    resp = await http_client.fetch(base_url + path, method="POST", body=body, headers=hdrs,
                                   raise_error=False)
    return resp, (json.loads(resp.body) if resp.body and resp.headers.get("Content-Type", "").startswith("application/json") else None)


async def token(http_client, base_url, form, auth=("web-rp", SECRET)):
    headers = {"Authorization": basic(*auth)} if auth else {}
    return await post(http_client, base_url, "/konnect/v1/token", form, headers)


def code_form(code, **extra):
    return {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://rp.example.test/cb", **extra}


async def introspect(http_client, base_url, tok, auth=("web-rp", SECRET)):
    resp, body = await post(http_client, base_url, "/konnect/v1/introspect", {"token": tok},
                            {"Authorization": basic(*auth)})
    assert resp.code == 200
    return body


@pytest.mark.gen_test
async def test_code_grant_with_basic_auth_returns_verifiable_tokens(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 200, body
    assert resp.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert set(body["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    jwks = json.loads((await http_client.fetch(base_url + "/konnect/v1/jwks.json")).body)
    from shared.keys import client_key
    keys = {k["kid"]: client_key(k) for k in jwks["keys"]}
    header, claims = jose.verify_with_keys(body["id_token"], keys)
    assert header["alg"] == "RS256"  # default for clients that registered no alg
    assert claims["aud"] == "web-rp" and claims["iss"] == ISSUER and claims["sub"] == ALICE.sub
    assert claims["nonce"] == "n-0S6" and claims["at_hash"] == jose.left_hash(body["access_token"], "RS256")
    _, access = jose.verify_with_keys(body["access_token"], keys)
    assert access["kc.isAccessToken"] and access["kc.identity"]["kc.i.un"] == "alice"
    assert body["refresh_token"] and "." not in body["refresh_token"]


@pytest.mark.gen_test
async def test_client_secret_post_works(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url,
                             code_form(code, client_id="web-rp", client_secret=SECRET), auth=None)
    assert resp.code == 200, body


@pytest.mark.gen_test
async def test_registered_alg_is_used_for_the_id_token(http_client, base_url, core):
    code = await mint_code(core, client_id="rs256-rp", redirect_uri="https://rs.example.test/cb")
    resp, body = await token(http_client, base_url,
                             code_form(code, redirect_uri="https://rs.example.test/cb"),
                             auth=("rs256-rp", "rs"))
    assert resp.code == 200, body
    assert jose.unverified_header(body["id_token"])["alg"] == "PS256"


@pytest.mark.gen_test
@pytest.mark.parametrize("auth,form,status,error", [
    (("web-rp", "wrong"), {}, 401, "invalid_client"),
    (("nobody", "x"), {}, 401, "invalid_client"),
    (None, {"client_id": "web-rp"}, 401, "invalid_client"),
    (None, {}, 401, "invalid_client"),
    (("web-rp", SECRET), {"client_secret": SECRET}, 400, "invalid_request"),
    (("web-rp", SECRET), {"client_id": "trusted-rp"}, 401, "invalid_client"),
])
async def test_client_authentication_failures(http_client, base_url, core, auth, form, status, error):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code, **form), auth=auth)
    assert resp.code == status and body["error"] == error
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    # a failed authentication must not consume the code
    ok, _ = await token(http_client, base_url, code_form(code))
    assert ok.code == 200


@pytest.mark.gen_test
async def test_malformed_basic_header_is_invalid_client(http_client, base_url, core):
    resp, body = await post(http_client, base_url, "/konnect/v1/token", code_form("x"),
                            {"Authorization": "Basic !!!notbase64"})
    assert resp.code == 401 and body["error"] == "invalid_client"


@pytest.mark.gen_test
async def test_reused_code_is_invalid_grant_and_revokes_tokens(http_client, base_url, core):
    code = await mint_code(core)
    first, body = await token(http_client, base_url, code_form(code))
    assert first.code == 200
    assert (await introspect(http_client, base_url, body["access_token"]))["active"] is True
    second, err = await token(http_client, base_url, code_form(code))
    assert second.code == 400 and err["error"] == "invalid_grant"
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    refreshed, rerr = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                          "refresh_token": body["refresh_token"]})
    assert refreshed.code == 400 and rerr["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_concurrent_redemptions_of_one_code_succeed_once(http_client, base_url, core):
    code = await mint_code(core)
    results = await asyncio.gather(*[token(http_client, base_url, code_form(code)) for _ in range(6)])
    assert sorted(r.code for r, _ in results) == [200] + [400] * 5


@pytest.mark.gen_test
@pytest.mark.parametrize("form,why", [
    ({"redirect_uri": "https://rp.example.test/cb/"}, "redirect"),
    ({"redirect_uri": None}, "redirect"),
    ({"code": "not-a-code"}, "unknown"),
])
async def test_code_grant_refusals(http_client, base_url, core, form, why):
    code = await mint_code(core)
    fields = {k: v for k, v in {**code_form(code), **form}.items() if v is not None}
    resp, body = await token(http_client, base_url, fields)
    assert resp.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_code_of_another_client_is_refused(http_client, base_url, core):
    code = await mint_code(core, client_id="trusted-rp", redirect_uri="https://rp.example.test/cb")
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_pkce_rules(http_client, base_url, core):
    verifier, challenge = pkce_pair()
    public = {"client_id": "public-app", "redirect_uri": "http://127.0.0.1:5555/cb"}
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb",
                           challenge=challenge)
    wrong, body = await token(http_client, base_url, dict(code_form(code, **public),
                                                          code_verifier=pkce_pair()[0]), auth=None)
    assert wrong.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb",
                           challenge=challenge)
    ok, body = await token(http_client, base_url, dict(code_form(code, **public),
                                                       code_verifier=verifier), auth=None)
    assert ok.code == 200, body
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb")
    nopkce, body = await token(http_client, base_url, code_form(code, **public), auth=None)
    assert nopkce.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core)
    stray, body = await token(http_client, base_url, code_form(code, code_verifier=verifier))
    assert stray.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core, challenge=challenge)
    missing, body = await token(http_client, base_url, code_form(code))
    assert missing.code == 400 and body["error"] == "invalid_grant"


async def leftovers(core, code) -> tuple:
    """What a code redemption left in Redis: its marker and every refresh record."""
    store = core.store
    refresh_keys = [k async for k in store._redis.scan_iter(match=store.key("rt", "*"))]
    return await store.code_redemption(code), refresh_keys


@pytest.mark.gen_test
async def test_redemption_refused_after_the_one_round_trip_leaves_no_tokens(http_client,
                                                                            base_url, core):
    """A public client's code without PKCE matches in Redis (one round trip writes the
    marker and the refresh record) but is refused by the PKCE rule: both are removed."""
    await core.store._redis.flushdb()
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb")
    resp, body = await token(http_client, base_url, code_form(
        code, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb"), auth=None)
    assert resp.code == 400 and body["error"] == "invalid_grant"
    assert await leftovers(core, code) == (None, [])


@pytest.mark.gen_test
async def test_user_gone_at_redemption_is_invalid_grant_and_leaves_no_tokens(http_client,
                                                                            base_url, core):
    await core.store._redis.flushdb()
    ghost = Identity(raw_sub="ghost-uuid", backend=ALICE.backend, username="ghost")
    code = await mint_code(core, identity=ghost)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 400 and body["error"] == "invalid_grant"
    assert await leftovers(core, code) == (None, [])


@pytest.mark.gen_test
async def test_code_stored_without_created_time_still_redeems_in_two_steps(http_client,
                                                                        base_url, core):
    """Codes written before grants carried `created` (an upgrade with codes in flight)."""
    code = "legacy-" + "x" * 40
    record = Grant(client_id="web-rp", identity=ALICE, scopes=["openid", "offline_access"],
                   redirect_uri="https://rp.example.test/cb").to_record()
    await core.store.put_code(code, record, 60)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 200 and body["refresh_token"]
    marker, _ = await leftovers(core, code)
    claims = jose.unverified_claims(body["access_token"])
    assert marker["jti"] == claims["jti"] and marker["family"] == claims["kc.family"]
    again, rotated = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                        "refresh_token": body["refresh_token"]})
    assert again.code == 200 and rotated["refresh_token"] != body["refresh_token"]


@pytest.mark.gen_test
async def test_one_round_trip_redemption_records_what_it_issued(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 200
    marker, _ = await leftovers(core, code)
    claims = jose.unverified_claims(body["access_token"])
    assert marker == {"family": claims["kc.family"], "jti": claims["jti"],
                      "exp": marker["exp"]}
    assert marker["exp"] >= claims["iat"] + core.settings.refresh_token_expiration
    assert (await core.store.peek_refresh(body["refresh_token"]))["family"] == claims["kc.family"]


@pytest.mark.gen_test
async def test_refresh_rotates_and_reuse_revokes_the_family(http_client, base_url, core):
    code = await mint_code(core)
    _, first = await token(http_client, base_url, code_form(code))
    resp, second = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                       "refresh_token": first["refresh_token"]})
    assert resp.code == 200, second
    assert second["refresh_token"] != first["refresh_token"] and second["id_token"]
    assert (await introspect(http_client, base_url, second["access_token"]))["active"]
    reuse, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": first["refresh_token"]})
    assert reuse.code == 400 and err["error"] == "invalid_grant"
    for tok in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert (await introspect(http_client, base_url, tok)) == {"active": False}
    after, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": second["refresh_token"]})
    assert after.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_refresh_scope_may_narrow_but_not_widen(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    wide, err = await token(http_client, base_url, {"grant_type": "refresh_token", "scope": "openid email",
                                                    "refresh_token": first["refresh_token"]})
    assert wide.code == 400 and err["error"] == "invalid_scope"
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    narrow, body = await token(http_client, base_url, {"grant_type": "refresh_token", "scope": "openid",
                                                       "refresh_token": first["refresh_token"]})
    assert narrow.code == 200 and body["scope"] == "openid"
    again, body2 = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                       "refresh_token": body["refresh_token"]})
    assert again.code == 200 and set(body2["scope"].split()) == {"openid", "profile", "offline_access"}


@pytest.mark.gen_test
async def test_refused_refresh_leaves_only_the_presented_token(http_client, base_url, core):
    """The one-round-trip rotation stores the successor before the scope check: a refusal
    removes it and puts the presented token back, so exactly that one stays usable."""
    await core.store._redis.flushdb()
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    _, before = await leftovers(core, code)
    wide, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                    "scope": "openid email",
                                                    "refresh_token": first["refresh_token"]})
    assert wide.code == 400 and err["error"] == "invalid_scope"
    _, after = await leftovers(core, code)
    assert after == before and len(after) == 1
    assert await core.store.peek_refresh(first["refresh_token"]) is not None


@pytest.mark.gen_test
async def test_no_refresh_token_without_offline_access(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid",))
    _, body = await token(http_client, base_url, code_form(code))
    assert "refresh_token" not in body


@pytest.mark.gen_test
async def test_refresh_token_of_another_client_is_refused(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    resp, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                    "refresh_token": body["refresh_token"]},
                            auth=("trusted-rp", "other-secret"))
    assert resp.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
@pytest.mark.parametrize("form,error", [
    ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
    ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ({}, "invalid_request"),
    ("grant_type=authorization_code&grant_type=refresh_token", "invalid_request"),
])
async def test_bad_grant_requests(http_client, base_url, form, error):
    resp, body = await token(http_client, base_url, form)
    assert resp.code == 400 and body["error"] == error


@pytest.mark.gen_test
async def test_wrong_method_and_content_type(http_client, base_url):
    get = await http_client.fetch(base_url + "/konnect/v1/token", raise_error=False)
    assert get.code == 405 and json.loads(get.body)["error"] == "method_not_allowed"
    resp = await http_client.fetch(base_url + "/konnect/v1/token", method="POST", raise_error=False,
                                   body=json.dumps({"grant_type": "authorization_code"}),
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_revoking_a_refresh_token_revokes_the_family(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke",
                         {"token": body["refresh_token"], "token_type_hint": "refresh_token"},
                         {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    again, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": body["refresh_token"]})
    assert again.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_revoking_an_access_token_and_unknown_tokens(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid",))
    _, body = await token(http_client, base_url, code_form(code))
    other, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": body["access_token"]},
                          {"Authorization": basic("trusted-rp", "other-secret")})
    assert other.code == 200
    assert (await introspect(http_client, base_url, body["access_token"]))["active"] is True
    mine, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": body["access_token"]},
                         {"Authorization": basic("web-rp", SECRET)})
    assert mine.code == 200
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    unknown, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": "nonsense"},
                            {"Authorization": basic("web-rp", SECRET)})
    assert unknown.code == 200
    noauth, err = await post(http_client, base_url, "/konnect/v1/revoke", {"token": "x"})
    assert noauth.code == 401 and err["error"] == "invalid_client"


@pytest.mark.gen_test
async def test_introspection_shows_own_tokens_only_unless_trusted(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    info = await introspect(http_client, base_url, body["access_token"])
    assert info["active"] and info["client_id"] == "web-rp" and info["sub"] == ALICE.sub
    assert info["username"] == "alice" and info["token_type"] == "Bearer"
    rt = await introspect(http_client, base_url, body["refresh_token"])
    assert rt["active"] and rt["token_type"] == "refresh_token"
    untrusted_other = await introspect(http_client, base_url, body["access_token"],
                                       auth=("rs256-rp", "rs"))
    assert untrusted_other == {"active": False}
    trusted = await introspect(http_client, base_url, body["access_token"],
                               auth=("trusted-rp", "other-secret"))
    assert trusted["active"]


@pytest.mark.gen_test
async def test_private_key_jwt_with_replay_protection(http_client, base_url, core):
    signer = SigningKey(kid="c1", public=CLIENT_KEY.public_key(), algs=frozenset({"ES256"}),
                        alg="ES256", private=CLIENT_KEY)
    now = int(time.time())

    def assertion(aud=ISSUER + "/konnect/v1/token", jti="j1", exp=now + 60):
        return jose.sign({"iss": "jwt-rp", "sub": "jwt-rp", "aud": aud, "jti": jti, "exp": exp}, signer)

    async def redeem(value):
        code = await mint_code(core, client_id="jwt-rp", redirect_uri="https://jwt.example.test/cb")
        form = code_form(code, redirect_uri="https://jwt.example.test/cb",
                         client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                         client_assertion=value)
        return await token(http_client, base_url, form, auth=None)

    ok, body = await redeem(assertion())
    assert ok.code == 200, body
    replay, err = await redeem(assertion())
    assert replay.code == 401 and err["error"] == "invalid_client"
    for bad in (assertion(aud="https://elsewhere", jti="j2"), assertion(jti="j3", exp=now - 120),
                assertion(jti="j4", exp=now + 3600)):
        resp, err = await redeem(bad)
        assert resp.code == 401 and err["error"] == "invalid_client"
    secret_instead, err = await token(http_client, base_url, code_form("x", client_id="jwt-rp"), auth=None)
    assert secret_instead.code == 401


@pytest.mark.gen_test
async def test_discovery_lists_what_is_supported(http_client, base_url):
    resp = await http_client.fetch(base_url + "/.well-known/openid-configuration")
    doc = json.loads(resp.body)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "max-age" in resp.headers["Cache-Control"]
    assert doc["issuer"] == ISSUER
    assert doc["token_endpoint"] == ISSUER + "/konnect/v1/token"
    assert doc["authorization_endpoint"] == ISSUER + "/signin/v1/identifier/_/authorize"
    assert "code" in doc["response_types_supported"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "registration_endpoint" not in doc
    assert doc["authorization_response_iss_parameter_supported"] is True


@pytest.mark.gen_test
async def test_jwks_has_public_keys_only(http_client, base_url, state):
    resp = await http_client.fetch(base_url + "/konnect/v1/jwks.json")
    assert resp.headers["Content-Type"] == "application/jwk-set+json"
    keys = json.loads(resp.body)["keys"]
    assert {state["kid"], "default", state["kid"] + "-rs256"} <= {k["kid"] for k in keys}
    for key in keys:
        assert key["use"] == "sig" and key["alg"] and "d" not in key and "p" not in key


@pytest.mark.gen_test
async def test_public_documents_have_an_etag_and_no_store_answers_do_not(http_client, base_url,
                                                                         core):
    for path in ("/.well-known/openid-configuration", "/konnect/v1/jwks.json"):
        resp = await http_client.fetch(base_url + path)
        assert resp.headers.get("Etag"), path
        again = await http_client.fetch(base_url + path, raise_error=False,
                                         headers={"If-None-Match": resp.headers["Etag"]})
        assert again.code == 304, path
    # a GET answered no-store (Tornado would add an ETag to any GET): none
    health = await http_client.fetch(base_url + "/health-check")
    assert health.headers["Cache-Control"] == "no-store" and "Etag" not in health.headers
