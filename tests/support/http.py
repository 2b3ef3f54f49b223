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
