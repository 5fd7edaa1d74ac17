"""Where the time of one small `deepsalt map` goes: the fixed costs a fresh process pays, which the test suite pays
in every test that starts the CLI, a kill or a node loss in a new process.

    bash scripts/services.sh .venv/bin/python bench/cli_overhead.py [--model RUN/bundle] [--runs 2] [--baseline DIR]

Under scripts/services.sh (a Ray head, the tiny world, as the suite has them). Without --model it first trains the
suite's quick model (tests/conftest.py FAST) on the tiny world. Writes ``bench/results/cli_overhead.json``:
- ``cli``: for each run of `deepsalt map` (3 MC passes, a new cube), the seconds from start at which the driver printed
  each stage's line ([1/4] search done, [3/4] Ray Data starts, the first "tiles written", [4/4] published) and
  at which the process had exited; the driver's own CPU-seconds, and the CPU-seconds the whole machine was busy
  meanwhile (the cluster's workers and actors included); with ``--baseline DIR`` (a checkout of an earlier commit),
  that commit's driver runs before each of these, on the same cluster (``cli_baseline``), and both get their means;
- ``fixed``: in fresh processes on the same cluster, the costs behind them: Python importing the CLI module, torch,
  the bundle module (torch with it), the bundle's torch-free record (what a map run's driver reads) and Ray Data; a
  driver connecting to the cluster; its first task, and a second; a trivial Ray Data map in a new driver, its first
  run and its second; a trivial one-actor Ray Data pool; a trivial Ray Train fit (one worker, one report), twice in
  that driver: its whole time and when its loop started (a Ray Train run pays a controller, a worker group and a
  torch process group before the first epoch, which every training in the suite, one seed at a time, pays again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, sys, time
t = time.time(); import ray; from deepsalt.raycluster import init_ray; init_ray(); out = {"ray_connect_s": time.time() - t}
@ray.remote
def f(): return os.getpid()
t = time.time(); ray.get(f.remote()); out["first_task_s"] = time.time() - t
t = time.time(); ray.get(f.remote()); out["second_task_s"] = time.time() - t
import ray.data
ray.data.DataContext.get_current().print_on_execution_start = False
class A:
    def __call__(self, r): return r
for k in ("first", "second"):
    t = time.time(); ray.data.from_items([{"a": 1}] * 4).map(lambda r: r).take_all(); out[f"ray_data_trivial_{k}_s"] = time.time() - t
t = time.time()
ray.data.from_items([{"a": 1}] * 4).map(A, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1)).take_all()
out["ray_data_one_actor_s"] = time.time() - t
import tempfile, ray.train
from ray.train.torch import TorchTrainer
def loop(c):
    open(c["stamp"], "w").write(str(time.time()))
    ray.train.report({"epoch": 0})
for k in ("first", "second"):
    d = tempfile.mkdtemp()
    t = time.time()
    TorchTrainer(loop, train_loop_config={"stamp": f"{d}/started"}, scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name=f"probe_{k}", storage_path=d)).fit()
    out[f"ray_train_trivial_fit_{k}_s"] = time.time() - t
    out[f"ray_train_trivial_loop_starts_{k}_s"] = float(open(f"{d}/started").read()) - t
print("RESULT " + json.dumps({k: round(v, 2) for k, v in out.items()}))
"""

MARKERS = {"search_done": "[1/4]", "ray_data_starts": "[3/4]", "first_tiles_written": "tiles written ", "published": "[4/4]"}


def _import_s(module: str) -> float:
    """Seconds for a fresh interpreter to import ``module``, less its bare start-up."""
    def run(code):
        t = time.time()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.time() - t
    return round(run(f"import {module}") - run("pass"), 2)


def _busy_s() -> float:
    """CPU-seconds this machine has been busy (all cores, /proc/stat): the cluster's processes count too."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def cli_run(world: Path, bundle: str, out: str, code: str | None = None) -> dict:
    """One `deepsalt map`; ``code``: a checkout whose ``deepsalt`` package runs instead of this one (the driver's code:
    the cluster's workers import this checkout's)."""
    env = {**os.environ, "PYTHONPATH": code} if code else None
    cmd = [sys.executable, "-m", "deepsalt.cli", "map", "--stac", str(world / "stac"), "--model", bundle, "--covariates",
           str(world / "covariates"), "--out", out, "--epoch", "2024", "--mc-samples", "3"]
    seen = {}
    t0, busy0 = time.time(), _busy_s()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=tempfile.gettempdir())  # not the repo: `python -m` puts the working folder first on sys.path
    for line in p.stdout:
        for k, m in MARKERS.items():
            if m in line and k not in seen:
                seen[k] = round(time.time() - t0, 2)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"deepsalt map exited {os.waitstatus_to_exitcode(status)}")
    return {**seen, "exited": round(time.time() - t0, 2), "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "machine_busy_s": round(_busy_s() - busy0, 2)}


def _mean(runs: list[dict]) -> dict:
    return {k: round(sum(r[k] for r in runs) / len(runs), 2) for k in runs[0]} if runs else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="bundle to map with (default: train the suite's quick model on the tiny world)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--baseline", help="a checkout of an earlier commit (git worktree add DIR REF): its `deepsalt map` "
                    "runs alternate with this one's, and both are reported (cli_baseline)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cli_overhead.json"))
    a = ap.parse_args()
    if not os.environ.get("DEEPSALT_TEST_WORLD") or not os.environ.get("RAY_ADDRESS"):
        raise SystemExit("run under scripts/services.sh (it builds the tiny world and starts a Ray head)")
    world = Path(os.environ["DEEPSALT_TEST_WORLD"])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = a.model
        if bundle is None:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import FAST
            from deepsalt.config import TrainConfig
            from deepsalt.train.run import train

            train(world, Path(tmp) / "run", TrainConfig.for_preset("tiny", **FAST), log=lambda *_: None)
            bundle = str(Path(tmp) / "run" / "bundle")
        runs, base = [], []
        for k in range(a.runs):  # alternating, so that both see the same machine
            if a.baseline:
                base.append(cli_run(world, bundle, f"{tmp}/b{k}.zarr", code=str(Path(a.baseline).resolve())))
            runs.append(cli_run(world, bundle, f"{tmp}/c{k}.zarr"))
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"the probe failed:\n{r.stderr[-3000:]}")
        fixed = json.loads(r.stdout.split("RESULT ", 1)[1].splitlines()[0])
    fixed.update({f"import_{m.replace('.', '_')}_s": _import_s(m)
                  for m in ("deepsalt.cli", "torch", "deepsalt.models.bundle", "deepsalt.models.bundle_meta", "ray.data")})
    res = {**stamp(), "world": "tiny, seed 7 (scripts/services.sh)", "model": "given" if a.model else "tests/conftest.py FAST",
           "cli": runs, "cli_mean": _mean(runs), "fixed": fixed}
    if a.baseline:
        head = subprocess.run(["git", "-C", a.baseline, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        res.update(baseline=head, cli_baseline=base, cli_baseline_mean=_mean(base))
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
