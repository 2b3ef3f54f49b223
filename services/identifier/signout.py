"""Signing out, the same from `_/logoff` and from end session."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Optional

from shared.session import (API_PATH, BROWSER_STATE_COOKIE, LOGON_COOKIE, LOGON_TTL, SESSION_PATH,
                            Logon, clear_cookie)


def not_before_ttl(deps: Any) -> int:
    """How long a sign-out's not-before is kept: as long as anything it ends can still be
    presented, the access tokens and the logon cookie (sealed for LOGON_TTL), plus the clock
    skew. Shorter, and a copy of the old logon cookie would be a session again once the
    Redis entry expired."""
    return max(deps.tokens.access_ttl, LOGON_TTL) + deps.settings.clock_skew


async def sign_out(handler: Any, logon: Optional[Logon]) -> None:
    """What every sign-out does: end this user's sessions and revoke what was issued to them
    so far, then forget the logon in this browser.

    The subject's not-before (whole seconds, `Store.revoke_subject`) ends every logon and
    access token of the subject with an auth_time / iat at or before now, in every browser
    (`Logon.open_live`, `Tokens.is_revoked`). A sign-in in the same second afterwards waits
    for the next second (`LogonHandler`), so it is not caught by it."""
    deps = handler.deps
    if logon is not None:
        await deps.store.revoke_subject(logon.identity.sub, int(deps.now()), not_before_ttl(deps))
    clear_cookie(handler, LOGON_COOKIE, path=API_PATH)
    clear_cookie(handler, BROWSER_STATE_COOKIE, path=SESSION_PATH)


async def fresh_auth_time(deps: Any, sub: str) -> int:
    """Now in whole seconds (the unit of auth_time, OIDC Core §2), but later than the
    subject's not-before. A sign-out writes its second as the not-before and ends every
    logon and token of that second (`Store.revoke_subject`), so a sign-in in the same
    second as a sign-out waits for the next second: else the new logon and the tokens
    issued from it in that second would be dead at once. Bounded: a not-before further
    ahead (another host's clock) is not waited out. For every kind of sign-in."""
    for _ in range(3):
        now = deps.now()
        if not await deps.store.is_revoked(sub=sub, iat=int(now)):
            break
        await asyncio.sleep(min(1.0, max(0.02, math.floor(now) + 1 - now)))
    return int(deps.now())
