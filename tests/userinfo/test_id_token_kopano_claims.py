"""`kopano/gc/id` in an ID token that comes without an access token, as Konnect
(oidc/provider/tokens.go adds the backend's claims, identifier/backends/kc.go `UserClaims`,
only when no access token is issued), with `email_verified` beside `email`. The kc backend
with a global session against the Kopano SOAP stand-in; the authorization endpoint over
HTTP with a sealed logon cookie."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from services.authorize.app import make_app as authorize_app
from shared.deps import Core
from shared.session import LOGON_COOKIE, Logon, logon_ttl
from tests.support.kopano_standin import KopanoStandIn, KopanoUser
from tests.support.op import make_state, settings_for

TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("id-token-claims"))


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


@pytest.fixture
def kc():
    with KopanoStandIn([KopanoUser("alice", "pw", 3, "Alice Example", "alice@example.test",
                                   exid=b"2"), KopanoUser("konnect", "svc", 1)]) as server:
        yield server


@pytest.fixture
def kc_core(state, redis_url, kc, io_loop):
    core = Core.with_users(settings_for("authorize", state, redis_url, [
        "--identity-manager", "kc", "--kopano-server-default-uri", kc.url,
        "--kopano-server-username", "konnect", "--kopano-server-password", "svc"]))
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(kc_core):
    return authorize_app(kc_core.settings, kc_core)


async def authorize_as_alice(http_client, base_url, core, response_type, scope):
    alice = await core.users.authenticate("alice", "pw")
    cookie = Logon(identity=alice, auth_time=int(time.time()) - 5,
                   sid="sid-1").seal(core.sealer, logon_ttl(core.settings))
    params = dict(TRUSTED, response_type=response_type, scope=scope, nonce="n", state="s")
    resp = await http_client.fetch(
        f"{base_url}/signin/v1/identifier/_/authorize?{urlencode(params)}",
        headers={"Cookie": f"{LOGON_COOKIE}={cookie}"}, follow_redirects=False,
        raise_error=False)
    assert resp.code == 302, resp.body
    answer = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).fragment).items()}
    return alice, answer


@pytest.mark.gen_test
async def test_kopano_gc_id_is_in_an_id_token_without_an_access_token(http_client, base_url,
                                                                       kc_core):
    scope = "openid profile email kopano/gc"
    alice, answer = await authorize_as_alice(http_client, base_url, kc_core, "id_token", scope)
    id_token = claims_of(answer["id_token"])
    assert id_token["kopano/gc/id"] == alice.raw_sub == "Mg"
    assert id_token["email_verified"] is True and id_token["name"] == "Alice Example"
    _, with_access = await authorize_as_alice(http_client, base_url, kc_core,
                                              "id_token token", scope)
    assert "kopano/gc/id" not in claims_of(with_access["id_token"])
    assert "name" not in claims_of(with_access["id_token"])
    _, without_scope = await authorize_as_alice(http_client, base_url, kc_core, "id_token",
                                                "openid profile")
    assert "kopano/gc/id" not in claims_of(without_scope["id_token"])
