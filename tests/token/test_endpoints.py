"""The token service's HTTP surface: methods and content types, parameters from the body only,
405 with Allow, discovery, JWKS, ETags and HEAD."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.clients import EXTRA_CLIENTS, JWT_CLIENT
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, introspect_as, post, redeem, token
from tests.support.op import (
    ISSUER,
    REGISTRY,
    SECRET,
)
from tests.support.users import TOKEN_ALICE

pytestmark = pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))


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
@pytest.mark.parametrize("path,methods,headers", [
    ("/konnect/v1/token", "POST, OPTIONS", "authorization, content-type"),
    ("/konnect/v1/revoke", "POST, OPTIONS", "authorization, content-type"),
    ("/.well-known/openid-configuration", "GET, HEAD, OPTIONS", "accept"),
    ("/konnect/v1/jwks.json", "GET, HEAD, OPTIONS", "accept"),
])
async def test_cors_preflight_lists_the_methods_the_endpoint_answers(http_client, base_url, path,
                                                                    methods, headers):
    """Browser-based clients call these from any origin (as Konnect's); the preflight's
    methods are those of the endpoint's 405 `Allow`."""
    resp = await http_client.fetch(base_url + path, method="OPTIONS", raise_error=False, headers={
        "Origin": "https://rp.example.test", "Access-Control-Request-Method": methods[:3],
        "Access-Control-Request-Headers": headers})
    assert resp.code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Allow-Methods"] == methods
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in headers.split(", "))
    assert "Access-Control-Allow-Credentials" not in resp.headers
    wrong = "PUT" if "POST" in methods else "DELETE"
    refused = await http_client.fetch(base_url + path, method=wrong, raise_error=False,
                                      allow_nonstandard_methods=True,
                                      body=b"" if wrong == "PUT" else None)
    assert refused.code == 405 and refused.headers["Allow"] == methods


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
    # the key once (and as Konnect's `default`): it signs every RSA alg and names none
    # (RFC 7517 §4.4); no RS256 copy of it
    assert {k["kid"] for k in keys} == {state["kid"], "default"}
    for key in keys:
        assert key["use"] == "sig" and "alg" not in key and "d" not in key and "p" not in key


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


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("path,query", [
    ("/konnect/v1/revoke", "token"), ("/konnect/v1/revoke", "client_secret"),
    ("/konnect/v1/revoke", "token_type_hint"), ("/konnect/v1/introspect", "token"),
    ("/konnect/v1/introspect", "client_secret"), ("/konnect/v1/introspect", "client_id"),
])
async def test_revocation_and_introspection_parameters_in_the_query_are_refused(
        http_client, base_url, core, path, query):
    _, issued = await redeem(http_client, base_url, core)
    form = {"token": issued["access_token"], "token_type_hint": "access_token",
            "client_id": "web-rp", "client_secret": SECRET}
    moved = {query: form.pop(query)}
    resp, body = await post(http_client, base_url, f"{path}?{urlencode(moved)}", form)
    assert resp.code == 400 and body["error"] == "invalid_request", body
    assert query in body["error_description"]
    # the token was neither revoked nor looked at
    resp, info = await introspect_as(http_client, base_url, {"token": issued["access_token"]},
                                  {"Authorization": basic("web-rp", SECRET)})
    assert info["active"] is True


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_query_parameters_the_endpoint_does_not_read_are_ignored(http_client, base_url, core):
    _, issued = await redeem(http_client, base_url, core)
    resp, info = await post(http_client, base_url, "/konnect/v1/introspect?utm_source=x",
                            {"token": issued["access_token"]},
                            {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200 and info["active"] is True


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/konnect/v1/jwks.json"])
async def test_head_on_public_documents_has_gets_headers_without_the_body(http_client, base_url,
                                                                          path):
    get = await http_client.fetch(base_url + path)
    head = await http_client.fetch(base_url + path, method="HEAD")
    assert head.code == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(get.body) > 0
    for name in ("Etag", "Content-Type", "Cache-Control", "Access-Control-Allow-Origin"):
        assert head.headers[name] == get.headers[name], name
    cached = await http_client.fetch(base_url + path, method="HEAD", raise_error=False,
                                     headers={"If-None-Match": get.headers["Etag"]})
    assert cached.code == 304 and cached.body == b""


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/konnect/v1/token", "POST, OPTIONS"),  # the CORS preflight is answered too
    ("PUT", "/konnect/v1/revoke", "POST, OPTIONS"),
    ("GET", "/konnect/v1/register", "POST"),
    ("POST", "/konnect/v1/jwks.json", "GET, HEAD, OPTIONS"),
    ("DELETE", "/.well-known/openid-configuration", "GET, HEAD, OPTIONS"),
])
async def test_every_405_names_the_allowed_methods(http_client, base_url, method, path, allow):
    """RFC 9110 §15.5.6: a 405 MUST carry `Allow`."""
    resp = await http_client.fetch(base_url + path, method=method, raise_error=False,
                                   body=b"" if method in ("POST", "PUT") else None,
                                   allow_nonstandard_methods=True)
    assert resp.code == 405 and resp.headers["Allow"] == allow
    assert json.loads(resp.body)["error"] == "method_not_allowed"


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("endpoint", ["token", "revoke", "introspect"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_form_endpoints_405_lists_options_too(http_client, base_url, endpoint, method):
    resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method=method,
                                   raise_error=False, body=b"" if method == "PUT" else None,
                                   allow_nonstandard_methods=True)
    assert resp.code == 405 and resp.headers["Allow"] == "POST, OPTIONS"
    preflight = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="OPTIONS",
                                        raise_error=False)
    assert preflight.code == 204
