"""Every identifier API response the test suite gets is checked against the OpenAPI
description docs/identifier-api.yaml (openapi-core).

Hooks: `install()` wraps Tornado's HTTP client (`http_client` of pytest-tornado and every
`AsyncHTTPClient`), `requests_hook` is the response hook of the `requests` sessions of
tests/support (agent.py, group.py). A response that does not match is recorded, and the
fixture `identifier_api_responses_match_the_description` of tests/conftest.py fails the test
that got it. Beyond the schema, the rules the description states in words: a method other
than POST is a 405 with `Allow: POST`, and the request's `state` comes back (in the body
of a 200, in `Kopano-Konnect-State` of a 204).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse

DESCRIPTION = Path(__file__).resolve().parents[2] / "docs" / "identifier-api.yaml"
API = "/signin/v1/identifier/_/"
OPERATIONS = ("hello", "logon", "logoff", "consent")

_found: list[str] = []


@functools.lru_cache(maxsize=1)
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(DESCRIPTION))


def is_api(url: str) -> bool:
    path = urlsplit(url).path
    return path.startswith(API) and path[len(API):] in OPERATIONS


def _why(err: BaseException) -> str:
    parts = [f"{type(err).__name__}: {err}"]
    cause = err.__cause__
    for schema_error in getattr(cause, "schema_errors", ()) or ():
        parts.append(getattr(schema_error, "message", str(schema_error)))
    return "; ".join(parts)


def problems(method: str, url: str, request_body: Optional[bytes], status: int,
             headers: Iterable[tuple[str, str]], body: Optional[bytes]) -> list[str]:
    """Why a response of the identifier API does not match the description ([] if it does;
    also [] for any other URL)."""
    if not is_api(url):
        return []
    headers = list(headers)
    named = {k.lower(): v for k, v in headers}
    where = f"{method} {urlsplit(url).path} -> {status}"
    if method.upper() != "POST":
        if status == 405 and "POST" in named.get("allow", "").split(", "):
            return []
        return [f"{where}: a method other than POST must be 405 with Allow: POST"]
    parts = urlsplit(url)
    request = MockRequest(f"{parts.scheme}://{parts.netloc}", "post", parts.path,
                          data=request_body or b"")
    response = MockResponse(body or b"", status, headers,
                            named.get("content-type", "").lower())
    found = []
    try:
        openapi().validate_response(request, response)
    except OpenAPIError as err:
        found.append(f"{where}: {_why(err)}")
    sent = _state_of(request_body)
    if sent is not None and status in (200, 204):
        echoed = named.get("kopano-konnect-state") if status == 204 else _state_of(body)
        if echoed != sent:
            found.append(f"{where}: state {sent!r} came back as {echoed!r}")
    return found


def _state_of(body: Optional[bytes]) -> Optional[str]:
    try:
        doc = json.loads(body or b"")
    except (ValueError, RecursionError):  # not JSON, or nested too deep for json
        return None
    state = doc.get("state") if isinstance(doc, dict) else None
    return state if isinstance(state, str) else None


def record(found: list[str]) -> None:
    _found.extend(found)


def take() -> list[str]:
    """What was recorded since the last call."""
    found = list(_found)
    _found.clear()
    return found


def _safely(check, *args: Any) -> None:
    try:
        record(check(*args))
    except Exception as err:  # a checker fault is a failure, never a crash of the client
        record([f"checking a response failed: {type(err).__name__}: {err}"])


def _tornado(request, response) -> list[str]:
    if response.code == 599 or not is_api(request.url):  # no HTTP answer at all
        return []
    return problems(request.method, request.url, request.body, response.code,
                    response.headers.get_all(), response.body)


def requests_hook(response, *args: Any, **kwargs: Any) -> None:
    """Response hook for `requests.Session.hooks["response"]`."""
    request = response.request
    if not is_api(request.url):
        return
    body = request.body.encode() if isinstance(request.body, str) else request.body
    _safely(problems, request.method, request.url, body, response.status_code,
            list(response.headers.items()), response.content)


def install() -> None:
    """Wrap Tornado's simple HTTP client (the only one the tests use) once."""
    from tornado.simple_httpclient import SimpleAsyncHTTPClient
    if getattr(SimpleAsyncHTTPClient.fetch_impl, "_apicheck", False):
        return
    original = SimpleAsyncHTTPClient.fetch_impl

    def fetch_impl(self, request, callback):
        def checked(response):
            _safely(_tornado, request, response)
            callback(response)
        return original(self, request, checked)

    fetch_impl._apicheck = True
    SimpleAsyncHTTPClient.fetch_impl = fetch_impl
