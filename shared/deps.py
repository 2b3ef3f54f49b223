"""The dependencies every service builds once at start-up and hands to its handlers.

`Core.from_settings` loads keys, the encryption secret and the client registry, and
creates the (lazily connecting) Redis store. Problems with any of them are collected
into one `StartupError`, reported like configuration problems (exit status 2).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .config import StartupError, redact_url
from .clients import ClientRegistry, RegistryError, client_from_record, is_dynamic_id
from .ephemeral import SharedMaterial, new_signing_key
from .keys import KeyLoadError, Keyring, load_keyring
from .konnect_clients import is_konnect_id, konnect_client
from .sealed import Sealer, SecretError, load_secret, new_secret
from .session import logon_ttl
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
    # the group's shared ephemeral key and/or secret when either is not configured
    # (shared/ephemeral.py); every request confirms it first (`BaseHandler.prepare`)
    shared_material: Optional[SharedMaterial] = None

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
        # no key or secret configured: this process's random candidate for the group's
        # shared one (shared/ephemeral.py)
        ephemeral_key = None if settings.signing_private_key else new_signing_key()
        ephemeral_secret = None if settings.encryption_secret else new_secret()
        try:
            keyring = load_keyring(settings.signing_private_key,
                                   signing_kid=settings.signing_kid or None,
                                   signing_method=settings.signing_method,
                                   validation_keys_path=settings.validation_keys_path,
                                   access_token_key=settings.access_token_signing_key,
                                   ephemeral_signer=ephemeral_key)
        except KeyLoadError as err:
            problems.append(str(err))
        try:
            sealer = Sealer(ephemeral_secret or load_secret(settings.encryption_secret),
                            now=now, ephemeral=ephemeral_secret is not None)
        except SecretError as err:
            problems.append(str(err))
        try:
            registry = ClientRegistry.load(settings.identifier_registration_conf,
                                           issuer=settings.iss)
        except RegistryError as err:
            problems.append(str(err))
        if keyring is not None and registry is not None:
            problems += registry.unsignable(keyring.can_sign)
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
            problems.append(f"redis_url has value {err}" if redact_url(settings.redis_url) in str(err)
                            else f"redis_url {redact_url(settings.redis_url)!r}: {err}")
        if problems:
            raise StartupError(problems)
        if settings.allow_public_clients_without_pkce:
            log.warning("--allow-public-clients-without-pkce: clients without a secret may use "
                        "the code flow without PKCE (as Konnect allowed), so a code stolen on "
                        "its way to such a client can be redeemed by the thief (RFC 9700 "
                        "§2.1.1, §4.5). Turn it off once the relying parties send a "
                        "code_challenge")
        shared = None
        if keyring.ephemeral or sealer.ephemeral:
            shared = SharedMaterial(store, keyring, sealer, secret=ephemeral_secret,
                                    signing_method=settings.signing_method,
                                    lifetime=cls.ephemeral_lifetime(settings))
            shared.warn()
        return cls(settings=settings, keyring=keyring, sealer=sealer, registry=registry,
                   store=store, trusted_networks=parse_networks(settings.trusted_proxy), now=now,
                   scope_definitions=definitions, shared_material=shared)

    @staticmethod
    def ephemeral_lifetime(settings: Any) -> int:
        """How long the group's shared ephemeral material outlives its last use: as long
        as anything signed or sealed with it is honoured (a logon cookie, an ID token as
        `id_token_hint`, an access token), plus the clock skew."""
        return max(logon_ttl(settings), settings.id_token_expiration,
                   settings.access_token_expiration) + settings.clock_skew

    def requires_pkce(self, client: Any) -> bool:
        """Whether the code flow of `client` needs PKCE: a public client's does (RFC 9700
        §2.1.1), unless `--allow-public-clients-without-pkce` restores Konnect's behaviour.
        Authorize (services/authorize/request.py) and the code redemption
        (services/token/grants.py, the store's script) both ask here."""
        return client.is_public and not self.settings.allow_public_clients_without_pkce

    async def close(self) -> None:
        if self.users is not None:
            await self.users.close()
        await self.store.close()
