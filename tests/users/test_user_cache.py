"""The short, bounded-staleness cache of directory entries (shared/users/cache.py) in front
of the real LDAP backend and a real slapd: what it answers, for how long, what it never
answers (sign-in, failures), and, through the token and userinfo services, that a user
removed from the directory loses refresh and userinfo within the documented bound while
revocation takes effect at once. The cache's clock is moved by the tests, never slept on."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import quote_plus, urlencode

import pytest
import tornado.web

from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared.options import BY_NAME
from shared.users import BackendUnavailable, make_backend
from shared.users.cache import CachedBackend
from shared.users.ldap import LDAPBackend
from tests.support.op import SECRET, ldap_flags, make_core, make_state, mint_code

PASSWORD = "cache pw*(1)"
TTL = BY_NAME["user_cache_ttl"].default  # the documented bound: what operators get
# client_secret_basic with the form-encoded credentials of RFC 6749 §2.3.1
AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"web-rp:{quote_plus(SECRET)}".encode()).decode()}


class Clock:
    """Monotonic time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class CountingLDAP(LDAPBackend):
    """The real backend, counting the lookups that reach the directory."""

    lookups = 0

    async def lookup(self, raw_sub: str):
        self.lookups += 1
        return await super().lookup(raw_sub)


def directory(server, ou: str) -> CountingLDAP:
    return CountingLDAP(server.url, ou, binddn=server.admin_dn, bindpw=server.admin_password,
                        timeout=5)


def test_the_default_bound_is_a_few_seconds():
    assert 1 <= TTL <= 10


@pytest.mark.gen_test(timeout=60)
async def test_entries_are_answered_from_the_copy_until_the_bound_then_read_again(
        slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "lena", PASSWORD, "Lena", "Example")
    inner, clock = directory(slapd_server, ldap_ou), Clock()
    users = CachedBackend(inner, TTL, clock=clock)
    try:
        assert (await users.lookup(dn)).name == "Lena Example"
        slapd_server.modify_entry(dn, cn="Lena Renamed")
        clock.offset += TTL - 0.5
        assert (await users.lookup(dn)).name == "Lena Example"   # within the bound
        assert inner.lookups == 1
        clock.offset += 0.5
        assert (await users.lookup(dn)).name == "Lena Renamed"   # past it: the directory
        assert inner.lookups == 2
        slapd_server.delete_tree(dn)
        clock.offset += TTL
        assert await users.lookup(dn) is None
        assert await users.current(dn, {}) is None
    finally:
        await users.close()


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_lookups_of_one_subject_make_one_directory_request(slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "lena", PASSWORD, "Lena", "Example")
    inner = directory(slapd_server, ldap_ou)
    users = CachedBackend(inner, TTL)
    try:
        found = await asyncio.gather(*(users.lookup(dn) for _ in range(40)))
        assert {i.raw_sub for i in found} == {dn} and inner.lookups == 1
    finally:
        await users.close()


@pytest.mark.gen_test(timeout=60)
async def test_sign_in_always_asks_the_directory_and_refreshes_the_copy(slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "lena", PASSWORD, "Lena", "Example")
    inner, clock = directory(slapd_server, ldap_ou), Clock()
    users = CachedBackend(inner, TTL, clock=clock)
    try:
        assert (await users.lookup(dn)).name == "Lena Example"
        slapd_server.modify_entry(dn, cn="Lena Renamed", userPassword="a new password")
        assert await users.authenticate("lena", PASSWORD) is None   # the old password: no
        assert (await users.authenticate("lena", "a new password")).name == "Lena Renamed"
        assert (await users.lookup(dn)).name == "Lena Renamed"      # the sign-in's answer
        assert inner.lookups == 1
    finally:
        await users.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_unreachable_directory_is_never_remembered(private_slapd):
    dn = private_slapd.add_user(private_slapd.people_dn, "lena", PASSWORD, "Lena", "Example")
    users = CachedBackend(directory(private_slapd, private_slapd.people_dn), TTL)
    try:
        private_slapd.stop()
        with pytest.raises(BackendUnavailable):
            await users.lookup(dn)
        private_slapd.start()
        assert (await users.lookup(dn)).raw_sub == dn   # at once, not after the bound
    finally:
        await users.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_copy_holds_at_most_max_entries(slapd_server, ldap_ou):
    dns = [slapd_server.add_user(ldap_ou, f"u{i}", PASSWORD, "U", str(i)) for i in range(3)]
    inner = directory(slapd_server, ldap_ou)
    users = CachedBackend(inner, TTL, max_entries=2)
    try:
        for dn in dns:
            await users.lookup(dn)
        await users.lookup(dns[2])
        await users.lookup(dns[1])
        assert inner.lookups == 3
        await users.lookup(dns[0])   # the least recently used went first
        assert inner.lookups == 4
    finally:
        await users.close()


# -- through the services ------------------------------------------------------------------

@pytest.fixture
def op(tmp_path, redis_url, slapd_server, ldap_ou, io_loop):
    """Token and userinfo on one Core, the LDAP backend as `make_backend` builds it (cached,
    the default bound), its cache on a clock the test moves."""
    state = make_state(tmp_path)
    core = make_core("token", state, redis_url, ldap_flags(slapd_server, ldap_ou))
    core.users = make_backend(core.settings)
    assert isinstance(core.users, CachedBackend) and core.users.ttl == TTL
    core.users.clock = Clock()
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(op):
    rules = []
    for make in (token_app, userinfo_app):
        rules += make(op.settings, op).wildcard_router.rules
    return tornado.web.Application(rules)


class Client:
    def __init__(self, http_client, base_url: str, core) -> None:
        self.http, self.base, self.core = http_client, base_url, core

    async def token(self, form: dict):
        resp = await self.http.fetch(
            self.base + "/konnect/v1/token", method="POST", raise_error=False,
            body=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded", **AUTH})
        return resp.code, json.loads(resp.body)

    async def tokens(self, identity) -> dict:
        code = await mint_code(self.core, identity=identity)
        status, body = await self.token({"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": "https://rp.example.test/cb"})
        assert status == 200, body
        return body

    async def refresh(self, refresh_token: str) -> tuple[int, dict]:
        return await self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def userinfo(self, access_token: str) -> int:
        resp = await self.http.fetch(self.base + "/konnect/v1/userinfo", raise_error=False,
                                     headers={"Authorization": "Bearer " + access_token})
        return resp.code


@pytest.mark.gen_test(timeout=60)
async def test_a_removed_user_loses_refresh_and_userinfo_within_the_bound(
        http_client, base_url, op, slapd_server, ldap_ou):
    dn = slapd_server.add_user(ldap_ou, "lena", PASSWORD, "Lena", "Example")
    client = Client(http_client, base_url, op)
    identity = await op.users.authenticate("lena", PASSWORD)
    tokens = await client.tokens(identity)
    slapd_server.delete_tree(dn)
    op.users.clock.offset += TTL - 0.5          # still within the bound: the copy answers
    assert await client.userinfo(tokens["access_token"]) == 200
    status, body = await client.refresh(tokens["refresh_token"])
    assert status == 200, body
    op.users.clock.offset += 0.5                # the bound has passed: the directory decides
    assert await client.userinfo(body["access_token"]) == 401
    status, refused = await client.refresh(body["refresh_token"])
    assert status == 400 and refused["error"] == "invalid_grant"
    code = await mint_code(op, identity=identity)
    status, refused = await client.token({"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": "https://rp.example.test/cb"})
    assert status == 400 and refused["error"] == "invalid_grant"


@pytest.mark.gen_test(timeout=60)
async def test_revocation_and_sign_out_take_effect_at_once_whatever_the_copy(
        http_client, base_url, op, slapd_server, ldap_ou):
    slapd_server.add_user(ldap_ou, "lena", PASSWORD, "Lena", "Example")
    client = Client(http_client, base_url, op)
    identity = await op.users.authenticate("lena", PASSWORD)
    first, second = await client.tokens(identity), await client.tokens(identity)
    assert await client.userinfo(first["access_token"]) == 200   # the entry is in the copy
    resp = await http_client.fetch(base_url + "/konnect/v1/revoke", method="POST",
                                   body=urlencode({"token": first["refresh_token"]}),
                                   headers=AUTH)
    assert resp.code == 200
    status, body = await client.refresh(first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    # a sign-out (services/identifier/signout.py) revokes the subject's tokens in Redis
    await op.store.revoke_subject(identity.sub, int(op.now()), 3600)
    assert await client.userinfo(second["access_token"]) == 401


def test_the_cache_forwards_the_whole_backend_interface():
    """A method of `UserBackend` the cache does not define itself would answer with the base
    class's default instead of the wrapped backend's (a kc backend behind the cache never
    got the store for its per-user sessions)."""
    import inspect

    from shared.users.base import UserBackend
    from shared.users.cache import CachedBackend
    interface = {name for name, member in inspect.getmembers(UserBackend)
                 if not name.startswith("_") and callable(member)}
    assert interface <= set(vars(CachedBackend)), sorted(interface - set(vars(CachedBackend)))
