"""shared/origins.py: the origin as written (exact matches), as a browser serialises it
(session_state), normalised (whether a URI points into the OP), and the same-host check."""

from __future__ import annotations

import pytest

from shared.origins import normal_origin, origin_of, same_origin, serialized_origin


@pytest.mark.parametrize("uri,expected", [
    ("https://IDP.example.test:443/x", "https://idp.example.test:443"),
    ("https://idp.example.test/x", "https://idp.example.test:443"),
    ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example:443"),
    ("https://b%C3%BCcher.example/", "https://xn--bcher-kva.example:443"),
    ("https://0x7f.0.0.1:8/", "https://localhost:8"),
    ("https://[0:0::1]:8/", "https://localhost:8"),
    ("https://[2001:DB8::1]/", "https://[2001:db8::1]:443"),
    ("com.example.app:/cb", "com.example.app:"),
    ("https://a%2fb.example/", None), ("https://host:99999/", None), ("https://1.2.3.256/", None),
])
def test_normal_origin(uri, expected):
    assert normal_origin(uri) == expected


@pytest.mark.parametrize("uri,origin", [
    ("https://RP.Example.test:443/cb", "https://rp.example.test"),
    ("HTTPS://rp.example.test/cb?x=1", "https://rp.example.test"),
    ("https://rp.example.test:8443/cb", "https://rp.example.test:8443"),
    ("http://rp.example.test:80/cb", "http://rp.example.test"),
    ("http://rp.example.test:443/cb", "http://rp.example.test:443"),
    ("http://LOCALHOST:8080/cb", "http://localhost:8080"),
    ("http://127.0.0.1/cb", "http://127.0.0.1"),          # loopback names are not folded
    ("http://[::1]:8080/cb", "http://[::1]:8080"),
    ("https://[2001:DB8::1]:443/cb", "https://[2001:db8::1]"),
    ("https://Bücher.example/cb", "https://xn--bcher-kva.example"),
    ("com.example.app:/cb", "com.example.app:"),
])
def test_serialized_origin(uri, origin):
    assert serialized_origin(uri) == origin


ISSUER = "https://idp.example.test"


@pytest.mark.parametrize("source,issuer,same", [
    (ISSUER, ISSUER, True),
    ("https://IDP.example.test/signin/v1/identifier?x=1", ISSUER, True),   # a Referer
    ("https://idp.example.test:443", ISSUER, True),                        # the default port
    (ISSUER, ISSUER + "/konnect", True),                                   # an issuer with a path
    ("https://idp.example.test:8443", "https://idp.example.test:8443/", True),
    ("https://xn--bcher-kva.example", "https://bücher.example", True),     # IDNA, as browsers
    # the same host, another origin: scheme, port, subdomain, a trailing dot
    ("http://idp.example.test", ISSUER, False),
    ("http://idp.example.test:443", ISSUER, False),
    ("https://idp.example.test:8443", ISSUER, False),
    (ISSUER, "https://idp.example.test:8443", False),
    ("wss://idp.example.test", ISSUER, False),
    ("https://sub.idp.example.test", ISSUER, False),
    ("https://idp.example.test.", ISSUER, False),
    ("https://idp.example.test.evil.example", ISSUER, False),
    ("https://evil.example", ISSUER, False),
    ("http://127.0.0.1:8443", "https://localhost:8443", False),            # loopback not folded
    ("https://idp.example.test:x", ISSUER, False),                         # no port at all
    ("https://idp.example.test:99999", ISSUER, False),
    ("null", ISSUER, False),                                               # an opaque origin
    ("idp.example.test", ISSUER, False),
    ("//idp.example.test", ISSUER, False),
    ("", ISSUER, False),
    (ISSUER, "", False),
])
def test_same_origin_compares_scheme_host_and_port_with_the_issuers(source, issuer, same):
    assert same_origin(source, issuer) is same


@pytest.mark.parametrize("uri,origin", [
    ("https://IDP.example.test/cb", "https://idp.example.test"),
    ("https://idp.example.test:443/cb", "https://idp.example.test:443"),  # not folded
    ("http://127.0.0.1:8080/cb?x=1", "http://127.0.0.1:8080"),
])
def test_origin_of_keeps_the_authority_as_written(uri, origin):
    assert origin_of(uri) == origin
