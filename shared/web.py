"""The base request handler every service builds on.

Owns: security headers, `Cache-Control: no-store`, request ids, the client address
behind trusted proxies, single-valued parameters and cookies, the request body's media
type, JSON bodies, CORS for endpoints any origin may call (`CORSHandler`), and rendering of
`OAuth2Error` as JSON, as a redirect (only to a verified redirect_uri) or as a page.
Internal detail goes to the log, never to the client.
"""

from __future__ import annotations

import html
import ipaddress
import itertools
import json
import logging
import re
import secrets
from typing import Any, Awaitable, Iterable, Optional

import orjson
import tornado.web

from .errors import (INVALID_REQUEST, METHOD_NOT_ALLOWED, NOT_FOUND, REQUEST_TOO_LARGE,
                     SERVER_ERROR, TEMPORARILY_UNAVAILABLE, OAuth2Error, Unavailable)
from .jose import parse_json
from .origins import same_origin

log = logging.getLogger("konnect.web")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._@-]{8,64}$")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
_HTTP_ERRORS = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: REQUEST_TOO_LARGE}
_DESCRIPTIONS = {
    NOT_FOUND: "not found",
    METHOD_NOT_ALLOWED: "method not allowed",
    REQUEST_TOO_LARGE: "request too large",
    SERVER_ERROR: "internal error",
    TEMPORARILY_UNAVAILABLE: "the service is temporarily unavailable, try again later",
}


_RID_PREFIX = secrets.token_hex(4)  # this process's; ids are unique, not secret
_RID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    """A request id for a request that brought none: 8 random hex digits fixed per process
    and a counter (cheaper than fresh randomness per request; ids are not secrets)."""
    return f"{_RID_PREFIX}{next(_RID_COUNTER):08x}"


def parse_networks(values: Iterable[str]) -> tuple:
    """`--trusted-proxy` values (IP or CIDR) as networks; invalid ones are refused by config."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def as_oauth2_error(exc: BaseException | None) -> OAuth2Error:
    """Map any exception to the error the client sees; nothing internal leaks."""
    if isinstance(exc, OAuth2Error):
        return exc
    if isinstance(exc, Unavailable):
        return OAuth2Error(TEMPORARILY_UNAVAILABLE, _DESCRIPTIONS[TEMPORARILY_UNAVAILABLE],
                           retry_after=getattr(exc, "retry_after", 5))
    if isinstance(exc, tornado.web.HTTPError):
        if exc.status_code in _HTTP_ERRORS:
            error = _HTTP_ERRORS[exc.status_code]
            return OAuth2Error(error, _DESCRIPTIONS[error])
        if 400 <= exc.status_code < 500:
            return OAuth2Error(INVALID_REQUEST, "malformed request", status=exc.status_code)
    return OAuth2Error(SERVER_ERROR, _DESCRIPTIONS[SERVER_ERROR])


class AmbiguousCookie(OAuth2Error):
    """The request carries a cookie name more than once (`single_cookie`)."""

    def __init__(self, name: str, count: int) -> None:
        super().__init__(
            INVALID_REQUEST, "This browser sent a sign-in cookie of this site more than once "
            "(another site may have set one). Clear this site's cookies and try again.",
            detail=f"cookie {name} sent {count} times")


def cookie_pairs(header: str) -> list[tuple[str, str]]:
    """The `name=value` pairs of a Cookie header, in the order sent (RFC 6265 §4.2.1, §5.4:
    pairs separated by `;`, name and value trimmed); a pair without `=` names nothing.
    Values are taken as they are (no unquoting: none of our values is quoted)."""
    pairs = []
    for item in header.split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            pairs.append((name.strip(), value.strip()))
    return pairs


def single_cookie(header: str, name: str) -> Optional[str]:
    """The value of the cookie `name`, None when absent; `AmbiguousCookie` when the header
    carries the name more than once. A browser sends every cookie whose domain and path
    match, and several of one name when another path or a parent domain set one too (a
    sibling subdomain can: `Domain=`); which one is ours cannot be told from the request
    (RFC 6265 §8.4, §8.6), so no reader picks one by order (Tornado's parser keeps one)."""
    values = [v for n, v in cookie_pairs(header) if n == name]
    if len(values) > 1:
        raise AmbiguousCookie(name, len(values))
    return values[0] if values else None


class BaseHandler(tornado.web.RequestHandler):
    """Plumbing shared by every endpoint. Dependencies arrive through `initialize`."""

    # Content-Security-Policy for responses that are not HTML pages.
    csp = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

    #: whether this endpoint may sign, verify, seal or open anything (not the health check,
    #: metrics or the JSON 404)
    uses_keys = True

    def initialize(self, deps: Any = None) -> None:
        self.deps = deps

    def prepare(self) -> Optional[Awaitable[None]]:
        """Without a configured signing key or encryption secret, the group's shared ephemeral
        ones are confirmed with Redis before the handler runs (shared/ephemeral.py; Tornado
        waits for the awaitable returned here): a 503 when Redis cannot answer. Nothing to
        wait for otherwise. Subclasses that override this return what it returns."""
        shared = getattr(self.deps, "shared_material", None)
        if shared is not None and self.uses_keys:
            return shared.ensure()
        return None

    def compute_etag(self) -> None:
        """No ETag: answers are `no-store` (RFC 9111 §5.2.2.5), so a validator would only
        cost a SHA-1 of every body. The public documents (discovery, JWKS) have one."""
        return None

    def set_default_headers(self) -> None:
        # Survives send_error()'s clear(): every answer, errors included, carries these.
        self.clear_header("Server")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", self.csp)
        self.set_header("X-Request-Id", self.request_id)

    # --- request facts

    @property
    def request_id(self) -> str:
        """The caller's X-Request-Id when well-formed (so ids follow a request across
        services), else a new random one."""
        rid = getattr(self, "_request_id", None)
        if rid is None:
            given = self.request.headers.get("X-Request-Id", "")
            rid = given if _REQUEST_ID.match(given) else _new_request_id()
            self._request_id = rid
        return rid

    @property
    def trusted_proxies(self) -> tuple:
        deps = self.deps
        return getattr(deps, "trusted_networks", ()) if deps is not None else ()

    def _from_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)

    @property
    def client_ip(self) -> str:
        """The client address. X-Forwarded-For is believed only when the peer is a trusted
        proxy, and then only up to the first hop that is not itself trusted (RFC 9700 §4.13)."""
        ip = getattr(self, "_client_ip", None)
        if ip is None:
            ip = self._client_ip = self._find_client_ip()
        return ip

    def _find_client_ip(self) -> str:
        peer = self.request.remote_ip or ""
        if not self._from_trusted(peer):
            return peer
        hops = [h.strip() for h in self.request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._from_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer
        return peer

    @property
    def forwarded_proto(self) -> str:
        """The scheme the client used: X-Forwarded-Proto only from a trusted proxy."""
        if self._from_trusted(self.request.remote_ip or ""):
            proto = self.request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
            if proto in ("http", "https"):
                return proto
        return self.request.protocol

    def from_issuer_origin(self) -> bool:
        """Whether the request comes from a page of the issuer's origin: its `Origin`, else
        its `Referer` (`origins.same_origin`), the origin check of the identifier API and
        of the end-session confirmation."""
        source = self.request.headers.get("Origin") or self.request.headers.get("Referer")
        return same_origin(source or "", self.deps.settings.iss)

    def param(self, name: str, default: str | None = None) -> str | None:
        """One query/form parameter; sent more than once is `invalid_request` (RFC 6749 §3.1)."""
        values = self.request.query_arguments.get(name, []) + \
            self.request.body_arguments.get(name, [])
        if len(values) > 1:
            raise OAuth2Error(INVALID_REQUEST, f"parameter {name} given more than once")
        if not values:
            return default
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise OAuth2Error(INVALID_REQUEST, f"parameter {name} is not UTF-8") from None

    @property
    def cookie_header(self) -> str:
        """Every Cookie field of the request as one header (HTTP/2 may split it: RFC 9113
        §8.2.3; Tornado's `headers.get` would join the fields with commas)."""
        return "; ".join(self.request.headers.get_list("Cookie"))

    def get_cookie(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A cookie of the request, refused when sent more than once (`single_cookie`):
        every cookie the services read comes through here, never `self.cookies`."""
        value = single_cookie(self.cookie_header, name)
        return default if value is None else value

    def require_media_type(self, expected: str) -> None:
        """`invalid_request` unless the body's media type (Content-Type without its
        parameters, case-insensitive: RFC 9110 §8.3.1) is `expected`."""
        media_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != expected:
            raise OAuth2Error(INVALID_REQUEST, f"expected {expected}")

    def json_body(self) -> dict:
        """The request body as a JSON object, or `invalid_request`."""
        self.require_media_type(JSON)
        try:
            body = parse_json(self.request.body or b"")  # any malformed body, nesting too
        except ValueError:
            raise OAuth2Error(INVALID_REQUEST, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise OAuth2Error(INVALID_REQUEST, "body must be a JSON object")
        return body

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(obj))  # compact UTF-8 JSON, as json.dumps but ~10x cheaper

    # --- errors

    #: the methods this endpoint answers, for the `Allow` of its 405s; empty: the methods
    #: the class implements (handlers whose `prepare` refuses stub methods set it)
    allow: tuple = ()

    def allowed_methods(self) -> tuple:
        if self.allow:
            return self.allow
        base = tornado.web.RequestHandler
        return tuple(m for m in self.SUPPORTED_METHODS
                     if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # clear() drops the headers set so far; an `Allow` set before raising a 405 stays
        self._allow = self._headers.get("Allow")
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = as_oauth2_error(exc)
        if exc is None and status_code != 500:  # send_error(status) without an exception
            err = as_oauth2_error(tornado.web.HTTPError(status_code))
        self.set_status(err.status_code)
        for name, value in err.headers():
            self.set_header(name, value)
        if err.status_code == 405:  # RFC 9110 §15.5.6: a 405 MUST carry Allow
            self.set_header("Allow", getattr(self, "_allow", None)
                            or ", ".join(self.allowed_methods()))
        if err.redirect_uri:
            self.redirect(err.location())
            return
        self.render_error(err)

    def render_error(self, err: OAuth2Error) -> None:
        """JSON rendering (token, userinfo, identifier API); pages override this."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(err.to_dict(), separators=(",", ":")))

    def log_exception(self, typ, value, tb) -> None:  # noqa: ANN001 (tornado's signature)
        summary = f"{self.request.method} {self.request.path} rid={self.request_id}"
        if isinstance(value, OAuth2Error):
            log.info("%s -> %s %s%s", summary, value.status_code, value.error,
                     f" ({value.detail})" if value.detail else "")
        elif isinstance(value, Unavailable):
            log.warning("%s -> 503 dependency unavailable: %s", summary, value)
        elif isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            log.info("%s -> %s", summary, value.status_code)
        else:
            # No stack trace at error level: it may carry request data. Debug has it.
            log.error("%s -> 500 unexpected %s: %s", summary, typ.__name__, value)
            log.debug("traceback for rid=%s", self.request_id, exc_info=(typ, value, tb))


class CORSHandler(BaseHandler):
    """An endpoint any web origin may call (the Fetch standard's CORS protocol), as
    Konnect's token, userinfo, discovery and JWKS endpoints: `Access-Control-Allow-Origin:
    *` on every answer and never credentials (these endpoints read no cookies, so `*`
    exposes nothing). The preflight (`OPTIONS`) answers 204 with the endpoint's methods
    (`allowed_methods`, as in its 405's `Allow`) and the request headers it declares."""

    #: the request headers a cross-origin caller may send (Access-Control-Allow-Headers)
    cors_headers: tuple = ("Content-Type",)
    #: seconds a browser may keep the preflight's answer
    cors_max_age = 600

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Access-Control-Allow-Origin", "*")

    def cors_allowed_headers(self) -> list:
        """The preflight's Access-Control-Allow-Headers: `cors_headers` unless overridden."""
        return list(self.cors_headers)

    def options(self) -> None:
        self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed_methods()))
        self.set_header("Access-Control-Allow-Headers", ", ".join(self.cors_allowed_headers()))
        self.set_header("Access-Control-Max-Age", str(self.cors_max_age))
        self.set_status(204)
        self.finish()


class PageHandler(BaseHandler):
    """HTML endpoints: errors become a small page, never a redirect to anything unverified."""

    csp = "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; " \
          "base-uri 'none'; form-action 'self'"

    def render_error(self, err: OAuth2Error) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        title = "Sign-in error" if err.status_code < 500 else "Service error"
        message = err.description or err.error.replace("_", " ")
        self.finish(
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><main><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(message)}</p><p><small>{html.escape(err.error)} &middot; "
            f"request {html.escape(self.request_id)}</small></p></main></html>")


class NotFoundHandler(BaseHandler):
    """Default handler: a JSON 404 for any path no route claims."""

    uses_keys = False

    def prepare(self) -> None:
        raise OAuth2Error(NOT_FOUND, _DESCRIPTIONS[NOT_FOUND])


class MetricsHandler(BaseHandler):
    """`/metrics`: Prometheus text format (shared/metrics.py), on the service's own listener;
    the proxy routes no path to it."""

    uses_keys = False

    def get(self) -> None:
        from . import metrics
        body, content_type = metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class HealthCheckHandler(BaseHandler):
    """`/health-check`: 200 "ok" while the process serves. Every method answers, as
    Konnect's (its server/server.go routes the path without a method; its `healthcheck`
    command and Docker HEALTHCHECK send POST). A body is never read."""

    uses_keys = False

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok\n")

    head = post = put = patch = delete = options = get
