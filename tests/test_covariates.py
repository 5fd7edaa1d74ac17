import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from deepsalt.data.covariates import COVARIATE_NAMES, covariates_on_grid, sample_covariates
from deepsalt.errors import DeepSaltInputError


def test_reprojected_onto_a_utm_grid_agrees_with_point_samples(world):
    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    one = sites.iloc[0]
    from deepsalt.data.stac import search_items
    item = next(i for i in search_items(str(world / "stac")) if i.id == one["scene_id"])
    with rasterio.open(item.assets["image"].href) as ds:
        crs, tr, shape = ds.crs, ds.transform, ds.shape
    grid = covariates_on_grid(world / "covariates", crs, tr, shape)
    assert grid.shape == (8, *shape) and np.isfinite(grid).all()
    at_site = grid[:, int(one["row"]), int(one["col"])]
    # nearest cell on the grid and at the point: the very value the training table holds
    np.testing.assert_allclose(at_site, one[list(COVARIATE_NAMES)].to_numpy(float), rtol=1e-6)


def test_outside_coverage_is_nan(world):
    vals = sample_covariates(world / "covariates", np.array([0.0]), np.array([0.0]))
    assert np.isnan(vals).all()
    grid = covariates_on_grid(world / "covariates", "EPSG:32631", from_origin(500000, 100000, 30, 30), (4, 4))
    assert np.isnan(grid).all()


def test_missing_covariate_is_named(world, tmp_path):
    import shutil
    shutil.copytree(world / "covariates", tmp_path / "cov")
    (tmp_path / "cov" / "pr_max.tif").unlink()
    with pytest.raises(DeepSaltInputError, match="pr_max.tif: covariate 'pr_max' does not exist"):
        sample_covariates(tmp_path / "cov", np.array([-108.0]), np.array([38.0]))


BOX = (-109.0, 39.0, -108.8, 39.2)  # a corner of the tiny world's native box: fast to build


def _native(world, tmp_path):
    import shutil

    for name in ("soilgrids", "worldclim"):
        shutil.copytree(world / "native" / name, tmp_path / name, ignore=shutil.ignore_patterns("*.aux.xml"))
    return tmp_path / "soilgrids", tmp_path / "worldclim"


def test_worldclim_zips_as_downloaded_build_the_same_covariates(world, tmp_path):
    """WorldClim serves wc2.1_30s_<var>.zip: read in place, the same rasters as unzipped."""
    import zipfile

    from deepsalt.data.products import build_covariates

    sg, wc = _native(world, tmp_path)
    a = build_covariates(str(sg), str(wc), BOX, tmp_path / "a", log=lambda *_: None)
    for var in ("tmin", "tmax", "tavg", "prec"):
        with zipfile.ZipFile(wc / f"wc2.1_30s_{var}.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(wc.glob(f"wc2.1_30s_{var}_*.tif")):
                z.write(f, f.name)
                f.unlink()
    b = build_covariates(str(sg), str(wc), BOX, tmp_path / "b", log=lambda *_: None)
    assert a["valid_fraction"] == b["valid_fraction"] and min(a["valid_fraction"].values()) > 0.9
    for name in COVARIATE_NAMES:
        with rasterio.open(tmp_path / "a" / f"{name}.tif") as x, rasterio.open(tmp_path / "b" / f"{name}.tif") as y:
            np.testing.assert_array_equal(x.read(), y.read())
    # another resolution is named, not "not found"
    for f in wc.glob("*.zip"):
        f.rename(f.with_name(f.name.replace("30s", "2.5m")))
    with pytest.raises(DeepSaltInputError, match=r"another resolution \(wc2.1_2.5m_tmin.zip\): only the 30 arc-second"):
        build_covariates(str(sg), str(wc), BOX, tmp_path / "c", log=lambda *_: None)


def test_bad_soilgrids_and_an_empty_box_write_nothing(world, tmp_path):
    """A VRT without its tiles (a partial download), SoilGrids already in %, and a box outside the data: one line
    each, nothing written."""
    import shutil

    from deepsalt.data.products import build_covariates

    sg, wc = _native(world, tmp_path)
    with pytest.raises(DeepSaltInputError, match=r"covariates.*has no valid pixel in the box|sand has no valid pixel in the box"):
        build_covariates(str(sg), str(wc), (10.0, 50.0, 10.1, 50.1), tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    pct = tmp_path / "pct"
    shutil.copytree(sg, pct)
    for f in pct.rglob("*.tif"):  # the same soils in % (int16), as a converted copy would hold them
        with rasterio.open(f, "r+") as ds:
            ds.write((ds.read() / 10).astype("int16"))
    with pytest.raises(DeepSaltInputError, match=r"look like % or fractions already"):
        build_covariates(str(pct), str(wc), BOX, tmp_path / "out", log=lambda *_: None)
    shutil.rmtree(sg / "sand" / "sand_0-5cm_mean")
    with pytest.raises(DeepSaltInputError, match=r"sand_0-5cm_mean.vrt: .* tiles are missing \(e.g. tileSG-.*\.tif in .*sand_0-5cm_mean\)"):
        build_covariates(str(sg), str(wc), BOX, tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()
