"""The demo relying party served by the `make run` group (not under the OP's paths).

An ordinary confidential web client of the OP, written the way an application developer
would: discovery, the authorization code flow with PKCE, `state`, `nonce` and RFC 9207
`iss` checks, the code exchange with client_secret_basic, ID-token validation against the
JWKS, userinfo, refresh and RP-initiated logout. It shows the decoded ID token and the
userinfo answer. It keeps its sessions in memory (a demo, not a pattern for production).

Configuration (set by deploy/run.py): KONNECT_DEMO_ISSUER, KONNECT_DEMO_CLIENT_ID,
KONNECT_DEMO_CLIENT_SECRET, KONNECT_DEMO_CA (the proxy's CA certificate), KONNECT_DEMO_ORIGIN
(its public origin), --listen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, urlencode

import tornado.httpclient
import tornado.web
from jose import jwt

HERE = Path(__file__).resolve().parent
SCOPES = "openid profile email konnect/id offline_access"


class OP:
    """What the demo knows of the OP: discovery and JWKS (fetched on first use)."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, ca: Optional[str]):
        self.issuer, self.client_id, self.client_secret = issuer.rstrip("/"), client_id, client_secret
        self.ca = ca
        self.meta: dict = {}
        self.jwks: dict = {}
        self.http = tornado.httpclient.AsyncHTTPClient()

    def _opts(self) -> dict:
        opts: dict[str, Any] = {"connect_timeout": 5, "request_timeout": 10}
        if self.ca and os.path.exists(self.ca):
            opts["ca_certs"] = self.ca
        return opts

    async def fetch_json(self, url: str, **kw: Any) -> tuple[int, Any]:
        response = await self.http.fetch(url, raise_error=False, **self._opts(), **kw)
        try:
            body = json.loads(response.body or b"null")
        except ValueError:
            body = {"error": "not JSON", "status": response.code}
        return response.code, body

    async def discover(self) -> dict:
        if not self.meta:
            code, meta = await self.fetch_json(self.issuer + "/.well-known/openid-configuration")
            if code != 200 or meta.get("issuer") != self.issuer:
                raise RuntimeError(f"discovery failed ({code})")
            code, jwks = await self.fetch_json(meta["jwks_uri"])
            if code != 200:
                raise RuntimeError(f"JWKS fetch failed ({code})")
            self.meta, self.jwks = meta, jwks
        return self.meta

    def basic_auth(self) -> str:
        # RFC 6749 §2.3.1: form-urlencode id and secret before base64.
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def token(self, **form: str) -> tuple[int, dict]:
        meta = await self.discover()
        return await self.fetch_json(
            meta["token_endpoint"], method="POST", body=urlencode(form),
            headers={"Authorization": self.basic_auth(),
                     "Content-Type": "application/x-www-form-urlencoded"})

    async def userinfo(self, access_token: str) -> tuple[int, Any]:
        meta = await self.discover()
        return await self.fetch_json(meta["userinfo_endpoint"],
                                     headers={"Authorization": f"Bearer {access_token}"})

    def validate_id_token(self, id_token: str, nonce: Optional[str],
                          access_token: Optional[str]) -> dict:
        """OpenID Connect Core §3.1.3.7: signature, iss, aud, exp, nonce (and at_hash)."""
        header = jwt.get_unverified_header(id_token)
        keys = [k for k in self.jwks.get("keys", []) if k.get("kid") == header.get("kid")]
        if not keys:
            raise ValueError("ID token signed with an unknown key")
        alg = keys[0].get("alg") or header.get("alg")
        claims = jwt.decode(id_token, keys[0], algorithms=[alg], audience=self.client_id,
                            issuer=self.issuer, access_token=access_token)
        if nonce is not None and claims.get("nonce") != nonce:
            raise ValueError("nonce mismatch")
        return claims


class Base(tornado.web.RequestHandler):
    @property
    def op(self) -> OP:
        return self.application.settings["demo_op"]

    @property
    def origin(self) -> str:
        """The app's public origin (KONNECT_DEMO_ORIGIN; behind Caddy it is https)."""
        return self.application.settings["demo_origin"] or \
            f"{self.request.protocol}://{self.request.host}"

    @property
    def sessions(self) -> dict:
        return self.application.settings["demo_sessions"]

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
                        f"frame-src {self.op.issuer}; form-action 'self' {self.op.issuer}; "
                        "frame-ancestors 'none'")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    def session(self) -> Optional[dict]:
        sid = self.get_signed_cookie("demo_session")
        return self.sessions.get(sid.decode()) if sid else None

    def show(self, **kw: Any) -> None:
        values = {"session": None, "error": None, "issuer": self.op.issuer, "pretty": pretty,
                  "display_name": display_name, "client_id": self.op.client_id,
                  "check_session": self.op.meta.get("check_session_iframe", "")}
        values.update(kw)
        self.render("index.html", **values)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def display_name(session: dict) -> str:
    info = session["userinfo"] if isinstance(session["userinfo"], dict) else {}
    return (info.get("name") or session["claims"].get("name") or info.get("preferred_username")
            or session["claims"]["sub"])


def decode_part(token: str, index: int) -> Any:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class Home(Base):
    def get(self) -> None:
        self.show(session=self.session())


class Login(Base):
    async def get(self) -> None:
        try:
            meta = await self.op.discover()
        except Exception as err:  # noqa: BLE001 - shown to the person trying the demo
            self.set_status(502)
            return self.show(error=f"The OP is not reachable yet: {err}")
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        flow = json.dumps({"state": state, "nonce": nonce, "verifier": verifier})
        self.set_signed_cookie("demo_flow", flow, expires_days=None, httponly=True,
                               samesite="Lax")
        params = {"response_type": "code", "client_id": self.op.client_id,
                  "redirect_uri": self.redirect_uri(), "scope": SCOPES, "state": state,
                  "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}
        if self.get_argument("prompt", "") in ("login", "consent", "select_account"):
            params["prompt"] = self.get_argument("prompt")
        self.redirect(meta["authorization_endpoint"] + "?" + urlencode(params))

    def redirect_uri(self) -> str:
        return self.origin + "/callback"


class Callback(Login):
    async def get(self) -> None:
        raw = self.get_signed_cookie("demo_flow", max_age_days=1)
        self.clear_cookie("demo_flow")
        flow = json.loads(raw) if raw else None
        if not flow or self.get_argument("state", "") != flow["state"]:
            self.set_status(400)
            return self.show(error="This sign-in was not started here (state mismatch).")
        if self.get_argument("iss", self.op.issuer) != self.op.issuer:  # RFC 9207
            self.set_status(400)
            return self.show(error="The answer came from another issuer.")
        if self.get_argument("error", ""):
            return self.show(error=f"The OP said: {self.get_argument('error')} "
                                   f"({self.get_argument('error_description', '')})")
        code, tokens = await self.op.token(
            grant_type="authorization_code", code=self.get_argument("code", ""),
            redirect_uri=self.redirect_uri(), code_verifier=flow["verifier"])
        if code != 200:
            self.set_status(502)
            return self.show(error=f"Code exchange failed: {pretty(tokens)}")
        try:
            claims = self.op.validate_id_token(tokens["id_token"], flow["nonce"],
                                               tokens.get("access_token"))
        except Exception as err:  # noqa: BLE001
            self.set_status(502)
            return self.show(error=f"The ID token did not validate: {err}")
        status, info = await self.op.userinfo(tokens["access_token"])
        sid = secrets.token_urlsafe(16)
        self.sessions[sid] = {"tokens": tokens, "claims": claims, "userinfo": info,
                              "session_state": self.get_argument("session_state", ""),
                              "userinfo_status": status,
                              "id_header": decode_part(tokens["id_token"], 0),
                              "access": decode_part(tokens["access_token"], 1),
                              "at": int(time.time())}
        self.set_signed_cookie("demo_session", sid, expires_days=None, httponly=True,
                               samesite="Lax")
        self.redirect("/")


class Refresh(Base):
    async def post(self) -> None:
        session = self.session()
        if not session or not session["tokens"].get("refresh_token"):
            return self.redirect("/")
        code, tokens = await self.op.token(grant_type="refresh_token",
                                           refresh_token=session["tokens"]["refresh_token"])
        if code != 200:
            return self.show(session=session, error=f"Refresh failed: {pretty(tokens)}")
        session["tokens"].update(tokens)
        session["access"] = decode_part(tokens["access_token"], 1)
        session["userinfo_status"], session["userinfo"] = await self.op.userinfo(
            tokens["access_token"])
        session["at"] = int(time.time())
        self.redirect("/")


class Logout(Base):
    async def post(self) -> None:
        sid = self.get_signed_cookie("demo_session")
        session = self.sessions.pop(sid.decode(), None) if sid else None
        self.clear_cookie("demo_session")
        meta = await self.op.discover()
        end = meta.get("end_session_endpoint")
        if session and end:
            params = {"id_token_hint": session["tokens"]["id_token"],
                      "post_logout_redirect_uri": self.origin + "/",
                      "state": secrets.token_urlsafe(8)}
            return self.redirect(end + "?" + urlencode(params))
        self.redirect("/")


def make_app(op: OP, cookie_secret: Optional[str] = None,
             origin: str = "") -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/", Home), (r"/login", Login), (r"/callback", Callback), (r"/refresh", Refresh),
         (r"/logout", Logout)], demo_op=op, demo_sessions={}, demo_origin=origin.rstrip("/"),
        template_path=str(HERE / "templates"), static_path=str(HERE / "static"),
        cookie_secret=cookie_secret or secrets.token_hex(32), xsrf_cookies=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default=os.environ.get("KONNECT_DEMO_LISTEN",
                                                           "127.0.0.1:8790"))
    args = parser.parse_args()
    op = OP(os.environ["KONNECT_DEMO_ISSUER"], os.environ["KONNECT_DEMO_CLIENT_ID"],
            os.environ["KONNECT_DEMO_CLIENT_SECRET"], os.environ.get("KONNECT_DEMO_CA"))

    async def serve() -> None:
        host, _, port = args.listen.rpartition(":")
        origin = os.environ.get("KONNECT_DEMO_ORIGIN", "")
        server = make_app(op, origin=origin).listen(int(port), address=host)
        print(f"demo relying party on {origin or 'http://' + args.listen}/", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()

    asyncio.run(serve())
