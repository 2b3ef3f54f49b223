"""Interleaved A/B of the product changes: a git revision against the working tree.

    .venv/bin/python bench/ab.py [--rev HEAD] [--endpoints token_code,token_refresh,userinfo]
                                 [--runs 3] [--duration 6]

The revision is exported read-only (`git archive REV`) to a temporary directory that
shares this checkout's virtualenv; two groups (one token process each) run side by side
and every repetition measures both, alternating which goes first, directly against the
service with wrk. Writes bench/results-ab.json, which bench/render.py turns into the
"What changed" table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench import load, run, scenarios  # noqa: E402
from tests.support.group import Group  # noqa: E402


def group_class(root: Path):
    spec = importlib.util.spec_from_file_location("ab_group", root / "tests" / "support" / "group.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Group


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--endpoints", default="token_code,token_refresh,userinfo")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-ab.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="konnect-ab-"))
    old_root = work / "rev"
    old_root.mkdir()
    commit = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_root)], input=archive, check=True)
    (old_root / ".venv").symlink_to(ROOT / ".venv")
    before = group_class(old_root)(work / "before", token_procs=1)
    after = Group(work / "after", token_procs=1)
    results = {"rev": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "runs": args.runs, "duration_s": args.duration, "before": {}, "after": {}}
    try:
        before.start()
        after.start()
        sides = [("before", before, run.group_pids(before), scenarios.OurTarget(before, work / "wb")),
                 ("after", after, run.group_pids(after), scenarios.OurTarget(after, work / "wa"))]
        for rep in range(args.runs):
            for endpoint in args.endpoints.split(","):
                for side, group, pids, target in (sides if rep % 2 == 0 else sides[::-1]):
                    need = int(2000 * args.duration) + 500 if endpoint.startswith("token") else 0
                    feed = target.prepare(endpoint, need) if need else None
                    spec = target.spec(endpoint, "direct", feed=feed)
                    rec = run.measure(lambda: load.run_wrk(spec, duration=args.duration), pids,
                                      run.SERVICE_OF[endpoint])
                    results[side].setdefault(endpoint, []).append(rec)
                    run.log(f"{rep + 1} {endpoint} {side}: {rec['rps']:.0f} req/s, "
                            f"{rec['cpu_us_per_req']['service']} us/req, errors {rec['errors']}")
    finally:
        before.stop()
        after.stop()
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    run.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
