"""Sign-in through an upstream OpenID Provider: our own OP, a second process group, is the
upstream of the OP under test (tests/support/upstream.py), both started as `make run`
starts them. Flows go through both Caddy proxies over TLS, the person's browser done with
`requests` (tests/support/upstream.Browser)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import urlencode

import pytest
import requests

from shared import jose
from shared.keys import load_keyring
from shared.keytool import LINK_NAME
from shared.users.userfile import UsersFileBackend
from tests.support.upstream import (CALLBACK, Browser, authorize_url, end_session_url, logged,
                                    oidc_sites, query_of, redeem, redeem_tokens)

START = "/signin/v1/identifier/oauth2/start"
pytestmark = pytest.mark.group


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    with oidc_sites(tmp_path_factory.mktemp("oidc-upstream")) as sites:
        yield sites


def browser(op):
    return Browser(op["up"].ca, op["down"].ca, op["sso"].ca)


def password_sub(group, username, password):
    """The subject a password sign-in of `username` at `group` gets."""
    b = Browser(group.ca)
    url, origin = authorize_url(group, prompt="login")
    b.run(url, upstream=group, credentials=(username, password), stop_at=origin)
    return redeem(group, query_of(b.steps[-1])["code"], origin)["sub"]


def through(op, authority_id, username, password, *, group="down", **extra):
    """The RP's authorization request at `group`, signed in at the upstream through
    `authority_id`: the browser and the RP's callback URL (or the page it stopped on)."""
    target = op[group]
    b = browser(op)
    url, origin = authorize_url(target, **extra)
    page = b.run(url)
    if group == "down":  # the sign-in page offers the authorities beside the password form
        assert page.status_code == 200 and "Sign in with Upstream" in page.text
        start = f"{target.issuer}{START}?" + urlencode(
            {"authority_id": authority_id, **query_of(b.steps[-1])})
        page = b.run(start, upstream=op["up"], credentials=(username, password), stop_at=origin)
    return b, page, origin


@pytest.mark.parametrize("authority_id", ["code", "implicit", "explicit"])
def test_sign_in_through_the_upstream_gives_the_local_users_own_subject(op, authority_id):
    """The code flow (PKCE, client_secret_basic), Konnect's default `id_token` response
    type (form_post), and the same without discovery (the entry's authorization_endpoint
    and jwks, as Konnect's example): the upstream's `preferred_username` names the local
    user, whose subject is the one a password sign-in of that user at our OP gets."""
    up, down = op["up"], op["down"]
    b, page, origin = through(op, authority_id, "demo", up.demo["password"])
    assert page is None, (page.status_code, b.steps[-3:])
    assert any(step.startswith(up.issuer + "/signin/v1/identifier/_/authorize") for step in b.steps)
    claims = redeem(down, query_of(b.steps[-1])["code"], origin)
    assert claims["sub"] == password_sub(down, "demo", down.demo["password"])
    assert claims["iss"] == down.issuer and claims["nonce"] == "rp-nonce"
    # what the browser sent to the upstream: state, nonce and PKCE S256 every time
    sent = query_of(next(s for s in b.steps if s.startswith(up.issuer + "/signin/v1/identifier/_/authorize")))
    assert sent["code_challenge_method"] == "S256" and len(sent["state"]) >= 32 and sent["nonce"]
    assert sent["response_type"] == ("code" if authority_id == "code" else "id_token")
    assert sent["redirect_uri"] == down.issuer + CALLBACK


def test_an_alias_maps_the_upstream_user_and_a_missing_one_is_refused(op):
    up, down = op["up"], op["down"]
    b, page, origin = through(op, "alias", "ext-bob", "bob-upstream-pw")
    assert page is None, (page.status_code, page.text[:300])
    claims = redeem(down, query_of(b.steps[-1])["code"], origin)
    assert claims["sub"] == password_sub(down, "bob", "bob-local-pw")
    # `demo` exists at both OPs, but this authority requires an alias and has none for it
    b, page, _ = through(op, "alias", "demo", up.demo["password"])
    assert page.status_code == 403 and "did not succeed" in page.text
    assert not [c for c in b.session.cookies
                if c.name == "__Host-KKT" and c.domain.startswith("localhost")]


def test_an_upstream_user_unknown_to_the_local_backend_is_refused(op):
    b, page, _ = through(op, "code", "ext-bob", "bob-upstream-pw")  # no local ext-bob
    assert page.status_code == 403 and "did not succeed" in page.text
    assert "Traceback" not in page.text


def test_a_wrong_issuer_in_discovery_is_an_error_page_not_a_sign_in(op):
    down = op["down"]
    b = browser(op)
    page = b.run(f"{down.issuer}{START}?authority_id=wrong-iss")
    assert page.status_code == 502 and "cannot be reached" in page.text
    assert logged(down, "is not the configured iss")


def test_an_unreachable_upstream_is_a_clear_error_page(op):
    b = browser(op)
    page = b.run(f"{op['down'].issuer}{START}?authority_id=dead")
    assert page.status_code == 502 and "Upstream dead cannot be reached" in page.text


def test_an_unknown_authority_id_is_a_page(op):
    page = browser(op).run(f"{op['down'].issuer}{START}?authority_id=nope")
    assert page.status_code == 400 and "Unknown sign-in service" in page.text


# --- adversarial answers to the id_token response type, signed with the upstream's own key


def started(op, authority_id="implicit"):
    """A sign-in through `authority_id` started in a fresh browser, stopped at the upstream:
    the browser and what it was sent there (state, nonce)."""
    b = browser(op)
    b.run(f"{op['down'].issuer}{START}?authority_id={authority_id}", stop_at=op["up"].issuer)
    return b, query_of(b.steps[-1])


def upstream_token(op, **claims):
    up = op["up"]
    keyring = load_keyring([str(up.state / "keys" / LINK_NAME)])
    now = int(time.time())
    base = {"iss": up.issuer, "aud": "down-implicit", "sub": "x", "iat": now, "exp": now + 300,
            "preferred_username": "demo"}
    base.update(claims)
    return jose.sign({k: v for k, v in base.items() if v is not None}, keyring.signer)


def answer(op, b, state, id_token):
    return b.session.post(op["down"].issuer + CALLBACK, data={"state": state, "id_token": id_token},
                          allow_redirects=False, timeout=15)


def test_a_well_formed_answer_signs_in_and_cannot_be_replayed(op):
    b, sent = started(op)
    cookies = {c.name: c.value for c in b.session.cookies if c.name.startswith("__Host-KKAF-")}
    token = upstream_token(op, nonce=sent["nonce"])
    first = answer(op, b, sent["state"], token)
    assert first.status_code == 302 and first.headers["Location"].startswith("/signin/v1/welcome")
    # the same answer again, the flow cookie put back as an attacker who copied it would
    for name, value in cookies.items():
        b.session.cookies.set(name, value, domain="localhost.local", path="/signin/v1/identifier/")
        b.session.cookies.set(name, value, domain="localhost", path="/signin/v1/identifier/")
    again = answer(op, b, sent["state"], token)
    assert again.status_code == 400 and "did not succeed" in again.text


@pytest.mark.parametrize("claims, reason", [
    ({"iss": "https://evil.example"}, "iss is not the authority's"),
    ({"aud": "down-other"}, "not for our client_id"),
    ({"aud": ["down-implicit", "down-other"]}, "azp"),
    ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "expired"),
    ({"iat": int(time.time()) + 3600}, "iat missing or in the future"),
    ({"nonce": "another"}, "nonce does not match"),
    ({"nonce": None}, "nonce does not match"),
])
def test_an_id_token_the_upstream_signed_for_something_else_is_refused(op, claims, reason):
    b, sent = started(op)
    token = upstream_token(op, **{"nonce": sent["nonce"], **claims})
    resp = answer(op, b, sent["state"], token)
    assert resp.status_code == 403 and "did not succeed" in resp.text
    assert logged(op["down"], reason)
    assert not any(c.name == "__Host-KKT" for c in b.session.cookies)


def b64(doc):
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_unsigned_or_hmac_tokens_are_refused(op):
    b, sent = started(op)
    body = b64({"iss": op["up"].issuer, "aud": "down-implicit", "sub": "x", "nonce": sent["nonce"],
                "iat": int(time.time()), "exp": int(time.time()) + 300, "preferred_username": "demo"})
    for header in ({"alg": "none"}, {"alg": "HS256", "kid": "x"}):
        b2, sent2 = started(op)
        resp = answer(op, b2, sent2["state"], f"{b64(header)}.{body}.")
        assert resp.status_code == 403, resp.text


def test_a_mismatched_or_missing_state_is_refused(op):
    b, sent = started(op)
    token = upstream_token(op, nonce=sent["nonce"])
    other, other_sent = started(op)  # another browser's state, with this browser's cookie
    assert answer(op, b, other_sent["state"], token).status_code == 400
    assert answer(op, b, "", token).status_code == 400
    assert b.session.post(op["down"].issuer + CALLBACK, data={"id_token": token},
                          allow_redirects=False, timeout=15).status_code == 400


def test_an_answer_with_another_iss_parameter_is_refused(op):
    b, sent = started(op)
    resp = b.session.post(op["down"].issuer + CALLBACK, allow_redirects=False, timeout=15, data={
        "state": sent["state"], "id_token": upstream_token(op, nonce=sent["nonce"]),
        "iss": "https://evil.example"})
    assert resp.status_code == 403


def test_the_upstreams_error_is_a_page_not_a_sign_in(op):
    b, sent = started(op)
    resp = b.session.get(op["down"].issuer + CALLBACK, allow_redirects=False, timeout=15,
                         params={"state": sent["state"], "error": "access_denied"})
    assert resp.status_code == 403 and "did not succeed" in resp.text


# --- a `default` authority: an SSO-only site


def test_a_default_authority_is_the_sign_in_page(op):
    up, sso = op["up"], op["sso"]
    b = browser(op)
    url, origin = authorize_url(sso)
    page = b.run(url, upstream=up, credentials=("demo", up.demo["password"]), stop_at=origin)
    assert page is None, (page.status_code, b.steps[-3:])
    assert not any(s.startswith(sso.issuer + "/signin/v1/identifier?") and s == b.steps[-1]
                   for s in b.steps)
    claims = redeem(sso, query_of(b.steps[-1])["code"], origin)
    assert claims["sub"] == backend_sub(sso, "demo")
    # no password sign-in to fall back to: `_/logon` refuses even the right credentials
    resp = requests.post(sso.issuer + "/signin/v1/identifier/_/logon", verify=sso.ca, timeout=15,
                         json={"state": "s", "params": ["demo", sso.demo["password"], "1"]},
                         headers={"Kopano-Konnect-XSRF": "1", "Origin": sso.issuer})
    assert resp.status_code == 403


def backend_sub(group, username):
    """The subject the group's users file gives `username` (what a password sign-in gets)."""
    backend = UsersFileBackend(str(group.state / "users.yaml"))
    try:
        return asyncio.run(backend.resolve(username)).sub
    finally:
        asyncio.run(backend.close())


def test_prompt_login_is_passed_to_the_upstream_and_prompt_none_never_hops(op):
    up, sso = op["up"], op["sso"]
    b = browser(op)
    url, origin = authorize_url(sso, prompt="none")
    page = b.run(url, stop_at=origin)
    assert page is None and query_of(b.steps[-1].replace("#", "?"))["error"] == "login_required"
    assert not any(s.startswith(up.issuer) for s in b.steps)
    b = browser(op)
    url, origin = authorize_url(sso, prompt="login")
    b.run(url, stop_at=up.issuer)
    assert query_of(b.steps[-1])["prompt"] == "login"


def test_signing_out_here_signs_out_at_the_upstream_and_comes_back(op):
    """`end_session_enabled`: our end session sends the browser to the upstream's
    end-session endpoint (id_token_hint, our callback as post_logout_redirect_uri), and
    its answer brings it back to where the RP asked to go."""
    up, down = op["up"], op["down"]
    b, page, origin = through(op, "code", "demo", up.demo["password"])
    assert page is None
    tokens = redeem_tokens(down, query_of(b.steps[-1])["code"], origin)
    assert api_hello(b, up).status_code == 200  # signed in at the upstream too
    b.steps.clear()
    b.run(end_session_url(down, tokens["id_token"], origin), stop_at=origin)
    assert b.steps[-1] == origin + "/?state=bye"
    assert any(s.startswith(up.issuer + "/signin/v1/identifier/_/endsession?") for s in b.steps)
    assert any(s.startswith(down.issuer + CALLBACK + "?") for s in b.steps)
    assert api_hello(b, up).status_code == 204 and api_hello(b, down).status_code == 204


def test_without_end_session_enabled_the_upstream_session_stays(op):
    up, down = op["up"], op["down"]
    b, page, origin = through(op, "implicit", "demo", up.demo["password"])
    tokens = redeem_tokens(down, query_of(b.steps[-1])["code"], origin)
    b.steps.clear()
    b.run(end_session_url(down, tokens["id_token"], origin), stop_at=origin)
    assert not any(s.startswith(up.issuer) for s in b.steps)
    assert api_hello(b, up).status_code == 200 and api_hello(b, down).status_code == 204


def api_hello(b, group):
    return b.session.post(group.issuer + "/signin/v1/identifier/_/hello", json={"state": "s"},
                          headers={"Kopano-Konnect-XSRF": "1", "Origin": group.issuer},
                          timeout=15)
