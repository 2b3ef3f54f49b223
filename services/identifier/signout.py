"""Signing out, the same from `_/logoff` and from end session."""

from __future__ import annotations

from typing import Any, Optional

from shared.session import API_PATH, BROWSER_STATE_COOKIE, LOGON_COOKIE, SESSION_PATH, Logon, clear_cookie


async def sign_out(handler: Any, logon: Optional[Logon]) -> None:
    """What every sign-out does: revoke what was issued to this user's sessions so far and
    forget the logon in this browser."""
    deps = handler.deps
    if logon is not None:
        await deps.store.revoke_subject(logon.identity.sub, int(deps.now()),
                                        deps.tokens.access_ttl + deps.settings.clock_skew)
    clear_cookie(handler, LOGON_COOKIE, path=API_PATH)
    clear_cookie(handler, BROWSER_STATE_COOKIE, path=SESSION_PATH)
