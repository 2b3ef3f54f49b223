"""`python -m shared.healthcheck [URL ...]`: are the services up? (container and monitor checks)

    python -m shared.healthcheck                      the four services' /health-check
    python -m shared.healthcheck --service token      one service (its KONNECT_TOKEN_LISTEN)
    python -m shared.healthcheck --listen 127.0.0.1:8779
    python -m shared.healthcheck http://127.0.0.1:8780/health-check
    python -m shared.healthcheck --hostname 127.0.0.1:8777 [--path P] [--scheme https --insecure]
    python -m shared.healthcheck --wait 120           until all answer (the proxy's start)

`--hostname`, `--path`, `--scheme` and `--insecure` are the flags of Konnect's
`konnectd healthcheck` (its cmd/konnectd/healthcheck.go), so a health check written for
Konnect keeps working; like it, the check is a POST (every service answers any method on
`/health-check`). A service's address is `KONNECT_<SERVICE>_LISTEN` from the environment, else from
deploy/addresses.env (as deploy/bin/konnect-program does); a wildcard host (0.0.0.0, ::) is
checked on loopback. Exit status 0 when every URL answers 200 within the timeout (2 s
each), 1 otherwise with one line per failing URL on stdout, 2 for bad arguments. With
`--wait SECONDS` the URLs are asked again until all of them answer, for at most that long
(deploy/bin/konnect-program starts the proxy only then: no request meets a service that is
still starting).
Standard library only, no proxies from the environment, redirects not followed; https
certificates are verified unless `--insecure`.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Mapping, Optional, Sequence

from .options import SERVICES
from .topology import read_addresses

PATH = "/health-check"
TIMEOUT = 2.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None  # a redirect is an answer other than 200, not something to follow


def _opener(insecure: bool = False) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context()
    if insecure:  # Konnect's --insecure: no certificate or host name check
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                       urllib.request.HTTPSHandler(context=context))


def listen_url(listen: str, path: str = PATH, scheme: str = "http") -> str:
    """`host:port` -> the health-check URL; wildcard hosts become loopback."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r}: expected host:port (port 1-65535)")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def _path(text: str) -> str:
    """`--path`: a URL path (with optional query), as Konnect's flag."""
    if not text.startswith("/") or any(c.isspace() or ord(c) < 0x21 for c in text) \
            or "#" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a path starting with /")
    return text


def service_urls(services: Sequence[str], environ: Mapping[str, str],
                 path: str = PATH, scheme: str = "http") -> list[str]:
    addresses: Optional[dict] = None
    urls = []
    for service in services:
        name = f"KONNECT_{service.upper()}_LISTEN"
        listen = environ.get(name)
        if not listen:
            if addresses is None:
                addresses = read_addresses()
            listen = addresses[name]
        urls.append(listen_url(listen, path, scheme))
    return urls


def _timeout(text: str) -> float:
    """`--timeout`: a positive, finite number of seconds. Others are bad arguments (exit 2,
    as the module's doc promises); they used to reach the socket and fail every URL (exit 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not 0 < value <= 3600:  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, 0 < t <= 3600")
    return value


def check(url: str, timeout: float = TIMEOUT, insecure: bool = False,
          method: str = "POST") -> Optional[str]:
    """None when a POST to `url` (empty body, as Konnect's check; or a GET) answers 200
    within `timeout`, else why not (one line)."""
    request = urllib.request.Request(url, data=b"" if method == "POST" else None,
                                     method=method, headers={"Connection": "close"})
    try:
        with _opener(insecure).open(request, timeout=timeout) as resp:
            resp.read(1024)
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
        err.close()
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"no answer within {timeout:g}s"
        return str(getattr(reason, "strerror", None) or reason)
    except (socket.timeout, TimeoutError):
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as err:
        return str(getattr(err, "strerror", None) or err) or type(err).__name__
    return None if status == 200 else f"HTTP {status}"


def wait(checks: Sequence[tuple], seconds: float, timeout: float = TIMEOUT,
         interval: float = 0.2) -> list[str]:
    """Ask `checks` ((url, insecure, method) each) until every one answers 200, for at most
    `seconds`; the last problems (empty: all answered)."""
    deadline = time.monotonic() + seconds
    while True:
        problems = [f"{url}: {problem}" for url, insecure, method in checks
                    if (problem := check(url, timeout, insecure, method)) is not None]
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(interval)


def main(argv: Optional[Sequence[str]] = None,
         environ: Optional[Mapping[str, str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.healthcheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("urls", nargs="*", metavar="URL", help="URLs to check")
    parser.add_argument("--service", action="append", choices=SERVICES, default=[],
                        help="check this service's KONNECT_<SERVICE>_LISTEN; repeatable")
    parser.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                        help=f"check http://HOST:PORT{PATH}; repeatable")
    parser.add_argument("--hostname", action="append", default=[], metavar="HOST:PORT",
                        help="Konnect's flag: like --listen; repeatable")
    parser.add_argument("--path", type=_path, default=PATH,
                        help=f"path of --listen/--hostname/--service URLs (default {PATH})")
    parser.add_argument("--scheme", choices=("http", "https"), default="http",
                        help="scheme of --listen/--hostname/--service URLs (default http)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify https certificates (Konnect's flag)")
    parser.add_argument("--timeout", type=_timeout, default=TIMEOUT,
                        help=f"seconds per URL (default {TIMEOUT:g})")
    parser.add_argument("--wait", type=_timeout, default=None, metavar="SECONDS",
                        help="ask again until every URL answers, for at most SECONDS")
    args = parser.parse_intermixed_args(argv)
    environ = os.environ if environ is None else environ
    try:
        urls = list(args.urls) + [listen_url(listen, args.path, args.scheme)
                                  for listen in args.listen + args.hostname]
        if args.service or not urls:
            urls += service_urls(args.service or SERVICES, environ, args.path, args.scheme)
    except (ValueError, KeyError, OSError) as err:
        parser.error(str(err))
    if args.wait is not None:
        problems = wait([(url, args.insecure, "POST") for url in urls], args.wait,
                        args.timeout)
    else:
        problems = [f"{url}: {problem}" for url in urls
                    if (problem := check(url, args.timeout, args.insecure)) is not None]
    for line in problems:
        print(line, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
