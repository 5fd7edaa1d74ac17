"""Writing and opening GeoTIFF/COG rasters with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from deepsalt.errors import DeepSaltInputError


def write_cog(path: str | Path, data: np.ndarray, crs, transform, nodata=None, *, descriptions=None,
              tags: dict | None = None, blocksize: int = 256) -> None:
    """Write ``data (bands, rows, cols)`` or ``(rows, cols)`` as a deflate-compressed COG."""
    data = data[None] if data.ndim == 2 else data
    profile = dict(driver="COG", count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, compress="DEFLATE", blocksize=blocksize,
                   predictor=2 if np.issubdtype(data.dtype, np.integer) else 3, overviews="NONE")
    tmp = f"{path}.partial"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
    os.replace(tmp, path)


def gdal_path(href: str) -> str:
    """GDAL path for an href: ``s3://b/k`` -> ``/vsis3/b/k``; ``http(s)`` -> ``/vsicurl/``; files unchanged."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return href[7:]
    return href


def open_error(href: str, what: str, e: Exception) -> DeepSaltInputError:
    """The error for a raster GDAL could not open: missing, or not a (complete) GeoTIFF."""
    reason = "does not exist" if "No such file" in str(e) or "does not exist" in str(e) else f"is not a readable GeoTIFF ({e})"
    return DeepSaltInputError(href, f"{what} {reason}", "check the path/URL and that the file is a complete GeoTIFF/COG")


def no_crs_error(href: str, what: str) -> DeepSaltInputError:
    return DeepSaltInputError(href, f"{what} has no CRS", "write the file with a georeference (EPSG code or WKT)")


def open_raster(href: str, what: str = "raster"):
    """Open a raster for reading; a missing, corrupt or non-TIFF file, or one with no CRS, is a clear error."""
    try:
        ds = rasterio.open(gdal_path(href))
    except RasterioIOError as e:
        raise open_error(href, what, e) from None
    if ds.crs is None:
        ds.close()
        raise no_crs_error(href, what)
    return ds
