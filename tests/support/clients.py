"""Clients beyond tests.support.op.REGISTRY that some modules register, and their keys:
private_key_jwt clients (the token tests), request-object clients (the authorize tests), a
client whose registered redirect URI spells its origin oddly (session_state, subjects)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.keys import public_jwk
from tests.support.op import REGISTRY

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk_of(key, kid: str, alg: str) -> dict:
    """The public JWK of `key` as a client registers it."""
    return {**public_jwk(key), "kid": kid, "alg": alg, "use": "sig"}


# a private_key_jwt client (its key: CLIENT_KEY, kid c1)
JWT_CLIENT = f"""
  - id: jwt-rp
    token_endpoint_auth_method: private_key_jwt
    redirect_uris: [https://jwt.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(CLIENT_KEY), kid="c1"))}
"""

# private_key_jwt clients with an EC and an RSA key (one pinned to PS256), and a client
# whose registry entry lists only the code grant
EXTRA_CLIENTS = f"""
  - id: jwt-ec
    token_endpoint_auth_method: private_key_jwt
    redirect_uris: [https://jwt.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(EC_KEY), kid="c1"))}
  - id: jwt-ps
    token_endpoint_auth_method: private_key_jwt
    token_endpoint_auth_signing_alg: PS256
    redirect_uris: [https://jwt-ps.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(RSA_KEY), kid="r1"))}
  - id: code-only-rp
    secret: code-only
    grant_types: [authorization_code]
    redirect_uris: [https://code-only.example.test/cb]
"""

# clients that send request objects: one with an RSA key, one pinned to ES256
REQUEST_OBJECT_CLIENTS = f"""
  - id: ro-rp
    name: Request Object RP
    trusted: yes
    secret: ro
    redirect_uris: [https://ro.example.test/cb, https://ro.example.test/other]
    jwks: {json.dumps({"keys": [jwk_of(RSA_KEY, "ro-1", "RS256")]})}
  - id: ro-pinned
    trusted: yes
    secret: rp
    request_object_signing_alg: ES256
    redirect_uris: [https://pinned.example.test/cb]
    jwks: {json.dumps({"keys": [jwk_of(EC_KEY, "ec-1", "ES256")]})}
"""

# a trusted client whose redirect URI has an upper-case host and the default port
ODD_CB = "https://RP.Odd.Example.test:443/cb"
ODD_ORIGIN_REGISTRY = REGISTRY + f"""
  - id: odd-origin-rp
    trusted: yes
    secret: odd-secret
    redirect_uris: ["{ODD_CB}"]
"""
