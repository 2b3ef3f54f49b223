"""One command for the benchmarks (method: docs/benchmarks.md, "Method"):

    .venv/bin/python bench/run.py [--quick] [--runs 3] [--duration 10]

Starts the real process group (tests.support.group.Group: Redis, the four services,
Caddy, as `make run` does, with the keys `make run` makes: RSA-2048 for ID tokens and an
EC P-256 key for access tokens), the bare Tornado floors (bench/bare.py) and the peer
(panva's oidc-provider, bench/peer), and measures with `wrk -t1 -c32 -dD --latency`:
the token endpoint (authorization_code with PKCE and client_secret_basic; refresh_token),
userinfo, authorize (a code for a signed-in user), discovery and JWKS, each directly
against the service and through the proxy, plus the browser-less sign-in flow
(bench/flow.py). Beside that group, the variants (`VARIANTS`), each a group of its own
started the same way: the same scenarios with the LDAP backend against a real slapd that
the benchmark starts (bench/directory.py); the code grant with RSA-2048 for both tokens
(the keys of `make run` before) and with RSA-4096 (Konnect's README); and the whole
machine as most sites run it (LDAP, two token processes, through the proxy) next to the
peer. Repetitions are interleaved; every run records req/s, p50/p99, errors (non-2xx and
socket errors), the CPU seconds of every process from /proc/<pid>/stat (and what the
rest of the machine used: "foreign"), and peak RSS. Then the scaling of the code grant
with 1, 2 and 4 token processes.

Writes bench/results.json and renders docs/benchmarks.md and the PNG plots from it
(bench/render.py); `--render-only` re-renders from an existing results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)       # never import bench/ modules as top-level names
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataclasses import dataclass  # noqa: E402

from bench import floors, flow, load, peerop, procs, render, scenarios  # noqa: E402
from bench.directory import Directory  # noqa: E402
from tests.support.group import Group, free_port  # noqa: E402

VIAS = ("direct", "proxy")
SERVICE_OF = {"token_code": "token", "token_refresh": "token", "userinfo": "userinfo",
              "authorize": "authorize", "discovery": "token", "jwks": "token"}
# generous guesses of the highest rate of each single-use scenario (req/s), for pool sizes
# until the first run; then 1.5 x the highest rate seen so far in this run
RATE_GUESS = {"token_code": 1800, "token_refresh": 1800, "peer_token_code": 3000,
              "peer_jwt_token_code": 3000}
PEER_ENDPOINTS = ("token_code", "token_refresh", "userinfo", "discovery", "jwks")
JWT_PEER_ENDPOINTS = ("token_code", "token_refresh")
PEOPLE = 16   # the bench users codes and sign-ins are spread over


@dataclass(frozen=True)
class Variant:
    """A group of its own beside the main one (users file, production keys, 1 process)."""

    name: str
    label: str
    backend: str        # "users" or "ldap"
    keys: str           # "production" (what make run makes), "rsa2048", "rsa4096"
    token_procs: int
    endpoints: tuple
    vias: tuple = VIAS
    env: tuple = ()     # (name, value) pairs of the group's environment


VARIANTS = (
    Variant("ldap", "LDAP (slapd), production keys, 1 token process", "ldap", "production", 1,
            ("token_code", "token_refresh", "userinfo", "authorize")),
    Variant("ldap_nocache", "LDAP without the entry cache (--user-cache-ttl 0)", "ldap",
            "production", 1, ("token_code", "userinfo"), ("direct",),
            (("KONNECTD_USER_CACHE_TTL", "0"),)),
    Variant("ldap_rsa2048", "LDAP, RSA-2048 for both tokens (make run's keys before)", "ldap",
            "rsa2048", 1, ("token_code",)),
    Variant("ldap_rsa4096", "LDAP, RSA-4096 for both tokens (Konnect's README)", "ldap",
            "rsa4096", 1, ("token_code",)),
    Variant("machine", "the whole machine: LDAP, production keys, 2 token processes, "
            "through the proxy", "ldap", "production", 2, ("token_code", "token_refresh"),
            ("proxy",)),
)
RSA_BITS = {"rsa2048": 2048, "rsa4096": 4096}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- process facts -------------------------------------------------------------------------

def group_pids(group: Group, token_procs: int = 1) -> dict:
    """name -> pid of every process of the group, once supervisord reports them RUNNING."""
    pids = {"supervisord": group.process.pid}
    for program in ("token", "userinfo", "authorize", "identifier", "redis", "caddy", "demo"):
        pids.update(group.wait_running(program, token_procs if program == "token" else 1))
    return pids


def roles(pids: dict, service: str) -> dict:
    """process name -> role in a run: the service under test, proxy, redis, other."""
    out = {}
    for name in pids:
        if service == "all" and name.split("_")[0] in ("token", "userinfo", "authorize",
                                                          "identifier"):
            out[name] = "service"
        elif name.split("_")[0] == service or name in ("bare", "node"):
            out[name] = "service"
        elif name == "caddy":
            out[name] = "proxy"
        elif name == "redis":
            out[name] = "redis"
        elif name == "slapd":
            out[name] = "directory"
        elif name == "supervisord":
            out[name] = "logs"       # it forwards every service's log lines
        else:
            out[name] = "other"
    return out


def drive(spec, args) -> dict:
    """One load run of a Spec with the chosen generator (wrk for measurements; the Python
    loop for the smoke test, capped at --max-requests)."""
    if args.driver == "python":
        return load.run_python(spec, duration=args.duration, connections=min(4, args.connections),
                               max_requests=args.max_requests)
    return load.run_wrk(spec, duration=args.duration, connections=args.connections)


def pool_size(rate: float, args, factor: float = 1.0) -> int:
    """Single-use items one run may need: 1.3 x the highest rate seen x the duration."""
    need = int(rate * factor * args.duration * 1.3) + 500
    return min(need, args.max_requests + 20) if args.driver == "python" else need


def measure(fn, pids: dict, service: str) -> dict:
    before = procs.Snapshot.take(pids)
    result = fn()
    after = procs.Snapshot.take(pids)
    cpu = procs.delta(before, after)
    role = roles(pids, service)
    by_role = {r: 0.0 for r in ("service", "proxy", "redis", "directory", "logs", "other")}
    for name, seconds in cpu["procs"].items():
        by_role[role[name]] += seconds
    n = result.get("flows", result.get("requests", 0)) or 0
    result["cpu_s"] = cpu
    result["cpu_s_by_role"] = {k: round(v, 3) for k, v in by_role.items()}
    result["cpu_us_per_req"] = {k: round(v / n * 1e6, 1) if n else None
                                for k, v in {**by_role, "load": cpu["load"],
                                             "foreign": cpu["foreign"]}.items()}
    result["rss_peak_kb"] = {name: m["peak_kb"] for name, m in procs.memory(pids).items()}
    return result


# -- the pieces ------------------------------------------------------------------------------

class Bare:
    """bench/bare.py as a process on the group's Redis, verifying the group's tokens."""

    def __init__(self, group: Group, key: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare.py"), "--port", str(self.port),
             "--redis", f"redis://{group.env['KONNECT_REDIS_LISTEN']}/0", "--public-key", key,
             "--iss", group.issuer,
             "--event-loop", group.env.get("KONNECTD_EVENT_LOOP", "uvloop")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        line = self.process.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"bare server: {line}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.process.stdout.close()

    def spec(self, name: str, access_token: str) -> load.Spec:
        if name == "hello":
            return load.Spec("bare_hello", self.url + "/hello")
        if name == "base":
            return load.Spec("bare_base", self.url + "/base", "POST",
                             {"Content-Type": scenarios.FORM}, "grant_type=authorization_code")
        return load.Spec("bare_userinfo", self.url + "/userinfo", "GET",
                         {"Authorization": "Bearer " + access_token})


def start_group(make: Callable[[Path], Group], state: Path, attempts: int = 3) -> Group:
    """`make(state).start()`, again on new ports (and a new state directory) when a port
    it picked was taken before its program could listen (other processes on this machine
    pick free ports too, and outgoing connections use the same port range)."""
    for attempt in range(1, attempts + 1):
        where = state if attempt == 1 else state.with_name(f"{state.name}-{attempt}")
        group = make(where)
        try:
            group.start()
            return group
        except RuntimeError:
            if attempt == attempts or "Address already in use" not in group.output():
                raise
            log(f"{where.name}: a port was taken meanwhile, starting again on others")
    raise AssertionError("unreachable")


def signing_key_path(group: Group) -> str:
    """The group's signing key (what `make run` generated under the state directory)."""
    from shared import keytool
    return str(Path(group.state) / "keys" / keytool.LINK_NAME)


def access_key_path(group: Group) -> str:
    """The group's access-token key (`make run`'s production keys)."""
    from shared import keytool
    return str(Path(group.state) / "keys" / keytool.ACCESS_TOKEN_LINK_NAME)


def directory_backend(group: Group, directory: Directory):
    """A factory of the LDAP backend exactly as the group's services configure it."""
    def make():
        from shared.config import load_settings
        from shared.users import make_backend
        return make_backend(load_settings(["--iss", group.issuer], directory.env(),
                                          service="identifier"))
    return make


class Running:
    """One variant's group, its target, its processes."""

    def __init__(self, variant: Variant, base_dir: Path, directory: Optional[Directory]) -> None:
        self.variant = variant
        self.state = base_dir / f"variant-{variant.name}"
        self.group: Optional[Group] = None
        self.directory = directory
        self.target = None
        self.pids: dict = {}
        self.base_dir = base_dir

    def _group(self, state: Path) -> Group:
        from shared import keytool
        env = self.directory.env() if self.variant.backend == "ldap" else {}
        env.update(self.variant.env)
        if self.variant.keys in RSA_BITS:  # the keys an older install holds, one RSA key for all
            keytool.generate(state / "keys", "rsa", bits=RSA_BITS[self.variant.keys],
                             access_token_key=False)
            env["KONNECTD_SIGNING_PRIVATE_KEY"] = str(state / "keys" / keytool.LINK_NAME)
        self.group = Group(state, proxy="caddy", token_procs=self.variant.token_procs,
                           extra_env=env)
        return self.group

    def start(self, people: list, password: str) -> None:
        start_group(self._group, self.state)
        self.pids = group_pids(self.group, self.variant.token_procs)
        backend = directory_backend(self.group, self.directory) if self.directory else None
        if self.directory:
            self.pids["slapd"] = self.directory.pid
        else:
            people, password = scenarios.add_bench_users(self.group, len(people), password)
        self.target = scenarios.OurTarget(self.group, self.base_dir / f"variant-{self.variant.name}-work",
                                          backend=backend)
        self.target.use_people(people, password)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()


def versions() -> dict:
    def cmd(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""
    from importlib.metadata import version
    py = {}
    for name in ("tornado", "cryptography", "python-jose", "redis", "hiredis"):
        try:
            py[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed
            py[name] = ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": os_name,
            "kernel": platform.release(), "python": platform.python_version(), "packages": py,
            "wrk": cmd("wrk", "--version").split(" [")[0].replace("wrk ", ""),
            "caddy": (cmd("caddy", "version").split() or [""])[0],
            "redis": " ".join(cmd("redis-server", "--version").split()[:3]),
            "openssl": " ".join(floors.openssl_version().split()[:2]), "node": peerop.node_version(),
            "oidc_provider": peerop.installed_version()}


IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "wait (threading.py")


def profile(pid: int, seconds: float, work) -> dict:
    """py-spy samples of one process while `work()` loads it: the top functions."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out = Path(f"/tmp/konnect-bench-profile-{pid}.txt")
    proc = subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200",
                             "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    work()
    proc.wait(seconds + 30)
    if not out.exists():
        return {"error": "py-spy recorded nothing (ptrace not permitted?)"}
    own, inclusive, total = {}, {}, 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue  # a pool thread waiting for work (py-spy does not always see it idle)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    out.unlink()

    def top(table: dict, k: int) -> list:
        return [[f, round(100 * n / total, 1)] for f, n in
                sorted(table.items(), key=lambda x: -x[1])[:k]] if total else []
    return {"samples": total, "self": top(own, 20), "inclusive_all": top(inclusive, 400),
            "inclusive": [x for x in top(inclusive, 60) if not any(
                s in x[0] for s in ("runpy", "run_forever", "_run_once", "Runner.run",
                                    "run_until_complete", "<module>", "main (", "run (",
                                    "Handle._run"))][:30]}


# -- the run ---------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run of 3 s each (a check, not a measurement)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--flow-concurrency", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated endpoints (default: all)")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                    help="comma-separated variants to run beside the main group "
                         f"({', '.join(v.name for v in VARIANTS)}; default: all; '' for none)")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--scaling", default="1,2,4", help="token process counts to compare")
    ap.add_argument("--floor-seconds", type=float, default=3.0,
                    help="seconds per crypto floor measurement")
    ap.add_argument("--driver", choices=("wrk", "python"), default="wrk",
                    help="load generator: wrk (measurements) or the Python loop (smoke test)")
    ap.add_argument("--max-requests", type=int, default=50,
                    help="with --driver python: requests per run")
    ap.add_argument("--max-flows", type=int, default=None, help="sign-in flows per run at most")
    ap.add_argument("--label", default="", help="a note stored with the results")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.floor_seconds = 1, 3.0, 1.0
    if args.render_only:
        render.render_files(Path(args.out), Path(args.docs))
        return 0
    if args.driver == "wrk" and not load.wrk_available():
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    wanted = {name for name in args.variants.split(",") if name}
    unknown = wanted - {v.name for v in VARIANTS}
    if unknown:
        print(f"unknown variants: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    only = [e for e in args.only.split(",") if e]
    endpoints = [e for e in scenarios.ENDPOINTS if not only or e in only]
    variants = [v for v in VARIANTS if v.name in wanted
                and (not only or set(v.endpoints) & set(only))]
    results = {"meta": {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "label": args.label, "versions": versions()},
               "method": {"runs": args.runs, "duration_s": args.duration,
                          "connections": args.connections, "threads": 1,
                          "flow_concurrency": args.flow_concurrency, "quick": args.quick,
                          "driver": args.driver, "people": PEOPLE},
               "floors": {"openssl": [], "python_signing": [], "bare": {}},
               "ours": {}, "peer": {}, "peer_jwt": {}, "flow": {}, "scaling": {}, "profile": {},
               "variants": {}}
    started = time.monotonic()
    rates = dict(RATE_GUESS)
    seen: dict = {}

    def run_one(key: str, endpoint: str, prepare, spec_of, pids: dict, service: str) -> dict:
        """One measured run; single-use pools sized from the rates seen so far."""
        rate = rates.get(key, rates.get(endpoint))
        need = pool_size(rate, args) if rate else 0
        feed = prepare(endpoint, need) if need else None
        spec = spec_of(endpoint, feed)
        rec = measure(lambda: drive(spec, args), pids, service)
        if rate and rec["errors"] == 0:
            seen[key] = max(seen.get(key, 0), rec["rps"])
            rates[key] = seen[key] * 1.5
        return rec

    base_dir = Path(scenarios.workdir())
    log(f"work directory {base_dir}")
    group: Optional[Group] = None
    peer = peer_jwt = None
    bare = None
    directory: Optional[Directory] = None
    running: list[Running] = []
    try:
        group = start_group(lambda state: Group(state, proxy="caddy", token_procs=1),
                            base_dir / "group")
        pids = group_pids(group)
        target = scenarios.OurTarget(group, base_dir / "ours")
        key_path = signing_key_path(group)
        bare = Bare(group, access_key_path(group))
        pids_bare = {**pids, "bare": bare.process.pid}
        sample = target.sample_token_response()
        results["signatures"] = scenarios.count_signatures(sample)
        users, password = scenarios.add_bench_users(group, max(PEOPLE, args.flow_concurrency))
        target.use_people(users[:PEOPLE], password)
        if any(v.backend == "ldap" for v in variants):
            directory = Directory(base_dir / "slapd")
            directory.start()
            directory.add_users(users[:PEOPLE], password)
        for variant in variants:
            run = Running(variant, base_dir, directory if variant.backend == "ldap" else None)
            running.append(run)
            run.start(users[:PEOPLE], password)
            results["variants"][variant.name] = {
                "label": variant.label, "backend": variant.backend, "keys": variant.keys,
                "token_procs": variant.token_procs,
                "signatures": scenarios.count_signatures(run.target.sample_token_response()),
                "runs": {}}
            log(f"variant {variant.name}: {variant.label}")
        if not args.no_peer:
            peer = peerop.Peer(base_dir / "peer", free_port())
            peer.start()
            peer.sign_in()
            # the same peer with JWT access tokens: two signatures per grant, as ours
            peer_jwt = peerop.Peer(base_dir / "peer-jwt", free_port(), jwt_access_tokens=True)
            peer_jwt.start()
            peer_jwt.sign_in()
        flow_index = 0
        for rep in range(args.runs):
            log(f"repetition {rep + 1}/{args.runs}")
            # floors first: crypto, then the bare handlers
            results["floors"]["openssl"].append(
                floors.openssl_rsa2048(max(1, int(args.floor_seconds))))
            results["floors"]["python_signing"].append(
                floors.python_signing(key_path, args.floor_seconds, access_key_path(group)))
            for name in ("hello", "base", "userinfo"):
                spec = bare.spec(name, target.access_token())
                rec = measure(lambda: drive(spec, args), pids_bare, "bare")
                results["floors"]["bare"].setdefault(name, []).append(rec)
                log(f"  bare {name}: {rec['rps']:.0f} req/s, {rec['cpu_us_per_req']['service']} us/req")
            for endpoint in endpoints:
                for via in VIAS:
                    rec = run_one(endpoint, endpoint,
                                  lambda e, n: target.prepare(e, n, use_wrk=args.driver == "wrk"),
                                  lambda e, feed: target.spec(e, via, feed=feed),
                                  pids, SERVICE_OF[endpoint])
                    results["ours"].setdefault(endpoint, {}).setdefault(via, []).append(rec)
                    log(f"  ours {endpoint} {via}: {rec['rps']:.0f} req/s p99 {rec['p99_ms']} ms "
                        f"errors {rec['errors']} service {rec['cpu_us_per_req']['service']} us/req "
                        f"foreign {rec['cpu_s']['foreign']} s")
                for run in running:
                    v = run.variant
                    if endpoint not in v.endpoints:
                        continue
                    for via in v.vias:
                        rec = run_one(f"{v.name}_{endpoint}", endpoint,
                                      lambda e, n: run.target.prepare(
                                          e, n, use_wrk=args.driver == "wrk"),
                                      lambda e, feed: run.target.spec(e, via, feed=feed),
                                      run.pids, SERVICE_OF[endpoint])
                        results["variants"][v.name]["runs"].setdefault(endpoint, {}) \
                            .setdefault(via, []).append(rec)
                        log(f"  {v.name} {endpoint} {via}: {rec['rps']:.0f} req/s p99 "
                            f"{rec['p99_ms']} ms errors {rec['errors']} service "
                            f"{rec['cpu_us_per_req']['service']} us/req directory "
                            f"{rec['cpu_us_per_req']['directory']} us/req")
                for name, other in (("peer", peer), ("peer_jwt", peer_jwt)):
                    if other is None or endpoint not in PEER_ENDPOINTS or \
                            (name == "peer_jwt" and endpoint not in JWT_PEER_ENDPOINTS):
                        continue
                    rec = run_one(f"{name}_{endpoint}", endpoint, other.prepare,
                                  lambda e, feed: other.spec(e, feed=feed), other.pids, "node")
                    results[name].setdefault(endpoint, []).append(rec)
                    log(f"  {name} {endpoint}: {rec['rps']:.0f} req/s p99 {rec['p99_ms']} ms "
                        f"errors {rec['errors']} node {rec['cpu_us_per_req']['service']} us/req")
            if not only or "flow" in only:
                for via in VIAS:
                    def run_flow(via=via):
                        return flow.run_flows(group, via=via, users=users, password=password,
                                              verifier=target.verifier, challenge=target.challenge,
                                              basic=target.basic, redirect_uri=target.redirect_uri,
                                              duration=args.duration,
                                              concurrency=args.flow_concurrency,
                                              start_index=flow_index,
                                              max_flows=args.max_flows)
                    rec = measure(run_flow, pids, "all")
                    flow_index = rec["next_index"]
                    results["flow"].setdefault(via, []).append(rec)
                    log(f"  flow {via}: {rec['rps']} flows/s errors {rec['errors']} "
                        f"{rec['error_samples'][:1]}")
        if not args.no_profile:
            log("profiles (py-spy, not part of the measurements)")
            profiled = [("", target, pids)] + [(f"{r.variant.name}_", r.target, r.pids)
                                               for r in running if r.variant.name == "ldap"]
            for prefix, where, where_pids in profiled:
                token_pid = next(v for k, v in where_pids.items() if k.startswith("token"))
                feed = where.prepare("token_code", int(rates["token_code"] * 8) + 500)
                spec = where.spec("token_code", "direct", feed=feed)
                results["profile"][prefix + "token_code"] = profile(
                    token_pid, 5, lambda: load.run_wrk(spec, duration=6,
                                                       connections=args.connections))
                for endpoint in ("userinfo", "authorize"):
                    spec = where.spec(endpoint, "direct")
                    results["profile"][prefix + endpoint] = profile(
                        where_pids[SERVICE_OF[endpoint]], 5,
                        lambda: load.run_wrk(spec, duration=6, connections=args.connections))
        results["rss_final_kb"] = {name: procs.proc_memory(pid) for name, pid in
                                   {**pids_bare, **(peer.pids if peer else {}),
                                    **({"node_jwt": peer_jwt.process.pid} if peer_jwt else {})
                                    }.items()}
    finally:
        if bare is not None:
            bare.stop()
        for other in (peer, peer_jwt):
            if other is not None:
                other.stop()
        for run in running:
            run.stop()
        if group is not None:
            group.stop()
        if directory is not None:
            directory.stop()
    if not args.no_scaling and (not only or "scaling" in only):
        scaling(results, args, base_dir, rates)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    log(f"wrote {out}")
    render.render_files(out, Path(args.docs))
    log(f"rendered {args.docs}/benchmarks.md")
    shutil.rmtree(base_dir, ignore_errors=True)
    return 0


def scaling(results: dict, args, base_dir: Path, rates: dict) -> None:
    """The code grant with 1, 2 and 4 token processes, direct (SO_REUSEPORT) and through
    the proxy; the three groups run side by side (idle ones cost nothing) so that the
    repetitions can be interleaved."""
    groups = {}
    try:
        for n in [int(x) for x in args.scaling.split(",") if x]:
            g = start_group(lambda state, n=n: Group(state, proxy="caddy", token_procs=n),
                            base_dir / f"scale-{n}")
            groups[n] = (g, group_pids(g, n), scenarios.OurTarget(g, base_dir / f"scale-{n}-work"))
        for rep in range(args.runs):
            log(f"scaling repetition {rep + 1}/{args.runs}")
            for n, (g, pids, target) in groups.items():
                for via in VIAS:
                    feed = target.prepare("token_code", pool_size(rates["token_code"], args,
                                                                  max(1.0, n / 2)))
                    spec = target.spec("token_code", via, feed=feed)
                    rec = measure(lambda: drive(spec, args), pids, "token")
                    results["scaling"].setdefault(str(n), {}).setdefault(via, []).append(rec)
                    log(f"  {n} token procs {via}: {rec['rps']:.0f} req/s errors {rec['errors']} "
                        f"p99 {rec['p99_ms']} ms foreign {rec['cpu_s']['foreign']} s")
    finally:
        for g, _, _ in groups.values():
            g.stop()


def _stop_on_sigterm() -> None:
    """SIGTERM (and SIGINT, which a background shell ignores) end the run through the
    `finally` blocks, so the group, the bare server and the peer are stopped."""
    import signal

    def stop(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


if __name__ == "__main__":
    _stop_on_sigterm()
    sys.exit(main())
