"""Fourth review (4a): request objects at the authorization endpoint, the client registry
YAML and scopes.yaml. Request objects over HTTP with the four services on one origin, real
Redis and the users-file backend (the fixtures of test_flow and test_authorize_more); the
registry and scopes.yaml through `Core.from_settings`, the real start-up:

1. an unsigned request object (`alg: none`) is held to the header rules of a signed one:
   `crit` naming an extension this OP does not understand is refused (RFC 7515 §4.1.11,
   RFC 7519 §6; security.md CR-06), and so are `jku`/`jwk`/`x5u`/`x5c`;
2. every key of a client's registered `jwks` must be a usable public signing key: an
   unusable one was skipped silently at request time, a private one put a secret in the
   registry (RFC 7517 §4-5, RFC 7518 §6); an empty set is refused;
3. `origins` must be `scheme://host[:port]` (RFC 6454 §6.1): userinfo, a bad port, a
   fragment, an empty query or a script scheme loaded silently;
4. scopes.yaml keys must be scope names (RFC 6749 §3.3): YAML `~:` and `yes:` became
   supported, grantable scopes named "None" and "True".
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.config import StartupError
from shared.deps import Core
from shared.keys import public_jwk
from tests.support.op import REGISTRY, make_state, settings_for
from tests.test_authorize_more import ro_url, state  # noqa: F401
from tests.test_flow import Browser, app, core, query_of, sign_in  # noqa: F401


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


# --- 1. unsigned request objects: the header rules of RFC 7515 ------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    {"alg": "none", "crit": ["x-custom"], "x-custom": True},
    {"alg": "none", "jku": "https://evil.example/jwks.json"},
    {"alg": "none", "x5u": "https://evil.example/cert.pem"},
])
async def test_unsigned_request_object_with_crit_or_key_headers_is_refused(
        http_client, base_url, header):
    """RFC 7515 §4.1.11: a JWS whose `crit` lists an extension the recipient does not
    understand is invalid; an Unsecured JWT is a JWS with alg none (RFC 7519 §6). The
    signed path already refused it (jose.check_header); the unsigned one did not."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(f"{_b64(header)}.{_b64({'state': 'crit-state'})}."))
    assert resp.code == 302, resp.body
    result = query_of(resp.headers["Location"])
    assert result.get("error") == "invalid_request_object", result
    assert result["state"] == "q-state"  # the query's, not the object's


@pytest.mark.gen_test
async def test_plain_unsigned_request_object_still_works(http_client, base_url):
    """OIDC Registration §2: without a registered alg, `none` may be used (konnect.md §7.5)."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(f"{_b64({'alg': 'none'})}.{_b64({'state': 'fine'})}."))
    assert resp.code == 302 and query_of(resp.headers["Location"])["state"] == "fine"


# --- 2.-3. the registry: start-up errors, never a silent skip --------------------------

RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PRIVATE_2048 = {**public_jwk(RSA_2048), "d": "AQAB"}


def _startup_problems(tmp_path, redis_url, extra_registry: str = "",
                      extra_args: tuple = ()) -> list[str]:
    state = make_state(tmp_path / "state", registry=REGISTRY + extra_registry)
    try:
        core = Core.from_settings(settings_for("authorize", state, redis_url, extra_args))
    except StartupError as err:
        return err.problems
    del core
    return []


def _client(**members) -> str:
    entry = {"id": "extra-rp", "redirect_uris": ["https://extra.example.test/cb"], **members}
    return "\n  - " + json.dumps(entry) + "\n"


@pytest.mark.parametrize("keys,why", [
    ([{"kty": "oct", "k": "c2VjcmV0LXNlY3JldA"}], "a symmetric key: a shared secret"),
    ([_PRIVATE_2048], "a private RSA key"),
    ([{**public_jwk(RSA_2048), "use": "enc"}], "an encryption key"),
    ([public_jwk(RSA_1024)], "an RSA key under 2048 bits"),
    ([{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}], "not a point on the curve"),
    ([{**public_jwk(RSA_2048), "alg": "ES256"}], "alg that does not fit the key"),
    ([], "no keys at all"),
])
def test_registry_jwks_with_an_unusable_key_is_a_startup_error(tmp_path, redis_url, keys, why):
    """RFC 7517 §4-5 and RFC 7518 §6: a client's registered keys must be public signing keys
    this OP can use. Before, such a key loaded and was skipped in `client_key_lookup` at
    request time (request objects, private_key_jwt): no start-up error, and a private key
    or shared secret sat in the registry unnoticed."""
    problems = _startup_problems(tmp_path, redis_url, _client(jwks={"keys": keys}))
    assert problems and any("extra-rp" in p and "jwks" in p for p in problems), (why, problems)


def test_registry_jwks_with_good_keys_still_loads(tmp_path, redis_url):
    good = {**public_jwk(RSA_2048), "kid": "k1", "alg": "RS256", "use": "sig"}
    assert _startup_problems(tmp_path, redis_url, _client(jwks={"keys": [good]})) == []


@pytest.mark.parametrize("origin", [
    "https://user@extra.example.test",
    "https://extra.example.test:99999",
    "https://extra.example.test#x",
    "https://extra.example.test?",
    "javascript://extra.example.test",
    "https://extra example.test",
])
def test_registry_malformed_origin_is_a_startup_error(tmp_path, redis_url, origin):
    """RFC 6454 §6.1: an origin serialises as scheme "://" host [ ":" port ]. These loaded
    silently before (only path and a non-empty query were checked)."""
    problems = _startup_problems(tmp_path, redis_url, _client(origins=[origin]))
    assert any("extra-rp" in p and "origins[0]" in p for p in problems), problems


def test_registry_good_origins_still_load(tmp_path, redis_url):
    origins = ["https://extra.example.test", "https://extra.example.test:8443", "http://[::1]:3000"]
    assert _startup_problems(tmp_path, redis_url, _client(origins=origins)) == []


# --- 4. scopes.yaml: keys are scope names --------------------------------------------

@pytest.mark.parametrize("text,why", [
    ("scopes:\n  ~:\n    description: x\n", "a null key became the scope 'None'"),
    ("scopes:\n  yes: {}\n", "a boolean key became the scope 'True'"),
    ("scopes:\n  'kopano kwm': {}\n", "a space: no request can name it"),
    ("scopes:\n  kopano/kwm:\n    description: [1, 2]\n", "a description that is no text"),
    ("mapping:\n  kopano/kwm: ~\n", "an alias 'None'"),
])
def test_scopes_yaml_key_that_is_no_scope_name_is_a_startup_error(tmp_path, redis_url, text, why):
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). Every key under
    `scopes:` becomes a supported, grantable scope (konnect.md §6.2), so a YAML null or
    boolean key silently advertised and granted "None" or "True"."""
    path = tmp_path / "scopes.yaml"
    path.write_text(text)
    problems = _startup_problems(tmp_path, redis_url,
                                 extra_args=("--identifier-scopes-conf", str(path)))
    assert any(str(path) in p for p in problems), (why, problems)


def test_konnect_style_scopes_yaml_still_loads(tmp_path, redis_url):
    path = tmp_path / "scopes.yaml"
    path.write_text("mapping:\n  kopano/kwm: chat\nscopes:\n  chat:\n    description: Use chat\n"
                    "  kopano/kwm:\n    priority: 5\n  konnect/guestok:\n")
    assert _startup_problems(tmp_path, redis_url,
                             extra_args=("--identifier-scopes-conf", str(path))) == []


# --- 5.-7. the registry: duplicate kids, a misspelt top-level key, weak secrets --------

def test_registry_jwks_with_two_keys_of_one_kid_is_a_startup_error(tmp_path, redis_url):
    """RFC 7517 §4.5 (distinct kids in a set), RFC 7515 §4.1.4 (the kid picks the key):
    `client_key_lookup` kept only the last of two keys sharing a kid, so the first one
    (say the key a client still signs with during a rotation) silently verified nothing."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [{**public_jwk(RSA_2048), "kid": "k1"}, {**public_jwk(other), "kid": "k1"}]
    problems = _startup_problems(tmp_path, redis_url, _client(jwks={"keys": keys}))
    assert any("extra-rp" in p and "kid" in p for p in problems), problems
    keyless = [public_jwk(RSA_2048), public_jwk(other)]
    problems = _startup_problems(tmp_path / "b", redis_url, _client(jwks={"keys": keyless}))
    assert any("extra-rp" in p and "kid" in p for p in problems), problems


def test_registry_with_a_misspelt_top_level_key_is_a_startup_error(tmp_path, redis_url):
    """konnect.md §5.1: the clients are under `clients:`. A file with `client:` loaded as an
    empty registry: every registered client gone without a start-up error."""
    state = make_state(tmp_path / "state", registry=REGISTRY.replace("clients:", "client:", 1))
    with pytest.raises(StartupError) as info:
        Core.from_settings(settings_for("authorize", state, redis_url))
    assert any("client" in p and "top-level" in p for p in info.value.problems), info.value.problems


def test_registry_warns_about_a_weak_secret(tmp_path, redis_url, caplog):
    """security.md IN-07: a 10-character secret is refused or warned about (RFC 6819
    §5.1.4.2.2); warned, so Konnect files keep loading, and the secret is never echoed."""
    caplog.set_level("WARNING", logger="konnect.clients")
    assert _startup_problems(tmp_path, redis_url, _client(secret="0123456789")) == []
    warnings = [r.getMessage() for r in caplog.records if "extra-rp" in r.getMessage()]
    assert warnings and "10 characters" in warnings[0] and "0123456789" not in warnings[0]
