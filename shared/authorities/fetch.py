"""Every request to an upstream authority: a deadline, a size cap, no redirects.

Discovery documents, JWKS, token responses and SAML2 metadata come from another
organisation's server: each answer is read up to MAX_BODY bytes within TIMEOUT seconds
(connect within CONNECT_TIMEOUT), redirects are not followed (an upstream that moved is a
configuration change, not something to follow silently), and a failure is an
`UpstreamError` whose text is for the log, never for the browser. TLS is verified against
the system's trust store (OpenSSL's defaults, so `SSL_CERT_FILE` works) unless the
authority is `insecure`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..jose import parse_json

log = logging.getLogger("konnect.authorities")

MAX_BODY = 512 * 1024
CONNECT_TIMEOUT = 5.0
TIMEOUT = 10.0
USER_AGENT = "konnect-py authorities"


class UpstreamError(Exception):
    """The upstream could not be reached or answered something unusable (log text)."""


async def fetch(url: str, *, insecure: bool = False, method: str = "GET",
                body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
                max_size: int = MAX_BODY, accept_error: bool = False) -> tuple[int, bytes]:
    """(status, body) of one request. `accept_error`: 4xx answers are returned (a token
    endpoint's JSON error), not raised."""
    if urlsplit(url).scheme not in ("https", "http"):
        raise UpstreamError(f"not an http(s) URL: {url[:120]!r}")
    client = AsyncHTTPClient(force_instance=True, max_body_size=max_size,
                             max_buffer_size=max_size)
    request = HTTPRequest(url, method=method, body=body,
                          headers={"User-Agent": USER_AGENT, **(headers or {})},
                          connect_timeout=CONNECT_TIMEOUT, request_timeout=TIMEOUT,
                          follow_redirects=False, validate_cert=not insecure,
                          decompress_response=False)
    try:
        response = await client.fetch(request, raise_error=False)
    except Exception as err:  # DNS, TLS, refused, too large: all are "unreachable"
        raise UpstreamError(f"{method} {url[:200]}: {type(err).__name__}: {err}") from None
    finally:
        client.close()
    if response.code == 599 or response.error is not None and not isinstance(
            response.error, HTTPClientError):
        raise UpstreamError(f"{method} {url[:200]}: {response.error}")
    if response.code >= 500 or (response.code >= 300 and not accept_error) \
            or (300 <= response.code < 400):
        raise UpstreamError(f"{method} {url[:200]}: HTTP {response.code}")
    data = response.body or b""
    if len(data) > max_size:
        raise UpstreamError(f"{method} {url[:200]}: answer larger than {max_size} bytes")
    return response.code, data


async def fetch_json(url: str, **kwargs: Any) -> tuple[int, dict]:
    """(status, object) of a JSON answer (depth-limited parsing); anything else raises."""
    status, data = await fetch(url, headers={"Accept": "application/json",
                                             **kwargs.pop("headers", {})}, **kwargs)
    try:
        doc = parse_json(data)
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError):
        raise UpstreamError(f"{url[:200]}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise UpstreamError(f"{url[:200]}: the answer is not a JSON object")
    return status, doc
