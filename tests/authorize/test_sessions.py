"""The browser session at the authorization endpoint: a logon is a session only while its user
exists; session_state, the browser-state cookie and the check-session iframe (Session
Management 1.0)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.session import (
    BROWSER_STATE_COOKIE,
    LOGON_COOKIE,
    Logon,
    browser_state,
    session_state,
)
from tests.support.browser import TRUSTED, Browser, authorize_url, query_of, sign_in, signed_in
from tests.support.clients import (
    ODD_CB,
    ODD_ORIGIN_REGISTRY,
    REQUEST_OBJECT_CLIENTS,
)
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.op import ALICE, ISSUER, REGISTRY
from tests.support.users import (
    ALICE_ENTRY,
    BOB_ENTRY,
    SIGN_IN_USERS,
    write_users,
)


async def _session(b: Browser) -> tuple[str, str]:
    resp = await b.fetch(authorize_url(**TRUSTED))
    result = query_of(resp.headers["Location"])
    return b.cookies["__Host-KKBS"], result["session_state"]


def _konnect_state(sub: str, issuer: str) -> str:
    data = f"{sub} {issuer} kopano-konnect-1".encode()
    return base64.urlsafe_b64encode(hashlib.blake2b(data, digest_size=32).digest()).rstrip(b"=").decode()


NODE_HARNESS = r"""
const fs = require("fs");
const script = fs.readFileSync(process.argv[2], "utf8");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
let handler = null;
const parent = { postMessage: (answer, origin) => { out.push([answer, origin]); next(); } };
const out = [];
global.window = { parent, addEventListener: (type, fn) => { handler = fn; } };
global.document = { cookie: input.cookie, getElementById: () => ({ textContent: "__Host-KKBS" }) };
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


pytestmark = pytest.mark.op(registry=REGISTRY + REQUEST_OBJECT_CLIENTS)


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("change", ["disabled", "removed"])
async def test_a_logon_of_a_disabled_or_removed_user_is_no_session(http_client, base_url,
                                                                   users_path, change):
    b = await signed_in(http_client, base_url)
    silent = authorize_url(response_type="id_token token", prompt="none", **TRUSTED)
    before = query_of((await b.fetch(silent)).headers["Location"])
    assert before.get("access_token") and (await b.api("hello", {"state": "h"})).code == 200
    write_users(users_path, [dict(ALICE_ENTRY, disabled=True)] if change == "disabled" else [])
    assert LOGON_COOKIE in b.cookies  # the sealed cookie is still there and still valid
    after = await b.fetch(silent)
    assert after.code == 302 and query_of(after.headers["Location"]) == {
        "error": "login_required", "error_description": "the user is not signed in",
        "state": "xyz", "iss": ISSUER}
    for response_type in ("code", "id_token token"):
        page = await b.fetch(authorize_url(response_type=response_type, **TRUSTED))
        assert page.code == 302 and page.headers["Location"].startswith("/signin/v1/identifier?")
    select = await b.fetch(authorize_url(prompt="select_account", **TRUSTED))
    assert select.headers["Location"].startswith("/signin/v1/identifier?")
    hello = await b.api("hello", {"state": "h2", "flow": "oidc", **TRUSTED})
    assert hello.code == 204 and hello.headers["Kopano-Konnect-State"] == "h2"
    # enabled again: the same logon is a session again (nothing was written)
    write_users(users_path, [ALICE_ENTRY])
    assert (await b.api("hello", {"state": "h3"})).code == 200
    assert query_of((await b.fetch(silent)).headers["Location"]).get("access_token")


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_session_state_hashes_the_browsers_origin(http_client, base_url):
    """OIDC Session Management 1.0 §3: the iframe recomputes the hash with the RP frame's
    `event.origin`, which the browser serialises lowercased and without the default port."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", scope="openid",
                                       client_id="odd-origin-rp", redirect_uri=ODD_CB))
    assert resp.code == 302 and resp.headers["Location"].startswith(ODD_CB)
    digest, salt = query_of(resp.headers["Location"])["session_state"].split(".")
    text = f"odd-origin-rp https://rp.odd.example.test {b.cookies[BROWSER_STATE_COOKIE]} {salt}"
    assert hashlib.sha256(text.encode()).hexdigest() == digest


@pytest.mark.op(users=SIGN_IN_USERS, clock="offset")
@pytest.mark.gen_test(timeout=30)
async def test_browser_state_is_keyed_per_logon_and_matches_session_state(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    state1, session1 = await _session(b)
    again, session2 = await _session(b)
    assert again == state1  # the same logon: the iframe answers "unchanged"
    # session_state = sha256(client_id origin browser_state salt).salt (§3) over the cookie
    for session in (session1, session2):
        digest, salt = session.split(".")
        expected = f"trusted-rp https://trusted.example.test {state1} {salt}"
        assert digest == hashlib.sha256(expected.encode()).hexdigest()
    # a third party knowing the user cannot compute it (Konnect's formula had no secret)
    sub = Logon.open(core.sealer, b.cookies[LOGON_COOKIE]).identity.sub
    assert state1 != _konnect_state(sub, core.settings.iss)
    # another sign-in of the same user in another browser: another state
    other = Browser(http_client, base_url)
    await sign_in(other)
    assert (await _session(other))[0] != state1


@pytest.mark.gen_test
async def test_check_session_page_is_frameable_with_a_nonce_script(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch("/konnect/v1/session/check-session.html")
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">'.encode() in resp.body
    assert "frame-ancestors" not in csp and "X-Frame-Options" not in resp.headers
    assert b">__Host-KKBS</script>" in resp.body


@pytest.mark.gen_test
async def test_authorize_sets_the_browser_state_cookie_the_iframe_reads(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="trusted-rp",
                                       redirect_uri="https://trusted.example.test/cb"))
    header = [h for h in resp.headers.get_list("Set-Cookie") if h.startswith("__Host-KKBS=")][0]
    assert "Path=/;" in header and "HttpOnly" not in header


IFRAME_ORIGIN = "https://rp.example.test"
IFRAME_STATE = browser_state(Logon(ALICE, 1700000000, "sid-1", "key-1"), ISSUER)
GOOD = session_state("web-rp", IFRAME_ORIGIN, IFRAME_STATE)


def iframe_answers(tmp_path, cookie: str, messages: list) -> list:
    """What static/check-session.js answers (run by node) to `messages` ([data, from the
    parent]) with `document.cookie` = `cookie`."""
    node = shutil.which("node")
    assert node, "node is needed to run the iframe's script (Debian: nodejs)"
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    script = Path(__file__).resolve().parents[2] / "services/authorize/static/check-session.js"
    run = subprocess.run([node, str(harness), str(script)], capture_output=True, text=True,
                         timeout=30, input=json.dumps({"cookie": cookie, "origin": IFRAME_ORIGIN,
                                                       "messages": messages}))
    assert run.returncode == 0, run.stderr
    return [a for a, _ in json.loads(run.stdout)]


def test_check_session_script_answers_as_session_management_says(tmp_path):
    messages = [[f"web-rp {GOOD}", True],              # unchanged
                [f"other-rp {GOOD}", True],            # changed (client differs)
                [f"other-rp {GOOD}", True],            # the same change again: error (loop)
                [f"web-rp {GOOD}", True],              # unchanged again
                ["garbage", True], [f"web-rp {GOOD}", False]]  # malformed; not from parent
    answers = iframe_answers(tmp_path, f"x=1; {BROWSER_STATE_COOKIE}={IFRAME_STATE}", messages)
    assert answers == ["unchanged", "changed", "error", "unchanged", "error", "ignored"]
    assert iframe_answers(tmp_path, "", [[f"web-rp {GOOD}", True]]) == ["changed"]


@pytest.mark.parametrize("cookie", [
    "{name}={state}; x=1; {name}={state}",          # even the same value twice
    "{name}={state}; {name}=planted",
    "{name}=planted; {name}={state}",
    "{name}={state};{name} =planted",
])
def test_check_session_script_says_error_when_the_browser_state_cookie_is_there_twice(
        tmp_path, cookie):
    """A second browser-state cookie (a sibling subdomain's or another path's, where the
    browser keeps such) makes the state unknown: "error", never one of them by order, and
    never "unchanged". Other cookies that merely start with the name are not it."""
    messages = [[f"web-rp {GOOD}", True]] * 3
    jar = cookie.format(name=BROWSER_STATE_COOKIE, state=IFRAME_STATE)
    assert iframe_answers(tmp_path, jar, messages) == ["error"] * 3
    others = f"{BROWSER_STATE_COOKIE}x=1; x{BROWSER_STATE_COOKIE}=2; " \
        f"{BROWSER_STATE_COOKIE}={IFRAME_STATE}"
    assert iframe_answers(tmp_path, others, messages) == ["unchanged"] * 3
