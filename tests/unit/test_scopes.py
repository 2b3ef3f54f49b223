"""Scopes and claims: parsing, the supported scopes per identity manager, scopes.yaml, the
claims of each scope, the subject rule and the narrowing of claims requests
(shared/scopes.py)."""

from __future__ import annotations

import pytest

from shared import scopes
from shared import scopes as scopelib
from shared.identity import Identity
from tests.support.op import startup_problems


def test_scope_parsing_and_supported_lists():
    assert scopes.parse("openid  profile openid email") == ["openid", "profile", "email"]
    assert scopes.parse(None) == []
    assert scopes.supported("ldap")[:2] == ["openid", "offline_access"]
    assert scopes.supported("dummy") == ["openid", "profile", "email"]
    assert scopes.supported("ldap", ["profile"]) == ["openid", "profile"]


def test_scopes_yaml_adds_scopes_and_descriptions(tmp_path):
    path = tmp_path / "scopes.yaml"
    path.write_text("mapping:\n  kopano/kwm: chat\nscopes:\n  chat:\n    description: Use chat\n"
                    "  kopano/kwm:\n    priority: 5\n")
    defs = scopes.ScopeDefinitions.load(str(path))
    assert "kopano/kwm" in scopes.supported("ldap", definitions=defs)
    assert defs.describe("kopano/kwm") == ("chat", "Use chat")
    assert defs.describe("email")[0] == "basic"
    assert defs.describe("unknown/x") == ("unknown/x", None)  # the page's words: pages.py
    bad = tmp_path / "bad.yaml"
    bad.write_text("scopes: [1, 2]\n")
    with pytest.raises(scopes.ScopesError):
        scopes.ScopeDefinitions.load(str(bad))


def test_claims_for_scopes_release_only_their_claims():
    claims = {"name": "Alice", "given_name": "", "email": "a@x", "email_verified": False}
    assert scopes.claims_for(["profile"], claims) == {"name": "Alice"}
    assert scopes.claims_for(["email"], claims) == {"email": "a@x", "email_verified": False}
    assert scopes.claims_for(["openid"], claims) == {}


def test_standard_claims_name_every_claim_a_scope_releases():
    alice = Identity(raw_sub="u-alice", backend="identifier-users", username="alice",
                     name="Alice Example", given_name="Alice", family_name="Example",
                     email="alice@example.test", email_verified=True)
    claims = scopes.standard_claims(alice)
    assert set(claims) == set(scopes.SCOPE_OF_CLAIM)
    assert claims["preferred_username"] == "alice" and claims["email_verified"] is True
    assert scopes.claims_for(["profile", "email"], claims) == claims


@pytest.mark.parametrize("text,why", [
    ("scopes:\n  ~:\n    description: x\n", "a null key became the scope 'None'"),
    ("scopes:\n  yes: {}\n", "a boolean key became the scope 'True'"),
    ("scopes:\n  'kopano kwm': {}\n", "a space: no request can name it"),
    ("scopes:\n  kopano/kwm:\n    description: [1, 2]\n", "a description that is no text"),
    ("mapping:\n  kopano/kwm: ~\n", "an alias 'None'"),
])
def test_scopes_yaml_key_that_is_no_scope_name_is_a_startup_error(tmp_path, redis_url, text, why):
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). Every key under
    `scopes:` becomes a supported, grantable scope (Konnect's identifier/identifier.go), so a
    YAML null or boolean key silently advertised and granted "None" or "True"."""
    path = tmp_path / "scopes.yaml"
    path.write_text(text)
    problems = startup_problems(tmp_path, redis_url,
                                 extra_args=("--identifier-scopes-conf", str(path)))
    assert any(str(path) in p for p in problems), (why, problems)


def test_konnect_style_scopes_yaml_still_loads(tmp_path, redis_url):
    path = tmp_path / "scopes.yaml"
    path.write_text("mapping:\n  kopano/kwm: chat\nscopes:\n  chat:\n    description: Use chat\n"
                    "  kopano/kwm:\n    priority: 5\n  konnect/guestok:\n")
    assert startup_problems(tmp_path, redis_url,
                             extra_args=("--identifier-scopes-conf", str(path))) == []


def test_subject_is_one_rule():
    alice = Identity(raw_sub="u-alice", backend="identifier-users", username="alice")
    assert scopelib.subject(alice, ["openid", "konnect/raw_sub"]) == "u-alice"
    assert scopelib.subject(alice, ["openid"]) == alice.sub != "u-alice"


@pytest.mark.parametrize("scopes,within,expected", [
    (["openid"], None, {"userinfo": {"custom": None, "sub": None}}),
    (["openid", "email"], None, {"userinfo": {"email": None, "custom": None, "sub": None}}),
    # a refresh narrowing `profile email` to `profile`: email goes
    (["openid", "profile"], ["openid", "profile", "email"],
     {"userinfo": {"custom": None, "sub": None}}),
    # claims asked without their scope (a trusted client's) stay through the narrowing
    (["openid"], ["openid", "profile"], {"userinfo": {"email": None, "custom": None,
                                                      "sub": None}}),
])
def test_narrow_claims(scopes, within, expected):
    claims = {"userinfo": {"email": None, "custom": None, "sub": None}}
    assert scopelib.narrow_claims(claims, scopes, within=within) == expected
    assert scopelib.narrow_claims(None, scopes) is None
