"""EnMAP L2A scenes read through rasterio/GDAL (GTiff driver only) from local files, S3 (``/vsis3/``) or HTTPS.

Reflectance = DN x ``enmap:gain_of_band`` + ``enmap:offset_of_band`` (0.0001 and 0 in DLR's items);
DN equal to the item's ``enmap:nodata`` (-32768) and pixels flagged by the quality masks become NaN.
The band table always comes from the item's ``eo:bands``, never from assumptions about file order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pystac
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from deepsalt.data.cog import check_href, open_raster
from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.stac import priority
from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.bands import BandTable, select_bands


@dataclass
class EnMAPScene:
    """One EnMAP L2A item: its image and quality assets, band table, scaling and nodata.

    Class attributes mirror DLR's ``ENMAP_HSI_L2A`` item layout.
    """

    IMAGE_ASSET = "image"
    QUALITY_MASKS = tuple(QUALITY_ASSETS)
    DEFAULT_NODATA = -32768

    item: pystac.Item
    bands: BandTable
    gain: np.ndarray  # (n_bands,)
    offset: np.ndarray  # (n_bands,)
    nodata: float
    allow_http: bool = False  # http:// asset hrefs (``--allow-http``); https, s3 and local paths always

    @classmethod
    def from_item(cls, item: pystac.Item, allow_http: bool = False) -> "EnMAPScene":
        asset = item.assets.get(cls.IMAGE_ASSET)
        if asset is None:
            raise DeepSaltInputError(f"STAC item {item.id}", f"missing asset '{cls.IMAGE_ASSET}'",
                                     f"an EnMAP L2A item needs the spectral image asset; it has {sorted(item.assets)}")
        eo = asset.extra_fields.get("eo:bands") or item.properties.get("eo:bands")
        if not eo:
            raise DeepSaltInputError(f"STAC item {item.id}", "image asset has no eo:bands",
                                     "the band centres and FWHM must come with the item")
        bands = BandTable.from_eo_bands(eo)
        try:
            gain = np.array([float(b.get("enmap:gain_of_band", 1e-4)) for b in eo], np.float32)
            offset = np.array([float(b.get("enmap:offset_of_band", 0.0)) for b in eo], np.float32)
            nodata = float(item.properties.get("enmap:nodata", cls.DEFAULT_NODATA))
        except (TypeError, ValueError) as e:
            raise DeepSaltInputError(f"STAC item {item.id}", f"gain, offset or nodata is not a number ({e})",
                                     "fix enmap:gain_of_band / enmap:offset_of_band / enmap:nodata in the item") from None
        return cls(item=item, bands=bands, gain=gain, offset=offset, nodata=nodata, allow_http=allow_http)

    @property
    def id(self) -> str:
        return self.item.id

    def href(self, key: str) -> str:
        if key not in self.item.assets:
            raise DeepSaltInputError(f"STAC item {self.id}", f"missing asset '{key}'",
                                     f"drop '{key}' from the quality masks to apply, or fix the item")
        return check_href(self.item.assets[key].href, f"STAC item {self.id} asset '{key}'", self.allow_http)

    @contextlib.contextmanager
    def open_image(self):
        """The image as an open rasterio dataset (GTiff driver only); its band count must match ``eo:bands``."""
        href = self.href(self.IMAGE_ASSET)
        with open_raster(href, f"EnMAP image of {self.id}") as ds:
            if ds.count != len(self.bands):
                raise DeepSaltInputError(href, f"image has {ds.count} bands but the item's eo:bands lists {len(self.bands)}",
                                         "the item metadata and the COG disagree: re-download the scene or fix the item")
            yield ds

    def header(self) -> dict:
        """CRS, transform and size of the image."""
        with self.open_image() as ds:
            return {"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width}

    def read_dn(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS, window_for=None):
        """The image's raw DN ``(band, y, x)`` (int16 for EnMAP L2A), the quality-mask flags ``(y, x)`` (True:
        masked), and the window's transform and CRS; DN is None when the masks flag the whole window.

        Opens the image once and each quality mask once. ``window`` is in the scene's pixel grid (None: the
        whole scene); ``window_for(header)``, if given, picks it from the open image's ``crs``, ``transform``,
        ``height`` and ``width`` (returning None: nothing to read, and None is returned). The masks are read
        first, so a window they flag entirely costs no image decode. Nodata is not applied here (see
        ``nodata_rows`` and ``read_array``): callers that keep a few pixels test only those.
        """
        image = self.href(self.IMAGE_ASSET)
        with self.open_image() as ds:
            if window_for is not None:
                window = window_for({"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width})
                if window is None:
                    return None
            win = window or Window(0, 0, ds.width, ds.height)
            bad = np.zeros((int(win.height), int(win.width)), bool)
            try:
                for key in quality:
                    with open_raster(self.href(key), f"quality mask '{key}' of {self.id}") as q:
                        if (q.height, q.width) != (ds.height, ds.width):
                            raise DeepSaltInputError(self.href(key), f"quality mask shape {(q.height, q.width)} differs from the image "
                                                     f"{(ds.height, ds.width)}")
                        bad |= q.read(1, window=win) == 1
                dn = None if bad.all() else ds.read(window=win)
            except (RasterioIOError, OSError) as e:
                raise DeepSaltInputError(image, f"EnMAP image or quality mask of {self.id} is corrupt or truncated: reading "
                                         f"pixels failed ({str(e)[:160]})", "re-download or re-write the file") from None
            return dn, bad, ds.window_transform(win), ds.crs

    def nodata_rows(self, dn_rows: np.ndarray) -> np.ndarray:
        """True for rows of DN ``(n, band)`` that hold the nodata value in any band."""
        return (dn_rows == self.nodata).any(axis=1)

    def read_array(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS, window_for=None):
        """Reflectance ``(band, y, x)`` float32 with NaN at nodata and masked pixels, its transform and CRS
        (see ``read_dn`` for ``window`` and ``window_for``)."""
        got = self.read_dn(window, quality, window_for)
        if got is None:
            return None
        dn, bad, tr, crs = got
        if dn is None:
            return np.full((len(self.bands), *bad.shape), np.nan, np.float32), tr, crs
        bad |= (dn == self.nodata).any(axis=0)
        refl = dn.astype(np.float32) * self.gain[:, None, None] + self.offset[:, None, None]
        refl[:, bad] = np.nan
        return refl, tr, crs

    def read(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS,
             require_valid: bool = True) -> xr.DataArray:
        """Reflectance as a georeferenced ``DataArray (band, y, x)`` (see ``read_array``). With ``require_valid``
        an all-NaN result is an error naming the scene."""
        refl, tr, crs = self.read_array(window, quality)
        if require_valid and np.isnan(refl).all():
            raise DeepSaltInputError(self.href(self.IMAGE_ASSET),
                                     "no valid pixel: the scene (window) is entirely nodata or masked",
                                     "drop this scene (e.g. a lower --max-cloud) or check its quality masks")
        h, w = refl.shape[1:]
        out = xr.DataArray(refl, dims=("band", "y", "x"), coords={"y": tr.f + (np.arange(h) + 0.5) * tr.e,
                           "x": tr.c + (np.arange(w) + 0.5) * tr.a, "wavelength": ("band", self.bands.centers_nm),
                           "fwhm": ("band", self.bands.fwhm_nm), "band": list(self.bands.names)},
                           attrs={"scene_id": self.id, "units": "1"})
        return out.rio.write_crs(crs).rio.write_transform(tr)

    def sample_points(self, lon: np.ndarray, lat: np.ndarray, quality: tuple[str, ...] = QUALITY_MASKS) -> np.ndarray:
        """Reflectance ``(n, n_bands)`` of the pixels holding WGS84 points; NaN outside the scene and where
        masked. Reads one window: the points' bounding box."""
        from pyproj import Transformer

        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        at: dict = {}

        def window_for(h):
            xs, ys = Transformer.from_crs("EPSG:4326", h["crs"], always_xy=True).transform(lon, lat)
            cols, rows = ~h["transform"] * (np.asarray(xs), np.asarray(ys))
            cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
            inside = (rows >= 0) & (rows < h["height"]) & (cols >= 0) & (cols < h["width"])
            if not inside.any():
                return None
            r0, c0 = rows[inside].min(), cols[inside].min()
            at.update(inside=inside, rows=rows[inside] - r0, cols=cols[inside] - c0)
            return Window(c0, r0, cols[inside].max() - c0 + 1, rows[inside].max() - r0 + 1)

        out = np.full((len(lon), len(self.bands)), np.nan, np.float32)
        got = self.read_array(quality=quality, window_for=window_for)
        if got is not None:
            out[at["inside"]] = got[0][:, at["rows"], at["cols"]].T
        return out


def pixels_at(items: list[pystac.Item], lon: np.ndarray, lat: np.ndarray, band_names: list[str],
              band_centers: list[float], quality: tuple[str, ...] = EnMAPScene.QUALITY_MASKS) -> np.ndarray:
    """Reflectance ``(n, len(band_names))`` at WGS84 points from the first scene (least cloud, then newest) with a
    valid pixel there; rows stay NaN where no scene has one."""
    out = np.full((len(lon), len(band_names)), np.nan, np.float32)
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    for item in sorted(items, key=priority):
        todo = np.flatnonzero(~np.isfinite(out).all(1))
        x0, y0, x1, y1 = item.bbox
        todo = todo[(lon[todo] >= x0) & (lon[todo] <= x1) & (lat[todo] >= y0) & (lat[todo] <= y1)]
        if not len(todo):
            continue
        scene = EnMAPScene.from_item(item)
        sel = select_bands(band_names, band_centers, scene.bands.names, scene.bands.centers_nm, f"STAC item {scene.id}")
        out[todo] = scene.sample_points(lon[todo], lat[todo], quality)[:, sel]
    return out
