"""Shared fixtures. The services (moto S3, rustac STAC API, Ray) and the tiny world are started by
``scripts/services.sh``, which runs the suite; run tests through ``scripts/test.sh``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    """A private copy of the tiny world that a test may damage."""
    dst = tmp_path / "world"
    shutil.copytree(world, dst)
    items = dst / "stac" / "items.json"
    items.write_text(items.read_text().replace(str(world), str(dst)))
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


# Small enough for CI, large enough that every stage and every variant really trains.
FAST = dict(ae={"hidden": (64,), "epochs": 3}, sau={"epochs": 3}, teacher={"epochs": 6}, student={"epochs": 6}, checkpoint_every=2,
            seeds=(0,))


TRAIN_LOG: list[str] = []  # what the shared training printed


@pytest.fixture(scope="session")
def trained(world, tmp_path_factory):
    """(run folder, metrics) of one quick training on the tiny world, shared by training and mapping tests."""
    from deepsalt.config import TrainConfig
    from deepsalt.train.run import train

    out = tmp_path_factory.mktemp("run")
    return out, train(world, out, TrainConfig.for_preset("tiny", **FAST), log=TRAIN_LOG.append)


def map_cfg(world, bundle, out, **kw):
    """The mapping config the tests share (kw may override any field)."""
    from deepsalt.config import MapConfig

    return MapConfig(**{"stac": str(world / "stac"), "covariates": str(world / "covariates"), "model": str(bundle),
                        "out": str(out), "epoch": "2024", "mc_samples": 3, **kw})


@pytest.fixture(scope="session")
def cube(world, trained, tmp_path_factory):
    """(cube path, summary) of one uninterrupted mapping of the tiny world: the reference other runs must equal."""
    from deepsalt.mapping.pipeline import map_region

    out = tmp_path_factory.mktemp("cube") / "ece.zarr"
    summary = map_region(map_cfg(world, trained[0] / "bundle", out), log=lambda *_: None)
    return out, summary


def tile_arrays(url, storage_options=None, version=None, epoch_index=0) -> dict:
    """{(ty, tx): {var: array}} for every recorded tile of one epoch, with ``scene`` as scene ids."""
    import numpy as np
    import zarr

    from deepsalt.mapping.cube import VARS, readonly_session, recorded_tiles

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
        d = {v: root[v][epoch_index, ys, xs] for v in VARS}
        d["scene"] = ids[d["scene"]]  # -1 -> ""
        out[(ty, tx)] = d
    return out


def assert_tiles_equal(a: dict, b: dict) -> None:
    import numpy as np

    assert sorted(a) == sorted(b)
    for k in a:
        for v in a[k]:
            np.testing.assert_array_equal(a[k][v], b[k][v], err_msg=f"tile {k} variable {v}")
