"""The client registry: loading, validation, redirect URI rules, secrets, implicit trust."""

from __future__ import annotations

import textwrap

import pytest

from shared.clients import Client, ClientRegistry, RegistryError

ISSUER = "https://idp.example.com"

EXAMPLE = """
clients:
  - id: playground
    name: OIDC Playground
    application_type: web
    trusted: yes
    secret: "s3cr3t-._~"
    redirect_uris:
      - https://my-host:8080/cb
      - https://my-host:8080/other?x=1
    origins:
      - https://my-host:8080
    post_logout_redirect_uris:
      - https://my-host:8080/bye
  - id: native-app
    application_type: native
    redirect_uris:
      - http://127.0.0.1/callback
      - http://localhost
      - com.example.app:/oauth2redirect
      - https://app.example.com/native
  - id: kwm
    insecure: yes
    redirect_uris: [http://kwm.local/cb]
    id_token_signed_response_alg: RS256
    jwks:
      keys:
        - {kty: EC, crv: P-256, x: f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU, y: x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0}
"""


def load(tmp_path, text: str) -> ClientRegistry:
    path = tmp_path / "identifier-registration.yaml"
    path.write_text(textwrap.dedent(text))
    return ClientRegistry.load(str(path), issuer=ISSUER)


@pytest.fixture
def registry(tmp_path):
    return load(tmp_path, EXAMPLE)


def test_konnect_style_file_loads_every_field(registry):
    assert len(registry) == 3
    web = registry.get("playground")
    assert web.trusted and web.name == "OIDC Playground" and web.display_name == "OIDC Playground"
    assert web.origins == ("https://my-host:8080",) and not web.is_public
    kwm = registry.get("kwm")
    assert kwm.insecure and kwm.id_token_signed_response_alg == "RS256"
    assert kwm.jwks["keys"][0]["crv"] == "P-256" and kwm.is_public
    assert kwm.origins == ("http://kwm.local",)  # filled from the first redirect URI
    assert registry.get("native-app").origins == ()


@pytest.mark.parametrize("uri,ok", [
    ("https://my-host:8080/cb", True),
    ("https://my-host:8080/cb/", False),
    ("https://MY-HOST:8080/cb", False),
    ("https://my-host:8080/cb?x=1", False),
    ("https://my-host:8080/other?x=1", True),
    ("https://my-host:8080/other", False),
    ("https://my-host:8080/other?x=1&y=2", False),
    ("https://my-host:8081/cb", False),
    ("http://my-host:8080/cb", False),
    ("https://my-host:8080/cb#frag", False),
    ("https://evil@my-host:8080/cb", False),
    ("https://my-host:8080/cb ", False),
    (None, False), ("", False),
])
def test_web_redirect_uris_match_exactly(registry, uri, ok):
    assert registry.get("playground").redirect_uri_ok(uri) is ok


@pytest.mark.parametrize("uri,ok", [
    ("http://127.0.0.1:51234/callback", True),
    ("http://127.0.0.1/callback", True),
    ("http://localhost:9999/callback", True),
    ("http://[::1]:80/callback", True),
    ("http://127.0.0.1:51234/callback/x", True),  # via the path-less "http://localhost"
    ("http://127.0.0.1:51234/callback?x=1", False),
    ("http://localhost:4000/any/path", True),  # registered "http://localhost" has no path
    ("https://127.0.0.1:5000/callback", False),
    ("http://127.0.0.1.evil.com:5000/callback", False),
    ("http://10.0.0.1:5000/callback", False),
    ("com.example.app:/oauth2redirect", True),
    ("com.example.app:/other", False),
    ("https://app.example.com/native", True),
])
def test_native_loopback_rule_allows_any_port_only(registry, uri, ok):
    assert registry.get("native-app").redirect_uri_ok(uri) is ok


def test_loopback_rule_does_not_apply_to_web_clients(tmp_path):
    reg = load(tmp_path, """
        clients:
          - id: w
            insecure: yes
            redirect_uris: [http://127.0.0.1/cb]
    """)
    assert reg.get("w").redirect_uri_ok("http://127.0.0.1/cb")
    assert not reg.get("w").redirect_uri_ok("http://127.0.0.1:8000/cb")


def test_overlong_redirect_uri_is_refused(registry):
    long_uri = "https://my-host:8080/cb?" + "a" * 3000
    assert not registry.get("playground").redirect_uri_ok(long_uri)


def test_secret_checks_are_exact(registry):
    client = registry.get("playground")
    assert client.check_secret("s3cr3t-._~")
    assert not client.check_secret("s3cr3t-._")
    assert not client.check_secret("")
    assert not client.check_secret(None)
    assert not registry.get("kwm").check_secret("anything")


def test_post_logout_uris_registered_or_redirect_uris(registry):
    web = registry.get("playground")
    assert web.post_logout_redirect_uri_ok("https://my-host:8080/bye")
    assert not web.post_logout_redirect_uri_ok("https://my-host:8080/cb")
    kwm = registry.get("kwm")
    assert kwm.post_logout_redirect_uri_ok("http://kwm.local/cb")
    assert not kwm.post_logout_redirect_uri_ok("http://kwm.local/other")


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(RegistryError) as info:
        load(tmp_path, """
            clients:
              - id: a
                redirect_uris: [http://a.example/cb]
              - id: b
                application_type: desktop
                redirect_uris: [https://b.example/cb]
              - id: c
              - redirect_uris: [https://x.example/cb]
              - id: e
                redirect_uris: ["https://e.example/cb#x", "relative/path"]
                trusted: "yes please"
                redirect_uri: https://typo.example
              - id: f
                application_type: native
                redirect_uris: [http://f.example/cb]
              - id: a
                redirect_uris: [https://a.example/cb]
              - id: g
                redirect_uris: [https://g.example/cb]
                id_token_signed_response_alg: HS256
        """)
    problems = info.value.problems
    text = "\n".join(problems)
    assert 'clients[0] (id "a"): redirect_uris[0] must use https (or set insecure: yes)' in problems
    assert 'clients[1] (id "b"): application_type must be web or native' in problems
    assert 'clients[2] (id "c"): redirect_uris is required (at least one)' in problems
    assert "clients[3]: id is required" in problems
    assert 'clients[4] (id "e"): redirect_uris[0] must not contain a fragment' in problems
    assert 'clients[4] (id "e"): redirect_uris[1] must be absolute' in problems
    assert 'clients[4] (id "e"): trusted must be true or false' in problems
    assert 'clients[4] (id "e"): unknown field(s) redirect_uri' in problems
    assert "loopback" in text and 'clients[5] (id "f")' in text
    assert 'clients[6] (id "a"): duplicate id' in problems
    assert "HS256" in text


def test_insecure_does_not_waive_redirect_uris(tmp_path):
    with pytest.raises(RegistryError, match="redirect_uris is required"):
        load(tmp_path, "clients:\n  - id: x\n    insecure: yes\n")


def test_private_key_jwt_needs_jwks(tmp_path):
    with pytest.raises(RegistryError, match="private_key_jwt needs jwks"):
        load(tmp_path, """
            clients:
              - id: x
                token_endpoint_auth_method: private_key_jwt
                redirect_uris: [https://x.example/cb]
        """)


def test_missing_file_and_bad_yaml_are_clear_errors(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        ClientRegistry.load(str(tmp_path / "nope.yaml"), issuer=ISSUER)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients:\n  - id: [unclosed\n")
    with pytest.raises(RegistryError, match="not valid YAML at line"):
        ClientRegistry.load(str(bad), issuer=ISSUER)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("clients: yes\n")
    with pytest.raises(RegistryError, match="must be a list"):
        ClientRegistry.load(str(wrong), issuer=ISSUER)


def test_empty_or_absent_registry(tmp_path):
    assert len(ClientRegistry.load(None, issuer=ISSUER)) == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(ClientRegistry.load(str(empty), issuer=ISSUER)) == 0


def test_unregistered_client_on_the_issuer_origin_is_implicitly_trusted(registry):
    client = registry.lookup("my-spa", "https://idp.example.com/app/cb")
    assert client.implicit and client.trusted and client.redirect_uri_ok("https://idp.example.com/app/cb")
    assert registry.lookup("my-spa", "https://idp.example.com:8443/cb") is None
    assert registry.lookup("my-spa", "https://evil.example/cb") is None
    assert registry.lookup("my-spa", "https://idp.example.com/cb#x") is None
    assert registry.lookup("", "https://idp.example.com/cb") is None


def test_registered_client_lookup_and_oversized_ids(registry):
    assert registry.lookup("playground", "https://evil.example/").id == "playground"
    assert registry.get("x" * 256) is None
    assert registry.lookup("x" * 256, "https://idp.example.com/cb") is None
    assert registry.get(None) is None


def test_dynamic_clients_can_be_added_once(registry):
    client = Client(id="dyn.1", redirect_uris=("https://d.example/cb",), secret="x", dynamic=True)
    registry.add(client)
    assert registry.get("dyn.1") is client
    with pytest.raises(ValueError):
        registry.add(client)


def test_repr_never_shows_the_secret(registry):
    assert "s3cr3t" not in repr(registry.get("playground"))
