"""Form posts to the token service's endpoints with client credentials (RFC 6749 §2.3.1)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

from tests.support.op import SECRET


def basic(client_id: str, secret: str) -> str:
    """HTTP Basic credentials, form-urlencoded first as RFC 6749 §2.3.1 says."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


TRUSTED_AUTH = basic("trusted-rp", "other-secret")


async def post(http_client, base_url, path, form, headers=None):
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    body = form if isinstance(form, str) else urlencode(form)
    resp = await http_client.fetch(base_url + path, method="POST", body=body, headers=hdrs,
                                   raise_error=False)
    return resp, (json.loads(resp.body) if resp.body and resp.headers.get("Content-Type", "").startswith("application/json") else None)


async def token(http_client, base_url, form, auth=("web-rp", SECRET)):
    headers = {"Authorization": basic(*auth)} if auth else {}
    return await post(http_client, base_url, "/konnect/v1/token", form, headers)


def code_form(code, **extra):
    return {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://rp.example.test/cb", **extra}


async def introspect(http_client, base_url, tok, auth=("web-rp", SECRET)):
    resp, body = await post(http_client, base_url, "/konnect/v1/introspect", {"token": tok},
                            {"Authorization": basic(*auth)})
    assert resp.code == 200
    return body


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def assertion(key, alg, kid, client_id, **claims):
    """A private_key_jwt client assertion (RFC 7523) for the token endpoint."""
    import time

    from shared import jose
    from shared.keys import SigningKey
    from tests.support.op import ISSUER
    signer = SigningKey(kid=kid, public=key.public_key(), algs=frozenset({alg}), alg=alg,
                        private=key)
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": ISSUER + "/konnect/v1/token",
            "jti": f"jti-{time.monotonic_ns()}", "exp": now + 60, **claims}
    return jose.sign({k: v for k, v in body.items() if v is not None}, signer)


async def redeem(http_client, base_url, core, client_id="web-rp", secret=SECRET,
                 redirect_uri="https://rp.example.test/cb", **extra):
    """A code minted for the client, redeemed with Basic credentials."""
    from tests.support.op import mint_code
    code = await mint_code(core, client_id=client_id, redirect_uri=redirect_uri)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return await post(http_client, base_url, "/konnect/v1/token", dict(form, **extra),
                      {"Authorization": basic(client_id, secret)})


async def redeem_with_assertion(http_client, base_url, core, client_id, redirect_uri, value):
    """A code minted for the client, redeemed with a client assertion."""
    from tests.support.op import mint_code
    code = await mint_code(core, client_id=client_id, redirect_uri=redirect_uri)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": value}
    return await post(http_client, base_url, "/konnect/v1/token", form)


async def introspect_as(http_client, base_url, form, headers=None):
    """An introspection request as it comes (no assertion on the answer)."""
    return await post(http_client, base_url, "/konnect/v1/introspect", form, headers)
