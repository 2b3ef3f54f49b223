"""Prometheus metrics for every process, served at `/metrics` on the service's own listener.

Several token processes share one address (SO_REUSEPORT), so a scrape reaches any one of
them. With `--metrics-dir` (KONNECTD_METRICS_DIR) each process writes its counters to files
under `<dir>/<service>/` (prometheus_client's multiprocess mode) and every process answers a
scrape with the SUM over all processes of its service, including processes that have since
been restarted: the numbers add up whichever process is asked.

prometheus_client picks its storage when first imported, so `configure()` runs before any
import of it (service.run does this first thing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

_state: dict[str, Any] = {}
#: The `method` label's values; any other method a client sends counts as "other". Tornado
#: parses any token as a method (RFC 9110 §9.1: methods are extensible) and answers 405, so
#: labelling the raw method let a client create one time series per made-up name, without
#: bound, in every scrape and in each process's multiprocess file (Prometheus, "Metric and
#: label naming": no labels with "unbounded sets of values").
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def configure(service: str, directory: Optional[str]) -> None:
    """Choose single-process or multiprocess mode for this process (once)."""
    if _state:
        return
    if directory:
        path = Path(directory) / service
        path.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    _init(service, str(path) if directory else None)


def _init(service: str, directory: Optional[str]) -> None:
    import prometheus_client as prom

    registry = prom.CollectorRegistry(auto_describe=True)
    if directory:
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry, path=directory)
        metric_registry = None  # values go to the files; the collector reads them all
    else:
        metric_registry = registry
    kw = {"registry": metric_registry}
    _state.update(
        service=service,
        registry=registry,
        requests=prom.Counter("konnect_http_requests_total", "HTTP requests answered",
                              ["service", "handler", "method", "status"], **kw),
        latency=prom.Histogram("konnect_http_request_duration_seconds",
                               "Time to answer an HTTP request",
                               ["service", "handler"], buckets=BUCKETS, **kw),
        events=prom.Counter("konnect_events_total",
                            "Security-relevant events (logon failures, replays, revocations)",
                            ["service", "event"], **kw),
    )


def _ready() -> dict:
    if not _state:
        configure("konnect", os.environ.get("KONNECTD_METRICS_DIR") or None)
    return _state


def observe(handler: Any) -> None:
    """Count one answered request (called from the access-log hook).

    The labelled children are looked up once per label set and kept: `labels()` takes a
    lock and builds keys on every call, which showed in the token endpoint's profile.
    """
    state = _ready()
    name, status = type(handler).__name__, handler.get_status()
    method = handler.request.method
    if method not in METHODS:  # the client's word: a bounded label set (see METHODS)
        method = "other"
    children = state.setdefault("children", {})
    key = (name, method, status)
    pair = children.get(key)
    if pair is None:
        pair = (state["requests"].labels(state["service"], name, method, str(status)),
                state["latency"].labels(state["service"], name))
        if len(children) < 4096:  # label sets are few; a bound in case methods vary wildly
            children[key] = pair
    pair[0].inc()
    pair[1].observe(handler.request.request_time())


def event(name: str) -> None:
    """Count a named event (`logon_failed`, `code_replayed`, `refresh_reused`, ...)."""
    state = _ready()
    state["events"].labels(state["service"], name).inc()


def render() -> tuple[bytes, str]:
    """The exposition text of this service (summed over its processes) and its type."""
    import prometheus_client as prom
    state = _ready()
    return prom.generate_latest(state["registry"]), prom.CONTENT_TYPE_LATEST
