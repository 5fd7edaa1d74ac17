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
