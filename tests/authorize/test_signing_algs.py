"""The alg a client registered signs its tokens everywhere: the front channel's ID and
access tokens of the implicit and hybrid flows as the token endpoint's, with at_hash and
c_hash of the alg's hash size (OIDC Core §3.3.2.11), and its signed userinfo."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared import jose
from tests.support.browser import authorize_url, query_of, signed_in, userinfo
from tests.support.http import token
from tests.support.op import REGISTRY

ALGS = ("RS384", "RS512", "PS384", "PS512", "PS256", "RS256")
CLIENTS = "".join(f"""
  - id: rp-{alg.lower()}
    secret: secret-of-rp-{alg.lower()}-0123456789
    trusted: yes
    id_token_signed_response_alg: {alg}
    userinfo_signed_response_alg: {alg}
    redirect_uris: [https://{alg.lower()}.example.test/cb]
""" for alg in ALGS)

pytestmark = pytest.mark.op(registry=REGISTRY + CLIENTS)


def client(alg: str) -> dict:
    return {"client_id": f"rp-{alg.lower()}", "redirect_uri": f"https://{alg.lower()}.example.test/cb"}


def half_hash_bytes(value: str) -> int:
    return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("response_type", ["code id_token token", "id_token token", "code id_token"])
async def test_front_channel_tokens_are_signed_with_the_registered_alg(http_client, base_url, core,
                                                                       alg, response_type):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type=response_type, prompt="none", **client(alg)))
    front = query_of(resp.headers["Location"])
    header, claims = core.keyring.verify(front["id_token"])
    assert header["alg"] == alg and header["kid"] == core.keyring.signer.kid
    size = int(alg[2:]) // 8 // 2       # the left half of SHA-256/384/512
    if "token" in response_type.split():
        assert claims["at_hash"] == jose.left_hash(front["access_token"], alg)
        assert half_hash_bytes(claims["at_hash"]) == size
        # Konnect signs a client's access tokens with its ID-token alg, front channel too
        assert jose.unverified_header(front["access_token"])["alg"] == alg
    if "code" in response_type.split():
        assert claims["c_hash"] == jose.left_hash(front["code"], alg)
        assert half_hash_bytes(claims["c_hash"]) == size
        # the token endpoint's ID token for the same code: the same alg
        resp, body = await token(http_client, base_url, {
            "grant_type": "authorization_code", "code": front["code"],
            "redirect_uri": client(alg)["redirect_uri"]},
            auth=(client(alg)["client_id"], f"secret-of-rp-{alg.lower()}-0123456789"))
        assert resp.code == 200, body
        back, back_claims = core.keyring.verify(body["id_token"])
        assert back["alg"] == alg and back_claims["at_hash"] == jose.left_hash(body["access_token"], alg)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("alg", ["RS384", "PS512"])
async def test_userinfo_is_signed_with_the_registered_alg_never_plain_json_instead(
        http_client, base_url, core, alg):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="id_token token", prompt="none", **client(alg)))
    access = query_of(resp.headers["Location"])["access_token"]
    answer = await userinfo(b, access)
    assert answer.code == 200 and answer.headers["Content-Type"] == "application/jwt"
    header, claims = core.keyring.verify(answer.body.decode())
    assert header["alg"] == alg and claims["aud"] == client(alg)["client_id"]


def rp_verifies(jwk: dict, alg: str, token: str) -> bool:
    """A relying party's check, written apart from the OP's code: the JWK's n and e, the
    header's alg (RFC 7518 §3.3, §3.5), `cryptography` directly."""
    def number(member: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(jwk[member] + "=="), "big")
    public = rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}[alg[2:]]()
    pad = (padding.PKCS1v15() if alg.startswith("RS") else
           padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size))
    head, payload, signature = token.split(".")
    try:
        public.verify(base64.urlsafe_b64decode(signature + "=="), f"{head}.{payload}".encode(),
                      pad, digest)
        return True
    except InvalidSignature:
        return False


@pytest.mark.gen_test(timeout=30)
async def test_the_jwks_lets_a_relying_party_verify_every_alg_it_may_register(http_client,
                                                                              base_url, core):
    """What discovery lists is exactly what we sign, and the JWKS verifies each: a relying
    party that takes the key by kid and the alg from the header accepts all of them, and
    the key names no alg that would make it refuse the others (RFC 7517 §4.4)."""
    doc = json.loads((await http_client.fetch(base_url + "/.well-known/openid-configuration")).body)
    jwks = json.loads((await http_client.fetch(base_url + "/konnect/v1/jwks.json")).body)
    published = {key["kid"]: key for key in jwks["keys"]}
    assert doc["id_token_signing_alg_values_supported"] == doc["userinfo_signing_alg_values_supported"]
    assert set(doc["id_token_signing_alg_values_supported"]) == set(core.keyring.can_sign) == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    for alg in doc["id_token_signing_alg_values_supported"]:
        signed = core.keyring.sign({"sub": "x"}, alg=alg)
        key = published[jose.unverified_header(signed)["kid"]]
        assert "alg" not in key and rp_verifies(key, alg, signed)
        tampered = signed[:-4] + ("AAAA" if not signed.endswith("AAAA") else "BBBB")
        assert not rp_verifies(key, alg, tampered)
