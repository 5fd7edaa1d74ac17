"""A tile's centres projected through the lattice find exactly the cells that projecting every centre finds."""

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from deepsalt.mapping.centres import TileCentres
from deepsalt.mapping.grid import GRIDS


def _exact_cells(src, dst, tile_tr, shape, dst_tr):
    rows, cols = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    x, y = Transformer.from_crs(src, dst, always_xy=True).transform(*(tile_tr * (cols + 0.5, rows + 0.5)))
    c, r = ~dst_tr * (x, y)
    return np.floor(c).astype(int), np.floor(r).astype(int)


@pytest.mark.parametrize("dst, dst_tr", [
    ("EPSG:32612", Affine(30, 0, 600_015.0, 0, -30, 4_300_005.0)),  # a UTM scene, turned ~9 degrees against the grid
    ("EPSG:32613", Affine(30, 0, 150_007.0, 0, -30, 4_300_011.0)),  # the next zone, farther from its meridian
    ("EPSG:4326", Affine(1 / 120, 0, -115.0, 0, -1 / 120, 42.0)),    # a WorldClim-like 30 arc-second raster
])
def test_lattice_cells_equal_exact_cells(dst, dst_tr):
    g = GRIDS["conus"]
    tr = g.tile_transform(30, 110)  # a tile near -109.6 E, 38.5 N (the synthetic worlds' seen region)
    shape = g.tile_shape(30, 110)
    got_c, got_r = (np.floor(v).astype(int) for v in ~dst_tr * TileCentres(g.crs, tr, shape).xy(dst, dst_tr))
    want_c, want_r = _exact_cells(g.crs, dst, tr, shape, dst_tr)
    assert np.array_equal(got_c, want_c) and np.array_equal(got_r, want_r)


def test_centres_on_cell_edges_are_projected_exactly():
    # the same CRS with the raster shifted by half a pixel: every centre lies on a cell edge, where an
    # interpolated coordinate off by one ulp would floor into the neighbouring cell
    g = GRIDS["conus"]
    tr = g.tile_transform(30, 110)
    dst_tr = tr * Affine.translation(0.5, 0.5)
    idx = np.arange(0, 256 * 256, 7)  # a subset, as a tile's still-unfilled pixels are
    c, r = ~dst_tr * TileCentres(g.crs, tr, (256, 256)).xy(g.crs, dst_tr, idx)
    rows, cols = np.divmod(idx, 256)
    assert np.array_equal(c, cols) and np.array_equal(r, rows)  # on the edge, exactly
