"""The SAML2 service provider's endpoints (Konnect's identifier/saml2.go paths); the SAML
work is shared/authorities/saml2.py's, the hop's rules authorities.py's."""

from __future__ import annotations

import asyncio

from shared.authorities.fetch import UpstreamError
from shared.authorities.oidc import AuthorityResponseError
from shared.authorities.registry import SAML2
from shared.errors import INVALID_REQUEST, OAuth2Error
from shared.session import LOGON_COOKIE, Logon

from .authorities import (AuthorityPage, finish, log, refused, take_flow, unreachable,
                          upstreams)
from .signout import sign_out

GOODBYE = "/signin/v1/goodbye"


class MetadataHandler(AuthorityPage):
    """Our SP metadata, for the IdP's administrator (docs/operations.md)."""

    async def get(self) -> None:
        saml = upstreams(self.deps).saml2
        self.set_header("Content-Type", "application/samlmetadata+xml")
        self.finish(saml.sp_metadata())

    head = get


class ACSHandler(AuthorityPage):
    """The assertion consumer service: the IdP's Response by HTTP-POST, RelayState = the
    flow's state."""

    async def post(self) -> None:
        deps = self.deps
        flow = await take_flow(self, self.param("RelayState"), SAML2)
        ups = upstreams(deps)
        authority = ups.get(flow.get("a"))
        if authority is None or ups.saml2 is None or ups.saml2.authority.id != authority.id:
            raise refused(None, "the flow's authority is no longer configured")
        try:
            facts = await ups.saml2.complete(self.param("SAMLResponse") or "", flow)
        except UpstreamError as err:
            raise unreachable(authority, err) from None
        except AuthorityResponseError as err:
            raise refused(authority, str(err)) from None
        if not await deps.store.first_use("saml2-assertion", str(facts["assertion_id"])[:256],
                                          24 * 3600, issued_at=facts.get("issued_at")):
            raise refused(authority, "the assertion was already used")
        ref = {k: facts[k] for k in ("name_id", "name_id_format", "session_index")}
        await finish(self, authority, flow, facts["value"], ref=ref)


class SLOHandler(AuthorityPage):
    """Single logout, HTTP-Redirect: the IdP's LogoutResponse to our request (then on to
    where the sign-out was going), or a LogoutRequest the IdP started (Konnect's
    writeSAMLSingleLogoutServiceRequest): signed by the IdP and for the NameID (and
    session) of this browser's logon, the logon ends here when the authority is `trusted`
    and the IdP gets our LogoutResponse; anything else goes to the sign-out page, where the
    user decides."""

    async def get(self) -> None:
        if self.param("SAMLRequest") is not None:
            return await self.idp_logout()
        if self.param("SAMLResponse") is None:
            raise OAuth2Error(INVALID_REQUEST, "Neither a logout request nor a response.")
        flow = await take_flow(self, self.param("RelayState"), "endsession")
        saml = upstreams(self.deps).saml2
        try:
            await saml.logout_answer(self.request.query)
        except (UpstreamError, AuthorityResponseError) as err:
            raise refused(saml.authority, f"single logout: {err}") from None
        self.redirect(flow.get("target") or "/signin/v1/goodbye?done=1")

    async def idp_logout(self) -> None:
        saml = upstreams(self.deps).saml2
        params = {k: self.param(k) for k in ("SAMLRequest", "RelayState", "SigAlg", "Signature")}
        try:
            request = await saml.idp_logout_request(params)
        except (UpstreamError, AuthorityResponseError) as err:
            log.info("authority %s: idp logout refused: %s", saml.authority.id, err)
            return self.redirect(GOODBYE)
        logon = await Logon.open_live(self.deps.sealer, self.deps.store, self.get_cookie(LOGON_COOKIE))
        ref = logon.authority_ref if logon is not None and isinstance(logon.authority_ref, dict) else {}
        mine = logon is not None and logon.authority == saml.authority.id \
            and ref.get("name_id") == request["name_id"] \
            and (not request["session_indexes"] or ref.get("session_index") in request["session_indexes"])
        if logon is not None and not mine:  # another user's or another sign-in's request
            log.info("authority %s: idp logout for another sign-in", saml.authority.id)
            return self.redirect(GOODBYE)
        if not saml.authority.trusted:  # Konnect: only a trusted IdP signs users out here
            return self.redirect(GOODBYE)
        await sign_out(self, logon)
        log.info("authority %s: signed out by the idp", saml.authority.id)
        self.redirect(await asyncio.to_thread(request["answer"], params.get("RelayState")))
