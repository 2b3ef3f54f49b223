"""CPU and memory accounting from /proc (the method of docs/benchmarks.md, "Method").

A `Snapshot` holds, for a set of named processes, utime+stime (their own and their reaped
children's, from /proc/<pid>/stat) and the machine's busy time (/proc/stat). The delta of
two snapshots says how much CPU each process used during a run; what the machine used
beyond our processes and the load generator is reported as "foreign" (other work sharing
the 2 cores), so a noisy run can be recognised as such.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Mapping

TICK = float(os.sysconf("SC_CLK_TCK"))


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process (all threads, plus children it has waited for)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = data.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    return sum(int(x) for x in fields[11:15]) / TICK


def proc_memory(pid: int) -> dict:
    """Peak and current resident set size in KiB (VmHWM, VmRSS)."""
    out = {"peak_kb": 0, "rss_kb": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["peak_kb"] = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    out["rss_kb"] = int(line.split()[1])
    except OSError:
        pass
    return out


def machine_busy() -> tuple:
    """(busy, steal) CPU seconds of the whole machine (all cores) since boot; steal is
    time the hypervisor gave the virtual CPUs to someone else."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(x) for x in parts[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4] - values[7]) / TICK, values[7] / TICK


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the load generator)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Snapshot:
    procs: dict = field(default_factory=dict)
    machine: float = 0.0
    steal: float = 0.0
    children: float = 0.0
    own: float = 0.0
    wall: float = 0.0

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> "Snapshot":
        busy, steal = machine_busy()
        return cls(procs={name: proc_cpu(pid) for name, pid in pids.items()},
                   machine=busy, steal=steal, children=children_cpu(), own=self_cpu(),
                   wall=time.monotonic())


def delta(before: Snapshot, after: Snapshot) -> dict:
    """CPU seconds per process during the run, the load generator's ("load": wrk, or this
    process when it drives the load itself), and "foreign": the rest of the machine."""
    procs = {name: round(after.procs.get(name, 0.0) - before.procs.get(name, 0.0), 3)
             for name in before.procs}
    load = (after.children - before.children) + (after.own - before.own)
    machine = after.machine - before.machine
    foreign = machine - sum(procs.values()) - load
    return {"procs": procs, "load": round(load, 3), "machine": round(machine, 3),
            "foreign": round(max(0.0, foreign), 3), "steal": round(after.steal - before.steal, 3),
            "wall": round(after.wall - before.wall, 3)}


def memory(pids: Mapping[str, int]) -> dict:
    return {name: proc_memory(pid) for name, pid in pids.items()}
