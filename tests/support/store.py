"""Looking behind the store in tests: what a grant left in Redis."""

from __future__ import annotations

import json

from shared.store import Store, digest


async def redemption_marker(store: Store, code: str) -> dict | None:
    """The redemption marker a code left (`{family, jti, exp}`), or None."""
    raw = await store._redis.get(store.key("code-used", digest(code)))
    return None if raw is None else json.loads(raw)


async def leftovers(core, code) -> tuple:
    """What a code redemption left in Redis: its marker and every refresh record."""
    store = core.store
    refresh_keys = [k async for k in store._redis.scan_iter(match=store.key("rt", "*"))]
    return await redemption_marker(store, code), refresh_keys
