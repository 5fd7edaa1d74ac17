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
FAST = dict(ae_hidden=(64,), ae_epochs=3, sau_epochs=3, teacher_epochs=6, student_epochs=6, checkpoint_every=2, seeds=(0,))


@pytest.fixture(scope="session")
def trained(world, tmp_path_factory):
    """(run folder, metrics) of one quick training on the tiny world, shared by training and mapping tests."""
    from deepsalt.config import TrainConfig
    from deepsalt.train.run import train

    out = tmp_path_factory.mktemp("run")
    return out, train(world, out, TrainConfig.for_preset("tiny", **FAST), log=lambda *_: None)
