"""What one Ray Train fit costs before any training: Ray's stock TorchTrainer against DeepSalt's (the same, less the
Ray Data actor Ray Train starts for a trainer's ``datasets`` when it has none and the placement-group cleaner it starts
with every fit; deepsalt/train/run.py ``_trainer_class``).

    bash scripts/services.sh .venv/bin/python bench/ray_train_fit.py [--rounds 3] [--out bench/results/ray_train_fit.json]

Under scripts/services.sh (a Ray head as the test suite has it; nothing else should run). Each round fits a trivial
loop (one worker, one report) once with each trainer, in turn, in this one driver; records each fit's wall seconds
and the CPU-seconds the whole machine was busy meanwhile (/proc/stat: the controller, the worker group and every
other actor the fit starts), and the Ray actors each fit left behind in Ray's actor table by class. The first round
is reported but left out of the means (it pays one-off costs: this driver's first Ray Train imports, the cluster's
Train state)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import stamp  # bench/common.py


def _busy_s() -> float:
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _loop(config: dict) -> None:
    import ray.train
    import torch  # noqa: F401 - as DeepSalt's loop does

    ray.train.report({"x": 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_train_fit.json")
    a = ap.parse_args()
    import ray
    import ray.train
    from ray._private.state import actors
    from ray.train.torch import TorchTrainer

    from deepsalt.raycluster import init_ray
    from deepsalt.train.run import _trainer_class

    init_ray()
    trainers = {"ray_torchtrainer": TorchTrainer, "deepsalt_trainer": _trainer_class()}
    storage = tempfile.mkdtemp()
    runs = []
    for r in range(a.rounds):
        for name, cls in trainers.items():
            before = set(actors())
            t, b = time.time(), _busy_s()
            cls(_loop, scaling_config=ray.train.ScalingConfig(num_workers=1),
                run_config=ray.train.RunConfig(name=f"{name}_{r}", storage_path=storage)).fit()
            run = {"round": r, "trainer": name, "wall_s": round(time.time() - t, 2), "busy_cpu_s": round(_busy_s() - b, 2)}
            new = [v["ActorClassName"] for k, v in actors().items() if k not in before]
            run["actors_started"] = {c: new.count(c) for c in sorted(set(new))}
            runs.append(run)
            print(json.dumps(run), flush=True)
    mean = {name: {k: round(statistics.mean(x[k] for x in runs if x["trainer"] == name and x["round"] > 0), 2)
                   for k in ("wall_s", "busy_cpu_s")} for name in trainers}
    out = {**stamp(), "ray": ray.__version__, "rounds": a.rounds, "runs": runs, "mean_after_first_round": mean}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(mean))


if __name__ == "__main__":
    main()
