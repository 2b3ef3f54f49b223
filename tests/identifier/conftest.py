"""Fixtures of the identifier's tests: dev state, a `Core` with alice in a users file, and
the four services on one origin (tests/support/onehost.py)."""

from __future__ import annotations

import pytest

from tests.support.onehost import identifier_core, one_origin_app
from tests.support.op import make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("identifier-state"))


@pytest.fixture
def core(state, redis_url, tmp_path, io_loop):
    core = identifier_core(state, redis_url, tmp_path / "users.yaml")
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return one_origin_app(core)
