"""The `cookie` backend (Konnect's identity/managers/cookie.go): sign-in borrowed from a web
application's session.

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

import re
from typing import Any, Mapping, Optional

import tornado.simple_httpclient

from ..identity import Identity
from ..jose import parse_json
from ..sealed import SealError
from ..web import AmbiguousCookie, cookie_pairs
from .base import BackendUnavailable, UserBackend

PROVIDER = "cookie"
TIMEOUT = 30.0
MAX_ANSWER = 64 * 1024
#: longest subject, name or e-mail taken from the backend's answer
MAX_FIELD = 1024
#: RFC 6265 §4.1.1 cookie-value: cookie-octets, optionally inside one pair of DQUOTEs
_OCTETS = r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*"
_COOKIE_VALUE = re.compile(f'(?:{_OCTETS}|"{_OCTETS}")\\Z')


class CookieBackend(UserBackend):
    manager = "cookie"
    provider = PROVIDER
    signs_in_elsewhere = True

    def __init__(self, url: str, names: list[str], *, timeout: float = TIMEOUT) -> None:
        self.url, self.names, self.timeout = url, [n for n in names if n], timeout
        self.sealer: Any = None
        # a client of its own whose reads stop at the cap (bounded reads, as for all input from
        # outside): an endless or huge answer is cut off there, not buffered whole (up to
        # Tornado's 100 MB default) until the timeout
        self.http = tornado.simple_httpclient.SimpleAsyncHTTPClient(
            force_instance=True, max_body_size=MAX_ANSWER)

    @classmethod
    def from_settings(cls, settings: Any) -> "CookieBackend":
        url, names = settings.identity_manager_args[0], settings.identity_manager_args[1]
        return cls(url, names.replace(",", " ").split())

    def bind(self, core: Any) -> None:
        """The encryption secret's sealer: forwarded cookies travel sealed."""
        self.sealer = core.sealer

    # -- the UserBackend interface ------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        return None  # no passwords here: the web application signs its users in

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return None  # a user can only be asked about with their cookies (see `current`)

    async def close(self) -> None:
        self.http.close()

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        """Replay the backend call with the cookies sealed into the token (as Konnect's
        identity/managers/cookie.go)."""
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
        """The request's cookies with an allowed name, as one Cookie header ("" if none).

        Only values in RFC 6265 §4.1.1's cookie-value grammar are forwarded: a quoted value
        holding `;`, `,` or spaces (`webapp="x; admin=1"`) would reach the backend's cookie
        parser (RFC 6265 §5.4 splits on `;`) as a second cookie whose name is not in the
        configured list (Konnect forwards only the configured names). A configured name
        sent more than once (a sibling subdomain's or another path's cookie beside the
        web application's) is `AmbiguousCookie`: which session is the user's cannot be
        told, and the OP must not pick one by order (shared/web.py `single_cookie`).
        """
        pairs = [(n, v) for n, v in cookie_pairs(cookie_header or "") if n in self.names]
        found = dict(pairs)
        if len(found) < len(pairs):
            name = next(n for n in found if sum(1 for m, _ in pairs if m == n) > 1)
            raise AmbiguousCookie(name, sum(1 for m, _ in pairs if m == name))
        return "; ".join(f"{name}={found[name]}" for name in self.names
                         if name in found and _COOKIE_VALUE.match(found[name]))

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
        except Exception as err:  # noqa: BLE001 - network errors, timeouts, too large
            raise BackendUnavailable(f"cookie backend: {type(err).__name__}") from None
        if resp.code in (401, 403):
            return None
        if resp.code not in (200, 202) or len(resp.body or b"") > MAX_ANSWER:
            raise BackendUnavailable(f"cookie backend answered {resp.code}")
        doc = self._answer(resp.body or b"")
        sub = doc["sub"]
        numeric = doc.get("id")
        extra = {"cookie.al": accept_language[:256], "cookie.ua": user_agent[:512]}
        if self.sealer is not None:
            extra["cookie.v"] = self.sealer.seal("cookie", cookie, 400 * 24 * 3600)
        return Identity(raw_sub=sub, backend=PROVIDER,
                        name=doc.get("name") or "", email=doc.get("email") or "",
                        numeric_id=numeric if isinstance(numeric, int)
                        and not isinstance(numeric, bool) else None, extra=extra)

    @staticmethod
    def _answer(data: bytes) -> dict:
        """The backend's JSON answer, typed (Konnect's identity/managers/cookie.go: `sub`,
        `name`, `email` are strings, `id` a number). Garbage is BackendUnavailable (503), never
        a 500 (whatever the backend sends): deep nesting goes through the one bounded parser (whose
        numbers beyond 64 bits are floats, so no `id` orjson cannot encode again), and a
        `name` that is an object is refused rather than shown as its Python repr."""
        try:
            doc = parse_json(data)
        except (ValueError, RecursionError):
            raise BackendUnavailable("cookie backend answer is not JSON") from None
        if not isinstance(doc, dict):
            raise BackendUnavailable("cookie backend answer is not a JSON object")
        sub = doc.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_FIELD \
                or not sub.isprintable():
            raise BackendUnavailable("cookie backend answer has no usable sub")
        for key in ("name", "email"):
            value = doc.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_FIELD
                                      or not value.isprintable()):
                raise BackendUnavailable(f"cookie backend answer has a bad {key}")
        return doc
