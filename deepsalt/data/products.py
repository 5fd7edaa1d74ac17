"""`deepsalt covariates build`: the 8 covariates from SoilGrids 2.0 and WorldClim 2.1 as they are shipped.

SoilGrids 2.0 (ISRIC): sand and clay as int16 in g/kg (the mapped units; divide by 10 for %, ISRIC's FAQ), in
Interrupted Goode Homolosine at 250 m, one layer per depth (0-5, 5-15 cm...), each served as a VRT over GeoTIFF
tiles (``https://files.isric.org/soilgrids/latest/data/sand/sand_0-5cm_mean.vrt``). The 0-12 cm value is the
depth-weighted mean 5/12 x (0-5 cm) + 7/12 x (5-15 cm), resampled bilinearly onto a 1/400 deg (~250 m) grid in
EPSG:4326.

WorldClim 2.1: monthly ``wc2.1_30s_{tmin,tmax,tavg,prec}_{01..12}.tif`` (deg C and mm) at 30 arc-seconds in
EPSG:4326, cut to the box on their own grid: ``tm_min`` the lowest monthly tmin, ``tm_max`` the highest monthly
tmax, ``tm_avg`` the mean of the monthly tavg, ``pr_min``/``pr_max`` the driest and wettest month's prec,
``pr_avg`` the mean monthly prec.

Written as float32 COGs in EPSG:4326 with nodata -9999, checked against their physical ranges (the hints name
g/kg, Kelvin and annual totals) before anything is written.
"""

from __future__ import annotations

import math
import time
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np

from deepsalt.data.cog import gdal_path, write_cog
from deepsalt.data.covariates import COVARIATE_NAMES, COVARIATES, check_covariate_ranges
from deepsalt.errors import DeepSaltInputError

#: SoilGrids 2.0's CRS (ESRI:54052, Interrupted Goode Homolosine)
HOMOLOSINE = "+proj=igh +lon_0=0 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
#: (SoilGrids layer, weight) making the 0-12 cm value
SOIL_LAYERS = (("0-5cm", 5 / 12), ("5-15cm", 7 / 12))
WORLDCLIM_VARS = ("tmin", "tmax", "tavg", "prec")
NODATA = -9999.0


def _find(src: str, names: list[str], what: str) -> str:
    """The first of ``names`` found under ``src`` (a folder or URL prefix; searched below it for a local folder)."""
    fs, root = fsspec.core.url_to_fs(src)
    for n in names:
        if fs.exists(f"{root.rstrip('/')}/{n}"):
            return src.rstrip("/") + "/" + n if "://" in src else str(Path(root) / n)
    if "://" not in src and Path(root).is_dir():
        for n in names:
            hits = sorted(Path(root).rglob(PurePosixPath(n).name))
            if hits:
                return str(hits[0])
    raise DeepSaltInputError(src, f"no {what} ({' or '.join(names)})", "download it, keeping the product's file names")


def _grid(bbox, res: float):
    """An EPSG:4326 grid over ``bbox`` snapped outwards to multiples of ``res``: (transform, height, width)."""
    from rasterio.transform import from_origin

    x0, y0, x1, y1 = bbox
    left, right = math.floor(x0 / res + 1e-9) * res, math.ceil(x1 / res - 1e-9) * res
    bottom, top = math.floor(y0 / res + 1e-9) * res, math.ceil(y1 / res - 1e-9) * res
    return from_origin(left, top, res, res), int(round((top - bottom) / res)), int(round((right - left) / res))


def _warp(href: str, transform, shape, resampling) -> np.ndarray:
    """``href`` (GeoTIFF or VRT, any CRS) onto an EPSG:4326 grid, float64 with NaN where the source has no data."""
    import rasterio
    from rasterio.warp import reproject

    out = np.full(shape, np.nan)
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(gdal_path(href), allowed_drivers=["GTiff", "VRT"]) as ds:
            if ds.crs is None:
                raise DeepSaltInputError(href, "has no CRS", "use the product as it is shipped")
            reproject(rasterio.band(ds, 1), out, src_nodata=ds.nodata, dst_transform=transform, dst_crs="EPSG:4326",
                      dst_nodata=np.nan, resampling=resampling)
    except rasterio.errors.RasterioIOError:
        raise DeepSaltInputError(href, "does not exist or is not a readable GeoTIFF or VRT", "check the path") from None
    return out


def build_covariates(soilgrids: str, worldclim: str, bbox, out: str | Path, soil_res: float = 1 / 400,
                     climate_res: float = 1 / 120, log=print) -> dict:
    """Write ``out/<name>.tif`` for the 8 covariates over ``bbox`` (lon/lat); returns a summary."""
    from rasterio.enums import Resampling

    t0 = time.time()
    values, grids = {}, {}
    tr, h, w = _grid(bbox, soil_res)
    for prop in ("sand", "clay"):
        acc = np.zeros((h, w))
        for depth, weight in SOIL_LAYERS:
            href = _find(soilgrids, [f"{prop}/{prop}_{depth}_mean.vrt", f"{prop}_{depth}_mean.vrt", f"{prop}/{prop}_{depth}_mean.tif",
                                     f"{prop}_{depth}_mean.tif"], f"SoilGrids {prop} {depth}")
            acc += weight * _warp(href, tr, (h, w), Resampling.bilinear) / 10.0  # g/kg -> %
            log(f"  {prop} {depth}: {href}")
        values[prop], grids[prop] = acc, tr
    tr, h, w = _grid(bbox, climate_res)
    months = {}
    for var in WORLDCLIM_VARS:
        stack = []
        for m in range(1, 13):
            href = _find(worldclim, [f"wc2.1_30s_{var}_{m:02d}.tif", f"wc2.1_30s_{var}/wc2.1_30s_{var}_{m:02d}.tif"],
                         f"WorldClim {var} month {m:02d}")
            stack.append(_warp(href, tr, (h, w), Resampling.nearest))
        months[var] = np.stack(stack)
        log(f"  {var}: 12 months from {Path(href).parent if '://' not in href else href.rsplit('/', 1)[0]}")
    agg = {"tm_min": months["tmin"].min(0), "tm_max": months["tmax"].max(0), "tm_avg": months["tavg"].mean(0),
           "pr_min": months["prec"].min(0), "pr_max": months["prec"].max(0), "pr_avg": months["prec"].mean(0)}
    for k, v in agg.items():
        values[k], grids[k] = v, tr
    for c in COVARIATES:  # every unit checked before a file is written
        check_covariate_ranges(_one(c.name, values[c.name]), soilgrids if c.name in ("sand", "clay") else worldclim)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for c in COVARIATES:
        v = values[c.name].astype(np.float32)
        write_cog(out / f"{c.name}.tif", np.where(np.isfinite(v), v, NODATA).astype(np.float32), "EPSG:4326", grids[c.name],
                  NODATA, tags={"units": c.units, "description": c.description})
    cover = {c.name: round(float(np.isfinite(values[c.name]).mean()), 4) for c in COVARIATES}
    return {"out": str(out), "bbox": list(bbox), "soil_res_deg": soil_res, "climate_res_deg": climate_res,
            "valid_fraction": cover, "seconds": round(time.time() - t0, 1)}


def _one(name: str, grid: np.ndarray) -> np.ndarray:
    """``(8, n)`` with ``grid`` in ``name``'s row and NaN elsewhere, for ``check_covariate_ranges``."""
    rows = np.full((len(COVARIATE_NAMES), grid.size), np.nan)
    rows[COVARIATE_NAMES.index(name)] = grid.ravel()
    return rows
