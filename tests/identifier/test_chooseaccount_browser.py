"""The choose-account page in a real browser (Debian's Chromium, Playwright) through the
group started as `make run` starts it: "Continue as" signs in with logon mode "0" (the
signed-in user, no password), as Konnect's identifier web app does, and the flow goes on
at the authorization endpoint."""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.support.chromium import ARGS, CHROMIUM
from tests.support.group import Group
from tests.support.op import pkce_pair

pytestmark = pytest.mark.group


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    with Group(tmp_path_factory.mktemp("group-chooseaccount"), token_procs=1) as g:
        yield g


def test_continue_as_signs_in_with_mode_0_and_goes_on(group):
    from playwright.sync_api import expect, sync_playwright
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed (deploy/install-deps.sh test)"
    demo = group.demo
    callback = group.demo_url + "/callback"
    _, challenge = pkce_pair()

    def authorize(**extra) -> str:
        return group.issuer + "/signin/v1/identifier/_/authorize?" + urlencode({
            "client_id": demo["client_id"], "redirect_uri": callback, "response_type": "code",
            "scope": "openid", "state": "st-1", "code_challenge": challenge,
            "code_challenge_method": "S256", **extra})

    logons = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(ignore_https_errors=True, locale="en-US")
            page = context.new_page()
            page.on("request", lambda r: logons.append(json.loads(r.post_data))
                    if r.url.endswith("/signin/v1/identifier/_/logon") else None)
            page.route(callback + "*", lambda route: route.fulfill(status=200, body="callback"))
            page.goto(authorize())
            page.get_by_label("Username").fill(demo["username"])
            page.get_by_label("Password").fill(demo["password"])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Allow").click()
            page.wait_for_url(callback + "*")

            page.goto(authorize(prompt="select_account"))
            expect(page.get_by_role("heading", name="Choose an account")).to_be_visible()
            expect(page.locator("#account-name")).to_have_text("Demo User")
            page.locator("#continue").click()
            page.get_by_role("button", name="Allow").click()  # the demo app is not trusted
            page.wait_for_url(callback + "*")
            answer = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
            assert answer["state"] == "st-1" and answer["code"]
        finally:
            browser.close()
    assert [entry["params"][1:] for entry in logons] == [[demo["password"], "1"], ["", "0"]]
    assert logons[1]["params"][0] == demo["username"]
