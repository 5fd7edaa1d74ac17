"""EnMAP L2A scenes read through rasterio/GDAL (GTiff driver only) from local files, S3 (``/vsis3/``) or HTTPS.

Reflectance = DN x ``enmap:gain_of_band`` + ``enmap:offset_of_band`` (0.0001 and 0 in DLR's items);
DN equal to the item's ``enmap:nodata`` (-32768) become NaN in their band only, and pixels flagged by the quality
masks become NaN in every band. DLR fills an L2A product's bad bands (6 in EnMAP-Box's example scene) with nodata
in every pixel, so nodata is judged per band, and a pixel counts as missing only where a band the caller reads is
nodata. The band table always comes from the item's ``eo:bands``, never from assumptions about file order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pystac
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from deepsalt.data.cog import check_href, one_gdal_env, open_raster
from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.stac import priority
from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.bands import BandTable, select_bands

if TYPE_CHECKING:
    import xarray as xr


@dataclass
class EnMAPScene:
    """One EnMAP L2A item: its image and quality assets, band table, scaling and nodata.

    Class attributes mirror DLR's ``ENMAP_HSI_L2A`` item layout.
    """

    IMAGE_ASSET = "image"
    QUALITY_MASKS = tuple(QUALITY_ASSETS)
    #: item property listing the bands that the product fills with nodata (names as in eo:bands; `deepsalt ingest` writes it)
    BAD_BANDS = "deepsalt:bad_bands"
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

    @one_gdal_env
    def read_dn(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS, window_for=None):
        """The image's raw DN ``(band, y, x)`` (int16 for EnMAP L2A), the quality flags ``(y, x)`` as uint8 codes (0:
        clear; ``i + 1``: masked by ``quality[i]``, the first layer that flags it), and the window's transform and
        CRS; DN is None when the masks flag the whole window.

        Opens the image once and each quality mask once. ``window`` is in the scene's pixel grid (None: the
        whole scene); ``window_for(header)``, if given, picks it from the open image's ``crs``, ``transform``,
        ``height`` and ``width`` (returning None: nothing to read, and None is returned). The masks are read
        first, so a window they flag entirely costs no image decode. Nodata is not applied here (see
        ``nodata_rows`` and ``read_array``): callers that keep a few pixels test only those, in their own bands.
        """
        image = self.href(self.IMAGE_ASSET)
        with self.open_image() as ds:
            if window_for is not None:
                window = window_for({"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width})
                if window is None:
                    return None
            win = window or Window(0, 0, ds.width, ds.height)
            flags = np.zeros((int(win.height), int(win.width)), np.uint8)
            try:
                for i, key in enumerate(quality):
                    with open_raster(self.href(key), f"quality mask '{key}' of {self.id}") as q:
                        if (q.height, q.width) != (ds.height, ds.width):
                            raise DeepSaltInputError(self.href(key), f"quality mask shape {(q.height, q.width)} differs from the image "
                                                     f"{(ds.height, ds.width)}")
                        hit = np.isin(q.read(1, window=win), QUALITY_ASSETS[key].masked)
                        flags[hit & (flags == 0)] = i + 1
                dn = None if flags.all() else ds.read(window=win)
            except (RasterioIOError, OSError) as e:
                raise DeepSaltInputError(image, f"EnMAP image or quality mask of {self.id} is corrupt or truncated: reading "
                                         f"pixels failed ({str(e)[:160]})", "re-download or re-write the file") from None
            return dn, flags, ds.window_transform(win), ds.crs

    def nodata_rows(self, dn_rows: np.ndarray) -> np.ndarray:
        """True for rows of DN ``(n, band)`` that hold the nodata value in any of their bands (pass only the bands
        that will be used: a product's bad bands are nodata everywhere)."""
        return (dn_rows == self.nodata).any(axis=1)

    @property
    def bad_bands(self) -> list[str]:
        """Bands the product fills with nodata everywhere, as its item records them (``deepsalt ingest`` takes them
        from METADATA.XML's band statistics); empty when the item does not say."""
        return [str(b) for b in self.item.properties.get(self.BAD_BANDS) or []]

    def read_array(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS, window_for=None):
        """Reflectance ``(band, y, x)`` float32, NaN where a band is nodata and in every band of masked pixels, its
        transform and CRS (see ``read_dn`` for ``window`` and ``window_for``)."""
        got = self.read_dn(window, quality, window_for)
        if got is None:
            return None
        dn, flags, tr, crs = got
        if dn is None:
            return np.full((len(self.bands), *flags.shape), np.nan, np.float32), tr, crs
        refl = dn.astype(np.float32) * self.gain[:, None, None] + self.offset[:, None, None]
        refl[dn == self.nodata] = np.nan
        refl[:, flags > 0] = np.nan
        return refl, tr, crs

    def read(self, window: Window | None = None, quality: tuple[str, ...] = QUALITY_MASKS,
             require_valid: bool = True) -> xr.DataArray:
        """Reflectance as a georeferenced ``DataArray (band, y, x)`` (see ``read_array``). With ``require_valid``
        an all-NaN result is an error naming the scene."""
        import rioxarray  # noqa: F401 - registers the .rio accessor; imported here: the map's read tasks never need it
        import xarray as xr

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

    def pixels(self, lon: np.ndarray, lat: np.ndarray, quality: tuple[str, ...] = QUALITY_MASKS) -> dict:
        """The pixels holding WGS84 points, read as the mapping reads a tile (one window, the points' bounding box;
        the pixel that holds the point, by index): ``inside (n,)``, ``row``/``col (n,)`` (-1 outside), ``flags (n,)``
        (0 clear, else 1 + the index in ``quality`` of the first layer that masks it) and ``dn (n, n_bands)``
        (raw, the nodata value where the scene has none; outside or fully masked: nodata)."""
        from pyproj import Transformer

        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        n = len(lon)
        out = {"inside": np.zeros(n, bool), "row": np.full(n, -1, np.int64), "col": np.full(n, -1, np.int64),
               "flags": np.zeros(n, np.uint8), "dn": np.full((n, len(self.bands)), self.nodata)}
        at: dict = {}

        def window_for(h):
            xs, ys = Transformer.from_crs("EPSG:4326", h["crs"], always_xy=True).transform(lon, lat)
            cols, rows = ~h["transform"] * (np.asarray(xs), np.asarray(ys))
            cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
            inside = (rows >= 0) & (rows < h["height"]) & (cols >= 0) & (cols < h["width"])
            if not inside.any():
                return None
            r0, c0 = rows[inside].min(), cols[inside].min()
            at.update(inside=inside, rows=rows, cols=cols, r0=r0, c0=c0)
            return Window(c0, r0, cols[inside].max() - c0 + 1, rows[inside].max() - r0 + 1)

        got = self.read_dn(quality=quality, window_for=window_for)
        if got is None:
            return out
        dn, flags, _, _ = got
        ins = at["inside"]
        r, c = at["rows"][ins] - at["r0"], at["cols"][ins] - at["c0"]
        out["inside"], out["row"][ins], out["col"][ins] = ins, at["rows"][ins], at["cols"][ins]
        out["flags"][ins] = flags[r, c]
        if dn is not None:
            out["dn"] = out["dn"].astype(dn.dtype)
            out["dn"][ins] = dn[:, r, c].T
        return out

    def reflectance(self, dn: np.ndarray) -> np.ndarray:
        """Reflectance of raw DN rows ``(n, n_bands)``: DN x gain + offset, NaN where a band is nodata."""
        refl = dn.astype(np.float32) * self.gain + self.offset
        refl[dn == self.nodata] = np.nan
        return refl

    def sample_points(self, lon: np.ndarray, lat: np.ndarray, quality: tuple[str, ...] = QUALITY_MASKS) -> np.ndarray:
        """Reflectance ``(n, n_bands)`` of the pixels holding WGS84 points; NaN outside the scene, where masked and
        in the bands that are nodata."""
        px = self.pixels(lon, lat, quality)
        refl = self.reflectance(px["dn"])
        refl[~px["inside"] | (px["flags"] > 0)] = np.nan
        return refl


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
