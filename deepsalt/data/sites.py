"""`deepsalt sites`: field sites (a place, a sampling date, measured values) become training rows.

Each site takes the clear pixel nearest in time, within ``max_days`` of its sampling date, through the code the
mapping reads with (``EnMAPScene.pixels``: one window per scene, the pixel that holds the point by index, the same
quality layers, the item's gains and offsets) and the covariates through the mapping's sampler
(``sample_covariates``). A pixel is valid where no quality layer flags it and no band the model reads is nodata
(``exclude_bands``, as training's): a product's bad bands remove nothing. Scenes are read as Ray tasks, one per
scene; a site whose nearest scene is cloudy there tries the next nearest, round by round.

Sites: CSV, Parquet, GeoPackage (point features) or GeoJSON, with ``lon``/``lat`` (also ``longitude``/``latitude``,
``x``/``y``) or point geometries in WGS84, a date (``date``, ``sampling_date``, ``datetime`` or
``observation_date``), one or more target columns (``deepsalt.targets``: ``ece_dsm``, ``soc``...) and an optional id
(``site_id`` or ``id``); other columns (``region``, ``koppen``, ``texture_class``...) are kept.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.covariates import COVARIATE_NAMES, COVARIATES, sample_covariates
from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url
from deepsalt.spectra.bands import EXCLUDED_BANDS, enmap_bands, select_bands

LON, LAT = ("lon", "longitude", "x"), ("lat", "latitude", "y")
DATES = ("date", "sampling_date", "datetime", "observation_date")
IDS = ("site_id", "id")
REASONS = {"no_scene": "no scene within --max-days covers it", "outside": "outside every scene's raster",
           "swath": "outside the swath (nodata in every band)", "nodata": "nodata in a band the model reads",
           "no_covariates": "no covariate value", "covariates_range": "a covariate outside its physical range"}


def _gpkg_points(path: str) -> pd.DataFrame:
    """The features of a GeoPackage's first feature table as columns, its point geometry as lon/lat (WGS84, or any
    CRS the file declares, transformed)."""
    from pyproj import CRS, Transformer

    local = path
    if "://" in path:
        local = tempfile.mkstemp(suffix=".gpkg")[1]
        fsspec.core.url_to_fs(path)[0].get(fsspec.core.url_to_fs(path)[1], local)
    con = sqlite3.connect(f"file:{local}?mode=ro", uri=True)
    try:
        table, col, srs = con.execute("SELECT c.table_name, g.column_name, g.srs_id FROM gpkg_contents c JOIN gpkg_geometry_columns g "
                                      "ON c.table_name = g.table_name WHERE c.data_type = 'features' LIMIT 1").fetchone()
        wkt = con.execute("SELECT definition FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs,)).fetchone()
        df = pd.read_sql_query(f'SELECT * FROM "{table}"', con)
    except (sqlite3.Error, TypeError) as e:
        raise DeepSaltInputError(path, f"not a GeoPackage with a feature table ({e})", "write the sites as points") from None
    finally:
        con.close()
    xy = [_gpkg_point(b, path) for b in df.pop(col)]
    df["lon"], df["lat"] = [p[0] for p in xy], [p[1] for p in xy]
    if wkt and wkt[0] and srs not in (4326, 0, -1):
        t = Transformer.from_crs(CRS.from_user_input(wkt[0]), "EPSG:4326", always_xy=True)
        df["lon"], df["lat"] = t.transform(df["lon"].to_numpy(), df["lat"].to_numpy())
    return df


def _gpkg_point(blob: bytes, where: str) -> tuple[float, float]:
    """x, y of a GeoPackage geometry blob holding a WKB point (header: 'GP', version, flags, srs id, envelope)."""
    if blob is None or blob[:2] != b"GP":
        raise DeepSaltInputError(where, "a feature without a GeoPackage geometry", "every site needs a point")
    flags = blob[3]
    env = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 7, 0)
    wkb = blob[8 + env:]
    order = "<" if wkb[0] == 1 else ">"
    kind = struct.unpack(order + "I", wkb[1:5])[0] % 1000
    if kind != 1:
        raise DeepSaltInputError(where, f"a feature whose geometry is not a point (WKB type {kind})", "sites are points")
    return struct.unpack(order + "dd", wkb[5:21])


def _geojson(path: str) -> pd.DataFrame:
    with fsspec.open(path, "r") as f:
        doc = json.load(f)
    rows = []
    for i, feat in enumerate(doc.get("features", [])):
        g = feat.get("geometry") or {}
        if g.get("type") != "Point":
            raise DeepSaltInputError(path, f"feature {i} is a {g.get('type')}, not a Point", "sites are points")
        rows.append({**(feat.get("properties") or {}), "lon": g["coordinates"][0], "lat": g["coordinates"][1]})
    return pd.DataFrame(rows)


def read_sites(path: str, targets: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Sites with columns ``site_id``, ``lon``, ``lat``, ``date`` (a date), the targets and any other columns; and the
    target columns found (``targets``, or every target column ``deepsalt.targets`` knows that the file has)."""
    from deepsalt.targets import TARGETS

    low = str(path).lower()
    try:
        if low.endswith(".gpkg"):
            df = _gpkg_points(path)
        elif low.endswith((".geojson", ".json")):
            df = _geojson(path)
        elif low.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except FileNotFoundError:
        raise DeepSaltInputError(path, "does not exist", "check the path") from None
    except DeepSaltInputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DeepSaltInputError(path, f"not a readable site table ({type(e).__name__}: {str(e)[:120]})",
                                 "pass CSV, Parquet, GeoPackage or GeoJSON") from None
    cols = {c.lower(): c for c in df.columns}
    if "geometry" in cols and not any(c in cols for c in LON):  # WKT points in a CSV/Parquet column
        pts = df[cols["geometry"]].astype(str).str.extract(r"POINT\s*\(\s*([-\d.eE+]+)\s+([-\d.eE+]+)", flags=re.I)
        df["lon"], df["lat"] = pts[0].astype(float), pts[1].astype(float)
        cols = {c.lower(): c for c in df.columns}
    lon = next((cols[c] for c in LON if c in cols), None)
    lat = next((cols[c] for c in LAT if c in cols), None)
    date = next((cols[c] for c in DATES if c in cols), None)
    if lon is None or lat is None:
        raise DeepSaltInputError(path, "no lon/lat (or longitude/latitude, x/y) columns and no point geometry", "add them (WGS84 degrees)")
    if date is None:
        raise DeepSaltInputError(path, f"no date column ({', '.join(DATES)})", "add each site's sampling date (YYYY-MM-DD)")
    found = targets or [t.column for t in TARGETS.values() if t.column in df.columns]
    missing = [t for t in found if t not in df.columns]
    if not found or missing:
        raise DeepSaltInputError(path, f"no target column{' ' + ', '.join(missing) if missing else ''}",
                                 f"name the measured values {', '.join(t.column for t in TARGETS.values())}, or pass --targets")
    out = df.rename(columns={lon: "lon", lat: "lat", date: "date"})
    idc = next((cols[c] for c in IDS if c in cols), None)
    out["site_id"] = out.pop(idc).astype(str) if idc else [f"site{i}" for i in range(len(out))]
    parsed = pd.to_datetime(out["date"], errors="coerce", utc=True)
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DeepSaltInputError(path, f"{int(parsed.isna().sum())} sites have no readable date (first: row {i}, "
                                 f"{out['date'].iloc[i]!r})", "write dates as YYYY-MM-DD")
    out["date"] = parsed.dt.tz_localize(None).dt.normalize()
    from deepsalt.data.lab import check_lat_lon

    check_lat_lon(out["lat"], out["lon"], path)
    return out.reset_index(drop=True), found


def _scene_pixels(item_json: str, lon, lat, quality, keep_names, allow_http: bool) -> dict:
    """One scene's pixels at the points (a Ray task): reflectance of every band, row/col, and the reason a pixel is
    unusable, by the mapping's rules."""
    import pystac

    from deepsalt.data.enmap import EnMAPScene

    scene = EnMAPScene.from_item(pystac.Item.from_dict(json.loads(item_json)), allow_http)
    px = scene.pixels(np.asarray(lon), np.asarray(lat), tuple(quality))
    kept = np.array([n in keep_names for n in scene.bands.names])
    miss = px["dn"] == scene.nodata
    reason = np.full(len(lon), "", dtype=object)
    reason[~px["inside"]] = "outside"
    masked = px["inside"] & (px["flags"] > 0)
    reason[masked] = [f"masked:{quality[f - 1]}" for f in px["flags"][masked]]
    clear = px["inside"] & (px["flags"] == 0)
    reason[clear & miss.all(1)] = "swath"
    reason[clear & ~miss.all(1) & miss[:, kept].any(1)] = "nodata"
    bands = enmap_bands()
    sel = select_bands(bands.names, bands.centers_nm, scene.bands.names, scene.bands.centers_nm, f"STAC item {scene.id}")
    return {"refl": scene.reflectance(px["dn"])[:, sel], "row": px["row"], "col": px["col"], "reason": reason}


def extract_sites(sites: str, stac: str, covariates: str, out: str, max_days: int = 30, targets: list[str] | None = None,
                  quality: tuple[str, ...] = tuple(QUALITY_ASSETS), exclude_bands=EXCLUDED_BANDS,
                  collection: str = "ENMAP_HSI_L2A", allow_http: bool = False, log=print) -> dict:
    """Write the training rows (Parquet) of the sites that have a clear pixel, and ``<out>.drops.csv`` for the rest;
    returns the summary. No extracted site at all is an error that says why."""
    import ray

    from deepsalt.data.covariates import check_covariate_ranges
    from deepsalt.data.stac import item_time, priority, search_items
    from deepsalt.raycluster import init_ray

    t0 = time.time()
    df, found = read_sites(sites, targets)
    lon, lat = df["lon"].to_numpy(float), df["lat"].to_numpy(float)
    days = np.timedelta64(int(max_days), "D")
    lo, hi = df["date"].min() - days, df["date"].max() + days
    bbox = (float(lon.min()) - 1e-6, float(lat.min()) - 1e-6, float(lon.max()) + 1e-6, float(lat.max()) + 1e-6)
    items = search_items(stac, collection, bbox, f"{lo.date().isoformat()}/{hi.date().isoformat()}")
    when = {i.id: np.datetime64(item_time(i).replace(tzinfo=None), "D") for i in items}
    site_day = df["date"].to_numpy().astype("datetime64[D]")
    cands = []  # per site: its scenes within max_days that cover it, nearest in time first (then the composite order)
    for k in range(len(df)):
        c = [it for it in items if it.bbox[0] <= lon[k] <= it.bbox[2] and it.bbox[1] <= lat[k] <= it.bbox[3]
             and abs(int((when[it.id] - site_day[k]).astype(int))) <= max_days]
        cands.append(sorted(c, key=lambda it: (abs(int((when[it.id] - site_day[k]).astype(int))), priority(it))))
    bands = enmap_bands()
    keep_names = set(np.array(bands.names)[bands.model_band_mask(exclude_bands)])
    n = len(df)
    refl = np.full((n, len(bands)), np.nan, np.float32)
    scene_id = np.full(n, None, dtype=object)
    rowcol = np.full((n, 2), -1, np.int64)
    reason = np.array(["no_scene" if not c else "" for c in cands], dtype=object)
    done = np.zeros(n, bool)
    if any(cands):
        init_ray()
        task = ray.remote(num_cpus=1)(_scene_pixels)
    rnd = 0
    while True:
        todo = [k for k in range(n) if not done[k] and rnd < len(cands[k])]
        if not todo:
            break
        by_scene: dict = {}
        for k in todo:
            by_scene.setdefault(cands[k][rnd].id, []).append(k)
        refs = {sid: task.remote(json.dumps(next(i for i in items if i.id == sid).to_dict(include_self_link=False)),
                                 lon[ks], lat[ks], quality, keep_names, allow_http) for sid, ks in by_scene.items()}
        for sid, ref in refs.items():
            got, ks = ray.get(ref), np.array(by_scene[sid])
            ok = got["reason"] == ""
            reason[ks] = got["reason"]
            hit = ks[ok]
            refl[hit], scene_id[hit], rowcol[hit] = got["refl"][ok], sid, np.column_stack([got["row"], got["col"]])[ok]
            done[hit] = True
        rnd += 1
        log(f"  sites: round {rnd}: {len(refs)} scene(s), {int(done.sum())} of {n} sites have a clear pixel")
    cov = np.full((n, len(COVARIATE_NAMES)), np.nan, np.float32)
    if done.any():
        cov[done] = sample_covariates(covariates, lon[done], lat[done])
    no_cov = done & ~np.isfinite(cov).all(1)
    reason[no_cov], done[no_cov] = "no_covariates", False
    bad = np.zeros(n, bool)
    for j, c in enumerate(COVARIATES):
        v = cov[:, j]
        bad |= done & np.isfinite(v) & ((v < c.valid_range[0]) | (v > c.valid_range[1]))
    if bad.sum() > max(0, 0.5 * done.sum()):  # most out of range: the rasters' units, not the sites
        check_covariate_ranges(cov[done].T, covariates)
    reason[bad], done[bad] = "covariates_range", False
    acquired = np.array([when[s] if s else np.datetime64("NaT") for s in scene_id], dtype="datetime64[D]")
    rows = pd.DataFrame({"site_id": df["site_id"], "longitude": lon, "latitude": lat, "date": df["date"].dt.date.astype(str)})
    for t in found:
        rows[t] = df[t].to_numpy()
    rows["scene_id"] = scene_id
    rows["acquired"] = pd.Series(acquired).dt.date.astype(str).where(~pd.isna(acquired), None)
    rows["days_apart"] = (acquired - site_day).astype("timedelta64[D]").astype(float)
    rows["row"], rows["col"] = rowcol[:, 0], rowcol[:, 1]
    extra = [c for c in df.columns if c not in ("site_id", "lon", "lat", "date", *found)]
    for c in extra:
        rows[c] = df[c].to_numpy()
    rows = pd.concat([rows, pd.DataFrame(refl, columns=[f"refl_{b}" for b in bands.names]),
                      pd.DataFrame(cov, columns=list(COVARIATE_NAMES))], axis=1)
    drops = pd.DataFrame({"site_id": df["site_id"], "lon": lon, "lat": lat, "date": rows["date"], "reason": reason})[~done]
    drops["detail"] = [REASONS.get(r, f"masked by {r.split(':', 1)[-1]} ({QUALITY_ASSETS[r.split(':', 1)[-1]].what})"
                                   if r.startswith("masked:") else r) for r in drops["reason"]]
    counts = drops["reason"].value_counts().to_dict()
    summary = {"sites": n, "extracted": int(done.sum()), "dropped": {k: int(v) for k, v in counts.items()},
               "targets": found, "scenes": len(items), "max_days": int(max_days), "out": str(out),
               "drops": f"{out}.drops.csv", "seconds": round(time.time() - t0, 1)}
    if not done.any():
        raise DeepSaltInputError(redact_url(sites), f"none of {n} sites has a clear pixel: "
                                 + "; ".join(f"{v} {k}" for k, v in counts.items()),
                                 "widen --max-days, check the catalogue's dates and places, or --quality-masks")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    rows[done].reset_index(drop=True).to_parquet(out, index=False)
    drops.to_csv(f"{out}.drops.csv", index=False)
    log(f"sites: {n} in, {int(done.sum())} extracted; dropped: "
        + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none") + f" ({summary['drops']})")
    return summary
