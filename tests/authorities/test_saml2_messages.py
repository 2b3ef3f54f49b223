"""The SAML2 messages that reach pysaml2 are bounded once decoded: HTTP-POST messages are
plain base64 XML, HTTP-Redirect messages inflate to at most `MAX_XML` bytes (pysaml2 itself
inflates without a limit)."""

from __future__ import annotations

import base64
import zlib

import pytest

from shared.authorities.oidc import AuthorityResponseError
from shared.authorities.saml2 import MAX_XML, check_post_message, check_redirect_message


def deflated(data: bytes) -> str:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(deflater.compress(data) + deflater.flush()).decode()


def test_a_post_message_must_be_plain_base64_xml():
    check_post_message(base64.b64encode(b"  <samlp:Response/>").decode())
    for message in (deflated(b"<samlp:Response/>"), base64.b64encode(b"no xml").decode()):
        with pytest.raises(AuthorityResponseError):
            check_post_message(message)


def test_a_redirect_message_is_inflated_with_a_cap():
    check_redirect_message(deflated(b"<samlp:LogoutRequest/>" + b" " * (MAX_XML - 100)))
    bomb = deflated(b"<x>" + b"\\0" * (64 * MAX_XML))  # 64 MiB in a few dozen KiB
    assert len(bomb) < 200_000
    with pytest.raises(AuthorityResponseError, match="inflates past"):
        check_redirect_message(bomb)
    for message in ("not base64 !!", base64.b64encode(b"<x/>").decode(), deflated(b"no xml")):
        with pytest.raises(AuthorityResponseError):
            check_redirect_message(message)
