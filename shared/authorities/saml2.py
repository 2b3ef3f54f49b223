"""An upstream SAML2 identity provider (Konnect's identity/authorities/saml2.go), through
pysaml2 with Debian's xmlsec1: the only importer of `saml2`. No XML signature is parsed or
checked here by hand.

- Our service provider: entity ID `entity_id` (default
  `<issuer>/signin/v1/identifier/saml2/metadata`, where its metadata is served), assertion
  consumer service `/signin/v1/identifier/saml2/acs` (HTTP-POST), single logout
  `/signin/v1/identifier/_/saml2/slo` (HTTP-Redirect), Konnect's paths. Requests are not
  signed (Konnect's SP had no key); NameID format transient, as Konnect asked.
- The IdP: its metadata from `metadata_endpoint` (fetch.py: deadline, size cap, TLS unless
  `insecure`), kept for METADATA_TTL; its signing certificates verify the answers.
- An answer (SAML 2.0 Core §3.3-3.4, Profiles §4.1.4.3, §4.1.4.5): the assertion must be
  signed by the IdP (`want_assertions_signed`), its audience our entity ID, its recipient
  our ACS, NotOnOrAfter not passed, InResponseTo the request this browser started (the
  outstanding request id from the sealed flow); unsolicited answers are refused. pysaml2
  checks these; xmlsec1 verifies the signature on the element pysaml2 then reads (its fix of
  signature wrapping, CVE-2020-5390). The assertion id is accepted once (the caller's replay
  marker).
- The identity: the attribute named `identity_claim_name` (FriendlyName or Name, one value;
  Konnect read only attributes of the basic name format), and the NameID and SessionIndex
  for single logout.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import secrets
import shutil
import time
from typing import Any, Callable, Optional
from urllib.parse import parse_qs

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import create_metadata_string
from saml2.response import StatusError
from saml2.s_utils import UnknownPrincipal, UnsupportedBinding
from saml2.saml import NAMEID_FORMAT_TRANSIENT, NameID
from saml2.sigver import RSACrypto, SignatureError
from saml2.time_util import str_to_time

from .fetch import MAX_BODY, UpstreamError, fetch
from .oidc import AuthorityResponseError
from .registry import Authority

log = logging.getLogger("konnect.authorities")

METADATA_TTL = 3600
ACS_PATH = "/signin/v1/identifier/saml2/acs"
SLO_PATH = "/signin/v1/identifier/_/saml2/slo"
MAX_MESSAGE = 256 * 1024  # a SAMLResponse larger than this is refused before parsing
BASIC = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
XMLSEC = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"


class SAML2Authority:
    """The one `authority_type: saml2` entry, its SP configuration and the IdP's metadata."""

    def __init__(self, authority: Authority, *, issuer: str,
                 now: Callable[[], float] = time.time, skew: int = 30) -> None:
        self.authority = authority
        base = issuer.rstrip("/")
        self.acs, self.slo = base + ACS_PATH, base + SLO_PATH
        self.now, self.skew = now, skew
        self._client: Optional[Saml2Client] = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self.idp_entity_id = ""

    def _config(self, idp_metadata: Optional[str]) -> SPConfig:
        a = self.authority
        conf = {
            "entityid": a.entity_id,
            "xmlsec_binary": XMLSEC,
            "accepted_time_diff": self.skew,
            "service": {"sp": {
                "name": a.display_name,
                "endpoints": {
                    "assertion_consumer_service": [(self.acs, BINDING_HTTP_POST)],
                    "single_logout_service": [(self.slo, BINDING_HTTP_REDIRECT)]},
                "allow_unsolicited": False,
                "authn_requests_signed": False,
                "logout_requests_signed": False,
                "want_assertions_signed": True,
                "want_response_signed": False,
                "name_id_format": [NAMEID_FORMAT_TRANSIENT],
                "name_id_format_allow_create": True}},
        }
        if idp_metadata:
            conf["metadata"] = {"inline": [idp_metadata]}
        config = SPConfig()
        config.load(conf)
        # pysaml2 checks the signature of a LogoutRequest by HTTP-Redirect only when this
        # (IdP-side) switch is on: the IdP's logout requests must be signed
        config.setattr("idp", "want_authn_requests_signed", True)
        return config

    def sp_metadata(self) -> str:
        """Our SP metadata (served at the entity ID's URL for the IdP to register)."""
        return create_metadata_string(None, config=self._config(None), valid=None)

    async def client(self) -> Saml2Client:
        """The SAML2 client with the IdP's current metadata (fetched at most once an hour)."""
        async with self._lock:
            if self._client is not None and self.now() - self._fetched < METADATA_TTL:
                return self._client
            a = self.authority
            if a.metadata_endpoint.startswith("file://"):
                data = await asyncio.to_thread(_read_capped, a.metadata_endpoint[len("file://"):])
            else:
                _, data = await fetch(a.metadata_endpoint, insecure=a.insecure,
                                      headers={"Accept": "application/samlmetadata+xml"})
            try:
                text = data.decode("utf-8")
                config = await asyncio.to_thread(self._config, text)
                client = Saml2Client(config=config)
                # the detached signatures of the HTTP-Redirect binding are checked through
                # this backend, which pysaml2 only makes for an SP with a key of its own;
                # it verifies with the IdP's certificate and needs no key of ours
                client.sec.sec_backend = RSACrypto(None)
                idps = list(client.metadata.identity_providers())
            except Exception as err:  # pysaml2 raises many kinds for bad metadata
                raise UpstreamError(f"saml2 metadata unusable: {type(err).__name__}") from None
            if len(idps) != 1:
                raise UpstreamError(f"saml2 metadata names {len(idps)} identity providers")
            if not client.metadata.certs(idps[0], "idpsso", "signing"):
                raise UpstreamError("saml2 metadata has no signing certificate")
            self._client, self._fetched, self.idp_entity_id = client, self.now(), idps[0]
            return client

    async def authentication_request(self) -> tuple[str, dict]:
        """The HTTP-Redirect URL of an AuthnRequest, and the flow to seal (state = the
        RelayState, `rid` = the request id the answer must be InResponseTo)."""
        client = await self.client()
        state = secrets.token_urlsafe(32)
        try:
            rid, info = await asyncio.to_thread(
                client.prepare_for_authenticate, entityid=self.idp_entity_id, relay_state=state,
                binding=BINDING_HTTP_REDIRECT, nameid_format=NAMEID_FORMAT_TRANSIENT)
        except (UnsupportedBinding, UnknownPrincipal) as err:
            raise UpstreamError(f"saml2: the IdP has no HTTP-Redirect SSO service ({err})") from None
        location = dict(info["headers"])["Location"]
        return location, {"state": state, "rid": rid}

    async def complete(self, saml_response: str, flow: dict) -> dict:
        """The checked assertion's facts: `value` (the identity attribute), `assertion_id`,
        `name_id`, `name_id_format`, `session_index`, `session_not_on_or_after`."""
        if not saml_response or len(saml_response) > MAX_MESSAGE:
            raise AuthorityResponseError("no or an oversized SAMLResponse")
        client = await self.client()
        try:
            response = await asyncio.to_thread(
                client.parse_authn_request_response, saml_response, BINDING_HTTP_POST,
                {flow["rid"]: "flow"})
        except StatusError as err:
            raise AuthorityResponseError(f"the IdP answered an error status: {err}") from None
        except SignatureError as err:
            raise AuthorityResponseError(f"signature: {type(err).__name__}") from None
        except Exception as err:  # unsigned, wrong audience, expired, not InResponseTo, ...
            raise AuthorityResponseError(f"response refused: {type(err).__name__}: "
                                         f"{str(err)[:200]}") from None
        if response is None or response.assertion is None:
            raise AuthorityResponseError("no assertion")
        assertion = response.assertion
        try:  # pysaml2 keeps every subject in an in-memory cache: ours is the logon cookie
            if assertion.subject is not None and assertion.subject.name_id is not None:
                client.users.remove_person(assertion.subject.name_id)
        except Exception:  # not cached: nothing to forget
            pass
        if response.in_response_to != flow["rid"]:
            raise AuthorityResponseError("InResponseTo is not this browser's request")
        if assertion.signature is None and not getattr(response.response, "signature", None):
            raise AuthorityResponseError("the assertion is not signed")
        if assertion.issuer is None or assertion.issuer.text != self.idp_entity_id:
            raise AuthorityResponseError("the assertion's issuer is not the IdP")
        facts = {"assertion_id": assertion.id, "value": None,
                 "issued_at": _epoch(assertion.issue_instant),
                 "name_id": "", "name_id_format": "", "session_index": "",
                 "session_not_on_or_after": None}
        name = self.authority.identity_claim_name
        for statement in assertion.attribute_statement or []:
            for attribute in statement.attribute or []:
                if (attribute.friendly_name or attribute.name) != name:
                    continue
                if attribute.name_format not in (None, "", BASIC):
                    continue  # Konnect: only the basic name format names the identity
                values = [v.text for v in attribute.attribute_value or []]
                if len(values) == 1 and facts["value"] is None:
                    facts["value"] = values[0]
        subject = assertion.subject
        if subject is not None and subject.name_id is not None:
            facts["name_id"] = subject.name_id.text or ""
            facts["name_id_format"] = subject.name_id.format or ""
        for statement in assertion.authn_statement or []:
            if statement.session_index:
                facts["session_index"] = statement.session_index
            if statement.session_not_on_or_after:
                facts["session_not_on_or_after"] = statement.session_not_on_or_after
        return facts

    async def logout_location(self) -> str:
        """The IdP's HTTP-Redirect single logout service, or ""."""
        client = await self.client()
        try:
            destinations = client.metadata.single_logout_service(
                self.idp_entity_id, BINDING_HTTP_REDIRECT, "idpsso")
        except Exception:  # pysaml2: no such service or binding in the metadata
            destinations = []
        return destinations[0]["location"] if destinations else ""

    async def logout_request(self, ref: Any, state: str) -> tuple[Optional[str], str]:
        """SP-initiated single logout (SAML 2.0 Profiles §4.4.4.1, HTTP-Redirect): the URL
        and the RelayState, or (None, state) when the IdP has no such service or the sign-in
        left no NameID."""
        if not isinstance(ref, dict) or not ref.get("name_id"):
            return None, state
        destination = await self.logout_location()
        if not destination:
            return None, state
        client = await self.client()
        name_id = NameID(text=ref["name_id"], format=ref.get("name_id_format") or None)
        sessions = [ref["session_index"]] if ref.get("session_index") else None

        def build() -> str:
            rid, request = client.create_logout_request(
                destination, self.idp_entity_id, name_id=name_id, session_indexes=sessions,
                sign=False)
            info = client.apply_binding(BINDING_HTTP_REDIRECT, str(request), destination,
                                        relay_state=state)
            return dict(info["headers"])["Location"]

        return await asyncio.to_thread(build), state

    async def idp_logout_request(self, params: dict) -> dict:
        """An IdP-initiated LogoutRequest by HTTP-Redirect (SAML 2.0 Profiles §4.4.3.2),
        its detached signature verified with the IdP's certificate (SAML 2.0 Bindings
        §3.4.4.1): `name_id`, `session_indexes`, `destination`, and `answer(relay_state)`
        building the HTTP-Redirect URL of our LogoutResponse (Success)."""
        message = params.get("SAMLRequest") or ""
        if not message or len(message) > MAX_MESSAGE:
            raise AuthorityResponseError("no or an oversized SAMLRequest")
        if not params.get("Signature") or not params.get("SigAlg"):
            raise AuthorityResponseError("the logout request is not signed")
        if params["SigAlg"] == SHA1 and not self.authority.insecure:  # as Konnect
            raise AuthorityResponseError("the logout request is signed with RSA-SHA1")
        client = await self.client()
        try:
            request = await asyncio.to_thread(
                client.parse_logout_request, message, BINDING_HTTP_REDIRECT,
                params.get("RelayState"), params["SigAlg"], params["Signature"])
        except Exception as err:  # bad signature, XML, schema: all refused alike
            raise AuthorityResponseError(f"logout request refused: {type(err).__name__}") from None
        if request is None or request.message is None:
            raise AuthorityResponseError("logout request refused")
        body = request.message
        if body.issuer is None or body.issuer.text != self.idp_entity_id:
            raise AuthorityResponseError("the logout request's issuer is not the IdP")
        if body.destination and body.destination != self.slo:
            raise AuthorityResponseError("the logout request is for another destination")

        def answer(relay_state: Optional[str]) -> str:
            response = client.create_logout_response(body, [BINDING_HTTP_REDIRECT], sign=False)
            destination = client.response_args(body, [BINDING_HTTP_REDIRECT])["destination"]
            info = client.apply_binding(BINDING_HTTP_REDIRECT, str(response), destination,
                                        relay_state=relay_state, response=True)
            return dict(info["headers"])["Location"]

        return {"name_id": body.name_id.text if body.name_id is not None else "",
                "session_indexes": [i.text for i in body.session_index or []],
                "answer": answer}

    async def logout_answer(self, query: str) -> str:
        """Check the IdP's LogoutResponse (HTTP-Redirect) to our request: its status."""
        client = await self.client()
        params = parse_qs(query)
        message = (params.get("SAMLResponse") or [""])[0]
        if not message or len(message) > MAX_MESSAGE:
            raise AuthorityResponseError("no or an oversized SAMLResponse")
        try:
            response = await asyncio.to_thread(client.parse_logout_request_response, message,
                                               BINDING_HTTP_REDIRECT)
        except Exception as err:
            raise AuthorityResponseError(f"logout response refused: {type(err).__name__}") from None
        if response is None:
            raise AuthorityResponseError("logout response refused")
        return response.response.status.status_code.value if response.response.status else ""


def _read_capped(path: str) -> bytes:
    """A metadata file the operator keeps, read up to the fetches' size cap."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_BODY + 1)
    except OSError as err:
        raise UpstreamError(f"saml2 metadata file {path}: {err.strerror}") from None
    if len(data) > MAX_BODY:
        raise UpstreamError(f"saml2 metadata file {path}: larger than {MAX_BODY} bytes")
    return data


def _epoch(instant: Any) -> Optional[int]:
    """An xs:dateTime of the assertion (IssueInstant) as a unix time, or None."""
    try:
        parsed = str_to_time(instant) if instant else None
    except (ValueError, TypeError, AttributeError):  # pysaml2: AttributeError on garbage
        return None
    return calendar.timegm(parsed) if parsed else None
