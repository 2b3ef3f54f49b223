"""shared/origins.py: the origin as written (exact matches), as a browser serialises it
(session_state), normalised (whether a URI points into the OP), and the same-host check."""

from __future__ import annotations

import pytest

from shared.origins import names_host, normal_origin, origin_of, serialized_origin


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


@pytest.mark.parametrize("source,host,same", [
    ("https://idp.example.test", "idp.example.test", True),
    ("https://IDP.example.test/signin/v1/identifier", "idp.example.TEST", True),
    ("https://idp.example.test:8443", "idp.example.test:8443", True),
    ("https://idp.example.test:8443", "idp.example.test", False),
    ("https://evil.example", "idp.example.test", False),
    ("https://idp.example.test.evil.example", "idp.example.test", False),
    ("null", "idp.example.test", False),                 # an opaque origin
    ("", "", False),                                     # nothing to compare: never the same
    ("", None, False),
])
def test_names_host_compares_the_authority_of_origin_or_referer_with_host(source, host, same):
    assert names_host(source, host) is same


@pytest.mark.parametrize("uri,origin", [
    ("https://IDP.example.test/cb", "https://idp.example.test"),
    ("https://idp.example.test:443/cb", "https://idp.example.test:443"),  # not folded
    ("http://127.0.0.1:8080/cb?x=1", "http://127.0.0.1:8080"),
])
def test_origin_of_keeps_the_authority_as_written(uri, origin):
    assert origin_of(uri) == origin
