"""The full failover suite: grants under load across real Redis failovers on loopback, and
what they cost (docs/operations.md, "Redis Sentinel and Cluster", has the last results).

    .venv/bin/python bench/failover.py [--failovers 10] [--grants 10000] [--quick]

Two deployments, each started here with Debian's redis-server and redis-sentinel
(tests/support/redis_ha.py), and a token service in this process on each
(tests/support/failover.py: the load, the attacker's replays and what is checked):

- a primary with two replicas and three Sentinels: `--failovers` of each of SENTINEL
  FAILOVER, kill -9 of the primary and CLIENT PAUSE of the primary, interleaved, over
  `--grants` codes minted before the load (and the refresh tokens they become);
- a Redis Cluster of three primaries with a replica each: `--failovers` primaries killed
  (kill -9, each shard in turn), over as many grants.

It fails (exit 1) on any double spend, lost revocation, 500 (or any status but 200, 400
and 503 with Retry-After), or a failover after which grants were not served again within
20 s. It measures, per failover kind, the window of 503s, the latency in it, and the time
until grants are served again; the cost of WAIT per grant (the store's redemption and
rotation with and without waiting for the replicas); and, in a steady phase without
failovers, the Redis CPU per grant. Results: bench/results-failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import proc_cpu  # noqa: E402
from tests.support.failover import run_token_service, wait_cost  # noqa: E402
from tests.support.op import ALICE, make_state  # noqa: E402
from tests.support.redis_ha import ClusterGroup, SentinelGroup  # noqa: E402

SERVING_AGAIN_WITHIN = 20.0
OUT = Path(__file__).resolve().parent / "results-failover.json"


def _cpu_of(nodes) -> callable:
    return lambda: sum(proc_cpu(n.pid) for n in nodes if n.pid)


def _problems(name: str, report: dict) -> list:
    out = []
    if report["double_spends"]:
        out.append(f"{name}: {report['double_spends']} double spends")
    if report["lost_revocations"]:
        out.append(f"{name}: {report['lost_revocations']} lost revocations")
    if report["bad_statuses"]:
        out.append(f"{name}: unexpected statuses {report['bad_statuses']}")
    for event in report["failovers"]:
        if not event["grants_tried"]:
            out.append(f"{name}: no grant was tried after {event['kind']} (load not live)")
        if event["serving_again_after_s"] > SERVING_AGAIN_WITHIN:
            out.append(f"{name}: {event['kind']} served again only after "
                       f"{event['serving_again_after_s']} s")
    return out


def _by_kind(report: dict) -> dict:
    kinds: dict = {}
    for event in report["failovers"]:
        kinds.setdefault(event["kind"], []).append(event)
    out = {}
    for kind, events in kinds.items():
        windows = [e["window_503_s"] for e in events]
        again = [e["serving_again_after_s"] for e in events]
        p50s = [e["latency_ms_in_window"]["p50"] for e in events if e["latency_ms_in_window"]]
        p99s = [e["latency_ms_in_window"]["p99"] for e in events if e["latency_ms_in_window"]]
        out[kind] = {
            "failovers": len(events),
            "window_503_s": {"median": statistics.median(windows), "max": max(windows)},
            "serving_again_after_s": {"median": statistics.median(again), "max": max(again)},
            "grants_tried": sum(e["grants_tried"] for e in events),
            "grants_503": sum(e["grants_503"] for e in events),
            "latency_ms_in_window": {"p50_median": statistics.median(p50s) if p50s else None,
                                     "p99_max": max(p99s) if p99s else None},
        }
    return out


def _steady(report: dict) -> dict:
    grants = report["grants_ok"]
    per_grant_ms = 1000 * report["load_cpu_s"] / grants if grants else None
    return {"grants_ok": grants, "seconds": report["load_s"],
            "grants_per_s": round(grants / report["load_s"], 1),
            "redis_cpu_s": report["load_cpu_s"],
            "redis_cpu_ms_per_grant": round(per_grant_ms, 3) if per_grant_ms else None,
            "grants_per_s_one_core_of_redis": round(1000 / per_grant_ms) if per_grant_ms
            else None,
            "latency_ms": report["latency_ms_baseline"]}


async def sentinel(state: dict, base: Path, args) -> dict:
    with SentinelGroup(base / "sentinel") as group:
        url = group.url()
        cost = await wait_cost(url, identity=ALICE, grants=args.wait_grants)
        primary = group.primary()
        steady = await run_token_service(state, url, [], grants=args.steady_grants,
                                         concurrency=args.concurrency, gap=args.steady_s,
                                         settle=0, cpu=_cpu_of([primary]))
        kinds = [("SENTINEL FAILOVER", group.failover),
                 ("kill -9 of the primary", group.kill_primary),
                 ("CLIENT PAUSE of the primary", group.pause_primary)]
        plan = [kind for _ in range(args.failovers) for kind in kinds]
        report = await run_token_service(state, url, plan, grants=args.grants,
                                         concurrency=args.concurrency, gap=args.gap,
                                         settle=args.settle)
    return {"deployment": "a primary, two replicas, three Sentinels (min-replicas-to-write 2)",
            "wait_cost": cost, "steady": _steady(steady), "run": report,
            "by_kind": _by_kind(report)}


async def cluster(state: dict, base: Path, args) -> dict:
    with ClusterGroup(base / "cluster") as group:
        url = group.url()
        cost = await wait_cost(url, identity=ALICE, grants=args.wait_grants)
        primaries = group.primaries()
        steady = await run_token_service(state, url, [], grants=args.steady_grants,
                                         concurrency=args.concurrency, gap=args.steady_s,
                                         settle=0, cpu=_cpu_of(primaries))
        plan = [("cluster primary killed", lambda i=i: group.kill_master(i))
                for i in range(args.failovers)]
        report = await run_token_service(state, url, plan, grants=args.grants,
                                         concurrency=args.concurrency, gap=args.gap,
                                         settle=args.settle)
    return {"deployment": "Redis Cluster: three primaries, one replica each "
                          "(min-replicas-to-write 1)",
            "wait_cost": cost, "steady": _steady(steady), "run": report,
            "by_kind": _by_kind(report)}


async def main(args) -> int:
    started = time.time()
    base = Path(tempfile.mkdtemp(prefix="konnect-failover-"))
    state = make_state(base / "state")
    results = {"command": "bench/failover.py " + " ".join(sys.argv[1:]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    problems: list = []
    for name, fn in (("sentinel", sentinel), ("cluster", cluster)):
        print(f"-- {name}", flush=True)
        results[name] = await fn(state, base, args)
        problems += _problems(name, results[name]["run"])
        print(json.dumps({k: v for k, v in results[name].items() if k != "run"}, indent=1),
              flush=True)
    results["minutes"] = round((time.time() - started) / 60, 1)
    results["problems"] = problems
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"{len(problems)} problems; results in {args.out}; {results['minutes']} min")
    for line in problems:
        print("PROBLEM", line)
    return 1 if problems else 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--failovers", type=int, default=10, help="of each kind (default 10)")
    p.add_argument("--grants", type=int, default=10_000,
                   help="codes minted before each failover run (default 10000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--gap", type=float, default=2.0, help="seconds of load between failovers")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--steady-s", type=float, default=20.0,
                   help="seconds of the steady phase (Redis CPU per grant)")
    p.add_argument("--steady-grants", type=int, default=3000)
    p.add_argument("--wait-grants", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="one failover of each kind, 500 grants")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.failovers, args.grants, args.steady_s, args.steady_grants, args.wait_grants = \
            1, 500, 5.0, 500, 50
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
