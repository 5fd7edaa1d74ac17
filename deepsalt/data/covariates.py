"""The 8 covariate rasters (soil texture and climate), read at points or reprojected onto a grid.

Real sources: SSURGO ``sandtotal_r`` / ``claytotal_r`` (%) and PRISM normals (deg C, mm per month) as
GeoTIFF/COG in any CRS. A covariate source is a folder holding ``<name>.tif`` for each name below, or a
JSON file mapping each name to a path/URL.
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

from deepsalt.data.cog import open_raster
from deepsalt.errors import DeepSaltInputError


@dataclass(frozen=True)
class Covariate:
    name: str
    units: str
    description: str
    valid_range: tuple[float, float]  # physical limits in ``units``: values outside mean wrong units or a wrong raster


#: Temperatures: Earth's recorded extremes of monthly means lie well inside -70..60 degC, so Kelvin (>= 200)
#: or Fahrenheit extremes fail. Monthly precipitation: >= 0, below the wettest month on record (~9,300 mm).
COVARIATES: tuple[Covariate, ...] = (
    Covariate("sand", "%", "total sand, SSURGO sandtotal_r", (0.0, 100.0)),
    Covariate("clay", "%", "total clay, SSURGO claytotal_r", (0.0, 100.0)),
    Covariate("tm_min", "degC", "mean minimum temperature of the coldest month, PRISM", (-70.0, 60.0)),
    Covariate("tm_max", "degC", "mean maximum temperature of the warmest month, PRISM", (-70.0, 60.0)),
    Covariate("tm_avg", "degC", "mean annual temperature, PRISM", (-70.0, 60.0)),
    Covariate("pr_min", "mm", "precipitation of the driest month, PRISM", (0.0, 10_000.0)),
    Covariate("pr_max", "mm", "precipitation of the wettest month, PRISM", (0.0, 10_000.0)),
    Covariate("pr_avg", "mm", "mean monthly precipitation, PRISM", (0.0, 10_000.0)),
)
COVARIATE_NAMES = tuple(c.name for c in COVARIATES)


def check_covariate_ranges(values: np.ndarray, source, where: str = "") -> None:
    """Refuse covariates outside their physical range (Kelvin for degC, fractions for %, negative rain).

    ``values`` is ``(8, ...)`` in ``COVARIATE_NAMES`` order (pass point samples transposed); NaN is ignored.
    """
    for c, row in zip(COVARIATES, np.asarray(values, np.float64).reshape(len(COVARIATES), -1)):
        row = row[np.isfinite(row)]
        if row.size and (row.min() < c.valid_range[0] or row.max() > c.valid_range[1]):
            hint = {"degC": "temperatures must be in degrees Celsius (Kelvin? subtract 273.15)",
                    "%": "texture must be in percent 0-100 (fractions? multiply by 100)",
                    "mm": "precipitation must be in mm per month, >= 0"}[c.units]
            raise DeepSaltInputError(f"{source} (covariate '{c.name}'{where})",
                                     f"values {row.min():.4g} to {row.max():.4g} lie outside the physical range "
                                     f"{c.valid_range[0]:g} to {c.valid_range[1]:g} {c.units}", hint)


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


def _lookup(source, xs: np.ndarray, ys: np.ndarray, crs) -> np.ndarray:
    """Covariates at points given in ``crs`` (the cell containing each point), ``(n, 8)``, NaN outside or nodata.

    Exact per point (no warper approximation), so a site in training and the pixel at the same place in a
    map get the same value. Rasters on the same grid (the usual case) share one coordinate transform and
    one cell lookup.
    """
    out = np.full((len(xs), len(COVARIATE_NAMES)), np.nan, np.float32)
    cells: dict = {}
    for j, (name, href) in enumerate(covariate_hrefs(source).items()):
        with open_raster(href, f"covariate '{name}'") as ds:
            key = (ds.crs.to_wkt(), tuple(ds.transform), ds.height, ds.width)
            if key not in cells:
                tx, ty = transformer(str(crs), key[0]).transform(xs, ys)
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
                band = ds.read(1, window=win, masked=True).filled(np.nan).astype(np.float32)
                out[inside, j] = band[rows, cols]
    return out


def sample_covariates(source, lon: np.ndarray, lat: np.ndarray, crs="EPSG:4326") -> np.ndarray:
    """Covariates at points (lon/lat, or x/y in ``crs``), ``(n_points, 8)`` float32; NaN where a raster has no data."""
    return _lookup(source, np.asarray(lon, float), np.asarray(lat, float), crs)


def covariates_on_grid(source, crs, transform, shape: tuple[int, int]) -> np.ndarray:
    """All 8 covariates at the pixel centres of a target grid, ``(8, rows, cols)`` float32, NaN outside."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xs, ys = transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    return _lookup(source, np.asarray(xs), np.asarray(ys), crs).T.reshape(len(COVARIATE_NAMES), *shape)
