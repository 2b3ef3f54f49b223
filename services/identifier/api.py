"""The identifier JSON API: `_/hello`, `_/logon`, `_/logoff`, `_/consent`, as Konnect's
(its identifier/api.go and identifier/handlers.go), described in docs/identifier-api.yaml.

Every call is a POST with a JSON body, the header `Kopano-Konnect-XSRF: 1` and an
Origin (or Referer) of the issuer's origin, scheme, host and port: a cross-site form
cannot send the header and a cross-site script cannot pass the origin check (OWASP CSRF:
custom request header plus origin verification). A "no" is `204` with `Kopano-Konnect-State`.

The bodies are Konnect's request structs, whose fields are strings (`allow` a boolean,
`params` a list of strings, `hello` an object): a member of another JSON type is a 400
`invalid_request` naming it, never a 500 (Konnect's JSON decoding refused them too).
`state` is echoed in a header, so it must be printable ASCII (RFC 9110 §5.5: a field value
has no CR/LF; non-ASCII is not portable) of at most 256 characters.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Awaitable, Optional

from shared import discovery, scopes as scopelib
from shared.errors import (ACCESS_DENIED, INVALID_REQUEST, TOO_MANY_REQUESTS, OAuth2Error,
                           Unavailable)
from shared.session import (CONSENT_TTL, LOGON_COOKIE, Logon, consent_cookie_name,
                            current_logon, logon_ttl, new_sid, new_state_key, seal_consent,
                            set_cookie, set_logon)
from shared.users.base import MAX_PASSWORD, MAX_USERNAME
from shared.web import BaseHandler

from .signout import fresh_auth_time, sign_out

log = logging.getLogger("konnect.identifier")
LOGON_WINDOW, LOGON_LIMIT = 300, 10
LOGON_IP_LIMIT = 5 * LOGON_LIMIT  # failed sign-ins per client IP and window
STATE_MAX = 256
_STATE_OK = re.compile(r"[\x20-\x7e]*")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON may escape one; it is not UTF-8 text


def _invalid(description: str) -> OAuth2Error:
    return OAuth2Error(INVALID_REQUEST, description)


def string_member(doc: dict, name: str, where: str = "") -> str:
    """A string member of a request body; absent or null is ""."""
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or _SURROGATE.search(value):
        raise _invalid(f"{where}{name} must be a string")
    return value


def hello_request(value: Any, where: str = "") -> Optional[dict]:
    """A HelloRequest (Konnect's identifier/models.go): an object of string members (null counts
    as absent), or None when there is none. Its members go into the continue URI's query,
    so every one of them must be a string."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(f"{where.rstrip('.') or 'the request'} must be a JSON object")
    return {k: string_member(value, k, where) for k, v in value.items() if v is not None}


FLOWS = ("oauth", "consent", "oidc")  # the flows whose hello names the client (Konnect's)
_INT64 = re.compile(r"[+-]?[0-9]{1,19}")


def prompts(request: Optional[dict]) -> list:
    return (request or {}).get("prompt", "").split()


def check_hello(request: Optional[dict]) -> int:
    """Konnect's checks of a HelloRequest before any work (its identifier/models.go
    `HelloRequest.parse` and api.go `writeHelloResponse`): `max_age` must be a whole number
    (400 otherwise); `prompt=none` is a 400 (the sign-in pages are never shown without a
    prompt, so a page asking that is a broken client). Returns max_age (0: none)."""
    if request is None:
        return 0
    if "none" in prompts(request):
        raise _invalid("prompt none requested")
    raw = request.get("max_age", "")
    if not raw:
        return 0
    if not _INT64.fullmatch(raw) or not -2**63 <= int(raw) < 2**63:
        raise _invalid("max_age must be a whole number of seconds")
    return int(raw)


class APIHandler(BaseHandler):
    def prepare(self) -> Optional[Awaitable[None]]:
        if self.request.method != "POST":
            raise OAuth2Error(INVALID_REQUEST, "use POST", status=405)
        if self.request.headers.get("Kopano-Konnect-XSRF") != "1":
            raise OAuth2Error(INVALID_REQUEST, "missing XSRF header", detail="xsrf header")
        if not self.from_issuer_origin():
            source = self.request.headers.get("Origin") or self.request.headers.get("Referer")
            raise OAuth2Error(INVALID_REQUEST, "origin check failed",
                              detail=f"origin {(source or '')[:100]!r}")
        self.body = self.json_body()
        state = string_member(self.body, "state")
        if len(state) > STATE_MAX or not _STATE_OK.fullmatch(state):
            raise _invalid(f"state must be at most {STATE_MAX} printable ASCII characters")
        self.state = state
        return super().prepare()

    def no(self) -> None:
        self.set_status(204)
        self.set_header("Kopano-Konnect-State", self.state)
        self.finish()

    async def logon(self) -> Optional[Logon]:
        deps = self.deps
        return await Logon.open_live(deps.sealer, deps.store, self.get_cookie(LOGON_COOKIE))

    async def current_logon(self) -> Optional[Logon]:
        """The live logon with its user as the backend knows them now (`current_logon`)."""
        return await current_logon(self.deps.users, await self.logon())

    def too_old(self, logon: Logon, max_age: int) -> bool:
        """A logon older than the request's positive max_age is none (Konnect's
        identifier.go `GetUserFromLogonCookie`)."""
        return max_age > 0 and logon.auth_time + max_age < self.deps.now()

    async def hello(self, logon: Logon, request: Optional[dict]) -> dict:
        """The HelloResponse for a signed-in user (Konnect's identifier/api.go
        `writeHelloResponse`); `request` has passed `hello_request` and `check_hello`.

        For the flows oauth, consent and oidc the client must be known with that redirect
        URI (400 otherwise); the answer has the authorization endpoint as `continue_uri`
        and, when the client is not trusted or `prompt=consent` was asked, what the consent
        screen shows: `next: consent`, the requested `scopes`, the `client` and
        `meta.scopes` (mapping and definitions)."""
        request = request or {}
        identity = logon.identity
        answer = {"state": self.state, "flow": "", "success": True,
                  "username": identity.username, "displayName": identity.name or identity.username}
        flow = request.get("flow", "")
        if flow not in FLOWS:
            return answer
        redirect_uri = request.get("redirect_uri", "")
        client = await self.deps.lookup_client(request.get("client_id"), redirect_uri)
        if client is None or not client.redirect_uri_ok(redirect_uri):
            raise OAuth2Error(INVALID_REQUEST, "unknown client or redirect_uri")
        if not client.trusted or "consent" in prompts(request):
            wanted = scopelib.parse(request.get("scope"))
            answer.update({
                "next": "consent", "scopes": {s: True for s in wanted},
                "client": {"id": client.id, "display_name": client.display_name,
                           "redirect_uri": redirect_uri, "trusted": client.trusted},
                "meta": {"scopes": self.deps.scope_definitions.meta(
                    wanted, self.deps.settings.identity_manager)}})
        answer["continue_uri"] = discovery.url(self.deps.settings, "authorization_endpoint")
        answer["flow"] = flow
        return answer

    def post(self) -> None:  # overridden
        raise NotImplementedError


class HelloHandler(APIHandler):
    async def post(self) -> None:
        request = hello_request(self.body)
        max_age = check_hello(request)
        logon = await self.current_logon()
        if logon is None or "login" in prompts(request) or self.too_old(logon, max_age):
            return self.no()
        self.write_json(await self.hello(logon, request))


class LogonHandler(APIHandler):
    """`params` is [username, password, mode] (Konnect's identifier/handlers.go
    `handleLogon`): mode "1" signs in with the password; mode "0" with an empty password
    continues the signed-in user of the logon cookie when `username` is theirs (the choose
    account page). An empty `params` is a 400, a shorter one or another mode a 204."""

    failed_floor = 0.25  # seconds: the least time a failed sign-in takes to answer

    async def post(self) -> None:
        params = self.body.get("params")
        if params is None:
            params = []
        if not isinstance(params, list) or \
                not all(isinstance(p, str) and not _SURROGATE.search(p) for p in params):
            raise OAuth2Error(INVALID_REQUEST, "params must be [username, password, mode]")
        if not params:
            raise OAuth2Error(INVALID_REQUEST, "params required")
        # before any sign-in work: a bad hello must not come after a cookie was set
        hello = hello_request(self.body.get("hello"), "hello.")
        max_age = check_hello(hello)
        if len(params) < 3:
            return self.no()
        username, password, mode = params[:3]
        if mode == "0" and password == "":
            return await self.continue_logon(username, hello, max_age)
        if mode != "1" or not username or not password or len(username) > MAX_USERNAME \
                or len(password) > MAX_PASSWORD:
            return self.no()
        if getattr(self.deps.registry.authorities, "default", None) is not None:
            # an SSO-only site (a `default` authority): no password sign-in to fall back to
            raise OAuth2Error(ACCESS_DENIED, "password sign-in is disabled: this site signs "
                              "in through its default authority", status=403)
        store, user = self.deps.store, username.lower()
        # Counted before the password is checked, so concurrent guesses cannot overshoot and
        # the scrypt work per window is bounded. Only a wrong password (or unknown user)
        # keeps its hits: every other answer gives them back (`finally`), so that an outage
        # of the directory or of Redis, a refusal or an error locks nobody out.
        counted: list = []
        try:
            for bucket, key, limit in (("logon-user", user, LOGON_LIMIT),
                                       ("logon-ip", self.client_ip, LOGON_IP_LIMIT)):
                count = await store.hit(bucket, key, window=LOGON_WINDOW)
                counted.append((bucket, key))
                if count > limit:
                    raise OAuth2Error(TOO_MANY_REQUESTS, "too many sign-in attempts",
                                      status=429, retry_after=await store.retry_after(bucket, key))
            started = asyncio.get_running_loop().time()
            identity = await self.deps.users.authenticate(username, password)
            if identity is None:
                counted = []  # the one answer that counts: wrong credentials
                # Unknown user or wrong password: the same answer after the same minimum
                # time, whatever the backend's own timing (no user enumeration by the clock).
                delay = started + self.failed_floor - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                return self.no()
            # A success is no attempt against the limits: many users behind one NAT signing
            # in must not lock each other out; it also ends the user's failed attempts.
            await store.reset("logon-user", user)
            counted.remove(("logon-user", user))
            logon = Logon(identity=identity, auth_time=await self.auth_time(identity.sub),
                          sid=new_sid(), state_key=new_state_key())
            answer = await self.hello(logon, hello) if hello is not None else None  # a 400?
            set_logon(self, logon.seal(self.deps.sealer, logon_ttl(self.deps.settings)))
            self.write_json({"success": True, "state": self.state, "hello": answer})
        finally:
            await self.give_back(counted)

    async def give_back(self, counted: list) -> None:
        """Take back the hits of an attempt that was no wrong password. Best effort: with
        Redis unreachable the hits stay (they expire with their window), and the answer is
        the error that ended the attempt, not this one."""
        for bucket, key in counted:
            try:
                await self.deps.store.give_back(bucket, key)
            except Unavailable as err:
                log.warning("sign-in: a rate-limit hit was not given back: %s", err)
                return

    async def continue_logon(self, username: str, hello: Optional[dict], max_age: int) -> None:
        """Mode "0": the signed-in user goes on without a password. The logon stays as it
        is (its auth_time is when the password was given, which max_age is about; Konnect
        renewed it), and `prompt=login` or a logon older than max_age is a no: those ask
        for the password again (OpenID Connect Core 1.0 §3.1.2.1)."""
        logon = await self.current_logon()
        if logon is None or logon.identity.username != username \
                or "login" in prompts(hello) or self.too_old(logon, max_age):
            return self.no()
        self.write_json({"success": True, "state": self.state,
                         "hello": await self.hello(logon, hello) if hello is not None else None})

    async def auth_time(self, sub: str) -> int:
        return await fresh_auth_time(self.deps, sub)


class LogoffHandler(APIHandler):
    async def post(self) -> None:
        # Ends the session and the access tokens issued before now, everywhere.
        await sign_out(self, await self.logon())
        self.write_json({"success": True, "state": self.state})


class ConsentHandler(APIHandler):
    async def post(self) -> None:
        b = self.body
        client_id, redirect_uri, ref, nonce = (
            string_member(b, k) for k in ("client_id", "redirect_uri", "ref", "flow_nonce"))
        scope = b.get("scope")
        if scope is None or isinstance(scope, str):
            scopes = scopelib.parse(scope)
        elif isinstance(scope, list) and all(isinstance(s, str) and not _SURROGATE.search(s)
                                             for s in scope):
            scopes = list(dict.fromkeys(scope))
        else:
            raise _invalid("scope must be a string (or a list of strings)")
        allow = b.get("allow", False)
        if not isinstance(allow, bool):
            raise _invalid("allow must be true or false")
        logon = await self.logon()
        if logon is None or not self.state or not client_id or not redirect_uri:
            raise OAuth2Error(INVALID_REQUEST, "consent needs a signed-in user and the request")
        client = await self.deps.lookup_client(client_id, redirect_uri)
        if client is None or not client.redirect_uri_ok(redirect_uri):
            raise OAuth2Error(INVALID_REQUEST, "unknown client")
        name = consent_cookie_name(self.state, client_id, redirect_uri, ref, nonce)
        set_cookie(self, name, seal_consent(self.deps.sealer, allow=allow, scopes=scopes,
                                            sub=logon.identity.sub), max_age=CONSENT_TTL)
        if not allow:
            return self.no()
        self.write_json({"success": True, "state": self.state})


