"""Node loss on a multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a head that runs the driver
and no work (0 CPUs), and 1-CPU worker nodes, as a cluster of preemptible workers would be. Run as a script by
tests/test_node_loss.py and by bench/chaos.py (a process joins one Ray cluster only); prints one JSON line.

    python tests/node_loss.py map   WORLD BUNDLE OUT VICTIM   # VICTIM: actor | read
    python tests/node_loss.py train WORLD OUT

``map``: maps WORLD into OUT while a thread removes, ungracefully, the victim's node and adds a fresh one; a reader
polls the cube throughout and records what it saw. ``actor``: one inference actor (``--inference actors``), its node
removed as soon as it is up; ``read``: the student in the read tasks (``--inference tasks``, the CPU default), the
node of a running read task removed.
``train``: one seed of a small training, twice: undisturbed, then with the worker's node removed mid-stage (after
the teacher's first checkpoint) and a fresh node added; reports whether every weight is equal.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


STORE = 512 * 2**20
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": STORE}


def start_cluster(workers: int = 2):
    from ray.cluster_utils import Cluster

    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)  # loopback only, as scripts/local_env.sh sets them (bench/chaos.py may run without it)
    # each node's object store sized for this work (512 MB is ample): with Ray's default, 30 % of RAM per node, three
    # nodes beside the test suite's own Ray mapped the tiny world in 49 s instead of 15 s
    # the dashboard (its state API finds the actors) on a free port, not Ray's fixed 8265: two of these clusters may
    # run at once, one per pytest-xdist worker; likewise its agent, not on the fixed 52365
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    from deepsalt.raycluster import state_api_env

    # the nodes (this process's children) and their workers ask this dashboard's state API, not the one that /tmp/ray's
    # record names; and that record, which Cluster writes into Ray's temp folder and nothing removes, is written into
    # a folder of this process's own, not /tmp/ray, where it would outlive the cluster (deepsalt/raycluster.py)
    os.environ.update(state_api_env(f"http://127.0.0.1:{dashboard_port}"))
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nl", dir="/tmp")  # Ray's socket paths must stay short
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True, "object_store_memory": STORE,
                                                            "dashboard_host": "127.0.0.1", "node_ip_address": "127.0.0.1",
                                                            "dashboard_port": dashboard_port, "dashboard_agent_listen_port": None})
    nodes = [cluster.add_node(**NODE) for _ in range(workers)]
    os.environ["RAY_ADDRESS"] = cluster.address
    from deepsalt.raycluster import init_ray

    init_ray()
    cluster.wait_for_nodes()
    return cluster, nodes


def stop_cluster(cluster) -> None:
    """Kill every node's processes at once: Cluster.shutdown() stops them gracefully, one node after another, which
    took 5.8 s of a 47 s test run; nothing of this cluster is kept."""
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node, allow_graceful=False)
    if cluster.head_node is not None:
        cluster.remove_node(cluster.head_node, allow_graceful=False)
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


def replace(cluster, nodes: list, node, events: list, **what) -> None:
    """Remove ``node`` as a preemption would (no grace), record it, and add a fresh node in its place."""
    cluster.remove_node(node, allow_graceful=False)
    nodes.remove(node)
    events.append({"removed": node.node_id, **what})
    nodes.append(cluster.add_node(**NODE))


def actor_node() -> str | None:
    """The node id of the live inference actor, if any."""
    from ray.util.state import list_actors

    for a in list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
        if "Predictor" in (a.class_name or "") and a.node_id:
            return a.node_id
    return None


def read_task_node() -> str | None:
    """The node id of a running read task (``prepare_tiles``, with the student fused into it), if any."""
    from ray.util.state import list_tasks

    for t in list_tasks(filters=[("state", "=", "RUNNING")], raise_on_missing_output=False):
        if "prepare_tiles" in (t.name or "") and t.node_id:
            return t.node_id
    return None


def run_map(world: str, bundle: str, out: str, victim: str) -> dict:
    """The mapping runs in a thread; this (main) thread removes and adds nodes (Ray adds nodes from the main thread
    only); another thread reads the cube throughout."""
    from conftest import map_cfg, tile_arrays
    from deepsalt.mapping.pipeline import map_region

    cluster, nodes = start_cluster(2)
    events, seen, box, done = [], [], {}, threading.Event()

    def mapper():
        try:
            how = dict(predict_actors=1) if victim == "actor" else dict(inference="tasks")
            box["summary"] = map_region(map_cfg(Path(world), bundle, out, **how), log=lambda *_: None)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            box["error"] = e
        done.set()

    def reader():
        while not done.is_set():
            try:
                seen.append(tile_arrays(out))
            except Exception:  # noqa: BLE001 - no cube yet
                pass
            time.sleep(1.0)

    t0 = time.time()
    threads = [threading.Thread(target=mapper), threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    # "actor": one inference actor (1 CPU) fills one of the two 1-CPU worker nodes, the read tasks run on the other, and
    # the actor's node goes as soon as the actor is up; "read": the node of the first read task seen running goes.
    while not done.is_set() and not events:
        holder = actor_node() if victim == "actor" else read_task_node()
        target = next((n for n in nodes if n.node_id == holder), None) if holder else None
        if target is not None:
            replace(cluster, nodes, target, events, victim=victim, after_s=round(time.time() - t0, 2))
        time.sleep(0.1)
    for t in threads:
        t.join()
    if "error" in box:
        raise box["error"]
    final = tile_arrays(out)
    import numpy as np

    def same(a, b):
        return sorted(a) == sorted(b) and all(np.array_equal(a[k][v], b[k][v], equal_nan=v != "scene") for k in a for v in a[k])

    partial = sum(1 for s in seen if s and not same(s, final))
    return cluster, {"summary": box["summary"], "events": events, "polls": len(seen), "polls_empty": sum(1 for s in seen if not s),
                     "polls_partial": partial, "seconds": round(time.time() - t0, 1)}


def run_train(world: str, out: str) -> dict:
    import torch

    from deepsalt.config import TrainConfig
    from deepsalt.train.data import load_training_data
    from deepsalt.train.run import _latest_checkpoint, fit_seed
    from deepsalt.train.stages import load_state

    cluster, nodes = start_cluster(1)
    # the node is removed mid-teacher (8 epochs, a checkpoint every 2); the stages around it as short as still train
    cfg = TrainConfig.for_preset("tiny", ae={"hidden": (64,), "epochs": 2}, sau={"epochs": 2}, teacher={"epochs": 8, "ff": 32},
                                 student={"epochs": 4, "ff": 32}, variants=("deepsalt",), kd={"transfer": False}, adapt_pixels=0,
                                 checkpoint_every=2, seeds=(0,), max_failures=6)
    data = load_training_data(Path(world), cfg, 0)
    t0 = time.time()
    clean = fit_seed(data, cfg, 0, f"{out}/clean")
    t_clean = time.time() - t0
    events, box = [], {}

    def train():
        try:
            box["state"] = fit_seed(data, cfg, 0, f"{out}/chaos")
        except BaseException as e:  # noqa: BLE001 - raised by the main thread, whole
            box["error"] = e

    th = threading.Thread(target=train)
    t0 = time.time()
    th.start()
    while th.is_alive():  # mid-teacher: after its first checkpoint
        ck = _latest_checkpoint(f"{out}/chaos/seed0")
        if ck is not None:
            progress = load_state(ck)["progress"]
            if progress["stage"] == 2 and progress["epoch"] > 0:
                replace(cluster, nodes, nodes[0], events, removed_at=progress, after_s=round(time.time() - t0, 2))
                break
        time.sleep(0.1)
    th.join()
    if "error" in box:
        raise box["error"]
    chaos = box["state"]
    equal = all(torch.equal(clean["models"][m][k], chaos["models"][m][k]) for m in clean["models"] for k in clean["models"][m])
    history = [(h["stage"], h["epoch"]) for h in chaos["history"]]
    return cluster, {"events": events, "equal": equal, "clean_seconds": round(t_clean, 1), "chaos_seconds": round(time.time() - t0, 1),
                     "history_ok": history == [(h["stage"], h["epoch"]) for h in clean["history"]]}


if __name__ == "__main__":
    import ray

    mode, *args = sys.argv[1:]
    cluster, result = run_map(*args) if mode == "map" else run_train(*args)
    print("RESULT " + json.dumps(result, default=str), flush=True)
    ray.shutdown()
    stop_cluster(cluster)
