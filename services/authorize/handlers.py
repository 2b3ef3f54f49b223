"""The authorization endpoint (OIDC Core §3) and its decisions (Konnect's:
identity/managers/identifier.go).

No valid logon -> the identifier's sign-in page (and back here); `prompt=none` without a
logon -> `login_required`; consent needed -> the consent page, or `consent_required` with
`prompt=none`; trusted clients skip consent. Consent is not remembered beyond the flow.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

from tornado.escape import xhtml_escape

from shared import discovery, jose, scopes as scopelib
from shared.errors import (ACCESS_DENIED, CONSENT_REQUIRED, INTERACTION_REQUIRED,
                           INVALID_REQUEST, INVALID_REQUEST_OBJECT, LOGIN_REQUIRED, OAuth2Error,
                           add_params, response_location)
from shared.grants import Grant
from shared.origins import origin_of, serialized_origin
from shared.session import (BROWSER_STATE_COOKIE, LOGON_COOKIE, Logon, browser_state,
                            clear_cookie, consent_cookie_name, current_logon, new_sid,
                            open_consent, session_state, set_cookie)
from shared.tokens import TokenError
from shared.users import guest as guests
from shared.web import PageHandler

from .request import AuthRequest, parse, redirect_error, requested_subs, verified_client
from .request_object import RequestObjectError, merged_params, open_request_object

SIGNIN_PATH = "/signin/v1/identifier"
CHOOSE_PATH = "/signin/v1/chooseaccount"
CONSENT_PATH = "/signin/v1/consent"


class AuthorizeHandler(PageHandler):
    # Set while handling: the client is dynamically registered (its redirect URI is
    # anyone's), and whether the browser has a valid logon (see `write_error`).
    _dynamic_client = False
    _signed_in = False

    async def get(self) -> None:
        await self.authorize()

    async def post(self) -> None:
        await self.authorize()

    def _redirect_error(self, req: AuthRequest, error: str, description: str) -> OAuth2Error:
        return req.error(error, description, self.deps.settings.iss)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Authorization errors for a verified redirect_uri, in the request's response mode.

        - `response_mode=form_post`: errors are posted too (OAuth 2.0 Form Post Response
          Mode §2), with `state` and `iss` (RFC 9207 §2), never put in a query.
        - A dynamically registered client's redirect URI is whatever anyone registered:
          before the user has signed in, an error is a page, not an automatic redirect
          (RFC 9700 §4.11.2: the OP must not be an open redirector). Once signed in, the
          user has authenticated at the OP and errors (consent_required, access_denied)
          are redirected as usual.
        """
        err = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(err, OAuth2Error) and err.redirect_uri:
            if self._dynamic_client and not self._signed_in:
                err.redirect_uri = None  # rendered as a page by the base class
            elif err.response_mode == "form_post":
                self.set_status(200)
                return self._form_post(err.redirect_uri, err.location_params())
        super().write_error(status_code, **kwargs)

    async def authorize(self) -> None:
        deps = self.deps
        get = self.param
        signed_request = False
        if get("request") is not None:
            signed_request = _signed(get("request"))
            get = await self._request_object(get)
        client, redirect_uri = await verified_client(get, deps.lookup_client)
        self._dynamic_client = client.dynamic
        req = parse(get, client, redirect_uri, deps.settings.iss,  # form_post: write_error
                    pkce_required=deps.requires_pkce(client))
        logon = await (self._web_app_logon(req) if self._signs_in_elsewhere else self._logon(req))
        if logon is None and signed_request and deps.settings.allow_client_guests:
            guest = self._guest(req)
            if guest is not None:
                return await self._respond(req, guest, self._guest_scopes(req))
        if logon is None:
            if "none" in req.prompt:
                raise self._redirect_error(req, LOGIN_REQUIRED, "the user is not signed in")
            if self._signs_in_elsewhere:
                return self._to_web_app_sign_in(req)
            if "select_account" in req.prompt and "login" not in req.prompt \
                    and await current_logon(deps.users, await Logon.open_live(
                        deps.sealer, deps.store, self.get_cookie(LOGON_COOKIE))) is not None:
                return self._hand_off(CHOOSE_PATH, req)
            return self._hand_off(SIGNIN_PATH, req)
        scopes = await self._consented_scopes(req, logon)
        if scopes is None:
            return
        await self._respond(req, logon, scopes)

    async def _request_object(self, get):
        """The parameters with the request object's members applied (request_object.py).
        A bad object is an error page unless the query's own redirect_uri is verified."""
        deps = self.deps
        client = await deps.lookup_client(get("client_id"), get("redirect_uri"))
        if client is None:
            raise OAuth2Error(INVALID_REQUEST, "unknown client")
        self._dynamic_client = client.dynamic
        try:
            claims = open_request_object(get("request"), client, deps.settings.iss, deps.now())
            return merged_params(get, claims)
        except RequestObjectError as err:
            redirect_uri = get("redirect_uri")
            if client.redirect_uri_ok(redirect_uri):
                raise redirect_error(INVALID_REQUEST_OBJECT, str(err), redirect_uri=redirect_uri,
                                     state=get("state") or "",
                                     response_type=get("response_type") or "",
                                     response_mode=get("response_mode") or "",
                                     issuer=deps.settings.iss) from None
            raise OAuth2Error(INVALID_REQUEST_OBJECT, str(err)) from None

    @property
    def _signs_in_elsewhere(self) -> bool:
        return self.deps.users.signs_in_elsewhere

    async def _web_app_logon(self, req: AuthRequest):
        """A backend whose users sign in at a web application (`signs_in_elsewhere`: the
        cookie manager, shared/users/cookie.py): ask it whether this browser is signed in
        there. `prompt=login` sends the user to the web
        application's sign-in; `select_account` is ignored (one account: Konnect's too)."""
        if "login" in req.prompt:
            return None
        cookie = self.cookie_header
        identity = await self.deps.users.identify(
            cookie, self.request.headers.get("Accept-Language", ""),
            self.request.headers.get("User-Agent", ""))
        if identity is None:
            return None
        sid = hashlib.sha256(f"{identity.sub} {cookie}".encode()).hexdigest()[:32]
        return self._check_hint(req, Logon(identity=identity, auth_time=int(self.deps.now()),
                                           sid=sid))

    def _to_web_app_sign_in(self, req: AuthRequest) -> None:
        """`--sign-in-uri?continue=<this authorization request>&oauth=1` (Konnect's
        oidc/provider/provider.go LoginRequiredPage); the request continued without
        `prompt=login`, which the sign-in there has just satisfied (else it would loop)."""
        params = dict(req.params)
        params.pop("konnect", None)
        prompt = [p for p in sorted(req.prompt) if p != "login"]
        if prompt:
            params["prompt"] = " ".join(prompt)
        else:
            params.pop("prompt", None)
        here = discovery.url(self.deps.settings, "authorization_endpoint") + "?" + urlencode(params)
        self.redirect(add_params(self.deps.settings.sign_in_uri,
                                 [("continue", here), ("oauth", "1")]))

    async def _logon(self, req: AuthRequest):
        deps = self.deps
        logon = await Logon.open_live(deps.sealer, deps.store, self.get_cookie(LOGON_COOKIE))
        if logon is None:
            return None
        # auth_time is whole seconds (a float "now" would make every logon older than
        # max_age=0, so that sign-in could never satisfy it; Konnect ignored max_age=0, we honour it)
        if req.max_age is not None and int(deps.now()) - logon.auth_time > req.max_age:
            return None
        if req.prompt & {"login", "select_account"}:
            return None
        logon = await current_logon(deps.users, logon)
        if logon is None:  # disabled or removed since the sign-in: no session
            return None
        return self._check_hint(req, logon)

    def _guest(self, req: AuthRequest):
        """A guest the client vouches for (shared/users/guest.py), or None: the request
        asks for `konnect/guestok` and its request object, verified with the client's
        registered keys (`_request_object`), names the guest in its claims request."""
        if guests.GUEST_OK not in req.scopes:
            return None
        identity = guests.from_claims_request(req.claims)
        if identity is None:
            return None
        logon = Logon(identity=identity, auth_time=int(self.deps.now()), sid=new_sid())
        return self._check_hint(req, logon)

    def _guest_scopes(self, req: AuthRequest) -> list:
        if "consent" in req.prompt:  # Konnect: consent is not supported for guests
            raise self._redirect_error(req, INTERACTION_REQUIRED,
                                       "consent is not supported for guests")
        scopes = guests.approved_scopes(req.client, req.scopes)
        if scopes is None:
            raise self._redirect_error(req, INVALID_REQUEST, "the client does not authorize "
                                       "the konnect/guestok scope")
        return scopes

    def _check_hint(self, req: AuthRequest, logon: Logon):
        """The logon, unless the request names another user: an `id_token_hint` (OIDC Core
        §3.1.2.1) or a claims request for a `sub` value (§5.5.1: the OP MUST NOT reply
        with tokens for a different user; Konnect's oidc/provider/handlers.go). Then
        `login_required` with `prompt=none`, else None: the user signs in again."""
        deps = self.deps
        self._signed_in = True
        mine = (logon.identity.sub, logon.identity.raw_sub)
        if req.id_token_hint:
            try:
                hint = deps.tokens.open_id_token_hint(req.id_token_hint)
            except TokenError:
                raise self._redirect_error(req, INVALID_REQUEST, "id_token_hint is invalid") from None
            if hint.get("sub") not in mine:
                if "none" in req.prompt:
                    raise self._redirect_error(req, LOGIN_REQUIRED, "a different user is signed in")
                return None
        wanted = requested_subs(req.claims)
        if wanted is not None and not wanted.intersection(mine):
            if "none" in req.prompt:
                raise self._redirect_error(req, LOGIN_REQUIRED,
                                           "the requested sub is not the signed-in user")
            return None
        return logon

    def _hand_off(self, path: str, req: AuthRequest, **extra: str) -> None:
        params = dict(req.params, flow="oidc", **extra)
        params.pop("konnect", None)
        self.redirect(f"{path}?{urlencode(params)}")

    async def _consented_scopes(self, req: AuthRequest, logon: Logon):
        supported = set(scopelib.supported(self.deps.settings.identity_manager,
                                           self.deps.settings.allow_scope,
                                           self.deps.scope_definitions))
        wanted = [s for s in req.scopes if s in supported]
        if self._signs_in_elsewhere:
            return self._cookie_manager_scopes(req, wanted)
        if req.client.trusted and "consent" not in req.prompt:
            return wanted
        decision = None
        if req.konnect:
            name = consent_cookie_name(req.konnect, req.client.id, req.redirect_uri, req.state, req.nonce)
            decision = open_consent(self.deps.sealer, self.get_cookie(name))
            clear_cookie(self, name)
        if decision is not None and decision.get("sub") == logon.identity.sub:
            if not decision.get("allow"):
                raise self._redirect_error(req, ACCESS_DENIED, "the user denied the request")
            approved = set(decision.get("scope") or []) | {scopelib.OPENID}
            return [s for s in wanted if s in approved]
        if "none" in req.prompt:
            raise self._redirect_error(req, CONSENT_REQUIRED, "consent is required")
        self._hand_off(CONSENT_PATH, req)
        return None

    def _cookie_manager_scopes(self, req: AuthRequest, wanted: list) -> list:
        """Konnect's cookie manager (identity/managers/cookie.go `Authorize`) approves the
        scopes of every client without consent, and answers `prompt=consent` with
        `interaction_required` (it has no consent page). A dynamically registered client
        is anyone's: it gets `consent_required` instead of the web application's user."""
        if "consent" in req.prompt:
            raise self._redirect_error(req, INTERACTION_REQUIRED, "consent required")
        if req.client.dynamic:
            raise self._redirect_error(req, CONSENT_REQUIRED, "the cookie identity manager has "
                                       "no consent page for dynamically registered clients")
        return wanted

    async def _respond(self, req: AuthRequest, logon: Logon, scopes: list) -> None:
        deps, types = self.deps, req.types
        identity, now = logon.identity, int(deps.now())
        # After consent the claims request is narrowed to the approved scopes; a trusted
        # client gets the claims it asks for without consent (Konnect's
        # identity/managers/identifier.go).
        trusted = req.client.trusted and "consent" not in req.prompt
        claims = req.claims if trusted else scopelib.narrow_claims(req.claims, scopes)
        grant = Grant(client_id=req.client.id, identity=identity, scopes=scopes,
                      redirect_uri=req.redirect_uri, response_type=req.response_type,
                      claims=claims, nonce=req.nonce, code_challenge=req.code_challenge,
                      code_challenge_method=req.code_challenge_method,
                      auth_time=logon.auth_time, sid=logon.sid, created=now)
        params: list = []
        code = access = None
        # the client's registered alg signs the front channel's tokens as the token
        # endpoint's (services/token/grants.py), and sizes at_hash and c_hash
        alg = req.client.id_token_signed_response_alg or None
        if "code" in types:
            code = await deps.store.put_code(grant.to_record(), deps.settings.code_expiration)
            params.append(("code", code))
        if "token" in types:
            access = deps.tokens.access_token(client_id=req.client.id, identity=identity,
                                              scopes=scopes, family=grant.family, claims=claims,
                                              alg=alg)
            params += [("access_token", access.token), ("token_type", "Bearer"),
                       ("expires_in", str(deps.tokens.access_ttl))]
        if "id_token" in types:
            # without an access token the ID token carries the scopes' claims (Konnect's
            # oidc/provider/tokens.go), `kopano/gc/id` too
            extra = {} if access else {**scopelib.claims_for(scopes, scopelib.standard_claims(identity)),
                                       **scopelib.backend_claims(identity, scopes)}
            auth_time = logon.auth_time if req.max_age is not None or _wants_auth_time(req) else None
            # the token endpoint's and userinfo's `sub` too (OIDC Core §3.3.3.6, §5.3.2)
            params.append(("id_token", deps.tokens.id_token(
                client_id=req.client.id, identity=identity, sub=scopelib.subject(identity, scopes),
                nonce=req.nonce, sid=logon.sid, auth_time=auth_time,
                access_token=access.token if access else None, code=code, extra=extra,
                alg=alg)))
        state = browser_state(logon, deps.settings.iss)
        set_cookie(self, BROWSER_STATE_COOKIE, state, http_only=False)
        origin = serialized_origin(req.redirect_uri)
        if req.state:
            params.append(("state", req.state))
        params += [("scope", " ".join(scopes)),
                   ("session_state", session_state(req.client.id, origin, state)),
                   ("iss", deps.settings.iss)]
        if req.mode == "form_post":
            return self._form_post(req.redirect_uri, params)
        self.redirect(response_location(req.redirect_uri, params, fragment=req.mode == "fragment"))

    def _form_post(self, target: str, params: list) -> None:
        """OAuth 2.0 Form Post Response Mode §2: an auto-submitting page, CSP with a nonce."""
        nonce = secrets.token_urlsafe(16)
        self.set_header("Content-Security-Policy",
                        f"default-src 'none'; script-src 'nonce-{nonce}'; "
                        f"form-action {origin_of(target)}; "
                        "frame-ancestors 'none'; base-uri 'none'")
        inputs = "".join(f'<input type="hidden" name="{xhtml_escape(k)}" value="{xhtml_escape(v)}">'
                         for k, v in params)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Continue</title>"
                    f"</head><body><form method=post action=\"{xhtml_escape(target)}\">{inputs}"
                    f"<noscript><button type=submit>Continue</button></noscript></form>"
                    f"<script nonce=\"{nonce}\">document.forms[0].submit()</script></body></html>")


def _signed(request_object: str) -> bool:
    """Whether a request object is signed (not `alg: none`); `_request_object` verifies it
    with the client's keys before anything relies on this."""
    try:
        return jose.unverified_header(request_object).get("alg") not in (None, "none")
    except jose.JoseError:
        return False


def _wants_auth_time(req: AuthRequest) -> bool:
    return "auth_time" in ((req.claims or {}).get("id_token") or {})
