"""The 8 covariate rasters (soil texture and climate), read at points or reprojected onto a grid.

Sources: soil texture as SoilGrids 2.0 (sand, clay; % at 0-12 cm) and climate as WorldClim 2.1 (deg C, mm per
month), as ``deepsalt covariates build`` makes them from the products as they are shipped (``data.products``); the
authors used SSURGO and PRISM, which fit the same names and units. GeoTIFF/COG or VRT, any CRS, any numeric type.
A covariate source is a folder holding ``<name>.tif`` for each name below, or a JSON file mapping each name to a
path/URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pyproj import Transformer
from rasterio.transform import rowcol
from rasterio.windows import Window

from deepsalt.data.cog import one_gdal_env, open_raster
from deepsalt.errors import DeepSaltInputError


@dataclass(frozen=True)
class Covariate:
    name: str
    units: str
    description: str
    valid_range: tuple[float, float]  # physical limits in ``units``: values outside mean wrong units or a wrong raster


#: Temperatures: Earth's recorded extremes of monthly means lie well inside -70..60 degC, so Kelvin (>= 200) or
#: tenths of a degree fail. Precipitation per month: the driest and the mean month below 1,100 mm (about the wettest
#: places' annual mean / 12), so an annual total passed as a monthly value fails; the wettest month below the record
#: (~9,300 mm).
COVARIATES: tuple[Covariate, ...] = (
    Covariate("sand", "%", "total sand, 0-12 cm (SoilGrids 2.0: 5/12 of 0-5 cm + 7/12 of 5-15 cm)", (0.0, 100.0)),
    Covariate("clay", "%", "total clay, 0-12 cm (SoilGrids 2.0: 5/12 of 0-5 cm + 7/12 of 5-15 cm)", (0.0, 100.0)),
    Covariate("tm_min", "degC", "minimum temperature of the coldest month (WorldClim 2.1: lowest monthly tmin)", (-70.0, 60.0)),
    Covariate("tm_max", "degC", "maximum temperature of the warmest month (WorldClim 2.1: highest monthly tmax)", (-70.0, 60.0)),
    Covariate("tm_avg", "degC", "mean annual temperature (WorldClim 2.1: mean of the monthly tavg)", (-70.0, 60.0)),
    Covariate("pr_min", "mm", "precipitation of the driest month (WorldClim 2.1: lowest monthly prec)", (0.0, 1_100.0)),
    Covariate("pr_max", "mm", "precipitation of the wettest month (WorldClim 2.1: highest monthly prec)", (0.0, 10_000.0)),
    Covariate("pr_avg", "mm", "mean monthly precipitation (WorldClim 2.1: mean of the monthly prec)", (0.0, 1_100.0)),
)
COVARIATE_NAMES = tuple(c.name for c in COVARIATES)
#: the drivers a covariate raster may use: the user names these files (they come from no catalogue)
DRIVERS = ("GTiff", "VRT")


def _unit_hint(c: Covariate, lo: float, hi: float) -> str:
    """The likely unit mistake behind values ``lo``..``hi`` outside ``c``'s range."""
    if c.units == "%":
        return ("looks like g/kg, SoilGrids' mapped units: divide by 10" if hi <= 1000 and lo >= 0 else
                "texture must be in percent, 0-100")
    if c.units == "degC":
        if lo >= 150:
            return "looks like Kelvin: subtract 273.15"
        if -700 <= lo and hi <= 600:
            return "looks like tenths of a degree: divide by 10"
        return "temperatures must be in degrees Celsius"
    if hi > c.valid_range[1] and lo >= 0:
        return (f"looks like annual totals: {c.name} is per month (divide by 12 for the mean month)" if c.name != "pr_max"
                else "precipitation must be in mm per month")
    return "precipitation must be in mm per month, >= 0"


def check_covariate_ranges(values: np.ndarray, source, where: str = "") -> None:
    """Refuse covariates outside their physical range, naming the likely unit mistake (g/kg for %, Kelvin or tenths
    of a degree for deg C, annual for monthly precipitation).

    ``values`` is ``(8, ...)`` in ``COVARIATE_NAMES`` order (pass point samples transposed); NaN is ignored.
    """
    v = np.asarray(values, np.float64).reshape(len(COVARIATES), -1)
    for c, row in zip(COVARIATES, v):
        row = row[np.isfinite(row)]
        if row.size and (row.min() < c.valid_range[0] or row.max() > c.valid_range[1]):
            raise DeepSaltInputError(f"{source} (covariate '{c.name}'{where})",
                                     f"values {row.min():.4g} to {row.max():.4g} lie outside the physical range "
                                     f"{c.valid_range[0]:g} to {c.valid_range[1]:g} {c.units}", _unit_hint(c, row.min(), row.max()))
    # a mean lies between its month's extremes: an annual total passed as the mean month (within range where it is
    # dry) exceeds the wettest month; a mean temperature in other units leaves its extremes' interval
    for lo, mean, hi, hint in (("pr_min", "pr_avg", "pr_max", "looks like annual totals: pr_avg is the mean monthly "
                                "precipitation (divide by 12)"),
                               ("tm_min", "tm_avg", "tm_max", "tm_avg must lie between tm_min and tm_max, in the same units")):
        a, m, b = (v[COVARIATE_NAMES.index(n)] for n in (lo, mean, hi))
        ok = np.isfinite(a) & np.isfinite(m) & np.isfinite(b)
        tol = 1e-3 * np.maximum(np.abs(b), 1.0)
        bad = ok & ((m < a - tol) | (m > b + tol))
        if bad.any():
            raise DeepSaltInputError(f"{source} (covariate '{mean}'{where})", f"{int(bad.sum())} values lie outside "
                                     f"{lo} to {hi} (first: {m[bad][0]:.4g}, not in {a[bad][0]:.4g} to {b[bad][0]:.4g})", hint)


def covariate_hrefs(source: str | Path) -> dict[str, str]:
    """Map each covariate name to its raster href, from a folder or a JSON mapping file."""
    src = str(source)
    if src.endswith(".json"):
        mapping = json.loads(Path(src).read_text())
    elif "://" in src:
        mapping = {n: f"{src.rstrip('/')}/{n}.tif" for n in COVARIATE_NAMES}
    else:
        if not Path(src).is_dir():
            raise DeepSaltInputError(src, "covariate folder does not exist", "pass a folder of <name>.tif or a JSON name->path map")
        mapping = {n: str(Path(src) / f"{n}.tif") for n in COVARIATE_NAMES}
    missing = [n for n in COVARIATE_NAMES if n not in mapping]
    if missing:
        raise DeepSaltInputError(src, f"covariates missing: {', '.join(missing)}", f"provide all of {', '.join(COVARIATE_NAMES)}")
    return {n: str(mapping[n]) for n in COVARIATE_NAMES}


@lru_cache(maxsize=32)
def transformer(src, dst) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


@one_gdal_env
def _lookup(source, xs: np.ndarray, ys: np.ndarray, crs, project=None) -> np.ndarray:
    """Covariates at points given in ``crs`` (the cell containing each point), ``(n, 8)``, NaN outside or nodata.

    Exact per point (no warper approximation), so a site in training and the pixel at the same place in a
    map get the same value. Rasters on the same grid (the usual case) share one coordinate transform and
    one cell lookup. ``project(dst_crs, dst_transform)``, if given, returns the points in a raster's CRS in place
    of projecting each with PROJ; it must find the same cells (``mapping.centres.TileCentres.xy`` does).
    """
    out = np.full((len(xs), len(COVARIATE_NAMES)), np.nan, np.float32)
    cells: dict = {}
    for j, (name, href) in enumerate(covariate_hrefs(source).items()):
        with open_raster(href, f"covariate '{name}'", DRIVERS) as ds:
            key = (ds.crs.to_wkt(), tuple(ds.transform), ds.height, ds.width)
            if key not in cells:
                tx, ty = project(key[0], ds.transform) if project else transformer(str(crs), key[0]).transform(xs, ys)
                rows, cols = rowcol(ds.transform, tx, ty, op=np.floor)
                rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
                inside = (rows >= 0) & (rows < ds.height) & (cols >= 0) & (cols < ds.width)
                win = None
                if inside.any():  # read only the window the points fall in: rasters may be continental
                    r0, c0 = rows[inside].min(), cols[inside].min()
                    win = Window(c0, r0, cols[inside].max() - c0 + 1, rows[inside].max() - r0 + 1)
                    rows, cols = rows[inside] - r0, cols[inside] - c0
                cells[key] = (inside, win, rows, cols)
            inside, win, rows, cols = cells[key]
            if win is not None:
                band = ds.read(1, window=win, masked=True).astype(np.float32).filled(np.nan)  # any type: int16 too
                out[inside, j] = band[rows, cols]
    return out


def sample_covariates(source, lon: np.ndarray, lat: np.ndarray, crs="EPSG:4326", project=None) -> np.ndarray:
    """Covariates at points (lon/lat, or x/y in ``crs``), ``(n_points, 8)`` float32; NaN where a raster has no data
    (``project``: see ``_lookup``)."""
    return _lookup(source, np.asarray(lon, float), np.asarray(lat, float), crs, project)


def covariates_on_grid(source, crs, transform, shape: tuple[int, int]) -> np.ndarray:
    """All 8 covariates at the pixel centres of a target grid, ``(8, rows, cols)`` float32, NaN outside."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xs, ys = transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    return _lookup(source, np.asarray(xs), np.asarray(ys), crs).T.reshape(len(COVARIATE_NAMES), *shape)
