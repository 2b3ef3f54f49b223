"""The SAML2 IdP's metadata, checked before any of it is used (shared/authorities/saml2.py
`verify_metadata`): with `metadata_signing_certificates` it must be signed by one of them,
enveloped in its root, and not past its `validUntil`; without them, metadata from the
network is used as Konnect does, with a warning at start.

SimpleSAMLphp (tests/support/simplesamlphp.py) signs its metadata with a key of its own;
what an attacker would send instead (the same document unsigned, changed, re-signed with
another key, wrapped) comes from a loopback server of the test's own or from a file. The
identifier service runs in-process with the IdP as its `default` authority: a sign-in
either goes to the IdP's single sign-on service or is the 502 error page, never the
password form, with the reason in the log."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import requests
import tornado.httpserver
import tornado.testing
import yaml
from tornado.httpclient import AsyncHTTPClient

from services.identifier.app import make_app
from tests.support.clock import OffsetClock
from tests.support.op import ISSUER, REGISTRY, make_core, make_state
from tests.support.simplesamlphp import (ACS, Documents, SimpleSAMLphp, self_signed,
                                         sign_metadata_document, unsigned)

SIGN_IN = "/signin/v1/identifier?flow=oidc&client_id=web-rp"
REFUSED = "refused"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The IdP signing its metadata; its metadata signing certificate (`metadata`), its
    assertion certificate (`idp`: another key of the same IdP) and a stranger's key
    (`other`); the loopback server for changed copies."""
    keys = tmp_path_factory.mktemp("saml2-metadata-keys")
    idp = SimpleSAMLphp(users={"alice": ("alice-idp-pw", {"uid": ["alice"]})},
                        sp_entity_id=ISSUER + "/signin/v1/identifier/saml2/metadata",
                        acs=ISSUER + ACS, slo=ISSUER + "/signin/v1/identifier/_/saml2/slo",
                        sign_metadata=True)
    idp.start()
    documents = Documents()
    try:
        for name in ("metadata", "idp"):
            for ext in ("crt", "key"):
                shutil.copy(idp.dir / "cert" / f"{name}.{ext}", keys / f"{name}.{ext}")
        self_signed(keys, "other")
        signed = requests.get(idp.metadata_url, timeout=15).content
        assert b"<ds:Signature" in signed  # SimpleSAMLphp signed it
        yield {"idp": idp, "keys": keys, "signed": signed, "text": signed.decode(),
               "documents": documents, "sso": idp.base + "saml2/idp/SSOService.php"}
    finally:
        documents.close()
        idp.stop()


def cert(site, name: str) -> str:
    return str(site["keys"] / f"{name}.crt")


def resign(site, xml: str, key: str = "metadata", **kw) -> bytes:
    return sign_metadata_document(xml, site["keys"] / f"{key}.key", site["keys"] / f"{key}.crt",
                                  **kw)


def serve(site, name: str, body: bytes) -> str:
    site["documents"].documents[name] = body
    return site["documents"].url(name)


def kept(tmp_path: Path, body: bytes) -> str:
    path = tmp_path / "idp-metadata.xml"
    path.write_bytes(body)
    return f"file://{path}"


def timestamp(delta: dt.timedelta) -> str:
    return (dt.datetime.now(dt.timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_valid_until(site, when: str) -> str:
    return unsigned(site["text"]).replace(" entityID=", f' validUntil="{when}" entityID=', 1)


class Identifier:
    def __init__(self, base: str, core) -> None:
        self.base, self.core = base, core

    async def get(self, path: str):
        return await AsyncHTTPClient().fetch(self.base + path, raise_error=False,
                                             follow_redirects=False)

    async def sign_in(self) -> str:
        """Where the sign-in page sends the browser (the IdP's SSO URL), or REFUSED for
        the error page (checked to be one, not the password form)."""
        resp = await self.get(SIGN_IN)
        if resp.code == 302:
            return resp.headers["Location"].split("?", 1)[0]
        body = resp.body.decode()
        assert resp.code == 502 and "SimpleSAMLphp cannot be reached" in body, (resp.code, body)
        assert 'type="password"' not in body and "Traceback" not in body
        return REFUSED


@asynccontextmanager
async def identifier(tmp_path: Path, redis_url: str, metadata: str, *, certs=None,
                     insecure: bool = True, default: bool = True, now=None):
    """The identifier service with the IdP as its `default` saml2 authority, served on a
    loopback port of this test's IOLoop."""
    entry = {"id": "idp", "name": "SimpleSAMLphp", "authority_type": "saml2",
             "metadata_endpoint": metadata, "insecure": insecure, "default": default}
    if certs is not None:
        entry["metadata_signing_certificates"] = certs
    state = make_state(tmp_path / "state", registry=REGISTRY + yaml.safe_dump(
        {"authorities": [entry]}))
    core = make_core("identifier", state, redis_url, now=now)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_app(core.settings, core))
    server.add_sockets([sock])
    try:
        yield Identifier(f"http://127.0.0.1:{port}", core)
    finally:
        server.stop()
        await server.close_all_connections()
        await core.close()


def refusal_logged(caplog, reason: str) -> bool:
    return any(r.name == "konnect.authorities" and "refused" in r.getMessage()
               and reason in r.getMessage() for r in caplog.records)


# -- signed metadata and its certificate ------------------------------------------------------

@pytest.mark.gen_test
async def test_signed_metadata_is_used_with_its_certificate(site, tmp_path, redis_url, caplog):
    async with identifier(tmp_path, redis_url, site["idp"].metadata_url,
                          certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == site["sso"]
    assert not any("is not checked" in r.getMessage() for r in caplog.records)


@pytest.mark.gen_test
async def test_any_certificate_of_a_rollover_verifies(site, tmp_path, redis_url):
    """A list (the old and the new key), a file holding both, and PEM text in the entry."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(Path(cert(site, "other")).read_text() + Path(cert(site, "metadata")).read_text())
    for certs in ([cert(site, "other"), cert(site, "metadata")], str(bundle),
                  [Path(cert(site, "metadata")).read_text()]):
        async with identifier(tmp_path / "op", redis_url, site["idp"].metadata_url,
                              certs=certs) as op:
            assert await op.sign_in() == site["sso"], certs
        shutil.rmtree(tmp_path / "op")


@pytest.mark.gen_test
async def test_metadata_signed_with_another_key_is_refused(site, tmp_path, redis_url, caplog):
    """The IdP's genuine metadata checked with a stranger's certificate, or with the IdP's
    assertion certificate (not the key that signs its metadata); and a copy an attacker
    signed with their own key, checked with the right certificate."""
    cases = [(site["idp"].metadata_url, cert(site, "other")),
             (site["idp"].metadata_url, cert(site, "idp")),
             (serve(site, "attacker-signed", resign(site, unsigned(site["text"]), "other")),
              cert(site, "metadata"))]
    for metadata, certificate in cases:
        caplog.clear()
        async with identifier(tmp_path / "op", redis_url, metadata, certs=[certificate]) as op:
            assert await op.sign_in() == REFUSED
        assert refusal_logged(caplog, "signature does not verify"), (metadata, certificate)
        shutil.rmtree(tmp_path / "op")


@pytest.mark.gen_test
async def test_unsigned_metadata_is_refused_when_a_certificate_is_named(
        site, tmp_path, redis_url, caplog):
    url = serve(site, "unsigned", unsigned(site["text"]).encode())
    async with identifier(tmp_path, redis_url, url, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, "is not signed")


@pytest.mark.gen_test
async def test_metadata_changed_in_transit_is_refused(site, tmp_path, redis_url, caplog):
    """A man in the middle sends the signed metadata with the single sign-on service
    moved to a site of theirs."""
    evil = site["signed"].replace(b"/saml2/idp/SSOService.php", b"/evil/SSOService.php")
    assert evil != site["signed"]
    url = serve(site, "tampered", evil)
    async with identifier(tmp_path, redis_url, url, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, "signature does not verify")
    # the same copy is used, redirect and all, by an entry that names no certificate
    async with identifier(tmp_path / "unchecked", redis_url, url) as op:
        assert (await op.sign_in()).endswith("/evil/SSOService.php")


@pytest.mark.gen_test
async def test_metadata_past_its_valid_until_is_refused(site, tmp_path, redis_url, caplog):
    """Signed by the IdP's metadata key, but no longer valid; the same document valid for
    another day is used (so it is the date that is refused, not the signature)."""
    expired = serve(site, "expired", resign(site, with_valid_until(
        site, timestamp(-dt.timedelta(minutes=5)))))
    fresh = serve(site, "fresh", resign(site, with_valid_until(
        site, timestamp(dt.timedelta(days=1)))))
    async with identifier(tmp_path / "a", redis_url, expired, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, "expired")
    async with identifier(tmp_path / "b", redis_url, fresh, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == site["sso"]


@pytest.mark.gen_test
async def test_metadata_is_not_used_past_its_valid_until(site, tmp_path, redis_url, caplog):
    """Metadata valid for ten more minutes is used now, and refused (fetched again and
    found expired) ten minutes later, although it is refetched only hourly otherwise."""
    clock = OffsetClock()
    url = serve(site, "ten-minutes", resign(site, with_valid_until(
        site, timestamp(dt.timedelta(minutes=10)))))
    async with identifier(tmp_path, redis_url, url, certs=[cert(site, "metadata")],
                          now=clock) as op:
        assert await op.sign_in() == site["sso"]
        clock.offset = 11 * 60
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, "expired")


def entities(*parts: str, root_id: str = "_aggregate") -> str:
    return ('<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
            f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" ID="{root_id}">'
            + "".join(parts) + "</md:EntitiesDescriptor>")


def evil_entity(site, root_id: str = "_evil") -> str:
    """The IdP's entity with its single sign-on service moved and an ID of its own."""
    body = unsigned(site["text"]).replace("/saml2/idp/SSOService.php", "/evil/SSOService.php")
    return re.sub(r' ID="[^"]+"', f' ID="{root_id}"', body, count=1)


def genuine(site) -> str:
    return site["text"].split("?>", 1)[1].strip()


def wrapped_in_unsigned_entities(site) -> bytes:
    """The genuine signed entity, inside an unsigned EntitiesDescriptor that lists a
    forged entity first."""
    return entities(evil_entity(site), genuine(site)).encode()


def signature_moved_to_the_root(site) -> bytes:
    """The genuine signature (over the genuine entity, by its ID) moved up to a new root
    that also lists a forged entity."""
    own = re.search(r"<ds:Signature>.*?</ds:Signature>", genuine(site), re.S).group(0)
    return entities(own, evil_entity(site), unsigned(site["text"])).encode()


def genuine_nested_before_a_forged_signature(site) -> bytes:
    """A forged entity whose own (forged) signature comes after the genuine signed entity,
    carried in a KeyInfo: xmlsec1 looks for the first signature below the forged root."""
    evil = evil_entity(site)
    own = re.search(r"<ds:Signature>.*?</ds:Signature>", genuine(site), re.S).group(0)
    rid = re.search(r' ID="([^"]+)"', genuine(site)).group(1)
    forged = own.replace(f'URI="#{rid}"', 'URI="#_evil"')
    idpsso = re.search(r"<md:IDPSSODescriptor.*?</md:IDPSSODescriptor>", evil, re.S).group(0)
    carrying = idpsso.replace("<ds:X509Data>", genuine(site) + "<ds:X509Data>", 1)
    head, rest = evil.split(">", 1)
    return (head + ">" + carrying + forged + rest.replace(idpsso, "")).encode()


@pytest.mark.parametrize("wrap, reason", [
    (wrapped_in_unsigned_entities, "is not signed"),
    (signature_moved_to_the_root, "signature does not verify"),
    (genuine_nested_before_a_forged_signature, "a signature inside EntityDescriptor"),
])
@pytest.mark.gen_test
async def test_wrapped_metadata_is_refused(site, tmp_path, redis_url, caplog, wrap, reason):
    url = serve(site, wrap.__name__, wrap(site))
    async with identifier(tmp_path, redis_url, url, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, reason)


@pytest.mark.gen_test
async def test_a_signed_aggregate_is_used(site, tmp_path, redis_url):
    """A federation's EntitiesDescriptor signed at its root (Shibboleth, eduGAIN), holding
    the IdP's entity."""
    aggregate = resign(site, entities(unsigned(site["text"])))
    url = serve(site, "aggregate", aggregate)
    async with identifier(tmp_path, redis_url, url, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == site["sso"]


@pytest.mark.gen_test
async def test_sha1_signed_metadata_is_refused_unless_insecure(site, tmp_path, redis_url, caplog):
    body = resign(site, unsigned(site["text"]), sha1=True)
    async with identifier(tmp_path / "a", redis_url, kept(tmp_path, body), insecure=False,
                          certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
    assert refusal_logged(caplog, "SHA-1")
    async with identifier(tmp_path / "b", redis_url, kept(tmp_path, body), insecure=True,
                          certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == site["sso"]


@pytest.mark.gen_test
async def test_a_certificate_applies_to_metadata_from_a_file_too(site, tmp_path, redis_url):
    async with identifier(tmp_path / "a", redis_url, kept(tmp_path, site["signed"]),
                          insecure=False, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == site["sso"]
    async with identifier(tmp_path / "b", redis_url,
                          kept(tmp_path, unsigned(site["text"]).encode()),
                          insecure=False, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED


# -- without a certificate --------------------------------------------------------------------

def not_checked_warnings(caplog) -> list:
    return [r for r in caplog.records if r.name == "konnect.authorities"
            and r.levelname == "WARNING" and "is not checked" in r.getMessage()]


@pytest.mark.gen_test
async def test_network_metadata_without_a_certificate_works_with_a_warning_at_start(
        site, tmp_path, redis_url, caplog):
    """What Konnect does (TLS only): unsigned metadata over the network is used, and the
    start warns that its signature is not checked."""
    url = serve(site, "plain", unsigned(site["text"]).encode())
    async with identifier(tmp_path, redis_url, url) as op:
        assert [url in r.getMessage() for r in not_checked_warnings(caplog)] == [True]
        assert await op.sign_in() == site["sso"]


@pytest.mark.gen_test
async def test_metadata_from_a_file_without_a_certificate_is_the_operators_own(
        site, tmp_path, redis_url, caplog):
    async with identifier(tmp_path, redis_url, kept(tmp_path, unsigned(site["text"]).encode()),
                          insecure=False) as op:
        assert await op.sign_in() == site["sso"]
    assert not_checked_warnings(caplog) == []


@pytest.mark.gen_test
async def test_expired_metadata_is_refused_without_a_certificate_too(site, tmp_path, redis_url):
    body = with_valid_until(site, timestamp(-dt.timedelta(minutes=5))).encode()
    async with identifier(tmp_path, redis_url, kept(tmp_path, body), insecure=False) as op:
        assert await op.sign_in() == REFUSED


# -- no way around a refusal ------------------------------------------------------------------

@pytest.mark.gen_test
async def test_refused_metadata_leaves_no_password_sign_in(site, tmp_path, redis_url):
    """An SSO-only site whose IdP metadata is refused: the error page, and `_/logon`
    takes no password; without `default`, starting the sign-in at the IdP is the error
    page too."""
    url = serve(site, "unsigned", unsigned(site["text"]).encode())
    async with identifier(tmp_path / "a", redis_url, url, certs=[cert(site, "metadata")]) as op:
        assert await op.sign_in() == REFUSED
        resp = await AsyncHTTPClient().fetch(
            op.base + "/signin/v1/identifier/_/logon", method="POST", raise_error=False,
            headers={"Kopano-Konnect-XSRF": "1", "Origin": ISSUER,
                     "Content-Type": "application/json"},
            body='{"state": "s", "params": ["alice", "wonderland", "1"]}')
        assert resp.code == 403
    async with identifier(tmp_path / "b", redis_url, url, certs=[cert(site, "metadata")],
                          default=False) as op:
        resp = await op.get("/signin/v1/identifier/oauth2/start?authority_id=idp")
        assert resp.code == 502 and "cannot be reached" in resp.body.decode()
