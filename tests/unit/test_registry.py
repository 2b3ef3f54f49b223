"""The client registry YAML (identifier-registration.yaml): loading, validation at start-up,
redirect URI matching, implicit trust (shared/clients.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.clients import Client, ClientRegistry, RegistryError
from shared.config import StartupError
from shared.deps import Core
from shared.keys import public_jwk
from tests.support.op import ISSUER, REGISTRY, make_state, settings_for, startup_problems

EXAMPLE_ISSUER = "https://idp.example.com"


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
    return ClientRegistry.load(str(path), issuer=EXAMPLE_ISSUER)


@pytest.fixture
def registry(tmp_path):
    return load(tmp_path, EXAMPLE)


RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)


RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


_PRIVATE_2048 = {**public_jwk(RSA_2048), "d": "AQAB"}


def _skipped(tmp_path, redis_url, extra_registry: str, client_id: str = "extra-rp") -> list[str]:
    """The problems for which the entry of `client_id` was skipped at start-up (the OP
    starts without it, as Konnect's does)."""
    state = make_state(tmp_path / "state", registry=REGISTRY + extra_registry)
    core = Core.from_settings(settings_for("authorize", state, redis_url))
    assert core.registry.get(client_id) is None and core.registry.get("web-rp") is not None
    return [p for label, found in core.registry.skipped.items() if f'"{client_id}"' in label
            for p in found]


def _client(**members) -> str:
    entry = {"id": "extra-rp", "redirect_uris": ["https://extra.example.test/cb"], **members}
    return "\n  - " + json.dumps(entry) + "\n"


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


def test_every_bad_entry_is_skipped_with_every_problem_named(tmp_path, caplog):
    """Konnect's identity/clients/registry.go skips an entry it cannot use, with a warning:
    so do we, naming each problem, and the good entries load."""
    caplog.set_level("WARNING", logger="konnect.clients")
    registry = load(tmp_path, """
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
              - id: good
                redirect_uris: [https://good.example/cb]
        """)
    assert [c.id for c in registry] == ["good"]
    skipped = registry.skipped
    assert 'redirect_uris[0] must use https (or set insecure: yes)' in skipped['clients[0] (id "a")']
    assert 'application_type must be web or native' in skipped['clients[1] (id "b")']
    assert 'redirect_uris is required (at least one)' in skipped['clients[2] (id "c")']
    assert "id is required" in skipped["clients[3]"]
    assert {'redirect_uris[0] must not contain a fragment', 'redirect_uris[1] must be absolute',
            'trusted must be true or false'} <= set(skipped['clients[4] (id "e")'])
    assert "loopback" in " ".join(skipped['clients[5] (id "f")'])
    assert any("duplicate id" in p for p in skipped['clients[6] (id "a")'])  # both a's go
    assert "HS256" in " ".join(skipped['clients[7] (id "g")'])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert 'CLIENT SKIPPED, clients[4] (id "e")' in text
    assert "unknown field(s) ignored: redirect_uri (did you mean redirect_uris?)" in text


def test_a_skipped_entry_is_never_an_implicitly_trusted_client(tmp_path):
    """An entry on the issuer's origin that was skipped would otherwise come back as an
    implicitly trusted client (consent skipped) the moment it is asked for."""
    registry = load(tmp_path, """
            clients:
              - id: on-the-issuer
                trusted: "no"
                redirect_uris: [https://idp.example.com/app/cb]
        """)
    assert registry.get("on-the-issuer") is None and registry.skipped
    assert registry.lookup("on-the-issuer", "https://idp.example.com/app/cb") is None
    assert registry.lookup("another", "https://idp.example.com/app/cb").trusted


def test_unknown_keys_of_an_entry_are_ignored_with_a_warning_as_konnect_does(tmp_path, caplog):
    caplog.set_level("WARNING", logger="konnect.clients")
    registry = load(tmp_path, """
            clients:
              - id: x
                redirect_uris: [https://x.example/cb]
                trusted_scope: [profile]
                logo: https://x.example/logo.png
        """)
    client = registry.get("x")
    assert client is not None and client.trusted_scopes == () and not registry.skipped
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "trusted_scope (did you mean trusted_scopes?)" in text and "logo" in text


def test_insecure_does_not_waive_redirect_uris(tmp_path):
    registry = load(tmp_path, "clients:\n  - id: x\n    insecure: yes\n")
    assert registry.get("x") is None
    assert "redirect_uris is required (at least one)" in registry.skipped['clients[0] (id "x")']


def test_private_key_jwt_needs_jwks(tmp_path):
    registry = load(tmp_path, """
            clients:
              - id: x
                token_endpoint_auth_method: private_key_jwt
                redirect_uris: [https://x.example/cb]
        """)
    assert registry.skipped['clients[0] (id "x")'] == ["private_key_jwt needs jwks"]


def test_missing_file_and_bad_yaml_are_clear_errors(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        ClientRegistry.load(str(tmp_path / "nope.yaml"), issuer=EXAMPLE_ISSUER)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients:\n  - id: [unclosed\n")
    with pytest.raises(RegistryError, match="not valid YAML at line"):
        ClientRegistry.load(str(bad), issuer=EXAMPLE_ISSUER)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("clients: yes\n")
    with pytest.raises(RegistryError, match="must be a list"):
        ClientRegistry.load(str(wrong), issuer=EXAMPLE_ISSUER)


def test_empty_or_absent_registry(tmp_path):
    assert len(ClientRegistry.load(None, issuer=EXAMPLE_ISSUER)) == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(ClientRegistry.load(str(empty), issuer=EXAMPLE_ISSUER)) == 0


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


@pytest.mark.parametrize("keys,why", [
    ([{"kty": "oct", "k": "c2VjcmV0LXNlY3JldA"}], "a symmetric key: a shared secret"),
    ([_PRIVATE_2048], "a private RSA key"),
    ([{**public_jwk(RSA_2048), "use": "enc"}], "an encryption key"),
    ([public_jwk(RSA_1024)], "an RSA key under 2048 bits"),
    ([{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}], "not a point on the curve"),
    ([{**public_jwk(RSA_2048), "alg": "ES256"}], "alg that does not fit the key"),
    ([], "no keys at all"),
])
def test_registry_jwks_with_an_unusable_key_skips_the_client(tmp_path, redis_url, keys, why):
    """RFC 7517 §4-5 and RFC 7518 §6: a client's registered keys must be public signing keys
    this OP can use. Before, such a key loaded and was skipped in `client_key_lookup` at
    request time (request objects, private_key_jwt) without a word, and a private key or
    shared secret sat in the registry unnoticed: the client is skipped, loudly."""
    problems = _skipped(tmp_path, redis_url, _client(jwks={"keys": keys}))
    assert any("jwks" in p for p in problems), (why, problems)


def test_registry_jwks_with_good_keys_still_loads(tmp_path, redis_url):
    good = {**public_jwk(RSA_2048), "kid": "k1", "alg": "RS256", "use": "sig"}
    assert startup_problems(tmp_path, redis_url, _client(jwks={"keys": [good]})) == []


@pytest.mark.parametrize("origin", [
    "https://user@extra.example.test",
    "https://extra.example.test:99999",
    "https://extra.example.test#x",
    "https://extra.example.test?",
    "javascript://extra.example.test",
    "https://extra example.test",
])
def test_registry_malformed_origin_skips_the_client(tmp_path, redis_url, origin):
    """RFC 6454 §6.1: an origin serialises as scheme "://" host [ ":" port ]. These loaded
    silently before (only path and a non-empty query were checked)."""
    problems = _skipped(tmp_path, redis_url, _client(origins=[origin]))
    assert any("origins[0]" in p for p in problems), problems


def test_registry_good_origins_still_load(tmp_path, redis_url):
    origins = ["https://extra.example.test", "https://extra.example.test:8443", "http://[::1]:3000"]
    assert startup_problems(tmp_path, redis_url, _client(origins=origins)) == []


def test_registry_jwks_with_two_keys_of_one_kid_skips_the_client(tmp_path, redis_url):
    """RFC 7517 §4.5 (distinct kids in a set), RFC 7515 §4.1.4 (the kid picks the key):
    `client_key_lookup` kept only the last of two keys sharing a kid, so the first one
    (say the key a client still signs with during a rotation) silently verified nothing."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [{**public_jwk(RSA_2048), "kid": "k1"}, {**public_jwk(other), "kid": "k1"}]
    problems = _skipped(tmp_path, redis_url, _client(jwks={"keys": keys}))
    assert any("kid" in p for p in problems), problems
    keyless = [public_jwk(RSA_2048), public_jwk(other)]
    problems = _skipped(tmp_path / "b", redis_url, _client(jwks={"keys": keyless}))
    assert any("kid" in p for p in problems), problems


def test_registry_with_a_misspelt_clients_key_is_a_startup_error(tmp_path, redis_url):
    """Konnect's identity/clients/models.go: the clients are under `clients:`. A file with
    `client:` would start the OP without any client (Konnect's does): refused, on purpose."""
    state = make_state(tmp_path / "state", registry=REGISTRY.replace("clients:", "client:", 1))
    with pytest.raises(StartupError) as info:
        Core.from_settings(settings_for("authorize", state, redis_url))
    assert any("client" in p and "top-level" in p for p in info.value.problems), info.value.problems


def test_another_unknown_top_level_key_beside_clients_is_ignored_with_a_warning(tmp_path,
                                                                               redis_url, caplog):
    caplog.set_level("WARNING", logger="konnect.clients")
    state = make_state(tmp_path / "state", registry=REGISTRY + "\nscopes:\n  - openid\n")
    core = Core.from_settings(settings_for("authorize", state, redis_url))
    assert core.registry.get("web-rp") is not None
    assert any("unknown top-level key(s) scopes ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("member", ["id_token_signed_response_alg", "userinfo_signed_response_alg"])
def test_a_registered_alg_no_key_signs_is_a_startup_error(tmp_path, redis_url, member):
    """Its tokens would fail, and another alg instead would break the client: refused at
    start-up, naming the client and what the keys sign. With a key that signs it, it loads."""
    problems = startup_problems(tmp_path, redis_url, _client(**{member: "ES256"}))
    assert any("extra-rp" in p and f"{member} ES256 cannot be signed" in p
               and "RS384" in p for p in problems), problems
    state = make_state(tmp_path / "ec", registry=REGISTRY + _client(**{member: "ES256"}))
    access_key = str(Path(state["key"]).parent / "konnectd-access-token-private-key.pem")
    core = Core.from_settings(settings_for("authorize", state, redis_url,
                                           ["--access-token-signing-key", access_key]))
    assert getattr(core.registry.get("extra-rp"), member) == "ES256"
    for alg in ("RS384", "PS512"):  # the RSA key signs every RSA alg
        assert startup_problems(tmp_path / alg, redis_url, _client(**{member: alg})) == []


def test_registry_warns_about_a_weak_secret(tmp_path, redis_url, caplog):
    """A 10-character secret should be refused or warned about (RFC 6819
    §5.1.4.2.2); warned, so Konnect files keep loading, and the secret is never echoed."""
    caplog.set_level("WARNING", logger="konnect.clients")
    assert startup_problems(tmp_path, redis_url, _client(secret="0123456789")) == []
    warnings = [r.getMessage() for r in caplog.records if "extra-rp" in r.getMessage()]
    assert warnings and "10 characters" in warnings[0] and "0123456789" not in warnings[0]


@pytest.mark.parametrize("path", [
    "/signin/v1/identifier/_/authorize", "/signin/v1/identifier/_/authorize?client_id=x",
    "/signin/v1/identifier", "/signin/v1/", "/signin/v1", "/signin/v1/consent",
    "/signin/v1/identifier/_/endsession", "/konnect/v1/token", "/konnect/v1/userinfo",
    "/konnect/v1/session/check-session.html", "/konnect/v1/jwks.json",
    "/.well-known/openid-configuration",
    # spellings a browser or the proxy may resolve to the same endpoint
    "/app/../signin/v1/identifier/_/authorize", "/app/%2e%2e/signin/v1/identifier/_/authorize",
    "/%73ignin/v1/identifier/_/authorize", "/%2573ignin/v1/identifier/_/authorize",
    "//signin/v1/identifier/_/authorize", "/./konnect/v1/token", "/SIGNIN/V1/identifier",
    "/signin%2Fv1/identifier", "/prefix/signin/v1/identifier/_/authorize",
])
def test_implicit_trust_is_refused_for_the_op_own_paths(path):
    registry = ClientRegistry(issuer=ISSUER)
    assert registry.lookup("anything", ISSUER + path) is None, path


@pytest.mark.parametrize("path", ["/webapp/cb", "/signin/v10/cb", "/konnect/cb", "/", "/app/signin"])
def test_implicit_trust_still_covers_the_issuer_origin_elsewhere(path):
    client = ClientRegistry(issuer=ISSUER).lookup("anything", ISSUER + path)
    assert client is not None and client.implicit and client.trusted, path
