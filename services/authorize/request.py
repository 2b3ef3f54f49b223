"""Parsing and checking an authentication request (OIDC Core §3.1.2.1, RFC 6749 §4.1.1).

Order matters (RFC 9700 §4.1.1): the client and its redirect_uri are
verified first and every problem before that is an error PAGE; only afterwards do errors
redirect, with `state` and `iss` (RFC 9207).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from shared import jose
from shared import scopes as scopelib
from shared.clients import Client
from shared.errors import (INVALID_REQUEST, INVALID_SCOPE, REQUEST_URI_NOT_SUPPORTED,
                           UNSUPPORTED_RESPONSE_TYPE, OAuth2Error)

RESPONSE_TYPES = {"code", "id_token", "id_token token", "code id_token", "code token",
                  "code id_token token"}
PROMPTS = {"none", "login", "consent", "select_account"}
MODES = {"query", "fragment", "form_post"}
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# OIDC Core §3.1.2.1 max_age: a non-negative integer of seconds. ASCII digits only (str.isdigit
# takes "²" and "٣"), and at most 10 of them (over 300 years; Python's int() refuses 4300+).
_MAX_AGE = re.compile(r"[0-9]{1,10}")
PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state", "nonce",
          "response_mode", "prompt", "max_age", "id_token_hint", "login_hint", "claims",
          "ui_locales", "code_challenge", "code_challenge_method", "request", "request_uri",
          "registration", "konnect")


@dataclass
class AuthRequest:
    client: Client
    redirect_uri: str
    response_type: str
    scopes: list
    state: str = ""
    nonce: str = ""
    response_mode: str = ""
    prompt: set = field(default_factory=set)
    max_age: Optional[int] = None
    id_token_hint: str = ""
    login_hint: str = ""
    claims: Optional[dict] = None
    code_challenge: str = ""
    code_challenge_method: str = ""
    konnect: str = ""
    params: dict = field(default_factory=dict)

    @property
    def types(self) -> set:
        return set(self.response_type.split())

    @property
    def mode(self) -> str:
        """How the response travels: "query", "fragment" or "form_post"."""
        return resolve_response_mode(self.response_type, self.response_mode)

    def error(self, error: str, description: str, issuer: str) -> OAuth2Error:
        """An error for the verified redirect_uri, sent the way the response would be."""
        return redirect_error(error, description, redirect_uri=self.redirect_uri,
                              state=self.state, response_type=self.response_type,
                              response_mode=self.response_mode, issuer=issuer)


def resolve_response_mode(response_type: str, response_mode: str) -> str:
    """How an authorization response, success or error, travels: "form_post" when asked
    for (OAuth 2.0 Form Post Response Mode §2); else "fragment" when asked for or when the
    response type returns anything but a code alone, because tokens never travel in a
    query (OAuth 2.0 Multiple Response Types §2.1, §5: the fragment is the default of
    those types, and `response_mode=query` cannot move tokens into the query); else
    "query". An unknown response_mode counts as none (it is itself an error, sent this way)."""
    if response_mode == "form_post":
        return "form_post"
    if response_mode == "fragment" or response_type not in ("code", ""):
        return "fragment"
    return "query"


def redirect_error(error: str, description: str, *, redirect_uri: str, state: str,
                   response_type: str, response_mode: str, issuer: str) -> OAuth2Error:
    """An authorization error for a verified redirect_uri (RFC 6749 §4.1.2.1), with `state`
    and `iss` (RFC 9207 §2), in the response mode the request asked for."""
    return OAuth2Error(error, description, redirect_uri=redirect_uri, state=state or None,
                       response_mode=resolve_response_mode(response_type, response_mode),
                       issuer=issuer)


async def verified_client(get: Callable[[str], Optional[str]],
                          lookup: Callable) -> tuple[Client, str]:
    """The client and redirect_uri, or an error that must NOT be redirected.

    `lookup` is `Core.lookup_client` (async: dynamically registered clients are in Redis)."""
    client_id, redirect_uri = get("client_id"), get("redirect_uri")
    if not client_id:
        raise OAuth2Error(INVALID_REQUEST, "client_id is missing")
    if not redirect_uri:
        raise OAuth2Error(INVALID_REQUEST, "redirect_uri is missing")
    client = await lookup(client_id, redirect_uri)
    if client is None:
        raise OAuth2Error(INVALID_REQUEST, "unknown client", detail=f"client {client_id!r}")
    if not client.redirect_uri_ok(redirect_uri):
        raise OAuth2Error(INVALID_REQUEST, "redirect_uri is not registered for this client")
    return client, redirect_uri


def parse(get: Callable[[str], Optional[str]], client: Client, redirect_uri: str,
          issuer: str, *, pkce_required: bool) -> AuthRequest:
    """The checked request; errors redirect to the verified redirect_uri. `pkce_required`:
    the client's code flow needs a code_challenge (`Core.requires_pkce`)."""
    state = get("state") or ""
    response_type = get("response_type") or ""
    mode = get("response_mode") or ""

    def fail(error: str, description: str) -> OAuth2Error:
        return redirect_error(error, description, redirect_uri=redirect_uri, state=state,
                              response_type=response_type, response_mode=mode, issuer=issuer)

    if mode and mode not in MODES:
        raise fail(INVALID_REQUEST, "response_mode not supported")
    if response_type not in RESPONSE_TYPES:
        raise fail(UNSUPPORTED_RESPONSE_TYPE, "response_type not supported")
    if mode == "query" and response_type != "code":
        raise fail(INVALID_REQUEST, "tokens cannot be returned in the query")
    if get("request_uri"):
        raise fail(REQUEST_URI_NOT_SUPPORTED, "request_uri is not supported")
    scopes = scopelib.parse(get("scope"))
    if scopelib.OPENID not in scopes:
        raise fail(INVALID_SCOPE, "the openid scope is required")
    nonce = get("nonce") or ""
    if "id_token" in response_type and not nonce:
        raise fail(INVALID_REQUEST, "nonce is required for this response_type")
    prompt = set((get("prompt") or "").split())
    if prompt - PROMPTS or ("none" in prompt and len(prompt) > 1):
        raise fail(INVALID_REQUEST, "invalid prompt")
    max_age = get("max_age")
    if max_age is not None:
        if not _MAX_AGE.fullmatch(max_age):
            raise fail(INVALID_REQUEST, "max_age must be a non-negative integer")
    challenge, method = get("code_challenge") or "", get("code_challenge_method") or ""
    if challenge or method:
        if (method or "S256") != "S256":
            raise fail(INVALID_REQUEST, "code_challenge_method must be S256")
        if not _CHALLENGE.match(challenge):
            raise fail(INVALID_REQUEST, "code_challenge is malformed")
    elif "code" in response_type and pkce_required:
        raise fail(INVALID_REQUEST, "PKCE (S256) is required for public clients")
    claims = _claims(get("claims"), fail)
    if scopelib.OFFLINE in scopes and "code" not in response_type:
        scopes.remove(scopelib.OFFLINE)
    return AuthRequest(client=client, redirect_uri=redirect_uri, response_type=response_type,
                       scopes=scopes, state=state, nonce=nonce, response_mode=mode, prompt=prompt,
                       max_age=int(max_age) if max_age is not None else None,
                       id_token_hint=get("id_token_hint") or "", login_hint=get("login_hint") or "",
                       claims=claims, code_challenge=challenge,
                       code_challenge_method="S256" if challenge else "",
                       konnect=get("konnect") or "",
                       params={k: get(k) for k in PARAMS if get(k) is not None})


def _claims(raw: Optional[str], fail: Any) -> Optional[dict]:
    """OIDC Core §5.5: a JSON object with optional `userinfo` and `id_token` objects."""
    if not raw:
        return None
    try:
        doc = jose.parse_json(raw)
    except ValueError:
        raise fail(INVALID_REQUEST, "claims is not valid JSON") from None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k, {}), dict)
                                        for k in ("userinfo", "id_token")):
        raise fail(INVALID_REQUEST, "claims must be a JSON object of objects")
    return {k: doc[k] for k in ("userinfo", "id_token") if k in doc}


def requested_subs(claims: Optional[dict]) -> Optional[set]:
    """The subjects a claims request restricts the response to (OIDC Core §5.5.1: `sub`
    with `value` or `values`, in `id_token` and/or `userinfo`; both must hold), or None
    when it names none. Values that are not strings match no user."""
    wanted: Optional[set] = None
    for member in ("id_token", "userinfo"):
        spec = ((claims or {}).get(member) or {}).get("sub")
        if not isinstance(spec, dict):
            continue
        for key in ("value", "values"):
            if key not in spec:
                continue
            given = spec[key] if key == "values" and isinstance(spec[key], list) else [spec[key]]
            names = {v for v in given if isinstance(v, str)}
            wanted = names if wanted is None else wanted & names
    return wanted

