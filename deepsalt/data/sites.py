"""`deepsalt sites`: field sites (a place, a sampling date, measured values) become training rows.

Each site takes the clear pixel nearest in time, within ``max_days`` of its sampling date, through the code the
mapping reads with (``EnMAPScene.pixels``: one window per scene, the pixel that holds the point by index, the same
quality layers, the item's gains and offsets) and the covariates through the mapping's sampler
(``sample_covariates``). A pixel is valid where no quality layer flags it and no band the model reads is nodata
(``exclude_bands``, as training's): a product's bad bands remove nothing. Scenes are read as Ray tasks, one per
scene; a site whose nearest scene is cloudy there tries the next nearest, round by round.

Sites: CSV (``,``, or ``;`` with decimal commas), Parquet or GeoParquet, GeoPackage, GeoJSON, FlatGeobuf or
Shapefile (read by GDAL/OGR through pyogrio), with ``lon``/``lat`` (also ``longitude``/``latitude``, ``x``/``y``) in
WGS84 or point geometries in any CRS the file declares, a date (``date``, ``sampling_date``, ``datetime`` or
``observation_date``), one or more target columns (``deepsalt.targets``: ``ece_dsm``, ``soc``...) and an optional id
(``site_id`` or ``id``); other columns (``region``, ``koppen``, ``texture_class``...) are kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.cog import one_gdal_env
from deepsalt.data.covariates import COVARIATE_NAMES, COVARIATES, sample_covariates
from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url
from deepsalt.spectra.bands import EXCLUDED_BANDS, enmap_bands, select_bands

LON, LAT = ("lon", "longitude", "x"), ("lat", "latitude", "y")
DATES = ("date", "sampling_date", "datetime", "observation_date")
IDS = ("site_id", "id")
REASONS = {"no_scene": "no scene within --max-days covers it", "outside": "outside every scene's raster",
           "swath": "outside the swath (nodata in every band)", "nodata": "nodata in a band the model reads",
           "no_covariates": "no covariate value", "covariates_range": "a covariate outside its physical range",
           "swapped": "lon/lat look swapped: the site is in no scene, but (lat, lon) falls in one"}


VECTOR = (".gpkg", ".geojson", ".json", ".fgb", ".shp", ".shp.zip")
ISO_DATE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"


def _points(geoms, crs, where: str) -> tuple[np.ndarray, np.ndarray]:
    """lon, lat (WGS84) of point geometries (shapely; Z ignored; a MultiPoint of one point is that point), from ``crs``
    (anything pyproj reads; None: WGS84)."""
    import shapely
    from pyproj import CRS, Transformer

    geoms = np.asarray(geoms, dtype=object)
    kinds = shapely.get_type_id(geoms)
    multi = kinds == 4
    if multi.any():
        n = shapely.get_num_geometries(geoms[multi])
        if (n != 1).any():
            i = int(np.flatnonzero(multi)[np.flatnonzero(n != 1)[0]])
            raise DeepSaltInputError(where, f"feature {i} is a MultiPoint of {int(n[n != 1][0])} points",
                                     "write one point per site (explode the MultiPoint)")
        geoms[multi] = shapely.get_geometry(geoms[multi], 0)
        kinds = shapely.get_type_id(geoms)
    if (kinds != 0).any():
        i = int(np.flatnonzero(kinds != 0)[0])
        what = "no geometry" if geoms[i] is None else f"a {geoms[i].geom_type}"
        raise DeepSaltInputError(where, f"feature {i} has {what}, not a point", "sites are points")
    x, y = shapely.get_x(geoms), shapely.get_y(geoms)
    if crs is not None:
        c = CRS.from_user_input(crs)
        if not c.equals(CRS.from_epsg(4326), ignore_axis_order=True):
            x, y = Transformer.from_crs(c, "EPSG:4326", always_xy=True).transform(x, y)
    return np.asarray(x, float), np.asarray(y, float)


def _vector(path: str, layer: str | None) -> pd.DataFrame:
    """A vector file's features through GDAL/OGR (pyogrio): attributes as columns, point geometries as lon/lat."""
    import pyogrio
    import shapely

    layers = [str(n) for n, _ in pyogrio.list_layers(path)]
    if layer is None and len(layers) > 1:
        raise DeepSaltInputError(path, f"holds {len(layers)} layers ({', '.join(layers[:6])})", "pass --layer NAME")
    if layer is not None and layer not in layers:
        raise DeepSaltInputError(path, f"has no layer {layer!r} (layers: {', '.join(layers[:6])})", "pass one of them to --layer")
    meta, _, geom, fields = pyogrio.raw.read(path, layer=layer)
    df = pd.DataFrame({name: col for name, col in zip(meta["fields"], fields)})
    if geom is None:
        return df
    df["lon"], df["lat"] = _points(shapely.from_wkb(geom), meta.get("crs"), path)
    return df


def _geometry_column(df: pd.DataFrame, col: str, crs, where: str) -> pd.DataFrame:
    """A WKT or WKB geometry column of a CSV or (Geo)Parquet table as lon/lat."""
    import shapely

    v = df.pop(col)
    try:
        geoms = shapely.from_wkb(v.to_numpy()) if v.map(lambda g: isinstance(g, (bytes, bytearray))).all() \
            else shapely.from_wkt(v.astype(str).to_numpy())
    except shapely.errors.GEOSException as e:
        raise DeepSaltInputError(where, f"column {col!r} is neither WKT nor WKB ({str(e)[:100]})", "write points as WKT "
                                 "(POINT (lon lat)) or WKB") from None
    df["lon"], df["lat"] = _points(geoms, crs, where)
    return df


def _geoparquet_crs(path: str, col: str):
    """The CRS GeoParquet's ``geo`` metadata gives a geometry column (PROJJSON); None: WGS84."""
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        md = pq.read_schema(f).metadata or {}
    geo = json.loads(md.get(b"geo", b"{}") or b"{}")
    crs = (geo.get("columns", {}).get(col) or {}).get("crs")
    return json.dumps(crs) if isinstance(crs, dict) else crs


def _csv(path: str) -> pd.DataFrame:
    """A CSV; with ``;`` separators (a header without commas) the decimal mark is the comma, as European
    spreadsheets write them."""
    with fsspec.open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        head = f.readline()
    if ";" in head and "," not in head:
        return pd.read_csv(path, sep=";", decimal=",")
    if "\t" in head and "," not in head:
        return pd.read_csv(path, sep="\t")
    return pd.read_csv(path)


def parse_dates(values: pd.Series, where: str, date_format: str | None = None) -> pd.Series:
    """Sampling dates: ISO 8601 (YYYY-MM-DD, with an optional time) unless ``date_format`` (strptime codes) says
    otherwise. A day/month order that could be either (03/06/2024), a number (an Excel serial day, a bare year)
    and anything else unreadable are refused with one line naming the first such value."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    elif date_format:
        parsed = pd.to_datetime(values.astype(str), format=date_format, errors="coerce", utc=True)
    else:
        text = values.astype(str).str.strip()
        for pattern, fault, fix in (
                (r"^\d+(\.\d+)?$", "is a number, not a date (an Excel serial day? a bare year?)",
                 "write dates as YYYY-MM-DD, or pass --date-format"),
                (r"^\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}$", "could be day/month or month/day",
                 "pass --date-format %d/%m/%Y or %m/%d/%Y (or write YYYY-MM-DD)")):
            hit = text.str.match(pattern)
            if hit.any():
                i = int(np.flatnonzero(hit.to_numpy())[0])
                raise DeepSaltInputError(where, f"{int(hit.sum())} date(s) like {text.iloc[i]!r} (row {i}) {fault}", fix)
        iso = text.str.match(ISO_DATE)
        parsed = pd.to_datetime(text.where(iso), errors="coerce", utc=True, format="ISO8601")
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DeepSaltInputError(where, f"{int(parsed.isna().sum())} sites have no readable date (first: row {i}, "
                                 f"{values.iloc[i]!r})", f"write dates as YYYY-MM-DD{'' if date_format else ', or pass --date-format'}")
    return parsed.dt.tz_localize(None).dt.normalize()


def read_sites(path: str, targets: list[str] | None = None, layer: str | None = None,
               date_format: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Sites with columns ``site_id``, ``lon``, ``lat``, ``date`` (a date), the targets and any other columns; and the
    target columns found (``targets``, or every target column ``deepsalt.targets`` knows that the file has).

    GeoPackage, GeoJSON, FlatGeobuf and Shapefile are read by GDAL/OGR (pyogrio; ``layer`` for a file of several
    layers), in any CRS they declare; CSV and (Geo)Parquet with lon/lat columns or a WKT/WKB ``geometry`` column."""
    from deepsalt.targets import TARGETS

    low = str(path).lower()
    try:
        if low.endswith(VECTOR):
            df = _vector(path, layer)
        elif low.endswith((".parquet", ".pq", ".geoparquet")):
            df = pd.read_parquet(path)
        else:
            df = _csv(path)
    except FileNotFoundError:
        raise DeepSaltInputError(path, "does not exist", "check the path") from None
    except DeepSaltInputError:
        raise
    except Exception as e:  # noqa: BLE001 - GDAL's, pyarrow's and pandas' own errors: one line
        raise DeepSaltInputError(path, f"not a readable site table ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})",
                                 "pass CSV, Parquet/GeoParquet, GeoPackage, GeoJSON, FlatGeobuf or Shapefile") from None
    cols = {c.lower(): c for c in df.columns}
    for g in ("geometry", "geom", "wkt", "wkb"):
        if g in cols and not any(c in cols for c in LON):  # WKT/WKB points in a CSV or (Geo)Parquet column
            crs = _geoparquet_crs(path, cols[g]) if low.endswith((".parquet", ".pq", ".geoparquet")) else None
            df = _geometry_column(df, cols[g], crs, path)
            cols = {c.lower(): c for c in df.columns}
            break
    lon = next((cols[c] for c in LON if c in cols), None)
    lat = next((cols[c] for c in LAT if c in cols), None)
    date = next((cols[c] for c in DATES if c in cols), None)
    if lon is None or lat is None:
        raise DeepSaltInputError(path, f"no lon/lat (or longitude/latitude, x/y) columns and no point geometry (columns: "
                                 f"{', '.join(map(str, list(df.columns)[:8]))})", "add them (WGS84 degrees)")
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
    out["date"] = parse_dates(out["date"], path, date_format)
    for t in found:
        out[t] = pd.to_numeric(out[t], errors="coerce")
        target = next((x for x in TARGETS.values() if x.column == t), None)
        if target is not None:
            target.check_plausible(out[t].to_numpy(), path, ids=("site " + out["site_id"]).to_numpy())
    from deepsalt.data.lab import check_lat_lon

    check_lat_lon(out["lat"], out["lon"], path)
    return out.reset_index(drop=True), found


@one_gdal_env
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
                  collection: str = "ENMAP_HSI_L2A", allow_http: bool = False, layer: str | None = None,
                  date_format: str | None = None, log=print) -> dict:
    """Write the training rows (Parquet) of the sites that have a clear pixel, and ``<out>.drops.csv`` for the rest;
    returns the summary. No extracted site at all is an error that says why."""
    import ray

    from deepsalt.data.covariates import check_covariate_ranges
    from deepsalt.data.stac import item_time, priority, search_items
    from deepsalt.raycluster import init_ray

    t0 = time.time()
    df, found = read_sites(sites, targets, layer, date_format)
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
    # lon and lat swapped within valid ranges (Spain as 40.4, -3.7): a site in no scene whose swapped position is in one
    lost = [k for k in range(len(df)) if not cands[k] and abs(lon[k]) <= 90]
    if lost:
        sw = (float(lat[lost].min()) - 1e-6, float(lon[lost].min()) - 1e-6, float(lat[lost].max()) + 1e-6, float(lon[lost].max()) + 1e-6)
        swapped_items = search_items(stac, collection, sw, f"{lo.date().isoformat()}/{hi.date().isoformat()}")
        for k in lost:
            if any(it.bbox[0] <= lat[k] <= it.bbox[2] and it.bbox[1] <= lon[k] <= it.bbox[3] for it in swapped_items):
                reason[k] = "swapped"
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
