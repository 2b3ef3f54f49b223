"""User backends: `users` (local YAML file, the default), `ldap`, `kc` (Kopano server), `cookie`."""

from .base import BackendUnavailable, UserBackend

__all__ = ["BackendUnavailable", "UserBackend"]
