"""Looking behind the store in tests: what a grant left in Redis, and a database as a
running deployment has it."""

from __future__ import annotations

import json

from shared.store import ALL_TAGS, Store, digest, tag_of, token_tag


def trusted_buckets(client, prefix: str = "konnect:") -> None:
    """Give every bucket the generation 0 on a synchronous client's database: the state of
    a deployment that never lost any (what a test that just flushed the database means)."""
    pipe = client.pipeline(transaction=False)
    for tag in ALL_TAGS:
        pipe.hset(f"{prefix}revoked:{{{tag}}}", "g", 0)
    pipe.execute()


async def redemption_marker(store: Store, code: str) -> dict | None:
    """The redemption marker a code left (`{family, jti, exp, sub}`), or None."""
    tag = token_tag(code)
    if tag is None:
        return None
    key = store._tagged("code-used", tag, digest(code))
    raw = await store._run("test", key, ("GET", key))
    return None if raw is None else json.loads(raw)


async def refresh_keys(store: Store) -> list:
    """Every refresh-token record's key (one Redis, or the node of a single-node test)."""
    client = store._link.client
    return [k async for k in client.scan_iter(match=store.prefix + "rt:*")]


async def leftovers(core, code) -> tuple:
    """What a code redemption left in Redis: its marker and every refresh record."""
    return await redemption_marker(core.store, code), await refresh_keys(core.store)


async def flush(store: Store) -> None:
    """Empty the store's database (one Redis), leaving the buckets as `trusted_buckets`."""
    client = store._link.client
    await client.flushdb()
    pipe = client.pipeline(transaction=False)
    for tag in ALL_TAGS:
        pipe.hset(store.bucket(tag), "g", 0)
    await pipe.execute()


def client_key(client_id: str, prefix: str = "konnect:") -> str:
    """Where a dynamically registered client is stored (in its id's bucket)."""
    return f"{prefix}client:{{{tag_of('client:' + client_id)}}}:{client_id}"
