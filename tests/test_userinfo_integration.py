"""Userinfo across services: the real LDAP backend (slapd) and the users file behind it, and
the token, identifier and userinfo apps as separate servers, each with its own `Core` (own
Redis connections, own user backend), on ports of their own, sharing one Redis: what one
service revokes, another refuses at once."""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie
from typing import Any, Optional
from urllib.parse import urlencode

import ldap3
import pytest
import pytest_asyncio
import yaml
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from services.identifier.app import make_app as identifier_app
from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared import jose
from shared.config import load_settings
from shared.deps import Core
from shared.identity import public_subject
from tests.support.op import ISSUER, SECRET, USERS, make_state, mint_code
from tests.test_token_service import basic

APPS = {"token": token_app, "userinfo": userinfo_app, "identifier": identifier_app}
PASSWORD = "ldap pw*(1)"  # filter metacharacters on purpose
ALL_SCOPES = ("openid", "profile", "email", "konnect/id", "konnect/uuid", "offline_access")


class Clock:
    """The wall clock plus an offset every service shares (tests move it, never sleep)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class OP:
    """The token, userinfo and identifier services, each served on its own port."""

    def __init__(self, clock: Clock) -> None:
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


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("userinfo-integration-state"))


@pytest_asyncio.fixture
async def start(state, redis_url):
    """`await start(env, argv)`: the three services built the way `main()` builds them
    (`load_settings` then `Core.with_users`) from the same state, Redis and environment."""
    started = []

    async def factory(env: dict, argv=()) -> OP:
        op = OP(Clock())
        started.append(op)
        for name in APPS:
            settings = load_settings(
                ["--iss", ISSUER, "--signing-private-key", state["key"],
                 "--encryption-secret", state["secret"],
                 "--identifier-registration-conf", state["registry"],
                 "--redis-url", redis_url, *argv], env, service=name)
            op.serve(name, Core.with_users(settings, now=op.clock))
        return op

    yield factory
    for op in started:
        await op.close()


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


@pytest_asyncio.fixture
async def ldap_op(start, slapd_server, ldap_ou):
    return await start(ldap_env(slapd_server, ldap_ou))


async def _users_op(start, directory) -> OP:
    path = directory / "users.yaml"
    path.write_text(yaml.safe_dump(USERS))
    return await start({"KONNECTD_IDENTITY_MANAGER": "users", "KONNECTD_USERS_FILE": str(path)})


@pytest_asyncio.fixture
async def users_op(start, tmp_path):
    return await _users_op(start, tmp_path)


@pytest_asyncio.fixture(params=["users", "ldap"])
async def op_user(request, start, tmp_path):
    """(OP, username, password) with either backend: the cross-service rules hold for both."""
    if request.param == "users":
        return await _users_op(start, tmp_path), "alice", "wonderland"
    server, ou = request.getfixturevalue("slapd_server"), request.getfixturevalue("ldap_ou")
    add_person(server, ou, "lena")
    return await start(ldap_env(server, ou)), "lena", PASSWORD


# -- 1. userinfo with the real LDAP backend -----------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("scopes,expected", [
    (("openid",), {}),
    (("openid", "profile"), {"name": "Lena Example", "given_name": "Lena",
                             "family_name": "Example", "preferred_username": "lena"}),
    (("openid", "email"), {"email": "lena@example.test", "email_verified": False}),
    (("openid", "konnect/id"), {"id": 4711, "username": "lena"}),
    (("openid", "konnect/uuid"), {"kc.uuid": "b5b0-uuid"}),
    (ALL_SCOPES, {"name": "Lena Example", "given_name": "Lena", "family_name": "Example",
                  "preferred_username": "lena", "email": "lena@example.test",
                  "email_verified": False, "id": 4711, "username": "lena",
                  "kc.uuid": "b5b0-uuid"}),
])
async def test_ldap_user_gets_the_claims_of_the_authorized_scopes(ldap_op, slapd_server, ldap_ou,
                                                                  scopes, expected):
    dn = add_person(slapd_server, ldap_ou, "lena")
    identity = await ldap_op.identity("lena", PASSWORD)
    tokens = await ldap_op.tokens(identity, scopes)
    resp, body = await ldap_op.userinfo(tokens["access_token"])
    assert resp.code == 200, body
    assert body == {"sub": public_subject(dn, "identifier-ldap"), **expected}


@pytest.mark.asyncio
async def test_ldap_raw_sub_scope_returns_the_dn(ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD),
                                  ("openid", "konnect/raw_sub"))
    resp, body = await ldap_op.userinfo(tokens["access_token"])
    assert resp.code == 200 and body == {"sub": dn}
    _, id_claims = ldap_op.token_core.keyring.verify(tokens["id_token"])
    assert id_claims["sub"] == dn
    # the access token's sub stays Konnect's public subject (konnect.md §6.1)
    assert jose.unverified_claims(tokens["access_token"])["sub"] == \
        public_subject(dn, "identifier-ldap")


@pytest.mark.asyncio
async def test_ldap_claims_are_read_from_the_directory_at_request_time(ldap_op, slapd_server,
                                                                       ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    modify(slapd_server, dn, {"cn": [(ldap3.MODIFY_REPLACE, ["Lena Renamed"])],
                              "mail": [(ldap3.MODIFY_REPLACE, ["lena.r@example.test"])]})
    _, body = await ldap_op.userinfo(tokens["access_token"])
    assert body["name"] == "Lena Renamed" and body["email"] == "lena.r@example.test"


@pytest.mark.asyncio
async def test_ldap_user_deleted_after_issue_is_invalid_token(ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 200
    delete(slapd_server, dn)
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 401
    status, body = await ldap_op.refresh(tokens["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_ldap_user_recreated_with_another_entry_is_not_the_old_token_user(
        ldap_op, slapd_server, ldap_ou):
    dn = add_person(slapd_server, ldap_ou, "lena")
    tokens = await ldap_op.tokens(await ldap_op.identity("lena", PASSWORD))
    delete(slapd_server, dn)
    # same uid, another place in the tree: another DN, so another subject
    other_ou = slapd_server.add_ou("moved", ldap_ou)
    add_person(slapd_server, other_ou, "lena")
    assert await ldap_op.userinfo_status(tokens["access_token"]) == 401


@pytest.mark.asyncio
async def test_stopped_directory_is_503_never_claims_and_recovers(start, private_slapd):
    ou = private_slapd.add_ou("people-outage")
    add_person(private_slapd, ou, "lena")
    op = await start(ldap_env(private_slapd, ou), ["--ldap-timeout", "2"])
    tokens = await op.tokens(await op.identity("lena", PASSWORD))
    assert await op.userinfo_status(tokens["access_token"]) == 200
    private_slapd.stop()
    try:
        started = time.monotonic()
        resp, body = await op.userinfo(tokens["access_token"])
        assert resp.code == 503 and body == {
            "error": "temporarily_unavailable",
            "error_description": "the service is temporarily unavailable, try again later"}
        assert resp.headers["Retry-After"] and resp.headers["Cache-Control"] == "no-store"
        assert time.monotonic() - started < 2  # a refused connection is not waited on
        # the token service cannot check the user either: 503, and the refresh token is
        # not used up by the outage
        status, body = await op.refresh(tokens["refresh_token"])
        assert status == 503 and body["error"] == "temporarily_unavailable"
    finally:
        private_slapd.start()
    assert await op.userinfo_status(tokens["access_token"]) == 200
    status, body = await op.refresh(tokens["refresh_token"])
    assert status == 200, body  # the retry after the outage is not mistaken for reuse
    assert await op.userinfo_status(tokens["access_token"]) == 200
    assert await op.userinfo_status(body["access_token"]) == 200


# -- 2. token service and userinfo: what one revokes, the other refuses ------------------

@pytest.mark.asyncio
async def test_replayed_code_is_invalid_grant_and_userinfo_refuses_its_tokens(op_user):
    op, username, password = op_user
    code = await op.code(await op.identity(username, password))
    status, first = await op.redeem(code)
    assert status == 200, first
    assert await op.userinfo_status(first["access_token"]) == 200
    status, body = await op.redeem(code)
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(first["access_token"]) == 401
    status, body = await op.refresh(first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_refresh_token_reuse_revokes_every_access_token_of_the_family(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    first = await op.tokens(identity)
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    other = await op.tokens(identity)  # another grant of the same user and client
    for access in (first["access_token"], second["access_token"], other["access_token"]):
        assert await op.userinfo_status(access) == 200
    status, body = await op.refresh(first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(first["access_token"]) == 401
    assert await op.userinfo_status(second["access_token"]) == 401
    status, body = await op.refresh(second["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(other["access_token"]) == 200  # only that family


@pytest.mark.asyncio
async def test_revoked_access_token_is_refused_by_userinfo_at_once(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    tokens, other = await op.tokens(identity), await op.tokens(identity)
    assert await op.userinfo_status(tokens["access_token"]) == 200
    await op.revoke(tokens["access_token"], "access_token")
    assert await op.userinfo_status(tokens["access_token"]) == 401
    assert await op.userinfo_status(other["access_token"]) == 200


@pytest.mark.asyncio
async def test_revoking_a_refresh_token_revokes_its_family_access_tokens(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    first = await op.tokens(identity)
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    other = await op.tokens(identity)
    await op.revoke(second["refresh_token"])  # RFC 7009 §2.1: the grant's access tokens too
    assert await op.userinfo_status(first["access_token"]) == 401
    assert await op.userinfo_status(second["access_token"]) == 401
    status, body = await op.refresh(second["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(other["access_token"]) == 200


async def _logon_cookie(op: OP, username: str, password: str) -> str:
    origin = op.urls["identifier"]
    resp, body = await op.fetch("identifier", "/signin/v1/identifier/_/logon", method="POST",
                                body=json.dumps({"state": "s1", "params": [username, password, "1"]}),
                                headers={"Content-Type": "application/json", "Origin": origin,
                                         "Kopano-Konnect-XSRF": "1"})
    assert resp.code == 200, body
    jar = SimpleCookie()
    for header in resp.headers.get_list("Set-Cookie"):
        jar.load(header)
    return f"__Secure-KKT={jar['__Secure-KKT'].value}"


@pytest.mark.asyncio
async def test_logoff_makes_userinfo_refuse_access_tokens_issued_before(op_user):
    op, username, password = op_user
    cookie = await _logon_cookie(op, username, password)
    identity = await op.identity(username, password)
    before = await op.tokens(identity)
    assert await op.userinfo_status(before["access_token"]) == 200
    resp, body = await op.fetch("identifier", "/signin/v1/identifier/_/logoff", method="POST",
                                body=json.dumps({"state": "o1"}),
                                headers={"Content-Type": "application/json", "Cookie": cookie,
                                         "Origin": op.urls["identifier"],
                                         "Kopano-Konnect-XSRF": "1"})
    assert resp.code == 200 and body["success"] is True
    assert await op.userinfo_status(before["access_token"]) == 401
    # a later sign-in works again; the offline_access grant survives a browser sign-out
    op.clock.offset = 2
    after = await op.tokens(identity, auth_time=int(op.token_core.now()))  # signed in again
    assert await op.userinfo_status(after["access_token"]) == 200
    status, refreshed = await op.refresh(before["refresh_token"])
    assert status == 200, refreshed
    assert await op.userinfo_status(refreshed["access_token"]) == 200
    assert await op.userinfo_status(before["access_token"]) == 401


# -- revocation entries last as long as userinfo would accept the token -----------------

@pytest.mark.asyncio
async def test_revoked_access_token_stays_refused_within_the_clock_skew(users_op):
    op = users_op
    tokens = await op.tokens(await op.identity("alice", "wonderland"))
    settings = op.token_core.settings
    # past exp, but inside the tolerated skew: userinfo still accepts the token ...
    op.clock.offset = settings.access_token_expiration + settings.clock_skew // 2
    assert await op.userinfo_status(tokens["access_token"]) == 200
    # ... so revoking it must take effect too
    await op.revoke(tokens["access_token"])
    assert await op.userinfo_status(tokens["access_token"]) == 401


def _remaining(redis_server, op: OP, kind: str, ident: str) -> float:
    client = redis_server.client()
    try:
        return client.pttl(op.token_core.store.key("revoked", kind, ident)) / 1000
    finally:
        client.close()


@pytest.mark.asyncio
async def test_replayed_code_revocation_outlives_the_access_token_and_skew(users_op, redis_server):
    op = users_op
    code = await op.code(await op.identity("alice", "wonderland"), ("openid", "profile"))
    status, first = await op.redeem(code)
    assert status == 200 and "refresh_token" not in first
    assert (await op.redeem(code))[0] == 400
    claims = jose.unverified_claims(first["access_token"])
    accepted_until = claims["exp"] + op.token_core.settings.clock_skew
    for kind, ident in (("jti", claims["jti"]), ("family", claims["kc.family"])):
        assert _remaining(redis_server, op, kind, ident) >= accepted_until - op.clock() - 1


@pytest.mark.asyncio
async def test_refresh_token_revoked_late_in_its_life_still_covers_its_access_tokens(
        users_op, redis_server):
    op = users_op
    first = await op.tokens(await op.identity("alice", "wonderland"))
    # ten seconds before the grant's refresh lifetime ends
    op.clock.offset = op.token_core.settings.refresh_token_expiration - 10
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    await op.revoke(second["refresh_token"], "refresh_token")
    assert await op.userinfo_status(second["access_token"]) == 401
    claims = jose.unverified_claims(second["access_token"])
    accepted_until = claims["exp"] + op.token_core.settings.clock_skew
    assert _remaining(redis_server, op, "family", claims["kc.family"]) >= \
        accepted_until - op.clock() - 1


# -- 3. the claims request parameter, through the token service (users file) -------------

@pytest.mark.asyncio
async def test_claims_request_userinfo_part_releases_claims_with_their_scope(users_op):
    """A standard claim asked for in `claims.userinfo` needs its scope among the token's
    for a client that is not trusted (konnect.md §6.9; RFC 6749 §6: a refresh may narrow
    them); a trusted client's claims request is authorized as asked (test_userinfo.py,
    test_hardening_3.py). Before review r3 this untrusted client got them without."""
    op = users_op
    identity = await op.identity("alice", "wonderland")
    claims = {"userinfo": {"email": None, "given_name": {"essential": True}},
              "id_token": {"family_name": None}}
    tokens = await op.tokens(identity, ("openid",), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub}
    tokens = await op.tokens(identity, ("openid", "email", "profile"), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body["email"] == "alice@example.test" and body["given_name"] == "Alice"


@pytest.mark.asyncio
async def test_claims_request_id_token_part_does_not_reach_userinfo(users_op):
    op = users_op
    identity = await op.identity("alice", "wonderland")
    tokens = await op.tokens(identity, ("openid",), claims={"id_token": {"email": None}})
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub}


@pytest.mark.asyncio
async def test_claims_request_value_never_fills_a_known_claim(users_op):
    """A client's `value` never becomes the user's email, name or ids when the backend has
    none, and unknown claims are not echoed either (OIDC Core §5.5.1; Konnect echoed them,
    konnect.md §6.8: fixed, see tests/test_hardening_3.py)."""
    op = users_op
    identity = await op.identity("bob", "builder")  # no email, no given name
    claims = {"userinfo": {"email": {"value": "ceo@example.test"},
                           "given_name": {"value": "Chief"}, "id": {"value": 1},
                           "username": {"value": "root"}, "kc.uuid": {"value": "x"},
                           "sub": {"value": "other"}, "iss": {"value": "https://evil.test"},
                           "custom": {"value": "echoed"}}}
    tokens = await op.tokens(identity, ("openid", "profile"), claims=claims)
    _, body = await op.userinfo(tokens["access_token"])
    assert body == {"sub": identity.sub, "name": "Bob", "preferred_username": "bob"}
