"""User backends: `users` (local YAML file, the default), `ldap`, `kc` (Kopano server), `cookie`."""

from __future__ import annotations

from typing import Any

from .base import BackendUnavailable, UserBackend

__all__ = ["BackendUnavailable", "UserBackend", "make_backend", "BackendConfigError"]


class BackendConfigError(Exception):
    """The configured identity manager cannot be built (reported as a start-up problem)."""


def make_backend(settings: Any) -> UserBackend:
    backend = _backend(settings)
    if getattr(settings, "allow_client_guests", False):
        from .guest import GuestAware
        return GuestAware(backend)
    return backend


def _backend(settings: Any) -> UserBackend:
    manager = settings.identity_manager
    if manager == "users":
        from .userfile import UsersFileBackend, UsersFileError
        if not settings.users_file:
            raise BackendConfigError("identity manager 'users' needs --users-file "
                                     "(KONNECTD_USERS_FILE)")
        try:
            return UsersFileBackend(settings.users_file)
        except UsersFileError as err:
            raise BackendConfigError(str(err)) from None
    if manager in ("ldap", "kc"):  # a directory: its entries are cached briefly (cache.py)
        from .cache import cached
        if manager == "ldap":
            from .ldap import LDAPBackend
            return cached(LDAPBackend.from_settings(settings), settings.user_cache_ttl)
        from .kc import KCBackend
        return cached(KCBackend.from_settings(settings), settings.user_cache_ttl)
    if manager == "cookie":
        from .cookie import CookieBackend
        return CookieBackend.from_settings(settings)
    if manager == "dummy":
        if not settings.allow_dummy_backend:
            raise BackendConfigError("identity manager 'dummy' signs anybody in as 'dummy': "
                                     "allow it explicitly with --allow-dummy-backend "
                                     "(KONNECTD_ALLOW_DUMMY_BACKEND=yes), for tests and demos only")
        from .dummy import DummyBackend
        return DummyBackend()
    raise BackendConfigError(f"identity manager {manager!r} is not available yet")
