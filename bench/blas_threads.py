"""What NumPy's OpenBLAS threads cost beside a busy process, as in a pytest-xdist worker beside the other one: the
world test's small world (tests/test_world.py) built twice per run, in a fresh process with OpenBLAS limited to 1
thread and left at one per core, alternating, while a second process keeps one core busy. Its threads wait for work
by spinning, so on a machine with no idle core they take CPU from the process beside them.

    .venv/bin/python bench/blas_threads.py [--runs 2] [--out bench/results/blas_threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]

BUILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import threadpoolctl
from test_world import SMALL
from deepsalt.config import WorldConfig
from deepsalt.data.synthetic.world import build_world
cfg = WorldConfig.for_preset("tiny", 3).model_copy(update={**SMALL, "scene_px": 32, "n_lab": 60, "sites_per_scene": 10})
with threadpoolctl.threadpool_limits(int(sys.argv[1])):
    d = tempfile.mkdtemp()
    t, c = time.time(), time.process_time()
    for k in range(2):
        build_world(cfg, Path(d) / str(k), progress=False)
    print(json.dumps({"wall_s": round(time.time() - t, 1), "cpu_s": round(time.process_time() - c, 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "blas_threads.json"))
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    runs = {"1": [], str(os.cpu_count()): []}
    try:
        for _ in range(a.runs):
            for n in runs:
                r = subprocess.run([sys.executable, "-c", BUILD, n], capture_output=True, text=True, env=env, check=True)
                runs[n].append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"{n} thread(s): {runs[n][-1]}", flush=True)
    finally:
        hog.kill()
        hog.wait()
    res = {**stamp(), "what": "two builds of tests/test_world.py's small world in a fresh process, beside a process "
           "spinning on one core; wall and CPU seconds of the building process, by OpenBLAS thread count",
           "runs": runs, "mean_cpu_s": {n: round(sum(r["cpu_s"] for r in v) / len(v), 1) for n, v in runs.items()}}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["mean_cpu_s"]))


if __name__ == "__main__":
    main()
