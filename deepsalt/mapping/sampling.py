"""`deepsalt plan-sampling`: where the next field campaign teaches the model most.

The model's own measure of what it does not know is the dissimilarity index (DI): a pixel whose inputs lie far, in
the space the student reads, from every training site is outside the area of applicability (AOA), and its
calibrated interval is wide. A new labelled site teaches the model about the pixels whose inputs resemble its own.
So the plan is a coverage problem in that space:

1. A pool of candidate pixels, drawn uniformly (seeded) from the valid pixels of one epoch of the cube, inside
   ``bbox`` and outside the ``exclude`` areas (polygons; points are kept ``spacing`` metres away).
2. Each candidate's student inputs, read again from the very scene it was mapped from (its reflectance) and from the
   covariates, standardised as the bundle's AOA does (``DeepSaltBundle.features``): its DI against the training
   sites.
3. Greedy coverage (``method="coverage"``): each site in turn is the candidate that brings the most of the pool
   inside the AOA were it a training site (its neighbours within the AOA threshold in that space, each counted by
   its interval's width relative to the pool's median, so that the widest intervals count most); the pool's DIs
   are then updated as if it were one, and candidates closer than ``spacing`` to it in geography leave the pool.
   When the whole pool is inside, the same cover goes on at half the radius (and so on): the next sites go where
   the most (interval-weighted) candidates are still farthest from any site, which spreads them over the pool's
   dense parts rather than its outliers. Coverage is submodular, so each greedy stage is within 1 - 1/e of the
   best set of its size.
   ``method="random"`` draws the same number of sites uniformly from the same pool under the same spacing: a
   probability sample, for validation, and the baseline the coverage plan must beat.

The plan is written as a GeoPackage (points, WGS84), one feature per site with its reasons: the DI and the AOA
threshold, whether it is outside the AOA, the mapped value and its 90 % interval, the mapped class, the share of
the pool it brings inside the AOA, the scene and date it was mapped from, and an empty column for the target's
measured value: filled in after the campaign, the file is a site table that ``deepsalt sites`` reads as it is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import zarr

from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import epoch_model, readonly_session, recorded_tiles
from deepsalt.mapping.fingerprint import bundle_identity
from deepsalt.mapping.grid import Grid
from deepsalt.redact import redact_url
from deepsalt.targets import get_target

METHODS = ("coverage", "random")
#: candidates drawn from the map: their pairwise distances in feature space are held in memory (POOL**2 float32)
POOL = 4000
#: interval weights are clipped to this factor of the pool's median width either way
WEIGHT_CLIP = 4.0


def _epoch(root, epoch: str | None) -> int:
    from deepsalt.mapping.change import _epoch_index

    if not root["time"].shape[0]:
        raise DeepSaltInputError("cube", "has no published epoch yet", "run `deepsalt map` first")
    return root["time"].shape[0] - 1 if epoch is None else _epoch_index(root, epoch, "--epoch")


def read_exclusions(path: str, crs: str, spacing_m: float, layer: str | None = None):
    """One prepared geometry in ``crs``: the polygons of a vector file (GDAL/OGR through pyogrio) as they are, its
    points (sites already sampled or planned) as discs of ``spacing_m``."""
    import pyogrio
    import shapely
    from pyproj import Transformer

    try:
        meta, _, geom, _ = pyogrio.raw.read(path, layer=layer)
    except Exception as e:  # noqa: BLE001 - GDAL's errors: one line
        raise DeepSaltInputError(f"--exclude {path}", f"not a readable vector file ({' '.join(str(e).split())[:120]})",
                                 "pass a GeoPackage, GeoJSON or Shapefile of polygons (areas) or points (sites)") from None
    geoms = shapely.from_wkb(geom) if geom is not None else np.array([])
    geoms = geoms[~shapely.is_missing(geoms)] if len(geoms) else geoms
    if not len(geoms):
        raise DeepSaltInputError(f"--exclude {path}", "holds no geometry", "pass polygons (areas) or points (sites) to keep out")
    tr = Transformer.from_crs(meta.get("crs") or "EPSG:4326", crs, always_xy=True)
    geoms = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    points = np.isin(shapely.get_type_id(geoms), (0, 4))  # Point, MultiPoint
    out = shapely.union_all(np.concatenate([geoms[~points], shapely.buffer(geoms[points], max(spacing_m, 1.0))]))
    shapely.prepare(out)
    return out


def _cell_xy(grid: Grid, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    x = grid.x0 + (np.arange(xs.start, xs.stop) + 0.5) * grid.res
    y = grid.y0 - (np.arange(ys.start, ys.stop) + 0.5) * grid.res
    return np.meshgrid(x, y)


def _pool(root, grid: Grid, t: int, tiles: list, var: str, bbox, exclude, size: int, seed: int) -> dict:
    """Up to ``size`` valid pixels drawn uniformly (seeded) from the tiles, inside ``bbox``, outside ``exclude``: two
    passes, the first counts each tile's eligible pixels, the second draws each tile's share of the pool."""
    import shapely
    from pyproj import Transformer

    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)

    def eligible(ty, tx):
        ys, xs = grid.tile_slices(ty, tx)
        ok = (root["valid"][t, ys, xs] == 1) & np.isfinite(root[var][t, ys, xs])
        if (bbox is not None or exclude is not None) and ok.any():
            x, y = _cell_xy(grid, ys, xs)
            if bbox is not None:
                lon, lat = to_ll.transform(x, y)
                ok &= (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])
            if exclude is not None:
                ok &= ~shapely.contains_xy(exclude, x, y)
        return ys, xs, ok

    counts = np.array([int(eligible(*k)[2].sum()) for k in tiles])
    total = int(counts.sum())
    rng = np.random.default_rng([seed, 23])
    take = rng.multinomial(min(size, total), counts / total) if total else np.zeros(len(tiles), int)
    parts: dict[str, list] = {k: [] for k in ("row", "col", "value", "sd", "di", "aoa", "scene", "acq", "p")}
    for k, m in zip(tiles, take):
        if not m:
            continue
        ys, xs, ok = eligible(*k)
        r, c = np.nonzero(ok)
        pick = rng.choice(len(r), size=min(int(m), len(r)), replace=False)
        r, c = r[pick], c[pick]
        parts["row"].append(r + ys.start)
        parts["col"].append(c + xs.start)
        for name, key in ((var, "value"), (f"{var}_sd", "sd"), ("di", "di"), ("aoa", "aoa"), ("scene", "scene"),
                          ("acq_date", "acq")):
            parts[key].append(root[name][t, ys, xs][r, c])
        if "exceedance" in root:
            parts["p"].append(root["exceedance"][t, :, ys, xs][:, r, c].T)
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    out["eligible"] = total
    return out


def _features(bundle, stac: str, covariates: str, lon, lat, scene_ids: np.ndarray, log) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' student inputs in the AOA's space, read from the scene each was mapped from; ``ok`` marks
    those with a clear pixel and covariates."""
    from deepsalt.data.covariates import sample_covariates
    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.data.stac import search_items

    names = sorted(set(scene_ids.tolist()))
    items = {i.id: i for i in search_items(stac, ids=names)}
    missing = [s for s in names if s not in items]
    if missing:
        raise DeepSaltInputError(f"--stac {redact_url(stac)}", f"lacks {len(missing)} scene(s) the cube was mapped from "
                                 f"({', '.join(missing[:3])})", "pass the catalogue the cube was mapped from")
    refl = np.full((len(lon), len(bundle.band_names)), np.nan, np.float32)
    for s in names:
        k = np.flatnonzero(scene_ids == s)
        scene = EnMAPScene.from_item(items[s])
        sel = bundle.select_bands(scene.bands.names, scene.bands.centers_nm, f"STAC item {s}")
        refl[k] = scene.sample_points(lon[k], lat[k])[:, sel]
    cov = sample_covariates(covariates, lon, lat)
    ok = np.isfinite(refl).all(1) & np.isfinite(cov).all(1)
    x = np.full((len(lon), bundle.reference.shape[1]), np.nan, np.float32)
    if ok.any():
        x[ok] = bundle.features(refl[ok], cov[ok])
    log(f"  features: {int(ok.sum())} of {len(lon)} candidates read from {len(names)} scene(s)")
    return x, ok


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def choose(x: np.ndarray, di: np.ndarray, threshold: float, mean_distance: float, weight: np.ndarray, xy: np.ndarray,
           n: int, spacing: float, method: str, seed: int) -> tuple[list[int], list[float], np.ndarray]:
    """``(picked, gains, di_after)``: the candidates chosen in order, the (weighted) share of the pool each brought
    inside the AOA, and the pool's DI with the picked sites as training sites too (the model held fixed). See the
    module docstring for the two methods."""
    m = len(x)
    cur = di.astype(np.float64).copy()
    d = _dist(x, x) / mean_distance  # (m, m)
    radius = threshold
    near = d <= radius
    free = np.ones(m, bool)
    rng = np.random.default_rng([seed, 29])
    order = rng.permutation(m) if method == "random" else None
    wsum = float(weight.sum()) or 1.0
    picked, gains = [], []
    while len(picked) < n and free.any():
        if method == "random":
            k = int(order[np.flatnonzero(free[order])[0]])
        else:
            g = np.where(free, (weight * (cur > radius)) @ near, -1.0)  # weighted candidates k would bring within radius
            if g.max() <= 0 and radius > 1e-3 * threshold:  # all of the pool within radius of a site: a finer cover
                radius /= 2
                near = d <= radius
                continue
            best = np.flatnonzero(g >= g.max() - 1e-9)
            k = int(best[np.argmax(cur[best])])
        gains.append(float((weight * ((cur > threshold) & (d[:, k] <= threshold))).sum() / wsum))
        picked.append(k)
        cur = np.minimum(cur, d[:, k])
        free &= np.hypot(*(xy - xy[k]).T) >= spacing
        free[k] = False
    return picked, gains, cur


def plan_sampling(cube: str, model: str, n: int, out: str | Path, stac: str, covariates: str,
                  bbox: tuple[float, float, float, float] | None = None, exclude: str | None = None,
                  epoch: str | None = None, method: str = "coverage", spacing_m: float = 300.0, pool: int = POOL,
                  seed: int = 0, storage_options: dict | None = None, log=print) -> dict:
    """Write ``n`` proposed field sites to the GeoPackage ``out`` and return the plan's summary (module docstring).

    ``stac`` and ``covariates`` are the catalogue and covariates the cube was mapped from (the candidates' inputs
    are read again from them); ``model`` the bundle that mapped the epoch (refused if it is not)."""
    from pyproj import Transformer

    from deepsalt.models.bundle import DeepSaltBundle

    t0 = time.time()
    if n < 1:
        raise DeepSaltInputError(f"--n {n}", "is not a number of sites", "pass --n 1 or more")
    if method not in METHODS:
        raise DeepSaltInputError(f"--method {method}", "is not a sampling method", f"pass one of {', '.join(METHODS)}")
    if not str(out).lower().endswith(".gpkg"):
        raise DeepSaltInputError(f"--out {out}", "is not a GeoPackage name", "end it in .gpkg")
    session = readonly_session(cube, storage_options)
    root = zarr.open_group(session.store, mode="r")
    grid = Grid(**root.attrs["grid"])
    target = get_target(root.attrs.get("target") or "ece")
    t = _epoch(root, epoch)
    day = str(np.datetime64(int(root["time"][t]), "D"))
    bundle = DeepSaltBundle.load(model)
    rec = epoch_model(root, day)
    if rec.get("sha256") and rec["sha256"] != bundle_identity(model):
        raise DeepSaltInputError(f"--model {redact_url(model)}", f"is not the bundle that mapped epoch {day} "
                                 f"(the cube records {rec.get('bundle')})", "pass that bundle, or map the epoch with this one")
    tiles = sorted(recorded_tiles(session, t))
    if bbox is not None:
        box = grid.tile_box(bbox, "EPSG:4326")
        tiles = [k for k in tiles if k in box]
    if not tiles:
        raise DeepSaltInputError(redact_url(cube), f"epoch {day} has no mapped tile" + (f" inside {bbox}" if bbox else ""),
                                 "map the region first (`deepsalt map`), or widen --bbox")
    excl = read_exclusions(exclude, grid.crs, spacing_m) if exclude else None
    cand = _pool(root, grid, t, tiles, target.var, bbox, excl, max(pool, n), seed)
    if not cand["eligible"]:
        raise DeepSaltInputError(redact_url(cube), f"epoch {day} has no valid pixel in {len(tiles)} tile(s) "
                                 + ("inside --bbox and " if bbox else "") + ("outside --exclude" if exclude else ""),
                                 "widen --bbox or shrink --exclude")
    log(f"[1/3] pool: {len(cand['row'])} of {cand['eligible']} eligible pixels of epoch {day} in {len(tiles)} tile(s)")
    ids = np.array(root.attrs["scene_ids"], dtype=object)
    x, y = grid.x0 + (cand["col"] + 0.5) * grid.res, grid.y0 - (cand["row"] + 0.5) * grid.res
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    feats, ok = _features(bundle, stac, covariates, np.asarray(lon), np.asarray(lat), ids[cand["scene"]], log)
    if not ok.any():
        raise DeepSaltInputError(f"--stac {redact_url(stac)}", "gave no clear pixel with covariates at any candidate",
                                 "pass the catalogue and covariates the cube was mapped from")
    keep = np.flatnonzero(ok)
    c = {k: v[keep] for k, v in cand.items() if k != "eligible"}
    feats, lon, lat, xy = feats[keep], np.asarray(lon)[keep], np.asarray(lat)[keep], np.column_stack([x, y])[keep]
    import torch

    from deepsalt.models.applicability import dissimilarity

    aoa = bundle.meta["aoa"]
    thr, mean_d = float(aoa["threshold"]), float(aoa["mean_distance"])
    di = dissimilarity(torch.from_numpy(feats), bundle.reference.cpu(), mean_d).numpy()
    lo, hi = bundle.interval(c["value"], c["sd"], di)
    width = np.log(np.maximum(hi, 1e-6) / np.maximum(lo, 1e-6)) if target.log else hi - lo
    med = float(np.median(width)) or 1.0
    weight = np.clip(width / med, 1 / WEIGHT_CLIP, WEIGHT_CLIP)
    log(f"[2/3] choosing {n} sites ({method}) among {len(keep)} candidates: {100 * float((di > thr).mean()):.1f} % "
        f"outside the area of applicability (DI > {thr:.3g})")
    picked, gains, di_after = choose(feats, di, thr, mean_d, weight, xy, n, spacing_m, method, seed)
    if not picked:
        raise DeepSaltInputError(redact_url(cube), "no candidate site left", "lower --spacing or widen --bbox")
    p = np.array(picked)
    thresholds = list(target.thresholds)
    decision = rec.get("exceedance_decision") or {}
    if "p" in c and len(c["p"]):
        prob = np.where(c["p"][p] == 255, np.nan, c["p"][p] / 100.0)
        above = np.stack([prob[:, i] >= float(decision.get(f"{v:g}", 0.5)) for i, v in enumerate(thresholds)], 1)
    else:
        prob, above = None, np.stack([c["value"][p] > v for v in thresholds], 1)
    labels = [f"< {thresholds[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(thresholds[:-1], thresholds[1:])] + [f"> {thresholds[-1]:g}"]
    cls = [labels[int(a.sum())] for a in above]
    acq = np.where(c["acq"][p] < 0, 0, c["acq"][p]).astype("datetime64[D]").astype(str)

    def reason(i, k):
        if di[k] > thr:
            return (f"outside the area of applicability (DI {di[k]:.2f} > {thr:.2f}); as a training site it brings "
                    f"{100 * gains[i]:.1f} % of the candidate area inside")
        if method == "random":
            return f"random draw (DI {di[k]:.2f}, inside the area of applicability)"
        return (f"inside the area of applicability; covers candidates still far from any site (DI {di[k]:.2f}, "
                f"interval x{np.exp(width[k]) if target.log else width[k]:.3g})")

    fields = {
        "site_id": np.array([f"P{i + 1:04d}" for i in range(len(p))], dtype=object),
        "rank": np.arange(1, len(p) + 1, dtype=np.int32),
        "date": acq.astype(object),
        target.column: np.full(len(p), np.nan),
        "reason": np.array([reason(i, k) for i, k in enumerate(p)], dtype=object),
        "di": di[p].astype(float), "aoa_threshold": np.full(len(p), thr), "outside_aoa": (di[p] > thr).astype(np.int32),
        "gain": np.array(gains), f"mapped_{target.var}": c["value"][p].astype(float),
        "interval_lo": lo[p].astype(float), "interval_hi": hi[p].astype(float), "mapped_class": np.array(cls, dtype=object),
        "scene_id": ids[c["scene"][p]].astype(object), "method": np.full(len(p), method, dtype=object),
    }
    if prob is not None:
        for i, v in enumerate(thresholds):
            fields[f"p_above_{v:g}"] = prob[:, i].astype(float)
    _write_gpkg(out, lon[p], lat[p], fields)
    pool_out = float((di > thr).mean())
    summary = {"out": str(out), "cube": redact_url(cube), "epoch": day, "method": method, "n": int(len(p)),
               "n_requested": int(n), "spacing_m": spacing_m, "seed": seed, "pool": int(len(keep)),
               "eligible_pixels": int(cand["eligible"]), "aoa_threshold": thr,
               "pool_outside_aoa": pool_out, "pool_outside_aoa_with_sites": float((di_after > thr).mean()),
               "sites_outside_aoa": int((di[p] > thr).sum()), "median_site_di": float(np.median(di[p])),
               "classes": {k: cls.count(k) for k in labels if k in cls}, "seconds": round(time.time() - t0, 1)}
    if len(p) < n:
        log(f"      only {len(p)} of {n} sites fit at {spacing_m:g} m apart in the pool: lower --spacing or widen --bbox")
    log(f"[3/3] wrote {len(p)} sites to {out}: {summary['sites_outside_aoa']} outside the area of applicability; with them as "
        f"training sites the pool outside it would fall from {100 * pool_out:.1f} % to "
        f"{100 * summary['pool_outside_aoa_with_sites']:.1f} % (same model)")
    return summary


def _write_gpkg(out: str | Path, lon, lat, fields: dict) -> None:
    """A GeoPackage of WGS84 points, written to a temporary name and renamed (a failure leaves no half file)."""
    import pyogrio.raw
    import shapely

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        pyogrio.raw.write(str(tmp), shapely.to_wkb(shapely.points(lon, lat)), list(fields.values()), list(fields),
                          layer="sites", driver="GPKG", geometry_type="Point", crs="EPSG:4326")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
