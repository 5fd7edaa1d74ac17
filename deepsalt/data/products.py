"""`deepsalt covariates build`: the 8 covariates from SoilGrids 2.0 and WorldClim 2.1 as they are shipped.

SoilGrids 2.0 (ISRIC): sand and clay as int16 in g/kg (the mapped units; divide by 10 for %, ISRIC's FAQ), in
Interrupted Goode Homolosine at 250 m, one layer per depth (0-5, 5-15 cm...), each served as a VRT over GeoTIFF
tiles (``https://files.isric.org/soilgrids/latest/data/sand/sand_0-5cm_mean.vrt``). The 0-12 cm value is the
depth-weighted mean 5/12 x (0-5 cm) + 7/12 x (5-15 cm), resampled bilinearly onto a 1/400 deg (~250 m) grid in
EPSG:4326.

WorldClim 2.1: monthly ``wc2.1_30s_{tmin,tmax,tavg,prec}_{01..12}.tif`` (deg C and mm) at 30 arc-seconds in
EPSG:4326, unzipped or in the ZIPs WorldClim serves (``wc2.1_30s_tmin.zip``, read in place through GDAL's /vsizip/);
other resolutions (2.5, 5, 10 arc-minutes) are refused by name, cut to the box on their own grid: ``tm_min`` the lowest monthly tmin, ``tm_max`` the highest monthly
tmax, ``tm_avg`` the mean of the monthly tavg, ``pr_min``/``pr_max`` the driest and wettest month's prec,
``pr_avg`` the mean monthly prec.

Written as float32 COGs in EPSG:4326 with nodata -9999, checked against their physical ranges (the hints name
g/kg, Kelvin and annual totals) before anything is written; SoilGrids that is already in % (or fractions) is caught
by its low side (sand + clay under 10 % nearly everywhere), and a box where a covariate has no valid pixel writes
nothing. A VRT whose tiles are missing (a partial download) is one line naming the VRT and the missing tiles' folder.
"""

from __future__ import annotations

import math
import time
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np

from deepsalt.data.cog import gdal_path, one_gdal_env, write_cog
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

    from rasterio._err import CPLE_BaseError

    out = np.full(shape, np.nan)
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(gdal_path(href), allowed_drivers=["GTiff", "VRT"]) as ds:
            if ds.crs is None:
                raise DeepSaltInputError(href, "has no CRS", "use the product as it is shipped")
            _check_vrt_tiles(ds, href)
            reproject(rasterio.band(ds, 1), out, src_nodata=ds.nodata, dst_transform=transform, dst_crs="EPSG:4326",
                      dst_nodata=np.nan, resampling=resampling)
    except (rasterio.errors.RasterioError, CPLE_BaseError) as e:
        raise DeepSaltInputError(href, f"does not exist or is not a readable GeoTIFF or VRT ({str(e).splitlines()[0][:120]})",
                                 "check the path, or download the product again") from None
    return out


def _check_vrt_tiles(ds, href: str) -> None:
    """A VRT's source tiles (GDAL's own list of the dataset's files) must all be there: a partial download is one line
    naming the VRT and the folder of the missing tiles."""
    if ds.driver != "VRT" or "://" in href:
        return
    missing = [f for f in ds.files[1:] if not Path(f).exists()]
    if missing:
        folders = sorted({str(Path(f).parent) for f in missing})
        raise DeepSaltInputError(href, f"{len(missing)} of its {len(ds.files) - 1} tiles are missing (e.g. {Path(missing[0]).name} "
                                 f"in {folders[0]})", "download the VRT together with its tile folder")


def _worldclim(worldclim: str, var: str, month: int) -> str:
    """A WorldClim 2.1 30 arc-second monthly file: unzipped, or inside WorldClim's own ZIP (``wc2.1_30s_<var>.zip``,
    read in place through GDAL's /vsizip/). Other resolutions are refused by name."""
    name = f"wc2.1_30s_{var}_{month:02d}.tif"
    try:
        return _find(worldclim, [name, f"wc2.1_30s_{var}/{name}"], f"WorldClim {var} month {month:02d}")
    except DeepSaltInputError:
        pass
    try:
        z = _find(worldclim, [f"wc2.1_30s_{var}.zip"], "")
        return f"/vsizip/{gdal_path(z)}/{name}"
    except DeepSaltInputError:
        pass
    fs, root = fsspec.core.url_to_fs(worldclim)
    other = sorted(PurePosixPath(p).name for p in fs.glob(f"{root.rstrip('/')}/**/wc2.1_*_{var}*"))
    other = [n for n in other if not n.startswith("wc2.1_30s_")]
    if other:
        raise DeepSaltInputError(worldclim, f"holds WorldClim at another resolution ({other[0]}): only the 30 arc-second "
                                 "files (wc2.1_30s_*) are supported", "download the 30s set (wc2.1_30s_tmin.zip ...)")
    raise DeepSaltInputError(worldclim, f"no WorldClim {var} month {month:02d} ({name}, or wc2.1_30s_{var}.zip)",
                             "download WorldClim 2.1's 30s monthly data and unzip it here, or leave the ZIPs as they are")


@one_gdal_env
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
            href = _worldclim(worldclim, var, m)
            stack.append(_warp(href, tr, (h, w), Resampling.nearest))
        months[var] = np.stack(stack)
        log(f"  {var}: 12 months from {href.rsplit('/', 1)[0]}")
    agg = {"tm_min": months["tmin"].min(0), "tm_max": months["tmax"].max(0), "tm_avg": months["tavg"].mean(0),
           "pr_min": months["prec"].min(0), "pr_max": months["prec"].max(0), "pr_avg": months["prec"].mean(0)}
    for k, v in agg.items():
        values[k], grids[k] = v, tr
    for c in COVARIATES:  # every unit checked before a file is written
        if not np.isfinite(values[c.name]).any():
            src = soilgrids if c.name in ("sand", "clay") else worldclim
            raise DeepSaltInputError(f"--bbox {','.join(f'{v:g}' for v in bbox)}", f"{c.name} has no valid pixel in the box "
                                     f"(the data under {src} do not cover it); nothing was written",
                                     "pass a box inside the downloaded tiles, or download the tiles that cover it")
        check_covariate_ranges(_one(c.name, values[c.name]), soilgrids if c.name in ("sand", "clay") else worldclim)
    both = values["sand"] + values["clay"]
    if np.isfinite(both).any() and np.nanpercentile(both, 95) < 10.0:  # SoilGrids ships g/kg: % read as g/kg is ~1/10
        raise DeepSaltInputError(soilgrids, f"sand + clay is under {np.nanpercentile(both, 95):.1f} % in 95 % of the box, read "
                                 "as SoilGrids' g/kg", "these files look like % or fractions already: use SoilGrids' own "
                                 "files (int16, g/kg)")
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
