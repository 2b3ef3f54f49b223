"""The check-session iframe at `/konnect/v1/session/check-session.html` (OIDC Session
Management 1.0 §3.2; Konnect's oidc/provider/html.go): a page RPs embed, with one script under a
per-response CSP nonce; its logic is in static/check-session.js."""

from __future__ import annotations

import os
import secrets

from tornado.escape import xhtml_escape

from shared.session import BROWSER_STATE_COOKIE
from shared.web import BaseHandler

with open(os.path.join(os.path.dirname(__file__), "static", "check-session.js"),
          encoding="utf-8") as _file:
    _SCRIPT = _file.read()


class CheckSessionHandler(BaseHandler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        # RPs of any origin embed this page (that is its purpose): no framing ban here.
        self.clear_header("X-Frame-Options")
        self.set_header("Cache-Control", "no-cache")

    def get(self) -> None:
        nonce = secrets.token_urlsafe(24)
        self.set_header("Content-Security-Policy",
                        f"default-src 'none'; script-src 'nonce-{nonce}'; base-uri 'none'")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<title>Check session</title></head><body>"
            f'<script type="application/x-kkbs-name" id="kkbs-name">'
            f"{xhtml_escape(BROWSER_STATE_COOKIE)}</script>"
            f'<script nonce="{nonce}">{_SCRIPT}</script></body></html>')

    head = get  # GET's headers, no body (RFC 9110 §9.3.2)
