"""The table of every setting: flag, environment names, konnectd.cfg key, type, default, help.

Flags, env variables, cfg keys, `--help` and the README table are all derived from
`OPTIONS`, so they cannot drift apart (Konnect's hand-written binscript mapping did).
Konnect's names are kept (cmd/konnectd/serve.go, scripts/konnectd.cfg); options it lacks are
marked "(extension)" in their help. Parsing and validation live in `shared.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVICES = ("identifier", "authorize", "token", "userinfo")

# Default listen address per service (the port table; deploy/ files are checked against it).
DEFAULT_LISTEN = {
    "identifier": "127.0.0.1:8777",
    "authorize": "127.0.0.1:8778",
    "token": "127.0.0.1:8779",
    "userinfo": "127.0.0.1:8780",
}

IDENTITY_MANAGERS = ("users", "ldap", "kc", "cookie", "dummy")
LOG_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug")
# RFC 7518 §3.1 and RFC 8037 §3.1: the JWS algorithms a key of ours can sign with.
SIGNING_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                   "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True)
class Option:
    """One setting. `kind` is one of: str, int, bool, path, paths, list, choice."""

    name: str
    kind: str
    default: Any
    help: str
    env: tuple[str, ...] = ()          # Konnect's own env names (the KONNECTD_ twin is added)
    cfg: str | None = None             # konnectd.cfg key; None = the option name
    flag: bool = True                  # has a --flag
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None         # every int option has one (refused above it)
    secret: bool = False               # never printed, never logged
    extension: bool = False            # not in Konnect
    envs: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        twin = "KONNECTD_" + self.name.upper()
        names = self.env + ((twin,) if twin not in self.env else ())
        object.__setattr__(self, "envs", names)

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def cfg_key(self) -> str:
        return self.cfg or self.name


def _o(name, kind, default, help, **kw) -> Option:
    return Option(name, kind, default, help, **kw)


# Upper bounds of the numeric options. Out-of-range values are refused at start-up: an
# absurd value would otherwise fail per request (a 500 on every token request, an
# OverflowError in a socket timeout) or silently weaken a check (a year of clock skew).
TEN_YEARS = 10 * 365 * 86400    # token lifetimes: 3.3 x Konnect's 3-year refresh default
MAX_CODE_LIFETIME = 600         # RFC 6749 §4.1.2: a code lifetime of at most 10 min is RECOMMENDED
MAX_CLOCK_SKEW = 600            # RFC 7519 §4.1.4: "a few minutes" of leeway
MAX_TIMEOUT = 600               # backend/Redis timeouts: 10 min; a request never waits longer
MAX_BODY_SIZE = 16 * 1024 * 1024
MAX_SESSION_TIMEOUT = 86400     # Kopano server session timeout: one day
MAX_USER_CACHE_TTL = 60         # how stale a directory entry may be: "a few seconds" is the point


OPTIONS: tuple[Option, ...] = (
    # --- the provider (Konnect's `serve` flags, cmd/konnectd/serve.go)
    _o("config", "path", None, "konnectd.cfg-style file of `key = value` lines (extension)",
       env=("KONNECTD_CONFIG",), extension=True),
    _o("iss", "str", None, "OIDC issuer URL (https://host[:port][/path]); required",
       env=("OIDC_ISSUER_IDENTIFIER",), cfg="oidc_issuer_identifier"),
    _o("allow_http_loopback_issuer", "bool", False,
       "allow an http:// issuer on a loopback host, for tests only (extension)", extension=True),
    _o("listen", "str", None, "TCP listen address host:port (default: per service)",
       env=("KONNECTD_LISTEN",)),
    _o("signing_private_key", "paths", (), "private key file(s), PEM or JWK .json; repeatable; "
       "env: separated by spaces", env=("KONNECTD_SIGNING_PRIVATE_KEY",)),
    _o("signing_kid", "str", "", "kid of the default signing key (default: from the key file)",
       env=("KONNECTD_SIGNING_KID",)),
    _o("signing_method", "choice", "PS256", "default JWS algorithm for tokens",
       choices=SIGNING_METHODS),
    _o("access_token_signing_key", "path", None, "private key file (PEM or JWK .json) that "
       "signs access tokens instead of the signing key, e.g. the EC P-256 key `keytool "
       "generate` makes (ES256); published in the JWKS like the others (extension)",
       extension=True),
    _o("validation_keys_path", "path", None, "directory of *.pem/*.json validation-only keys",
       env=("KONNECTD_VALIDATION_KEYS_PATH",)),
    _o("encryption_secret", "path", None, "file with exactly 32 random bytes "
       "(openssl rand -out FILE 32)", env=("KONNECTD_ENCRYPTION_SECRET",),
       cfg="encryption_secret_key"),
    _o("uri_base_path", "str", "", "path prefix for /konnect/v1 and /signin/v1 (not "
       "supported: a value is refused; serve the OP at the root of its host)"),
    _o("sign_in_uri", "str", None, "cookie identity manager: the web application's sign-in "
       "page for users who are not signed in (continue=<authorize URL>&oauth=1)"),
    _o("signed_out_uri", "str", None, "where end session sends the browser when the RP gave "
       "no post_logout_redirect_uri (default: /signin/v1/goodbye)"),
    _o("authorization_endpoint_uri", "str", None, "custom authorize URL (refused for the "
       "identifier managers, as Konnect)"),
    _o("endsession_endpoint_uri", "str", None, "custom end-session URL (refused for the "
       "identifier managers, as Konnect)"),
    _o("disable_identifier_client", "bool", False, "do not serve the sign-in web pages"),
    _o("identifier_client_path", "path", None, "directory with replacement branding "
       "(logo.svg, brand.css) for the sign-in pages", env=("KONNECTD_IDENTIFIER_CLIENT_PATH",)),
    _o("identifier_registration_conf", "path", None, "client registry YAML "
       "(identifier-registration.yaml)"),
    _o("identifier_scopes_conf", "path", None, "scopes YAML (scopes.yaml)"),
    _o("insecure", "bool", False, "skip TLS verification on OUTGOING connections "
       "(LDAP, Kopano server, cookie backend)"),
    _o("trusted_proxy", "list", (), "IP address or CIDR of a trusted reverse proxy; repeatable",
       cfg="trusted_proxies"),
    _o("allow_scope", "list", (), "replace the list of supported scopes; repeatable",
       cfg="allowed_scopes"),
    _o("allow_client_guests", "bool", False, "allow sign in of client controlled guest users "
       "(Konnect: a signed request object with scope konnect/guestok names the guest)"),
    _o("allow_dynamic_client_registration", "bool", False, "enable /konnect/v1/register"),
    _o("allow_public_clients_without_pkce", "bool", False, "let clients without a secret "
       "(public clients, implicitly trusted ones) use the code flow without PKCE, as Konnect "
       "did; for migrating relying parties only: PKCE protects their codes (RFC 9700 "
       "§2.1.1), and a warning says so at start-up (extension)", extension=True),
    _o("access_token_expiration", "int", 600, "access token lifetime, seconds (0: the "
       "default; at most 10 years, as every token lifetime: a bound against typos, larger "
       "values made every token request fail)", minimum=0,
       maximum=TEN_YEARS),
    _o("id_token_expiration", "int", 3600, "ID token lifetime, seconds (0: the default; at "
       "most 10 years)", minimum=0, maximum=TEN_YEARS),
    _o("refresh_token_expiration", "int", 94608000, "refresh token lifetime, seconds (0: the "
       "default; at most 10 years)", minimum=0, maximum=TEN_YEARS),
    _o("logon_cookie_expiration", "int", 0, "the longest a sign-in at the identifier lasts, "
       "seconds (0: as long as the browser keeps its session cookie, as Konnect, bounded by "
       "400 days; a sign-out is remembered that long) (extension)", minimum=0,
       maximum=400 * 86400, extension=True),
    _o("dynamic_client_secret_expiration", "int", 0,
       "dynamic client secret lifetime, seconds (0: never; at most 10 years)", minimum=0,
       maximum=TEN_YEARS),
    _o("log_timestamp", "bool", True, "prefix log lines with a timestamp"),
    _o("log_level", "choice", "info", "log level", choices=LOG_LEVELS),
    _o("log_format", "choice", "text", "log format: text (key=value) or json (extension)",
       choices=("text", "json"), extension=True),
    _o("with_metrics", "bool", False, "serve Prometheus metrics on --metrics-listen"),
    _o("metrics_listen", "str", "127.0.0.1:6777", "metrics listen address"),
    _o("with_pprof", "bool", False, "Konnect's Go profiler (pprof) listener: accepted so "
       "Konnect command lines keep working, no effect here (no pprof in Python)"),
    _o("pprof_listen", "str", "127.0.0.1:6060", "pprof listen address (accepted, no effect)"),
    _o("metrics_dir", "str", None, "directory shared by the processes of a service for "
       "summed Prometheus metrics (extension)", env=("KONNECTD_METRICS_DIR",), extension=True),
    # --- extensions of this implementation
    _o("redis_url", "str", "redis://127.0.0.1:6379/0", "Redis for codes, refresh tokens, "
       "the revocation list and rate limits: redis://, rediss://, unix:// (one server), "
       "redis+sentinel://host:port,.../service_name[/db], redis+cluster://host:port,... "
       "(and rediss+...), with ?replicas=, wait_timeout=, max_connections=, "
       "sentinel_username=, sentinel_password= (docs/operations.md, \"Redis Sentinel and "
       "Cluster\") (extension)",
       env=("KONNECTD_REDIS_URL",), extension=True),
    _o("redis_prefix", "str", "konnect:", "prefix of every Redis key (extension)", extension=True),
    _o("redis_timeout", "int", 2, "Redis connect and socket timeout, seconds (at most 600: "
       "no request should wait on Redis longer) (extension)", minimum=1, maximum=MAX_TIMEOUT,
       extension=True),
    _o("identity_manager", "choice", "users", "user backend: users, ldap, kc, cookie, dummy "
       "(Konnect: the serve positional argument)", env=("KONNECTD_IDENTITY_MANAGER",),
       choices=IDENTITY_MANAGERS),
    _o("identity_manager_args", "list", (), "arguments of the identity manager "
       "(cookie: <backend-url> <cookie names>)", flag=False),
    _o("allow_dummy_backend", "bool", False, "allow the `dummy` identity manager, which "
       "signs anybody in as one fixed user: tests and demos only (extension)", extension=True),
    _o("user_cache_ttl", "int", 5, "seconds a process may answer token, refresh, userinfo "
       "and authorize requests from its copy of a directory entry (ldap, kc); a user "
       "disabled or removed in the directory loses them within this time; sign-in always "
       "asks the directory; 0: no cache (at most 60) (extension)", minimum=0,
       maximum=MAX_USER_CACHE_TTL, extension=True),
    _o("users_file", "path", None, "YAML users file of the `users` backend (extension)",
       env=("KONNECTD_USERS_FILE",), extension=True),
    _o("code_expiration", "int", 60, "authorization code lifetime, seconds (at most 600: "
       "RFC 6749 §4.1.2 recommends a code lifetime of at most 10 minutes) (extension)",
       minimum=1, maximum=MAX_CODE_LIFETIME, extension=True),
    _o("clock_skew", "int", 30, "tolerated clock skew when checking token times, seconds "
       "(at most 600: RFC 7519 §4.1.4 allows a small leeway of a few minutes; more would "
       "accept expired tokens) (extension)", minimum=0, maximum=MAX_CLOCK_SKEW,
       extension=True),
    _o("event_loop", "choice", "uvloop", "event loop of the service process: uvloop (faster "
       "I/O and Redis calls) or asyncio (extension)", choices=("uvloop", "asyncio"),
       extension=True),
    _o("max_body_size", "int", 65536, "largest accepted request body, bytes (at most 16 "
       "MiB: bodies are held in memory, and no OP request comes near it) (extension)",
       minimum=1024, maximum=MAX_BODY_SIZE, extension=True),
    # --- LDAP backend (Konnect reads these from the environment only, bootstrap/ldap.go)
    _o("ldap_uri", "str", None, "LDAP server: ldap://host[:389] or ldaps://host[:636]",
       env=("LDAP_URI",)),
    _o("ldap_binddn", "str", "", "service bind DN (empty: anonymous)", env=("LDAP_BINDDN",)),
    _o("ldap_bindpw", "str", "", "service bind password", env=("LDAP_BINDPW",), secret=True),
    _o("ldap_basedn", "str", None, "search base DN", env=("LDAP_BASEDN",)),
    _o("ldap_scope", "choice", "sub", "search scope", env=("LDAP_SCOPE",),
       choices=("sub", "one", "base")),
    _o("ldap_filter", "str", "(objectClass=inetOrgPerson)", "user filter", env=("LDAP_FILTER",)),
    _o("ldap_login_attribute", "str", "uid", "login attribute", env=("LDAP_LOGIN_ATTRIBUTE",)),
    _o("ldap_email_attribute", "str", "mail", "email attribute", env=("LDAP_EMAIL_ATTRIBUTE",)),
    _o("ldap_name_attribute", "str", "cn", "name attribute", env=("LDAP_NAME_ATTRIBUTE",)),
    _o("ldap_family_name_attribute", "str", "sn", "family name attribute",
       env=("LDAP_FAMILY_NAME_ATTRIBUTE",)),
    _o("ldap_given_name_attribute", "str", "givenName", "given name attribute",
       env=("LDAP_GIVEN_NAME_ATTRIBUTE",)),
    _o("ldap_uuid_attribute", "str", "uuid", "unique id attribute (kc.uuid)",
       env=("LDAP_UUID_ATTRIBUTE",)),
    _o("ldap_uuid_attribute_type", "choice", "text", "uuid attribute type",
       env=("LDAP_UUID_ATTRIBUTE_TYPE",), choices=("text", "binary", "uuid")),
    _o("ldap_uidnumber_attribute", "str", "", "numeric id attribute (enables konnect/id)",
       env=("LDAP_UIDNUMBER_ATTRIBUTE",)),
    _o("ldap_sub_attributes", "list", (), "attributes forming the raw subject (default: the DN)",
       env=("LDAP_SUB_ATTRIBUTES",)),
    _o("ldap_timeout", "int", 10, "LDAP deadline, seconds: a logon or lookup, with all its "
       "round trips and the wait for a free connection, answers within it, else 503 (at "
       "most 600) (extension)",
       minimum=1, maximum=MAX_TIMEOUT, extension=True),
    # --- Kopano server backend (kc; Konnect's bootstrap/kc.go)
    _o("kopano_server_default_uri", "str", "file:///run/kopano/server.sock",
       "Kopano server: http(s)://host:port or file:///path/to/socket",
       env=("KOPANO_SERVER_DEFAULT_URI",), cfg="kc_server_uri"),
    _o("kopano_server_username", "str", "", "global session user", env=("KOPANO_SERVER_USERNAME",)),
    _o("kopano_server_password", "str", "", "global session password",
       env=("KOPANO_SERVER_PASSWORD",), secret=True),
    _o("kopano_client_certificate", "path", None, "TLS client certificate",
       env=("KOPANO_CLIENT_CERTIFICATE",)),
    _o("kopano_client_private_key", "path", None, "TLS client private key",
       env=("KOPANO_CLIENT_PRIVATE_KEY",)),
    _o("kopano_server_session_timeout", "int", 300, "Kopano session timeout, seconds (at "
       "most one day); without a global session access tokens live at most this minus 60 s, "
       "as in Konnect", env=("KOPANO_SERVER_SESSION_TIMEOUT",), cfg="kc_session_timeout",
       minimum=61, maximum=MAX_SESSION_TIMEOUT),
    _o("kc_timeout", "int", 10, "Kopano server timeout, seconds: connect and read, and the "
       "one deadline of a whole logon or lookup (all its SOAP requests and Redis round "
       "trips), else 503 (at most 600) (extension)", minimum=1, maximum=MAX_TIMEOUT,
       extension=True),
)

BY_NAME = {o.name: o for o in OPTIONS}


def markdown_table() -> str:
    """The configuration reference (docs/configuration.md), generated from OPTIONS."""
    lines = ["| flag | environment | konnectd.cfg key | default | meaning |",
             "|---|---|---|---|---|"]
    for opt in OPTIONS:
        flag = f"`{opt.flag_name}`" if opt.flag else "(positional)"
        envs = ", ".join(f"`{e}`" for e in opt.envs)
        if opt.name == "listen":
            default = "per service: " + ", ".join(f"{s} `{a}`" for s, a in DEFAULT_LISTEN.items())
        elif opt.default in (None, (), ""):
            default = ""
        elif isinstance(opt.default, bool):
            default = "`yes`" if opt.default else "`no`"
        else:
            default = f"`{opt.default}`"
        choices = f" One of {', '.join(opt.choices)}." if opt.kind == "choice" else ""
        if opt.kind == "int":
            choices = f" From {opt.minimum} to {opt.maximum}."
        text = (opt.help + "." + choices).replace("|", "\\|")
        lines.append(f"| {flag} | {envs} | `{opt.cfg_key}` | {default} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
