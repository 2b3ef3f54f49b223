"""A person signs in through each kind of authority in a real browser (Debian's Chromium
driven by Playwright), from the demo app of the OP under test: an upstream OpenID Provider
(a second process group), an SSO-only site whose sign-in page is the upstream's, and
SimpleSAMLphp. Then signs out and is signed out upstream too. Screenshots go to
test-artifacts/screenshots/."""

from __future__ import annotations

import pytest

from tests.support.chromium import chromium, shot
from tests.support.simplesamlphp import saml_site
from tests.support.upstream import oidc_sites

pytestmark = pytest.mark.group


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def new_page(browser):
    # the dev CAs are the groups' own Caddy CAs; the browser accepts them as a developer would
    context = browser.new_context(ignore_https_errors=True, locale="en-US",
                                  viewport={"width": 1000, "height": 800})
    return context, context.new_page()


def hello(page) -> int:
    """The status of the identifier API's `_/hello` from the page's origin (204: nobody
    is signed in there)."""
    return page.evaluate("""() => fetch("/signin/v1/identifier/_/hello", {method: "POST",
        headers: {"Kopano-Konnect-XSRF": "1", "Content-Type": "application/json"},
        body: JSON.stringify({state: "s"})}).then(r => r.status)""")


def sign_in_upstream(page, up, down) -> None:
    """On the upstream's own sign-in page (the password is typed there, never at the OP
    under test), then back at `down`'s demo app."""
    from playwright.sync_api import expect
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url.startswith(up.issuer + "/signin/v1/identifier?")
    page.get_by_label("Username").fill("demo")
    page.get_by_label("Password").fill(up.demo["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("Demo")
    assert page.url == down.demo_url + "/"


def test_sign_in_through_an_upstream_openid_provider_and_out_again(tmp_path_factory, browser):
    from playwright.sync_api import expect
    with oidc_sites(tmp_path_factory.mktemp("browser-oidc")) as op:
        up, down, sso = op["up"], op["down"], op["sso"]
        context, page = new_page(browser)
        page.goto(down.demo_url + "/")
        page.get_by_role("link", name="Sign in").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_role("link", name="Sign in with Upstream code")).to_be_visible()
        shot(page, "authorities-01-sign-in-offers-authorities")
        page.get_by_role("link", name="Sign in with Upstream code").click()
        sign_in_upstream(page, up, down)
        shot(page, "authorities-02-signed-in-through-upstream")
        page.goto(up.issuer + "/signin/v1/welcome")
        assert hello(page) == 200  # signed in at the upstream as well
        page.goto(down.demo_url + "/")
        # sign out at the RP: our end session, then the upstream's, then back to the RP
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Welcome to the demo app")).to_be_visible()
        assert page.url.startswith(down.demo_url + "/")
        for group in (down, up):  # signed out here and at the upstream
            page.goto(group.issuer + "/signin/v1/welcome")
            assert hello(page) == 204
        context.close()

        # an SSO-only site: its sign-in page is the upstream's
        context, page = new_page(browser)
        page.goto(sso.demo_url + "/")
        page.get_by_role("link", name="Sign in").click()
        sign_in_upstream(page, up, sso)
        context.close()


def test_sign_in_through_simplesamlphp_and_out_again(tmp_path_factory, browser):
    from playwright.sync_api import expect
    with saml_site(tmp_path_factory.mktemp("browser-saml2")) as site:
        down, idp = site["down"], site["idp"]
        context, page = new_page(browser)
        page.goto(down.demo_url + "/")
        page.get_by_role("link", name="Sign in").click()
        page.get_by_role("link", name="Sign in with SimpleSAMLphp").click()
        expect(page.locator("#password")).to_be_visible()
        assert page.url.startswith(idp.base)
        page.locator("#username").fill("alice")
        page.locator("#password").fill("alice-idp-pw")
        shot(page, "authorities-03-simplesamlphp-login")
        page.locator("#password").press("Enter")
        # SimpleSAMLphp posts the signed assertion to our ACS with its own script
        expect(page.locator("#who")).to_have_text("Alice", timeout=15_000)
        assert page.url == down.demo_url + "/"
        shot(page, "authorities-04-signed-in-through-saml2")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Welcome to the demo app")).to_be_visible()
        assert page.url.startswith(down.demo_url + "/")
        # single logout reached the IdP: signing in again asks for the password there
        page.get_by_role("link", name="Sign in").click()
        page.get_by_role("link", name="Sign in with SimpleSAMLphp").click()
        expect(page.locator("#password")).to_be_visible()
        context.close()
