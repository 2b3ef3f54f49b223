"""The OpenID conformance suite's OP modules, what tests each one here, and the command that
writes docs/conformance.md from a run of those tests:

    .venv/bin/python -m tests.support.conformance      (or: make conformance)

A module is tested by the tests marked `@pytest.mark.conformance("<module>")` (in
tests/e2e/test_conformance.py) and/or by the tests named in `ELSEWHERE`; a module that does
not apply has its reason in `NOT_APPLICABLE`. tests/e2e/test_conformance_doc.py checks that
the document is what this command writes when every one of those tests passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "conformance.md"
BATTERY = "tests/e2e/test_conformance.py"

# module -> (plans, what it checks)
MODULES = {
    "oidcc-server": ("B I H", "happy flow for every response type; ID token claims, signature, at_hash/c_hash, state, iss"),
    "oidcc-server-client-secret-post": ("B H", "happy flow with client_secret_post"),
    "oidcc-response-type-missing": ("B I H", "no response_type: error, never a code"),
    "oidcc-idtoken-signature": ("B I H", "ID token signed with RS256 by default, kid present"),
    "oidcc-idtoken-rs256": ("D T", "a client that registered RS256 gets RS256"),
    "oidcc-idtoken-unsigned": ("B D", "alg none ID tokens"),
    "oidcc-userinfo-get": ("B I H", "userinfo with GET"),
    "oidcc-userinfo-post-header": ("B I H", "userinfo with POST and the Authorization header"),
    "oidcc-userinfo-post-body": ("B I H", "userinfo with POST and the token in the body"),
    "oidcc-userinfo-rs256": ("D", "signed userinfo (application/jwt)"),
    "oidcc-ensure-request-without-nonce-succeeds-for-code-flow": ("B H", "code flow without nonce"),
    "oidcc-ensure-request-without-nonce-fails": ("I H", "id_token from the authorization endpoint needs a nonce"),
    "oidcc-scope-profile": ("B I H", "profile claims where they belong"),
    "oidcc-scope-email": ("B I H", "email claims where they belong"),
    "oidcc-scope-address": ("B I H", "address claim"),
    "oidcc-scope-phone": ("B I H", "phone claims"),
    "oidcc-scope-all": ("B I H", "all scopes at once"),
    "oidcc-alternate-happy-flow": ("B I H", "reversed scope and parameter order"),
    "oidcc-display-page": ("B I H", "display=page does not cause an error"),
    "oidcc-display-popup": ("B I H", "display=popup does not cause an error"),
    "oidcc-prompt-login": ("B I H", "prompt=login forces a new sign-in; auth_time increases"),
    "oidcc-prompt-none-not-logged-in": ("B I H", "login_required, 128-character state intact"),
    "oidcc-prompt-none-logged-in": ("B I H", "silent success, same sub"),
    "oidcc-max-age-1": ("B I H", "max_age=1 after 1 s forces a sign-in, auth_time returned"),
    "oidcc-max-age-10000": ("B I H", "max_age=10000: no new sign-in"),
    "oidcc-ensure-request-with-unknown-parameter-succeeds": ("B I H", "unknown parameters ignored"),
    "oidcc-id-token-hint": ("B I H", "prompt=none with the first ID token as hint"),
    "oidcc-login-hint": ("B I H", "login_hint accepted"),
    "oidcc-ui-locales": ("B I H", "ui_locales accepted"),
    "oidcc-claims-locales": ("B I H", "claims_locales accepted"),
    "oidcc-ensure-request-with-acr-values-succeeds": ("B I H", "acr_values accepted"),
    "oidcc-codereuse": ("B H", "second use of a code: 400 invalid_grant"),
    "oidcc-codereuse-30seconds": ("B H", "second use later: invalid_grant and the first access token revoked"),
    "oidcc-ensure-registered-redirect-uri": ("B I H", "registered URI + suffix: error page, no redirect"),
    "oidcc-ensure-post-request-succeeds": ("B", "authorization request as POST"),
    "oidcc-request-uri-unsigned-supported-correctly-or-rejected-as-unsupported": ("B I H", "request_uri processed or request_uri_not_supported"),
    "oidcc-unsigned-request-object-supported-correctly-or-rejected-as-unsupported": ("B I H", "unsigned request object processed"),
    "oidcc-ensure-request-object-with-redirect-uri": ("B I H D", "redirect_uri inside the request object wins"),
    "oidcc-claims-essential": ("B I H", "essential name claim"),
    "oidcc-refresh-token": ("B H D", "refresh works and is bound to its client"),
    "oidcc-ensure-request-with-valid-pkce-succeeds": ("B H", "S256 PKCE"),
    "oidcc-discovery-endpoint-verification": ("C D T", "discovery document and JWKS"),
    "oidcc-ensure-redirect-uri-in-authorization-request": ("D T", "no redirect_uri: error page"),
    "oidcc-redirect-uri-query-OK": ("D T", "registered URI with a query"),
    "oidcc-redirect-uri-query-mismatch": ("D T", "other query value: error page"),
    "oidcc-redirect-uri-query-added": ("D T", "query added: error page"),
    "oidcc-redirect-uri-regfrag": ("D T", "registration with a fragment refused"),
    "oidcc-registration-logo-uri": ("D", "logo_uri shown"),
    "oidcc-registration-policy-uri": ("D", "policy_uri shown"),
    "oidcc-registration-tos-uri": ("D", "tos_uri shown"),
    "oidcc-registration-jwks-uri": ("D", "jwks_uri used"),
    "oidcc-registration-sector-uri": ("D", "sector_identifier_uri used"),
    "oidcc-registration-sector-bad": ("D", "bad sector_identifier_uri refused"),
    "oidcc-server-rotate-keys": ("D T", "operator key rotation: new key published, old kept"),
    "oidcc-refresh-token-rp-key-rotation": ("D", "RP rotates its private_key_jwt key via jwks_uri"),
    "oidcc-request-uri-unsigned": ("D", "request_uri (mandatory for Dynamic OPs)"),
    "oidcc-request-uri-signed-rs256": ("D", "signed request_uri"),
    "oidcc-ensure-client-assertion-with-iss-aud-succeeds": ("D", "client assertion with aud = issuer"),
    "oidcc-rp-initiated-logout": ("L", "logout, redirect to the registered URI with state; prompt=none fails after"),
    "oidcc-rp-initiated-logout-no-state": ("L", "logout without state"),
    "oidcc-rp-initiated-logout-only-state": ("L", "state without post_logout_redirect_uri: no redirect"),
    "oidcc-rp-initiated-logout-no-params": ("L", "no parameters: the user is asked"),
    "oidcc-rp-initiated-logout-no-post-logout-redirect-uri": ("L", "hint without URI: no redirect"),
    "oidcc-rp-initiated-logout-bad-id-token-hint": ("L", "bad hint: no redirect"),
    "oidcc-rp-initiated-logout-modified-id-token-hint": ("L", "alg none hint: no redirect"),
    "oidcc-rp-initiated-logout-no-id-token-hint": ("L", "URI without hint: no redirect without asking"),
    "oidcc-rp-initiated-logout-bad-post-logout-redirect-uri": ("L", "unregistered URI: no redirect"),
    "oidcc-rp-initiated-logout-query-added-to-post-logout-redirect-uri": ("L", "URI with an added query: no redirect"),
    "oidcc-session-management": ("L", "check-session iframe reports changed after logout"),
    "oidcc-frontchannel-rp-initiated-logout": ("L", "front-channel logout notification"),
    "oidcc-backchannel-rp-initiated-logout": ("L", "back-channel logout token"),
    "fapi2-ensure-authorization-code-is-bound-to-client": ("probe", "another client's credentials: invalid_grant"),
    "fapi2-ensure-token-endpoint-fails-with-expired-auth-code": ("probe", "expired code: invalid_grant"),
    "fapi2-incorrect-pkce-code-verifier-rejected": ("probe", "wrong verifier: invalid_grant"),
    "fapi2-ensure-pkce-code-verifier-required": ("probe", "missing verifier: invalid_grant"),
    "fapi2-par-plain-pkce-rejected": ("probe", "plain PKCE refused"),
    "fapi2-ensure-authorization-request-with-long-state": ("probe", "long state intact or a clean error"),
    "fapi2-refresh-token-requires-client-authentication": ("probe", "refresh without client authentication refused"),
    "fapi2-ensure-client-assertion-with-wrong-aud-fails": ("probe", "client assertion with a wrong aud refused"),
    "fapi2-ensure-request-object-signature-algorithm-is-not-none": ("probe", "unsigned object refused when an alg is registered"),
    "fapi2-ensure-response-type-token-fails": ("probe", "response_type=token refused"),
}

NOT_APPLICABLE = {
    "oidcc-idtoken-unsigned": "We never issue unsigned ID tokens; `none` is not in id_token_signing_alg_values_supported, so the suite skips it.",
    "oidcc-scope-address": "No `address` scope (Konnect has none); it is not in scopes_supported, so the suite skips it.",
    "oidcc-scope-phone": "No `phone` scope (Konnect has none); it is not in scopes_supported, so the suite skips it.",
    "oidcc-registration-logo-uri": "Registration keeps only the metadata the OP uses; logo_uri is not shown on the consent page.",
    "oidcc-registration-policy-uri": "As logo_uri: policy_uri is not stored or shown.",
    "oidcc-registration-tos-uri": "As logo_uri: tos_uri is not stored or shown.",
    "oidcc-registration-jwks-uri": "Client keys are registered inline (`jwks`); `jwks_uri` is refused with invalid_client_metadata, so the OP never fetches client URLs.",
    "oidcc-registration-sector-uri": "Only the `public` subject type exists (as in Konnect); no pairwise subjects.",
    "oidcc-registration-sector-bad": "As sector-uri: sector_identifier_uri is refused at registration.",
    "oidcc-refresh-token-rp-key-rotation": "Needs jwks_uri: client keys are inline, an RP rotates by updating its registration.",
    "oidcc-request-uri-unsigned": "request_uri is refused (`request_uri_not_supported`); this is a Dynamic-OP-only module.",
    "oidcc-request-uri-signed-rs256": "As request-uri-unsigned.",
    "oidcc-frontchannel-rp-initiated-logout": "Front-channel logout is not implemented (nor in Konnect); discovery says frontchannel_logout_supported: false.",
    "oidcc-backchannel-rp-initiated-logout": "Back-channel logout is not implemented (nor in Konnect); discovery says backchannel_logout_supported: false.",
}

# modules (also) tested by tests outside tests/e2e/test_conformance.py
ELSEWHERE = {
    "oidcc-server-rotate-keys": ["tests/token/test_scaling.py::test_key_rotation_keeps_old_tokens_valid_and_refuses_unknown_keys"],
    "oidcc-session-management": [
        "tests/authorize/test_sessions.py::test_check_session_script_answers_as_session_management_says",
        "tests/e2e/test_browser.py::test_sign_in_consent_tokens_session_check_and_sign_out"],
    "fapi2-par-plain-pkce-rejected": ["tests/authorize/test_redirects.py::test_errors_after_verification_redirect_with_state_and_iss"],
}


def render(results: dict[str, dict[str, str]]) -> str:
    """Markdown for docs/conformance.md. `results`: module -> {nodeid: outcome}."""
    rows, counts = [], {"passed": 0, "failed": 0, "not applicable": 0, "not tested": 0}
    for module, (plans, what) in MODULES.items():
        outcomes = results.get(module, {})
        if module in NOT_APPLICABLE and not outcomes:
            status, tests = "not applicable", NOT_APPLICABLE[module]
        elif not outcomes:
            status, tests = "not tested", ""
        else:
            status = "passed" if all(o == "passed" for o in outcomes.values()) else "failed"
            names = sorted({n.split("[")[0] for n in outcomes})
            tests = "<br>".join(f"`{n}`" + (f" ({sum(1 for k in outcomes if k.startswith(n))} cases)"
                                           if sum(1 for k in outcomes if k.startswith(n)) > 1 else "")
                                for n in names)
        counts[status] += 1
        rows.append(f"| `{module}` | {plans} | {what} | {status} | {tests} |")
    head = [
        "# Conformance battery",
        "",
        "Written by `make conformance` (tests/support/conformance.py) from a run of the tests",
        "below; do not edit. tests/e2e/test_conformance_doc.py checks that it is current.",
        "",
        "The OpenID Foundation's conformance suite cannot run here (it needs Docker, MongoDB and",
        "Maven Central), so its OP modules are rebuilt as tests against the real services, real",
        "Redis and the users-file backend. Plans: B Basic, I Implicit, H Hybrid, C Config,",
        "D Dynamic, T comprehensive, L logout; `probe`: FAPI 2.0 negative tests borrowed as probes.",
        "Form Post (FP) reruns B/I/H with `response_mode=form_post`: the happy-flow module runs",
        "every response type in every response mode.",
        "",
        f"Summary: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['not applicable']} not applicable, {counts['not tested']} not tested.",
        "",
        "| module | plans | checks | result | tested by / reason |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def selection() -> list[str]:
    """The pytest arguments that select every test the table names."""
    return [BATTERY, *sorted({n for ids in ELSEWHERE.values() for n in ids})]


def results_of(outcomes: dict[str, str], marks: dict[str, list[str]]) -> dict:
    """module -> {nodeid: outcome}, from the outcome and `conformance` marks of each test."""
    results: dict[str, dict[str, str]] = {}
    for nodeid, outcome in outcomes.items():
        for module in marks.get(nodeid, []):
            results.setdefault(module, {})[nodeid] = outcome
        for module, ids in ELSEWHERE.items():
            if any(nodeid == t or nodeid.startswith(t + "[") for t in ids):
                results.setdefault(module, {})[nodeid] = outcome
    return results


class _Recorder:
    """A pytest plugin that keeps each test's outcome and conformance modules."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.marks: dict[str, list[str]] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            self.marks[item.nodeid] = [m.args[0] for m in item.iter_markers("conformance")]

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            if self.outcomes.get(report.nodeid) in (None, "passed"):
                self.outcomes[report.nodeid] = report.outcome


def main(argv: list[str]) -> int:
    """Run the selected tests and write the document; with `--check`, only collect them and
    tell whether the document is what a run in which they all pass would write."""
    recorder = _Recorder()
    check = "--check" in argv
    args = ["-q", "-p", "no:cacheprovider", *(["--collect-only"] if check else []), *selection()]
    status = pytest.main(args, plugins=[recorder])
    if check:
        if status != 0:
            print("collection failed", file=sys.stderr)
            return 2
        wanted = render(results_of({n: "passed" for n in recorder.marks}, recorder.marks))
        if DOC.read_text() != wanted:
            print(f"{DOC.relative_to(ROOT)} is not current: run `make conformance`",
                  file=sys.stderr)
            return 1
        return 0
    missing = [n for n in recorder.marks if n not in recorder.outcomes]
    if missing:
        print(f"not written: {len(missing)} selected tests did not run", file=sys.stderr)
        return 1
    DOC.write_text(render(results_of(recorder.outcomes, recorder.marks)))
    print(f"wrote {DOC.relative_to(ROOT)} ({'all passed' if status == 0 else 'with failures'})")
    return int(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
