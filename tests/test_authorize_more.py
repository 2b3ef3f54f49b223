"""Authorize: request objects, the check-session iframe, and redirect_uri look-alikes, with
the four services on one origin, real Redis and the users-file backend (as test_flow)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared import jose
from shared.keys import SigningKey, public_jwk
from shared.session import Logon, browser_state, session_state
from tests.support.op import ALICE, ISSUER, REGISTRY, make_state
from tests.test_flow import Browser, app, authorize_url, core, query_of, sign_in  # noqa: F401

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key, kid: str, alg: str) -> dict:
    return {**public_jwk(key), "kid": kid, "alg": alg, "use": "sig"}


EXTRA = f"""
  - id: ro-rp
    name: Request Object RP
    trusted: yes
    secret: ro
    redirect_uris: [https://ro.example.test/cb, https://ro.example.test/other]
    jwks: {json.dumps({"keys": [_jwk(RSA_KEY, "ro-1", "RS256")]})}
  - id: ro-pinned
    trusted: yes
    secret: rp
    request_object_signing_alg: ES256
    redirect_uris: [https://pinned.example.test/cb]
    jwks: {json.dumps({"keys": [_jwk(EC_KEY, "ec-1", "ES256")]})}
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("ro-state"), registry=REGISTRY + EXTRA)


def signed(claims: dict, key=RSA_KEY, kid: str = "ro-1", alg: str = "RS256") -> str:
    signer = SigningKey(kid=kid, public=key.public_key(), algs=frozenset({alg}), alg=alg,
                        private=key)
    return jose.sign(claims, signer, typ="oauth-authz-req+jwt")


def unsigned(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none'})}.{enc(claims)}."


def ro_url(request: str, **params) -> str:
    base = {"client_id": "ro-rp", "redirect_uri": "https://ro.example.test/cb",
            "response_type": "code", "scope": "openid", "state": "q-state", "nonce": None}
    base.update(params)
    return authorize_url(request=request, **base)


@pytest.mark.gen_test
async def test_signed_request_object_supersedes_the_query(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    obj = signed({"iss": "ro-rp", "aud": ISSUER, "client_id": "ro-rp", "response_type": "code",
                  "redirect_uri": "https://ro.example.test/other", "state": "obj-state",
                  "scope": "openid profile", "nonce": "obj-nonce",
                  "exp": int(time.time()) + 300})
    resp = await b.fetch(ro_url(obj))
    assert resp.code == 302, resp.body
    location = resp.headers["Location"]
    assert location.startswith("https://ro.example.test/other?")
    result = query_of(location)
    assert result["state"] == "obj-state" and result["scope"] == "openid profile"


@pytest.mark.gen_test
async def test_unsigned_request_object_is_accepted_for_a_client_without_a_pinned_alg(
        http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(unsigned({"state": "u-state"})))
    assert resp.code == 302 and query_of(resp.headers["Location"])["state"] == "u-state"


@pytest.mark.gen_test
@pytest.mark.parametrize("make,why", [
    (lambda: signed({"state": "x"}, key=OTHER_KEY), "signed by a key that is not the client's"),
    (lambda: signed({"state": "x"})[:-4] + "AAAA", "tampered signature"),
    (lambda: signed({"state": "x", "exp": int(time.time()) - 3600}), "expired"),
    (lambda: signed({"state": "x", "nbf": int(time.time()) + 3600}), "not yet valid"),
    (lambda: signed({"state": "x", "iss": "someone-else"}), "iss is not the client"),
    (lambda: signed({"state": "x", "aud": "https://other.example"}), "audience"),
    (lambda: signed({"client_id": "web-rp"}), "client_id differs"),
    (lambda: signed({"response_type": "token"}), "response_type differs"),
    (lambda: signed({"max_age": "ten"}), "max_age has the wrong type"),
    (lambda: signed({"claims": "not-an-object"}), "claims type"),
    (lambda: "not.a.jwt", "garbage"),
    (lambda: "x" * 20000, "too large"),
])
async def test_bad_request_objects_are_refused(http_client, base_url, make, why):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(make()))
    assert resp.code == 302, why
    result = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith("https://ro.example.test/cb?"), why
    assert result["error"] == "invalid_request_object" and result["state"] == "q-state", why
    assert result["iss"] == ISSUER


@pytest.mark.gen_test
async def test_pinned_alg_refuses_unsigned_and_other_algs(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    url = lambda obj: ro_url(obj, client_id="ro-pinned", redirect_uri="https://pinned.example.test/cb")  # noqa: E731
    ok = await b.fetch(url(signed({"state": "p"}, key=EC_KEY, kid="ec-1", alg="ES256")))
    assert query_of(ok.headers["Location"]).get("code")
    for bad in (unsigned({"state": "p"}), signed({"state": "p"})):
        resp = await b.fetch(url(bad))
        assert query_of(resp.headers["Location"])["error"] == "invalid_request_object"


@pytest.mark.gen_test
async def test_request_object_of_an_unverified_redirect_is_an_error_page(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch(
        ro_url(signed({"state": "x"}, key=OTHER_KEY), redirect_uri="https://evil.example/cb"))
    assert resp.code == 400 and "Location" not in resp.headers


@pytest.mark.gen_test
async def test_request_object_cannot_redirect_to_an_unregistered_uri(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(signed({"redirect_uri": "https://evil.example/cb"})))
    assert resp.code == 400 and "Location" not in resp.headers


@pytest.mark.gen_test
async def test_request_object_survives_the_sign_in_hand_off(http_client, base_url):
    b = Browser(http_client, base_url)
    resp = await b.fetch(ro_url(signed({"state": "h-state", "scope": "openid email"})))
    hand_off = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    assert hand_off["state"] == "h-state" and hand_off["scope"] == "openid email"
    assert "request" not in hand_off


# --- redirect_uri look-alikes (security.md: exact matching, never a redirect) ---------

LOOK_ALIKES = [
    "https://rp.example.test/cb/", "https://rp.example.test/cb?x=1", "https://rp.example.test/cb#f",
    "https://rp.example.test/CB", "https://RP.example.test/cb", "http://rp.example.test/cb",
    "https://rp.example.test:443/cb", "https://rp.example.test:8443/cb",
    "https://rp.example.test.evil.example/cb", "https://evil.example/rp.example.test/cb",
    "https://rp.example.test@evil.example/cb", "https://evil.example@rp.example.test/cb",
    "https://rp.example.test/cb/../cb", "https://rp.example.test/./cb", "https://rp.example.test//cb",
    "https://rp.example.test/cb%2F..", "https://rp.example.test/c%62", "https://rp.example.test/cb%00",
    "https://rp.example.test/cb\x00", "https://rp.example.test/cb ", " https://rp.example.test/cb",
    "https://rp.example.test\\@evil.example/cb", "https://rp.example.test%2F@evil.example/cb",
    "https://xn--rp-example-test/cb", "https://rp.example.test./cb", "//rp.example.test/cb",
    "/cb", "rp.example.test/cb", "javascript:alert(1)//https://rp.example.test/cb",
    "data:text/html,https://rp.example.test/cb", "https://rp.example.test/cb\r\nLocation: x",
    "https:/rp.example.test/cb", "https:rp.example.test/cb", "HTTPS://rp.example.test/cb",
]


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", LOOK_ALIKES)
async def test_look_alike_redirect_uris_get_a_page_not_a_redirect(http_client, base_url, uri):
    b = Browser(http_client, base_url)
    resp = await b.fetch(authorize_url(redirect_uri=uri))
    assert resp.code == 400 and "Location" not in resp.headers, uri


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", ["http://127.0.0.1:51000/cb", "http://[::1]:4000/cb",
                                 "http://localhost:4000/cb"])
async def test_native_loopback_any_port_is_accepted(http_client, base_url, uri):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri=uri, prompt="none",
        code_challenge="x" * 43, code_challenge_method="S256"))
    assert resp.code == 302 and resp.headers["Location"].startswith(uri)


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", ["http://127.0.0.1:51000/other", "https://127.0.0.1/cb",
                                 "http://evil.example/cb",
                                 "http://127.0.0.1.evil.example/cb"])
async def test_native_loopback_rule_is_narrow(http_client, base_url, uri):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri=uri, code_challenge="x" * 43,
        code_challenge_method="S256"))
    assert resp.code == 400 and "Location" not in resp.headers


# --- check-session iframe --------------------------------------------------------------

@pytest.mark.gen_test
async def test_check_session_page_is_frameable_with_a_nonce_script(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch("/konnect/v1/session/check-session.html")
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">'.encode() in resp.body
    assert "frame-ancestors" not in csp and "X-Frame-Options" not in resp.headers
    assert b">__Secure-KKBS</script>" in resp.body


@pytest.mark.gen_test
async def test_authorize_sets_the_browser_state_cookie_the_iframe_reads(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="trusted-rp",
                                       redirect_uri="https://trusted.example.test/cb"))
    header = [h for h in resp.headers.get_list("Set-Cookie") if h.startswith("__Secure-KKBS=")][0]
    assert "Path=/konnect/v1/session/" in header and "HttpOnly" not in header


NODE_HARNESS = r"""
const fs = require("fs");
const script = fs.readFileSync(process.argv[2], "utf8");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
let handler = null;
const parent = { postMessage: (answer, origin) => { out.push([answer, origin]); next(); } };
const out = [];
global.window = { parent, addEventListener: (type, fn) => { handler = fn; } };
global.document = { cookie: input.cookie, getElementById: () => ({ textContent: "__Secure-KKBS" }) };
new Function(script)();
let i = 0;
function next() {
  if (i >= input.messages.length) { console.log(JSON.stringify(out)); return; }
  const [data, fromParent] = input.messages[i++];
  handler({ data, origin: input.origin, source: fromParent ? parent : {} });
  if (!fromParent) { out.push(["ignored", null]); next(); }
}
next();
"""


def test_check_session_script_answers_as_session_management_says(tmp_path):
    node = shutil.which("node")
    assert node, "node is needed to run the iframe's script (Debian: nodejs)"
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    script = Path(__file__).resolve().parents[1] / "services/authorize/static/check-session.js"
    origin = "https://rp.example.test"
    state = browser_state(Logon(ALICE, 1700000000, "sid-1", "key-1"), ISSUER)
    good = session_state("web-rp", origin, state)
    messages = [[f"web-rp {good}", True],              # unchanged
                [f"other-rp {good}", True],            # changed (client differs)
                [f"other-rp {good}", True],            # the same change again: error (loop)
                [f"web-rp {good}", True],              # unchanged again
                ["garbage", True], [f"web-rp {good}", False]]  # malformed; not from parent
    run = subprocess.run([node, str(harness), str(script)], capture_output=True, text=True,
                         timeout=30, input=json.dumps({
                             "cookie": f"x=1; __Secure-KKBS={state}", "origin": origin,
                             "messages": messages}))
    assert run.returncode == 0, run.stderr
    answers = [a for a, _ in json.loads(run.stdout)]
    assert answers == ["unchanged", "changed", "error", "unchanged", "error", "ignored"]
    signed_out = subprocess.run([node, str(harness), str(script)], capture_output=True,
                                text=True, timeout=30, input=json.dumps({
                                    "cookie": "", "origin": origin,
                                    "messages": [[f"web-rp {good}", True]]}))
    assert [a for a, _ in json.loads(signed_out.stdout)] == ["changed"]
