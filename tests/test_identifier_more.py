"""The identifier's sign-in defences and the dummy backend."""

from __future__ import annotations

import time

import pytest

from shared.config import StartupError, load_settings
from shared.deps import Core
from shared.users import BackendConfigError, make_backend
from tests.support.op import settings_for
from tests.test_flow import Browser, app, core, sign_in, state  # noqa: F401


@pytest.mark.gen_test
async def test_unknown_user_and_wrong_password_get_the_same_answer_after_the_same_floor(
        http_client, base_url):
    from services.identifier.api import LogonHandler
    b = Browser(http_client, base_url)
    answers = []
    for user, password in (("alice", "not-her-password"), ("nobody-here", "whatever")):
        started = time.monotonic()
        resp = await sign_in(b, username=user, password=password)
        answers.append((resp.code, resp.body, time.monotonic() - started))
    assert answers[0][:2] == answers[1][:2] == (204, b"")
    assert all(took >= LogonHandler.failed_floor for _, _, took in answers)


@pytest.mark.gen_test(timeout=30)
async def test_too_many_attempts_is_429_with_retry_after_and_words(http_client, base_url):
    b = Browser(http_client, base_url)
    for i in range(10):
        assert (await sign_in(b, username="nobody", password=f"x{i}")).code == 204
    blocked = await sign_in(b, username="nobody", password="again")
    assert blocked.code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 300
    assert b"too many" in blocked.body.lower()
    # the same answer for a user that exists: the limit reveals nothing
    for i in range(10):
        await sign_in(b, username="alice", password=f"x{i}")
    assert (await sign_in(b, username="alice", password="wonderland")).code == 429


def test_dummy_backend_must_be_allowed_explicitly(tmp_path, redis_url, state):  # noqa: F811
    settings = settings_for("identifier", state, redis_url, ["--identity-manager", "dummy"])
    with pytest.raises(BackendConfigError, match="allow-dummy-backend"):
        make_backend(settings)
    with pytest.raises(StartupError):
        Core.with_users(settings)


@pytest.mark.asyncio
async def test_dummy_backend_signs_in_the_fixed_user(redis_url, state):  # noqa: F811
    settings = settings_for("identifier", state, redis_url,
                            ["--identity-manager", "dummy", "--allow-dummy-backend"])
    backend = make_backend(settings)
    user = await backend.authenticate("Dummy", "anything")
    assert user.raw_sub == "dummy" and user.email == "dummy@dummy.local" and user.name == "Foo Dummy"
    assert await backend.authenticate("dummy", "") is None
    assert await backend.authenticate("someone", "x") is None
    assert await backend.lookup("dummy") == user and await backend.lookup("x") is None
    assert load_settings(["--iss", "https://x.example", "--identity-manager", "dummy"], {},
                         service="token").allow_dummy_backend is False
