"""Every public URL of the OP, and the discovery document (OpenID Connect Discovery 1.0 §3).

One place computes the URLs so that all services agree. The document
lists exactly what is implemented (Konnect omitted `code` and others: quirk fixed).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from . import scopes

PATHS = {
    "authorization_endpoint": "/signin/v1/identifier/_/authorize",
    "token_endpoint": "/konnect/v1/token",
    "userinfo_endpoint": "/konnect/v1/userinfo",
    "end_session_endpoint": "/signin/v1/identifier/_/endsession",
    "check_session_iframe": "/konnect/v1/session/check-session.html",
    "jwks_uri": "/konnect/v1/jwks.json",
    "revocation_endpoint": "/konnect/v1/revoke",
    "introspection_endpoint": "/konnect/v1/introspect",
    "registration_endpoint": "/konnect/v1/register",
}
DISCOVERY_PATH = "/.well-known/openid-configuration"
# The cookie identity manager has no identifier: Konnect (bootstrap/cookie.go) serves its
# authorization endpoint here, and publishes no end session endpoint unless one is given.
COOKIE_AUTHORIZE_PATH = "/konnect/v1/authorize"
USER_CLAIMS = ["name", "family_name", "given_name", "preferred_username", "email",
               "email_verified"]
# Konnect's cookie manager (identity/managers/cookie.go ClaimsSupported): the web
# application tells a name and an e-mail address, nothing more
USER_CLAIMS_COOKIE = ["name", "email", "email_verified"]
RESPONSE_TYPES = ["code", "id_token", "id_token token", "code id_token", "code token",
                  "code id_token token"]
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
# RFC 7662 §2.1: introspection requires client authentication; `none` is not offered there
INTROSPECTION_AUTH_METHODS = [m for m in AUTH_METHODS if m != "none"]
# The sign-in pages' languages (services/identifier/i18n/<tag>.json): English and Konnect's
# fifteen (its identifier/i18n), as BCP 47 tags.
UI_LOCALES = ("en", "de", "es", "fr", "hi", "hr", "hu", "is", "it", "ja", "nb", "nl", "pl",
              "pt-PT", "ru", "sl")
REQUEST_OBJECT_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA"]


def origin(settings: Any) -> str:
    """The issuer's scheme and authority. Every endpoint is this plus its path, whatever
    path the issuer has (Konnect's oidc/provider/provider.go `makeIssURL` strips the
    issuer's path; its bootstrap/bootstrap.go `makeURIPath` builds the paths without it)."""
    parts = urlsplit(settings.iss)
    return f"{parts.scheme}://{parts.netloc}"


def issuer_path(settings: Any) -> str:
    """The issuer's path without a trailing slash ("" for an issuer at the root)."""
    return urlsplit(settings.iss).path.rstrip("/")


def discovery_paths(settings: Any) -> tuple:
    """Where the discovery document is served: `/.well-known/openid-configuration` at the
    root (Konnect's bootstrap/bootstrap.go `WellKnownPath`, whatever the issuer's path)
    and, for an issuer with a path, also under that path, where OpenID Connect Discovery
    1.0 §4.1 tells relying parties to look (Konnect answered 404 there)."""
    path = issuer_path(settings)
    return (DISCOVERY_PATH, path + DISCOVERY_PATH) if path else (DISCOVERY_PATH,)


def path(settings: Any, name: str) -> str:
    """The path of endpoint `name` under the active identity manager."""
    if name == "authorization_endpoint" and settings.identity_manager == "cookie":
        return COOKIE_AUTHORIZE_PATH
    return PATHS[name]


def url(settings: Any, name: str) -> str:
    return origin(settings) + path(settings, name)


def document(settings: Any, keyring: Any, definitions: Any = None) -> dict:
    issuer = settings.iss
    algs = list(keyring.signing_algs)
    doc: dict[str, Any] = {"issuer": issuer}
    manager = settings.identity_manager
    for name in PATHS:
        if name == "registration_endpoint" and not settings.allow_dynamic_client_registration:
            continue
        if name == "end_session_endpoint" and manager == "cookie":
            continue  # Konnect's cookie manager ends no session (unless the URI is given)
        doc[name] = url(settings, name)
    # the cookie manager may point RPs at the web application's own endpoints (Konnect)
    if getattr(settings, "authorization_endpoint_uri", None):
        doc["authorization_endpoint"] = settings.authorization_endpoint_uri
    if getattr(settings, "endsession_endpoint_uri", None):
        doc["end_session_endpoint"] = settings.endsession_endpoint_uri
    doc.update({
        "scopes_supported": scopes.supported(manager, settings.allow_scope, definitions),
        "response_types_supported": RESPONSE_TYPES,
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "userinfo_signing_alg_values_supported": algs,
        # OIDC Discovery §3: unsigned request objects are accepted from a client that did
        # not register a signing alg (request_object.py), so `none` is listed here, and
        # only here (never for client authentication, RFC 8414 §2)
        "request_object_signing_alg_values_supported": ["none", *REQUEST_OBJECT_ALGS],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": REQUEST_OBJECT_ALGS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": INTROSPECTION_AUTH_METHODS,
        # RFC 8414 §2: required where private_key_jwt is offered (never "none")
        "revocation_endpoint_auth_signing_alg_values_supported": REQUEST_OBJECT_ALGS,
        "introspection_endpoint_auth_signing_alg_values_supported": REQUEST_OBJECT_ALGS,
        "code_challenge_methods_supported": ["S256"],
        "claims_parameter_supported": True,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid",
                             *(USER_CLAIMS_COOKIE if manager == "cookie" else USER_CLAIMS)],
        "request_parameter_supported": True,
        "request_uri_parameter_supported": False,
        "require_request_uri_registration": False,
        "authorization_response_iss_parameter_supported": True,
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": False,
        "ui_locales_supported": list(UI_LOCALES),
    })
    return doc
