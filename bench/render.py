"""Render docs/benchmarks.md and the PNG plots from bench/results.json.

Every number in the document comes from the results file (medians of the runs, in-run
ratios as medians of per-repetition ratios); the prose around them is the template
bench/benchmarks.md.in. `bench/results-before.json`, when present, is the same benchmark
run before the product changes of docs/benchmarks.md ("What changed").
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "benchmarks.md.in"
ENDPOINT_NAMES = {
    "token_code": "token, authorization_code (PKCE, client_secret_basic)",
    "token_refresh": "token, refresh_token (rotated)",
    "userinfo": "userinfo (Bearer JWT, revocation check)",
    "authorize": "authorize (a code for a signed-in user, prompt=none)",
    "discovery": "discovery document",
    "jwks": "JWKS",
}
ALG_TO_RAW = {"RS256": "raw_rs256_per_s", "PS256": "raw_ps256_per_s", "ES256": "raw_es256_per_s"}


# -- numbers -------------------------------------------------------------------------------

def med(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def col(runs: list, key: str, sub: Optional[str] = None) -> Optional[float]:
    if sub is None:
        return med(r.get(key) for r in runs)
    return med((r.get(key) or {}).get(sub) for r in runs)


def ratios(a: list, b: list, key: str = "rps") -> Optional[float]:
    """Median of per-repetition ratios a[i]/b[i]."""
    values = [x[key] / y[key] for x, y in zip(a, b) if x.get(key) and y.get(key)]
    return med(values)


def fmt(v, digits: int = 0, suffix: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}{suffix}"
    return f"{v:,.{digits}f}{suffix}"


def signature_us(results: dict) -> dict:
    """µs per signature of each alg the service uses (raw cryptography, this run)."""
    sig = results.get("signatures") or {}
    py = results["floors"].get("python_signing") or []
    out = {}
    for field, alg in sig.items():
        per_s = med(r.get(ALG_TO_RAW.get(alg, "raw_rs256_per_s")) for r in py)
        out[field] = (alg, 1e6 / per_s if per_s else None)
    return out


def floors(results: dict) -> dict:
    """Per repetition: the floor req/s of every endpoint (same index as the runs)."""
    bare = results["floors"].get("bare") or {}
    sig = signature_us(results)
    py = results["floors"].get("python_signing") or []
    out: dict = {e: [] for e in ENDPOINT_NAMES}
    n = len(bare.get("base") or [])
    for i in range(n):
        base_us = bare["base"][i]["cpu_us_per_req"]["service"]
        sign_us = 0.0
        for field, (alg, _) in sig.items():
            per_s = py[i].get(ALG_TO_RAW.get(alg, "raw_rs256_per_s")) if i < len(py) else None
            sign_us += 1e6 / per_s if per_s else 0.0
        model = 1e6 / (base_us + sign_us) if base_us else None
        out["token_code"].append({"rps": model, "base_us": base_us, "sign_us": sign_us})
        out["token_refresh"].append({"rps": model, "base_us": base_us, "sign_us": sign_us})
        out["userinfo"].append({"rps": bare["userinfo"][i]["rps"],
                                "cpu_us": bare["userinfo"][i]["cpu_us_per_req"]["service"]})
        for e in ("discovery", "jwks"):
            out[e].append({"rps": bare["hello"][i]["rps"],
                           "cpu_us": bare["hello"][i]["cpu_us_per_req"]["service"]})
    return out


def floor_cpu_us(fl: list, endpoint: str) -> Optional[float]:
    if endpoint in ("token_code", "token_refresh"):
        return med(f["base_us"] + f["sign_us"] for f in fl)
    return med(f.get("cpu_us") for f in fl)


# -- tables --------------------------------------------------------------------------------

def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


SERVICE_PROCS = {"token_code": "token", "token_refresh": "token", "userinfo": "userinfo",
                 "authorize": "authorize", "discovery": "token", "jwks": "token"}


def service_rss(runs: list, prefix: str) -> Optional[float]:
    """Peak RSS (VmHWM, MiB) of the service's process(es) after the runs: the largest."""
    values = [kb for r in runs for name, kb in (r.get("rss_peak_kb") or {}).items()
              if name.split("_")[0] == prefix]
    return max(values) / 1024 if values else None


def endpoint_table(results: dict, fl: dict) -> str:
    rows = []
    for endpoint, name in ENDPOINT_NAMES.items():
        for via in ("direct", "proxy"):
            runs = results["ours"].get(endpoint, {}).get(via) or []
            if not runs:
                continue
            frac = ratios(runs, fl[endpoint]) if via == "direct" else None
            rows.append([
                f"{name}" if via == "direct" else "″ through Caddy (TLS)",
                fmt(col(runs, "rps")), " / ".join(fmt(r["rps"]) for r in runs),
                fmt(col(runs, "p50_ms"), 1), fmt(col(runs, "p99_ms"), 1),
                sum(r["errors"] for r in runs),
                fmt(col(runs, "cpu_us_per_req", "service")),
                fmt(col(runs, "cpu_us_per_req", "proxy")) if via == "proxy" else "–",
                fmt(col(runs, "cpu_us_per_req", "redis")),
                fmt(col(runs, "cpu_us_per_req", "logs")),
                fmt(col(runs, "cpu_s", "foreign"), 1),
                fmt(col(runs, "cpu_s", "steal"), 1),
                fmt(med(f["rps"] for f in fl[endpoint])) if via == "direct" else "",
                fmt(frac, 2) if frac is not None else "",
                fmt(service_rss(runs, SERVICE_PROCS[endpoint]), 1),
            ])
    return table(["endpoint", "req/s (median)", "runs", "p50 ms", "p99 ms", "errors",
                  "service CPU µs/req", "proxy CPU µs/req", "Redis CPU µs/req",
                  "supervisord (log lines) CPU µs/req", "foreign CPU s/run", "steal s/run",
                  "floor req/s",
                  "× floor (in-run)", "service peak RSS MiB"], rows)


def flow_table(results: dict) -> str:
    rows = []
    for via in ("direct", "proxy"):
        runs = results.get("flow", {}).get(via) or []
        if not runs:
            continue
        rows.append([via, fmt(col(runs, "rps"), 1), " / ".join(fmt(r["rps"], 1) for r in runs),
                     fmt(col(runs, "http_rps")), fmt(col(runs, "p50_ms")), fmt(col(runs, "p99_ms")),
                     sum(r["errors"] for r in runs),
                     fmt(col(runs, "cpu_us_per_req", "service")),
                     fmt(col(runs, "cpu_us_per_req", "proxy")) if via == "proxy" else "–",
                     fmt(col(runs, "cpu_s", "foreign"), 1)])
    return table(["via", "flows/s (median)", "runs", "HTTP req/s", "flow p50 ms", "flow p99 ms",
                  "errors", "services CPU µs/flow", "proxy CPU µs/flow", "foreign CPU s/run"], rows)


def floors_section(results: dict, fl: dict) -> str:
    f = results["floors"]
    ossl = f.get("openssl") or []
    py = f.get("python_signing") or []
    bare = f.get("bare") or {}
    sig = signature_us(results)
    rows = [["`openssl speed -seconds 3 rsa2048`, sign/s (one core)",
             fmt(col(ossl, "sign_per_s")), " / ".join(fmt(r["sign_per_s"]) for r in ossl)],
            ["`openssl speed`, verify/s", fmt(col(ossl, "verify_per_s")),
             " / ".join(fmt(r["verify_per_s"]) for r in ossl)],
            ["raw `cryptography` RS256-2048 sign/s (the group's key)", fmt(col(py, "raw_rs256_per_s")),
             " / ".join(fmt(r["raw_rs256_per_s"]) for r in py)],
            ["raw `cryptography` PS256-2048 sign/s", fmt(col(py, "raw_ps256_per_s")),
             " / ".join(fmt(r["raw_ps256_per_s"]) for r in py)],
            [f"`Keyring.sign` (access token, {py[0]['keyring_alg'] if py else ''}), sign/s",
             fmt(col(py, "keyring_sign_access_per_s")),
             " / ".join(fmt(r["keyring_sign_access_per_s"]) for r in py)],
            [f"`shared.jose.sign` (ID token, {py[0]['id_token_alg'] if py else ''}), sign/s",
             fmt(col(py, "jose_sign_id_token_per_s")),
             " / ".join(fmt(r["jose_sign_id_token_per_s"]) for r in py)]]
    out = [table(["crypto floor", "median", "runs"], rows), ""]
    rows = []
    names = {"hello": "bare hello (GET, JSON)",
             "base": "bare form POST + one Redis round trip (the cost model's base term)",
             "userinfo": "bare userinfo: verify the same access token + one Redis EXISTS"}
    for name, label in names.items():
        runs = bare.get(name) or []
        if runs:
            rows.append([label, fmt(col(runs, "rps")), " / ".join(fmt(r["rps"]) for r in runs),
                         fmt(col(runs, "p99_ms"), 1), fmt(col(runs, "cpu_us_per_req", "service")),
                         fmt(col(runs, "cpu_s", "foreign"), 1)])
    out.append(table(["bare Tornado handler (bench/bare.py)", "req/s", "runs", "p99 ms",
                      "CPU µs/req", "foreign CPU s/run"], rows))
    code = fl.get("token_code") or []
    if code:
        k = len(sig)
        algs = " + ".join(f"{alg} ({fmt(us)} µs)" for alg, us in sig.values())
        out += ["", f"**Cost-model floor of a code grant** (one process): 1e6 / (base + k × s) "
                f"with k = {k} signatures per response ({', '.join(sig)}: {algs}), "
                f"base = {fmt(med(c['base_us'] for c in code))} µs (the bare POST + Redis "
                f"handler's CPU per request in this run) → **{fmt(med(c['rps'] for c in code))} "
                f"req/s** ({fmt(med(c['base_us'] + c['sign_us'] for c in code))} µs per request)."]
    return "\n".join(out)


PEERS = (("peer", "opaque (its default)"), ("peer_jwt", "JWT, RS256 (two signatures, as ours)"))


def peer_table(results: dict) -> str:
    if not results.get("peer"):
        return "_The peer was not measured in this run (`--no-peer`)._"
    rows = []
    for key, label in PEERS:
        peer = results.get(key) or {}
        for endpoint, name in ENDPOINT_NAMES.items():
            ours = results["ours"].get(endpoint, {}).get("direct") or []
            theirs = peer.get(endpoint) or []
            if not ours or not theirs:
                continue
            ours_cpu = col(ours, "cpu_us_per_req", "service")
            peer_cpu = col(theirs, "cpu_us_per_req", "service")
            peer_cores = med(r["cpu_s_by_role"]["service"] / r["duration_s"] for r in theirs)
            rows.append([name, label, fmt(col(ours, "rps")), fmt(col(theirs, "rps")),
                         " / ".join(fmt(r["rps"]) for r in theirs), fmt(ratios(ours, theirs), 2),
                         fmt(col(ours, "p99_ms"), 1), fmt(col(theirs, "p99_ms"), 1),
                         fmt(ours_cpu), fmt(peer_cpu), fmt(peer_cores, 2),
                         fmt(ours_cpu / peer_cpu, 2) if ours_cpu and peer_cpu else "–",
                         sum(r["errors"] for r in theirs)])
    return table(["endpoint", "peer's access tokens", "ours req/s (1 process)", "peer req/s",
                  "peer runs", "ours/peer (in-run)", "ours p99 ms", "peer p99 ms",
                  "ours CPU µs/req", "peer CPU µs/req", "peer cores used",
                  "ours/peer CPU per req", "peer errors"], rows)


def cpu_ceiling(runs: list, cores: int) -> Optional[float]:
    """req/s at which the machine's cores would be busy: cores / (the CPU every measured
    process spends per request: services, proxy, Redis, log reader, load generator)."""
    totals = [sum(v for k, v in r["cpu_us_per_req"].items() if k != "foreign" and v)
              for r in runs]
    total = med(t for t in totals if t)
    return cores * 1e6 / total if total else None


def scaling_table(results: dict) -> str:
    sc = results.get("scaling") or {}
    if not sc:
        return "_Scaling was not measured in this run (`--no-scaling`)._"
    cores = int((results.get("meta", {}).get("versions") or {}).get("cores") or 2)
    rows = []
    for via in ("direct", "proxy"):
        one = (sc.get("1") or {}).get(via) or []
        for n in sorted(sc, key=int):
            runs = sc[n].get(via) or []
            if not runs:
                continue
            ceiling = cpu_ceiling(runs, cores)
            rows.append([n, via, fmt(col(runs, "rps")), " / ".join(fmt(r["rps"]) for r in runs),
                         fmt(ratios(runs, one), 2), fmt(ceiling),
                         fmt(ceiling / col(one, "rps"), 2) if ceiling and one else "–",
                         fmt(col(runs, "p50_ms"), 1),
                         fmt(col(runs, "p99_ms"), 1), sum(r["errors"] for r in runs),
                         fmt(col(runs, "cpu_us_per_req", "service")),
                         fmt(col(runs, "cpu_us_per_req", "proxy")) if via == "proxy" else "–",
                         fmt(col(runs, "cpu_s", "foreign"), 1)])
    return table(["token processes", "via", "req/s (median)", "runs", "× 1 process (in-run)",
                  f"{cores}-core ceiling req/s", "ceiling ÷ 1 process", "p50 ms", "p99 ms",
                  "errors", "token CPU µs/req", "proxy CPU µs/req", "foreign CPU s/run"], rows)


def memory_table(results: dict) -> str:
    final = results.get("rss_final_kb") or {}
    rows = [[name, fmt(m["peak_kb"] / 1024, 1), fmt(m["rss_kb"] / 1024, 1)]
            for name, m in sorted(final.items()) if m.get("peak_kb")]
    return table(["process", "peak RSS MiB (VmHWM)", "RSS at the end MiB"], rows)


def targets(results: dict, fl: dict) -> tuple:
    """(markdown table, list of (name, met, detail))."""
    out = []
    ours = results.get("ours") or {}
    code = (ours.get("token_code") or {}).get("direct") or []
    if code and fl.get("token_code"):
        frac = ratios(code, fl["token_code"])
        cpu_frac = (floor_cpu_us(fl["token_code"], "token_code")
                    / col(code, "cpu_us_per_req", "service")) if col(code, "cpu_us_per_req", "service") else None
        out.append(("code grant ≥ 75 % of its cost-model floor per process",
                    frac is not None and frac >= 0.75,
                    f"req/s: {fmt(frac, 2)} × floor; by CPU per request: {fmt(cpu_frac, 2)} × "
                    f"({fmt(floor_cpu_us(fl['token_code'], 'token_code'))} µs floor vs "
                    f"{fmt(col(code, 'cpu_us_per_req', 'service'))} µs measured)"))
    for key, label in PEERS:
        peer = results.get(key) or {}
        for endpoint in ("token_code", "token_refresh"):
            mine = (ours.get(endpoint) or {}).get("direct") or []
            theirs = peer.get(endpoint) or []
            if not (mine and theirs):
                continue
            a, b = col(mine, "cpu_us_per_req", "service"), col(theirs, "cpu_us_per_req", "service")
            detail = f"ours {fmt(a)} µs vs peer {fmt(b)} µs ({fmt(a / b if a and b else None, 2)}×)"
            if key == "peer":
                sig = signature_us(results).get("access_token")
                without = a - sig[1] if a and sig and sig[1] else None
                detail += (f"; ours less the access-token signature this peer does not make: "
                           f"{fmt(without)} µs")
            out.append((f"token CPU-s per request ≤ the peer's ({endpoint.replace('token_', '')} "
                        f"grant; peer access tokens {label})",
                        a is not None and b is not None and a <= b, detail))
    sc = results.get("scaling") or {}
    for via in ("proxy", "direct"):
        one, two = (sc.get("1") or {}).get(via) or [], (sc.get("2") or {}).get(via) or []
        if one and two:
            r = ratios(two, one)
            cores = int((results.get("meta", {}).get("versions") or {}).get("cores") or 2)
            ceiling = cpu_ceiling(two, cores)
            reach = ceiling / col(one, "rps") if ceiling and col(one, "rps") else None
            out.append((f"2 token processes ≥ 1.7 × 1 process ({'through the proxy' if via == 'proxy' else 'direct, SO_REUSEPORT'})",
                        r is not None and r >= 1.7,
                        f"{fmt(r, 2)} × (what the {cores} cores allow at 2 processes, from the "
                        f"CPU all processes spend per request: {fmt(reach, 2)} ×)"))
    ui = (ours.get("userinfo") or {}).get("direct") or []
    if ui and fl.get("userinfo"):
        frac = ratios(ui, fl["userinfo"])
        out.append(("userinfo ≥ 75 % of its bare floor", frac is not None and frac >= 0.75,
                    f"{fmt(frac, 2)} × ({fmt(col(ui, 'rps'))} vs {fmt(med(f['rps'] for f in fl['userinfo']))} req/s)"))
    worst = []
    for endpoint in ENDPOINT_NAMES:
        runs = (ours.get(endpoint) or {}).get("direct") or []
        if runs:
            worst.append((col(runs, "p99_ms"), endpoint))
    if worst:
        high = max(worst)
        out.append(("p99 at 32 connections < 30 ms (each endpoint, direct)",
                    all(p is not None and p < 30 for p, _ in worst),
                    "; ".join(f"{e} {fmt(p, 1)} ms" for p, e in worst) + f" (highest: {high[1]})"))
    proxy_worst = []
    for endpoint in ENDPOINT_NAMES:
        runs = (ours.get(endpoint) or {}).get("proxy") or []
        if runs:
            proxy_worst.append((col(runs, "p99_ms"), endpoint))
    if proxy_worst:
        out.append(("(for information) p99 at 32 connections through the proxy < 30 ms",
                    all(p is not None and p < 30 for p, _ in proxy_worst),
                    "; ".join(f"{e} {fmt(p, 1)} ms" for p, e in proxy_worst)))
    errors = sum(r["errors"] for e in ours.values() for runs in e.values() for r in runs)
    errors += sum(r["errors"] for runs in (results.get("flow") or {}).values() for r in runs)
    errors += sum(r["errors"] for n in sc.values() for runs in n.values() for r in runs)
    out.append(("zero errors (non-2xx or socket errors) in every run", errors == 0,
                f"{errors} errors in all runs of ours"))
    rows = [[name, "**met**" if met else "**missed**", detail] for name, met, detail in out]
    return table(["target (issue 9)", "state", "measured"], rows), out


# -- where users run it: a directory, production keys, the whole machine (issue 18) --------

GRANTS = ("token_code", "token_refresh")
LDAP_TARGETS = {"token_code": 0.9, "token_refresh": 0.9, "userinfo": 0.75, "authorize": 0.9}
KEY_LABELS = {"ldap": "production keys: RSA-2048 (ID tokens) + EC P-256 (access tokens)",
              "ldap_rsa2048": "RSA-2048 for both tokens (make run's keys before)",
              "ldap_rsa4096": "RSA-4096 for both tokens (Konnect's README, keytool before)"}
MACHINE_P99_MS = 50


def variant_runs(results: dict, name: str, endpoint: str, via: str) -> list:
    return (((results.get("variants") or {}).get(name) or {}).get("runs", {})
            .get(endpoint) or {}).get(via) or []


def all_cpu(run: dict) -> Optional[float]:
    """CPU µs per request of every measured process of ours (services, proxy, Redis,
    directory, log reader), not the load generator nor the rest of the machine."""
    values = [v for k, v in run["cpu_us_per_req"].items() if k not in ("load", "foreign") and v]
    return sum(values) if values else None


def cpu_ratio(a: list, b: list) -> Optional[float]:
    """Median of per-repetition ratios of service CPU per request a[i] / b[i]."""
    return med(x["cpu_us_per_req"]["service"] / y["cpu_us_per_req"]["service"]
               for x, y in zip(a, b)
               if x["cpu_us_per_req"].get("service") and y["cpu_us_per_req"].get("service"))


def directory_table(results: dict) -> str:
    rows = []
    for endpoint, target in LDAP_TARGETS.items():
        for via in ("direct", "proxy"):
            users = (results["ours"].get(endpoint) or {}).get(via) or []
            ldap = variant_runs(results, "ldap", endpoint, via)
            if not users or not ldap:
                continue
            rows.append([ENDPOINT_NAMES[endpoint] if via == "direct" else "″ through Caddy (TLS)",
                         fmt(col(users, "rps")), fmt(col(ldap, "rps")),
                         fmt(ratios(ldap, users), 2), f"≥ {target}" if via == "direct" else "",
                         fmt(col(users, "p99_ms"), 1), fmt(col(ldap, "p99_ms"), 1),
                         fmt(col(users, "cpu_us_per_req", "service")),
                         fmt(col(ldap, "cpu_us_per_req", "service")),
                         fmt(col(ldap, "cpu_us_per_req", "directory")),
                         sum(r["errors"] for r in users + ldap)])
            cold = variant_runs(results, "ldap_nocache", endpoint, via)
            if cold:  # every request a directory search: what the cache saves
                rows.append(["″ LDAP without the entry cache (`--user-cache-ttl 0`)",
                             fmt(col(users, "rps")), fmt(col(cold, "rps")),
                             fmt(ratios(cold, users), 2), "(for information)",
                             fmt(col(users, "p99_ms"), 1), fmt(col(cold, "p99_ms"), 1),
                             fmt(col(users, "cpu_us_per_req", "service")),
                             fmt(col(cold, "cpu_us_per_req", "service")),
                             fmt(col(cold, "cpu_us_per_req", "directory")),
                             sum(r["errors"] for r in cold)])
    if not rows:
        return "_The LDAP variant was not measured in this run (`--variants`)._"
    return table(["endpoint", "users file req/s", "LDAP req/s", "LDAP ÷ users file (in-run)",
                  "target", "users file p99 ms", "LDAP p99 ms", "users file service CPU µs/req",
                  "LDAP service CPU µs/req", "slapd CPU µs/req", "errors"], rows)


def keys_table(results: dict) -> str:
    rows = []
    for name, label in KEY_LABELS.items():
        for via in ("direct", "proxy"):
            base = variant_runs(results, "ldap_rsa2048", "token_code", via)
            runs = variant_runs(results, name, "token_code", via)
            if not runs:
                continue
            sig = ((results.get("variants") or {}).get(name) or {}).get("signatures") or {}
            rows.append([label if via == "direct" else "″ through Caddy (TLS)",
                         ", ".join(f"{k} {v}" for k, v in sig.items()),
                         fmt(col(runs, "rps")), fmt(col(runs, "p99_ms"), 1),
                         fmt(col(runs, "cpu_us_per_req", "service")),
                         fmt(cpu_ratio(runs, base), 2) if base else "–",
                         fmt(med(all_cpu(r) for r in runs)), sum(r["errors"] for r in runs)])
    if not rows:
        return "_The key variants were not measured in this run (`--variants`)._"
    return table(["keys (code grant, LDAP, 1 token process)", "signatures", "req/s",
                  "p99 ms", "token CPU µs/req", "token CPU ÷ RSA-2048 (in-run)",
                  "all our processes CPU µs/req", "errors"], rows)


def machine_table(results: dict) -> str:
    rows = []
    for endpoint in GRANTS:
        ours = variant_runs(results, "machine", endpoint, "proxy")
        if not ours:
            continue
        for key, label in PEERS:
            theirs = (results.get(key) or {}).get(endpoint) or []
            if not theirs:
                continue
            rows.append([ENDPOINT_NAMES[endpoint], label, fmt(col(ours, "rps")),
                         fmt(col(theirs, "rps")), fmt(ratios(ours, theirs), 2),
                         fmt(col(ours, "p99_ms"), 1), fmt(col(theirs, "p99_ms"), 1),
                         fmt(med(all_cpu(r) for r in ours)),
                         fmt(col(ours, "cpu_us_per_req", "service")),
                         fmt(col(ours, "cpu_us_per_req", "proxy")),
                         fmt(col(ours, "cpu_us_per_req", "directory")),
                         fmt(col(theirs, "cpu_us_per_req", "service")),
                         sum(r["errors"] for r in ours + theirs)])
    if not rows:
        return "_The whole-machine variant or the peer was not measured in this run._"
    return table(["grant", "peer's access tokens", "ours req/s (LDAP, 2 token processes, "
                  "through Caddy)", "peer req/s (1 Node process)", "ours ÷ peer (in-run)",
                  "ours p99 ms", "peer p99 ms", "ours CPU µs/req, all processes",
                  "of which token", "Caddy", "slapd", "peer CPU µs/req", "errors"], rows)


def user_targets(results: dict) -> list:
    """(name, met, detail) of issue 18's goals."""
    out = []
    for endpoint, target in LDAP_TARGETS.items():
        users = (results["ours"].get(endpoint) or {}).get("direct") or []
        ldap = variant_runs(results, "ldap", endpoint, "direct")
        if users and ldap:
            r = ratios(ldap, users)
            proxy = ratios(variant_runs(results, "ldap", endpoint, "proxy"),
                           (results["ours"].get(endpoint) or {}).get("proxy") or [])
            out.append((f"{endpoint.replace('token_', '')} with LDAP ≥ {target} × with the users "
                        "file (one process, direct)", r is not None and r >= target,
                        f"{fmt(r, 2)} × ({fmt(col(ldap, 'rps'))} vs {fmt(col(users, 'rps'))} "
                        f"req/s); through Caddy {fmt(proxy, 2)} ×"))
    ours = variant_runs(results, "machine", "token_code", "proxy")
    theirs = (results.get("peer_jwt") or {}).get("token_code") or []
    if ours and theirs:
        r = ratios(ours, theirs)
        out.append(("the whole machine through the proxy, LDAP: code grants/s ≥ 1.0 × the peer "
                    "with JWT access tokens", r is not None and r >= 1.0,
                    f"{fmt(r, 2)} × ({fmt(col(ours, 'rps'))} vs {fmt(col(theirs, 'rps'))} req/s)"))
    prod = variant_runs(results, "ldap", "token_code", "direct")
    rsa = variant_runs(results, "ldap_rsa2048", "token_code", "direct")
    if prod and rsa:
        r = cpu_ratio(prod, rsa)
        out.append(("a code grant with the default keys costs no more CPU than with RSA-2048",
                    r is not None and r <= 1.0,
                    f"{fmt(r, 2)} × ({fmt(col(prod, 'cpu_us_per_req', 'service'))} vs "
                    f"{fmt(col(rsa, 'cpu_us_per_req', 'service'))} token CPU µs/req)"))
    p99 = [(col(variant_runs(results, "machine", e, "proxy"), "p99_ms"), e) for e in GRANTS
           if variant_runs(results, "machine", e, "proxy")]
    if p99:
        out.append((f"p99 at {results['method']['connections']} connections through the proxy "
                    f"≤ {MACHINE_P99_MS} ms for grants, LDAP (the whole machine)",
                    all(v is not None and v <= MACHINE_P99_MS for v, _ in p99),
                    "; ".join(f"{e.replace('token_', '')} {fmt(v, 1)} ms" for v, e in p99)))
    errors = sum(r["errors"] for v in (results.get("variants") or {}).values()
                 for runs in v.get("runs", {}).values() for rs in runs.values() for r in rs)
    if results.get("variants"):
        out.append(("zero errors in every variant run", errors == 0, f"{errors} errors"))
    return out


def where_users_run(results: dict) -> str:
    goals = user_targets(results)
    rows = [[name, "**met**" if met else "**missed**", detail] for name, met, detail in goals]
    return "\n".join([
        "### Targets", "", table(["target (issue 18)", "state", "measured"], rows)
        if rows else "_No variant was measured in this run._", "",
        "### The directory: LDAP against the users file", "", directory_table(results), "",
        "### The keys: a code grant with LDAP", "", keys_table(results), "",
        "### The whole machine, through the proxy, next to the peer", "",
        machine_table(results)])


PARTS = {
    "token_code": [
        ("RSA signatures (access token + ID token, python-jose + cryptography)", "sign (shared/jose.py"),
        ("Redis round trips (`Store._call`: redis-py asyncio, timeout)", "Store._call (shared/store.py"),
        ("reading and parsing the HTTP request (Tornado)", "HTTP1Connection._read_message (tornado"),
        ("access log line + Prometheus metrics", "Application.log_request (shared/service.py"),
        ("client authentication", "authenticate (services/token/clientauth.py"),
        ("user lookup (users file)", "UsersFileBackend.lookup"),
        ("user lookup (directory: cache, then LDAP)", "CachedBackend.current"),
    ],
    "userinfo": [
        ("signature check (`Keyring.verify`: python-jose + cryptography)", "Keyring.verify (shared/keys.py"),
        ("revocation check (one Redis MGET via `Store._call`)", "Store._call (shared/store.py"),
        ("reading and parsing the HTTP request (Tornado)", "HTTP1Connection._read_message (tornado"),
        ("access log line + Prometheus metrics", "Application.log_request (shared/service.py"),
        ("user lookup (users file)", "UsersFileBackend.lookup"),
        ("user lookup (directory: cache, then LDAP)", "CachedBackend.current"),
    ],
    "authorize": [
        ("logon cookie (unseal, sign-out check in Redis)", "Logon.open_live (shared/session.py"),
        ("the user now (`current_logon`: backend lookup)", "current_logon (shared/session.py"),
        ("code record into Redis (`Store._call`)", "Store._call (shared/store.py"),
        ("reading and parsing the HTTP request (Tornado)", "HTTP1Connection._read_message (tornado"),
        ("access log line + Prometheus metrics", "Application.log_request (shared/service.py"),
    ],
}
PROFILES = (("token_code", "token endpoint, authorization_code grant", None),
            ("userinfo", "userinfo", None),
            ("authorize", "authorize, a code for a signed-in user", None),
            ("ldap_token_code", "token endpoint, authorization_code grant, LDAP", "ldap"),
            ("ldap_userinfo", "userinfo, LDAP", "ldap"),
            ("ldap_authorize", "authorize, LDAP", "ldap"))


def breakdown(p: dict, name: str, cpu_us: Optional[float]) -> str:
    """Where the CPU of one request goes: profile shares of the named parts × CPU/request."""
    inclusive = p.get("inclusive_all") or p.get("inclusive") or []
    rows, total = [], 0.0
    for label, prefix in PARTS.get(name.replace("ldap_", ""), []):
        pct = max([x for f, x in inclusive if f.startswith(prefix)] or [0.0])
        if not pct and label.startswith("user lookup ("):
            continue  # the other backend's lookup
        total += pct
        rows.append([label, fmt(pct, 1), fmt(cpu_us * pct / 100 if cpu_us else None)])
    rows.append(["everything else (handler code, response writing, event loop)",
                 fmt(100 - total, 1), fmt(cpu_us * (100 - total) / 100 if cpu_us else None)])
    return table(["part of one request", "% of samples", "≈ CPU µs per request"], rows)


def profile_section(results: dict) -> str:
    prof = results.get("profile") or {}
    parts = []
    for name, title, variant in PROFILES:
        p = prof.get(name)
        if not p:
            continue
        if "error" in p:
            parts.append(f"**{title}**: {p['error']}")
            continue
        endpoint = name.replace("ldap_", "")
        runs = variant_runs(results, variant, endpoint, "direct") if variant else \
            (results.get("ours", {}).get(endpoint) or {}).get("direct") or []
        cpu_us = col(runs, "cpu_us_per_req", "service")
        parts.append(f"**{title}** ({p['samples']} samples of the service process under "
                     f"`wrk -c32`; % of samples)\n")
        parts.append(breakdown(p, name, cpu_us))
        parts.append("")
        rows = [[f"`{f}`", fmt(pct, 1)] for f, pct in p["inclusive"][:22]]
        parts.append(table(["function (inclusive)", "% of samples"], rows))
        parts.append("")
        rows = [[f"`{f}`", fmt(pct, 1)] for f, pct in p["self"][:12]]
        parts.append(table(["function (self time)", "% of samples"], rows))
        parts.append("")
    return "\n".join(parts) if parts else "_No profile in this run (`--no-profile`)._"


def changes_table(results: dict, before: Optional[dict]) -> str:
    if not before:
        return "_No `bench/results-before.json`: nothing to compare with._"

    def normalised(res: dict, endpoint: str, via: str) -> Optional[float]:
        """Service CPU per request ÷ the bare POST + Redis handler's, same repetition: the
        machine's speed (which drifts on this shared VM) cancels out."""
        runs = (res.get("ours", {}).get(endpoint) or {}).get(via) or []
        base = (res.get("floors", {}).get("bare") or {}).get("base") or []
        return med(r["cpu_us_per_req"]["service"] / b["cpu_us_per_req"]["service"]
                   for r, b in zip(runs, base)
                   if r["cpu_us_per_req"].get("service") and b["cpu_us_per_req"].get("service"))

    rows = []
    for endpoint, name in ENDPOINT_NAMES.items():
        for via in ("direct", "proxy"):
            a = (before.get("ours", {}).get(endpoint) or {}).get(via) or []
            b = (results.get("ours", {}).get(endpoint) or {}).get(via) or []
            if not a or not b:
                continue
            ca, cb = col(a, "cpu_us_per_req", "service"), col(b, "cpu_us_per_req", "service")
            na, nb = normalised(before, endpoint, via), normalised(results, endpoint, via)
            rows.append([name if via == "direct" else "″ through Caddy", fmt(col(a, "rps")),
                         fmt(col(b, "rps")), fmt(ca), fmt(cb), fmt(na, 2), fmt(nb, 2),
                         fmt((nb / na - 1) * 100, 1, " %") if na and nb else "–",
                         fmt(col(a, "p99_ms"), 1), fmt(col(b, "p99_ms"), 1)])
    return table(["endpoint", "req/s before", "req/s after", "service CPU µs/req before",
                  "after", "÷ bare base, before", "÷ bare base, after", "change",
                  "p99 ms before", "after"], rows)


def ab_table(ab: Optional[dict]) -> str:
    """bench/results-ab.json: the revision before the changes against the working tree,
    interleaved in one batch (bench/ab.py)."""
    if not ab:
        return "_No `bench/results-ab.json` (bench/ab.py)._"
    rows = []
    for endpoint, name in ENDPOINT_NAMES.items():
        a, b = ab["before"].get(endpoint) or [], ab["after"].get(endpoint) or []
        if not a or not b:
            continue
        cpu = med(y["cpu_us_per_req"]["service"] / x["cpu_us_per_req"]["service"]
                  for x, y in zip(a, b))
        redis = med(y["cpu_us_per_req"]["redis"] / x["cpu_us_per_req"]["redis"]
                    for x, y in zip(a, b) if x["cpu_us_per_req"]["redis"])
        rows.append([name, fmt(col(a, "rps")), fmt(col(b, "rps")), fmt(ratios(b, a), 3),
                     fmt(col(a, "cpu_us_per_req", "service")),
                     fmt(col(b, "cpu_us_per_req", "service")), fmt(cpu, 3), fmt(redis, 3),
                     fmt(col(a, "p99_ms"), 1), fmt(col(b, "p99_ms"), 1),
                     sum(r["errors"] for r in a + b)])
    head = (f"Interleaved A/B, {ab['runs']} repetitions of {ab['duration_s']:.0f} s per side, "
            f"direct, one token process, `{ab['rev']}` (before) against the working tree "
            f"(after), {ab['date']}:\n\n")
    return head + table(["endpoint", "req/s before", "req/s after", "req/s ratio (in-run)",
                         "service CPU µs/req before", "after", "CPU ratio (in-run)",
                         "Redis CPU ratio", "p99 ms before", "after", "errors"], rows)


# -- plots ---------------------------------------------------------------------------------

def plots(results: dict, fl: dict, docs: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e for e in ENDPOINT_NAMES if results["ours"].get(e)]
    labels = {"token_code": "token\ncode grant", "token_refresh": "token\nrefresh grant",
              "userinfo": "userinfo", "authorize": "authorize\n(signed in)",
              "discovery": "discovery", "jwks": "JWKS"}
    series = [
        ("ours, direct (1 process)", [col(results["ours"][e].get("direct") or [], "rps") for e in names]),
        ("ours, through Caddy", [col(results["ours"][e].get("proxy") or [], "rps") for e in names]),
        ("floor (cost model / bare handler)", [med(f["rps"] for f in fl[e]) for e in names]),
    ]
    if results.get("variants", {}).get("ldap"):
        series.insert(1, ("ours with LDAP, direct (1 process)",
                          [col(variant_runs(results, "ldap", e, "direct"), "rps") for e in names]))
    if results.get("peer"):
        series.append(("peer: oidc-provider (1 Node process)",
                       [col(results["peer"].get(e) or [], "rps") for e in names]))
    if results.get("peer_jwt"):
        series.append(("peer with JWT access tokens",
                       [col(results["peer_jwt"].get(e) or [], "rps") for e in names]))
    fig, ax = plt.subplots(figsize=(10, 5.2))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [v or 0 for v in values], width, label=label)
        for x, v in zip(xs, values):
            if v:
                ax.text(x, v * 1.03, f"{v:,.0f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([labels[e] for e in names])
    ax.set_ylabel("requests per second (median, log scale)")
    v = results["meta"]["versions"]
    ax.set_title(f"Throughput vs floor, wrk -t1 -c{results['method']['connections']}, "
                 f"{v.get('cores')} cores ({results['meta']['date']})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "benchmarks-throughput.png", dpi=110)
    plt.close(fig)

    sc = results.get("scaling") or {}
    if sc:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ns = sorted(sc, key=int)
        for via, style in (("direct", "o-"), ("proxy", "s-")):
            values = [col((sc[n].get(via) or []), "rps") for n in ns]
            ax.plot([int(n) for n in ns], values, style,
                    label=f"{'direct (SO_REUSEPORT)' if via == 'direct' else 'through Caddy (TLS)'}")
            one = values[0]
            if one:
                ax.plot([int(n) for n in ns], [one * min(int(n), 2) for n in ns], ":", alpha=0.5,
                        label=f"{via}: 1 process × min(N, 2 cores)")
        ax.set_xticks([int(n) for n in ns])
        ax.set_xlabel("token processes")
        ax.set_ylabel("code grants per second (median)")
        ax.set_title("Token endpoint scaling, authorization_code grant", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "benchmarks-scaling.png", dpi=110)
        plt.close(fig)


# -- the document ----------------------------------------------------------------------------

def machine_section(results: dict) -> str:
    v = results["meta"]["versions"]
    p = v.get("packages", {})
    rows = [["date", results["meta"]["date"]],
            ["machine", f"{v.get('cpu')}, {v.get('cores')} cores, {v.get('memory')}"],
            ["system", f"{v.get('os')}, Linux {v.get('kernel')}"],
            ["Python", f"{v.get('python')}: tornado {p.get('tornado')}, cryptography "
                       f"{p.get('cryptography')}, python-jose {p.get('python-jose')}, redis-py "
                       f"{p.get('redis')}, hiredis {p.get('hiredis')}"],
            ["tools", f"wrk {v.get('wrk')}; Caddy {v.get('caddy')}; {v.get('redis')}; {v.get('openssl')}"],
            ["peer", f"oidc-provider {v.get('oidc_provider')} on Node {v.get('node')}"],
            ["run", f"{results['method']['runs']} interleaved repetitions of "
                    f"{results['method']['duration_s']:.0f} s per scenario, "
                    f"wrk -t1 -c{results['method']['connections']}; whole run "
                    f"{results['meta'].get('elapsed_s', 0) / 60:.0f} min"
                    + (" (**--quick: a check, not a measurement**)" if results['method'].get('quick') else "")]]
    return table(["", ""], rows)


def render(results: dict, before: Optional[dict] = None) -> str:
    fl = floors(results)
    targets_md, _ = targets(results, fl)
    sig = results.get("signatures") or {}
    values = {
        "machine": machine_section(results),
        "results_table": endpoint_table(results, fl),
        "flow_table": flow_table(results),
        "floors": floors_section(results, fl),
        "peer_table": peer_table(results),
        "scaling_table": scaling_table(results),
        "targets": targets_md,
        "where_users_run": where_users_run(results),
        "profile": profile_section(results),
        "changes_table": changes_table(results, before),
        "ab_table": ab_table(json.loads((HERE / "results-ab.json").read_text())
                             if (HERE / "results-ab.json").exists() else None),
        "changes_prose": (HERE / "changes.md").read_text().strip()
        if (HERE / "changes.md").exists() else "",
        "memory_table": memory_table(results),
        "signatures": ", ".join(f"`{k}` ({v})" for k, v in sig.items()) or "–",
        "k": str(len(sig)),
        "runs": str(results["method"]["runs"]),
        "connections": str(results["method"]["connections"]),
        "people": str(results["method"].get("people") or "not recorded"),
        "flow_concurrency": str(results["method"].get("flow_concurrency", "")),
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def render_files(results_path: Path, docs: Path) -> None:
    results = json.loads(Path(results_path).read_text())
    before_path = HERE / "results-before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.md").write_text(render(results, before))
    plots(results, floors(results), docs)
