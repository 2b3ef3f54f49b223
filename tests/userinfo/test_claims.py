"""What userinfo releases: only claims the OP knows and the grant allows, never a claims
request's value; signed userinfo is no token of ours (OIDC Core §5.3.2, §5.5.1)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from services.userinfo.handlers import userinfo_claims
from shared.identity import Identity
from shared.session import LOGON_COOKIE
from shared.tokens import TokenError
from tests.support.browser import (
    TRUSTED,
    Browser,
    authorize_url,
    post_form,
    query_of,
    register,
    signed_in,
    userinfo,
)
from tests.support.clients import ODD_ORIGIN_REGISTRY
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic
from tests.support.op import ISSUER
from tests.support.users import ALICE_ENTRY, BOB_ENTRY

END = "/signin/v1/identifier/_/endsession"


# What review r3 sent (reproduction 01): a claims request whose values would make a userinfo
# JWT signed by the OP look like a Kopano access token of another user.
FORGE = {"userinfo": {
    "kc.isAccessToken": {"value": True},
    "kc.identity": {"value": {"kc.i.id": "VICTIM", "kc.i.un": "victim"}},
    "kc.authorizedScopes": {"value": ["openid", "kopano/gc"]},
    "kc.provider": {"value": "identifier-kc"}, "nonce": {"value": "n-forged"},
    "auth_time": {"value": 1}, "acr": {"value": "2"}, "azp": {"value": "x"},
    "custom": {"value": "chosen by the client"}, "email": {"value": "forged@example.test"}}}


async def consented_code(b: Browser, client: dict, scope: str, claims: dict) -> str:
    """A code for a client that needs consent: authorize, consent, authorize again."""
    target = {"client_id": client["client_id"], "redirect_uri": client["redirect_uris"][0]}
    start = authorize_url(scope=scope, claims=json.dumps(claims), **target)
    assert (await b.fetch(start)).headers["Location"].startswith("/signin/v1/consent?")
    ok = await b.api("consent", {"state": "c1", "allow": True, "scope": scope, "ref": "xyz",
                                 "flow_nonce": "n-1", **target})
    assert ok.code == 200, ok.body
    resp = await b.fetch(start + "&" + urlencode({"konnect": "c1", "prompt": "none"}))
    assert resp.code == 302 and resp.headers["Location"].startswith(target["redirect_uri"])
    return query_of(resp.headers["Location"])["code"]


async def signed_userinfo(http_client, base_url) -> tuple[Browser, dict, str]:
    """Reproduction 01 end to end: a dynamic client registered for signed userinfo asks for
    the forging claims; the user consents to `openid` only. (browser, client, userinfo JWT)"""
    b = await signed_in(http_client, base_url)
    client = await register(b, userinfo_signed_response_alg="PS256")
    code = await consented_code(b, client, "openid", FORGE)
    tokens = await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": client["redirect_uris"][0]},
        auth=basic(client["client_id"], client["client_secret"]))
    assert tokens.code == 200, tokens.body
    resp = await userinfo(b, json.loads(tokens.body)["access_token"])
    assert resp.code == 200 and resp.headers["Content-Type"] == "application/jwt"
    return b, client, resp.body.decode()


pytestmark = pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)


@pytest.mark.gen_test(timeout=30)
async def test_signed_userinfo_carries_no_claim_the_client_chose(http_client, base_url, core):
    _, client, jwt = await signed_userinfo(http_client, base_url)
    header, claims = core.keyring.verify(jwt)
    alice = await core.users.lookup("u-alice")
    # sub, and iss/aud of the signed variant (OIDC Core §5.3.2): nothing else was granted
    assert claims == {"sub": alice.sub, "iss": ISSUER, "aud": client["client_id"]}
    assert header["alg"] == "PS256" and header["typ"] == "JWT"


@pytest.mark.gen_test(timeout=30)
async def test_signed_userinfo_is_neither_an_access_token_nor_an_id_token_hint(
        http_client, base_url, core):
    """RFC 8725 §2.8 / §3.12: signed by the same keys, refused wherever another kind of
    JWT is expected here: Bearer at userinfo, introspection, id_token_hint at authorize and
    at end session."""
    b, client, jwt = await signed_userinfo(http_client, base_url)
    assert (await userinfo(b, jwt)).code == 401
    info = await post_form(b, "/konnect/v1/introspect", {"token": jwt})
    assert info.code == 200 and json.loads(info.body) == {"active": False}
    with pytest.raises(TokenError):
        core.tokens.validate_access_token(jwt)
    with pytest.raises(TokenError, match="not an ID token"):
        core.tokens.open_id_token_hint(jwt)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", id_token_hint=jwt,
                                       **TRUSTED))
    assert resp.code == 302
    assert query_of(resp.headers["Location"])["error"] == "invalid_request"
    end = await b.fetch(END + "?" + urlencode({"id_token_hint": jwt}))
    assert end.code == 400 and b"id_token_hint is invalid" in end.body
    assert LOGON_COOKIE in b.cookies  # nobody was signed out by it


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("client_id", ["web-rp", "trusted-rp"])
async def test_userinfo_never_echoes_a_requested_value(http_client, base_url, core, client_id):
    b = Browser(http_client, base_url)
    alice = await core.users.lookup("u-alice")
    access = core.tokens.access_token(client_id=client_id, identity=alice, family="f",
                                      scopes=["openid", "email"], claims=FORGE).token
    body = json.loads((await userinfo(b, access)).body)
    # the backend's email, not the requested value; no other member
    assert body == {"sub": alice.sub, "email": "alice@example.test", "email_verified": True}


def test_userinfo_claims_take_only_known_claims_of_the_user():
    alice = Identity(raw_sub="u-alice", backend="identifier-users", username="alice",
                     name="Alice Example", email="alice@example.test")
    token = {"kc.authorizedScopes": ["openid"], "kc.authorizedClaims": FORGE}
    assert userinfo_claims(alice, token) == {"sub": alice.sub}
    assert userinfo_claims(alice, token, as_asked=True) == {"sub": alice.sub,
                                                            "email": "alice@example.test"}


@pytest.mark.gen_test(timeout=30)
async def test_userinfo_releases_a_requested_standard_claim_only_with_its_scope(
        http_client, base_url, core):
    b = Browser(http_client, base_url)
    alice = await core.users.lookup("u-alice")
    claims = {"userinfo": {"email": None}}
    access = core.tokens.access_token(client_id="web-rp", identity=alice, scopes=["openid"],
                                      family="f", claims=claims).token
    assert json.loads((await userinfo(b, access)).body) == {"sub": alice.sub}
    # a trusted client's claims request is authorized as asked (as Konnect's
    # identity/managers/identifier.go)
    trusted = core.tokens.access_token(client_id="trusted-rp", identity=alice, scopes=["openid"],
                                       family="f", claims=claims).token
    assert json.loads((await userinfo(b, trusted)).body)["email"] == "alice@example.test"


@pytest.mark.gen_test
async def test_claims_request_userinfo_part_releases_claims_with_their_scope(users_op):
    """A standard claim asked for in `claims.userinfo` needs its scope among the token's
    for a client that is not trusted (Konnect's identity/managers/identifier.go; RFC 6749
    §6: a refresh may narrow them); a trusted client's claims request is authorized as asked
    (tests/userinfo/test_userinfo.py, this module). An untrusted client used to get them without."""
    op = users_op
    identity = await op.identity("alice", "wonderland")
    claims = {"userinfo": {"email": None, "given_name": {"essential": True}},
              "id_token": {"family_name": None}}
    tokens = await op.tokens(identity, ("openid",), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub}
    tokens = await op.tokens(identity, ("openid", "email", "profile"), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body["email"] == "alice@example.test" and body["given_name"] == "Alice"


@pytest.mark.gen_test
async def test_claims_request_id_token_part_does_not_reach_userinfo(users_op):
    op = users_op
    identity = await op.identity("alice", "wonderland")
    tokens = await op.tokens(identity, ("openid",), claims={"id_token": {"email": None}})
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub}


@pytest.mark.gen_test
async def test_claims_request_value_never_fills_a_known_claim(users_op):
    """A client's `value` never becomes the user's email, name or ids when the backend has
    none, and unknown claims are not echoed either (OIDC Core §5.5.1; Konnect echoed them,
    fixed, see this module)."""
    op = users_op
    identity = await op.identity("bob", "builder")  # no email, no given name
    claims = {"userinfo": {"email": {"value": "ceo@example.test"},
                           "given_name": {"value": "Chief"}, "id": {"value": 1},
                           "username": {"value": "root"}, "kc.uuid": {"value": "x"},
                           "sub": {"value": "other"}, "iss": {"value": "https://evil.test"},
                           "custom": {"value": "echoed"}}}
    tokens = await op.tokens(identity, ("openid", "profile"), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub, "name": "Bob", "preferred_username": "bob"}
