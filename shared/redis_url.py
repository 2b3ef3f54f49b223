"""`--redis-url`: one Redis, a Sentinel-managed primary, or a Redis Cluster.

    redis://[user:password@]host:port[/db][?params]        one server (also rediss://, unix://)
    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?params]
    rediss+sentinel://...                                   the same over TLS
    redis+cluster://[user:password@]host:port[,host:port...][?params]
    rediss+cluster://...                                    the same over TLS

The user and password of the URL are the data nodes' (AUTH). Parameters of ours:

    replicas=N              every single-use or revocation write waits for N replicas
                            (WAIT) before it is acknowledged; default: all the replicas
                            the deployment has (Sentinel's list, the cluster's shard), 0
                            for a plain redis:// URL
    wait_timeout=MS         how long such a write waits for its replicas (default: half of
                            --redis-timeout); a shortfall is a 503
    max_connections=N       connections per process (per node for a cluster), default 64
    sentinel_username=U, sentinel_password=P   the Sentinels' own credentials (Sentinel
                            auth may differ from the data nodes'; default: none)
    ssl_ca_certs=FILE, ssl_certfile=FILE, ssl_keyfile=FILE, ssl_check_hostname=yes|no
                            TLS (rediss and rediss+...)

A plain URL's other parameters go to redis-py as they always did. The parser never
imports redis and never puts a password into its error messages; docs/operations.md
("Redis: one server, Sentinel or Cluster") is the operator's description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
_SCHEMES = {"redis": (SINGLE, False), "rediss": (SINGLE, True), "unix": (SINGLE, False),
            "redis+sentinel": (SENTINEL, False), "rediss+sentinel": (SENTINEL, True),
            "redis+cluster": (CLUSTER, False), "rediss+cluster": (CLUSTER, True)}
DEFAULT_MAX_CONNECTIONS = 64
_OURS = ("replicas", "wait_timeout", "max_connections")
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")
_TLS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_SERVICE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]{1,253})$")
_SECRET_PARAMS = ("password", "sentinel_password")


@dataclass(frozen=True)
class RedisTarget:
    """What a `--redis-url` names (`parse_url`)."""

    kind: str                                  # SINGLE, SENTINEL or CLUSTER
    url: str = ""                              # SINGLE: the URL for redis-py, ours removed
    hosts: tuple = ()                          # SENTINEL, CLUSTER: ((host, port), ...)
    service: str = ""                          # SENTINEL: the primary's name
    db: int = 0
    username: Optional[str] = None             # the data nodes'
    password: Optional[str] = field(default=None, repr=False)
    sentinel_username: Optional[str] = None
    sentinel_password: Optional[str] = field(default=None, repr=False)
    tls: bool = False
    tls_options: tuple = ()                    # ((ssl_ca_certs, path), ...)
    replicas: Optional[int] = None             # None: all the deployment has
    wait_timeout: Optional[float] = None       # seconds; None: half the socket timeout
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def redact(url: str) -> str:
    """The URL with every password (user info, `password=`, `sentinel_password=`) as ***."""
    if not isinstance(url, str):
        return repr(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc_end = len(rest)
    for mark in "/?#":
        pos = rest.find(mark)
        if pos != -1:
            netloc_end = min(netloc_end, pos)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = [(k, "***" if k in _SECRET_PARAMS else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        tail = path + "?" + urlencode(pairs, safe="*") + hash_ + fragment
    return f"{scheme}://{netloc}{tail}"


def parse_url(url: str) -> RedisTarget:
    """The deployment a `--redis-url` names; ValueError with a clear message (no password)."""
    if not isinstance(url, str) or not url:
        raise ValueError("the Redis URL is empty")
    shown = redact(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(f"{shown!r}: must start with redis://, rediss://, unix://, "
                         "redis+sentinel://, rediss+sentinel://, redis+cluster:// or "
                         "rediss+cluster://")
    kind, tls = _SCHEMES[scheme]
    parts = urlsplit(url)
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise ValueError(f"{shown!r}: parameter {name} given twice")
        params[name] = value
    ours = _our_parameters(shown, params)
    if kind == SINGLE:
        _check_single(shown, parts, scheme)
        rest = [(k, v) for k, v in params.items() if k not in _OURS]
        plain = urlunsplit(parts._replace(query=urlencode(rest)))
        return RedisTarget(SINGLE, url=plain, tls=tls, **ours)
    unknown = sorted(set(params) - set(_OURS) - set(_SENTINEL_AUTH) - set(_TLS))
    if unknown:
        raise ValueError(f"{shown!r}: unknown parameter(s) {', '.join(unknown)} (known: "
                         f"{', '.join(_OURS + _SENTINEL_AUTH + _TLS)})")
    if kind == CLUSTER and any(k in params for k in _SENTINEL_AUTH):
        raise ValueError(f"{shown!r}: sentinel_username/sentinel_password are for "
                         "redis+sentinel:// URLs")
    tls_options = []
    for name in _TLS:
        if name in params:
            if not tls:
                raise ValueError(f"{shown!r}: {name} needs TLS (rediss+{kind}://)")
            value = params[name]
            if name == "ssl_check_hostname":
                if value.lower() not in ("yes", "no", "true", "false", "1", "0"):
                    raise ValueError(f"{shown!r}: ssl_check_hostname must be yes or no")
                tls_options.append((name, value.lower() in ("yes", "true", "1")))
            elif not value:
                raise ValueError(f"{shown!r}: {name} needs a file name")
            else:
                tls_options.append((name, value))
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(shown, item) for item in hostlist.split(","))
    service, db = "", 0
    segments = [unquote(s) for s in parts.path.split("/")[1:]] if parts.path else []
    if segments and segments[-1] == "":
        segments.pop()
    if kind == SENTINEL:
        if not segments or not _SERVICE.match(segments[0]):
            raise ValueError(f"{shown!r}: name the Sentinel service: "
                             "redis+sentinel://host:port,.../service_name[/db]")
        service = segments[0]
        if len(segments) > 2:
            raise ValueError(f"{shown!r}: the path is /service_name[/db]")
        if len(segments) == 2:
            db = _db(shown, segments[1])
    elif segments and segments != ["0"]:
        raise ValueError(f"{shown!r}: a Redis Cluster has only database 0 (no path)")
    return RedisTarget(kind, hosts=hosts, service=service, db=db, username=username,
                       password=password, tls=tls, tls_options=tuple(tls_options),
                       sentinel_username=params.get("sentinel_username") or None,
                       sentinel_password=params.get("sentinel_password") or None, **ours)


def _our_parameters(shown: str, params: dict) -> dict:
    out: dict = {}
    if "replicas" in params:
        out["replicas"] = _int(shown, "replicas", params["replicas"], 0, 100)
    if "wait_timeout" in params:
        out["wait_timeout"] = _int(shown, "wait_timeout", params["wait_timeout"], 1,
                                   600_000) / 1000
    if "max_connections" in params:
        out["max_connections"] = _int(shown, "max_connections", params["max_connections"],
                                      1, 10_000)
    return out


def _int(shown: str, name: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", value or "") or not low <= int(value) <= high:
        raise ValueError(f"{shown!r}: {name} must be a whole number from {low} to {high}")
    return int(value)


def _db(shown: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", value):
        raise ValueError(f"{shown!r}: the database must be a number")
    return int(value)


def _host_port(shown: str, item: str) -> tuple:
    host, colon, port = item.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
        raise ValueError(f"{shown!r}: every host needs a port (host:port, [v6]:port)")
    if not _HOST.match(host):
        raise ValueError(f"{shown!r}: {host!r} is not a host name or address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ValueError(f"{shown!r}: port {port!r} is not a number from 1 to 65535")
    return host.strip("[]"), int(port)


def _check_single(shown: str, parts, scheme: str) -> None:
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"{shown!r}: unix:// needs a socket path")
        return
    if not parts.hostname:
        raise ValueError(f"{shown!r}: needs a host")
    if "," in parts.netloc:
        raise ValueError(f"{shown!r}: several hosts need redis+sentinel:// or "
                         "redis+cluster://")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535")
    if not re.fullmatch(r"/?([0-9]{1,5})?", parts.path):
        raise ValueError(f"{shown!r}: the path must be a database number")
