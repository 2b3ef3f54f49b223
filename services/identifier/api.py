"""The identifier JSON API (konnect.md §2.12): `_/hello`, `_/logon`, `_/logoff`, `_/consent`.

Every call is a POST with a JSON body, the header `Kopano-Konnect-XSRF: 1` and an
Origin (or Referer) on the request's own host: a cross-site form cannot send the header
and a cross-site script cannot pass the origin check (OWASP CSRF: custom request header
plus origin verification). A "no" is `204` with `Kopano-Konnect-State`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

from shared import discovery, scopes as scopelib
from shared.errors import INVALID_REQUEST, TOO_MANY_REQUESTS, OAuth2Error
from shared.session import (API_PATH, BROWSER_STATE_COOKIE, LOGON_COOKIE, SESSION_PATH, Logon,
                            clear_cookie, consent_cookie_name, new_sid, seal_consent, set_cookie)
from shared.web import BaseHandler

from .signout import sign_out

LOGON_WINDOW, LOGON_LIMIT = 300, 10


class APIHandler(BaseHandler):
    def prepare(self) -> None:
        if self.request.method != "POST":
            raise OAuth2Error(INVALID_REQUEST, "use POST", status=405)
        if self.request.headers.get("Kopano-Konnect-XSRF") != "1":
            raise OAuth2Error(INVALID_REQUEST, "missing XSRF header", detail="xsrf header")
        source = self.request.headers.get("Origin") or self.request.headers.get("Referer") or ""
        host = urlsplit(source).netloc
        if not host or host.lower() != (self.request.headers.get("Host") or "").lower():
            raise OAuth2Error(INVALID_REQUEST, "origin check failed", detail=f"origin {source!r}")
        self.body = self.json_body()
        state = self.body.get("state", "")
        self.state = state if isinstance(state, str) and len(state) <= 256 else ""

    def no(self) -> None:
        self.set_status(204)
        self.set_header("Kopano-Konnect-State", self.state)
        self.finish()

    def logon(self) -> Optional[Logon]:
        return Logon.open(self.deps.sealer, self.get_cookie(LOGON_COOKIE))

    async def hello(self, logon: Logon, request: Any) -> dict:
        request = request if isinstance(request, dict) else {}
        flow = request.get("flow") if isinstance(request.get("flow"), str) else ""
        answer = {"state": self.state, "flow": flow, "success": True,
                  "username": logon.identity.username,
                  "displayName": logon.identity.name or logon.identity.username}
        if flow in ("oidc", "consent"):
            query = {k: v for k, v in request.items() if isinstance(v, str) and k not in ("state", "flow")}
            if "state" in request and isinstance(request.get("ref"), str):
                query["state"] = request["ref"]
            answer["continue_uri"] = discovery.url(self.deps.settings, "authorization_endpoint")
            client = await self.deps.lookup_client(request.get("client_id"), request.get("redirect_uri"))
            if client is not None and (not client.trusted or "consent" in (request.get("prompt") or "")):
                answer["next"] = "consent"
                wanted = scopelib.parse(request.get("scope"))
                answer["scopes"] = {s: True for s in wanted}
                answer["client"] = {"id": client.id, "display_name": client.display_name,
                                    "redirect_uri": request.get("redirect_uri"),
                                    "trusted": client.trusted}
        return answer

    def post(self) -> None:  # overridden
        raise NotImplementedError


class HelloHandler(APIHandler):
    async def post(self) -> None:
        logon = self.logon()
        prompt = str(self.body.get("prompt") or "")
        if logon is None or "login" in prompt.split():
            return self.no()
        self.write_json(await self.hello(logon, self.body))


class LogonHandler(APIHandler):
    failed_floor = 0.25  # seconds: the least time a failed sign-in takes to answer

    async def post(self) -> None:
        params = self.body.get("params")
        if not isinstance(params, list) or len(params) < 3 or \
                not all(isinstance(p, str) for p in params[:3]):
            raise OAuth2Error(INVALID_REQUEST, "params must be [username, password, mode]")
        username, password, mode = params[:3]
        if mode != "1" or not username or not password or len(username) > 256 or len(password) > 1024:
            return self.no()
        store = self.deps.store
        for bucket, key in (("logon-user", username.lower()), ("logon-ip", self.client_ip)):
            if await store.hit(bucket, key, window=LOGON_WINDOW) > LOGON_LIMIT * (5 if bucket == "logon-ip" else 1):
                raise OAuth2Error(TOO_MANY_REQUESTS, "too many sign-in attempts", status=429,
                                  retry_after=await store.retry_after(bucket, key))
        started = asyncio.get_running_loop().time()
        identity = await self.deps.users.authenticate(username, password)
        if identity is None:
            # Unknown user or wrong password: the same answer after the same minimum time,
            # whatever the backend's own timing (no user enumeration by the clock).
            delay = started + self.failed_floor - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            return self.no()
        await store.reset("logon-user", username.lower())
        logon = Logon(identity=identity, auth_time=int(self.deps.now()), sid=new_sid())
        set_cookie(self, LOGON_COOKIE, logon.seal(self.deps.sealer), path=API_PATH)
        clear_cookie(self, BROWSER_STATE_COOKIE, path=SESSION_PATH)
        hello = self.body.get("hello")
        self.write_json({"success": True, "state": self.state,
                         "hello": await self.hello(logon, hello) if isinstance(hello, dict) else None})


class LogoffHandler(APIHandler):
    async def post(self) -> None:
        # Access tokens issued before now stop working everywhere (revocation list).
        await sign_out(self, self.logon())
        self.write_json({"success": True, "state": self.state})


class ConsentHandler(APIHandler):
    async def post(self) -> None:
        logon = self.logon()
        b = self.body
        fields = [b.get(k) for k in ("client_id", "redirect_uri", "ref", "flow_nonce")]
        if logon is None or not self.state or not all(isinstance(f, str) for f in fields[:2]):
            raise OAuth2Error(INVALID_REQUEST, "consent needs a signed-in user and the request")
        client_id, redirect_uri, ref, nonce = [f if isinstance(f, str) else "" for f in fields]
        client = await self.deps.lookup_client(client_id, redirect_uri)
        if client is None or not client.redirect_uri_ok(redirect_uri):
            raise OAuth2Error(INVALID_REQUEST, "unknown client")
        scope = b.get("scope")
        scopes = scopelib.parse(scope) if isinstance(scope, str) else \
            [s for s in (scope or []) if isinstance(s, str)]
        allow = b.get("allow") is True
        name = consent_cookie_name(self.state, client_id, redirect_uri, ref, nonce)
        set_cookie(self, name, seal_consent(self.deps.sealer, allow=allow, scopes=scopes,
                                            sub=logon.identity.sub), path=API_PATH, max_age=60)
        if not allow:
            return self.no()
        self.write_json({"success": True, "state": self.state})


def continue_url(settings: Any, query: dict) -> str:
    return discovery.url(settings, "authorization_endpoint") + "?" + urlencode(query)
