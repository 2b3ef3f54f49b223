"""Origins (RFC 6454): the normalised origin that decides whether a URI points into the OP, and
the origin as a browser serialises it (session_state)."""

from __future__ import annotations

import pytest

from shared.clients import normal_origin, serialized_origin


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
