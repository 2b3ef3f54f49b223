"""The `cookie` backend (konnect.md §4.4): sign-in borrowed from a web application's session.

    --identity-manager cookie  with arguments  <backend-url> "<cookie names>"

At the authorization endpoint the browser's cookies with the configured names (and no
others) are POSTed to the backend URL, with the browser's Accept-Language and User-Agent
and `X-Konnect-Request`. `200`/`202` with JSON `{"sub", "name", "email", "id"}` means
signed in, `401`/`403` not signed in (the browser then goes to `--sign-in-uri` with
`continue=<the authorization request>&oauth=1`); anything else, or no answer within the
timeout, is `BackendUnavailable` (503).

Like Konnect, the forwarded cookies travel inside the access token's `kc.identity`
(`cookie.v`, sealed under the encryption secret, with `cookie.al` and `cookie.ua`), and
userinfo and refresh replay the backend call: a web session that has ended ends the
tokens' access to claims. Differences from Konnect: only trusted clients are served (there
is no consent step for this manager: a consent page would need the identifier's own
logon), and the forwarded cookie values are sealed with AES-GCM (sealed.py), not
secretbox.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any, Mapping, Optional

import tornado.httpclient

from ..identity import Identity
from ..sealed import SealError
from .base import BackendUnavailable, UserBackend

PROVIDER = "cookie"
TIMEOUT = 30.0
MAX_ANSWER = 64 * 1024


class CookieBackend(UserBackend):
    manager = "cookie"
    provider = PROVIDER

    def __init__(self, url: str, names: list[str], *, timeout: float = TIMEOUT) -> None:
        self.url, self.names, self.timeout = url, [n for n in names if n], timeout
        self.sealer: Any = None
        self.http = tornado.httpclient.AsyncHTTPClient()

    @classmethod
    def from_settings(cls, settings: Any) -> "CookieBackend":
        url, names = settings.identity_manager_args[0], settings.identity_manager_args[1]
        return cls(url, names.replace(",", " ").split())

    def bind_sealer(self, sealer: Any) -> None:
        """The encryption secret's sealer (Core passes it once it is built)."""
        self.sealer = sealer

    # -- the UserBackend interface ------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        return None  # no passwords here: the web application signs its users in

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return None  # a user can only be asked about with their cookies (see `current`)

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        """Replay the backend call with the cookies sealed into the token (konnect.md §4.4)."""
        sealed = kc_identity.get("cookie.v")
        if not isinstance(sealed, str) or self.sealer is None:
            return None
        try:
            cookie = self.sealer.unseal("cookie", sealed)
        except SealError:
            return None
        identity = await self._ask(str(cookie), str(kc_identity.get("cookie.al") or ""),
                                   str(kc_identity.get("cookie.ua") or ""))
        return identity if identity is not None and identity.raw_sub == raw_sub else None

    # -- the authorization endpoint's question --------------------------------------------

    def forwarded(self, cookie_header: str) -> str:
        """The request's cookies with an allowed name, as one Cookie header ("" if none)."""
        jar = SimpleCookie()
        try:
            jar.load(cookie_header or "")
        except Exception:  # noqa: BLE001 - a malformed header forwards nothing
            return ""
        return "; ".join(f"{name}={jar[name].coded_value}" for name in self.names if name in jar)

    async def identify(self, cookie_header: str, accept_language: str = "",
                       user_agent: str = "") -> Optional[Identity]:
        """The signed-in user of the web application, or None."""
        cookie = self.forwarded(cookie_header)
        if not cookie:
            return None
        return await self._ask(cookie, accept_language, user_agent)

    async def _ask(self, cookie: str, accept_language: str, user_agent: str) -> Optional[Identity]:
        headers = {"Cookie": cookie, "X-Konnect-Request": "1/konnect-py",
                   "Accept-Language": accept_language[:256], "User-Agent": user_agent[:512]}
        try:
            resp = await self.http.fetch(self.url, method="POST", body=b"", headers=headers,
                                         connect_timeout=min(5.0, self.timeout),
                                         request_timeout=self.timeout, raise_error=False,
                                         follow_redirects=False)
        except Exception as err:  # noqa: BLE001 - network errors, timeouts
            raise BackendUnavailable(f"cookie backend: {type(err).__name__}") from None
        if resp.code in (401, 403):
            return None
        if resp.code not in (200, 202) or len(resp.body or b"") > MAX_ANSWER:
            raise BackendUnavailable(f"cookie backend answered {resp.code}")
        try:
            doc = json.loads(resp.body or b"")
        except ValueError:
            raise BackendUnavailable("cookie backend answer is not JSON") from None
        sub = doc.get("sub") if isinstance(doc, dict) else None
        if not isinstance(sub, str) or not sub:
            raise BackendUnavailable("cookie backend answer has no sub")
        numeric = doc.get("id")
        extra = {"cookie.al": accept_language[:256], "cookie.ua": user_agent[:512]}
        if self.sealer is not None:
            extra["cookie.v"] = self.sealer.seal("cookie", cookie, 400 * 24 * 3600)
        return Identity(raw_sub=sub, backend=PROVIDER, username=sub,
                        name=str(doc.get("name") or ""), email=str(doc.get("email") or ""),
                        numeric_id=numeric if isinstance(numeric, int)
                        and not isinstance(numeric, bool) else None, extra=extra)
