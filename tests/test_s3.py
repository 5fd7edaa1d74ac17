"""COG reads from a real S3 endpoint (moto server): through GDAL /vsis3/ and through s3fs."""

from pathlib import Path

import boto3
import numpy as np
import rasterio
import rioxarray
from rasterio.windows import Window

from deepsalt.data.enmap import EnMAPScene
from deepsalt.data.stac import rebase_hrefs, search_items


def _upload(world: Path, bucket: str, endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in (world / "scenes").rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"world/{p.relative_to(world)}")


def test_window_read_from_s3_via_gdal_vsis3(world, s3_bucket, s3_endpoint):
    _upload(world, s3_bucket, s3_endpoint)
    local = search_items(str(world / "stac"))[0]
    remote = rebase_hrefs([local], str(world), f"s3://{s3_bucket}/world")[0]
    assert remote.assets["image"].href.startswith(f"s3://{s3_bucket}/world/scenes/")
    win = Window(16, 8, 96, 112)
    a = EnMAPScene.from_item(remote).read(win).values
    b = EnMAPScene.from_item(local).read(win).values
    assert np.nanmin(a) >= 0 and np.nanmax(a) <= 1.2
    assert np.isnan(a).any()  # the nodata corner and any cloud
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])


def test_cog_read_through_s3fs(world, s3_bucket, s3_endpoint):
    import s3fs

    _upload(world, s3_bucket, s3_endpoint)
    item = search_items(str(world / "stac"))[0]
    key = f"{s3_bucket}/world/" + str(Path(item.assets["image"].href).relative_to(world))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    with fs.open(key, "rb") as f:
        da = rioxarray.open_rasterio(f)
        win = da.isel(x=slice(40, 80), y=slice(40, 80)).values
    with rasterio.open(item.assets["image"].href) as ds:
        ref = ds.read(window=Window(40, 40, 40, 40))
    np.testing.assert_array_equal(win, ref)


def test_credentials_reach_only_the_processes_that_read(world, trained, s3_bucket, s3_endpoint, tmp_path):
    """A secret key and a GDAL user:password in the environment of the process that reads (as a pod's mounted secret
    would put them there): ingest from S3 and map to S3 work, and the marker is in no output line, no catalogue
    file, no commit, no cube attribute, no Ray log and not in the runtime env that Ray ships to workers."""
    import json
    import os
    import subprocess
    import sys
    import uuid

    marker = f"MARKER{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for z in sorted((world / "deliveries").glob("*.ZIP")):
        s3.upload_file(str(z), s3_bucket, f"orders/{z.name}")
    cat, cube = tmp_path / "cat", f"s3://{s3_bucket}/cube.zarr"
    script = tmp_path / "run.py"
    script.write_text(f"""
import json, ray
from deepsalt.config import MapConfig
from deepsalt.data.ingest import ingest
from deepsalt.mapping.pipeline import map_region
s = ingest(["s3://{s3_bucket}/orders/*.ZIP"], {str(cat)!r}, log=print)
assert s["written"] == 3, s
m = map_region(MapConfig(stac={str(cat / 'collection.json')!r}, covariates={str(world / 'covariates')!r},
                         model={str(trained[0] / 'bundle')!r}, out={cube!r}, epoch="2024", mc_samples=0,
                         storage_options={{"client_kwargs": {{"endpoint_url": {s3_endpoint!r}}}}}), log=print)
assert m["published"], m

@ray.remote
def shipped():
    return ray.get_runtime_context().runtime_env
print("RUNTIME_ENV " + json.dumps(ray.get(shipped.remote())))
print("SESSION " + ray._private.worker._global_node.get_session_dir_path())
""")
    env = {**os.environ, "RAY_ADDRESS": "", "AWS_SECRET_ACCESS_KEY": marker, "GDAL_HTTP_USERPWD": f"reader:{marker}"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert marker not in r.stdout + r.stderr
    shipped = json.loads(r.stdout.split("RUNTIME_ENV ", 1)[1].splitlines()[0])
    assert shipped["env_vars"]["AWS_S3_ENDPOINT"] == os.environ["AWS_S3_ENDPOINT"]  # what workers need does travel
    assert marker not in json.dumps(shipped) and "GDAL_HTTP_USERPWD" not in shipped["env_vars"]
    for f in cat.rglob("*"):
        if f.is_file():
            assert marker.encode() not in f.read_bytes(), f
    from deepsalt import open_cube
    from deepsalt.mapping.cube import history

    so = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    assert marker not in json.dumps(history(cube, so)) + json.dumps(open_cube(cube, so).attrs, default=str)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page.get("Contents", [])]
    assert not [k for k in keys if k.startswith("cube.zarr/") and marker.encode() in s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read()]
    session = Path(r.stdout.split("SESSION ", 1)[1].splitlines()[0])
    logs = [f for f in session.rglob("*") if f.is_file() and f.stat().st_size < 50_000_000]
    assert logs and not [f for f in logs if marker.encode() in f.read_bytes()]


def test_a_gdal_environment_takes_the_credentials_in_force_when_it_starts(world, s3_bucket, s3_endpoint, monkeypatch):
    """`one_gdal_env` builds rasterio's credentials session once per set of AWS settings, not once per environment
    it enters: credentials changed in the process must still be the ones GDAL gets (moto accepts any key, so the
    read succeeds either way; what GDAL was given is what is checked)."""
    from deepsalt.data.cog import one_gdal_env

    _upload(world, s3_bucket, s3_endpoint)
    href = f"/vsis3/{s3_bucket}/world/" + next((world / "scenes").rglob("*SPECTRAL_IMAGE*.TIF")).relative_to(world).as_posix()

    @one_gdal_env
    def read():
        with rasterio.open(href) as ds:
            return rasterio.env.getenv()["AWS_SECRET_ACCESS_KEY"], ds.read(1, window=Window(0, 0, 4, 4))

    for secret in ("testing", "rotated", "testing"):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        key, a = read()
        assert key == secret and a.shape == (4, 4)
