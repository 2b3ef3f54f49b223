"""Independent relying parties: openid-client, Authlib, idpyoidc."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import yaml

from shared.identity import public_subject
from tests.support.agent import Agent
from tests.support.group import Group, free_port

INTEROP = Path(__file__).resolve().parent / "interop"


SCOPE = "openid profile email offline_access"


USER = "demo"


METHODS = {"client_secret_basic": "interop-basic", "client_secret_post": "interop-post"}


NODE_TIMEOUT = 90.0


@dataclass
class Interop:
    group: Group
    password: str
    secrets: dict            # client_id -> secret
    redirect_uri: str
    meta: dict               # the discovery document
    expected_sub: str        # the demo user's public subject (Konnect's identity/managers/utils.go)

    @property
    def issuer(self) -> str:
        return self.group.issuer

    @property
    def ca(self) -> str:
        return self.group.ca

    def session(self) -> requests.Session:
        return self.group.session()

    def sign_in(self, url: str) -> str:
        """The browser part: sign in, consent, and return the redirect with the code as
        the RP's server receives it: a browser never sends the fragment, here the empty
        one query responses end with (RFC 9700 §4.1.3). Authlib would take any `#` in
        `authorization_response` for an implicit response."""
        agent = Agent(self.issuer, self.ca)
        try:
            outcome = agent.run(url, USER, self.password, stop_outside=True)
        finally:
            agent.session.close()
        assert outcome.url.startswith(self.redirect_uri + "?"), outcome
        assert outcome.url.endswith("#"), outcome
        return outcome.url[:-1]


def _secret(prefix: str) -> str:
    """A client secret with every unreserved punctuation character (`-._~`)."""
    return f"{prefix}-{secrets.token_hex(6)}.{secrets.token_hex(6)}_{secrets.token_hex(6)}~x"


def write_registry(group: Group, redirect_uri: str) -> tuple[dict, dict]:
    """demo.json and identifier-registration.yaml, written before the group starts."""
    demo_origin = group.demo_url   # where deploy/run.py points the demo client
    demo = {"client_id": "konnect-demo", "client_secret": _secret("demo"),
            "username": USER, "password": secrets.token_urlsafe(12)}
    client_secrets = {client_id: _secret(client_id) for client_id in METHODS.values()}
    registry = {"clients": [
        {"id": demo["client_id"], "name": "Konnect demo app", "secret": demo["client_secret"],
         "insecure": True, "redirect_uris": [demo_origin + "/callback"],
         "post_logout_redirect_uris": [demo_origin + "/"]},
        *({"id": client_id, "name": f"Interop RP ({method})",
           "secret": client_secrets[client_id], "token_endpoint_auth_method": method,
           "insecure": True, "redirect_uris": [redirect_uri]}
          for method, client_id in METHODS.items()),
    ]}
    state = group.state
    state.mkdir(parents=True, exist_ok=True)
    for name, text in (("demo.json", json.dumps(demo, indent=2) + "\n"),
                       ("identifier-registration.yaml", yaml.safe_dump(registry, sort_keys=False))):
        fd = os.open(state / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    return demo, client_secrets


@pytest.fixture(scope="module")
def interop(tmp_path_factory):
    group = Group(tmp_path_factory.mktemp("group-interop"), proxy="caddy", token_procs=2)
    redirect_uri = f"http://127.0.0.1:{free_port()}/cb"   # nothing listens: the agent stops there
    demo, client_secrets = write_registry(group, redirect_uri)
    with group:
        with group.session() as s:
            meta = s.get(group.issuer + "/.well-known/openid-configuration", timeout=10).json()
        users = yaml.safe_load((group.state / "users.yaml").read_text())["users"]
        (user,) = [u for u in users if u["username"] == USER]
        yield Interop(group, demo["password"], client_secrets, redirect_uri, meta,
                      public_subject(str(user["uuid"]), "identifier-users"))


@dataclass
class Run:
    """What a library got, normalised for the common checks."""

    client_id: str
    id_header: dict
    id_claims: dict
    userinfo: dict
    refreshed_claims: Optional[dict]
    old_refresh_token: str
    revoked_access_token: str
    revoked_refresh_token: str
    requests: list           # [{"url", "basic": (id, secret) | None, "form_secret": bool}]


def check_run(env: Interop, method: str, run: Run) -> None:
    client_id = METHODS[method]
    assert run.client_id == client_id
    # ID token (OIDC Core §2; Konnect's oidc/provider/tokens.go): aud is the client id as a
    # single string
    claims = run.id_claims
    assert claims["iss"] == env.issuer and claims["aud"] == client_id
    assert claims["sub"] == env.expected_sub
    assert claims["nonce"] and claims["at_hash"] and claims["sid"]
    assert claims["exp"] > claims["iat"]
    assert run.id_header["alg"] in env.meta["id_token_signing_alg_values_supported"]
    with env.session() as s:
        kids = {k["kid"] for k in s.get(env.meta["jwks_uri"], timeout=10).json()["keys"]}
    assert run.id_header["kid"] in kids
    # userinfo: same subject, the profile and email claims of the scopes
    assert run.userinfo["sub"] == claims["sub"]
    assert run.userinfo["preferred_username"] == USER
    assert run.userinfo["email"] == "demo@example.test" and run.userinfo["email_verified"] is True
    # a refresh gives a new ID token for the same user
    assert run.refreshed_claims and run.refreshed_claims["sub"] == claims["sub"]
    assert run.refreshed_claims["aud"] == client_id
    # the client authenticated with its registered method at every authenticated endpoint
    authenticated = [r for r in run.requests
                     if urlsplit(r["url"]).path in ("/konnect/v1/token", "/konnect/v1/revoke",
                                                    "/konnect/v1/introspect")]
    paths = {urlsplit(r["url"]).path for r in authenticated}
    assert {"/konnect/v1/token", "/konnect/v1/revoke"} <= paths, run.requests
    for r in authenticated:
        if method == "client_secret_basic":
            assert r["basic"] is not None and not r["form_secret"], r
            got_id, got_secret = (unquote(v) for v in r["basic"])
            assert (got_id, got_secret) == (client_id, env.secrets[client_id])
        else:
            assert r["basic"] is None and r["form_secret"], r
    # revocation took effect for everybody, not only in the library's view
    with env.session() as s:
        info = s.get(env.meta["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": "Bearer " + run.revoked_access_token})
        assert info.status_code == 401, info.text
        assert 'error="invalid_token"' in info.headers["WWW-Authenticate"]
        auth = _client_auth(env, method)
        for refresh_token in (run.revoked_refresh_token, run.old_refresh_token):
            resp = s.post(env.meta["token_endpoint"], timeout=10, **_with_auth(auth, {
                "grant_type": "refresh_token", "refresh_token": refresh_token}))
            assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text


def _client_auth(env: Interop, method: str) -> tuple[str, str, str]:
    client_id = METHODS[method]
    return method, client_id, env.secrets[client_id]


def _with_auth(auth: tuple[str, str, str], form: dict) -> dict:
    method, client_id, secret = auth
    if method == "client_secret_basic":
        return {"data": form, "auth": (client_id, secret)}
    return {"data": dict(form, client_id=client_id, client_secret=secret)}


def _jwt_part(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _lock_packages(path: Path) -> Optional[dict]:
    try:
        packages = json.loads(path.read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return None
    return {name: (p.get("version"), p.get("integrity"))
            for name, p in packages.items() if name.startswith("node_modules/")}


@pytest.fixture(scope="session")
def node() -> str:
    """node, with tests/interop/node_modules installed exactly as package-lock.json says."""
    node_bin, npm = shutil.which("node"), shutil.which("npm")
    if not node_bin or not npm:
        pytest.fail("the interop tests need Node.js and npm on PATH (Debian: apt-get install "
                    f"nodejs npm); found node={node_bin!r} npm={npm!r}", pytrace=False)
    wanted = _lock_packages(INTEROP / "package-lock.json")
    assert wanted, "tests/interop/package-lock.json is missing or empty"
    if _lock_packages(INTEROP / "node_modules" / ".package-lock.json") != wanted:
        result = subprocess.run([npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund",
                                 "--ignore-scripts"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.fail(f"npm ci --prefix tests/interop failed ({result.returncode}):\n"
                        f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}", pytrace=False)
    return node_bin


def run_node_rp(node: str, script: str, config: dict, ca: str,
                on_authorize: Callable[[str], str], timeout: float = NODE_TIMEOUT) -> dict:
    """Run a node RP script: JSON config in argv, JSON lines out, the callback URL in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "npm_"))}
    env["NODE_EXTRA_CA_CERTS"] = ca   # the group's CA: TLS to the proxy is verified
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([node, str(INTEROP / script), json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                text=True, cwd=INTEROP, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        final: Optional[dict] = None
        try:
            assert proc.stdout is not None and proc.stdin is not None
            for line in proc.stdout:
                message = json.loads(line)
                if message.get("event") == "authorize":
                    proc.stdin.write(json.dumps({"callback": on_authorize(message["url"])}) + "\n")
                    proc.stdin.flush()
                else:
                    final = message
                    break
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            errors.seek(0)
            stderr = errors.read()
    assert final is not None, f"{script} printed no result (rc={proc.returncode}):\n{stderr[-3000:]}"
    assert final["event"] == "result", f"{script} failed: {json.dumps(final, indent=1)}\n{stderr[-3000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    return final


def _recorder(log: list) -> Callable:
    def hook(response: requests.Response, *args, **kwargs) -> None:
        request = response.request
        body = request.body or ""
        if isinstance(body, bytes):
            body = body.decode()
        form = parse_qs(body)
        basic = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            pair = base64.b64decode(header[6:]).decode()
            basic = tuple(pair.split(":", 1))
        log.append({"url": request.url, "basic": basic, "form_secret": "client_secret" in form})
    return hook


def _authlib_validate(env: Interop, client_id: str, id_token: str, nonce: str,
                      access_token: str) -> dict:
    """What Authlib's integrations do (OpenIDMixin.parse_id_token), `aud` pinned."""
    from authlib.oidc.core import CodeIDToken
    from joserfc import jwt
    from joserfc.jwk import KeySet

    with env.session() as s:
        jwks = s.get(env.meta["jwks_uri"], timeout=10).json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks),
                       algorithms=env.meta["id_token_signing_alg_values_supported"])
    claims = CodeIDToken(token.claims, token.header, {
        "iss": {"essential": True, "values": [env.meta["issuer"]]},
        "aud": {"essential": True, "values": [client_id]},
    }, {"nonce": nonce, "client_id": client_id, "access_token": access_token})
    claims.validate(leeway=60)   # exp, iat, nonce, at_hash, azp
    return dict(claims)


def _idpy_config(env: Interop, method: str) -> dict:
    client_id = METHODS[method]
    return {"op": {
        "issuer": env.issuer,
        "client_id": client_id,
        "client_secret": env.secrets[client_id],
        "redirect_uris": [env.redirect_uri],
        "client_type": "oidc",
        "token_endpoint_auth_method": method,
        # without this the refresh and revocation services know no client authentication
        "client_authn_methods": [method],
        "preference": {
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": [method],
            "scopes_supported": SCOPE.split(),
            "id_token_signing_alg_values_supported": ["RS256", "PS256"],
        },
        "add_ons": {"pkce": {"function": "idpyoidc.client.oauth2.add_on.pkce.add_support",
                             "kwargs": {"code_challenge_length": 64,
                                        "code_challenge_method": "S256"}}},
        # a pre-registered (static) client: no registration service
        "services": {
            "discovery": {"class": "idpyoidc.client.oidc.provider_info_discovery.ProviderInfoDiscovery"},
            "authorization": {"class": "idpyoidc.client.oidc.authorization.Authorization"},
            "access_token": {"class": "idpyoidc.client.oidc.access_token.AccessToken"},
            "refresh_access_token": {"class": "idpyoidc.client.oidc.refresh_access_token.RefreshAccessToken"},
            "userinfo": {"class": "idpyoidc.client.oidc.userinfo.UserInfo"},
            "token_revocation": {"class": "idpyoidc.client.oauth2.token_revocation.TokenRevocation"},
        },
    }}


pytestmark = pytest.mark.group


@pytest.mark.parametrize("method", list(METHODS))
def test_openid_client(interop, node, method):
    client_id = METHODS[method]
    result = run_node_rp(node, "openid_client_flow.mjs", {
        "issuer": interop.issuer, "client_id": client_id,
        "client_secret": interop.secrets[client_id], "auth_method": method,
        "redirect_uri": interop.redirect_uri, "scope": SCOPE}, interop.ca, interop.sign_in)
    assert result["issuer"] == interop.issuer and result["supports_pkce"] is True
    assert result["token_response"]["has_refresh_token"]
    assert result["token_response"]["scope"] == SCOPE
    assert result["refreshed"]["rotated"]
    # openid-client's own view after revocation
    assert result["introspection_after_revoke"] == {"active": False}
    assert result["refresh_after_revoke"]["error"] == "invalid_grant"
    sent = [{"url": r["url"], "form_secret": r["form_has_secret"],
             "basic": (r["basic"]["id"], r["basic"]["secret"]) if r["basic"] else None}
            for r in result["sent"]]
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: form-urlencoded before base64; the OP must decode (openid-client encodes)
        basics = [r["basic"] for r in sent if r["basic"]]
        assert basics and all("%2D" in i and "%7E" in s for i, s in basics), basics
    check_run(interop, method, Run(
        client_id=client_id, id_header=result["id_token_header"], id_claims=result["claims"],
        userinfo=result["userinfo"], refreshed_claims=result["refreshed"]["claims"],
        old_refresh_token=result["refreshed"]["old_refresh_token"],
        revoked_access_token=result["refreshed"]["access_token"],
        revoked_refresh_token=result["refreshed"]["refresh_token"], requests=sent))


@pytest.mark.parametrize("method", list(METHODS))
def test_authlib(interop, method):
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oidc.core import UserInfo

    client_id = METHODS[method]
    log: list = []
    with OAuth2Session(client_id, interop.secrets[client_id], scope=SCOPE,
                       redirect_uri=interop.redirect_uri, code_challenge_method="S256",
                       token_endpoint_auth_method=method,
                       revocation_endpoint_auth_method=method) as sess:
        sess.trust_env = False
        sess.verify = interop.ca
        sess.hooks["response"].append(_recorder(log))
        meta = sess.get(interop.issuer + "/.well-known/openid-configuration", timeout=10,
                        withhold_token=True).json()
        assert meta["issuer"] == interop.issuer   # Authlib does not check this by itself
        verifier, nonce = generate_token(48), generate_token(20)
        url, state = sess.create_authorization_url(meta["authorization_endpoint"],
                                                   code_verifier=verifier, nonce=nonce)
        callback = interop.sign_in(url)
        response = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        assert response["iss"] == interop.issuer   # RFC 9207, which Authlib leaves to us
        # fetch_token parses the callback and checks `state` (MismatchingStateException)
        token = sess.fetch_token(meta["token_endpoint"], authorization_response=callback,
                                 code_verifier=verifier)
        assert token["token_type"].lower() == "bearer" and token["scope"] == SCOPE
        claims = _authlib_validate(interop, client_id, token["id_token"], nonce,
                                   token["access_token"])
        userinfo = UserInfo(sess.get(meta["userinfo_endpoint"], timeout=10).json())
        refreshed = sess.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        refreshed_claims = _authlib_validate(interop, client_id, refreshed["id_token"], nonce,
                                             refreshed["access_token"])
        assert sess.get(meta["userinfo_endpoint"], timeout=10).json()["sub"] == claims["sub"]
        for value, hint in ((refreshed["access_token"], "access_token"),
                            (refreshed["refresh_token"], "refresh_token")):
            revoked = sess.revoke_token(meta["revocation_endpoint"], value, token_type_hint=hint)
            assert revoked.status_code == 200, revoked.text
    check_run(interop, method, Run(
        client_id=client_id, id_header=_jwt_part(token["id_token"], 0), id_claims=claims,
        userinfo=dict(userinfo), refreshed_claims=refreshed_claims,
        old_refresh_token=token["refresh_token"],
        revoked_access_token=refreshed["access_token"],
        revoked_refresh_token=refreshed["refresh_token"], requests=log))


@pytest.mark.parametrize("method", list(METHODS))
def test_idpyoidc(interop, method, tmp_path, monkeypatch):
    from idpyoidc.client.defaults import DEFAULT_KEY_DEFS
    from idpyoidc.client.rp_handler import RPHandler

    monkeypatch.chdir(tmp_path)   # in case the library writes key files relative to the CWD
    client_id = METHODS[method]
    log: list = []
    http = requests.Session()
    http.trust_env = False

    def httpc(http_method: str, url: str, **kw) -> requests.Response:
        # cryptojwt fetches jwks_uri with verify=False unless told otherwise: every request
        # of the library is verified against the group's CA here
        kw["verify"] = interop.ca
        headers = kw.get("headers") or {}
        form = parse_qs(kw.get("data") or "") if isinstance(kw.get("data"), str) else {}
        basic = None
        if str(headers.get("Authorization", "")).startswith("Basic "):
            basic = tuple(base64.b64decode(headers["Authorization"][6:]).decode().split(":", 1))
        log.append({"url": url, "basic": basic, "form_secret": "client_secret" in form})
        return http.request(http_method, url, **kw)

    with http:
        rph = RPHandler(base_url="http://127.0.0.1", client_configs=_idpy_config(interop, method),
                        key_conf={"key_defs": DEFAULT_KEY_DEFS}, httpc=httpc,
                        httpc_params={"verify": interop.ca})
        begin = rph.begin(issuer_id="op", req_args={"scope": SCOPE.split()})
        url = begin if isinstance(begin, str) else begin["url"]
        callback = interop.sign_in(url)
        response = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        # token request, ID token validation (signature, iss, aud, nonce, exp), userinfo
        done = rph.finalize(interop.issuer, response)
        assert done["state"] == response["state"]
        id_token, userinfo = done["id_token"], done["userinfo"]
        client = rph.get_client_from_session_key(done["state"])
        first = client.get_context().cstate.get(done["state"])
        first_refresh_token, first_id_token = first["refresh_token"], first["id_token"]
        refreshed = rph.refresh_access_token(done["state"])
        assert "__verified_id_token" in refreshed, refreshed.to_dict()
        assert refreshed["refresh_token"] != first_refresh_token
        assert id_token["sub"] == refreshed["__verified_id_token"]["sub"] == userinfo["sub"]
        assert id_token["aud"] == [client_id] and id_token["nonce"] == first["nonce"]
        revocation = client.get_service("token_revocation")
        for value, hint in ((refreshed["access_token"], "access_token"),
                            (refreshed["refresh_token"], "refresh_token")):
            # RFC 7009 §2.2 answers 200 with an empty body, which idpyoidc's response
            # parser calls "Missing or faulty response": the library builds and
            # authenticates the request, the test sends it
            req = revocation.get_request_parameters(
                request_args={"token": value, "token_type_hint": hint}, authn_method=method)
            resp = httpc(req["method"], req["url"], data=req.get("body"),
                         headers=req.get("headers") or {})
            assert resp.status_code == 200, resp.text
    check_run(interop, method, Run(
        client_id=client_id, id_header=_jwt_part(first_id_token, 0),
        # idpyoidc's verified IdToken turns aud into a list: check the token as sent
        id_claims=_jwt_part(first_id_token, 1), userinfo=userinfo.to_dict(),
        refreshed_claims=_jwt_part(refreshed["id_token"], 1),
        old_refresh_token=first_refresh_token,
        revoked_access_token=refreshed["access_token"],
        revoked_refresh_token=refreshed["refresh_token"], requests=log))
