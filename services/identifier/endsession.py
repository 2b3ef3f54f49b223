"""End session: RP-initiated logout at `/signin/v1/identifier/_/endsession`
(OpenID Connect RP-Initiated Logout 1.0 §2-§3; Konnect's EndSession:
identity/managers/identifier.go).

- `id_token_hint` is verified with our keys (its `exp` is not checked, §2); a bad hint is
  an error page. The client is the hint's `aud`, or `client_id`; both given must agree.
- `post_logout_redirect_uri` is used only when registered for that client (§3, exact
  match; Konnect matched the redirect_uris instead: fixed, with the redirect_uris as the
  fallback when a client registered no post-logout URIs). Never redirect to anything else.
  An unregistered one (or one without a client) is ignored with the client, as Konnect
  does (its identity/managers/identifier.go `EndSession` then sends the browser to the
  goodbye page): the sign-out confirmation for a signed-in user, else the signed-out page.
- A trusted client with a hint for the signed-in user and a verified URI: signed out at
  once, then redirected with `state`. Otherwise the user confirms on a page; after the
  confirmation the browser goes back to the verified URI (Konnect never returned: fixed);
  the confirmation acts only for the logon it was shown to.
- Nobody signed in: redirected at once, except for a dynamically registered client without
  an `id_token_hint` of its own: the signed-out page (no open redirector, RFC 9700 §4.11.2).
- Signing out clears the logon and browser-state cookies and writes the subject's
  not-before into the revocation list, so the logon (a copy of the cookie included) and the
  access tokens issued before stop working (signout.py).
"""

from __future__ import annotations

import logging
from typing import Optional

import tornado.web

from shared.errors import INVALID_REQUEST, OAuth2Error, add_params
from shared.origins import origin_of
from shared.sealed import SealError
from shared.session import LOGON_COOKIE, Logon
from shared.tokens import TokenError

from .authorities import trampoline, upstream_sign_out
from .pages import SigninPage
from .signout import sign_out

CONFIRM_TTL = 600
log = logging.getLogger("konnect.identifier")


class EndSessionHandler(SigninPage):
    def initialize(self, deps=None, view: str = "endsession") -> None:
        super().initialize(deps, view)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # With "no-referrer" browsers send `Origin: null` on the confirmation form's POST;
        # "same-origin" lets the origin check below see our own origin (and nothing leaks
        # to other sites).
        self.set_header("Referrer-Policy", "same-origin")

    async def get(self) -> None:
        await self.end_session()

    # Not HEAD: a GET here may sign the user out, and HEAD must be safe (RFC 9110 §9.2.1,
    # §9.3.2); tornado's stub answers 405 (with Allow: GET, POST).
    head = tornado.web.RequestHandler.head

    async def post(self) -> None:
        token = self.param("confirm")
        if token is not None:
            return await self.confirmed(token)
        await self.end_session()

    async def end_session(self) -> None:
        deps = self.deps
        hint_claims = self._hint()
        client_id = self.param("client_id")
        aud = hint_claims.get("aud") if hint_claims else None
        if isinstance(aud, list):
            aud = aud[0] if len(aud) == 1 else None
        if client_id and aud and client_id != aud:
            raise OAuth2Error(INVALID_REQUEST, "client_id does not match the id_token_hint")
        client_id = client_id or aud
        client = await deps.lookup_client(client_id, None) if client_id else None
        uri, state = self.param("post_logout_redirect_uri"), self.param("state")
        if uri is not None and (client is None or not client.post_logout_redirect_uri_ok(uri)):
            # Not from a client we can tell: no redirect, no client named on the page.
            log.info("end session: post_logout_redirect_uri not registered for client %r; "
                     "ignored", client.id if client else None)
            uri, state, client = None, None, None
        logon = await Logon.open_live(deps.sealer, deps.store, self.get_cookie(LOGON_COOKIE))
        # an ID token with `konnect/raw_sub` names the raw subject (scopes.subject)
        if logon is not None and hint_claims \
                and hint_claims.get("sub") not in (logon.identity.sub, logon.identity.raw_sub):
            raise OAuth2Error(INVALID_REQUEST, "the id_token_hint is for another user")
        if logon is None and uri and client is not None and client.dynamic \
                and not (hint_claims and aud == client.id):
            # Anyone can register a dynamic client with any post-logout URI: with nobody
            # signed in and no ID token of that client, redirecting would make the OP an
            # open redirector (RFC 9700 §4.11.2; RP-Initiated Logout 1.0 §3, §6: an
            # id_token_hint is the proof of the RP). The signed-out page instead, as the
            # authorization endpoint shows an error page to such a client before sign-in.
            await sign_out(self, logon)
            return await self._done(None, None, logon)
        if logon is None or (client is not None and client.trusted and hint_claims and uri):
            await sign_out(self, logon)
            return await self._done(uri, state, logon)
        confirm = deps.sealer.seal("endsession", {"uri": uri, "state": state,
                                                  "sub": logon.identity.sub}, CONFIRM_TTL)
        # CSP form-action also governs where the form's answer redirects to (a sign-out
        # that goes on to an authority does so from a page of ours: `trampoline`).
        self.show(client_name=client.display_name if client else "", confirm=confirm,
                  stay=uri or "/signin/v1/welcome",
                  form_origin=origin_of(uri) if uri else "")

    async def confirmed(self, token: str) -> None:
        """The user pressed "Sign out" on the confirmation page (a form of our own origin:
        the sealed token is only on that page, so a cross-site form cannot forge it)."""
        deps = self.deps
        if not self.from_issuer_origin():
            raise OAuth2Error(INVALID_REQUEST, "origin check failed")
        try:
            doc = deps.sealer.unseal("endsession", token)
        except SealError:
            raise OAuth2Error(INVALID_REQUEST, "the sign-out confirmation expired; try again") from None
        logon = await Logon.open_live(deps.sealer, deps.store, self.get_cookie(LOGON_COOKIE))
        # The confirmation was shown to one signed-in user: it acts only for that user's
        # logon (or when nobody is signed in any more), never for whoever signed in since,
        # so a confirmation token taken from one session cannot sign out another user and
        # send them to its URI (RP-Initiated Logout 1.0 §3: the logout the End-User asked for).
        if logon is not None and doc.get("sub") != logon.identity.sub:
            raise OAuth2Error(INVALID_REQUEST, "the sign-out confirmation is for another "
                              "sign-in; try again", detail="endsession confirmation sub mismatch")
        await sign_out(self, logon)
        await self._done(doc.get("uri"), doc.get("state"), logon)

    def _hint(self) -> Optional[dict]:
        raw = self.param("id_token_hint")
        if not raw:
            return None
        try:
            return self.deps.tokens.open_id_token_hint(raw)
        except TokenError:
            raise OAuth2Error(INVALID_REQUEST, "id_token_hint is invalid") from None

    async def _done(self, uri: Optional[str], state: Optional[str],
                    logon: Optional[Logon] = None) -> None:
        if uri:
            target = add_params(uri, [("state", state)] if state else [])
        else:
            target = self.deps.settings.signed_out_uri or "/signin/v1/goodbye?done=1"
        # a sign-in through an authority with end_session_enabled: signed out there too,
        # and back to the target from its answer (services/identifier/authorities.py)
        upstream = await upstream_sign_out(self, logon, target)
        if upstream:
            return trampoline(self, upstream)
        self.redirect(target)
