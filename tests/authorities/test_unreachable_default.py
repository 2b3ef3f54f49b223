"""An SSO-only site whose `default` authority cannot be reached: the sign-in page is a
clear error page, never the password form, and `_/logon` takes no password. The
identifier service in-process (pytest-tornado), the authority on a loopback port nobody
listens on."""

from __future__ import annotations

import json

import pytest

from services.identifier.app import make_app
from tests.support.group import free_port
from tests.support.op import ISSUER, REGISTRY, make_core, make_state


@pytest.fixture
def app(tmp_path, redis_url, io_loop):
    dead = f"https://127.0.0.1:{free_port()}"
    registry = REGISTRY + f"""
authorities:
  - id: sso
    name: Company login
    authority_type: oidc
    iss: {dead}
    client_id: konnect
    response_type: code
    default: yes
"""
    core = make_core("identifier", make_state(tmp_path, registry=registry), redis_url)
    yield make_app(core.settings, core)
    io_loop.run_sync(core.close)


@pytest.mark.gen_test
async def test_the_sign_in_page_is_an_error_page_not_the_password_form(http_client, base_url):
    resp = await http_client.fetch(base_url + "/signin/v1/identifier?flow=oidc&client_id=x",
                                   raise_error=False, follow_redirects=False)
    body = resp.body.decode()
    assert resp.code == 502 and "Company login cannot be reached" in body
    assert 'type="password"' not in body and "Traceback" not in body


@pytest.mark.gen_test
async def test_no_password_sign_in_beside_a_default_authority(http_client, base_url):
    resp = await http_client.fetch(
        base_url + "/signin/v1/identifier/_/logon", method="POST", raise_error=False,
        headers={"Kopano-Konnect-XSRF": "1", "Origin": ISSUER, "Content-Type": "application/json"},
        body=json.dumps({"state": "s", "params": ["alice", "wonderland", "1"]}))
    assert resp.code == 403 and json.loads(resp.body)["error"] == "access_denied"
