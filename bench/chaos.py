"""Mapping on preemptible nodes: the demo world on a 3-node local cluster, a random worker node removed every K
seconds and a fresh one added, against an undisturbed run on the same kind of cluster.

    .venv/bin/python bench/chaos.py --world out/world --model out/run/bundle [--every 8 20] [--out bench/results/chaos.json]

The cluster (``ray.cluster_utils.Cluster``, tests/node_loss.py): a head that runs the driver and no work, and two
1-CPU worker nodes. Both runs map the same region into fresh cubes with the same options. Reported: wall seconds of
each and the slowdown (one disturbed run per K), the nodes removed, the tasks Ray ran more than once (attempt number > 0 in Ray's task
events) and actor restarts, and whether the two cubes are equal array for array.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RAY_task_events_report_interval_ms", "100")


def _retries() -> dict:
    from ray.util.state import list_actors, list_tasks

    tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)  # the state API's maximum
    again = {t.task_id for t in tasks if (t.attempt_number or 0) > 0}
    names: dict = {}
    for t in tasks:
        if t.task_id in again and (t.attempt_number or 0) > 0:
            names[t.name] = names.get(t.name, 0) + 1
    restarts = sum(int(getattr(a, "num_restarts", 0) or 0) for a in list_actors(detail=True, raise_on_missing_output=False))
    return {"tasks_retried": len(again), "retries_by_task": names, "actor_restarts": restarts}


def _one(world: Path, model: str, out: str, every: float | None, seed: int) -> dict:
    import ray

    from conftest import map_cfg
    from deepsalt.mapping.pipeline import map_region
    from node_loss import replace, start_cluster, stop_cluster

    cluster, nodes = start_cluster(2)
    removed, box = [], {}
    rng = random.Random(seed)
    t0 = time.time()

    def mapper():
        try:
            box["summary"] = map_region(map_cfg(world, model, out, bbox=(-110.0, 37.5, -106.0, 39.5)), log=print)
        except BaseException as e:  # noqa: BLE001 - raised below
            box["error"] = e

    th = threading.Thread(target=mapper)
    th.start()
    while th.is_alive():  # nodes are removed and added from the main thread (Ray adds nodes from it only)
        th.join(every)
        if every and th.is_alive():
            replace(cluster, nodes, rng.choice(nodes), removed, after_s=round(time.time() - t0, 1))
    wall = time.time() - t0
    if "error" in box:
        raise box["error"]
    s = box["summary"]
    res = {"seconds": round(wall, 1), "pixels": s["pixels_mapped"], "tiles": s["tiles_mapped"], "removed": removed, **_retries()}
    ray.shutdown()
    stop_cluster(cluster)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--every", type=float, nargs="+", default=[8.0, 20.0], help="seconds between node removals (one run each)")
    ap.add_argument("--seed", type=int, default=0, help="which worker node goes, each time (seeded)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "chaos.json"))
    args = ap.parse_args()
    from conftest import assert_tiles_equal, tile_arrays

    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as tmp:
        clean = _one(args.world, args.model, f"{tmp}/clean.zarr", None, args.seed)
        ref = tile_arrays(f"{tmp}/clean.zarr")
        runs = []
        for every in args.every:
            out = f"{tmp}/chaos-{every:g}.zarr"
            run = _one(args.world, args.model, out, every, args.seed)
            try:
                assert_tiles_equal(tile_arrays(out), ref)
                run["array_equal"] = True
            except AssertionError:
                run["array_equal"] = False
            runs.append({"every_s": every, "slowdown": round(run["seconds"] / clean["seconds"], 2), **run})
    res = {**stamp(), "world": str(args.world), "model": args.model,
           "cluster": "ray.cluster_utils.Cluster: head (0 CPUs, runs the driver) + 2 worker nodes of 1 CPU",
           "clean": clean, "chaos": runs}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"clean_s": clean["seconds"], "chaos": [{k: r[k] for k in ("every_s", "seconds", "slowdown", "array_equal",
                                                                              "tasks_retried", "actor_restarts")}
                                                              | {"removed": len(r["removed"])} for r in runs]}))


if __name__ == "__main__":
    main()
