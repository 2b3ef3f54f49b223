"""Chromium (Playwright) through the demo app and the group."""

from __future__ import annotations

import pytest

from tests.support.chromium import chromium, shot
from tests.support.group import Group


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    with Group(tmp_path_factory.mktemp("group-browser"), token_procs=2) as g:
        yield g


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


pytestmark = pytest.mark.group


def test_sign_in_consent_tokens_session_check_and_sign_out(group, browser):
    from playwright.sync_api import expect
    demo = group.demo
    # the dev CA is Caddy's own; the browser is told to accept it, as a developer would
    context = browser.new_context(ignore_https_errors=True, locale="en-US",
                                  viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.goto(group.demo_url + "/")
    expect(page.get_by_role("heading", name="Welcome to the demo app")).to_be_visible()
    shot(page, "01-demo-app")

    page.get_by_role("link", name="Sign in").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url.startswith(group.issuer + "/signin/v1/identifier?")
    page.get_by_label("Username").fill(demo["username"])
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The username or password is not correct.")
    page.get_by_label("Password").fill(demo["password"])
    shot(page, "02-sign-in")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", name="Allow access?")).to_be_visible()
    expect(page.get_by_text("Konnect demo app")).to_be_visible()
    shot(page, "03-consent")
    page.get_by_role("button", name="Allow").click()

    expect(page.locator("#who")).to_have_text("Demo User")
    assert page.url == group.demo_url + "/"
    expect(page.locator("#userinfo")).to_contain_text("demo@example.test")
    expect(page.locator("#id-token-claims")).to_contain_text('"aud": "konnect-demo"')
    expect(page.locator("#session-status")).to_have_text("unchanged", timeout=10_000)
    shot(page, "04-signed-in")
    # Session Management 1.0 §3.2: the RP iframe beside the OP's (same parent) is answered
    page.evaluate("""() => { const f = document.createElement("iframe");
        f.name = "rp-sibling"; document.body.appendChild(f); }""")
    sibling = page.frame(name="rp-sibling")
    answer = sibling.evaluate("""([op, msg]) => new Promise(done => {
        window.addEventListener("message", e => done(e.origin + " " + e.data));
        const opFrame = [...parent.document.querySelectorAll("iframe")]
            .find(f => f.src.startsWith(op));
        opFrame.contentWindow.postMessage(msg, op);
        setTimeout(() => done("no answer"), 3000); })""",
        [group.issuer, demo["client_id"] + " " +
         page.locator("#session-status").get_attribute("data-state")])
    assert answer == group.issuer + " unchanged"

    # Signing out at the OP in another tab: the RP's iframe check sees the change.
    other = context.new_page()
    other.goto(group.issuer + "/signin/v1/welcome")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_text("You are signed out.")).to_be_visible()
    other.close()
    expect(page.locator("#session-status")).to_have_text("changed", timeout=10_000)

    # Sign in again (the OP asks for the password: the logon is gone), then RP-initiated
    # logout with a confirmation page at the OP and the way back to the RP.
    page.goto(group.demo_url + "/login")
    page.get_by_label("Username").fill(demo["username"])
    page.get_by_label("Password").fill(demo["password"])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Allow").click()
    expect(page.locator("#who")).to_have_text("Demo User")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign out?")).to_be_visible()
    expect(page.get_by_text("Konnect demo app")).to_be_visible()
    shot(page, "05-sign-out")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Welcome to the demo app")).to_be_visible()
    assert page.url.startswith(group.demo_url + "/")
    page.goto(group.demo_url + "/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    context.close()


def test_sign_in_page_in_german_and_keyboard_only(group, browser):
    from playwright.sync_api import expect
    context = browser.new_context(ignore_https_errors=True, locale="de-DE")
    page = context.new_page()
    page.goto(group.demo_url + "/login")
    expect(page.get_by_role("heading", name="Anmelden")).to_be_visible()
    # keyboard only: the username field has focus, Tab moves to the password, Enter submits
    page.keyboard.type(group.demo["username"])
    page.keyboard.press("Tab")
    page.keyboard.type(group.demo["password"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Zugriff erlauben?")).to_be_visible()
    shot(page, "03-consent-de")
    page.get_by_role("button", name="Abbrechen").click()
    expect(page.locator(".error")).to_contain_text("access_denied")
    context.close()
