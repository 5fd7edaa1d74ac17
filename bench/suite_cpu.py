"""Where the test suite's CPU goes, by kind of process: runs a command (default: the README's test command) while it
samples every process's CPU time from /proc once a second, and writes the CPU-seconds per kind (the pytest process,
DeepSalt CLI runs by verb, Ray workers, Ray's own daemons one by one, moto, rustac, the set-up) beside the machine's
busy CPU-seconds. A process that lives less than a second between two samples is missed: ``unattributed_s`` says
how much that left out.

    python bench/suite_cpu.py [--out bench/results/suite_cpu.json] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from common import stamp

TCK = os.sysconf("SC_CLK_TCK")
RAY_DAEMONS = ("gcs_server", "raylet", "dashboard/agent.py", "dashboard/dashboard.py", "ray-dashboard-", "log_monitor.py",
               "autoscaler/_private/monitor.py", "runtime_env/agent", "ray.util.client.server", "RuntimeEnvAgent",
               "DashboardAgent", "multiprocessing.forkserver")


def machine_busy() -> float:
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return (sum(v) - v[3] - v[4]) / TCK


def kind(cmd: str) -> str:
    """The kind of process, from its command line (the last one seen: Ray's workers exec and rename themselves)."""
    if m := re.search(r"(?:-m deepsalt\.cli|/bin/deepsalt) (\w+)", cmd):
        return f"deepsalt {m.group(1)}"
    if "-m pytest" in cmd:
        return "pytest"
    if "tests/node_loss.py" in cmd:
        return "tests/node_loss.py (a cluster's driver)"
    if d := next((d for d in RAY_DAEMONS if d in cmd), None):
        return f"ray daemon: {d.strip('-')}"
    if cmd.startswith("ray::"):  # a worker's role: its task's or actor's name (IDLE: between leases, or never leased)
        return "ray worker: " + re.split(r"[ (.]", cmd[5:], maxsplit=1)[0]
    if "default_worker.py" in cmd or "setup_worker.py" in cmd:
        return "ray worker: starting"
    for k in ("moto_server", "rustac", "/uv ", "pip", "ray start", "ray job"):
        if k in cmd:
            return k.strip("/ ")
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "suite_cpu.json"))
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("command", nargs="*", default=["bash", "scripts/test.sh", "-p", "no:cacheprovider"])
    a = ap.parse_args()
    me = os.getpid()
    first: dict[str, float] = {}
    last: dict[str, tuple[float, str]] = {}

    def sample(initial=False):
        for p in os.listdir("/proc"):
            if not p.isdigit() or int(p) == me:
                continue
            try:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                cpu = (int(f[11]) + int(f[12])) / TCK
                cmd = open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip()
            except OSError:
                continue
            if not cmd:
                continue  # a kernel thread
            if p not in first:
                first[p] = cpu if initial else 0.0  # what a process had used before the run is not the run's
            last[p] = (cpu, cmd)

    sample(initial=True)
    b0, t0 = machine_busy(), time.time()
    proc = subprocess.Popen(a.command, cwd=Path(__file__).resolve().parents[1])
    while proc.poll() is None:
        sample()
        time.sleep(a.interval)
    wall, busy = time.time() - t0, machine_busy() - b0
    by = Counter()
    n = Counter()
    for p, (cpu, cmd) in last.items():
        d = cpu - first[p]
        if d > 0:
            by[kind(cmd)] += d
            n[kind(cmd)] += 1
    attributed = sum(by.values())
    out = {**stamp(), "returncode": proc.returncode,
           "wall_s": round(wall, 1), "machine_busy_cpu_s": round(busy, 1), "cores_busy_mean": round(busy / wall, 2),
           "unattributed_s": round(busy - attributed, 1),
           "by_kind": {k: {"cpu_s": round(v, 1), "processes": n[k]} for k, v in by.most_common()}}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
