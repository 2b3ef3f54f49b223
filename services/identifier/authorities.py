"""Sign-in through an external authority (shared/authorities), at Konnect's paths
(Konnect's identifier/identifier.go, oauth2.go, saml2.go):

- `/signin/v1/identifier/oauth2/start?authority_id=ID&<the sign-in page's query>`: off to
  the authority (either kind here; Konnect's started only OIDC ones, and the default
  authority from the sign-in page, which `SigninPage` does through `start`).
- `/signin/v1/identifier/oauth2/cb`: the upstream OP's answer (GET for the code flow, POST
  for `form_post`), and the way back from its end-session endpoint.
- `/signin/v1/identifier/saml2/metadata`, `.../saml2/acs` (POST, HTTP-POST binding) and
  `/signin/v1/identifier/_/saml2/slo` (HTTP-Redirect binding): the SAML2 service provider.

The hop is bound to the browser: a cookie `__Host-KKAF-<hash of state>` (one per sign-in
in flight, so two tabs do not overwrite each other; at most `MAX_FLOWS`) holds the sealed flow (authority,
state, nonce, PKCE verifier or SAML2 request id, the original authorization request) for
FLOW_TTL; its state must equal the answer's, and a state is accepted once (the store's
replay markers). The upstream's identity is mapped to a local username
(`Authority.local_username`: `identity_claim_name`, `identity_aliases`,
`identity_alias_required`) and resolved by the user backend without a password
(`UserBackend.resolve`), so the subject is the one a password sign-in of that user gets.
Then the browser goes back to the authorization endpoint with the original request, minus
the prompts the sign-in satisfied (what the sign-in page's script does).

Whatever the upstream sends is untrusted: failures are error pages with fixed words (the
reason goes to the log, never a token), an unreachable upstream is a 502 page, and with a
`default` authority there is no password sign-in to fall back to (`_/logon` refuses).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Any, Optional
from urllib.parse import urlencode

from tornado.escape import xhtml_escape

from shared import discovery
from shared.authorities.fetch import UpstreamError
from shared.authorities.oidc import AuthorityResponseError, OIDCAuthority
from shared.authorities.registry import OIDC, SAML2, Authority
from shared.errors import (ACCESS_DENIED, INVALID_REQUEST, SERVER_ERROR,
                           TEMPORARILY_UNAVAILABLE, OAuth2Error)
from shared.sealed import SealError
from shared.session import (HOST_PREFIX, LOGON_COOKIE, Logon, clear_cookie, logon_ttl, new_sid,
                            new_state_key, set_cookie, set_logon)
from shared.web import PageHandler, cookie_pairs

from .signout import fresh_auth_time

log = logging.getLogger("konnect.identifier.authorities")

BASE = "/signin/v1/identifier/"
START_PATH = BASE + "oauth2/start"
CALLBACK_PATH = BASE + "oauth2/cb"
SAML2_METADATA_PATH = BASE + "saml2/metadata"
SAML2_ACS_PATH = BASE + "saml2/acs"
SAML2_SLO_PATH = BASE + "_/saml2/slo"
FLOW_PREFIX = HOST_PREFIX + "KKAF-"
FLOW_TTL = 600
#: sign-ins through an authority in flight per browser: a `__Host-` cookie goes with every
#: request to the host, and a few abandoned flows (up to MAX_COOKIE each) must not push the
#: browser's requests over the proxies' header limits; a new one past this clears them
MAX_FLOWS = 4
MAX_COOKIE = 3800  # browsers keep cookies up to 4096 bytes, name and attributes included
#: parameters of the original request that keep their meaning at the upstream OP
#: (Konnect's writeOAuth2Start passes these)
PASSED = ("prompt", "max_age", "display", "ui_locales", "acr_values", "claims_locales",
          "login_hint")


def flow_cookie_name(state: str) -> str:
    digest = hashlib.sha256(state.encode("utf-8")).digest()[:16]
    return FLOW_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Upstreams:
    """The configured authorities with what they fetched (one per identifier process)."""

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        registry = getattr(deps.registry, "authorities", ()) or ()
        self.entries = {a.id: a for a in registry}
        self.default: Optional[Authority] = getattr(registry, "default", None)
        skew = getattr(deps.settings, "clock_skew", 30)
        self.oidc = {a.id: OIDCAuthority(a, now=deps.now, skew=skew)
                     for a in self.entries.values() if a.authority_type == OIDC}
        self.saml2 = None
        saml = [a for a in self.entries.values() if a.authority_type == SAML2]
        if saml:
            from shared.authorities.saml2 import SAML2Authority
            self.saml2 = SAML2Authority(saml[0], issuer=deps.settings.iss, now=deps.now, skew=skew)

    def get(self, authority_id: Any) -> Optional[Authority]:
        return self.entries.get(authority_id) if isinstance(authority_id, str) else None

    def offered(self) -> list:
        """The authorities the sign-in page offers beside the password form."""
        return list(self.entries.values())


def upstreams(deps: Any) -> Upstreams:
    found = getattr(deps, "_upstreams", None)
    if found is None:
        found = Upstreams(deps)
        deps._upstreams = found
    return found


def unreachable(authority: Authority, err: Exception) -> OAuth2Error:
    return OAuth2Error(TEMPORARILY_UNAVAILABLE,
                       f"The sign-in service {authority.display_name} cannot be reached "
                       "right now. Please try again later.", status=502,
                       detail=f"authority {authority.id}: {err}")


def refused(authority: Optional[Authority], reason: str, error: str = ACCESS_DENIED) -> OAuth2Error:
    name = authority.display_name if authority else "the sign-in service"
    return OAuth2Error(error, f"The sign-in through {name} did not succeed. Please try again.",
                       status=403 if error == ACCESS_DENIED else 400,
                       detail=f"authority {authority.id if authority else '?'}: {reason}")


def original_query(handler: Any) -> dict:
    """The sign-in page's query (the authorization request), one value per name."""
    query = {}
    for name, values in handler.request.query_arguments.items():
        if name in ("authority_id", "lang") or not values:
            continue
        try:
            query[name] = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise OAuth2Error(INVALID_REQUEST, f"parameter {name} is not UTF-8") from None
    return query


async def start(handler: Any, authority: Authority, query: dict) -> None:
    """Send the browser to `authority` for the sign-in of the request `query`."""
    deps = handler.deps
    ups = upstreams(deps)
    redirect_uri = deps.settings.iss.rstrip("/") + CALLBACK_PATH
    if authority.authority_type == OIDC:
        upstream = ups.oidc[authority.id]
        try:
            meta = await upstream.metadata()
        except UpstreamError as err:
            raise unreachable(authority, err) from None
        passed = {k: query[k] for k in PASSED if query.get(k)}
        if "prompt" in passed:  # `none` never reaches here (authorize answers it itself)
            passed["prompt"] = " ".join(p for p in passed["prompt"].split() if p != "none")
        url, flow = upstream.authentication_request(meta, redirect_uri=redirect_uri,
                                                    passed=passed)
        state = flow["state"]
    else:
        try:
            url, flow = await ups.saml2.authentication_request()
        except UpstreamError as err:
            raise unreachable(authority, err) from None
        state = flow["state"]
    flow.update({"a": authority.id, "k": authority.authority_type, "q": query})
    sealed = deps.sealer.seal("authority-flow", flow, FLOW_TTL)
    name = flow_cookie_name(state)
    if len(name) + len(sealed) > MAX_COOKIE:
        raise OAuth2Error(INVALID_REQUEST, "The request is too large for a sign-in through "
                          f"{authority.display_name}.", detail="authority flow cookie too large")
    set_flow_cookie(handler, name, sealed)
    log.info("authority %s: sign-in started", authority.id)
    handler.redirect(url)


def set_flow_cookie(handler: Any, name: str, sealed: str) -> None:
    """The cookie of a new hop; the browser's earlier ones are cleared first when it
    already carries `MAX_FLOWS` (abandoned sign-ins: each would live FLOW_TTL)."""
    flows = {n for n, _ in cookie_pairs(handler.cookie_header) if n.startswith(FLOW_PREFIX)}
    if len(flows) >= MAX_FLOWS:
        for old in flows:
            clear_cookie(handler, old)
    set_cookie(handler, name, sealed, max_age=FLOW_TTL)


async def take_flow(handler: Any, state: Optional[str], kind: str) -> dict:
    """The sealed flow of this browser for `state`, once: a missing, foreign, expired or
    replayed state is refused (RFC 6749 §10.12; OIDC Core §3.1.2.7 via state)."""
    deps = handler.deps
    if not state or len(state) > 512:
        raise refused(None, "answer without state", INVALID_REQUEST)
    name = flow_cookie_name(state)
    value = handler.get_cookie(name)
    clear_cookie(handler, name)
    try:
        flow = deps.sealer.unseal("authority-flow", value)
    except SealError as err:
        raise refused(None, f"no sign-in in flight for this state ({err.reason})",
                      INVALID_REQUEST) from None
    if not isinstance(flow, dict) or not isinstance(flow.get("state"), str) \
            or not hmac.compare_digest(flow["state"].encode(), state.encode()) \
            or flow.get("k") != kind:
        raise refused(None, "state does not match this browser's sign-in", INVALID_REQUEST)
    if not await deps.store.first_use("authority-state", state, FLOW_TTL):
        raise refused(None, "the answer was already used", INVALID_REQUEST)
    return flow


async def finish(handler: Any, authority: Authority, flow: dict, value: Any,
                 ref: Any = None) -> None:
    """Sign the browser in as the local user the upstream's identity maps to, and continue
    the original authorization request."""
    deps = handler.deps
    username = authority.local_username(value)
    if username is None:
        raise refused(authority, "identity claim missing, not a string, or without the "
                      "required alias")
    identity = await deps.users.resolve(username)
    if identity is None:
        raise refused(authority, "the upstream's user is not a (enabled) local user")
    auth_time = await fresh_auth_time(deps, identity.sub)
    logon = Logon(identity=identity, auth_time=auth_time, sid=new_sid(),
                  state_key=new_state_key(), authority=authority.id, authority_ref=ref)
    ttl = logon_ttl(deps.settings)
    sealed = logon.seal(deps.sealer, ttl)
    if ref is not None and len(sealed) + len(LOGON_COOKIE) > MAX_COOKIE:
        logon.authority_ref = None  # too large for a cookie: sign out upstream without it
        sealed = logon.seal(deps.sealer, ttl)
    set_logon(handler, sealed)
    log.info("authority %s: signed in", authority.id)
    handler.redirect(continue_authorize(deps.settings, flow.get("q") or {}))


def continue_authorize(settings: Any, query: dict) -> str:
    """The authorization request again, without `flow` and the prompts the sign-in has
    just satisfied (login, select_account), as the sign-in page's script does."""
    query = {k: v for k, v in query.items() if isinstance(v, str) and k != "flow"}
    prompt = [p for p in query.get("prompt", "").split() if p not in ("login", "select_account")]
    if prompt:
        query["prompt"] = " ".join(prompt)
    else:
        query.pop("prompt", None)
    if not query.get("client_id"):  # a sign-in without an authorization request
        return "/signin/v1/welcome"
    return discovery.url(settings, "authorization_endpoint") + "?" + urlencode(query)


class AuthorityPage(PageHandler):
    """Error pages for the hop: fixed words, the reason in the log."""

    def render_error(self, err: OAuth2Error) -> None:
        if err.status_code >= 500 and err.error == SERVER_ERROR:
            err.description = "Something went wrong. Please try again."
        super().render_error(err)


class StartHandler(AuthorityPage):
    async def get(self) -> None:
        ups = upstreams(self.deps)
        authority = ups.get(self.param("authority_id"))
        if authority is None:
            raise OAuth2Error(INVALID_REQUEST, "Unknown sign-in service.")
        await start(self, authority, original_query(self))


class CallbackHandler(AuthorityPage):
    """The upstream OP's answer: the code flow's query (GET), `form_post` (POST), or the
    way back from its end-session endpoint (GET, a flow of kind "endsession")."""

    async def get(self) -> None:
        await self.answer()

    async def post(self) -> None:
        await self.answer()

    async def answer(self) -> None:
        deps = self.deps
        state = self.param("state")
        name = flow_cookie_name(state) if state else ""
        try:
            peek = deps.sealer.unseal("authority-flow", self.get_cookie(name)) if name else None
        except SealError:
            peek = None
        if isinstance(peek, dict) and peek.get("k") == "endsession":
            flow = await take_flow(self, state, "endsession")
            return self.redirect(flow.get("target") or "/signin/v1/goodbye?done=1")
        flow = await take_flow(self, state, OIDC)
        ups = upstreams(deps)
        authority = ups.get(flow.get("a"))
        if authority is None or authority.authority_type != OIDC:
            raise refused(None, "the flow's authority is no longer configured")
        params = {}
        for key in ("code", "id_token", "access_token", "error", "iss"):
            value = self.param(key)
            if value is not None:
                params[key] = value
        upstream = ups.oidc[authority.id]
        try:
            claims, id_token = await upstream.complete(params, flow, redirect_uri=deps.settings.iss.rstrip("/")
                                             + CALLBACK_PATH)
        except UpstreamError as err:
            raise unreachable(authority, err) from None
        except AuthorityResponseError as err:
            raise refused(authority, str(err)) from None
        # what signing out upstream needs (RP-Initiated Logout 1.0 §2: id_token_hint)
        await finish(self, authority, flow, upstream.identity_value(claims),
                     ref={"id_token": id_token})


async def upstream_sign_out(handler: Any, logon: Optional[Logon], target: str) -> Optional[str]:
    """Where to send the browser to end the session at the authority `logon` came from
    (`end_session_enabled`), coming back to `target`; None when there is nothing to do."""
    if logon is None or not logon.authority:
        return None
    deps = handler.deps
    ups = upstreams(deps)
    authority = ups.get(logon.authority)
    if authority is None or not authority.end_session_enabled:
        return None
    state = secrets.token_urlsafe(32)
    try:
        if authority.authority_type == OIDC:
            upstream = ups.oidc[authority.id]
            meta = await upstream.metadata()
            ref = logon.authority_ref if isinstance(logon.authority_ref, dict) else {}
            url = upstream.end_session_url(meta, id_token=ref.get("id_token", ""),
                                           post_logout=deps.settings.iss.rstrip("/") + CALLBACK_PATH,
                                           state=state)
        else:
            url, state = await ups.saml2.logout_request(logon.authority_ref, state)
    except (UpstreamError, AuthorityResponseError) as err:
        log.warning("authority %s: no sign-out upstream: %s", authority.id, err)
        return None
    if not url:
        return None
    flow = {"state": state, "k": "endsession", "a": authority.id, "target": target}
    set_flow_cookie(handler, flow_cookie_name(state),
                    deps.sealer.seal("authority-flow", flow, FLOW_TTL))
    return url


def trampoline(handler: Any, url: str) -> None:
    """Go on to `url` from a page of our own instead of a redirect (Konnect's trampolin):
    browsers apply the CSP form-action of the page whose form started a sign-out (the RP's)
    to every redirect after it, so a redirect chain into the authority's origin would be
    blocked there. A meta refresh is a new navigation from our origin; the link is for
    browsers that do not follow it."""
    target = xhtml_escape(url)
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    handler.finish("<!doctype html><html lang=en><head><meta charset=utf-8>"
                   f"<meta http-equiv=refresh content=\"0;url={target}\"><title>Signing out</title>"
                   f"</head><body><main><p><a href=\"{target}\">Continue signing out</a></p>"
                   "</main></body></html>")


def routes(deps: Any) -> list:
    """The identifier's routes for external authorities (none without any)."""
    ups = getattr(deps.registry, "authorities", ()) or ()
    if not len(ups):
        return []
    args = {"deps": deps}
    found = [(START_PATH, StartHandler, args), (CALLBACK_PATH, CallbackHandler, args)]
    if any(a.authority_type == SAML2 for a in ups):
        upstreams(deps)  # now: what it warns about belongs to the start
        from .saml2 import ACSHandler, MetadataHandler, SLOHandler
        found += [(SAML2_METADATA_PATH, MetadataHandler, args), (SAML2_ACS_PATH, ACSHandler, args),
                  (SAML2_SLO_PATH, SLOHandler, args)]
    return found
