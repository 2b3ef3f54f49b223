"""The `authorities:` list of the registry file: Konnect's keys, defaults and our checks
(shared/authorities/registry.py)."""

import pytest
import yaml

from shared.clients import ClientRegistry, RegistryError

ISSUER = "https://op.example"

# Konnect's commented example (identifier-registration.yaml.in), both entries enabled
# except that only one of them may be the default.
KONNECT_EXAMPLE = """
authorities:
  - id: my-univention-oidc
    name: Univention
    client_id: kopano-konnect
    authority_type: oidc
    iss: https://my-univention
    jwks:
      keys:
        - kty: EC
          use: sig
          kid: example-key-1
          crv: P-256
          x: RTZpWoRbjwX1YavmSHVBj6Cy3Yzdkkp6QLvTGB22D0c
          y: jeavjwcX0xlDSchFcBMzXSU7wGs2VPpNxWCwmxFvmF0
    default: yes
    authorization_endpoint: https://my-univention/signin/v1/identifier/_/authorize
    response_type: id_token
    scopes:
      - openid
      - profile
    identity_claim_name: preferred_username
    identity_aliases:
      external-user-a: local-user-a
      external-user-b: local-user-b
    identity_alias_required: true

  - id: my-univention-saml2
    name: Univention
    entity_id: kopano-konnect
    authority_type: saml2
    trusted: yes
    discover: yes
    metadata_endpoint: https://my-univention/simplesamlphp/saml2/idp/metadata.php
    identity_claim_name: uid
    identity_alias_required: false
    end_session_enabled: true
"""


def load(text):
    return ClientRegistry.from_document(yaml.safe_load(text), issuer=ISSUER).authorities


def problems(text):
    with pytest.raises(RegistryError) as err:
        load(text)
    return "; ".join(err.value.problems)


def test_konnects_example_entries_are_read_with_their_values():
    found = load(KONNECT_EXAMPLE)
    oidc, saml = found.get("my-univention-oidc"), found.get("my-univention-saml2")
    assert found.default is oidc
    assert (oidc.client_id, oidc.response_type, oidc.scopes) == ("kopano-konnect", "id_token",
                                                                 ("openid", "profile"))
    assert oidc.authorization_endpoint.endswith("/_/authorize") and oidc.jwks["keys"][0]["kid"]
    assert oidc.local_username("external-user-a") == "local-user-a"
    assert oidc.local_username("someone-else") is None  # identity_alias_required
    assert (saml.entity_id, saml.trusted, saml.end_session_enabled) == ("kopano-konnect", True, True)
    assert saml.identity_claim_name == "uid"


def test_konnects_defaults_apply_to_a_minimal_entry():
    found = load("authorities:\n  - name: Upstream\n    authority_type: oidc\n"
                 "    client_id: c\n    iss: https://up.example\n"
                 "  - id: s\n    authority_type: saml2\n"
                 "    metadata_endpoint: https://idp.example/metadata.php\n")
    oidc, saml = found.get("Upstream"), found.get("s")  # no id: the name is the id (Konnect)
    assert (oidc.response_type, oidc.code_challenge_method, oidc.scopes,
            oidc.identity_claim_name, oidc.discover) == ("id_token", "S256", ("openid", "profile"),
                                                         "preferred_username", True)
    assert oidc.local_username("alice") == "alice"  # no alias, none required: the value
    assert saml.entity_id == ISSUER + "/signin/v1/identifier/saml2/metadata"
    assert found.default is None


@pytest.mark.parametrize("entry, words", [
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    identity_alias_requried: yes",
     "unknown key(s) identity_alias_requried"),
    ("authority_type: ldap", "authority_type must be oidc or saml2"),
    ("authority_type: oidc\n    iss: https://u", "client_id is required"),
    ("authority_type: oidc\n    client_id: c", "iss is required"),
    ("authority_type: oidc\n    client_id: c\n    iss: http://up.example", "iss must be an https"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    code_challenge_method: plain",
     "code_challenge_method must be S256"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    response_type: token",
     "response_type must be id_token or code"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    scopes: [profile]",
     "scopes must contain openid"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    discover: no",
     "authorization_endpoint is required without discovery"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    discover: no\n"
     "    authorization_endpoint: https://u/a\n    jwks: {keys: [{kty: oct, k: c2VjcmV0}]}",
     "jwks.keys[0]"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    default: maybe",
     "default must be yes or no"),
    ("authority_type: oidc\n    client_id: c\n    iss: https://u\n    identity_aliases: [a, b]",
     "identity_aliases must map names to names"),
    ("authority_type: saml2", "metadata_endpoint is required for saml2"),
    ("authority_type: saml2\n    metadata_endpoint: https://i/m\n    discover: no",
     "saml2 must use discover"),
])
def test_a_broken_entry_stops_the_start_with_its_reason(entry, words):
    assert words in problems(f"authorities:\n  - id: a\n    {entry}\n")


def test_two_defaults_or_two_ids_are_refused():
    entry = "  - id: a\n    authority_type: oidc\n    client_id: c\n    iss: https://u\n    default: yes\n"
    text = problems("authorities:\n" + entry + entry)
    assert "duplicate id" in text and "only one may be default" in text


def test_a_loopback_http_upstream_needs_insecure():
    entry = ("authorities:\n  - id: a\n    authority_type: oidc\n    client_id: c\n"
             "    iss: http://127.0.0.1:9999\n")
    assert "iss must be an https" in problems(entry)
    assert load(entry + "    insecure: yes\n").get("a").insecure


def test_identity_claim_values_that_are_no_usernames_are_refused():
    found = load("authorities:\n  - id: a\n    authority_type: oidc\n    client_id: c\n"
                 "    iss: https://u\n    identity_aliases: {x: ''}\n")
    a = found.get("a")
    assert [a.local_username(v) for v in (None, 7, "", "x" * 257, ["a"])] == [None] * 5
    assert a.local_username("x") == "x"  # an empty alias is no alias (Konnect)


def test_saml2_metadata_may_be_a_file_the_operator_keeps(tmp_path):
    kept = tmp_path / "idp-metadata.xml"
    kept.write_text("<md:EntityDescriptor/>")
    entry = "authorities:\n  - id: s\n    authority_type: saml2\n    metadata_endpoint: "
    assert load(entry + f"file://{kept}\n").get("s").metadata_endpoint == f"file://{kept}"
    assert "must name an existing file" in problems(entry + f"file://{tmp_path}/missing.xml\n")
    assert "must name an existing file" in problems(entry + "file://relative.xml\n")


SAML2 = "authorities:\n  - id: s\n    authority_type: saml2\n    metadata_endpoint: https://i/m\n"


def test_saml2_metadata_signing_certificates_are_read_at_start(tmp_path):
    """Our key (not Konnect's): a PEM file's absolute path or PEM text, one or a list; a
    file may hold several certificates (a rollover); each is kept once, as DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.support.simplesamlphp import self_signed

    _, old = self_signed(tmp_path, "old")
    _, new = self_signed(tmp_path, "new")
    both = tmp_path / "both.pem"
    both.write_text(old.read_text() + new.read_text())
    der = [x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
           for p in (old, new)]
    key = "    metadata_signing_certificates: "
    assert load(SAML2).get("s").metadata_signing_certificates == ()
    assert load(SAML2 + key + f"{old}\n").get("s").metadata_signing_certificates == (der[0],)
    assert load(SAML2 + key + f"[{old}, {both}]\n").get("s").metadata_signing_certificates \
        == tuple(der)
    pem = yaml.safe_dump({"metadata_signing_certificates": [new.read_text()]})
    text = SAML2 + "".join("    " + line + "\n" for line in pem.splitlines())
    assert load(text).get("s").metadata_signing_certificates == (der[1],)


@pytest.mark.parametrize("value, words", [
    ("[]", "must be a PEM file's absolute path or PEM text"),
    ("[7]", "must be a PEM file's absolute path or PEM text"),
    ("relative.pem", "is neither an absolute path nor PEM text"),
    ("/nonexistent/idp.pem", "No such file"),
    ("{tmp}/not-a-cert.pem", "holds no PEM certificate"),
    ("'-----BEGIN CERTIFICATE-----\n      AAAA\n      -----END CERTIFICATE-----'",
     "PEM text holds no PEM certificate"),
])
def test_unusable_metadata_signing_certificates_stop_the_start(tmp_path, value, words):
    (tmp_path / "not-a-cert.pem").write_text("hello")
    entry = SAML2 + "    metadata_signing_certificates: " + value.format(tmp=tmp_path) + "\n"
    assert words in problems(entry)


def test_metadata_signing_certificates_are_for_saml2_only(tmp_path):
    entry = ("authorities:\n  - id: a\n    authority_type: oidc\n    client_id: c\n"
             "    iss: https://u\n    metadata_signing_certificates: /etc/hostname\n")
    assert "metadata_signing_certificates is for saml2" in problems(entry)
