"""The token, userinfo and identifier services, each built the way its `main()` builds it
(`load_settings`, then `Core.with_users`) and served on a port of its own, sharing one Redis
and one clock: what one service revokes, another must refuse at once. The `services`,
`ldap_op`, `users_op` and `op_user` fixtures (tests/support/fixtures.py) start them."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Optional
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from services.identifier.app import make_app as identifier_app
from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared.deps import Core
from tests.support.clock import OffsetClock
from tests.support.http import basic
from tests.support.op import SECRET, mint_code

APPS = {"token": token_app, "userinfo": userinfo_app, "identifier": identifier_app}
PASSWORD = "ldap pw*(1)"  # filter metacharacters on purpose
ALL_SCOPES = ("openid", "profile", "email", "konnect/id", "konnect/uuid", "offline_access")


@contextlib.asynccontextmanager
async def serving(application):
    """Another app on a port of its own (another process, as far as the client can tell)."""
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


class OP:
    """The token, userinfo and identifier services, each served on its own port."""

    def __init__(self, clock: OffsetClock) -> None:
        self.clock = clock
        self.cores: dict[str, Core] = {}
        self.urls: dict[str, str] = {}
        self._servers: list[HTTPServer] = []
        self.http = AsyncHTTPClient(force_instance=True)

    def serve(self, name: str, core: Core) -> None:
        sock, port = bind_unused_port()
        server = HTTPServer(APPS[name](core.settings, core))
        server.add_sockets([sock])
        self._servers.append(server)
        self.cores[name], self.urls[name] = core, f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.http.close()
        for server in self._servers:
            server.stop()
            await server.close_all_connections()
        for core in self.cores.values():
            await core.close()

    @property
    def token_core(self) -> Core:
        return self.cores["token"]

    async def fetch(self, service: str, path: str, **kw: Any):
        resp = await self.http.fetch(self.urls[service] + path, raise_error=False, **kw)
        body = resp.body.decode("utf-8", "replace")
        if resp.code >= 400:  # nothing internal in an error
            assert not any(word in body.lower() for word in ("traceback", "ldap", "redis"))
        ctype = resp.headers.get("Content-Type", "")
        return resp, (json.loads(body) if ctype.startswith("application/json") and body else None)

    async def form(self, path: str, form: dict, auth=("web-rp", SECRET)):
        return await self.fetch("token", path, method="POST", body=urlencode(form),
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "Authorization": basic(*auth)})

    async def identity(self, username: str, password: str):
        identity = await self.token_core.users.authenticate(username, password)
        assert identity is not None
        return identity

    async def code(self, identity, scopes=ALL_SCOPES, **kw) -> str:
        return await mint_code(self.token_core, identity=identity, scopes=scopes, **kw)

    async def redeem(self, code: str) -> tuple[int, dict]:
        resp, body = await self.form("/konnect/v1/token", {
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://rp.example.test/cb"})
        return resp.code, body

    async def tokens(self, identity, scopes=ALL_SCOPES, **kw) -> dict:
        status, body = await self.redeem(await self.code(identity, scopes, **kw))
        assert status == 200, body
        return body

    async def refresh(self, refresh_token: str) -> tuple[int, dict]:
        resp, body = await self.form("/konnect/v1/token", {"grant_type": "refresh_token",
                                                           "refresh_token": refresh_token})
        return resp.code, body

    async def revoke(self, token: str, hint: Optional[str] = None) -> None:
        form = {"token": token, **({"token_type_hint": hint} if hint else {})}
        resp, _ = await self.form("/konnect/v1/revoke", form)
        assert resp.code == 200

    async def userinfo(self, access_token: str):
        return await self.fetch("userinfo", "/konnect/v1/userinfo",
                                headers={"Authorization": f"Bearer {access_token}"})

    async def userinfo_status(self, access_token: str) -> int:
        resp, body = await self.userinfo(access_token)
        if resp.code == 401:  # RFC 6750 §3.1, and nothing but the code
            assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert body == {"error": "invalid_token"}
        return resp.code


def ldap_env(server, basedn: str) -> dict:
    return {"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_URI": server.url,
            "LDAP_BINDDN": server.admin_dn, "LDAP_BINDPW": server.admin_password,
            "LDAP_BASEDN": basedn, "LDAP_UIDNUMBER_ATTRIBUTE": "employeeNumber",
            "LDAP_UUID_ATTRIBUTE": "carLicense",
            # every request reads the directory here; the cache's bound (the default 5 s)
            # is tested in tests/users/test_user_cache.py
            "KONNECTD_USER_CACHE_TTL": "0"}


def add_person(server, ou: str, uid: str, number: str = "4711", uuid: str = "b5b0-uuid") -> str:
    return server.add_user(ou, uid, PASSWORD, uid.capitalize(), "Example",
                           extra_attrs={"employeeNumber": number, "carLicense": uuid})


def modify(server, dn: str, changes: dict) -> None:
    conn = server.connect()
    try:
        conn.modify(dn, changes)
    finally:
        conn.unbind()


def delete(server, dn: str) -> None:
    conn = server.connect()
    try:
        conn.delete(dn)
    finally:
        conn.unbind()
