"""Sign-in through a SAML2 identity provider: SimpleSAMLphp under a test-owned Apache
(tests/support/simplesamlphp.py), as in Konnect's example, in front of the OP under test
started as `make run` starts it, the IdP's metadata signed and checked with the IdP's metadata
signing certificate (test_saml2_metadata.py has the refusals). The IdP's genuine answers
are replayed, delayed past their lifetime, stripped of their signature or wrapped, and must
never sign anyone in."""

from __future__ import annotations

import base64
import zlib
import html
import re
import time
from urllib.parse import urlencode, urljoin

import pytest
import requests

from tests.support.simplesamlphp import ACS, saml_site
from tests.support.upstream import (Browser, authorize_url, end_session_url, logged, query_of,
                                    redeem, redeem_tokens)

START = "/signin/v1/identifier/oauth2/start?authority_id=idp"
pytestmark = pytest.mark.group
LIFETIME = 3  # seconds an assertion of the IdP lives (and the OP's clock skew is 1 s)


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    with saml_site(tmp_path_factory.mktemp("saml2-upstream"), lifetime=LIFETIME,
                   signed_metadata=True) as site:
        yield site


_FORM = re.compile(r'<form[^>]*action="([^"]*)"', re.I)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', re.I)


def to_idp_answer(op, b, username, password, url=None):
    """Start the sign-in and log in at the IdP: the IdP's answer (ACS URL, form fields),
    not yet posted."""
    url = url or op["down"].issuer + START
    page = b.run(url)  # stops at the IdP's login page
    assert page.status_code == 200 and 'name="password"' in page.text, page.text[:500]
    fields = dict(_HIDDEN.findall(page.text))
    login = urljoin(b.steps[-1], html.unescape(_FORM.search(page.text).group(1)))
    answer = b.session.post(login, data={**{k: html.unescape(v) for k, v in fields.items()},
                                         "username": username, "password": password},
                            timeout=15)
    assert answer.status_code == 200 and "SAMLResponse" in answer.text, answer.text[:500]
    target = html.unescape(_FORM.search(answer.text).group(1))
    return target, {k: html.unescape(v) for k, v in _HIDDEN.findall(answer.text)}


def post(b, target, fields):
    return b.session.post(target, data=fields, allow_redirects=False, timeout=15)


def signed_in(b):
    return any(c.name == "__Host-KKT" for c in b.session.cookies)


def test_our_sp_metadata_is_served_at_the_entity_id(op):
    down = op["down"]
    resp = requests.get(down.issuer + "/signin/v1/identifier/saml2/metadata", verify=down.ca,
                        timeout=15)
    assert resp.status_code == 200 and "samlmetadata" in resp.headers["Content-Type"]
    assert f'entityID="{down.issuer}/signin/v1/identifier/saml2/metadata"' in resp.text
    assert down.issuer + ACS in resp.text and "HTTP-POST" in resp.text


def test_sign_in_through_the_idp_gives_the_local_users_own_subject(op):
    down = op["down"]
    b = Browser(down.ca)
    url, origin = authorize_url(down)
    page = b.run(url)
    assert page.status_code == 200 and "Sign in with SimpleSAMLphp" in page.text
    start = down.issuer + START + "&" + urlencode(query_of(b.steps[-1]))
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw", start)
    assert target == down.issuer + ACS
    resp = post(b, target, fields)
    assert resp.status_code == 302, resp.text[:300]
    b.run(urljoin(target, resp.headers["Location"]), stop_at=origin)
    sub = redeem(down, query_of(b.steps[-1])["code"], origin)["sub"]
    # the subject of a password sign-in of the same local user
    p = Browser(down.ca)
    url, origin = authorize_url(down)
    p.run(url + "&prompt=login", upstream=down, credentials=("alice", "alice-local-pw"),
          stop_at=origin)
    assert sub == redeem(down, query_of(p.steps[-1])["code"], origin)["sub"]


def test_an_idp_user_unknown_to_the_local_backend_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "mallory", "mallory-idp-pw")
    resp = post(b, target, fields)
    assert resp.status_code == 403 and "did not succeed" in resp.text and not signed_in(b)


def test_a_replayed_assertion_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw")
    flow = {c.name: c.value for c in b.session.cookies if c.name.startswith("__Host-KKAF-")}
    assert post(b, target, fields).status_code == 302
    # the same POST again, with the flow cookie an attacker copied
    thief = Browser(op["down"].ca)
    for name, value in flow.items():
        thief.session.cookies.set(name, value, domain="localhost", path="/signin/v1/identifier/")
    resp = post(thief, target, fields)
    assert resp.status_code in (400, 403) and not signed_in(thief)
    # and in a new sign-in of its own (another RelayState and request id)
    thief.run(op["down"].issuer + START, stop_at=op["idp"].base)
    relay = query_of(thief.steps[-1])["RelayState"]
    resp = post(thief, target, {**fields, "RelayState": relay})
    assert resp.status_code == 403 and not signed_in(thief)
    assert logged(op["down"], "UnsolicitedResponse")


def test_an_expired_assertion_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw")
    time.sleep(LIFETIME + 2.5)  # past NotOnOrAfter and the OP's 1 s of clock skew
    resp = post(b, target, fields)
    assert resp.status_code == 403 and not signed_in(b)


def xml_of(fields):
    return base64.b64decode(fields["SAMLResponse"]).decode()


def with_xml(fields, xml):
    return {**fields, "SAMLResponse": base64.b64encode(xml.encode()).decode()}


def test_an_unsigned_assertion_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw")
    xml = xml_of(fields)
    stripped = re.sub(r"<ds:Signature.*?</ds:Signature>", "", xml, flags=re.S)
    assert stripped != xml
    resp = post(b, target, with_xml(fields, stripped))
    assert resp.status_code == 403 and not signed_in(b)


def test_a_tampered_signed_assertion_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "mallory", "mallory-idp-pw")
    xml = xml_of(fields)
    forged = xml.replace(">mallory<", ">alice<")
    assert forged != xml
    resp = post(b, target, with_xml(fields, forged))
    assert resp.status_code == 403 and not signed_in(b)


def prepend(xml, signed, evil):
    return xml.replace(signed, evil + signed)


def nest(xml, signed, evil):
    return xml.replace(signed, signed.replace("</saml:Assertion>", evil + "</saml:Assertion>"))


def carry_before_own_signature(xml, signed, evil):
    """The forged assertion carries the genuine one (in an Advice) before a signature of
    its own that points at itself: xmlsec1 looks for the first signature below the forged
    assertion and would find, and verify, the genuine one's."""
    own = re.search(r"<ds:Signature.*?</ds:Signature>", signed, flags=re.S).group(0)
    genuine_id = re.search(r' ID="([^"]+)"', signed).group(1)
    evil_id = re.search(r' ID="([^"]+)"', evil).group(1)
    fake = own.replace(f'URI="#{genuine_id}"', f'URI="#{evil_id}"')
    issuer = re.search(r"<saml:Issuer>.*?</saml:Issuer>", evil, flags=re.S).group(0)
    return xml.replace(signed, evil.replace(
        issuer, issuer + "<saml:Advice>" + signed + "</saml:Advice>" + fake, 1))


@pytest.mark.parametrize("wrap", [prepend, nest, carry_before_own_signature])
def test_a_wrapped_assertion_is_refused(op, wrap):
    """Signature wrapping (XSW): mallory's genuine signed assertion stays in the Response,
    and an unsigned copy that says alice is put before it, or inside it, or carries it."""
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "mallory", "mallory-idp-pw")
    xml = xml_of(fields)
    signed = re.search(r"<saml:Assertion\b.*?</saml:Assertion>", xml, flags=re.S).group(0)
    evil = re.sub(r"<ds:Signature.*?</ds:Signature>", "", signed, flags=re.S)
    evil = evil.replace(">mallory<", ">alice<").replace(' ID="', ' ID="evil', 1)
    resp = post(b, target, with_xml(fields, wrap(xml, signed, evil)))
    assert resp.status_code == 403 and not signed_in(b)
    assert hello(b, op["down"]) == 204  # nobody signed in, as alice or anyone


def test_a_mismatched_relay_state_is_refused(op):
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw")
    for relay in ("", "not-a-state", "x" * 600):
        resp = post(b, target, {**fields, "RelayState": relay})
        assert resp.status_code == 400 and "Traceback" not in resp.text and not signed_in(b)


def test_a_deflated_post_answer_is_refused_even_when_genuine(op):
    """HTTP-POST carries base64 XML, never deflated (SAML 2.0 Bindings §3.5.4); pysaml2
    would inflate it without a limit (a 256 KiB message unpacks to some 250 MB), so a
    deflated answer is refused before pysaml2 sees it: here a genuine, signed answer of
    the IdP, deflated on its way, which pysaml2 alone accepted."""
    b = Browser(op["down"].ca)
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw")
    xml = base64.b64decode(fields["SAMLResponse"])
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    fields["SAMLResponse"] = base64.b64encode(deflater.compress(xml) + deflater.flush()).decode()
    resp = post(b, target, fields)
    assert resp.status_code == 403 and not signed_in(b)


def test_garbage_answers_are_pages_not_errors(op):
    b = Browser(op["down"].ca)
    for body in ("not base64 !!", base64.b64encode(b"<x>").decode(),
                 base64.b64encode(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>").decode()):
        b.run(op["down"].issuer + START, stop_at=op["idp"].base)
        relay = query_of(b.steps[-1])["RelayState"]
        resp = post(b, op["down"].issuer + ACS, {"SAMLResponse": body, "RelayState": relay})
        assert resp.status_code == 403 and not signed_in(b)


def signed_in_through_idp(op, b):
    """The demo RP's authorization request, signed in at the IdP as alice: the tokens."""
    down = op["down"]
    url, origin = authorize_url(down)
    b.run(url)
    start = down.issuer + START + "&" + urlencode(query_of(b.steps[-1]))
    target, fields = to_idp_answer(op, b, "alice", "alice-idp-pw", start)
    resp = post(b, target, fields)
    b.run(urljoin(target, resp.headers["Location"]), stop_at=origin)
    return redeem_tokens(down, query_of(b.steps[-1])["code"], origin), origin


def idp_session(op, b):
    """Whether the IdP still knows this browser: a new sign-in goes straight back
    (single sign-on) instead of showing its login page."""
    page = b.run(op["down"].issuer + START, stop_at=op["down"].issuer + ACS)
    return page is None or 'name="password"' not in page.text


def test_signing_out_here_is_a_single_logout_at_the_idp(op):
    down = op["down"]
    b = Browser(down.ca)
    tokens, origin = signed_in_through_idp(op, b)
    assert idp_session(op, b)  # single sign-on at the IdP until the logout
    b.steps.clear()
    page = b.run(end_session_url(down, tokens["id_token"], origin), stop_at=origin)
    assert page is None, (page.status_code, page.text[:300], b.steps)
    assert b.steps[-1] == origin + "/?state=bye"
    assert any("/saml2/idp/SingleLogoutService.php?SAMLRequest=" in s for s in b.steps)
    assert any(s.startswith(down.issuer + "/signin/v1/identifier/_/saml2/slo?SAMLResponse=")
               for s in b.steps)
    assert not signed_in(b)
    b2 = Browser(down.ca)
    b2.session.cookies.update(b.session.cookies)
    assert not idp_session(op, b2)


def test_a_garbage_logout_request_goes_to_the_sign_out_page(op):
    b = Browser(op["down"].ca)
    for params in ({"SAMLRequest": "x"}, {"SAMLRequest": "x", "SigAlg": "y", "Signature": "z"}):
        resp = b.session.get(op["down"].issuer + "/signin/v1/identifier/_/saml2/slo",
                             params=params, timeout=15, allow_redirects=False)
        assert resp.status_code == 302 and resp.headers["Location"] == "/signin/v1/goodbye"
    resp = b.session.get(op["down"].issuer + "/signin/v1/identifier/_/saml2/slo", timeout=15)
    assert resp.status_code == 400 and "Traceback" not in resp.text


@pytest.fixture(scope="module")
def sso(tmp_path_factory):
    with saml_site(tmp_path_factory.mktemp("saml2-sso"), default=True, metadata_file=True) as site:
        yield site


def test_a_default_saml2_authority_is_the_sign_in_page(sso):
    """An SSO-only site (the IdP's metadata from a file here): the authorization request
    goes straight to the IdP's login page, and the password form here is never offered
    nor accepted."""
    down, idp = sso["down"], sso["idp"]
    b = Browser(down.ca)
    url, origin = authorize_url(down)
    target, fields = to_idp_answer(sso, b, "alice", "alice-idp-pw", url)
    assert not any(s.startswith(down.issuer + "/signin/v1/identifier?") and s == b.steps[-1]
                   for s in b.steps)
    assert any(s.startswith(idp.base) for s in b.steps)
    resp = post(b, target, fields)
    b.run(urljoin(target, resp.headers["Location"]), stop_at=origin)
    assert "code" in query_of(b.steps[-1])
    logon = b.session.post(down.issuer + "/signin/v1/identifier/_/logon", timeout=15,
                           json={"state": "s", "params": ["alice", "alice-local-pw", "1"]},
                           headers={"Kopano-Konnect-XSRF": "1", "Origin": down.issuer})
    assert logon.status_code == 403


def hello(b, down):
    return b.session.post(down.issuer + "/signin/v1/identifier/_/hello", json={"state": "s"},
                          headers={"Kopano-Konnect-XSRF": "1", "Origin": down.issuer},
                          timeout=15).status_code


def test_a_logout_the_idp_starts_signs_out_here_only_when_signed(op):
    """IdP-initiated single logout (Konnect's SLO handler): SimpleSAMLphp's signed
    LogoutRequest for this browser's sign-in ends the logon and gets our LogoutResponse;
    the same request without its signature changes nothing."""
    down, idp = op["down"], op["idp"]
    b = Browser(down.ca)
    signed_in_through_idp(op, b)
    assert hello(b, down) == 200
    slo = down.issuer + "/signin/v1/identifier/_/saml2/slo"
    done = idp.base + "index.php?logged-out=1"
    b.steps.clear()
    b.run(idp.base + "saml2/idp/SingleLogoutService.php?" + urlencode({"ReturnTo": done}),
          stop_at=slo)
    request = b.steps[-1]
    assert "SAMLRequest=" in request and "Signature=" in request
    parts = request.split("?", 1)[1].split("&")
    unsigned = "&".join(p for p in parts if not p.startswith(("Signature=", "SigAlg=")))
    forged = "&".join(p if not p.startswith("Signature=") else "Signature=" + "A" * 344
                      for p in parts)
    for query in (unsigned, forged):
        resp = b.session.get(slo + "?" + query, allow_redirects=False, timeout=15)
        assert resp.status_code == 302 and resp.headers["Location"] == "/signin/v1/goodbye"
        assert hello(b, down) == 200  # still signed in
    resp = b.session.get(request, allow_redirects=False, timeout=15)
    assert resp.status_code == 302 and "SAMLResponse=" in resp.headers["Location"]
    assert resp.headers["Location"].startswith(idp.base)
    assert hello(b, down) == 204
    b.run(resp.headers["Location"], stop_at=done)
    assert b.steps[-1] == done
