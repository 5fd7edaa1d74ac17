"""Shared fixtures. The services (moto S3, rustac STAC API, Ray) and the tiny world are started by
``scripts/services.sh``, which runs the suite; run tests through ``scripts/test.sh``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Under pytest-xdist, worker gwK uses the K-th Ray head that scripts/services.sh started (one per worker), and every
# subprocess a test starts inherits it: two tests' jobs never share a cluster's CPUs.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("DEEPSALT_TEST_RAY_ADDRESSES"):
    _k = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
    _addrs = os.environ["DEEPSALT_TEST_RAY_ADDRESSES"].split(",")
    os.environ["RAY_ADDRESS"] = _addrs[_k % len(_addrs)]


# Two pytest-xdist workers share the machine's two cores with their Ray clusters: torch in a test process must not
# start an OpenMP thread per core, or the threads spin against each other (tests that fit a model in the test
# process took 16.8 s instead of 1.2 s beside the other worker). Ray's workers set their own thread counts.
# NumPy's OpenBLAS is loaded before this file runs (by a plugin), with a thread per core, which these variables no
# longer reach: it is limited where it runs. Its idle threads spin too: beside a busy process, two builds of the world
# test's small world took 21.2 CPU-s with two OpenBLAS threads, 10.4 with one (bench/results/blas_threads.json).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_v, "1")  # and the subprocesses the tests start
    import threadpoolctl

    threadpoolctl.threadpool_limits(1)

#: seconds each test took in one process (setup, call and teardown; tests under 0.5 s left out), written by a run with
#: DEEPSALT_TEST_DURATIONS=tests/durations.json; pytest-xdist's workers take the suite heaviest first from it
DURATIONS = Path(__file__).resolve().parent / "durations.json"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (two workers, worksteal: each starts with a contiguous half of the list and an idle one steals
    from the tail of the other's), order the tests so that each half holds about half of the expected time, heaviest
    first: the long tests start at once and what is left to balance at the end is short. The second half starts with
    tests that need no shared trained model, which the first half's first test builds meanwhile."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) != 2 or not DURATIONS.exists():
        return
    import json

    known = json.loads(DURATIONS.read_text())
    cost = {it.nodeid: known.get(it.nodeid, 0.3) for it in items}
    halves: list[list] = [[], []]
    for it in sorted(items, key=lambda it: -cost[it.nodeid]):  # longest first, each into the lighter half
        min(halves, key=lambda h: sum(cost[i.nodeid] for i in h)).append(it)
    need = len(items) // 2  # worksteal's first half: move the lightest tests until the counts fit
    big, small = (halves[0], halves[1]) if len(halves[0]) > need else (halves[1], halves[0])
    while len(halves[0]) != need:
        small.append(big.pop())
    shared_model = {"trained", "cube", "run", "two_epochs"}
    halves[1].sort(key=lambda it: (bool(shared_model & set(it.fixturenames)), -cost[it.nodeid]))
    items[:] = halves[0] + halves[1]


_TIMES: dict[str, float] = {}  # what this run's tests took, for DEEPSALT_TEST_DURATIONS


def pytest_runtest_logreport(report):
    if os.environ.get("DEEPSALT_TEST_DURATIONS") and not os.environ.get("PYTEST_XDIST_WORKER"):
        _TIMES[report.nodeid] = _TIMES.get(report.nodeid, 0.0) + report.duration


_CPU: dict[str, dict] = {}  # what each test cost the machine, for DEEPSALT_TEST_CPU


def _busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy (every process: Ray's workers and daemons too), from /proc/stat."""
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With DEEPSALT_TEST_CPU=path, in one process (DEEPSALT_TEST_WORKERS=1): each test's wall seconds, the machine's busy
    CPU-s meanwhile (what the test started, wherever it ran, and the services' idle cost), and the test process's own
    and its finished subprocesses' CPU-s, setup and teardown included."""
    if not os.environ.get("DEEPSALT_TEST_CPU") or os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import resource
    import time as _time

    def own():
        return [sum(getattr(resource.getrusage(w), f) for f in ("ru_utime", "ru_stime"))
                for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]

    b0, (s0, c0), t0 = _busy_cpu_s(), own(), _time.time()
    yield
    (s1, c1) = own()
    _CPU[item.nodeid] = {"wall": round(_time.time() - t0, 2), "busy": round(_busy_cpu_s() - b0, 2), "self": round(s1 - s0, 2),
                         "children": round(c1 - c0, 2)}


def pytest_sessionfinish(session):
    if os.environ.get("DEEPSALT_TEST_CPU") and _CPU:
        import json

        Path(os.environ["DEEPSALT_TEST_CPU"]).write_text(json.dumps(_CPU, indent=0) + "\n")
    out = os.environ.get("DEEPSALT_TEST_DURATIONS")
    if out and not os.environ.get("PYTEST_XDIST_WORKER") and _TIMES:
        import json

        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_TIMES.items()) if v >= 0.5}, indent=0) + "\n")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through scripts/test.sh (it starts the services)", pytrace=False)
    return value


@pytest.fixture(scope="session")
def world() -> Path:
    """The tiny world (seed 7) that scripts/services.sh built and serves over STAC. Read-only."""
    return Path(_env("DEEPSALT_TEST_WORLD"))


@pytest.fixture()
def world_copy(world, tmp_path) -> Path:
    """A private copy of the tiny world that a test may damage. Its catalogue is ``stac/items.json`` alone (absolute
    hrefs into the copy): tests edit the items there, and ``stac/`` as a folder then reads it."""
    dst = tmp_path / "world"
    shutil.copytree(world, dst, ignore=shutil.ignore_patterns("deliveries"))
    items = dst / "stac" / "items.json"
    items.write_text(items.read_text().replace(str(world), str(dst)))
    (dst / "stac" / "collection.json").unlink()
    return dst


@pytest.fixture(scope="session")
def stac_url() -> str:
    return _env("DEEPSALT_TEST_STAC_URL")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return _env("AWS_ENDPOINT_URL")


@pytest.fixture()
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto server; yields its name."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"t-{abs(hash(request.node.nodeid)) % 10**10}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's daemons start their own sessions: a process-group kill would miss some)."""
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


@contextmanager
def ray_head(num_cpus: int, dashboard: bool = False):
    """A Ray head of its own on loopback, started as scripts/services.sh starts its heads (``ray start --block``, free
    ports, no log monitor) with ``num_cpus`` logical CPUs, and a dashboard (the jobs API) only if asked; yields its
    address, and with a dashboard (address, dashboard URL); kills every process it started."""
    import signal
    import tempfile
    import urllib.request

    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths must stay short
    port, dash = _free_port(), _free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           f"--include-dashboard={str(dashboard).lower()}", "--include-log-monitor=False", "--disable-usage-stats", f"--temp-dir={tmp}"]
    if dashboard:
        cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
    log = tmp / "head.log"
    from deepsalt.raycluster import state_api_env  # its workers find their own state API, or none (see there)

    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **state_api_env(f"http://127.0.0.1:{dash}" if dashboard else None)}
    head = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def up() -> bool:  # as services.sh waits: `ray start --block` says so once the head is up; the dashboard answers
        if "will now block forever" not in log.read_text():
            return False
        try:
            return not dashboard or bool(urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2))
        except OSError:
            return False

    try:
        for _ in range(240):
            if up():
                break
            assert head.poll() is None, log.read_text()[-3000:]
            time.sleep(0.25)
        else:
            pytest.fail(f"a Ray head did not start in 60 s: {log.read_text()[-3000:]}")
        yield (f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}") if dashboard else f"127.0.0.1:{port}"
    finally:
        for pid in [head.pid, *_descendants(head.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# Small enough for CI, large enough that every stage and every variant really trains.
# Feed-forward width 32 (the students' default 256) and two layers (default: teacher 3, students 4, each student layer
# distilled from its own teacher layer): every stage and the MC-dropout passes of each map run cost a fraction (a
# 38,783 px map's inference, one thread: 3.4 s with the defaults, 1.6 s with width 32; 2.2 s against 1.2 s for four
# layers against two, side by side on 2026-12-06), and nothing the tests check depends on them.
FAST = dict(ae={"hidden": (64,), "epochs": 3}, sau={"epochs": 3}, teacher={"epochs": 6, "ff": 32, "layers": 2},
            student={"epochs": 6, "ff": 32, "layers": 2}, kd={"layer_map": (0, 1), "layer_weights": (1.0, 1.0)},
            checkpoint_every=2, seeds=(0,))


TRAIN_LOG: list[str] = []  # what the shared training printed


def shared(tmp_path_factory, name: str, build):
    """``build(folder) -> value`` (picklable), run once for the whole session, also when pytest-xdist runs the suite in
    several processes: the first to ask builds into a folder beside every worker's own temp folder, under a file
    lock; the others wait for it and read what it wrote. Returns (folder, value)."""
    import pickle

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / f"shared-{name}", root / f"shared-{name}.pickle"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)  # a build that failed part-way
            folder.mkdir()
            done.write_bytes(pickle.dumps(build(folder)))
    return folder, pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def moved_world(world, tmp_path_factory) -> Path:
    """The tiny world moved to another folder: its items.json still names the old folder, which is gone (hrefs
    rewritten to a path that does not exist), as after `mv`. Everything must read the relocatable collection."""
    def build(d):
        shutil.copytree(world, d / "world", ignore=shutil.ignore_patterns("deliveries"))
        items = d / "world" / "stac" / "items.json"
        items.write_text(items.read_text().replace(str(world), "/vanished/world"))

    return shared(tmp_path_factory, "moved", build)[0] / "world"


@pytest.fixture(scope="session")
def trained(moved_world, tmp_path_factory):
    """(run folder, metrics) of one quick training on the tiny world (moved: training must not need the folder it
    was built in), shared by training and mapping tests; TRAIN_LOG holds what it printed."""
    from deepsalt.config import TrainConfig
    from deepsalt.train.run import train

    def build(out):
        log: list[str] = []
        return {"metrics": train(moved_world, out, TrainConfig.for_preset("tiny", **FAST), log=log.append), "log": log}

    out, value = shared(tmp_path_factory, "run", build)
    TRAIN_LOG[:] = value["log"]
    return out, value["metrics"]


@pytest.fixture(scope="session")
def catalogue(world, tmp_path_factory) -> tuple[Path, dict]:
    """(catalogue folder, summary) of `deepsalt ingest` over the tiny world's DLR-style deliveries (Ray tasks)."""
    from deepsalt.data.ingest import ingest

    return shared(tmp_path_factory, "catalogue", lambda out: ingest([str(world / "deliveries")], str(out), log=lambda *_: None))


def map_cfg(world, bundle, out, **kw):
    """The mapping config the tests share (kw may override any field)."""
    from deepsalt.config import MapConfig

    return MapConfig(**{"stac": str(world / "stac"), "covariates": str(world / "covariates"), "model": str(bundle),
                        "out": str(out), "epoch": "2024", "mc_samples": 3, **kw})


@pytest.fixture(scope="session")
def cube(world, trained, tmp_path_factory):
    """(cube path, summary) of one uninterrupted mapping of the tiny world: the reference other runs must equal."""
    from deepsalt.mapping.pipeline import map_region

    d, summary = shared(tmp_path_factory, "cube", lambda d: map_region(map_cfg(world, trained[0] / "bundle", d / "ece.zarr"),
                                                                       log=lambda *_: None))
    return d / "ece.zarr", summary


#: a line of Ray's own C++ logging on a driver's stderr ("[2026-11-30 22:05:36,431 E 13628 13628] core_worker.cc:2465: ...");
#: Ray Data's actor pools make it print one on every run (ray-project/ray#57733)
_RAY_CPP_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] \S+\.cc:\d+:")


def deepsalt_lines(stderr: str) -> list[str]:
    """The non-empty lines of a command's stderr that DeepSalt wrote (Ray's own C++ log lines left out)."""
    return [x for x in stderr.splitlines() if x.strip() and not _RAY_CPP_LOG.match(x)]


def tile_arrays(url, storage_options=None, version=None, epoch_index=0) -> dict:
    """{(ty, tx): {var: array}} for every recorded tile of one epoch (the cube's own variables: ``ece`` or another
    target's), with ``scene`` as scene ids."""
    import numpy as np
    import zarr

    from deepsalt.mapping.cube import cube_target, cube_vars, readonly_session, recorded_tiles

    session = readonly_session(str(url), storage_options, version)
    try:
        root = zarr.open_group(session.store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return {}  # a repository whose template was never committed
    if "time" not in root or root["time"].shape[0] <= epoch_index:
        return {}
    ids = np.array(list(root.attrs["scene_ids"]) + [""], dtype=object)
    chunk = root.attrs["grid"]["chunk"]
    out = {}
    for ty, tx in sorted(recorded_tiles(session, epoch_index)):
        ys, xs = slice(ty * chunk, (ty + 1) * chunk), slice(tx * chunk, (tx + 1) * chunk)
        d = {v: root[v][epoch_index, ..., ys, xs] for v in cube_vars(cube_target(root))}  # exceedance: (threshold, y, x)
        d["scene"] = ids[d["scene"]]  # -1 -> ""
        out[(ty, tx)] = d
    return out


def assert_tiles_equal(a: dict, b: dict) -> None:
    import numpy as np

    assert sorted(a) == sorted(b)
    for k in a:
        for v in a[k]:
            np.testing.assert_array_equal(a[k][v], b[k][v], err_msg=f"tile {k} variable {v}")


def delivery_zips(world) -> list:
    """The world's DLR-style product ZIPs, sorted (the first and third GeoTIFF, the second ENVI BSQ)."""
    return sorted((world / "deliveries").glob("*.ZIP"))


def zip_members(z) -> dict:
    """``{member name: bytes}`` of a ZIP."""
    import zipfile

    with zipfile.ZipFile(z) as f:
        return {i.filename: f.read(i) for i in f.infolist()}


def rezip(members: dict, dst):
    """A ZIP at ``dst`` holding ``members`` (DEFLATE), as a user re-zipping a product would write it."""
    import zipfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as f:
        for name, data in members.items():
            f.writestr(name, data)
    return dst
