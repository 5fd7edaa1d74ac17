"""The 8 covariate rasters (soil texture and climate), read at points or reprojected onto a grid.

Real sources: SSURGO ``sandtotal_r`` / ``claytotal_r`` (%) and PRISM normals (deg C, mm per month) as
GeoTIFF/COG in any CRS. A covariate source is a folder holding ``<name>.tif`` for each name below, or a
JSON file mapping each name to a path/URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import rowcol
from rasterio.warp import reproject, transform as warp_transform

from deepsalt.data.cog import open_raster
from deepsalt.errors import DeepSaltInputError


@dataclass(frozen=True)
class Covariate:
    name: str
    units: str
    description: str


COVARIATES: tuple[Covariate, ...] = (
    Covariate("sand", "%", "total sand, SSURGO sandtotal_r"),
    Covariate("clay", "%", "total clay, SSURGO claytotal_r"),
    Covariate("tm_min", "degC", "mean minimum temperature of the coldest month, PRISM"),
    Covariate("tm_max", "degC", "mean maximum temperature of the warmest month, PRISM"),
    Covariate("tm_avg", "degC", "mean annual temperature, PRISM"),
    Covariate("pr_min", "mm", "precipitation of the driest month, PRISM"),
    Covariate("pr_max", "mm", "precipitation of the wettest month, PRISM"),
    Covariate("pr_avg", "mm", "mean monthly precipitation, PRISM"),
)
COVARIATE_NAMES = tuple(c.name for c in COVARIATES)


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


def sample_covariates(source, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Covariates at points (nearest cell), ``(n_points, 8)`` float32; NaN where a raster has no data."""
    out = np.full((len(lon), len(COVARIATE_NAMES)), np.nan, np.float32)
    for j, (name, href) in enumerate(covariate_hrefs(source).items()):
        with open_raster(href, f"covariate '{name}'") as ds:
            xs, ys = warp_transform("EPSG:4326", ds.crs, list(map(float, lon)), list(map(float, lat)))
            rows, cols = rowcol(ds.transform, xs, ys)
            rows, cols = np.asarray(rows), np.asarray(cols)
            inside = (rows >= 0) & (rows < ds.height) & (cols >= 0) & (cols < ds.width)
            band = ds.read(1, masked=True)
            vals = np.full(len(lon), np.nan, np.float32)
            vals[inside] = band[rows[inside], cols[inside]].filled(np.nan)
            out[:, j] = vals
    return out


def covariates_on_grid(source, crs, transform, shape: tuple[int, int]) -> np.ndarray:
    """All 8 covariates reprojected (bilinear) onto a target grid, ``(8, rows, cols)`` float32, NaN outside."""
    out = np.full((len(COVARIATE_NAMES), *shape), np.nan, np.float32)
    for j, (name, href) in enumerate(covariate_hrefs(source).items()):
        with open_raster(href, f"covariate '{name}'") as ds:
            reproject(source=ds.read(1).astype(np.float32), destination=out[j], src_transform=ds.transform,
                      src_crs=ds.crs, src_nodata=ds.nodata, dst_transform=transform, dst_crs=crs,
                      dst_nodata=np.nan, resampling=Resampling.bilinear)
    return out
