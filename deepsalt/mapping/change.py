"""`deepsalt change`: how the mapped property changed between two epochs of a cube, per pixel, with an interval, a
three-way call and, per region, the area that crossed each class threshold.

Per pixel mapped in both epochs: the change in the space the model learns in (``ln e2 - ln e1`` for a log-scale
target such as ECe, where the call is made) and in the target's units. The two epochs were mapped by the same model
from the same soil: most of each epoch's predictive error is the model's error for that soil, which the difference
cancels, so the epochs' own intervals would overstate the change's uncertainty many times over. The noise of the
difference is instead measured where it shows, in the difference itself, per pair of acquisitions (the scenes a
pixel came from in each epoch): another atmosphere or calibration moves every pixel of a scene alike, so the pair's
median change is its ``shift``, taken out, and the robust spread around it (1.4826 x the median absolute deviation)
its ``sigma``. Both are what two looks at unchanged soil give as long as less than half of the pair's pixels
changed: where more did, the shift hides part of the change and sigma grows, and fewer pixels are called (the call
errs towards "no detectable change"; a change that moved a whole scene alike is taken for the acquisition's).
Pairs with fewer than ``MIN_PAIR_PIXELS`` pixels take no shift and the spread of the whole region. The change's
90 % interval is ``change +- 1.645 sigma``; a pixel is called ``increase`` (1) or ``decrease`` (-1) where the interval at the stated
``confidence`` (two-sided, 0.99 by default) excludes 0, else ``no detectable change`` (0): where the difference's
noise is normal, about 1 - confidence of the unchanged land is called changed.

Honest flags, never calls (``call`` is -128 there, ``flag`` says why): 1, not mapped in one epoch; 2, outside the
area of applicability in either epoch; 3, the two acquisitions lie more than ``season_days`` apart in the year
(a wet spring against a dry autumn is not a change of the soil).

The output is a Zarr v3 group (CF attributes, ``spatial_ref``, readable with ``xarray.open_zarr`` and rioxarray)
on the cube's grid, cut to the tiles compared: ``change``, ``change_ln`` (log targets), ``change_lo`` and
``change_hi`` (the 90 % interval, in the space of the call), ``call``, ``flag``; its attributes hold the summary
(``sigma``, counts, and per region the area that crossed each class threshold upwards and downwards, with the range
that the change's 90 % interval allows).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from pyproj import CRS
from scipy.stats import norm

from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import epoch_days, readonly_session, recorded_tiles
from deepsalt.mapping.grid import Grid
from deepsalt.redact import redact_url
from deepsalt.targets import get_target

FLAGS = {0: "called", 1: "not mapped in both epochs", 2: "outside the area of applicability in an epoch",
         3: "acquired in different seasons"}
CALL_FILL = -128
#: pixels per tile kept for the spread of the change (seeded): enough for a robust sigma, bounded for a continent
SAMPLE_PER_TILE = 4096


def _epoch_index(root, epoch: str, flag: str) -> int:
    times = root["time"][:] if root["time"].shape[0] else np.zeros(0, "int64")
    try:
        day = epoch_days(epoch)
    except ValueError:
        raise DeepSaltInputError(f"{flag} {epoch}", "is not a date", "pass an epoch as YYYY or YYYY-MM-DD") from None
    hit = np.flatnonzero(times == day)
    if not hit.size:
        have = ", ".join(str(np.datetime64(int(t), "D")) for t in times) or "none"
        raise DeepSaltInputError(f"{flag} {epoch}", "the cube has no such epoch", f"epochs: {have}")
    return int(hit[0])


def _doy_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Days between two dates' places in the year (circular: 30 December and 2 January are 3 days apart)."""
    da = (a.astype("datetime64[D]") - a.astype("datetime64[Y]")).astype(int)
    db = (b.astype("datetime64[D]") - b.astype("datetime64[Y]")).astype(int)
    d = np.abs(da - db)
    return np.minimum(d, 365 - d)


class _Pair:
    """Both epochs of one tile: the value, validity, AOA and acquisition date, and the change in the call's space."""

    def __init__(self, root, var: str, t1: int, t2: int, ys: slice, xs: slice, log: bool, season_days: int):
        def read(name, t):
            return root[name][t, ys, xs]

        e1, e2 = read(var, t1).astype(np.float64), read(var, t2).astype(np.float64)
        v1, v2 = read("valid", t1) == 1, read("valid", t2) == 1
        self.either = v1 | v2
        mapped = v1 & v2 & np.isfinite(e1) & np.isfinite(e2)
        aoa = (read("aoa", t1) == 1) & (read("aoa", t2) == 1)
        d1, d2 = read("acq_date", t1), read("acq_date", t2)
        season = _doy_apart(np.where(d1 < 0, 0, d1).astype("datetime64[D]"), np.where(d2 < 0, 0, d2).astype("datetime64[D]")) <= season_days
        self.flag = np.select([~mapped, ~aoa, ~season], [1, 2, 3], 0).astype(np.uint8)
        self.e1, self.e2 = e1, e2
        # the pair of acquisitions each pixel compares (scene indices of the two epochs, -1 where none)
        self.pair = (read("scene", t1).astype(np.int64) << 32) | (read("scene", t2).astype(np.int64) & 0xFFFFFFFF)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.d = np.where(mapped, (np.log(e2) - np.log(e1)) if log else (e2 - e1), np.nan)


def change(url: str, e_from: str, e_to: str, out: str, bbox: tuple[float, float, float, float] | None = None,
           confidence: float = 0.99, season_days: int = 45, storage_options: dict | None = None, seed: int = 0,
           world: str | Path | None = None, regions: str | None = None, region_field: str | None = None,
           layer: str | None = None, log=print) -> dict:
    """Write the change store at ``out`` (see the module docstring) and return its summary; with ``regions`` (a
    vector file of polygons, read by GDAL through pyogrio; ``region_field`` names them, ``layer`` picks a layer) the
    summary's ``regions`` gives each polygon's calls and crossed areas; with ``world`` (a synthetic world with a
    second epoch) its ``truth`` scores the calls (``score_change``)."""
    if not 0.5 <= confidence < 1:
        raise DeepSaltInputError(f"--confidence {confidence}", "is not a probability in [0.5, 1)", "e.g. --confidence 0.95")
    session = readonly_session(url, storage_options)
    root = zarr.open_group(session.store, mode="r")
    grid = Grid(**root.attrs["grid"])
    target = get_target(root.attrs.get("target") or "ece")
    var = target.var
    t1, t2 = _epoch_index(root, e_from, "--from"), _epoch_index(root, e_to, "--to")
    if t1 == t2:
        raise DeepSaltInputError(f"--from {e_from} --to {e_to}", "name the same epoch", "pass two different epochs")
    tiles = recorded_tiles(session, t1) & recorded_tiles(session, t2)
    if bbox is not None:
        box = grid.tile_box(bbox, "EPSG:4326")
        tiles = {k for k in tiles if k in box}
    if not tiles:
        raise DeepSaltInputError(redact_url(url), f"no tile is mapped in both {e_from} and {e_to}" + (f" inside {bbox}" if bbox else ""),
                                 "map both epochs over the same region first (`deepsalt map --epoch E --datetime ...`)")
    ty0, tx0 = min(t for t, _ in tiles), min(x for _, x in tiles)
    ty1, tx1 = max(t for t, _ in tiles), max(x for _, x in tiles)
    sub = Grid(grid.crs, grid.res, grid.x0 + tx0 * grid.chunk * grid.res, grid.y0 - ty0 * grid.chunk * grid.res,
               min(grid.width - tx0 * grid.chunk, (tx1 - tx0 + 1) * grid.chunk),
               min(grid.height - ty0 * grid.chunk, (ty1 - ty0 + 1) * grid.chunk), grid.chunk)
    pixel_km2 = grid.res * grid.res / 1e6
    region = _bbox_mask(bbox, grid) if bbox is not None else None
    polygons = read_regions(regions, grid.crs, region_field, layer) if regions else {}

    # pass 1: the spread of the change where it could be called (a seeded sample per tile)
    rng = np.random.default_rng(seed)
    sample, keys = [], []
    for i, (ty, tx) in enumerate(sorted(tiles)):
        ys, xs = grid.tile_slices(ty, tx)
        p = _Pair(root, var, t1, t2, ys, xs, target.log, season_days)
        ok = np.flatnonzero((p.flag == 0) & (region(ys, xs) if region else True))
        pick = ok if ok.size <= SAMPLE_PER_TILE else rng.choice(ok, SAMPLE_PER_TILE, replace=False)
        sample.append(p.d.ravel()[pick])
        keys.append(p.pair.ravel()[pick])
    sample, keys = np.concatenate(sample), np.concatenate(keys)
    if not sample.size:
        raise DeepSaltInputError(redact_url(url), f"no pixel can be compared between {e_from} and {e_to}: every pixel mapped "
                                 "in both is outside the area of applicability or from another season",
                                 "compare epochs acquired in the same season, or check the AOA with `deepsalt point`")
    centre = float(np.median(sample))
    sigma = float(1.4826 * np.median(np.abs(sample - centre)))
    noise = _pair_noise(sample, keys, centre, sigma, list(root.attrs.get("scene_ids", [])))
    z_call, z90 = float(norm.ppf(0.5 + confidence / 2)), float(norm.ppf(0.95))

    # pass 2: per pixel, into a store that appears only when complete
    local = "://" not in out
    dest = Path(out)
    if local and dest.exists():
        raise DeepSaltInputError(f"--out {out}", "exists", "choose a new path (a change store is written once)")
    tmp = str(dest.parent / f".{dest.name}.partial-{os.getpid()}") if local else out
    thresholds = list(target.thresholds)
    counts = {v: 0 for k, v in FLAGS.items() if k}
    tally = _Tally(thresholds)
    per_region = {name: _Tally(thresholds) for name in polygons}
    try:
        g = _create(tmp, sub, target, storage_options, e_from, e_to)
        for ty, tx in sorted(tiles):
            ys, xs = grid.tile_slices(ty, tx)
            p = _Pair(root, var, t1, t2, ys, xs, target.log, season_days)
            if region:
                p.flag[~region(ys, xs) & (p.flag == 0)] = 1  # outside the bbox: not compared
            called = p.flag == 0
            shift, sd = noise.at(p.pair)
            p.d = p.d - shift  # the change of the soil: the acquisitions' common shift taken out
            lo, hi = p.d - z90 * sd, p.d + z90 * sd
            call = np.where(p.d - z_call * sd > 0, 1, np.where(p.d + z_call * sd < 0, -1, 0)).astype(np.int8)
            call[~called] = CALL_FILL
            for k, name in FLAGS.items():
                if k:  # "not mapped in both": counted where one epoch mapped it (a tile's empty corners are no news)
                    counts[name] += int(((p.flag == k) & p.either).sum())
            tally.add(p, call, lo, hi, target.log)
            if polygons:
                import shapely

                x = grid.x0 + (np.arange(xs.start, xs.stop) + 0.5) * grid.res
                y = grid.y0 - (np.arange(ys.start, ys.stop) + 0.5) * grid.res
                xx, yy = np.meshgrid(x, y)
                for name, geom in polygons.items():
                    inside = shapely.contains_xy(geom, xx, yy)
                    if inside.any():
                        per_region[name].add(p, np.where(inside, call, CALL_FILL), lo, hi, target.log)
            oy, ox = (ys.start - ty0 * grid.chunk, xs.start - tx0 * grid.chunk)
            sl = (slice(oy, oy + ys.stop - ys.start), slice(ox, ox + xs.stop - xs.start))
            keep = p.flag != 1
            g["change"][sl] = np.where(keep, p.e1 * np.expm1(p.d) if target.log else p.d, np.nan).astype(np.float32)
            if target.log:
                g["change_ln"][sl] = np.where(keep, p.d, np.nan).astype(np.float32)
            g["change_lo"][sl] = np.where(keep, lo, np.nan).astype(np.float32)
            g["change_hi"][sl] = np.where(keep, hi, np.nan).astype(np.float32)
            g["call"][sl] = call
            g["flag"][sl] = p.flag
        counts.update(tally.calls)
        summary = {"cube": redact_url(url), "from": e_from, "to": e_to, "target": var, "units": target.units,
                   "space": "ln" if target.log else target.units, "bbox": list(bbox) if bbox else None,
                   "confidence": confidence, "season_days": season_days, "sigma": round(sigma, 4), "median_change": round(centre, 4),
                   "sigma_from_pixels": int(sample.size), "acquisition_pairs": noise.table, "pixel_km2": pixel_km2, "pixels": counts,
                   **tally.summary(pixel_km2),
                   **({"regions": {name: {"pixels": t.calls, **t.summary(pixel_km2)} for name, t in per_region.items()}}
                      if polygons else {})}
        if world is not None:
            summary["truth"] = score_change(tmp, world)
        g.attrs["summary"] = summary
        if local:
            os.replace(tmp, dest)
    except BaseException:
        if local:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    called = counts["increase"] + counts["decrease"] + counts["no detectable change"]
    log(f"change {e_from} -> {e_to}: {called:,} px compared (sigma {sigma:.3f} {'ln ' if target.log else ''}{'' if target.log else target.units}), "
        f"{counts['increase']:,} increase, {counts['decrease']:,} decrease at {100 * confidence:g} % confidence; flagged: "
        + ", ".join(f"{counts[n]:,} {n}" for k, n in FLAGS.items() if k))
    return summary


#: an acquisition pair with fewer compared pixels than this takes the region's shift (0) and spread
MIN_PAIR_PIXELS = 500


class _PairNoise:
    """Per pair of acquisitions (the scenes a pixel came from in each epoch): the shift common to the whole pair (the
    median change: another atmosphere, another calibration, moves every pixel of a scene alike) and the robust spread
    around it; pairs with fewer than MIN_PAIR_PIXELS pixels take no shift and the region's spread."""

    def __init__(self, shift: dict, sd: dict, sigma: float, table: list):
        self.shift, self.sd, self.sigma, self.table = shift, sd, sigma, table

    def at(self, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shift, sd = np.zeros(pair.shape), np.full(pair.shape, self.sigma)
        for k in self.shift:
            m = pair == k
            shift[m], sd[m] = self.shift[k], self.sd[k]
        return shift, sd


def _pair_noise(sample: np.ndarray, keys: np.ndarray, centre: float, sigma: float, scene_ids: list) -> _PairNoise:
    def name(i):
        return scene_ids[i] if 0 <= i < len(scene_ids) else str(i)

    shift, sd, table = {}, {}, []
    for k in np.unique(keys):
        d = sample[keys == k]
        s1, s2 = int(k >> 32), int(np.int32(k & 0xFFFFFFFF))
        if d.size >= MIN_PAIR_PIXELS:
            shift[int(k)] = m = float(np.median(d))
            sd[int(k)] = float(1.4826 * np.median(np.abs(d - m)))
        table.append({"from_scene": name(s1), "to_scene": name(s2), "pixels_sampled": int(d.size),
                      "shift": round(shift.get(int(k), 0.0), 4), "sigma": round(sd.get(int(k), sigma), 4)})
    return _PairNoise(shift, sd, sigma, table)


class _Tally:
    """Calls and threshold crossings summed over tiles (for the whole comparison, or one region)."""

    def __init__(self, thresholds):
        self.thresholds = list(thresholds)
        self.calls = {"increase": 0, "decrease": 0, "no detectable change": 0}
        self.crossed = {f"{th:g}": {"up": [0, 0, 0], "down": [0, 0, 0]} for th in self.thresholds}  # [low, estimate, high] px

    def add(self, p: "_Pair", call: np.ndarray, lo: np.ndarray, hi: np.ndarray, log: bool) -> None:
        for k, v in (("increase", 1), ("decrease", -1), ("no detectable change", 0)):
            self.calls[k] += int((call == v).sum())
        for th in self.thresholds:
            _crossings(self.crossed[f"{th:g}"], p, call, lo, hi, th, log)

    def summary(self, pixel_km2: float) -> dict:
        n = sum(self.calls.values())
        return {"share_called_change": round((self.calls["increase"] + self.calls["decrease"]) / max(1, n), 4),
                "crossed_km2": {th: {k: {"estimate": round(v[1] * pixel_km2, 4),
                                         "interval90": [round(v[0] * pixel_km2, 4), round(v[2] * pixel_km2, 4)]}
                                     for k, v in c.items()} for th, c in self.crossed.items()}}


def read_regions(path: str, crs: str, field: str | None = None, layer: str | None = None) -> dict:
    """{name: polygon in ``crs``} from a vector file (GeoPackage, GeoJSON, Shapefile...: GDAL/OGR through pyogrio);
    named by ``field``, else by the first text field, else numbered."""
    import pyogrio
    import shapely
    from pyproj import Transformer

    try:
        layers = [str(n) for n, _ in pyogrio.list_layers(path)]
    except Exception as e:  # noqa: BLE001 - GDAL's errors: one line
        raise DeepSaltInputError(f"--regions {path}", f"not a readable vector file ({' '.join(str(e).split())[:120]})",
                                 "pass a GeoPackage, GeoJSON or Shapefile of polygons") from None
    if layer is None and len(layers) > 1:
        raise DeepSaltInputError(f"--regions {path}", f"holds {len(layers)} layers ({', '.join(layers[:6])})", "pass --layer NAME")
    meta, _, geom, fields = pyogrio.raw.read(path, layer=layer)
    geoms = shapely.from_wkb(geom) if geom is not None else np.array([])
    if not len(geoms) or not all(g is not None and g.geom_type in ("Polygon", "MultiPolygon") for g in geoms):
        raise DeepSaltInputError(f"--regions {path}", "holds no polygons, or geometries other than polygons",
                                 "pass the regions as (multi)polygons")
    names = list(meta["fields"])
    if field is not None and field not in names:
        raise DeepSaltInputError(f"--region-field {field}", f"is not a field of {path}", f"fields: {', '.join(names) or 'none'}")
    col = field or next((n for n, f in zip(names, fields) if f.dtype == object), None)
    labels = [str(v) for v in fields[names.index(col)]] if col else [f"region {i + 1}" for i in range(len(geoms))]
    src = meta.get("crs") or "EPSG:4326"
    tr = Transformer.from_crs(src, crs, always_xy=True)
    out = {}
    for label, g in zip(labels, geoms):
        g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        shapely.prepare(g)
        out[label] = shapely.union(out[label], g) if label in out else g
    return out


def _crossings(acc: dict, p: _Pair, call: np.ndarray, lo: np.ndarray, hi: np.ndarray, th: float, log: bool) -> None:
    """Pixels called increase (decrease) whose value crossed ``th`` upwards (downwards): the estimate, and the least and
    most that the change's 90 % interval allows, the first epoch's value held fixed."""
    def after(d):
        return p.e1 * np.exp(d) if log else p.e1 + d

    with np.errstate(invalid="ignore", over="ignore"):
        up, down = (call == 1) & (p.e1 < th), (call == -1) & (p.e1 >= th)
        for k, sel, crossed in (("up", up, lambda v: v >= th), ("down", down, lambda v: v < th)):
            acc[k][0] += int((sel & crossed(after(lo if k == "up" else hi))).sum())
            acc[k][1] += int((sel & crossed(after(p.d))).sum())
            acc[k][2] += int((sel & crossed(after(hi if k == "up" else lo))).sum())


def _bbox_mask(bbox, grid: Grid):
    """``mask(ys, xs)``: the grid cells of a tile whose centres lie inside the WGS84 ``bbox``."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)

    def mask(ys: slice, xs: slice) -> np.ndarray:
        x = grid.x0 + (np.arange(xs.start, xs.stop) + 0.5) * grid.res
        y = grid.y0 - (np.arange(ys.start, ys.stop) + 0.5) * grid.res
        lon, lat = to_ll.transform(*np.meshgrid(x, y))
        return (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])

    return mask


def _create(where: str, grid: Grid, target, storage_options, e_from: str, e_to: str):
    t = target
    root = zarr.open_group(where, mode="w", storage_options=storage_options if "://" in where else None, attributes={
        "Conventions": "CF-1.8", "title": f"DeepSalt {t.short} change {e_from} to {e_to}",
        "summary_text": __doc__.split("\n\n")[1].replace("\n", " "), "grid": grid.to_dict(), "from": e_from, "to": e_to,
        "flag_meanings": json.dumps(FLAGS)})
    crs = CRS.from_user_input(grid.crs)
    sr = root.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    sr.attrs.update({**crs.to_cf(), "crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
                     "GeoTransform": " ".join(str(v) for v in grid.transform.to_gdal())})
    for name, n, origin, step, std in (("x", grid.width, grid.x0, grid.res, "projection_x_coordinate"),
                                       ("y", grid.height, grid.y0, -grid.res, "projection_y_coordinate")):
        a = root.create_array(name, shape=(n,), dtype="float64", chunks=(min(n, 1 << 16),), dimension_names=(name,))
        a[:] = origin + (np.arange(n) + 0.5) * step
        a.attrs.update({"standard_name": std, "units": "m", "axis": name.upper()})
    space = f"ln {t.short}" if t.log else t.units
    specs = {
        "change": ("float32", np.nan, {"units": t.units, "long_name": f"{t.short} {e_to} minus {e_from}"}),
        **({"change_ln": ("float32", np.nan, {"units": "1", "long_name": f"ln {t.short} {e_to} minus ln {t.short} {e_from}"})} if t.log else {}),
        "change_lo": ("float32", np.nan, {"units": "1" if t.log else t.units, "long_name": f"lower end of the 90 % interval of the change in {space}"}),
        "change_hi": ("float32", np.nan, {"units": "1" if t.log else t.units, "long_name": f"upper end of the 90 % interval of the change in {space}"}),
        "call": ("int8", CALL_FILL, {"long_name": f"change of {t.short} called at the stated confidence", "flag_values": [-1, 0, 1],
                                     "flag_meanings": "decrease no_detectable_change increase", "_FillValue": CALL_FILL}),
        "flag": ("uint8", 1, {"long_name": "why a pixel was not called", "flag_values": list(FLAGS),
                              "flag_meanings": " ".join(v.replace(" ", "_") for v in FLAGS.values())}),
    }
    for name, (dtype, fill, attrs) in specs.items():
        a = root.create_array(name, shape=(grid.height, grid.width), chunks=(grid.chunk, grid.chunk), dtype=dtype,
                              fill_value=fill, dimension_names=("y", "x"))
        a.attrs.update({**attrs, "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"})
    return root



def change_at(store: str, lon: float, lat: float, storage_options: dict | None = None) -> dict:
    """The change store's values at one WGS84 point: the change, its 90 % interval, the call or why none was made."""
    from pyproj import Transformer

    g = zarr.open_group(store, mode="r", storage_options=storage_options if "://" in store else None)
    grid = Grid(**g.attrs["grid"])
    row, col = grid.cell_of(*Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(lon, lat))
    s = g.attrs["summary"]
    if not (0 <= row < grid.height and 0 <= col < grid.width):
        return {"from": s["from"], "to": s["to"], "compared": False, "reason": "outside the change store's extent"}
    flag = int(g["flag"][row, col])
    out = {"from": s["from"], "to": s["to"], "compared": flag == 0}
    if flag == 0 or flag > 1:
        out["change"] = round(float(g["change"][row, col]), 4)
        if "change_ln" in g:
            out["change_ln"] = round(float(g["change_ln"][row, col]), 4)
        out["interval90"] = [round(float(g["change_lo"][row, col]), 4), round(float(g["change_hi"][row, col]), 4)]
    if flag == 0:
        out["call"] = {1: "increase", -1: "decrease", 0: "no detectable change"}[int(g["call"][row, col])]
        out["confidence"] = s["confidence"]
    else:
        out["reason"] = FLAGS[flag]
    return out


#: "crossed by a wide margin": from below threshold / WIDE to above threshold x WIDE (or back)
WIDE = 1.5


def score_change(store: str, world: str | Path, threshold: float = 4.0) -> dict:
    """A change store against a synthetic world's truth (``deepsalt world --second-epoch``): on the pixels called,
    the share called a change where the soil did not change (``false_change_rate``), and the share called an
    increase (decrease) where ECe truly crossed ``threshold`` upwards (downwards) by a wide margin (from below
    threshold / WIDE to above threshold x WIDE, or back): ``detection_up``, ``detection_down``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    world = Path(world)
    meta = json.loads((world / "world.json").read_text()).get("second_epoch")
    if not meta:
        raise DeepSaltInputError(world, "has no second epoch", "build it with `deepsalt world --second-epoch`")
    g = zarr.open_group(store, mode="r")
    grid = Grid(**g.attrs["grid"])
    call, flag = g["call"][:], g["flag"][:]
    d = g["change_ln"][:] if "change_ln" in g else g["change"][:]

    def warp(path, fill):
        out = np.full(call.shape, fill, np.float32)
        with rasterio.open(path) as src:
            reproject(src.read(1).astype(np.float32), out, src_transform=src.transform, src_crs=src.crs, src_nodata=fill,
                      dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=fill, resampling=Resampling.nearest)
        return out

    truth = np.full(call.shape, np.nan, np.float32)
    e1, e2 = truth.copy(), truth.copy()
    for s in meta["scenes"]:
        c = warp(world / "truth" / f"{s['id']}_CHANGE.TIF", -128)
        a, b = warp(world / "truth" / f"{s['first_epoch_id']}_ECE.TIF", np.nan), warp(world / "truth" / f"{s['id']}_ECE.TIF", np.nan)
        new = np.isnan(truth) & (c > -128)
        truth[new], e1[new], e2[new] = c[new], a[new], b[new]
    called = (flag == 0) & np.isfinite(truth) & np.isfinite(e1) & np.isfinite(e2)
    same = called & (truth == 0)
    up = called & (e1 <= threshold / WIDE) & (e2 >= threshold * WIDE)
    down = called & (e1 >= threshold * WIDE) & (e2 <= threshold / WIDE)

    def share(sel, hit):
        return round(float(hit[sel].mean()), 4) if sel.any() else None

    return {"pixels_called": int(called.sum()), "unchanged": int(same.sum()), "false_change_rate": share(same, call != 0),
            "crossed_up_widely": int(up.sum()), "detection_up": share(up, call == 1),
            "crossed_down_widely": int(down.sum()), "detection_down": share(down, call == -1),
            "salinised": int((called & (truth > 0)).sum()), "detection_salinised": share(called & (truth > 0), call == 1),
            "reclaimed": int((called & (truth < 0)).sum()), "detection_reclaimed": share(called & (truth < 0), call == -1),
            # what the map saw: its mean change (in the space of the call) where the soil was salinised, unchanged,
            # reclaimed, beside the true one
            "mean_change": {k: {"mapped": round(float(np.nanmean(d[called & (truth == v)])), 4) if (called & (truth == v)).any() else None,
                                "true": round(float(np.nanmean((np.log(e2) - np.log(e1))[called & (truth == v)])), 4)
                                if (called & (truth == v)).any() else None}
                            for k, v in (("salinised", 1), ("unchanged", 0), ("reclaimed", -1))},
            "threshold": threshold, "wide_margin_factor": WIDE}
