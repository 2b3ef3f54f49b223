"""The in-process OP that most service tests run against (a pytest plugin, loaded by
tests/conftest.py).

`state` (keys, secret, registry), `users_path` (the users file), `clock`, `core` and `app`
are built from the test's `op` marker (the closest one says it all; no marker or an empty
one: `OPConfig()`), e.g.

    pytestmark = pytest.mark.op(service="token", apps=("token",))

    @pytest.mark.op(args=("--allow-dynamic-client-registration",))
    async def test_...(http_client, base_url, core): ...

`app` serves the configured services' routes on one origin, as the proxy does; pytest-
tornado's `http_client` and `base_url` reach it. `services` starts services the way their
`main()` builds them, each on its own port (tests/support/services.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import tornado.web
import yaml

from shared.deps import Core
from tests.support.clock import FrozenClock, OffsetClock
from tests.support.op import REGISTRY, make_state, settings_for
from tests.support.users import ALICE_ENTRY

ALL_APPS = ("identifier", "authorize", "token", "userinfo")


@dataclasses.dataclass(frozen=True)
class OPConfig:
    """What the in-process OP of a test is: its registry, users, flags and services."""

    registry: str = REGISTRY
    # the users file's entries; None: no user backend at all (Core.from_settings)
    users: tuple | None = (ALICE_ENTRY,)
    args: tuple = ()
    service: str = "identifier"     # the service whose settings the core is built with
    apps: tuple = ALL_APPS          # the services `app` serves on one origin
    clock: str | None = None        # "frozen" or "offset": the core reads the `clock` fixture


def _config(request) -> OPConfig:
    mark = request.node.get_closest_marker("op")
    return OPConfig(**(mark.kwargs if mark else {}))


@pytest.fixture
def op_config(request) -> OPConfig:
    return _config(request)


_STATES: dict[str, dict] = {}


@pytest.fixture
def state(tmp_path_factory, op_config) -> dict:
    """Dev state for the configured registry, made once per registry per run."""
    key = hashlib.sha256(op_config.registry.encode()).hexdigest()[:16]
    if key not in _STATES:
        _STATES[key] = make_state(tmp_path_factory.mktemp("op-state"), op_config.registry)
    return _STATES[key]


@pytest.fixture
def users_path(tmp_path, op_config) -> Path:
    """The users file the core's backend reads; a test may rewrite it."""
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": list(op_config.users or ())}))
    return path


@pytest.fixture
def clock(op_config):
    """The core's clock when the config asks for one: frozen at now, or now plus an offset."""
    return OffsetClock() if op_config.clock == "offset" else FrozenClock()


@pytest.fixture
def core(op_config, state, redis_url, users_path, clock, io_loop):
    now = {"now": clock} if op_config.clock else {}
    if op_config.users is None:
        built = Core.from_settings(settings_for(op_config.service, state, redis_url,
                                                op_config.args), **now)
    else:
        built = Core.with_users(settings_for(op_config.service, state, redis_url,
                                             [*op_config.args, "--users-file", str(users_path)]),
                                **now)
    yield built
    io_loop.run_sync(built.close)


@pytest.fixture
def app(core, op_config):
    return serve_on_one_origin(core, op_config.apps)


def serve_on_one_origin(core: Core, names) -> tornado.web.Application:
    """The routes of the named services in one application (the proxy's view)."""
    from services.authorize.app import make_app as authorize_app
    from services.identifier.app import make_app as identifier_app
    from services.token.app import make_app as token_app
    from services.userinfo.app import make_app as userinfo_app
    makers = {"identifier": identifier_app, "authorize": authorize_app, "token": token_app,
              "userinfo": userinfo_app}
    if len(names) == 1:
        return makers[names[0]](core.settings, core)
    rules, settings = [], {}
    for name in names:
        application = makers[name](core.settings, core)
        rules += [r for r in application.wildcard_router.rules
                  if r.matcher.regex.pattern != "/health-check$"]
        if name == "identifier":
            settings = {k: v for k, v in application.settings.items()
                        if k in ("template_path", "static_path", "static_url_prefix",
                                 "static_handler_class")}
    return tornado.web.Application(rules, **settings)


DYNAMIC_REGISTRATION = ["--allow-dynamic-client-registration"]


# -- the services on ports of their own (tests/support/services.py) ---------------------------

@pytest.fixture
def start(state, redis_url, io_loop):
    """`start(env, argv)`: the token, userinfo and identifier services built the way `main()`
    builds them from the same state, Redis and environment, sharing one clock."""
    from shared.config import load_settings
    from tests.support.op import ISSUER
    from tests.support.services import APPS, OP
    started = []

    def factory(env: dict, argv=()) -> OP:
        op = OP(OffsetClock())
        started.append(op)
        for name in APPS:
            settings = load_settings(
                ["--iss", ISSUER, "--signing-private-key", state["key"],
                 "--encryption-secret", state["secret"],
                 "--identifier-registration-conf", state["registry"],
                 "--redis-url", redis_url, *argv], env, service=name)
            op.serve(name, Core.with_users(settings, now=op.clock))
        return op

    yield factory
    for op in started:
        io_loop.run_sync(op.close)


@pytest.fixture
def ldap_op(start, slapd_server, ldap_ou):
    """The services with the LDAP backend on the test's own ou."""
    from tests.support.services import ldap_env
    return start(ldap_env(slapd_server, ldap_ou))


def _users_op(start, directory):
    from tests.support.op import USERS
    path = directory / "users.yaml"
    path.write_text(yaml.safe_dump(USERS))
    return start({"KONNECTD_IDENTITY_MANAGER": "users", "KONNECTD_USERS_FILE": str(path)})


@pytest.fixture
def users_op(start, tmp_path):
    """The services with the users-file backend (tests.support.op.USERS)."""
    return _users_op(start, tmp_path)


@pytest.fixture(params=["users", "ldap"])
def op_user(request, start, tmp_path):
    """(OP, username, password) with either backend: the cross-service rules hold for both."""
    from tests.support.services import PASSWORD, add_person, ldap_env
    if request.param == "users":
        return _users_op(start, tmp_path), "alice", "wonderland"
    server, ou = request.getfixturevalue("slapd_server"), request.getfixturevalue("ldap_ou")
    add_person(server, ou, "lena")
    return start(ldap_env(server, ou)), "lena", PASSWORD
