"""Races at the token endpoint against real Redis, each interleaving forced deterministically.

A refused refresh request (another client's token, RFC 6749 §6 / RFC 6819 §5.2.2.2; a wider
scope, RFC 6749 §6) used to take the presented token in the rotation script and put it back
afterwards (`put_back`). In that window:

- a concurrent refresh by the rightful client found the token spent, was taken for reuse
  and revoked the whole family (RFC 6819 §5.2.2.3, RFC 9700 §4.14.2) although nothing was
  reused;
- a revocation (RFC 7009 §2.1) found no token, answered 200 (§2.2) and revoked nothing,
  and the put-back then brought the token back alive: a revoked grant went on.

The script now refuses those requests without taking the token (`Store.rotate_refresh(
keep_refused=True)`), still in one round trip.
"""

from __future__ import annotations

import pytest

from tests.support.op import SECRET, mint_code
from tests.test_token_service import (app, basic, code_form, core, introspect,  # noqa: F401
                                      post, state, token)

OTHER = ("trusted-rp", "other-secret")


def in_the_window(core, action):
    """Run `action` right after the first `rotate_refresh` round trip returns, before the
    grant goes on (where a put-back would come): the interleaving of two requests."""
    store = core.store
    real = store.rotate_refresh
    done, started = [], []

    async def rotate(*args, **kwargs):
        result = await real(*args, **kwargs)
        if not started:  # the first request only (the action may rotate too)
            started.append(True)
            done.append(await action())
        return result

    store.rotate_refresh = rotate
    return done


def refresh_form(rt, **extra):
    return {"grant_type": "refresh_token", "refresh_token": rt, **extra}


@pytest.mark.gen_test
@pytest.mark.parametrize("refused", ["another client", "wider scope"])
async def test_refused_refresh_does_not_make_a_concurrent_rightful_refresh_look_like_reuse(
        http_client, base_url, core, refused):
    """RFC 6819 §5.2.2.3: only a real reuse revokes the family. The rightful client's refresh
    running while a refused request holds the token must succeed, and its tokens live."""
    _, first = await token(http_client, base_url, code_form(await mint_code(core)))
    rt = first["refresh_token"]
    done = in_the_window(core, lambda: token(http_client, base_url, refresh_form(rt)))
    if refused == "another client":
        resp, err = await token(http_client, base_url, refresh_form(rt), auth=OTHER)
        assert resp.code == 400 and err["error"] == "invalid_grant"
    else:
        resp, err = await token(http_client, base_url, refresh_form(rt, scope="openid phone"))
        assert resp.code == 400 and err["error"] == "invalid_scope"
    (rightful, body), = done
    assert rightful.code == 200, body
    assert (await introspect(http_client, base_url, body["access_token"]))["active"]
    again, _ = await token(http_client, base_url, refresh_form(body["refresh_token"]))
    assert again.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("refused", ["another client", "wider scope"])
async def test_revocation_during_a_refused_refresh_is_not_undone_by_the_put_back(
        http_client, base_url, core, refused):
    """RFC 7009 §2.1: once revoke answered 200, no token of that grant may work; a refused
    refresh in flight at that moment must not bring the refresh token back."""
    _, first = await token(http_client, base_url, code_form(await mint_code(core)))
    rt = first["refresh_token"]
    done = in_the_window(core, lambda: post(
        http_client, base_url, "/konnect/v1/revoke", {"token": rt},
        {"Authorization": basic("web-rp", SECRET)}))
    if refused == "another client":
        await token(http_client, base_url, refresh_form(rt), auth=OTHER)
    else:
        await token(http_client, base_url, refresh_form(rt, scope="openid phone"))
    (revoked, _), = done
    assert revoked.code == 200
    after, err = await token(http_client, base_url, refresh_form(rt))
    assert after.code == 400 and err["error"] == "invalid_grant"
    assert (await introspect(http_client, base_url, first["access_token"])) == {"active": False}


@pytest.mark.gen_test
async def test_replay_of_an_older_code_between_its_redemption_steps_revokes_what_it_issued(
        http_client, base_url, core):
    """RFC 6749 §4.1.2: a code used twice is refused and what it issued SHOULD be revoked.
    A code without `created` (written before the upgrade) is redeemed in two steps; the
    replay lands between the GETDEL and the second step: it must find the marker."""
    from shared.grants import Grant
    from tests.support.op import ALICE
    code = "legacy-race-" + "y" * 40
    record = Grant(client_id="web-rp", identity=ALICE, scopes=["openid", "offline_access"],
                   redirect_uri="https://rp.example.test/cb", family="fam-legacy").to_record()
    record.pop("created", None)
    await core.store.put_code(code, record, 60)
    store, real, replays = core.store, core.store.redeem_code, []

    async def redeem(*args, **kwargs):
        result = await real(*args, **kwargs)
        if not replays:
            replays.append(None)
            replays[0] = await token(http_client, base_url, code_form(code))
        return result

    store.redeem_code = redeem
    first, body = await token(http_client, base_url, code_form(code))
    (replay, err), = replays
    assert replay.code == 400 and err["error"] == "invalid_grant"
    assert first.code == 200, body
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    again, _ = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                  "refresh_token": body["refresh_token"]})
    assert again.code == 400
