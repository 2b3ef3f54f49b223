"""The one protocol error type and its error codes.

`OAuth2Error` is what every service raises for a failure the client may see; the base
handler in `shared.web` renders it as JSON, as a redirect (only to a verified
redirect_uri) or as an error page. Nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

# RFC 6749 §4.1.2.1, §5.2; RFC 6750 §3.1; OIDC Core §3.1.2.6; RFC 7009 §2.2.1.
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
UNAUTHORIZED_CLIENT = "unauthorized_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
UNSUPPORTED_TOKEN_TYPE = "unsupported_token_type"
INVALID_SCOPE = "invalid_scope"
ACCESS_DENIED = "access_denied"
LOGIN_REQUIRED = "login_required"
CONSENT_REQUIRED = "consent_required"
INTERACTION_REQUIRED = "interaction_required"
ACCOUNT_SELECTION_REQUIRED = "account_selection_required"
INVALID_REQUEST_OBJECT = "invalid_request_object"
REQUEST_URI_NOT_SUPPORTED = "request_uri_not_supported"
REQUEST_NOT_SUPPORTED = "request_not_supported"
INVALID_REDIRECT_URI = "invalid_redirect_uri"
INVALID_CLIENT_METADATA = "invalid_client_metadata"
INVALID_TOKEN = "invalid_token"
INSUFFICIENT_SCOPE = "insufficient_scope"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
REQUEST_TOO_LARGE = "request_too_large"
TOO_MANY_REQUESTS = "too_many_requests"
SERVER_ERROR = "server_error"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"

_STATUS = {
    INVALID_CLIENT: 401,
    INVALID_TOKEN: 401,
    INSUFFICIENT_SCOPE: 403,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    REQUEST_TOO_LARGE: 413,
    TOO_MANY_REQUESTS: 429,
    SERVER_ERROR: 500,
    TEMPORARILY_UNAVAILABLE: 503,
}


def status_for(error: str) -> int:
    """HTTP status for an error code: RFC 6749 §5.2 says 400 unless stated otherwise."""
    return _STATUS.get(error, 400)


class OAuth2Error(Exception):
    """An error the client may see (RFC 6749 §4.1.2.1/§5.2, RFC 6750 §3.1, OIDC Core §3.1.2.6).

    `description` goes to the client: fixed ASCII text, no internals.
    `detail` goes to the log only.
    `redirect_uri` is set only once the client and its redirect_uri have been verified;
    without it the error is never redirected. `response_mode` is how a redirected error
    travels, as the authorization response would: "query", "fragment" or "form_post"
    (decided once: services/authorize/request.py `resolve_response_mode`); `fragment=True` is
    short for `response_mode="fragment"`.
    `auth_scheme` ("Basic", "Bearer") adds a WWW-Authenticate challenge to 401 answers.
    """

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        detail: str = "",
        status: int | None = None,
        redirect_uri: str | None = None,
        state: str | None = None,
        response_mode: str = "",
        fragment: bool = False,
        issuer: str | None = None,
        auth_scheme: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.detail = detail
        self.status_code = status or status_for(error)
        self.redirect_uri = redirect_uri
        self.state = state
        self.response_mode = response_mode or ("fragment" if fragment else "query")
        self.issuer = issuer
        self.auth_scheme = auth_scheme
        self.retry_after = retry_after

    @property
    def fragment(self) -> bool:
        return self.response_mode == "fragment"

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        if self.state:
            body["state"] = self.state
        return body

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers: the challenge of RFC 6749 §5.2 / RFC 6750 §3, Retry-After."""
        out: list[tuple[str, str]] = []
        if self.status_code == 401 and self.auth_scheme:
            if self.auth_scheme.lower() == "bearer":
                # RFC 6750 §3: error attribute only when a token was presented and refused.
                out.append(("WWW-Authenticate", f'Bearer error="{self.error}"'))
            else:
                out.append(("WWW-Authenticate", f'{self.auth_scheme} realm="konnect"'))
        elif self.status_code == 403 and self.auth_scheme and self.auth_scheme.lower() == "bearer":
            out.append(("WWW-Authenticate", f'Bearer error="{self.error}"'))
        if self.retry_after is not None:
            out.append(("Retry-After", str(int(self.retry_after))))
        return out

    def location(self) -> str:
        """The redirect target: the verified redirect_uri with the error in query or fragment.

        RFC 6749 §4.1.2.1 (query), OAuth 2.0 Multiple Response Types §5 (fragment),
        RFC 9207 §2 (`iss` on every authorization response, errors included).
        """
        if not self.redirect_uri:
            raise ValueError("OAuth2Error without a verified redirect_uri cannot be redirected")
        return response_location(self.redirect_uri, self.location_params(), fragment=self.fragment)

    def location_params(self) -> list[tuple[str, str]]:
        """The response parameters of an authorization error (also for form_post)."""
        params = [("error", self.error)]
        if self.description:
            params.append(("error_description", self.description))
        if self.state:
            params.append(("state", self.state))
        if self.issuer:
            params.append(("iss", self.issuer))
        return params


def add_params(uri: str, params: list[tuple[str, str]], *, fragment: bool = False) -> str:
    """Append response parameters to a redirect URI, in the query or the fragment.

    Keys the URI's query already has are replaced, never duplicated (Konnect appended them,
    duplicating keys).
    """
    parts = urlsplit(uri)
    if fragment:
        return urlunsplit(parts._replace(fragment=urlencode(params)))
    names = {k for k, _ in params}
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urlunsplit(parts._replace(query=urlencode(kept + params)))


def response_location(uri: str, params: list[tuple[str, str]], *, fragment: bool) -> str:
    """An authorization response's redirect (success or error), in the query or fragment.

    A query response ends with an empty fragment `#` (RFC 9700 §4.1.3, §4.11): without
    one, a browser carries the fragment of the redirect that led here on to this target
    (RFC 9110 §10.2.2), e.g. tokens of an implicit response that was redirected back into
    the authorization endpoint. An empty fragment is still a fragment: nothing is carried.
    """
    location = add_params(uri, params, fragment=fragment)
    return location if fragment else location + "#"


class Unavailable(Exception):
    """A dependency (Redis, LDAP, the Kopano server) cannot be reached or timed out.

    Rendered as 503 `temporarily_unavailable`; the message is for the log only.
    """
