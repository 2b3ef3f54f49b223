"""Which service owns which public path (docs/architecture.md, "Processes"), and the address table.

The proxy configs in deploy/ (Caddyfile, apache/konnect.conf) route exactly these paths,
and the process configs use the names of deploy/addresses.env; tests/deploy/test_deploy.py checks
both against this module so the files cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from .discovery import COOKIE_AUTHORIZE_PATH, DISCOVERY_PATH, PATHS

ADDRESSES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "addresses.env"

# Exact paths per service; the identifier also owns everything under PREFIX_ROUTES. An
# issuer with a path adds one more for the token service: the discovery document under
# that path (`discovery.discovery_paths`; the proxies route `$KONNECT_ISSUER_PATH` +
# DISCOVERY_PATH). Every other path is the same whatever the issuer's path.
EXACT_ROUTES = {
    "token": (
        DISCOVERY_PATH,
        PATHS["jwks_uri"],
        PATHS["token_endpoint"],
        PATHS["revocation_endpoint"],
        PATHS["introspection_endpoint"],
        PATHS["registration_endpoint"],
    ),
    "userinfo": (PATHS["userinfo_endpoint"],),
    # the cookie identity manager's authorization endpoint (answered only with that manager)
    "authorize": (PATHS["authorization_endpoint"], COOKIE_AUTHORIZE_PATH,
                  PATHS["check_session_iframe"]),
}
PREFIX_ROUTES = {"identifier": ("/signin/v1/",)}


def owner(path: str) -> str | None:
    """The service a public path is routed to (None: the proxy answers 404)."""
    for service, paths in EXACT_ROUTES.items():
        if path in paths:
            return service
    for service, prefixes in PREFIX_ROUTES.items():
        if any(path.startswith(p) for p in prefixes):
            return service
    return None


def read_addresses(path: Path = ADDRESSES_FILE) -> dict[str, str]:
    """NAME=value lines of deploy/addresses.env (comments and blank lines skipped)."""
    table = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            table[name.strip()] = value.strip()
    return table
