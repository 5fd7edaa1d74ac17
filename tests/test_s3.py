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
