"""The synthetic world's scenes as DLR ships EnMAP L2A products: METADATA.XML and ``<id>.ZIP`` deliveries.

A delivery holds ``<id>/<id>-METADATA.XML``, the spectral image (band-sequential GeoTIFF or ENVI BSQ with its
header, the two formats alternating between scenes), the quality layers ``QL_QUALITY_{CLASSES,CLOUD,CLOUDSHADOW,
HAZE,CIRRUS,SNOW,TESTFLAGS}`` and ``QL_PIXELMASK`` as GeoTIFFs, exactly as ``deepsalt ingest`` and third-party
readers expect them (``data.l2a_product``).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer

from deepsalt.config import QUALITY_LAYERS
from deepsalt.data.l2a_product import EXTRA_LAYERS, L2AMetadata, layer_file, metadata_xml

#: bands DLR fills with nodata in the synthetic products: 130-135 (1331-1390 nm), the 6 the method drops anyway
BAD_BANDS = (130, 131, 132, 133, 134, 135)
#: SWIR bands inside the VNIR/SWIR overlap (900-1000 nm) of the wavelength-sorted band list; the other overlap bands
#: are VNIR. Read off the band table: the VNIR samples continue their ~8.1 nm steps and FWHM (10.1-10.7 nm) from band
#: 79, the SWIR ones start at 901.96 nm with FWHM 9.2 nm and continue into band 102. 91 VNIR + 133 SWIR = 224.
SWIR_IN_OVERLAP = (80, 82, 85, 87, 89, 91, 94, 96, 98, 100)
FORMATS = ("GeoTIFF+Metadata", "BSQ+Metadata")
NOTE = "DeepSalt synthetic scene in DLR's L2A layout, not a DLR product"


def detector_channels(n_bands: int = 224) -> tuple[list[int], list[int]]:
    """(VNIR, SWIR) band numbers of the wavelength-sorted L2A band list."""
    swir = [b for b in range(1, n_bands + 1) if b in SWIR_IN_OVERLAP or b > 101]
    return [b for b in range(1, n_bands + 1) if b not in swir], swir


def scene_metadata(scene: dict, r: dict, bands, fmt: str) -> L2AMetadata:
    """METADATA.XML contents of a rendered scene: band table and scaling, band statistics over the swath (DN; DLR's
    -1000000 and 0 for the bad bands), times, footprint, cover percentages."""
    dn, fp = r["dn"], r["footprint"]
    inside = dn[:, fp].astype(np.float64)
    mean, sd = inside.mean(axis=1), inside.std(axis=1)
    bad = np.isin(np.arange(1, len(bands) + 1), BAD_BANDS)
    mean[bad], sd[bad] = -1_000_000.0, 0.0
    n = dn.shape[1]
    t = r["transform"]
    to_ll = Transformer.from_crs(f"EPSG:{scene['epsg']}", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform([t.c, t.c + n * t.a, t.c + n * t.a, t.c, t.c], [t.f, t.f, t.f + n * t.e, t.f + n * t.e, t.f])
    vnir, swir = detector_channels(len(bands))
    swath = max(int(fp.sum()), 1)
    covers = {"cloud": round(100 * r["cloud_cover"], 2), "haze": round(100 * r["haze_cover"], 2),
              "cirrus": round(100 * r["cirrus_cover"], 2), "cloud_shadow": round(100 * r["masks"]["cloud_shadow"].sum() / swath, 2),
              "snow": 0.0, "water": round(100 * float((r["classes"] == 2).sum()) / swath, 2)}
    return L2AMetadata(name=scene["id"], bands=bands, gain=np.full(len(bands), 1e-4), offset=np.zeros(len(bands)),
                       start=scene["datetime"], stop=scene["datetime"] + timedelta(seconds=4), mean=mean, sd=sd,
                       vnir=vnir, swir=swir, footprint=list(zip(lon, lat)), covers=covers, nodata=-32768.0,
                       product_format=fmt, correction_type="Land_Mode", projection=f"UTM_Zone{scene['epsg'] % 100}_{'North' if scene['epsg'] < 32700 else 'South'}")


def layer_arrays(r: dict) -> dict[str, np.ndarray]:
    """Each quality layer's raster by its asset key (``quality_cloud``, ..., ``defective_pixel_mask``)."""
    out = {q.asset: (r["classes"] if name == "water" else r["masks"][name]).astype(np.uint8) for name, q in QUALITY_LAYERS.items()}
    out.update({key: np.zeros_like(r["classes"], np.uint8) for key in EXTRA_LAYERS})  # nothing flagged
    return out


def write_delivery(out_dir: Path, scene: dict, r: dict, bands, fmt: str) -> Path:
    """``out_dir/<id>.ZIP``, the scene as DLR delivers it, in ``fmt`` (one of ``FORMATS``); written atomically."""
    sid, crs = scene["id"], f"EPSG:{scene['epsg']}"
    meta = scene_metadata(scene, r, bands, fmt)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        d = Path(tmp) / sid
        d.mkdir()
        n_b, h, w = r["dn"].shape
        common = dict(count=n_b, height=h, width=w, dtype="int16", crs=crs, transform=r["transform"], nodata=-32768)
        if fmt == "BSQ+Metadata":
            image = d / f"{sid}-SPECTRAL_IMAGE.BSQ"
            with rasterio.open(image, "w", driver="ENVI", interleave="bsq", **common) as dst:
                dst.write(r["dn"])
            (d / f"{sid}-SPECTRAL_IMAGE.hdr").rename(d / f"{sid}-SPECTRAL_IMAGE.HDR")  # DLR's spelling
        else:
            image = d / f"{sid}-SPECTRAL_IMAGE.TIF"
            with rasterio.open(image, "w", driver="GTiff", interleave="band", **common) as dst:
                dst.write(r["dn"])
        for key, arr in layer_arrays(r).items():
            with rasterio.open(d / f"{sid}-{layer_file(key)}.TIF", "w", driver="GTiff", count=1, height=h, width=w, dtype="uint8",
                               crs=crs, transform=r["transform"]) as dst:
                dst.write(arr, 1)
        (d / f"{sid}-METADATA.XML").write_bytes(metadata_xml(meta, image.name, w, h, NOTE))
        for aux in d.glob("*.aux.xml"):
            aux.unlink()
        part = Path(tmp) / f"{sid}.ZIP"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for f in sorted(d.iterdir()):
                z.write(f, f"{sid}/{f.name}")
        final = out_dir / f"{sid}.ZIP"
        os.replace(part, final)
    return final
