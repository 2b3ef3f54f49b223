"""The dependencies every service builds once at start-up and hands to its handlers.

`Core.from_settings` loads keys, the encryption secret and the client registry, and
creates the (lazily connecting) Redis store. Problems with any of them are collected
into one `StartupError`, reported like configuration problems (exit status 2).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import StartupError, redact_url
from .clients import ClientRegistry, RegistryError, client_from_record, is_dynamic_id
from .keys import KeyLoadError, Keyring, load_keyring
from .konnect_clients import is_konnect_id, konnect_client
from .sealed import Sealer, SecretError, load_secret
from .scopes import ScopeDefinitions, ScopesError
from .store import Store
from .tokens import Tokens
from .web import parse_networks

log = logging.getLogger("konnect.deps")


@dataclass
class Core:
    """Keys, sealing, clients and the store: what all four services share."""

    settings: Any
    keyring: Keyring
    sealer: Sealer
    registry: ClientRegistry
    store: Store
    trusted_networks: tuple = ()
    now: Callable[[], float] = field(default=time.time)
    scope_definitions: ScopeDefinitions = field(default_factory=ScopeDefinitions)
    users: Any = None  # the user backend, for the services that build one

    @property
    def tokens(self) -> Tokens:
        if getattr(self, "_tokens", None) is None:
            self._tokens = Tokens.from_core(self)
        return self._tokens

    async def lookup_client(self, client_id: Any, redirect_uri: Any = None):
        """The client `client_id` names, or None; every service looks clients up here.

        The static registry first; then, only for ids of the dynamic form (so unknown ids
        never cost a round trip), the clients registered at `/konnect/v1/register`, which
        live in Redis so that every process of every service sees them at once (an expired
        one is None); then Konnect's stateless `dyn.<JWT>` clients, read from their signed
        id (shared/konnect_clients.py); else an implicitly trusted client on the issuer's
        origin (as Konnect's identity/clients/registry.go), never for an id with the dynamic
        prefix.
        Raises `StoreUnavailable` when Redis cannot answer for a dynamic id.
        """
        client = self.registry.get(client_id)
        if client is not None:
            return client
        if is_dynamic_id(client_id):
            return client_from_record(await self.store.get_client(client_id), now=self.now())
        if is_konnect_id(client_id):
            return konnect_client(client_id, self.keyring, now=self.now(),
                                  skew=self.settings.clock_skew, issuer=self.settings.iss,
                                  signing_algs=self.keyring.signing_algs)
        return self.registry.lookup(client_id, redirect_uri)

    @classmethod
    def with_users(cls, settings: Any, *, now: Callable[[], float] = time.time) -> "Core":
        """`from_settings` plus the user backend (identifier, userinfo, token)."""
        from .users import BackendConfigError, make_backend
        problems, users = [], None
        try:
            users = make_backend(settings)
        except BackendConfigError as err:
            problems.append(str(err))
        try:
            core = cls.from_settings(settings, now=now)
        except StartupError as err:
            problems = err.problems + problems
        if problems:
            raise StartupError(problems)
        core.users = users
        users.bind(core)  # the store, sealer and token minter, for the backends that need them
        return core

    @classmethod
    def from_settings(cls, settings: Any, *, now: Callable[[], float] = time.time) -> "Core":
        problems: list[str] = []
        keyring = sealer = registry = None
        try:
            keyring = load_keyring(settings.signing_private_key,
                                   signing_kid=settings.signing_kid or None,
                                   signing_method=settings.signing_method,
                                   validation_keys_path=settings.validation_keys_path,
                                   access_token_key=settings.access_token_signing_key)
        except KeyLoadError as err:
            problems.append(str(err))
        try:
            sealer = Sealer(load_secret(settings.encryption_secret, logger=log), now=now)
        except SecretError as err:
            problems.append(str(err))
        try:
            registry = ClientRegistry.load(settings.identifier_registration_conf,
                                           issuer=settings.iss)
        except RegistryError as err:
            problems.append(str(err))
        definitions = ScopeDefinitions()
        try:
            definitions = ScopeDefinitions.load(settings.identifier_scopes_conf)
        except ScopesError as err:
            problems.append(str(err))
        store = None
        try:  # connects lazily; only the URL and options are checked here
            store = Store.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                   socket_timeout=settings.redis_timeout,
                                   connect_timeout=settings.redis_timeout, now=now)
        except (ValueError, TypeError) as err:  # redis-py's URL parsing: a bad port, db, option
            problems.append(f"redis_url {redact_url(settings.redis_url)!r}: {err}")
        if problems:
            raise StartupError(problems)
        return cls(settings=settings, keyring=keyring, sealer=sealer, registry=registry,
                   store=store, trusted_networks=parse_networks(settings.trusted_proxy), now=now,
                   scope_definitions=definitions)

    async def close(self) -> None:
        if self.users is not None:
            await self.users.close()
        await self.store.close()
