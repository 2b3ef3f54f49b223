"""`meta.scopes` of the identifier API's hello, as Konnect's identifier/meta/scopes/scopes.go
`NewScopesFromIDs` builds it from scopes.yaml and the identity manager's own definitions
(Konnect's identifier/backends/kc.go adds kopano/gc)."""

from __future__ import annotations

import textwrap

import pytest

from shared.scopes import ScopeDefinitions, ScopesError

SCOPES_YAML = """
mapping:
  kopano/kwm: chat
  email: contact
scopes:
  chat:
    description: Use chat
    priority: 30
  offline_access:
    description: Stay signed in
  kopano/gc:
    description: Your mail (from scopes.yaml)
    priority: 5
"""


@pytest.fixture
def definitions(tmp_path) -> ScopeDefinitions:
    path = tmp_path / "scopes.yaml"
    path.write_text(textwrap.dedent(SCOPES_YAML))
    return ScopeDefinitions.load(str(path))


def test_scopes_yaml_mapping_and_definitions_come_first(definitions):
    meta = definitions.meta(["openid", "email", "kopano/kwm", "offline_access", "other"])
    assert meta["mapping"] == {"openid": "basic", "email": "contact", "kopano/kwm": "chat"}
    assert meta["definitions"] == {
        "basic": {"priority": 20, "id": "scope_alias_basic"},
        "chat": {"priority": 30, "description": "Use chat"},
        "offline_access": {"priority": 0, "description": "Stay signed in"},
    }


def test_the_kopano_manager_defines_kopano_gc_over_scopes_yaml(definitions):
    assert definitions.meta(["kopano/gc"], "kc")["definitions"] == {
        "kopano/gc": {"priority": 0, "description": "Read and write your Kopano Groupware data"}}
    assert definitions.meta(["kopano/gc"], "ldap")["definitions"] == {
        "kopano/gc": {"priority": 5, "description": "Your mail (from scopes.yaml)"}}


def test_without_scopes_yaml_only_the_built_in_definitions():
    meta = ScopeDefinitions().meta(["openid", "konnect/id", "offline_access", "kopano/kwm"])
    assert meta == {"mapping": {"openid": "basic", "konnect/id": "basic"},
                    "definitions": {"basic": {"priority": 20, "id": "scope_alias_basic"},
                                    "offline_access": {"priority": 10,
                                                       "id": "scope_offline_access"}}}


@pytest.mark.parametrize("priority", ["high", "1.5", True, 1.5, [1]])
def test_a_priority_that_is_no_whole_number_stops_the_start_up(tmp_path, priority):
    path = tmp_path / "scopes.yaml"
    path.write_text(f"scopes:\n  chat:\n    priority: {priority!r}\n".replace("'", '"'))
    with pytest.raises(ScopesError, match="priority"):
        ScopeDefinitions.load(str(path))
