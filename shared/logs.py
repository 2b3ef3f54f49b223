"""Logging set-up: key=value text or JSON lines on stderr, Konnect's level names.

Tornado's access log is rewritten to carry the request id and never the query string
(authorization codes and tokens can travel there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from . import metrics

_LEVELS = {"panic": logging.CRITICAL, "fatal": logging.CRITICAL, "error": logging.ERROR,
           "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str, timestamps: bool) -> None:
        super().__init__()
        self.service, self.timestamps = service, timestamps
        self._second, self._stamp = -1, ""

    def stamp(self, created: float) -> str:
        """`time=...Z` (the date and time part computed once per second)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = "time=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def line(self, level: str, logger: str, message: str, created: float,
             exc: str = "") -> str:
        parts = [self.stamp(created)] if self.timestamps else []
        parts += [f"level={level}", f"service={self.service}", f"logger={logger}",
                  "msg=" + json.dumps(message)]
        if exc:
            parts.append("exc=" + json.dumps(exc))
        return " ".join(parts)

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else ""
        return self.line(record.levelname.lower(), record.name, record.getMessage(),
                         record.created, exc)


class _JSONFormatter(_TextFormatter):
    def line(self, level: str, logger: str, message: str, created: float,
             exc: str = "") -> str:
        entry = {"level": level, "service": self.service, "logger": logger, "msg": message}
        if self.timestamps:
            entry["time"] = created
        if exc:
            entry["exc"] = exc
        return json.dumps(entry)


def configure(service: str, level: str = "info", fmt: str = "text",
              timestamps: bool = True) -> None:
    """Install one stderr handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = _JSONFormatter if fmt == "json" else _TextFormatter
    handler.setFormatter(formatter(service, timestamps))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    _direct[:] = [handler]


def log_request(handler) -> None:  # noqa: ANN001 (tornado's log_function signature)
    """Tornado `log_function`: method, path WITHOUT query, status, time, request id, client."""
    status = handler.get_status()
    request = handler.request
    metrics.observe(handler)
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not _ACCESS.isEnabledFor(level):
        return
    rid = getattr(handler, "request_id", "-")
    client = getattr(handler, "client_ip", request.remote_ip)
    message = "%s %s %d %.1fms rid=%s client=%s" % (
        request.method, request.path, status, 1000.0 * request.request_time(), rid, client)
    out = _direct[0] if _direct and _ACCESS.handlers == [] and _ACCESS.propagate \
        and logging.getLogger().handlers == _direct else None
    if out is None:  # logging configured by someone else (tests, embedding): the long way
        _ACCESS.log(level, "%s", message)
        return
    # Straight to the configured handler's stream, in its format, without a LogRecord (the
    # logging machinery was ~5 % of a token request's CPU). The lines of the requests
    # answered in one turn of the event loop go out in one write at its end: never later
    # than that turn, but under load one write (and one wake-up of whoever reads the
    # stream, supervisord or journald) for many requests.
    _pending.append(out.formatter.line(logging.getLevelName(level).lower(), _ACCESS.name,
                                       message, time.time()))
    if len(_pending) == 1:
        try:
            asyncio.get_running_loop().call_soon(_flush, out)
        except RuntimeError:  # no loop (a synchronous caller): at once
            _flush(out)


def _flush(out: logging.StreamHandler) -> None:
    if not _pending:  # written already (flush_access_log at shutdown ran before this turn's
        return        # end): nothing to write, not an empty line
    lines = "\n".join(_pending) + "\n"
    _pending.clear()
    with out.lock:
        try:
            out.stream.write(lines)
            out.stream.flush()
        except (OSError, ValueError):  # stderr gone: as logging does, never fail a request
            pass


def flush_access_log() -> None:
    """Write the access lines not yet written (at shutdown)."""
    if _pending and _direct:
        _flush(_direct[0])


_ACCESS = logging.getLogger("konnect.access")
_direct: list = []  # the handler configure() installed, while it is the only one
_pending: list = []  # access lines of this turn of the event loop
