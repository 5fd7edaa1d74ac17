"""Tile plan (which scenes touch which chunk-tile) and per-tile preparation (read, nearest-pixel lookup, composite, join).

Compositing rule, per pixel: the first scene, in order of lowest ``eo:cloud_cover`` then newest datetime
then id, whose pixel is valid (no band the model reads is nodata, no quality mask flags it) at the tile pixel's
centre.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pystac
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from deepsalt.data.covariates import check_covariate_ranges, sample_covariates
from deepsalt.data.enmap import EnMAPScene
from deepsalt.data.stac import priority
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.centres import TileCentres
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


#: GDAL's block cache in a read task, MB. Each window is decoded once, so a cache beyond one window buys nothing,
#: and GDAL's default (5 % of RAM per process) would let every reader grow by that much on a big node.
READ_GDAL_CACHE_MB = 64


def _empty(out: dict, nb: int) -> dict:
    return {**out, "pix": np.zeros(0, np.int64), "dn": np.zeros((0, nb), np.int16), "slot": np.zeros(0, np.int16),
            "gain": np.zeros((0, nb), np.float32), "offset": np.zeros((0, nb), np.float32),
            "cov": np.zeros((0, 8), np.float32), "scene": np.zeros(0, np.int32)}


def drop_reasons(quality: tuple[str, ...]) -> list[str]:
    """What each slot of a prepared tile's ``drops`` counts: tile pixels no scene maps, and why."""
    from deepsalt.config import QUALITY_ASSETS

    return (["outside every scene"] + [f"masked by {k} ({QUALITY_ASSETS[k].what})" for k in quality]
            + ["nodata in every band read (outside the swath)", "nodata in some of the model's bands"])


def prepare_tile(task: dict, grid: Grid, covariates: str, band_names: list[str], band_centers: list[float],
                 quality: tuple[str, ...], allow_http: bool = False) -> dict:
    """Raw DN of the valid pixels of one tile, composited over its scenes, with covariates joined.

    Each output pixel takes the scene pixel that holds its centre (nearest neighbour, exact per pixel: the
    tile's pixel centres are projected into each scene's CRS and looked up by index), so only the chosen
    pixels are gathered from the decoded window, and the DN stay integers: reflectance is
    ``dn * gain[slot] + offset[slot]``, computed where the model runs (on the GPU when there is one).
    Scenes are visited in compositing order and reading stops once every pixel is filled. A pixel is valid
    where no quality mask flags it and none of the bundle's bands is nodata: a product's bad bands, which DLR
    fills with nodata everywhere, remove no pixel unless the model reads them.

    Returns ``pix`` (flat indices into the tile, ascending), ``dn (n, n_bands)`` in the bundle's band order,
    ``slot (n,)`` (row of ``gain``/``offset (k, n_bands)`` for each pixel's scene), ``scene (n,)`` (global
    scene index), ``cov (n, 8)`` and the tile position; arrays are empty when no pixel is valid. ``drops``
    counts the tile's unmapped pixels by the rule that dropped them (``drop_reasons``; for a pixel that
    several scenes cover, the last scene's reason), and ``band_nodata (n_bands,)`` counts, per bundle band, the
    in-swath pixels where it was nodata, out of ``swath_rows``: a band nodata in all of them is a bad band.
    """
    ty, tx = task["ty"], task["tx"]
    h, w = grid.tile_shape(ty, tx)
    tr = grid.tile_transform(ty, tx)
    tile_bounds = (tr.c, tr.f - h * grid.res, tr.c + w * grid.res, tr.f)
    nb = len(band_names)
    nq = len(quality)
    centres = TileCentres(grid.crs, tr, (h, w))
    filled = np.zeros(h * w, bool)
    reason = np.zeros(h * w, np.int64)  # why an unfilled pixel is unfilled: index into drop_reasons(quality)
    band_nodata, swath_rows = np.zeros(nb, np.int64), 0
    parts, gains, offsets = [], [], []
    for item_dict, gidx in zip(task["items"], task["scene_index"]):
        item = pystac.Item.from_dict(json.loads(item_dict), migrate=False, preserve_dict=False)  # ours: nothing to migrate
        scene = EnMAPScene.from_item(item, allow_http)
        sel = select_bands(band_names, band_centers, scene.bands.names, scene.bands.centers_nm, f"STAC item {scene.id}")
        got = scene.read_dn(quality=quality, window_for=lambda hdr: _window(hdr, tile_bounds, grid.crs))
        if got is None:  # no overlap
            continue
        dn, flags, win_tr, crs = got
        todo = np.flatnonzero(~filled)
        c, r = ~win_tr * centres.xy(crs, win_tr, todo)
        c, r = np.floor(c).astype(np.int64), np.floor(r).astype(np.int64)
        ok = (r >= 0) & (r < flags.shape[0]) & (c >= 0) & (c < flags.shape[1])
        todo, r, c = todo[ok], r[ok], c[ok]
        code = flags[r, c]
        reason[todo] = code  # 0 here only until the nodata test below
        ok = code == 0
        todo, r, c = todo[ok], r[ok], c[ok]
        if dn is None or not len(todo):  # every pixel of the window masked
            continue
        # gathered along the flattened window (np.take: ~6x faster than dn[:, r, c] on a 3-D array), a view (n, nb)
        rows_dn = np.take(dn.reshape(len(dn), -1), r * flags.shape[1] + c, axis=1)[sel].T
        missing = rows_dn == scene.nodata
        some = missing.any(axis=1)
        ok = ~some
        all_missing = 0
        if some.any():  # only rows with a nodata band need the finer counts
            sub, at = missing[some], todo[some]
            every = sub.all(axis=1)
            reason[at[every]] = nq + 1
            reason[at[~every]] = nq + 2
            band_nodata += sub[~every].sum(axis=0)
            all_missing = int(every.sum())
        swath_rows += len(todo) - all_missing
        if not ok.any():
            continue
        parts.append((todo[ok], rows_dn[ok], np.full(int(ok.sum()), len(gains), np.int16), np.full(int(ok.sum()), gidx, np.int32)))
        gains.append(scene.gain[sel])
        offsets.append(scene.offset[sel])
        filled[todo[ok]] = True
        if filled.all():
            break
    out = {"ty": ty, "tx": tx, "fp": task.get("fp", 0), "n_valid": int(filled.sum()),
           "drops": np.bincount(reason[~filled], minlength=nq + 3).astype(np.int64), "band_nodata": band_nodata,
           "swath_rows": swath_rows}
    if not parts:
        return _empty(out, nb)
    pix, dn, slot, scene_idx = (np.concatenate(a) for a in zip(*parts))
    order = np.argsort(pix, kind="stable")
    pix = pix[order]
    cov = sample_covariates(covariates, *centres.grid_xy(pix), crs=grid.crs, project=lambda dst, to_px: centres.xy(dst, to_px, pix))
    check_covariate_ranges(cov.T, covariates, f", tile {ty}_{tx}")
    missing = ~np.isfinite(cov).all(1)
    if missing.any():
        raise DeepSaltInputError(covariates, f"covariates do not cover tile ({ty}, {tx}) (bounds {tuple(round(b) for b in tile_bounds)} "
                                 f"in {grid.crs}): {int(missing.sum())} valid EnMAP pixels have no covariate value",
                                 "extend the covariate rasters over the mapped region")
    return {**out, "pix": pix, "dn": np.ascontiguousarray(dn[order]), "slot": slot[order], "scene": scene_idx[order],
            "gain": np.stack(gains).astype(np.float32), "offset": np.stack(offsets).astype(np.float32), "cov": cov}


def combine(parts: list[dict]) -> dict:
    """The ``prepare_tile`` outputs of one shard's tiles as one row: ``tiles (k, 2)``, ``fps (k,)`` and ``counts
    (k,)`` per tile, every per-pixel array concatenated in tile order (``slot`` renumbered into the stacked
    ``gain``/``offset``)."""
    slots, off = [], 0
    for p in parts:
        slots.append(p["slot"].astype(np.int16) + off)
        off += len(p["gain"])
    return {"tiles": np.array([[p["ty"], p["tx"]] for p in parts], np.int64),
            "fps": np.array([p["fp"] for p in parts], np.uint64), "counts": np.array([len(p["pix"]) for p in parts], np.int64),
            "n_valid": int(sum(p["n_valid"] for p in parts)), "slot": np.concatenate(slots),
            "drops": np.sum([p["drops"] for p in parts], axis=0), "band_nodata": np.sum([p["band_nodata"] for p in parts], axis=0),
            "swath_rows": int(sum(p["swath_rows"] for p in parts)),
            **{k: np.concatenate([p[k] for p in parts]) for k in ("pix", "dn", "scene", "cov", "gain", "offset")}}


def prepare_tiles(row: dict, **kw) -> list[dict]:
    """``prepare_tile`` for every tile of each shard of a read task (``row["shards"]``: pickled lists of task
    dicts), one output row per shard (``combine``): a write task then owns the whole shard, and a read task
    takes several tiles so that Ray's fixed cost per task (~0.1 s) is spread over more pixels.

    One GDAL environment for the whole task: rasterio builds a boto3 session for every environment it enters when
    AWS credentials are in the process's environment (~20 ms each), and a tile opens ~20 files."""
    with rasterio.Env(GDAL_CACHEMAX=READ_GDAL_CACHE_MB):
        return [combine([prepare_tile(t, **kw) for t in unit]) for unit in pickle.loads(row["shards"])]
