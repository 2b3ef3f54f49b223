"""An upstream SAML2 identity provider (Konnect's identity/authorities/saml2.go), through
pysaml2 with Debian's xmlsec1: the only importer of `saml2`. No XML signature is parsed or
checked here by hand.

- Our service provider: entity ID `entity_id` (default
  `<issuer>/signin/v1/identifier/saml2/metadata`, where its metadata is served), assertion
  consumer service `/signin/v1/identifier/saml2/acs` (HTTP-POST), single logout
  `/signin/v1/identifier/_/saml2/slo` (HTTP-Redirect), Konnect's paths. Requests are not
  signed (Konnect's SP had no key); NameID format transient, as Konnect asked.
- The IdP: its metadata from `metadata_endpoint` (fetch.py: deadline, size cap, TLS unless
  `insecure`) or a file, kept for METADATA_TTL (never past its `validUntil`); its signing
  certificates verify the answers. With `metadata_signing_certificates` (our key, not
  Konnect's) the metadata itself must be signed by one of them (`verify_metadata`, SAML 2.0
  Metadata §3): the one signature of the document, enveloped in its root, checked by
  pysaml2's SecurityContext with xmlsec1 (the rules it applies to assertions: one reference,
  to the root's ID, enveloped and exclusive-c14n transforms only, no ds:Object), with a
  `validUntil` not passed; else nothing of it is used. Without them, metadata from a file is
  the operator's own, and metadata from the network is trusted as Konnect does (TLS only),
  with a warning at start.
- An answer (SAML 2.0 Core §3.3-3.4, Profiles §4.1.4.3, §4.1.4.5): the assertion must be
  signed by the IdP (`want_assertions_signed`), its audience our entity ID, its recipient
  our ACS, NotOnOrAfter not passed, InResponseTo the request this browser started (the
  outstanding request id from the sealed flow); unsolicited answers are refused. pysaml2
  checks these; xmlsec1 verifies the signature on the element pysaml2 then reads (its fix of
  signature wrapping, CVE-2020-5390), and a signature anywhere but as the own child of the
  Response or one of its assertions is refused first (`signatures_out_of_place`: xmlsec1
  would otherwise verify a genuine assertion nested before a forged one's signature). The
  assertion id is accepted once (the caller's replay marker).
- The identity: the attribute named `identity_claim_name` (FriendlyName or Name, one value;
  Konnect read only attributes of the basic name format), and the NameID and SessionIndex
  for single logout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import logging
import secrets
import shutil
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Callable, Optional
from urllib.parse import parse_qs

from defusedxml import ElementTree as SafeElementTree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, md
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import create_metadata_string
from saml2.response import StatusError
from saml2.s_utils import UnknownPrincipal, UnsupportedBinding
from saml2.saml import NAMEID_FORMAT_TRANSIENT, NameID
from saml2.sigver import CryptoBackendXmlSec1, RSACrypto, SecurityContext, SignatureError
from saml2.time_util import str_to_time

from .fetch import MAX_BODY, UpstreamError, fetch
from .oidc import AuthorityResponseError
from .registry import Authority

log = logging.getLogger("konnect.authorities")

METADATA_TTL = 3600
ACS_PATH = "/signin/v1/identifier/saml2/acs"
SLO_PATH = "/signin/v1/identifier/_/saml2/slo"
MAX_MESSAGE = 256 * 1024  # a SAMLResponse larger than this is refused before parsing
MAX_XML = 1024 * 1024     # a message's XML, once decoded (and inflated), at most this
BASIC = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1_DIGEST = "http://www.w3.org/2000/09/xmldsig#sha1"
XMLSEC = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"
DSIG_SIGNATURE = "{http://www.w3.org/2000/09/xmldsig#}Signature"
ASSERTION = "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"


class MetadataRefused(UpstreamError):
    """The IdP's metadata arrived but is not to be trusted (log text)."""


class _MetadataSigners:
    """The key source of the SecurityContext that checks the metadata: the configured
    certificates, whoever the document says it is (pysaml2 asks its `metadata` for them)."""

    def __init__(self, certificates: tuple) -> None:
        self.bodies = [base64.encodebytes(der).decode("ascii").strip() for der in certificates]

    def certs(self, entity_id: Any, descriptor: Any, use: str = "signing") -> list:
        return [(f"metadata signer {i}", body) for i, body in enumerate(self.bodies)]


def check_post_message(message: str) -> None:
    """An HTTP-POST message is base64 of the XML itself, never deflated (SAML 2.0 Bindings
    §3.5.4). pysaml2 tries to inflate it first, without a limit: a deflated message of
    256 KiB unpacks to some 250 MB, which anybody who starts a sign-in could send. So
    what is not plain XML after the base64 is refused here, before pysaml2 sees it."""
    try:
        raw = base64.b64decode(message, validate=False)
    except (binascii.Error, ValueError):
        raise AuthorityResponseError("the message is not base64") from None
    if not raw.lstrip()[:1] == b"<":
        raise AuthorityResponseError("the message is not base64 XML (HTTP-POST is never "
                                     "deflated)")


def check_redirect_message(message: str) -> None:
    """An HTTP-Redirect message is deflated (SAML 2.0 Bindings §3.4.4.1): inflated here
    with a cap, so that pysaml2's unlimited inflating of it cannot exhaust the memory."""
    try:
        raw = base64.b64decode(message, validate=False)
        inflater = zlib.decompressobj(-15)
        xml = inflater.decompress(raw, MAX_XML)
    except (binascii.Error, ValueError, zlib.error):
        raise AuthorityResponseError("the message is not deflated base64") from None
    if inflater.unconsumed_tail:
        raise AuthorityResponseError(f"the message inflates past {MAX_XML} bytes")
    if not xml.lstrip()[:1] == b"<":
        raise AuthorityResponseError("the message is not XML")


def signatures_out_of_place(tree: Any, signable: tuple) -> Optional[str]:
    """What is wrong with where a document's ds:Signature elements are, or None.

    xmlsec1, as pysaml2 runs it, verifies the first ds:Signature it finds below the element
    whose signature is checked, in document order, while pysaml2 checks the reference of
    that element's own signature: a genuinely signed element of the same kind put before
    the own signature (in an Advice, a KeyInfo) would be verified instead, and the forged
    element around it accepted. So signatures are accepted only as the one child of an
    element of `signable` (the parsed tree's elements SAML signs here) whose ID is its own
    in the document; anything else is refused before pysaml2 looks at it."""
    if tree.tag == DSIG_SIGNATURE:
        return "the document is a bare signature"
    ids: dict = {}
    for element in tree.iter():
        if element.get("ID") is not None:
            ids[element.get("ID")] = ids.get(element.get("ID"), 0) + 1
    for element in tree.iter():
        own = [child for child in element if child.tag == DSIG_SIGNATURE]
        if not own:
            continue
        if not any(element is s for s in signable):
            return f"a signature inside {element.tag.rsplit('}', 1)[-1]}, which is not signed here"
        if len(own) > 1:
            return "an element with more than one signature"
        if not element.get("ID") or ids[element.get("ID")] != 1:
            return "a signed element without an ID of its own"
    return None


def _valid_until(root: Any) -> Optional[float]:
    value = getattr(root, "valid_until", None)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MetadataRefused(f"saml2 metadata validUntil {value[:40]!r} is not a date") from None
    if when.tzinfo is None:  # xs:dateTime without a zone: SAML times are UTC
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def verify_metadata(data: bytes, certificates: tuple, *, now: float,
                    allow_sha1: bool = False) -> Optional[float]:
    """Check the IdP's metadata before any of it is used: its `validUntil` (epoch seconds,
    returned; None when it has none) must not have passed and, with `certificates` (DER),
    its root must carry the document's only signature, made with the key of one of them.
    Raises MetadataRefused."""
    try:
        root = md.entity_descriptor_from_string(data) or md.entities_descriptor_from_string(data)
        tree = SafeElementTree.fromstring(data)
    except Exception as err:  # not XML, a DTD or entity (defusedxml), not metadata
        raise MetadataRefused(f"saml2 metadata is not SAML metadata: {type(err).__name__}") from None
    if root is None:
        raise MetadataRefused("saml2 metadata: the root is neither EntityDescriptor nor "
                              "EntitiesDescriptor")
    valid_until = _valid_until(root)
    if valid_until is not None and valid_until <= now:
        raise MetadataRefused(f"saml2 metadata expired (validUntil {root.valid_until})")
    if not certificates:
        return valid_until
    if root.signature is None:
        raise MetadataRefused("saml2 metadata is not signed (metadata_signing_certificates "
                              "is configured)")
    problem = signatures_out_of_place(tree, (tree,))
    if problem:
        raise MetadataRefused(f"saml2 metadata: {problem}")
    info = root.signature.signed_info
    if info is None:
        raise MetadataRefused("saml2 metadata: its signature has no SignedInfo")
    methods = [info.signature_method.algorithm if info.signature_method else ""]
    methods += [r.digest_method.algorithm for r in info.reference or [] if r.digest_method]
    if not allow_sha1 and (SHA1 in methods or SHA1_DIGEST in methods):
        raise MetadataRefused("saml2 metadata is signed with SHA-1 (allowed only with insecure)")
    security = SecurityContext(CryptoBackendXmlSec1(XMLSEC),
                               metadata=_MetadataSigners(certificates),
                               only_use_keys_in_metadata=True)
    try:
        security.check_signature(root, node_name=f"{root.c_namespace}:{root.c_tag}",
                                 origdoc=data.decode("utf-8"), must=True)
    except Exception as err:  # SignatureError, a schema error, ...: all refused alike
        raise MetadataRefused("saml2 metadata signature does not verify with "
                              f"metadata_signing_certificates ({type(err).__name__})") from None
    return valid_until


class SAML2Authority:
    """The one `authority_type: saml2` entry, its SP configuration and the IdP's metadata."""

    def __init__(self, authority: Authority, *, issuer: str,
                 now: Callable[[], float] = time.time, skew: int = 30) -> None:
        self.authority = authority
        base = issuer.rstrip("/")
        self.acs, self.slo = base + ACS_PATH, base + SLO_PATH
        self.now, self.skew = now, skew
        self._client: Optional[Saml2Client] = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.idp_entity_id = ""
        if not authority.metadata_signing_certificates \
                and not authority.metadata_endpoint.startswith("file://"):
            log.warning("authority %s: the signature of the SAML2 metadata from %s is not "
                        "checked (no metadata_signing_certificates): whoever can change it "
                        "at the IdP's web server or in transit can sign users in here. Name "
                        "the IdP's metadata signing certificate (docs/operations.md, 'A SAML2 "
                        "identity provider')", authority.id, authority.metadata_endpoint)

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
        """The SAML2 client with the IdP's current metadata (fetched at most once an hour,
        and again when its validUntil passes); metadata that `verify_metadata` refuses is
        not used (MetadataRefused, logged)."""
        async with self._lock:
            if self._client is not None and self.now() < self._expires:
                return self._client
            a = self.authority
            if a.metadata_endpoint.startswith("file://"):
                data = await asyncio.to_thread(_read_capped, a.metadata_endpoint[len("file://"):])
            else:
                _, data = await fetch(a.metadata_endpoint, insecure=a.insecure,
                                      headers={"Accept": "application/samlmetadata+xml"})
            try:
                valid_until = await asyncio.to_thread(
                    verify_metadata, data, a.metadata_signing_certificates, now=self.now(),
                    allow_sha1=a.insecure)
            except MetadataRefused as err:
                log.warning("authority %s: %s: refused: %s", a.id, a.metadata_endpoint, err)
                raise
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
            expires = self.now() + METADATA_TTL
            if valid_until is not None:
                expires = min(expires, valid_until)
            self._client, self._expires, self.idp_entity_id = client, expires, idps[0]
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
        check_post_message(saml_response)
        client = await self.client()

        def placed() -> Optional[str]:
            xml = client.unravel(saml_response, BINDING_HTTP_POST)  # what pysaml2 will parse
            tree = SafeElementTree.fromstring(xml)
            return signatures_out_of_place(tree, (tree, *[e for e in tree if e.tag == ASSERTION]))

        try:
            problem = await asyncio.to_thread(placed)
        except Exception as err:  # not base64, not XML, a DTD or entity (defusedxml)
            raise AuthorityResponseError(f"response refused: {type(err).__name__}") from None
        if problem:
            raise AuthorityResponseError(f"response refused: {problem}")
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
        check_redirect_message(message)
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
        check_redirect_message(message)
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
