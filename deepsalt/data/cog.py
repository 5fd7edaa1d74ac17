"""Writing and opening GeoTIFF/COG rasters with errors that name the file."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.env import hasenv
from rasterio.session import Session
from rasterio.errors import RasterioIOError

from deepsalt.errors import DeepSaltInputError


def write_cog(path: str | Path, data: np.ndarray, crs, transform, nodata=None, *, descriptions=None,
              tags: dict | None = None, blocksize: int = 256, overviews: str = "NONE") -> None:
    """Write ``data (bands, rows, cols)`` or ``(rows, cols)`` as a deflate-compressed COG (``overviews="AUTO"``:
    with internal overviews, for GIS viewers)."""
    data = data[None] if data.ndim == 2 else data
    profile = dict(driver="COG", count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, compress="DEFLATE", blocksize=blocksize,
                   predictor=2 if np.issubdtype(data.dtype, np.integer) else 3, overviews=overviews)
    tmp = f"{path}.partial"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
    os.replace(tmp, path)


#: host names that answer with cloud credentials or instance data
METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.azure.internal", "instance-data",
                  "instance-data.ec2.internal", "169.254.169.254", "fd00:ec2::254", "100.100.100.200"}


def check_href(href: str, what: str, allow_http: bool = False) -> str:
    """``href`` if it is safe to hand to GDAL, else a DeepSaltInputError naming it.

    Catalogs are input: an asset href must not make workers read GDAL virtual files (``/vsi...``), inline
    XML (a VRT that reads any file), another driver's syntax (``HDF5:...``), paths with ``..``, or
    link-local and cloud-metadata addresses. Allowed: ``s3://``, ``https://``, ``file://`` and local paths;
    ``http://`` only with ``allow_http`` (``--allow-http``).
    """
    import ipaddress
    from urllib.parse import urlsplit

    def refuse(why: str, fix: str = "point the asset at an s3://, https:// or local GeoTIFF"):
        raise DeepSaltInputError(f"{what} href {href[:120]!r}", f"refused: {why}", fix)

    h = href.strip()
    if not h:
        refuse("empty href")
    if "<" in h or ">" in h or "\n" in h or "\r" in h:
        refuse("inline XML or control characters")
    if "/vsi" in h.lower():
        refuse("GDAL virtual file systems (/vsi...) are not allowed")
    scheme = urlsplit(h).scheme.lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", h) else ""
    if scheme not in ("", "s3", "https", "http", "file"):
        refuse(f"scheme or driver prefix '{scheme}:' is not allowed")
    if scheme == "http" and not allow_http:
        refuse("plain http:// is not allowed", "use https://, or pass --allow-http for a trusted internal server")
    path = urlsplit(h).path if scheme else h
    if ".." in path.replace("\\", "/").split("/"):
        refuse("'..' path traversal")
    if scheme in ("http", "https"):
        host = (urlsplit(h).hostname or "").lower().rstrip(".")
        if host in METADATA_HOSTS:
            refuse("cloud metadata address")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved):
            refuse("link-local, multicast or reserved address")
    return h


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
    """The error for a raster GDAL could not open. One wording for missing and unreadable files, so that an
    href in a catalog cannot be used to probe which files exist on a worker."""
    return DeepSaltInputError(href, f"{what} does not exist or is not a readable GeoTIFF",
                              "check the path/URL, the credentials, and that the file is a complete GeoTIFF/COG")


def no_crs_error(href: str, what: str) -> DeepSaltInputError:
    return DeepSaltInputError(href, f"{what} has no CRS", "write the file with a georeference (EPSG code or WKT)")


_STAT_KEYS = ("size", "mtime", "ETag", "etag", "LastModified", "last_modified", "checksum", "md5", "VersionId")


def file_stamp(href: str, what: str) -> dict:
    """Size and modification time, or ETag, of a file at a local path or fsspec URL (s3://, https://): what tells
    that a file was rewritten under the same name."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(href)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - one wording for missing and unreadable (no existence oracle)
        raise DeepSaltInputError(href, f"{what} does not exist or is not readable",
                                 "check the path/URL and the credentials") from None
    return {k: info[k] for k in _STAT_KEYS if k in info}


_SESSIONS: dict = {}


def _session():
    """rasterio's credentials session for this process's AWS settings, built once per settings. rasterio otherwise
    builds one for every environment it enters, a boto3 session each time (15-45 ms here) whether or not the file is on
    S3. The session reads its credentials afresh each time GDAL gets them, so refreshed credentials still reach it."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    if key not in _SESSIONS:
        _SESSIONS[key] = Session.from_environ()
    return _SESSIONS[key]


def one_gdal_env(fn):
    """Run ``fn`` inside one GDAL environment, the caller's if it has one. Without it rasterio enters a fresh environment
    for every file it opens, each with a new credentials session: a map tile opens ~20 files, a covariate lookup 8."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if hasenv():
            return fn(*args, **kwargs)
        with rasterio.Env.from_defaults(session=_session()):
            return fn(*args, **kwargs)

    return run


def open_raster(href: str, what: str = "raster", drivers: tuple[str, ...] = ("GTiff",)):
    """Open a raster for reading with one of ``drivers`` (GeoTIFF only, unless the caller's input comes from the user
    rather than a catalogue); a missing, corrupt or other file, or one with no CRS, is a clear error."""
    try:
        ds = rasterio.open(gdal_path(href), driver=drivers[0]) if len(drivers) == 1 else \
            rasterio.open(gdal_path(href), allowed_drivers=list(drivers))
    except RasterioIOError as e:
        raise open_error(href, what, e) from None
    if ds.crs is None:
        ds.close()
        raise no_crs_error(href, what)
    return ds
