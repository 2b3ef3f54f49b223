"""Logging set-up: key=value text or JSON lines on stderr, Konnect's level names.

Tornado's access log is rewritten to carry the request id and never the query string
(authorization codes and tokens can travel there).
"""

from __future__ import annotations

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

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append("time=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                         + f".{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname.lower()}", f"service={self.service}",
                  f"logger={record.name}", "msg=" + json.dumps(record.getMessage())]
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class _JSONFormatter(_TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "service": self.service,
                 "logger": record.name, "msg": record.getMessage()}
        if self.timestamps:
            entry["time"] = record.created
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
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


def log_request(handler) -> None:  # noqa: ANN001 (tornado's log_function signature)
    """Tornado `log_function`: method, path WITHOUT query, status, time, request id, client."""
    status = handler.get_status()
    request = handler.request
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    rid = getattr(handler, "request_id", "-")
    client = getattr(handler, "client_ip", request.remote_ip)
    metrics.observe(handler)
    logging.getLogger("konnect.access").log(
        level, "%s %s %d %.1fms rid=%s client=%s", request.method, request.path, status,
        1000.0 * request.request_time(), rid, client)
