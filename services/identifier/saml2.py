"""The SAML2 service provider's endpoints (Konnect's identifier/saml2.go paths); the SAML
work is shared/authorities/saml2.py's, the hop's rules authorities.py's."""

from __future__ import annotations

from shared.authorities.fetch import UpstreamError
from shared.authorities.oidc import AuthorityResponseError
from shared.authorities.registry import SAML2
from shared.errors import INVALID_REQUEST, OAuth2Error

from .authorities import AuthorityPage, finish, refused, take_flow, unreachable, upstreams


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
                                          24 * 3600):
            raise refused(authority, "the assertion was already used")
        ref = {k: facts[k] for k in ("name_id", "name_id_format", "session_index")}
        await finish(self, authority, flow, facts["value"], ref=ref)


class SLOHandler(AuthorityPage):
    """Single logout, HTTP-Redirect: the IdP's LogoutResponse to our request (then on to
    where the sign-out was going). IdP-initiated LogoutRequests are not handled."""

    async def get(self) -> None:
        if self.param("SAMLResponse") is None:
            raise OAuth2Error(INVALID_REQUEST, "Single logout requests from the identity "
                              "provider are not supported; sign out here instead.")
        flow = await take_flow(self, self.param("RelayState"), "endsession")
        saml = upstreams(self.deps).saml2
        try:
            await saml.logout_answer(self.request.query)
        except (UpstreamError, AuthorityResponseError) as err:
            raise refused(saml.authority, f"single logout: {err}") from None
        self.redirect(flow.get("target") or "/signin/v1/goodbye?done=1")
