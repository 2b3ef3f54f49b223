"""One typed settings object built from CLI flags, environment and a konnectd.cfg file.

Precedence: flag > environment > cfg file > default. The option table is
`shared.options.OPTIONS`; this module parses, casts and validates. Every problem is
collected and reported at once; `exit_on_problems` prints them and exits with status 2.
Tests call `load_settings(argv, environ=...)` with an explicit mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from .options import BY_NAME, DEFAULT_LISTEN, OPTIONS, Option
from .origins import is_loopback_host
from .redis_url import parse_url as parse_redis_url
from .redis_url import redact

_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off"}
_PY_TYPES = {"str": "str | None", "int": "int", "bool": "bool", "path": "Path | None",
             "paths": "tuple[Path, ...]", "list": "tuple[str, ...]", "choice": "str"}

Settings = dataclasses.make_dataclass(
    "Settings",
    [("service", "str")] + [(o.name, _PY_TYPES[o.kind]) for o in OPTIONS],
    frozen=True,
    namespace={
        "__doc__": "Validated settings of one service process (fields: shared.options.OPTIONS).",
        "__repr__": lambda self: "Settings(" + ", ".join(
            f"{o.name}={'***' if o.secret and getattr(self, o.name) else getattr(self, o.name)!r}"
            for o in OPTIONS) + ")",
    },
)


class ConfigError(Exception):
    """Settings could not be built; `problems` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StartupError(ConfigError):
    """Dependencies (keys, secret, registry) could not be built; reported like ConfigError."""


_ARGS_OPT = next(o for o in OPTIONS if o.name == "identity_manager_args")


def build_parser(service: str) -> argparse.ArgumentParser:
    """The argparse parser; `--help` lists every option with its env names and default."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"Konnect-compatible OpenID Provider: the {service} service.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every option can also be set in the environment (names in brackets) or in the "
               "--config file (key = value).",
    )
    for opt in OPTIONS:
        if not opt.flag:
            continue
        default = DEFAULT_LISTEN.get(service) if opt.name == "listen" else opt.default
        shown = "***" if opt.secret and default else _show(default)
        text = f"{opt.help} [env: {', '.join(opt.envs)}; default: {shown}]"
        kw: dict[str, Any] = {"help": text, "dest": opt.name}
        if opt.kind == "bool":
            kw.update(nargs="?", const="true", metavar="BOOL")
        elif opt.kind in ("paths", "list"):
            kw.update(action="append", metavar=opt.name.upper())
        else:
            kw.update(metavar=opt.name.upper())
        parser.add_argument(opt.flag_name, **kw)
    parser.add_argument("positional", nargs="*", metavar="IDENTITY_MANAGER [ARG ...]",
                        help="identity manager and its arguments, as `konnectd serve` takes them "
                             f"[env: {', '.join(_ARGS_OPT.envs)}; default: none]")
    return parser


def _show(value: Any) -> str:
    if value is None or value == () or value == "":
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_cfg(path: Path) -> dict[str, str]:
    """Read a konnectd.cfg / systemd EnvironmentFile: `key = value`, `#` comments."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: expected `key = value`")
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _cast(opt: Option, raw: Any, source: str, problems: list[str]) -> Any:
    """Turn a raw string (or list of strings for repeated flags) into the option's type."""
    def bad(why: str) -> None:
        problems.append(f"{opt.name} ({source}) has value {raw!r}: {why}")

    if opt.kind in ("paths", "list"):
        items = raw if isinstance(raw, list) else str(raw).split()
        if opt.kind == "paths":
            return tuple(Path(i) for i in items if i)
        return tuple(i for i in items if i)
    value = str(raw).strip() if opt.kind != "str" else str(raw)
    if opt.kind == "bool":
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        bad("not a boolean (yes/no/true/false/1/0)")
        return opt.default
    if opt.kind == "int":
        # ASCII digits only: int() would also take "1_000", "+5" and other scripts' digits
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            if re.fullmatch(r"-?[0-9]+", value) is None:
                bad("not a whole number")
            else:
                bad(f"must be at least {opt.minimum}" if value.startswith("-")
                    else f"must be at most {opt.maximum} (see --help)")
            return opt.default
        number = int(value)
        if opt.minimum is not None and number < opt.minimum:
            bad(f"must be at least {opt.minimum}")
            return opt.default
        if opt.maximum is not None and number > opt.maximum:
            bad(f"must be at most {opt.maximum} (see --help)")
            return opt.default
        return number
    if opt.kind == "choice":
        if value not in opt.choices:
            bad("must be one of " + ", ".join(opt.choices))
            return opt.default
        return value
    if opt.kind == "path":
        return Path(value) if value else None
    return value


def load_settings(argv: Sequence[str], environ: Mapping[str, str], *, service: str):
    """Build and validate Settings; raise ConfigError listing every problem.

    argparse itself exits with status 2 on an unknown flag and prints `--help`.
    """
    args = vars(build_parser(service).parse_args(list(argv)))
    problems: list[str] = []
    cfg: dict[str, str] = {}
    cfg_path = args.get("config") or next((environ[e] for e in BY_NAME["config"].envs
                                           if environ.get(e)), None)
    if cfg_path:
        try:
            cfg = read_cfg(Path(cfg_path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problems.append(f"config file {cfg_path}: {getattr(exc, 'strerror', None) or exc}")
    positional = list(args.pop("positional", []) or [])

    values: dict[str, Any] = {"service": service}
    for opt in OPTIONS:
        if opt.name in args:
            raw, source = args[opt.name], "flag"
        elif (env := next((e for e in opt.envs if environ.get(e, "") != ""), None)):
            raw, source = environ[env], env
        elif opt.cfg_key in cfg:
            raw, source = cfg[opt.cfg_key], f"config {opt.cfg_key}"
        else:
            default = opt.default
            if opt.name == "listen":
                default = DEFAULT_LISTEN.get(service, "127.0.0.1:8777")
            values[opt.name] = default
            continue
        values[opt.name] = _cast(opt, raw, source, problems)

    if positional:  # Konnect: `serve <identity-manager> [args...]`
        manager_opt = BY_NAME["identity_manager"]
        values["identity_manager"] = _cast(manager_opt, positional[0], "argument", problems)
        values["identity_manager_args"] = tuple(positional[1:])
    for name in ("access_token_expiration", "id_token_expiration", "refresh_token_expiration"):
        if values[name] == 0:  # Konnect: 0 means the default
            values[name] = BY_NAME[name].default
    if kc_per_user_sessions(values):
        # Konnect's bootstrap/kc.go: with per-user Kopano sessions, access tokens live at
        # most the session timeout minus 60 s, so that clients refresh (and the user is
        # looked up on their session) before the server's session idles out
        values["access_token_expiration"] = min(
            values["access_token_expiration"],
            max(1, values["kopano_server_session_timeout"] - KC_SESSION_MARGIN))

    settings = Settings(**values)
    problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


KC_SESSION_MARGIN = 60  # seconds before the Kopano server's session timeout (Konnect's)


def kc_per_user_sessions(values: Any) -> bool:
    """Whether the kc backend works with per-user Kopano sessions: no global session user
    (KOPANO_SERVER_USERNAME) and no client certificate (SYSTEM), as Konnect decides in
    bootstrap/kc.go. `values`: Settings or the mapping load_settings builds."""
    get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
    return get("identity_manager") == "kc" and not get("kopano_server_username") \
        and not get("kopano_client_certificate")


def _check_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) < 65536 and host != ""


def validate(s) -> list[str]:
    """Every problem with a Settings object, one line each (empty when valid)."""
    problems: list[str] = []
    problems += _check_issuer(s)
    if not _check_host_port(s.listen):
        problems.append(f"listen has value {s.listen!r}: must be host:port")
    if s.with_metrics and not _check_host_port(s.metrics_listen):
        problems.append(f"metrics_listen has value {s.metrics_listen!r}: must be host:port")
    for path in s.signing_private_key:
        if not path.exists():
            problems.append(f"signing_private_key {path}: no such file")
        elif not path.is_file():  # a directory, /dev/zero, a FIFO: shared.keys says which
            problems.append(f"signing_private_key {path}: not a regular file")
    if s.validation_keys_path and not s.validation_keys_path.is_dir():
        problems.append(f"validation_keys_path {s.validation_keys_path}: no such directory")
    if s.encryption_secret:
        if not s.encryption_secret.is_file():
            problems.append(f"encryption_secret {s.encryption_secret}: no such file")
        elif (size := s.encryption_secret.stat().st_size) != 32:
            problems.append(f"encryption_secret {s.encryption_secret}: holds {size} bytes, "
                            "must be exactly 32")
    for name in ("identifier_registration_conf", "identifier_scopes_conf", "config"):
        path = getattr(s, name)
        if path and not path.is_file():
            problems.append(f"{name} {path}: no such file")
    for proxy in s.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            problems.append(f"trusted_proxy has value {proxy!r}: not an IP address or CIDR")
    problems += _check_redis_url(s.redis_url)
    if s.uri_base_path:
        problems.append(f"uri_base_path has value {s.uri_base_path!r}: a path prefix is not "
                        "supported; serve the OP at the root of its own host name")
    if s.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        problems.append("event_loop uvloop: the uvloop package is not installed "
                        "(pip install uvloop, or --event-loop asyncio)")
    problems += _check_identity_manager(s)
    return problems


def url_port_problem(url: str) -> str | None:
    """Why the port of an absolute URL is unusable, or None (no port, or 1-65535).

    RFC 3986 §3.2.3: the port is ASCII digits; TCP ports are 1-65535. urlsplit's `.port`
    raises on some bad ports and passes others (0, an empty port), so the text is checked.
    """
    hostport = urlsplit(url).netloc.rpartition("@")[2]
    if hostport.startswith("["):                       # IPv6 literal: [::1]:port
        rest = hostport.partition("]")[2]
    else:
        rest = hostport[hostport.find(":"):] if ":" in hostport else ""
    if not rest:
        return None
    port = rest[1:] if rest.startswith(":") else rest
    if not rest.startswith(":") or not re.fullmatch(r"[0-9]{1,5}", port) \
            or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def redact_url(url: str) -> str:
    """The URL with any password replaced by *** (user info, `password=`,
    `sentinel_password=`), for messages."""
    return redact(url)


def _check_issuer(s) -> list[str]:
    """OIDC Discovery §3 / OIDC Core §16.15: https URL with a host, no query or fragment."""
    if not s.iss:
        return ["iss is required (--iss or OIDC_ISSUER_IDENTIFIER)"]
    parts = urlsplit(s.iss)
    if parts.query or parts.fragment or not parts.hostname:
        return [f"iss has value {s.iss!r}: must be a URL with a host and no query or fragment"]
    if (why := url_port_problem(s.iss)):
        return [f"iss has value {s.iss!r}: {why}"]
    if parts.scheme == "https":
        return []
    if parts.scheme == "http" and is_loopback_host(parts.hostname) and s.allow_http_loopback_issuer:
        return []
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return [f"iss has value {s.iss!r}: http is allowed only with "
                "--allow-http-loopback-issuer (tests)"]
    return [f"iss has value {s.iss!r}: must be an https URL"]


def _check_redis_url(url: str) -> list[str]:
    """One server, Sentinel or Cluster: shared/redis_url.py says what a URL may be."""
    try:
        parse_redis_url(url)
    except ValueError as err:
        return [f"redis_url has value {err}"]
    return []


def _check_identity_manager(s) -> list[str]:
    problems: list[str] = []
    manager = s.identity_manager
    if manager == "ldap":
        if not s.ldap_uri:
            problems.append("ldap_uri is required for the ldap identity manager (LDAP_URI)")
        else:
            uri = s.ldap_uri if "://" in s.ldap_uri else "ldap://" + s.ldap_uri
            if urlsplit(uri).scheme not in ("ldap", "ldaps"):
                problems.append(f"ldap_uri has value {s.ldap_uri!r}: must be ldap:// or ldaps://")
            elif (why := url_port_problem(uri)):
                problems.append(f"ldap_uri has value {s.ldap_uri!r}: {why}")
        if not s.ldap_basedn:
            problems.append("ldap_basedn is required for the ldap identity manager (LDAP_BASEDN)")
        if s.ldap_bindpw and not s.ldap_binddn:
            problems.append("ldap_bindpw is set but ldap_binddn is empty")
    elif manager == "kc":
        if bool(s.kopano_client_certificate) != bool(s.kopano_client_private_key):
            problems.append("kopano_client_certificate and kopano_client_private_key "
                            "must be set together")
        scheme = urlsplit(s.kopano_server_default_uri).scheme
        if scheme not in ("http", "https", "file"):
            problems.append(f"kopano_server_default_uri has value "
                            f"{s.kopano_server_default_uri!r}: must be http(s):// or file://")
        elif scheme != "file" and (why := url_port_problem(s.kopano_server_default_uri)):
            problems.append(f"kopano_server_default_uri has value "
                            f"{s.kopano_server_default_uri!r}: {why}")
    elif manager == "cookie":
        if len(s.identity_manager_args) < 2:
            problems.append("the cookie identity manager needs two arguments: "
                            "<backend-url> <cookie names>")
        elif urlsplit(s.identity_manager_args[0]).scheme not in ("http", "https"):
            problems.append(f"cookie backend URL {s.identity_manager_args[0]!r} must be "
                            "an absolute http(s) URL")
        if not s.sign_in_uri:
            problems.append("the cookie identity manager needs --sign-in-uri (where users "
                            "who are not signed in go)")
    elif manager == "users" and s.users_file and not s.users_file.is_file():
        problems.append(f"users_file {s.users_file}: no such file")
    if manager != "cookie" and s.sign_in_uri:
        problems.append("sign_in_uri is only used by the cookie identity manager (the other "
                        "managers sign in on the identifier's own pages)")
    if manager != "cookie" and (s.authorization_endpoint_uri or s.endsession_endpoint_uri):
        problems.append("authorization_endpoint_uri/endsession_endpoint_uri are only "
                        "supported with the cookie identity manager")
    return problems


def settings_from_argv(service: str, argv: Sequence[str] | None = None,
                       environ: Mapping[str, str] | None = None):
    """For `main()`: load settings, or print every problem and exit with status 2."""
    import os

    try:
        return load_settings(sys.argv[1:] if argv is None else argv,
                             os.environ if environ is None else environ, service=service)
    except ConfigError as err:
        print(f"{service}: invalid configuration:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None
