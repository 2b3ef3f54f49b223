"""The dummy backend: only when allowed explicitly."""

from __future__ import annotations

import pytest

from shared.config import StartupError, load_settings
from shared.deps import Core
from shared.users import BackendConfigError, make_backend
from tests.support.op import settings_for


def test_dummy_backend_must_be_allowed_explicitly(tmp_path, redis_url, state):  # noqa: F811
    settings = settings_for("identifier", state, redis_url, ["--identity-manager", "dummy"])
    with pytest.raises(BackendConfigError, match="allow-dummy-backend"):
        make_backend(settings)
    with pytest.raises(StartupError):
        Core.with_users(settings)


@pytest.mark.gen_test
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
