import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "deepsalt.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"})  # help tables wide enough to show every choice


def _one_line_exit_2(r, needle):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-1500:])
    assert needle in lines[0], lines[0]


def test_help_explains_commands_and_lists_choices():
    r = _run("world", "--help")
    assert r.returncode == 0 and "--preset" in r.stdout and "benchmark" in r.stdout
    r = _run("map", "--help")
    assert r.returncode == 0 and "conus|europe|global" in r.stdout and "seen|unseen|western-us" in r.stdout and "--dry-run" in r.stdout
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("deepsalt 0.")


def test_bad_preset_and_existing_output_are_one_line_errors(tmp_path):
    _one_line_exit_2(_run("world", "--preset", "huge", "--out", str(tmp_path / "w")), "'huge' is not one of 'tiny', 'demo', 'benchmark'")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("keep me")
    r = _run("world", "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "output folder exists and is not empty" in r.stderr
    assert (tmp_path / "w" / "x").read_text() == "keep me"


MAP = ["map", "--stac", "s", "--model", "m", "--covariates", "c", "--out", "o", "--epoch", "2024"]


@pytest.mark.parametrize("args, needle", [
    (["train", "--world", "w", "--out", "o", "--seeds", "a,b"], "'a,b' is not a comma-separated list"),
    (["train", "--world", "w", "--out", "o", "--tokens", "foo"], "'foo' is not one of 'one', 'per_dim'"),
    (["train", "--world", "w", "--out", "o", "--workers", "0"], "'--workers'"),
    (MAP + ["--max-cloud", "150"], "'--max-cloud': Input should be less than or equal to 100"),
    (MAP + ["--chunk", "8"], "'--chunk': Input should be greater than or equal to 16"),
    (MAP + ["--grid", "mars"], "'mars' is not one of 'conus', 'europe'"),
    (MAP + ["--region", "moon"], "'moon' is not one of 'seen', 'unseen', 'western-us'"),
    (MAP + ["--mc-samples", "-1"], "'--mc-samples'"),
    (MAP + ["--bbox", "1,2,3"], "--bbox: '1,2,3' is not minlon,minlat,maxlon,maxlat"),
    (MAP[:-2] + ["--epoch", "24"], "--epoch: '24' is not YYYY"),
    (MAP[:3], "Missing option"),
    (MAP + ["--datetime", "yesterday"], "--datetime: 'yesterday' in 'yesterday' is not a date or time"),
    (MAP + ["--datetime", "2024-09-30/2024-05-01"], "ends before it starts"),
    (MAP + ["--quality-masks", "cloud,smoke"], "use names from cloud, cloud_shadow, haze, snow, cirrus, water"),
    (MAP + ["--inference", "tasks", "--gpu"], "error: --inference tasks runs the student in the CPU read tasks, without "
                                              "the actor pool that --gpu asks for: use --inference actors"),
    (["ingest", "/no/such/orders", "--out", "o"], "/no/such/orders: does not exist"),
    (["train", "--world", "w", "--out", "o", "--exclude-bands", "130,999"], "999 are not EnMAP band numbers"),
    (["plan-sampling", "--cube", "c", "--model", "m", "--n", "5", "--out", "p.gpkg", "--stac", "s", "--covariates", "c",
      "--method", "best"], "'best' is not one of 'coverage', 'random'"),
])
def test_every_bad_value_is_one_line_and_exit_2(args, needle):
    r = _run(*args)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-1500:])
    assert any(n in lines[0] for n in needle.split("|")), lines[0]


def test_map_dry_run_prints_the_plan_and_writes_nothing(world, trained, cube, tmp_path):
    base = ["map", "--stac", str(world / "stac"), "--model", str(trained[0] / "bundle"), "--covariates",
            str(world / "covariates"), "--epoch", "2024", "--mc-samples", "3", "--dry-run"]
    r = _run(*base, "--out", str(tmp_path / "new.zarr"))
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert plan["tiles_to_map"] == plan["tiles"] == cube[1]["tiles"] and plan["tile_pixels_to_map"] > 0
    assert not (tmp_path / "new.zarr").exists()
    r = _run(*base, "--out", str(cube[0]))  # the reference cube is up to date
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert plan["tiles_to_map"] == 0 and plan["tiles_up_to_date"] == plan["tiles"]


#: in the local instance, what Ray Train's placement-group cleaner (a detached actor) does every second: ask the state
#: API whether an actor is alive
_STATE_PROBE = """
from deepsalt.raycluster import init_ray; init_ray(); import ray
print('CPUS', ray.cluster_resources()['CPU'])
@ray.remote(num_cpus=0)
class Probe:
    def alive(self, actor_id):
        import time
        from ray.train.v2._internal.state.util import is_actor_alive
        t = time.time()
        try:
            return repr(is_actor_alive(actor_id, timeout=10))
        except Exception as e:
            return f"{type(e).__name__} after {time.time() - t:.1f} s: {e}"
p = Probe.options(lifetime="detached", name="probe").remote()
print('STATE', ray.get(p.alive.remote(p._actor_id.hex())))
"""


def test_a_stale_ray_cluster_record_starts_a_local_instance(tmp_path):
    """`ray start` left its address behind and its processes are gone: without RAY_ADDRESS, DeepSalt starts a local
    instance instead of retrying the dead one without end; and its workers, asked for the state API, are told there
    is none at once instead of following the record to the dead GCS (there Ray Train's placement-group cleaner waited
    40 s per call, and each training's shutdown 12 s for the cleaner)."""
    import tempfile

    from deepsalt.raycluster import NO_API_SERVER

    tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        r = subprocess.run([sys.executable, "-c", _STATE_PROBE], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp)})
        assert r.returncode == 0 and "CPUS" in r.stdout, r.stderr[-2000:]
        state = next(line for line in r.stdout.splitlines() if line.startswith("STATE"))
        assert state.startswith("STATE ServerUnavailable") and f"{NO_API_SERVER}/api/v0/actors" in state, state
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
