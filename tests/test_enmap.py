"""EnMAP L2A reads through rioxarray/GDAL, and the errors for bad scenes."""

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from deepsalt.data.cog import write_cog
from deepsalt.data.enmap import EnMAPScene, pixels_at
from deepsalt.data.stac import search_items
from deepsalt.errors import DeepSaltInputError


def _scene(world, i=0):
    return EnMAPScene.from_item(search_items(str(world / "stac"))[i])


def test_window_read_scales_and_masks(world):
    scene = _scene(world)
    da = scene.read(Window(0, 0, 128, 128))
    assert da.dims == ("band", "y", "x") and da.shape == (224, 128, 128)
    assert da.rio.crs.to_epsg() in (32612, 32613)
    assert float(da.wavelength[0]) == 418.416
    v = da.values
    assert np.nanmin(v) >= 0 and np.nanmax(v) <= 1.2
    with rasterio.open(scene.href("image")) as ds:
        dn = ds.read(1)
    with rasterio.open(scene.href("quality_cloud")) as ds:
        cloud = ds.read(1) == 1
    nodata = dn == -32768
    assert nodata.any() and cloud.any()
    assert np.isnan(v[:, nodata]).all() and np.isnan(v[:, cloud]).all()
    ok = ~np.isnan(v[0])
    np.testing.assert_allclose(v[0][ok], dn[ok] * 1e-4, rtol=1e-6)


def test_pixels_at_points_are_the_site_spectra_and_nan_where_no_scene_sees(world):
    import pandas as pd

    from deepsalt.spectra.bands import enmap_bands

    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    b = enmap_bands()
    keep = b.model_band_mask()
    names = list(np.array(b.names)[keep])
    # the world wrote the sites' spectra from the scene it picked them in: reading the COGs at their lon/lat
    # through STAC must give the same pixels, band for band
    lon = np.r_[sites["longitude"].to_numpy(), -100.0]  # plus a point no scene covers
    lat = np.r_[sites["latitude"].to_numpy(), 30.0]
    px = pixels_at(search_items(str(world / "stac")), lon, lat, names, b.centers_nm[keep])
    assert px.shape == (len(sites) + 1, len(names))
    np.testing.assert_array_equal(px[:-1], sites[[f"refl_{n}" for n in names]].to_numpy(np.float32))
    assert np.isnan(px[-1]).all()


def test_item_numbers_as_strings_are_accepted(world):
    item = search_items(str(world / "stac"))[0]
    item.properties["enmap:nodata"] = "-32768"
    for b in item.assets["image"].extra_fields["eo:bands"]:
        b["center_wavelength"] = str(b["center_wavelength"])
    scene = EnMAPScene.from_item(item)
    assert scene.nodata == -32768 and scene.bands.centers_nm[0] == 418.416


def _item(world_copy):
    return search_items(str(world_copy / "stac"))[0]


def test_band_count_disagreeing_with_item(world_copy):
    item = _item(world_copy)
    item.assets["image"].extra_fields["eo:bands"] = item.assets["image"].extra_fields["eo:bands"][:223]
    with pytest.raises(DeepSaltInputError, match="image has 224 bands but the item's eo:bands lists 223"):
        EnMAPScene.from_item(item).read()


def test_missing_asset(world_copy):
    item = _item(world_copy)
    del item.assets["image"]
    with pytest.raises(DeepSaltInputError, match=f"STAC item {item.id}: missing asset 'image'"):
        EnMAPScene.from_item(item)
    item = _item(world_copy)
    del item.assets["quality_cloud"]
    with pytest.raises(DeepSaltInputError, match="missing asset 'quality_cloud'"):
        EnMAPScene.from_item(item).read()


@pytest.mark.parametrize("content, match", [(b"", "not a readable GeoTIFF"), (b"II*\x00garbage" * 100, "not a readable GeoTIFF"),
                                            (b"<html>404</html>", "not a readable GeoTIFF")])
def test_corrupt_or_non_tiff_image(world_copy, content, match):
    item = _item(world_copy)
    with open(item.assets["image"].href, "wb") as f:
        f.write(content)
    with pytest.raises(DeepSaltInputError, match=match) as e:
        EnMAPScene.from_item(item).read()
    assert item.assets["image"].href in str(e.value)


def test_truncated_cog(world_copy):
    item = _item(world_copy)
    path = item.assets["image"].href
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    with pytest.raises(DeepSaltInputError, match=path):
        EnMAPScene.from_item(item).read()


def test_missing_file_and_missing_crs(world_copy):
    item = _item(world_copy)
    path = item.assets["image"].href
    with rasterio.open(path) as ds:
        data = ds.read()
    import os
    os.remove(path)
    with pytest.raises(DeepSaltInputError, match="does not exist"):
        EnMAPScene.from_item(item).read()
    with rasterio.open(path, "w", driver="GTiff", count=224, width=data.shape[2], height=data.shape[1], dtype="int16") as dst:
        dst.write(data)
    with pytest.raises(DeepSaltInputError, match="has no CRS"):
        EnMAPScene.from_item(item).read()


def test_scene_entirely_nodata(world_copy):
    item = _item(world_copy)
    path = item.assets["image"].href
    with rasterio.open(path) as ds:
        crs, tr, shape = ds.crs, ds.transform, (ds.count, ds.height, ds.width)
    write_cog(path, np.full(shape, -32768, np.int16), crs, tr, -32768)
    with pytest.raises(DeepSaltInputError, match="no valid pixel"):
        EnMAPScene.from_item(item).read()
