"""What konnectd issued before the switch (docs/konnect-compatibility.md, "Migrating from
konnectd"): its refresh JWTs are exchanged once for a rotated family of ours, checked as
Konnect checked them; its `dyn.<JWT>` clients keep working with their secret, under the
rules of a client registered here. The tokens and ids are minted the way konnectd minted
them (tests/support/konnect_tokens.py), with the OP's signing key (the operator kept
Konnect's key as the signing key) or a key in `--validation-keys-path`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.deps import Core
from shared.identity import public_subject
from shared.keys import private_jwk
from shared.store import StoreUnavailable
from tests.support import konnect_tokens as kt
from tests.support.browser import authorize_url, signed_in
from tests.support.fixtures import serve_on_one_origin
from tests.support.http import TRUSTED_AUTH, basic, introspect, post, token
from tests.support.op import ISSUER, SECRET, make_state, mint_code, settings_for
from tests.support.services import serving
from tests.support.users import ALICE_ENTRY, BOB_ENTRY, write_users

pytestmark = pytest.mark.op(service="token", users=(ALICE_ENTRY, BOB_ENTRY))

BACKEND = "identifier-users"          # the users file backend's name (Konnect's: identifier-ldap, ...)
ALICE_SUB = ALICE_ENTRY["uuid"]       # its raw subject
SCOPES = ["openid", "profile", "email", "offline_access"]
DYN_CB = "https://dyn.example.test/cb"


def konnect_key(state: dict):
    """The OP's signing key file, which was konnectd's (the operator kept it)."""
    with open(state["key"], "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def konnect_refresh(state: dict, *, key=None, kid=None, client_id="web-rp", raw_sub=ALICE_SUB,
                    backend=BACKEND, scopes=SCOPES, **kwargs) -> str:
    identity = kwargs.pop("identity", kt.identifier_identity(raw_sub, "alice", "Alice Example"))
    return kt.refresh_token(key or konnect_key(state), kid or state["kid"], issuer=ISSUER,
                            client_id=client_id, raw_sub=raw_sub, backend=backend,
                            identity=identity, scopes=scopes, **kwargs)


def refresh_form(rt: str, **extra) -> dict:
    return {"grant_type": "refresh_token", "refresh_token": rt, **extra}


def claims_of(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def userinfo(http_client, base_url, access_token: str):
    return await http_client.fetch(base_url + "/konnect/v1/userinfo", raise_error=False,
                                   headers={"Authorization": "Bearer " + access_token})


# -- refresh tokens ----------------------------------------------------------------------

@pytest.mark.gen_test
async def test_konnect_refresh_token_is_exchanged_once_for_a_family_of_ours(
        http_client, base_url, state, core):
    rt = konnect_refresh(state)
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body
    ours = body["refresh_token"]
    assert "." not in ours and ours != rt                       # opaque, rotated from now on
    assert body["scope"].split() == SCOPES
    access = core.tokens.validate_access_token(body["access_token"])
    assert access["sub"] == public_subject(ALICE_SUB, BACKEND) == claims_of(rt)["sub"]
    assert access["aud"] == "web-rp" and access["kc.identity"]["kc.i.id"] == ALICE_SUB
    id_token = claims_of(body["id_token"])
    assert id_token["sub"] == access["sub"] and id_token["aud"] == "web-rp"
    assert (await userinfo(http_client, base_url, body["access_token"])).code == 200

    resp, rotated = await token(http_client, base_url, refresh_form(ours))
    assert resp.code == 200, resp.body                         # our rotation takes over
    assert rotated["refresh_token"] not in (ours, rt)

    # the Konnect token a second time: refused, and the family issued from it ends
    resp, again = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 400 and again["error"] == "invalid_grant"
    assert again["error_description"] == "refresh token already used"
    resp, gone = await token(http_client, base_url, refresh_form(rotated["refresh_token"]))
    assert resp.code == 400 and gone["error"] == "invalid_grant", gone
    for tok in (body["access_token"], rotated["access_token"]):
        assert (await userinfo(http_client, base_url, tok)).code == 401
        assert (await introspect(http_client, base_url, tok))["active"] is False


@pytest.mark.gen_test
async def test_the_family_lives_no_longer_than_the_konnect_token(http_client, base_url, state):
    issued = int(time.time()) - 86400
    rt = konnect_refresh(state, now=issued, duration=7 * 86400)   # konnectd's exp: in 6 days
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body
    info = await introspect(http_client, base_url, body["refresh_token"])
    assert info["active"] is True and info["exp"] == claims_of(rt)["exp"]
    assert info["client_id"] == "web-rp" and info["sub"] == claims_of(rt)["sub"]


@pytest.mark.gen_test
@pytest.mark.op(service="token", users=(ALICE_ENTRY,), args=("--refresh-token-expiration", "3600"))
async def test_our_refresh_lifetime_counts_from_konnects_iat(http_client, base_url, state):
    young = konnect_refresh(state, now=int(time.time()) - 600)
    resp, body = await token(http_client, base_url, refresh_form(young))
    assert resp.code == 200, resp.body
    info = await introspect(http_client, base_url, body["refresh_token"])
    assert info["exp"] == claims_of(young)["iat"] + 3600
    old = konnect_refresh(state, now=int(time.time()) - 7200)   # Konnect would take it: 3 years
    resp, body = await token(http_client, base_url, refresh_form(old))
    assert resp.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_a_narrower_scope_is_granted_a_wider_one_is_refused_without_spending(
        http_client, base_url, state):
    rt = konnect_refresh(state)
    resp, body = await token(http_client, base_url, refresh_form(rt, scope="openid kopano/gc"))
    assert resp.code == 400 and body["error"] == "invalid_scope"
    resp, body = await token(http_client, base_url, refresh_form(rt, scope="openid offline_access"))
    assert resp.code == 200, resp.body                          # not spent by the refusal
    assert body["scope"] == "openid offline_access" and "refresh_token" in body
    resp, again = await token(http_client, base_url, refresh_form(body["refresh_token"]))
    assert resp.code == 200 and again["scope"].split() == SCOPES   # the grant keeps Konnect's


@pytest.mark.gen_test
async def test_without_offline_access_there_is_no_refresh_token_of_ours(http_client, base_url, state):
    rt = konnect_refresh(state, scopes=["openid", "profile"])
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body
    assert "refresh_token" not in body and body["scope"] == "openid profile"
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 400 and body["error"] == "invalid_grant"   # still only once


@pytest.mark.gen_test
async def test_the_claims_konnect_approved_travel_into_our_tokens(http_client, base_url, state, core):
    request = {"userinfo": {"email": None}, "id_token": {"name": {"essential": True}},
               "passthru": {"app": 1}}
    rt = konnect_refresh(state, claims_request=request)
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body
    access = core.tokens.validate_access_token(body["access_token"])
    assert access["kc.authorizedClaims"] == {"userinfo": {"email": None},
                                             "id_token": {"name": {"essential": True}}}
    assert claims_of(body["id_token"])["name"] == "Alice Example"


@pytest.mark.gen_test
async def test_another_clients_konnect_token_is_refused_and_not_spent(http_client, base_url, state):
    rt = konnect_refresh(state, client_id="trusted-rp")
    resp, body = await token(http_client, base_url, refresh_form(rt))   # presented by web-rp
    assert resp.code == 400 and body["error"] == "invalid_grant"
    resp, body = await token(http_client, base_url, refresh_form(rt), auth=("trusted-rp", "other-secret"))
    assert resp.code == 200, resp.body


def _unsigned(state: dict, alg: str) -> str:
    """A Konnect refresh token's claims under `alg: none`, HS256 keyed with the public key,
    or another family's alg (ES256) with a signature of that alg's size."""
    claims = claims_of(konnect_refresh(state))
    header = {"alg": alg, "kid": state["kid"], "typ": "JWT"}
    signing_input = kt.b64(kt.go_json(header)) + "." + kt.b64(kt.go_json(claims))
    if alg == "none":
        return signing_input + "."
    if alg == "ES256":
        return signing_input + "." + kt.b64(os.urandom(64))
    public = konnect_key(state).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + kt.b64(mac)


OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# every way a token konnectd never issued (or would not have accepted) may look like one
REFUSED = {
    "expired": lambda s: konnect_refresh(s, now=int(time.time()) - 4 * 365 * 86400),
    "a konnect access token": lambda s: kt.access_token(
        konnect_key(s), s["kid"], issuer=ISSUER, client_id="web-rp", raw_sub=ALICE_SUB,
        backend=BACKEND, identity=kt.identifier_identity(ALICE_SUB, "alice", "Alice"),
        scopes=SCOPES),
    "kc.isRefreshToken false": lambda s: konnect_refresh(s, extra={"kc.isRefreshToken": False}),
    "kc.isRefreshToken a string": lambda s: konnect_refresh(s, extra={"kc.isRefreshToken": "true"}),
    "no exp": lambda s: kt.sign({k: v for k, v in claims_of(konnect_refresh(s)).items()
                                 if k != "exp"}, konnect_key(s), s["kid"]),
    "no iat": lambda s: kt.sign({k: v for k, v in claims_of(konnect_refresh(s)).items()
                                 if k != "iat"}, konnect_key(s), s["kid"]),
    "issued in the future": lambda s: konnect_refresh(s, now=int(time.time()) + 3600),
    "another issuer": lambda s: kt.refresh_token(
        konnect_key(s), s["kid"], issuer="https://other.example.test", client_id="web-rp",
        raw_sub=ALICE_SUB, backend=BACKEND, scopes=SCOPES,
        identity=kt.identifier_identity(ALICE_SUB, "alice", "Alice")),
    "aud as a list": lambda s: konnect_refresh(s, extra={"aud": ["web-rp"]}),
    "no kc.identity": lambda s: konnect_refresh(s, extra={"kc.identity": None}),
    "kc.identity without kc.i.id": lambda s: konnect_refresh(s, identity={"kc.i.un": "alice"}),
    "another identity manager": lambda s: konnect_refresh(s, provider="identifier-ldap"),
    "empty kc.ref": lambda s: konnect_refresh(s, extra={"kc.ref": ""}),
    "malformed scopes": lambda s: konnect_refresh(s, scopes=["openid", "a b"]),
    "a guest": lambda s: konnect_refresh(s, identity={"kc.i.id": "g", "kc.i.guest": True}),
    "a user who is gone": lambda s: konnect_refresh(s, raw_sub="u-nobody"),
    "the subject of another backend": lambda s: konnect_refresh(s, backend="identifier-ldap",
                                                                provider=""),
    "an unknown kid": lambda s: konnect_refresh(s, key=OTHER_KEY, kid="konnect-20180101-dead"),
    "a key that is not the kid's": lambda s: konnect_refresh(s, key=OTHER_KEY),
    "ES256 named for an RSA key": lambda s: _unsigned(s, "ES256"),
    "alg none": lambda s: _unsigned(s, "none"),
    "HS256 keyed with the public key": lambda s: _unsigned(s, "HS256"),
    "a tampered claim": lambda s: (lambda t: t.split(".")[0] + "." + kt.b64(kt.go_json(
        dict(claims_of(t), sub=public_subject("u-bob", BACKEND)))) + "." + t.split(".")[2])(
        konnect_refresh(s)),
    "not a JWS at all": lambda s: "eyJ.not.jws",
}

# what the log says of each (the `invalid_grant` the client sees is the same for all)
REASONS = {
    "expired": "token expired",
    "a konnect access token": "not a Konnect refresh token",
    "kc.isRefreshToken false": "not a Konnect refresh token",
    "kc.isRefreshToken a string": "not a Konnect refresh token",
    "no exp": "exp missing",
    "no iat": "no iat",
    "issued in the future": "issued in the future",
    "another issuer": "another issuer",
    "aud as a list": "another client",
    "no kc.identity": "missing data in kc.identity",
    "kc.identity without kc.i.id": "missing data in kc.identity",
    "another identity manager": "identity provider mismatch",
    "empty kc.ref": "invalid kc.ref",
    "malformed scopes": "malformed kc.approvedScopes",
    "a guest": "a guest's token",
    "a user who is gone": "user not found",
    "the subject of another backend": "user not found",
    "an unknown kid": "unknown kid",
    "a key that is not the kid's": "signature verification failed",
    "ES256 named for an RSA key": "algorithm not allowed",
    "alg none": "algorithm not allowed",
    "HS256 keyed with the public key": "algorithm not allowed",
    "a tampered claim": "signature verification failed",
    "not a JWS at all": "not verified",
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", list(REFUSED))
async def test_konnect_refresh_tokens_are_checked_as_konnect_checks_them(
        http_client, base_url, state, case, caplog):
    caplog.set_level(logging.INFO, logger="konnect.web")
    rt = REFUSED[case](state)
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 400, (case, resp.body)
    assert body["error"] == "invalid_grant", (case, body)
    assert "refresh_token" not in body
    assert REASONS[case] in caplog.text, caplog.text
    assert rt not in caplog.text   # tokens never in the log


@pytest.mark.gen_test
async def test_a_disabled_user_is_refused_and_the_token_not_spent(http_client, base_url, state,
                                                                   users_path):
    rt = konnect_refresh(state)
    write_users(users_path, [dict(ALICE_ENTRY, disabled=True)])
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 400 and body["error_description"] == "the user is no longer available"
    write_users(users_path, [ALICE_ENTRY])
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body


@pytest.mark.gen_test
async def test_two_presentations_at_once_give_one_answer_and_end_its_family(
        http_client, base_url, state):
    rt = konnect_refresh(state)
    results = await asyncio.gather(*(token(http_client, base_url, refresh_form(rt))
                                     for _ in range(2)))
    codes = sorted(resp.code for resp, _ in results)
    assert codes == [200, 400], [r.body for r, _ in results]
    (winner,) = [body for resp, body in results if resp.code == 200]
    resp, body = await token(http_client, base_url, refresh_form(winner["refresh_token"]))
    assert resp.code == 400 and body["error"] == "invalid_grant"   # reuse ends the family


@pytest.mark.gen_test
async def test_redis_failing_at_the_replay_marker_is_503_and_the_retry_works(
        http_client, base_url, state, core):
    rt = konnect_refresh(state)
    real = core.store.first_use
    failed = []

    async def first_use(kind, ident, ttl):
        if not failed:   # fault injection: this one call fails as a dead Redis would
            failed.append(kind)
            raise StoreUnavailable("redis first_use failed: injected")
        return await real(kind, ident, ttl)

    core.store.first_use = first_use
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 503 and body["error"] == "temporarily_unavailable"
    stored = core.store._link.client.scan_iter(match=core.store.prefix + "rt:*")
    assert [k async for k in stored] == []  # the refresh token nobody received is gone
    resp, body = await token(http_client, base_url, refresh_form(rt))
    assert resp.code == 200, resp.body                 # the client's retry is no replay


@pytest.mark.gen_test
async def test_revoking_a_konnect_refresh_token_ends_it_and_what_it_became(
        http_client, base_url, state):
    unused = konnect_refresh(state)
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": unused},
                         {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200
    resp, body = await token(http_client, base_url, refresh_form(unused))
    assert resp.code == 400 and body["error"] == "invalid_grant"

    used = konnect_refresh(state)
    resp, body = await token(http_client, base_url, refresh_form(used))
    assert resp.code == 200
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": used},
                         {"Authorization": TRUSTED_AUTH})           # another client: no effect
    resp, again = await token(http_client, base_url, refresh_form(body["refresh_token"]))
    assert resp.code == 200, resp.body
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": used},
                         {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200
    resp, gone = await token(http_client, base_url, refresh_form(again["refresh_token"]))
    assert resp.code == 400 and gone["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_konnect_access_tokens_work_at_userinfo_until_they_expire(http_client, base_url,
                                                                        state):
    access = kt.access_token(konnect_key(state), state["kid"], issuer=ISSUER, client_id="web-rp",
                             raw_sub=ALICE_SUB, backend=BACKEND, scopes=["openid", "email"],
                             identity=kt.identifier_identity(ALICE_SUB, "alice", "Alice Example"))
    resp = await userinfo(http_client, base_url, access)
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["email"] == ALICE_ENTRY["email"]


@pytest.mark.gen_test
@pytest.mark.op(service="token", users=(ALICE_ENTRY,), apps=("authorize", "identifier", "token"))
async def test_a_konnect_id_token_is_an_id_token_hint_at_end_session(http_client, base_url, state):
    b = await signed_in(http_client, base_url)
    hint = kt.id_token(konnect_key(state), state["kid"], issuer=ISSUER, client_id="trusted-rp",
                       raw_sub=ALICE_SUB, backend=BACKEND, nonce="n-1", sid="konnect-sid")
    resp = await b.fetch("/signin/v1/identifier/_/endsession?" + urlencode({
        "id_token_hint": hint, "post_logout_redirect_uri": "https://trusted.example.test/cb",
        "state": "bye"}))
    assert resp.code == 302, resp.body    # a trusted client with its hint: signed out at once
    assert resp.headers["Location"] == "https://trusted.example.test/cb?state=bye"
    assert "__Secure-KKT" not in b.cookies


# -- a key of konnectd's in --validation-keys-path -------------------------------------------

def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@pytest.mark.gen_test
@pytest.mark.parametrize("form", ["pem", "jwk with alg RS256"])
async def test_konnects_key_as_a_validation_key(http_client, tmp_path, redis_url, users_path,
                                                form):
    """Our own new signing key, konnectd's in the validation keys directory. A PEM there
    verifies every RSA alg, as Konnect's RSA keys did (konnectd signed PS256 by default,
    RS256 with `--signing-method RS256`); a JWK naming an `alg` (`keys jwk-from-pem`, then
    `"alg"` added) verifies that alg only."""
    state = make_state(tmp_path / "ours")
    konnect = kt.rsa_key()
    keys = tmp_path / "konnectkeys"
    keys.mkdir()
    pem = konnect.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if form == "pem":
        _write_private(keys / "konnect-20210920-a1b2.pem", pem)
    else:
        _write_private(keys / "konnect-20210920-a1b2.json",
                       json.dumps(dict(private_jwk(konnect), alg="RS256")).encode())
    core = Core.with_users(settings_for("token", state, redis_url, [
        "--validation-keys-path", str(keys), "--users-file", str(users_path)]))
    try:
        async with serving(serve_on_one_origin(core, ("token",))) as base:
            kid = "konnect-20210920-a1b2"
            for alg in ("RS256", "PS256"):
                rt = konnect_refresh(state, key=konnect, kid=kid, alg=alg)
                resp, body = await token(http_client, base, refresh_form(rt))
                if form == "pem" or alg == "RS256":
                    assert resp.code == 200, (alg, resp.body)
                    assert claims_of(body["access_token"])["kc.family"]
                else:  # the JWK pins RS256: another alg under its kid is refused
                    assert resp.code == 400 and body["error"] == "invalid_grant", resp.body
    finally:
        await core.close()


# -- dynamic clients: dyn.<JWT> ---------------------------------------------------------------

def konnect_dyn(state: dict, **kwargs) -> tuple[str, str]:
    kwargs.setdefault("redirect_uris", [DYN_CB])
    kwargs.setdefault("name", "Konnect Dyn RP")
    key, kid = kwargs.pop("key", None) or konnect_key(state), kwargs.pop("kid", None) or state["kid"]
    return kt.dynamic_client(key, kid, **kwargs)


@pytest.mark.gen_test
async def test_a_konnect_dynamic_client_is_honoured_as_konnect_honoured_it(state, core):
    client_id, secret = konnect_dyn(state, post_logout_redirect_uris=["https://dyn.example.test/bye"],
                                    contacts=["ops@dyn.example.test"],
                                    extra={"trusted": True, "insecure": True})  # not Konnect's
    client = await core.lookup_client(client_id)
    assert client is not None and client.id == client_id
    assert client.dynamic and not client.trusted and not client.insecure and not client.implicit
    assert client.redirect_uris == (DYN_CB,) and client.name == "Konnect Dyn RP"
    assert client.redirect_uri_ok(DYN_CB) and not client.redirect_uri_ok(DYN_CB + "?x=1")
    assert client.post_logout_redirect_uri_ok("https://dyn.example.test/bye")
    assert client.id_token_signed_response_alg == "RS256"      # Konnect's default, kept
    assert client.check_secret(secret) and not client.is_public
    assert not client.check_secret(secret[:-2] + ("AA" if secret[-2:] != "AA" else "BB"))
    assert not client.check_secret("") and not client.check_secret(None)
    # another client's secret (its hash is over its own name) does not open this one
    unnamed_id, other_secret = konnect_dyn(state, name="")
    assert not client.check_secret(other_secret)
    unnamed = await core.lookup_client(unnamed_id)
    assert unnamed.check_secret(other_secret)
    assert unnamed.display_name == "https://dyn.example.test"   # not a kilobyte of JWT


@pytest.mark.gen_test
async def test_a_konnect_dynamic_client_redeems_codes_and_refreshes_with_its_secret(
        http_client, base_url, state, core):
    client_id, secret = konnect_dyn(state)   # grant_types: Konnect's default, authorization_code
    code = await mint_code(core, client_id=client_id, redirect_uri=DYN_CB,
                           identity=await core.users.lookup(ALICE_SUB))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": DYN_CB}
    resp, body = await token(http_client, base_url, form, auth=(client_id, "wrong"))
    assert resp.code == 401 and body["error"] == "invalid_client"
    resp, body = await token(http_client, base_url, form, auth=(client_id, secret))
    assert resp.code == 200, resp.body
    assert claims_of(body["access_token"])["aud"] == client_id
    # Konnect gave refresh tokens for offline_access whatever grant_types said: so do we
    assert "refresh_token" in body
    resp, body = await token(http_client, base_url, refresh_form(body["refresh_token"]),
                             auth=(client_id, secret))
    assert resp.code == 200, resp.body
    # and its Konnect refresh token is exchanged like any other client's
    rt = konnect_refresh(state, client_id=client_id)
    resp, body = await token(http_client, base_url, refresh_form(rt), auth=(client_id, secret))
    assert resp.code == 200, resp.body


@pytest.mark.gen_test
async def test_konnect_dynamic_clients_always_authenticate_with_their_secret(
        http_client, base_url, state, core):
    """Konnect's registry checked a dynamic client's secret at the token endpoint even
    for `none` (identity/clients/registry.go `Validate`): it got one at registration."""
    client_id, secret = konnect_dyn(state, application_type="native",
                                    redirect_uris=["http://127.0.0.1/cb"],
                                    token_endpoint_auth_method="none")
    rt = konnect_refresh(state, client_id=client_id)
    resp, body = await post(http_client, base_url, "/konnect/v1/token",
                            dict(refresh_form(rt), client_id=client_id))
    assert resp.code == 401 and body["error"] == "invalid_client"
    resp, body = await post(http_client, base_url, "/konnect/v1/token",
                            dict(refresh_form(rt), client_id=client_id, client_secret=secret))
    assert resp.code == 200, resp.body


BAD_DYN = {
    "expired": dict(secret_duration=60, now=int(time.time()) - 120),
    "issued in the future": dict(now=int(time.time()) + 3600),
    "signed by a key we do not have": dict(key=OTHER_KEY, kid="konnect-20180101-dead"),
    "an http redirect URI of a web client": dict(redirect_uris=["http://dyn.example.test/cb"]),
    "a redirect URI into the OP": dict(redirect_uris=[ISSUER + "/signin/v1/identifier/_/authorize"]),
    "a javascript: redirect URI": dict(application_type="native",
                                       redirect_uris=["javascript:alert(1)//"]),
    "no redirect URIs": dict(redirect_uris=[]),
    "an alg we do not sign": dict(id_token_signed_response_alg="ES512"),
    "an issuer claim (a token, not a registration)": dict(extra={"iss": ISSUER}),
    "a short sub": dict(extra={"sub": "abc"}),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", list(BAD_DYN))
async def test_konnect_dynamic_ids_that_are_refused(http_client, base_url, state, core, case):
    client_id, secret = konnect_dyn(state, **BAD_DYN[case])
    assert await core.lookup_client(client_id) is None
    rt = konnect_refresh(state, client_id=client_id)
    resp, body = await token(http_client, base_url, refresh_form(rt), auth=(client_id, secret))
    assert resp.code == 401 and body["error"] == "invalid_client", (case, body)


@pytest.mark.gen_test
async def test_a_signed_token_is_no_client_id(state, core):
    """konnectd's own tokens, and ours, are signed by the same key: none of them names a
    client when put behind `dyn.` (a registration has neither `iss` nor `aud`)."""
    identity = kt.identifier_identity(ALICE_SUB, "alice", "Alice")
    ours = await core.users.lookup(ALICE_SUB)
    for jwt in (konnect_refresh(state),
                kt.access_token(konnect_key(state), state["kid"], issuer=ISSUER,
                                client_id="web-rp", raw_sub=ALICE_SUB, backend=BACKEND,
                                identity=identity, scopes=SCOPES),
                core.tokens.id_token(client_id="web-rp", identity=ours),
                core.tokens.access_token(client_id="web-rp", identity=ours, scopes=SCOPES,
                                         family="f").token):
        assert await core.lookup_client("dyn." + jwt) is None


@pytest.mark.gen_test
@pytest.mark.op(service="token", users=(ALICE_ENTRY,), apps=("authorize", "identifier", "token"))
async def test_authorize_knows_a_konnect_dynamic_client_and_its_exact_redirect_uri(
        http_client, base_url, state):
    client_id, _ = konnect_dyn(state)

    async def authorize(**params):
        return await http_client.fetch(base_url + authorize_url(**params),
                                       follow_redirects=False, raise_error=False)

    resp = await authorize(client_id=client_id, redirect_uri=DYN_CB)
    assert resp.code == 302, resp.body                  # on to the sign-in page
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    for uri in (DYN_CB + "?x=1", "https://evil.example.test/cb"):
        resp = await authorize(client_id=client_id, redirect_uri=uri)
        assert resp.code == 400 and "Location" not in resp.headers
    # a dynamic client's error before sign-in is a page, never a redirect (RFC 9700 §4.11.2)
    resp = await authorize(client_id=client_id, redirect_uri=DYN_CB, prompt="none")
    assert "Location" not in resp.headers
    tampered = client_id[:-4] + ("AAAA" if not client_id.endswith("AAAA") else "BBBB")
    resp = await authorize(client_id=tampered, redirect_uri=DYN_CB)
    assert resp.code == 400 and "Location" not in resp.headers
