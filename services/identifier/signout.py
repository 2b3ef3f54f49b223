"""Signing out, the same from `_/logoff` and from end session."""

from __future__ import annotations

import logging
from typing import Any, Optional

from shared.errors import Unavailable
from shared.session import (BROWSER_STATE_COOKIE, LOGON_COOKIE, Logon, clear_cookie, logon_ttl,
                            wait_past)

log = logging.getLogger("konnect.identifier")


async def _end_backend_session(deps: Any, logon: Logon) -> None:
    """What the user backend keeps for the user ends too (kc: the Kopano session, as
    Konnect's identifier logs it off); a backend that cannot be reached does not stop the
    sign-out (the session then idles out on its server)."""
    users = getattr(deps, "users", None)
    if users is None:
        return
    try:
        await users.end_session(logon.identity)
    except Unavailable as err:
        log.warning("sign-out: the user backend session was not ended: %s", err)


async def sign_out(handler: Any, logon: Optional[Logon]) -> None:
    """What every sign-out does: end this user's sessions and revoke what was issued to them
    so far, then forget the logon in this browser.

    The subject's not-before (whole seconds, `Store.revoke_subject`) ends every logon and
    access token of the subject with an auth_time / iat at or before now, in every browser
    (`Logon.open_live`, `Tokens.is_revoked`). A sign-in in the same second afterwards waits
    for the next second (`LogonHandler`), so it is not caught by it."""
    deps = handler.deps
    if logon is not None:
        await deps.store.revoke_subject(logon.identity.sub, int(deps.now()),
                                        deps.tokens.sign_out_ttl(logon_ttl(deps.settings)))
        await _end_backend_session(deps, logon)
    clear_cookie(handler, LOGON_COOKIE)
    clear_cookie(handler, BROWSER_STATE_COOKIE)


async def fresh_auth_time(deps: Any, sub: str) -> int:
    """Now in whole seconds (the unit of auth_time, OIDC Core §2), after the subject's
    not-before: a sign-in (of any kind) in a sign-out's second waits for the next
    (`shared.session.wait_past`), else the new logon and what is issued from it in that
    second would be dead at once."""
    await wait_past(deps.now, await deps.store.subject_not_before(sub))
    return int(deps.now())
