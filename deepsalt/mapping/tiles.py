"""Tile plan (which scenes touch which chunk-tile) and per-tile preparation (read, warp, composite, join).

Compositing rule, per pixel: the first scene, in order of lowest ``eo:cloud_cover`` then newest datetime
then id, whose pixel is valid (not nodata, not flagged by the quality masks) after warping.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pystac
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from deepsalt.data.covariates import check_covariate_ranges, covariates_on_grid
from deepsalt.data.enmap import EnMAPScene
from deepsalt.data.stac import priority
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.grid import Grid
from deepsalt.spectra.bands import select_bands


def plan(items: list[pystac.Item], grid: Grid, allow_http: bool = False) -> dict[tuple[int, int], list[pystac.Item]]:
    """Tiles touched by each scene (from the image's own georeference), scenes per tile in priority order.
    A scene that touches no tile of the grid is an error: it would silently map nothing."""
    tiles: dict[tuple[int, int], list[pystac.Item]] = {}
    for item in items:
        h = EnMAPScene.from_item(item, allow_http).header()
        t = h["transform"]
        bounds = (t[2], t[5] + t[4] * h["height"], t[2] + t[0] * h["width"], t[5])
        try:
            keys = grid.tiles_for_bounds(bounds, h["crs"])
        except Exception:  # noqa: BLE001 - bounds that do not project into the grid's CRS
            keys = []
        if not keys:
            raise DeepSaltInputError(f"STAC item {item.id}", f"the scene lies outside the output grid ({grid.crs}, "
                                     f"{grid.width} x {grid.height} px)", "use the grid that covers it (--grid), or narrow "
                                     "the search (--bbox) to scenes inside the grid")
        for key in keys:
            tiles.setdefault(key, []).append(item)
    return {k: sorted(v, key=priority) for k, v in sorted(tiles.items())}


def _window(scene_h: dict, tile_bounds, grid_crs) -> Window | None:
    b = transform_bounds(grid_crs, scene_h["crs"], *tile_bounds, densify_pts=21)
    win = from_bounds(*b, transform=scene_h["transform"])
    c0, r0 = max(0, math.floor(win.col_off) - 2), max(0, math.floor(win.row_off) - 2)
    c1 = min(scene_h["width"], math.ceil(win.col_off + win.width) + 2)
    r1 = min(scene_h["height"], math.ceil(win.row_off + win.height) + 2)
    return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None


def prepare_tile(task: dict, grid: Grid, covariates: str, band_names: list[str], band_centers: list[float],
                 quality: tuple[str, ...], allow_http: bool = False) -> dict:
    """Reflectance of the valid pixels of one tile, composited over its scenes, with covariates joined.

    Returns ``pix`` (flat indices into the tile), ``refl (n, n_bands)``, ``cov (n, 8)``, ``scene (n,)`` (global
    scene index) and the tile position; arrays are empty when no pixel is valid.
    """
    ty, tx = task["ty"], task["tx"]
    h, w = grid.tile_shape(ty, tx)
    tr = grid.tile_transform(ty, tx)
    tile_bounds = (tr.c, tr.f - h * grid.res, tr.c + w * grid.res, tr.f)
    nb = len(band_names)
    refl = np.full((nb, h, w), np.nan, np.float32)
    scene_of = np.full((h, w), -1, np.int32)
    for item_dict, gidx in zip(task["items"], task["scene_index"]):
        scene = EnMAPScene.from_item(pystac.Item.from_dict(json.loads(item_dict)), allow_http)
        sel = select_bands(band_names, band_centers, scene.bands.names, scene.bands.centers_nm, f"STAC item {scene.id}")
        got = scene.read_array(quality=quality, window_for=lambda hdr: _window(hdr, tile_bounds, grid.crs))
        if got is None:
            continue
        src, src_tr, src_crs = got
        if np.isnan(src[0]).all():  # all masked: nothing this scene can add
            continue
        dst = np.full((nb, h, w), np.nan, np.float32)
        reproject(src[sel], dst, src_transform=src_tr, src_crs=src_crs, src_nodata=np.nan,
                  dst_transform=tr, dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.nearest)
        new = (scene_of < 0) & np.isfinite(dst).all(0)
        refl[:, new] = dst[:, new]
        scene_of[new] = gidx
    filled = scene_of >= 0
    out = {"ty": ty, "tx": tx, "fp": task.get("fp", 0), "n_valid": int(filled.sum())}
    if not filled.any():
        return {**out, "pix": np.zeros(0, np.int64), "refl": np.zeros((0, nb), np.float32),
                "cov": np.zeros((0, 8), np.float32), "scene": np.zeros(0, np.int32)}
    cov = covariates_on_grid(covariates, grid.crs, tr, (h, w))
    check_covariate_ranges(cov[:, filled], covariates, f", tile {ty}_{tx}")
    missing = filled & ~np.isfinite(cov).all(0)
    if missing.any():
        raise DeepSaltInputError(covariates, f"covariates do not cover tile ({ty}, {tx}) (bounds {tuple(round(b) for b in tile_bounds)} "
                                 f"in {grid.crs}): {int(missing.sum())} valid EnMAP pixels have no covariate value",
                                 "extend the covariate rasters over the mapped region")
    pix = np.flatnonzero(filled)
    return {**out, "pix": pix, "refl": refl.reshape(nb, -1)[:, pix].T.copy(), "cov": cov.reshape(8, -1)[:, pix].T.copy(),
            "scene": scene_of.ravel()[pix]}

