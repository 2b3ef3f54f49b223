"""Process assembly for every service: settings, logging, dependencies, HTTP server, signals.

`run()` is each service's whole `main()`. Start-up problems (bad flags, unreadable keys, a
wrong-sized secret, an invalid client registry) are printed one per line, exit status 2,
before any port is bound. SIGTERM/SIGINT stop accepting, let in-flight requests finish
(bounded), then close the dependencies.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

from . import logs, metrics
from .config import StartupError, settings_from_argv
from .web import HealthCheckHandler, MetricsHandler, NotFoundHandler

log = logging.getLogger("konnect.service")
SHUTDOWN_GRACE = 10.0  # seconds for in-flight requests after a stop signal
DRAIN_LINGER = 0.5  # seconds of answering with Connection: close before closing the rest


MAX_HEADER_SIZE = 64 * 1024


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def make_server(app: tornado.web.Application, settings: Any) -> tornado.httpserver.HTTPServer:
    """An HTTPServer with limits far below Tornado's defaults (100 MB bodies, no timeouts).

    X-Forwarded-* are not applied here: the base handler believes them only from
    `--trusted-proxy` peers (Tornado's xheaders would believe anyone).
    """
    return tornado.httpserver.HTTPServer(
        app,
        xheaders=False,
        max_body_size=settings.max_body_size,
        # above the proxies' own limits (Caddy ~20 KB, Apache 16 KiB per field), so that
        # what they let through is answered, never a dropped connection (a 502 for the
        # user); the proxy answers 431 for more. Bounded: this is buffered per connection.
        max_header_size=MAX_HEADER_SIZE,
        body_timeout=30,
        idle_connection_timeout=75,
        decompress_request=False,
    )


async def serve(service: str, app: tornado.web.Application, settings: Any, deps: Any,
                stop: asyncio.Event | None = None) -> None:
    """Listen on `settings.listen` until `stop` is set (or a signal arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    host, port = split_listen(settings.listen)
    # Several token processes share one address (docs/architecture.md, "Processes"): SO_REUSEPORT.
    sockets = tornado.netutil.bind_sockets(port, host or None, reuse_port=(service == "token"))
    server = make_server(app, settings)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    log.info("%s listening on %s:%d (issuer %s)", service, bound[0], bound[1], settings.iss)
    extra = None
    if getattr(settings, "with_metrics", False):
        # Konnect's --with-metrics: /metrics (and /health-check) on a listener of their own.
        mhost, mport = split_listen(settings.metrics_listen)
        extra = make_server(application([], deps), settings)
        extra.add_sockets(tornado.netutil.bind_sockets(mport, mhost or None,
                                                       reuse_port=(service == "token")))
        log.info("%s metrics on %s", service, settings.metrics_listen)
    warm = asyncio.ensure_future(check_store(deps))
    await stop.wait()
    log.info("%s stopping", service)
    warm.cancel()
    server.stop()
    if extra is not None:
        extra.stop()
    app.draining = True
    await drain(app, SHUTDOWN_GRACE, service)
    # The proxy's pooled keep-alive connections: for a moment more, requests arriving on
    # them are answered with `Connection: close`, so that each is retired after an answer
    # rather than cut while the proxy may be writing a request onto it (a lost POST).
    await asyncio.sleep(DRAIN_LINGER)
    await drain(app, SHUTDOWN_GRACE, service)
    try:
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    except asyncio.TimeoutError:
        pass
    closer = getattr(deps, "close", None)
    if closer is not None:
        await closer()
    logs.flush_access_log()


async def check_store(deps: Any) -> None:
    """Connect to Redis once at start-up, beside serving: the first connection checks the
    server's continuity and, on a new or emptied database, starts its generation
    (shared/store.py), so that it begins when the group starts, before anything is issued,
    rather than on the first request's connection, a moment after that request read the
    clock. Redis not answering yet is no error here: requests answer 503 until it does."""
    store = getattr(deps, "store", None)
    if store is None:
        return
    try:
        await store.ping()
    except Exception as err:  # noqa: BLE001 - logged, the requests report it as they come
        log.info("redis not reachable at start-up (%s); requests will try again",
                 type(err).__name__)


async def drain(app: tornado.web.Application, grace: float, service: str = "") -> None:
    """Wait (bounded) until the requests in flight have been answered: a stop signal costs
    no request that was already accepted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while getattr(app, "inflight", 0) > 0 and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if getattr(app, "inflight", 0) > 0:
        log.warning("%s: %d requests still running after %.0fs, closing", service,
                    app.inflight, grace)


class _Guard(tornado.httputil.HTTPMessageDelegate):
    """Wraps Tornado's per-request delegate for two things Tornado does not do:

    - answers 413 as soon as the headers announce a body over the limit, before reading
      it (Tornado itself would answer a bare 400 and close);
    - keeps `Application.inflight` true for requests that never reach a handler: a
      request is counted when it is routed (`find_handler`) and uncounted when it is
      logged, or here when its connection closes before the body was complete (a client
      gone mid-upload, a body timeout, a chunked body over the limit). Otherwise every
      such request would make the next shutdown wait its whole grace period.
    """

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate,
                 conn: tornado.httputil.HTTPConnection, app: "Application") -> None:
        self.inner, self.conn, self.app = inner, conn, app
        self.refused = self.routed = self.complete = False

    def headers_received(self, start_line, headers):  # noqa: ANN001 (tornado's signature)
        length = headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > self.app.body_limit:
            self.refused = True
            body = json.dumps({"error": "request_too_large",
                               "error_description": "request too large"}).encode()
            self.conn.write_headers(
                tornado.httputil.ResponseStartLine("HTTP/1.1", 413, "Content Too Large"),
                tornado.httputil.HTTPHeaders({
                    "Content-Type": "application/json; charset=utf-8",
                    "Content-Length": str(len(body)), "Connection": "close",
                    "Cache-Control": "no-store"}), body)
            self.conn.finish()
            return None
        self.routed = True  # the inner delegate routes (and counts) the request now
        if self.app.draining and hasattr(self.conn, "_disconnect_on_finish"):
            # Stopping: answer, then close this keep-alive connection (Tornado adds
            # `Connection: close`), so that the proxy retires it instead of sending its
            # next request on a connection that is about to go (RFC 9112 §9.6).
            self.conn._disconnect_on_finish = True
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):  # noqa: ANN001
        return None if self.refused else self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.complete = True  # the handler runs and is logged (uncounted) when done
            self.inner.finish()

    def on_connection_close(self) -> None:
        if self.refused:
            return
        if self.routed and not self.complete:
            self.app.request_done()
        self.inner.on_connection_close()


class Application(tornado.web.Application):
    """tornado.web.Application with the early 413 for oversized bodies and a count of the
    requests in flight (for the drain on SIGTERM); see `_Guard`."""

    body_limit = 65536
    inflight = 0  # requests routed to a handler and not yet answered (for the drain)
    draining = False  # set on a stop signal: every answer then closes its connection

    def find_handler(self, request, **kwargs):  # noqa: ANN001
        self.inflight += 1
        return super().find_handler(request, **kwargs)

    def request_done(self) -> None:
        self.inflight = max(0, self.inflight - 1)

    def log_request(self, handler) -> None:  # noqa: ANN001 - called once per answered request
        self.request_done()
        super().log_request(handler)

    def start_request(self, server_conn, request_conn):  # noqa: ANN001
        return _Guard(super().start_request(server_conn, request_conn), request_conn, self)


def application(routes: list, deps: Any, **kwargs: Any) -> Application:
    """A Tornado application with what every service has: `/health-check`, a JSON 404,
    the query-free access log, the body limit. `routes` are the service's own."""
    app = Application(
        [(r"/health-check", HealthCheckHandler, {"deps": deps}),
         (r"/metrics", MetricsHandler, {"deps": deps}), *routes],
        default_handler_class=NotFoundHandler,
        default_handler_args={"deps": deps},
        xsrf_cookies=False,
        log_function=logs.log_request,
        **kwargs,
    )
    settings = getattr(deps, "settings", None)
    app.body_limit = getattr(settings, "max_body_size", Application.body_limit)
    return app


def runner(event_loop: str) -> Callable[[Any], Any]:
    """`asyncio.run` or `uvloop.run` (`--event-loop`). uvloop makes the loop, socket I/O
    and the Redis client cheaper (docs/benchmarks.md); Tornado serves HTTP unchanged on it. Its
    one incompatibility, `tornado.process.Subprocess`, is not used by any service."""
    if event_loop == "uvloop":
        import uvloop
        return uvloop.run
    return asyncio.run


def run(service: str, make_app: Callable[[Any, Any], tornado.web.Application],
        make_deps: Callable[[Any], Any], argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None) -> None:
    """The whole `main()` of a service."""
    settings = settings_from_argv(service, argv, environ)
    metrics.configure(service, settings.metrics_dir)
    logs.configure(service, settings.log_level, settings.log_format, settings.log_timestamp)
    try:
        deps = make_deps(settings)
    except StartupError as err:
        print(f"{service}: cannot start:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    app = make_app(settings, deps)
    # What start-up built (modules, keys, registry, templates) lives as long as the
    # process: moved out of the collector's generations, full collections under load do
    # not walk it again and again (shorter pauses, a lower tail latency). A request makes
    # a few thousand short-lived objects: collecting the young generation every 20,000
    # allocations instead of 700 costs a few MB at most and fewer, similar pauses.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        runner(getattr(settings, "event_loop", "asyncio"))(serve(service, app, settings, deps))
    except OSError as err:  # e.g. address in use
        print(f"{service}: cannot listen on {settings.listen}: {err.strerror or err}",
              file=sys.stderr)
        raise SystemExit(1) from None
