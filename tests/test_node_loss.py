"""A lost node costs time, not data: mapping and training on a multi-node Ray cluster on one machine, with a worker
node removed mid-run (tests/node_loss.py runs each case in its own process, as a process joins one cluster)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_tiles_equal, tile_arrays

HERE = Path(__file__).resolve().parent


def _run(*args, timeout=300) -> dict:
    # the GCS declares a node dead after 6 failed health checks 0.5 s apart, each with a 2 s timeout (Ray's defaults:
    # 5, 3 s apart, each with a 10 s timeout): the same recovery, sooner; not so soon that a live node, slowed by the
    # other tests beside it (two pytest-xdist workers on two cores), is declared dead too. bench/chaos.py keeps Ray's
    # defaults.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_task_events_report_interval_ms": "100", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "2000", "RAY_health_check_failure_threshold": "6"}
    r = subprocess.run([sys.executable, str(HERE / "node_loss.py"), *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    tb = r.stderr[r.stderr.rfind("Traceback"):] if "Traceback" in r.stderr else r.stderr[-3000:]
    why = "\n".join(x for x in tb.splitlines() if not x.lstrip().startswith("[20"))[-3000:]  # Ray's own log lines left out
    assert r.returncode == 0 and "RESULT " in r.stdout, why
    return json.loads(r.stdout.split("RESULT ", 1)[1].splitlines()[0])


@pytest.mark.parametrize("victim", ["actor", "read"])
def test_map_survives_losing_a_worker_node_and_the_cube_is_the_clean_one(victim, world, trained, cube, tmp_path):
    """(a) The node holding the inference actor (``--inference actors``), or the node of a running read task with the
    student in it (``--inference tasks``, the CPU default), is removed mid-run: the run completes, the cube equals an
    undisturbed run's array for array, and a reader polling the cube during the run saw only an empty cube or the
    finished epoch, never part of one."""
    out = tmp_path / "c.zarr"
    r = _run("map", world, trained[0] / "bundle", out, victim)
    assert r["events"] and r["events"][0]["victim"] == victim, r
    assert r["summary"]["published"] and r["summary"]["pixels_mapped"] == cube[1]["pixels_mapped"]
    assert_tiles_equal(tile_arrays(out), tile_arrays(cube[0]))
    assert r["polls"] > 3 and r["polls_partial"] == 0, r


def test_training_survives_losing_its_worker_node_and_gives_the_clean_model(world, tmp_path):
    """(b) The training worker's node is removed mid-teacher; Ray Train restarts the worker group on a fresh node from
    the last checkpoint, with nobody at the keyboard, and every weight equals an undisturbed run's."""
    r = _run("train", world, tmp_path)
    assert r["events"] and r["events"][0]["removed_at"]["stage"] == 2, r
    assert r["equal"] and r["history_ok"], r
