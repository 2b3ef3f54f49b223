"""Dynamic client registration (OIDC Registration 1.0, RFC 7591): metadata validation, clients
in Redis for every process, never into the OP's own endpoints."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlencode

import pytest
import tornado.web
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from services.authorize.app import make_app as authorize_app
from services.identifier.app import make_app as identifier_app
from services.token.app import make_app
from services.token.register import MAX_BODY, RATE_LIMIT
from services.userinfo.app import make_app as userinfo_app
from shared import jose
from shared.clients import ClientRegistry, client_from_record
from shared.errors import OAuth2Error, Unavailable
from shared.keys import public_jwk
from shared.registration import parse_registration
from shared.users.passwords import hash_password
from shared.users.userfile import UsersFileBackend
from tests.support.browser import Browser, query_of, sign_in
from tests.support.clients import EXTRA_CLIENTS
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, post
from tests.support.malformed import DEEP
from tests.support.op import (
    ISSUER,
    REGISTRY,
    make_core,
    mint_code,
    pkce_pair,
)
from tests.support.services import serving
from tests.support.store import client_key
from tests.support.users import TOKEN_ALICE

WEB = {"redirect_uris": ["https://dyn.example.test/cb"], "client_name": "Dyn RP",
       "contacts": ["ops@dyn.example.test"]}


NATIVE = {"application_type": "native", "redirect_uris": ["http://127.0.0.1/cb"],
          "token_endpoint_auth_method": "none"}


async def register(http_client, base_url, metadata=None, *, raw=None,
                   content_type="application/json"):
    body = raw if raw is not None else json.dumps(metadata)
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST", body=body,
                                   headers={"Content-Type": content_type}, raise_error=False)
    parsed = json.loads(resp.body) if resp.body else None
    assert b"Traceback" not in resp.body and b"redis" not in resp.body.lower()
    return resp, parsed


async def redeem(http_client, base_url, code, client_id, secret=None, *, how="basic",
                 redirect_uri="https://dyn.example.test/cb", **extra):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, **extra}
    headers = {}
    if how == "basic":
        headers["Authorization"] = basic(client_id, secret or "")
    else:
        form["client_id"] = client_id
        if secret is not None:
            form["client_secret"] = secret
    return await post(http_client, base_url, "/konnect/v1/token", form, headers)


PRIVATE = ec.generate_private_key(ec.SECP256R1())


LOCAL = "https://localhost:34753"


INTO_LOCAL = ["https://localhost:034753/signin/v1/identifier/_/authorize",
              "https://%6cocalhost:34753/signin/v1/identifier/_/authorize",
              "https://LOCALHOST.:34753/konnect/v1/token",
              "https://127.0.0.1:34753/signin/v1/identifier/_/authorize",
              "https://127.1:34753/signin/v1/identifier/_/authorize",
              "https://[::1]:34753/signin/v1/identifier/_/authorize",
              "https://app.localhost:34753/signin/v1/identifier/_/endsession",
              "https://2130706433:34753/signin/v1/identifier/_/authorize"]


def _register(issuer: str, **metadata):
    body = {"redirect_uris": ["https://rp.example.test/cb"], **metadata}
    return parse_registration(body, client_id="dyn.x", signing_algs=["PS256"], issuer=issuer)


pytestmark = pytest.mark.op(users=None, args=DYNAMIC_REGISTRATION, service="token", apps=("token",), clock="frozen")


@pytest.mark.gen_test
async def test_registration_is_404_and_absent_from_discovery_when_disabled(
        http_client, state, redis_url):
    core = make_core("token", state, redis_url)
    try:
        async with serving(make_app(core.settings, core)) as url:
            resp, body = await register(http_client, url, WEB)
            assert resp.code == 404 and body["error"] == "not_found"
            doc = json.loads((await http_client.fetch(url + "/.well-known/openid-configuration")).body)
            assert "registration_endpoint" not in doc
    finally:
        await core.close()


@pytest.mark.gen_test
async def test_discovery_lists_the_registration_endpoint_when_enabled(http_client, base_url):
    doc = json.loads((await http_client.fetch(base_url + "/.well-known/openid-configuration")).body)
    assert doc["registration_endpoint"] == "https://idp.example.test/konnect/v1/register"


@pytest.mark.gen_test
async def test_registered_web_client_gets_a_secret_and_redeems_codes_with_basic_and_post(
        http_client, base_url, core, redis_server):
    resp, body = await register(http_client, base_url, WEB)
    assert resp.code == 201, body
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    client_id, secret = body["client_id"], body["client_secret"]
    assert client_id.startswith("dyn.") and len(secret) >= 43
    assert body["client_secret_expires_at"] == 0
    assert abs(body["client_id_issued_at"] - core.now()) <= 1
    assert body["redirect_uris"] == WEB["redirect_uris"] and body["client_name"] == "Dyn RP"
    assert body["contacts"] == WEB["contacts"] and body["application_type"] == "web"
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["response_types"] == ["code"] and body["grant_types"] == ["authorization_code"]
    assert body["id_token_signed_response_alg"] == "RS256"
    assert "trusted" not in body and "insecure" not in body

    # stored once, with a TTL, and with the secret only as its SHA-256
    raw = redis_server.client()
    try:
        key = client_key(client_id)
        stored = raw.get(key).decode()
        assert secret not in stored
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
        assert raw.ttl(key) > 365 * 86400
    finally:
        raw.close()

    for how in ("basic", "post"):
        code = await mint_code(core, client_id=client_id, redirect_uri="https://dyn.example.test/cb")
        ok, tokens = await redeem(http_client, base_url, code, client_id, secret, how=how)
        assert ok.code == 200, tokens
        _, claims = core.keyring.verify(tokens["id_token"])
        assert claims["aud"] == client_id
        # registered without grant_types: authorization_code only (RFC 7591 §2), so no
        # refresh token despite offline_access (tests/token/test_grant_types.py: the refresh
        # grant of clients registered for it)
        assert "refresh_token" not in tokens


@pytest.mark.gen_test
async def test_dynamic_client_is_never_trusted_and_unknown_dynamic_ids_are_never_implicit(
        http_client, base_url, core):
    _, body = await register(http_client, base_url, dict(WEB, trusted=True, insecure=True))
    client = await core.lookup_client(body["client_id"], "https://dyn.example.test/cb")
    assert client.dynamic and not client.trusted and not client.insecure
    assert client.origins == ("https://dyn.example.test",)
    # an unregistered (or expired) dynamic id on the issuer's own origin stays unknown
    ghost = "dyn." + "A" * 32
    assert await core.lookup_client(ghost, "https://idp.example.test/cb") is None
    assert core.registry.lookup("dyn.x", "https://idp.example.test/cb") is None
    assert (await core.lookup_client("other-id", "https://idp.example.test/cb")).implicit


@pytest.mark.gen_test
@pytest.mark.parametrize("auth", [("wrong", "basic"), ("", "basic"), (None, "post")])
async def test_wrong_or_missing_secret_is_401_invalid_client(http_client, base_url, core, auth):
    _, body = await register(http_client, base_url, WEB)
    code = await mint_code(core, client_id=body["client_id"], redirect_uri="https://dyn.example.test/cb")
    resp, err = await redeem(http_client, base_url, code, body["client_id"], auth[0], how=auth[1])
    assert resp.code == 401 and err["error"] == "invalid_client"
    ok, _ = await redeem(http_client, base_url, code, body["client_id"], body["client_secret"])
    assert ok.code == 200  # a failed authentication does not consume the code


@pytest.mark.gen_test
async def test_public_native_client_uses_pkce_and_gets_no_secret(http_client, base_url, core):
    resp, body = await register(http_client, base_url, NATIVE)
    assert resp.code == 201, body
    assert "client_secret" not in body and body["token_endpoint_auth_method"] == "none"
    client_id = body["client_id"]
    verifier, challenge = pkce_pair()
    loopback = "http://127.0.0.1:49152/cb"  # any port on a registered loopback URI (RFC 8252)
    code = await mint_code(core, client_id=client_id, redirect_uri=loopback, challenge=challenge)
    ok, tokens = await redeem(http_client, base_url, code, client_id, how="post",
                              redirect_uri=loopback, code_verifier=verifier)
    assert ok.code == 200, tokens
    code = await mint_code(core, client_id=client_id, redirect_uri=loopback)
    no_pkce, err = await redeem(http_client, base_url, code, client_id, how="post",
                                redirect_uri=loopback)
    assert no_pkce.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_private_key_jwt_client_registers_its_keys_inline(http_client, base_url, core):
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [dict(public_jwk(key), kid="k1", use="sig", alg="ES256")]}
    resp, body = await register(http_client, base_url, dict(WEB, jwks=jwks,
                                                            token_endpoint_auth_method="private_key_jwt"))
    assert resp.code == 201, body
    assert "client_secret" not in body and body["jwks"] == jwks
    client = await core.lookup_client(body["client_id"])
    assert client.jwks == jwks and not client.is_public


@pytest.mark.gen_test
@pytest.mark.parametrize("uris,app_type", [
    (["http://dyn.example.test/cb"], "web"),           # http for a web client
    (["http://127.0.0.1/cb"], "web"),                  # loopback is for native clients
    (["https://dyn.example.test/cb#frag"], "web"),
    (["/cb"], "web"),                                   # relative
    (["//evil.example/cb"], "web"),
    (["dyn.example.test/cb"], "web"),
    (["https:evil.example/cb"], "web"),                # no host
    (["javascript:alert(1)"], "native"),
    (["JaVaScRiPt:alert(1)"], "native"),
    (["data:text/html,<script>alert(1)</script>"], "native"),
    (["https://dyn.example.test@evil.example/cb"], "web"),
    (["https://dyn.example.test\\@evil.example/cb"], "web"),
    (["https://evil.example\\.dyn.example.test/cb"], "web"),
    (["http://localhost.evil.example/cb"], "native"),
    (["http://127.0.0.1.evil.example/cb"], "native"),
    (["http://localhost:80@evil.example/cb"], "native"),
    (["https://dyn.example.test:99999/cb"], "web"),
    ([" https://dyn.example.test/cb"], "web"),
    (["https://dyn.example.test/c b"], "web"),
    (["https://dyn.example.test/cb", "http://dyn.example.test/cb"], "web"),
    ([], "web"),
    (None, "web"),
    ("https://dyn.example.test/cb", "web"),             # not an array
    ([42], "web"),
    (["https://dyn.example.test/" + "a" * 2100], "web"),
])
async def test_bad_redirect_uris_are_invalid_redirect_uri(http_client, base_url, uris, app_type):
    metadata = {"application_type": app_type}
    if uris is not None:
        metadata["redirect_uris"] = uris
    resp, body = await register(http_client, base_url, metadata)
    assert resp.code == 400 and body["error"] == "invalid_redirect_uri", body


@pytest.mark.gen_test
@pytest.mark.parametrize("extra", [
    {"token_endpoint_auth_method": "client_secret_jwt"},
    {"token_endpoint_auth_method": "tls_client_auth"},
    {"token_endpoint_auth_method": "private_key_jwt"},        # without jwks
    {"id_token_signed_response_alg": "none"},
    {"id_token_signed_response_alg": "HS256"},
    {"id_token_signed_response_alg": "ES256"},                 # not one of our keys' algs
    {"userinfo_signed_response_alg": "HS256"},
    {"request_object_signing_alg": "HS256"},
    {"token_endpoint_auth_signing_alg": "none"},
    {"id_token_signed_response_alg": "ES384"},
    {"userinfo_signed_response_alg": "EdDSA"},
    {"id_token_encrypted_response_alg": "RSA-OAEP"},
    {"userinfo_encrypted_response_alg": "RSA-OAEP"},
    {"request_object_encryption_enc": "A128GCM"},
    {"token_endpoint_auth_method": "private_key_jwt",           # its keys only by reference
     "jwks_uri": "https://dyn.example.test/jwks.json"},
    {"subject_type": "pairwise"},
    {"application_type": "service"},
    {"application_type": 1},
    {"client_name": 5},
    {"client_name": ["Dyn"]},
    {"contacts": "ops@dyn.example.test"},
    {"grant_types": ["client_credentials"]},
    {"grant_types": "authorization_code"},
    {"response_types": ["code id_token"]},                     # needs the implicit grant too
    {"response_types": ["none"]},
    {"post_logout_redirect_uris": ["javascript:alert(1)"]},
    {"post_logout_redirect_uris": ["http://dyn.example.test/bye"]},
    {"client_uri": "javascript:alert(1)"},
    {"jwks": []},
    {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
    {"jwks": {"keys": [dict(public_jwk(PRIVATE), d="AAAA")]}},  # a private key
    {"jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}},  # too small to be a key
    {"client_name": "x" * 300},                                 # oversized fields
    {"contacts": [f"c{i}@dyn.example.test" for i in range(11)]},
    {"redirect_uris": [f"https://dyn.example.test/cb{i}" for i in range(21)]},
])
async def test_bad_metadata_is_invalid_client_metadata(http_client, base_url, extra):
    resp, body = await register(http_client, base_url, dict(WEB, **extra))
    wanted = "invalid_redirect_uri" if "redirect_uris" in extra else "invalid_client_metadata"
    assert resp.code == 400 and body["error"] == wanted, body
    assert body.get("error_description")


@pytest.mark.gen_test
async def test_oversized_bodies_are_refused(http_client, base_url):
    padded = dict(WEB, logo_uri="https://dyn.example.test/" + "a" * MAX_BODY)  # unknown: ignored
    resp, body = await register(http_client, base_url, padded)
    assert resp.code == 400 and body["error"] == "invalid_client_metadata"
    huge = json.dumps(dict(WEB, logo_uri="x" * 70000))
    resp, body = await register(http_client, base_url, raw=huge)
    assert resp.code == 413


@pytest.mark.gen_test
async def test_unknown_metadata_is_ignored_and_not_echoed(http_client, base_url):
    resp, body = await register(http_client, base_url, dict(WEB, logo_uri="https://x.test/l.png",
                                                            software_id="abc", scope="openid"))
    assert resp.code == 201 and "logo_uri" not in body and "software_id" not in body


@pytest.mark.gen_test
@pytest.mark.parametrize("member,value", [
    ("default_max_age", 3600),
    ("sector_identifier_uri", "https://dyn.example.test/sector.json"),
    ("jwks_uri", "https://dyn.example.test/jwks.json"),
    ("request_uris", ["https://dyn.example.test/request"]),
    ("software_statement", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
])
async def test_metadata_we_do_not_honour_is_ignored_as_konnect_ignores_it(http_client, base_url,
                                                                            member, value):
    """RFC 7591 §2, §3.2.1: what the server does not honour is not registered, and the
    response (which lists what is registered) leaves it out; nothing weaker follows from
    leaving these out (see services/token/register.py IGNORED)."""
    resp, body = await register(http_client, base_url, dict(WEB, **{member: value}))
    assert resp.code == 201, body
    assert member not in body and body["client_id"].startswith("dyn.")


@pytest.mark.gen_test
async def test_private_key_jwt_with_a_jwks_uri_only_says_to_register_the_keys_inline(
        http_client, base_url):
    resp, body = await register(http_client, base_url, dict(
        WEB, token_endpoint_auth_method="private_key_jwt", jwks_uri="https://dyn.example.test/k"))
    assert resp.code == 400 and body["error"] == "invalid_client_metadata"
    assert "jwks_uri is not supported" in body["error_description"]


@pytest.mark.gen_test
@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS384", "PS512"])
async def test_every_rsa_alg_our_key_signs_can_be_registered(http_client, base_url, alg):
    """An RSA key signs RS256…PS512 (Konnect's too): what discovery lists is registrable,
    and the response says what was registered."""
    doc = json.loads((await http_client.fetch(base_url + "/.well-known/openid-configuration")).body)
    assert alg in doc["id_token_signing_alg_values_supported"]
    resp, body = await register(http_client, base_url, dict(
        WEB, id_token_signed_response_alg=alg, userinfo_signed_response_alg=alg))
    assert resp.code == 201, body
    assert body["id_token_signed_response_alg"] == body["userinfo_signed_response_alg"] == alg


@pytest.mark.gen_test
@pytest.mark.parametrize("raw,ctype,status,error", [
    ("{not json", "application/json", 400, "invalid_request"),
    ("[]", "application/json", 400, "invalid_request"),
    (json.dumps(WEB), "application/x-www-form-urlencoded", 400, "invalid_request"),
])
async def test_malformed_requests(http_client, base_url, raw, ctype, status, error):
    resp, body = await register(http_client, base_url, raw=raw, content_type=ctype)
    assert resp.code == status and body["error"] == error


@pytest.mark.gen_test
async def test_get_is_405(http_client, base_url):
    resp = await http_client.fetch(base_url + "/konnect/v1/register", raise_error=False)
    assert resp.code == 405 and json.loads(resp.body)["error"] == "method_not_allowed"


@pytest.mark.gen_test
async def test_registrations_are_rate_limited_per_client_ip(http_client, base_url):
    for _ in range(RATE_LIMIT):
        resp, _ = await register(http_client, base_url, {})  # failed attempts count too
        assert resp.code == 400
    resp, body = await register(http_client, base_url, WEB)
    assert resp.code == 429 and body["error"] == "too_many_requests"
    assert int(resp.headers["Retry-After"]) > 0


@pytest.mark.gen_test
async def test_client_registered_through_one_process_works_through_another(
        http_client, base_url, core, state, redis_url):
    _, body = await register(http_client, base_url, WEB)
    client_id, secret = body["client_id"], body["client_secret"]
    other = make_core("token", state, redis_url)  # no registration switch: lookups still work
    try:
        async with serving(make_app(other.settings, other)) as other_url:
            code = await mint_code(core, client_id=client_id, redirect_uri="https://dyn.example.test/cb")
            ok, tokens = await redeem(http_client, other_url, code, client_id, secret)
            assert ok.code == 200, tokens
            resp, info = await post(http_client, base_url, "/konnect/v1/introspect",
                                    {"token": tokens["access_token"]},
                                    {"Authorization": basic(client_id, secret)})
            assert resp.code == 200 and info["active"] and info["client_id"] == client_id
            bad, err = await redeem(http_client, other_url, code, client_id, "nope")
            assert bad.code == 401 and err["error"] == "invalid_client"
    finally:
        await other.close()


@pytest.mark.gen_test
async def test_client_with_expiring_secret_is_invalid_client_after_expiry(
        http_client, state, redis_url, redis_server, clock):
    core = make_core("token", state, redis_url, DYNAMIC_REGISTRATION + ["--dynamic-client-secret-expiration", "1"],
                     now=clock)
    try:
        async with serving(make_app(core.settings, core)) as url:
            _, body = await register(http_client, url, WEB)
            client_id, secret = body["client_id"], body["client_secret"]
            assert body["client_secret_expires_at"] == body["client_id_issued_at"] + 1
            raw = redis_server.client()
            try:
                assert 0 < raw.pttl(client_key(client_id)) <= 1000  # Redis forgets it too
            finally:
                raw.close()
            code = await mint_code(core, client_id=client_id, redirect_uri="https://dyn.example.test/cb")
            clock.t += 2  # the record may still be in Redis; its expiry is checked as well
            resp, err = await redeem(http_client, url, code, client_id, secret)
            assert resp.code == 401 and err["error"] == "invalid_client"
    finally:
        await core.close()


@pytest.mark.gen_test
async def test_registered_client_walks_the_browser_flow_with_consent_and_signed_userinfo(
        http_client, core, tmp_path):
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [
        {"username": "alice", "password": hash_password("wonderland"), "name": "Alice Example",
         "email": "alice@example.test", "email_verified": True, "id": 1001, "uuid": "u-alice"}]}))
    core.users = UsersFileBackend(str(users))
    rules, extra = [], {}
    for make in (identifier_app, authorize_app, make_app, userinfo_app):
        application = make(core.settings, core)
        rules += [r for r in application.wildcard_router.rules
                  if r.matcher.regex.pattern != "/health-check$"]
        if make is identifier_app:
            extra = {k: v for k, v in application.settings.items()
                     if k in ("template_path", "static_path", "static_url_prefix")}
    async with serving(tornado.web.Application(rules, **extra)) as url:
        resp, reg = await register(http_client, url, dict(WEB, userinfo_signed_response_alg="RS256"))
        assert resp.code == 201, reg
        client_id, secret = reg["client_id"], reg["client_secret"]
        b = Browser(http_client, url)
        verifier, challenge = pkce_pair()
        start = "/signin/v1/identifier/_/authorize?" + urlencode({
            "client_id": client_id, "redirect_uri": "https://dyn.example.test/cb",
            "response_type": "code", "scope": "openid profile", "state": "st", "nonce": "n",
            "code_challenge": challenge, "code_challenge_method": "S256"})
        await sign_in(b)
        resp = await b.fetch(start)
        assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/consent?")
        consent_page = await b.fetch(resp.headers["Location"])
        assert consent_page.code == 200 and b"Dyn RP" in consent_page.body
        hello = await b.api("hello", {"state": "h1", "flow": "consent", "client_id": client_id,
                                      "redirect_uri": "https://dyn.example.test/cb",
                                      "scope": "openid profile"})
        answer = json.loads(hello.body)
        assert answer["next"] == "consent" and answer["client"]["display_name"] == "Dyn RP"
        assert answer["client"]["trusted"] is False
        ok = await b.api("consent", {"state": "c1", "allow": True, "scope": "openid profile",
                                     "client_id": client_id, "redirect_uri": "https://dyn.example.test/cb",
                                     "ref": "st", "flow_nonce": "n"})
        assert ok.code == 200
        resp = await b.fetch(start + "&" + urlencode({"konnect": "c1", "prompt": "none"}))
        assert resp.headers["Location"].startswith("https://dyn.example.test/cb?"), resp.headers["Location"]
        code = query_of(resp.headers["Location"])["code"]
        ok, tokens = await redeem(http_client, url, code, client_id, secret, code_verifier=verifier)
        assert ok.code == 200, tokens
        info = await http_client.fetch(url + "/konnect/v1/userinfo",
                                       headers={"Authorization": "Bearer " + tokens["access_token"]})
        assert info.headers["Content-Type"].startswith("application/jwt")
        header, claims = core.keyring.verify(info.body.decode())
        assert header["alg"] == "RS256" and claims["aud"] == client_id
        assert jose.unverified_claims(tokens["id_token"])["aud"] == client_id


@pytest.mark.gen_test
async def test_dynamic_lookups_fail_closed_without_redis_and_static_ones_do_not_need_it(
        http_client, state, private_redis):
    core = make_core("token", state, private_redis.url, DYNAMIC_REGISTRATION)
    try:
        async with serving(make_app(core.settings, core)) as url:
            _, body = await register(http_client, url, WEB)
            private_redis.stop()
            with pytest.raises(Unavailable):
                await core.lookup_client(body["client_id"])
            assert (await core.lookup_client("web-rp")).id == "web-rp"
            resp, err = await redeem(http_client, url, "some-code", body["client_id"],
                                     body["client_secret"])
            assert resp.code == 503 and err["error"] == "temporarily_unavailable"
    finally:
        await core.close()


def test_records_never_make_a_dynamic_client_trusted_and_expire():
    record = {"id": "dyn." + "b" * 32, "redirect_uris": ["https://dyn.example.test/cb"],
              "trusted": True, "insecure": True, "expires_at": 100, "secret_sha256": "ab"}
    client = client_from_record(record, now=99)
    assert client.dynamic and not client.trusted and not client.insecure and client.has_secret
    assert client_from_record(record, now=100) is None
    assert client_from_record(dict(record, id="web-rp"), now=0) is None
    assert client_from_record(None, now=0) is None


@pytest.mark.parametrize("uri", ["javascript:alert(1)", "DATA:text/html,x",
                                 "my.app:/cb\\@evil", "file:///etc/passwd"])
def test_static_registry_refuses_script_schemes_and_backslashes_too(uri):
    doc = {"clients": [{"id": "n", "application_type": "native", "redirect_uris": [uri]}]}
    registry = ClientRegistry.from_document(doc, issuer="https://idp.example.test")
    assert registry.get("n") is None and registry.skipped  # skipped, loudly


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("uri", [
    ISSUER + "/signin/v1/identifier/_/authorize?client_id=x",
    ISSUER + "/konnect/v1/token",
    ISSUER + "/app/%2e%2e/signin/v1/identifier/_/authorize",
])
async def test_dynamic_registration_refuses_redirect_uris_into_the_op(http_client, base_url, uri):
    """A response sent to the OP's own authorization endpoint would be carried on, fragment
    and all, to wherever that second request points (RFC 9700 §4.11, §4.1)."""
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps({"redirect_uris": [uri]}), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_redirect_uri"
    ok = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                 body=json.dumps({"redirect_uris": [ISSUER + "/webapp/cb"]}),
                                 headers={"Content-Type": "application/json"}, raise_error=False)
    assert ok.code == 201, ok.body


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_registration_deep_json_is_400(http_client, base_url):
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST", body=DEEP,
                                   headers={"Content-Type": "application/json"}, raise_error=False)
    assert resp.code == 400, resp.body
    assert json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.parametrize("uri", INTO_LOCAL)
def test_redirect_and_post_logout_uris_into_a_loopback_op_are_refused(uri):
    with pytest.raises(OAuth2Error) as caught:
        _register(LOCAL, redirect_uris=[uri])
    assert caught.value.error == "invalid_redirect_uri"
    with pytest.raises(OAuth2Error) as caught:
        _register(LOCAL, post_logout_redirect_uris=[uri])
    assert caught.value.error == "invalid_client_metadata"
    assert "own endpoints" in caught.value.description


@pytest.mark.parametrize("uri", ["https://localhost:34754/signin/v1/identifier/_/authorize",
                                 "https://rp.example.test/signin/v1/identifier/_/authorize",
                                 "https://localhost:34753/app/callback"])
def test_other_origins_or_paths_stay_registrable(uri):
    client = _register(LOCAL, redirect_uris=[uri], post_logout_redirect_uris=[uri])
    assert client.redirect_uris == (uri,) and client.post_logout_redirect_uris == (uri,)


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("member,error", [("redirect_uris", "invalid_redirect_uri"),
                                          ("post_logout_redirect_uris", "invalid_client_metadata")])
@pytest.mark.parametrize("uri", ["https://IDP.EXAMPLE.TEST:443/signin/v1/identifier/_/authorize",
                                 "https://%69dp.example.test/signin/v1/identifier/_/endsession",
                                 "https://idp.example.test:0443/konnect/v1/token"])
async def test_registration_endpoint_refuses_uris_into_the_op(http_client, base_url, member,
                                                              error, uri):
    body = {"redirect_uris": ["https://rp.example.test/cb"], member: [uri]}
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps(body), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 400 and json.loads(resp.body)["error"] == error, resp.body


@pytest.mark.parametrize("metadata", [
    {"request_object_signing_alg": "HS256"},
    {"token_endpoint_auth_signing_alg": "n\u00f6ne"},
    {"token_endpoint_auth_signing_alg": 'RS256"\\'},
    {"jwks": {"keys": [dict(public_jwk(PRIVATE), kid="k\u00e9y")] * 2}},  # one kid twice
    {"application_type": "service"},
])
def test_metadata_errors_name_the_problem_in_rfc_6749_characters(metadata):
    """The registry's rules decide (shared/clients.py); the client reads which one failed,
    quoting its value only where RFC 6749 §5.2 allows the characters, else generically."""
    with pytest.raises(OAuth2Error) as caught:
        _register("https://idp.example.test", **metadata)
    assert caught.value.error == "invalid_client_metadata"
    description = caught.value.description
    assert description and re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]+", description), description
