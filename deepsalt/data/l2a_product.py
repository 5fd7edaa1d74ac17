"""EnMAP L2A products as DLR delivers them: the files of a product and its METADATA.XML, read and written.

A product ``<id>`` is ordered from DLR and arrives as ``<id>.ZIP`` holding ``<id>/<id>-METADATA.XML``, the spectral
image ``<id>/<id>-SPECTRAL_IMAGE.<TIF|GEOTIFF|BSQ|BIL|BIP|JP2>`` (the format is chosen at order time; ENVI images
come with a ``.HDR``; EOLab's analysis-ready copies are named ``..._COG.TIF``) and the quality layers
``<id>-QL_QUALITY_{CLASSES,CLOUD,CLOUDSHADOW,HAZE,CIRRUS,SNOW,TESTFLAGS}.TIF`` and ``<id>-QL_PIXELMASK.TIF``.

METADATA.XML paths, as EnMAP-Box's L2A importer (``importenmapl2aalgorithm.py``) and ESA SNAP's EnMAP reader
(``EnmapMetadata.java``) read them, under the root ``level_X``:

- ``specific/bandCharacterisation/bandID[@number]/{wavelengthCenterOfBand, FWHMOfBand, GainOfBand, OffsetOfBand}``;
- ``product/bandStatistics/bandID[@number]/{mean, stdDeviation}``: a band DLR filled with nodata has mean -1000000
  and sd 0 (EnMAP-Box drops such bands on import; its example L2A scene has 6);
- ``specific/{vnir,swir}ProductQuality/expectedChannelsList`` (comma-separated band numbers; the detectors overlap
  at 900-1000 nm, so in the wavelength-sorted L2A band list VNIR and SWIR bands interleave there);
- ``base/temporalCoverage/{startTime, stopTime}``, ``base/spatialCoverage/boundingPolygon/point/{frame, latitude,
  longitude}``, ``specific/backgroundValue`` (the nodata value), ``processing/productFormat``,
  ``product/ortho/{projection, resolution}``;
- the cover percentages ``cloudCover``, ``cloudShadow``, ``hazeCover``, ``cirrusCover``, ``snowCover`` and
  ``waterCover`` (of the imaged swath), read by tag name wherever they sit, as third-party readers do.

The CRS and geotransform are read from the image itself, never from the XML.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.bands import BandTable

#: image file endings DLR offers, in the order they are looked for (EnMAP-Box looks for the same)
IMAGE_ENDINGS = ("-SPECTRAL_IMAGE.TIF", "-SPECTRAL_IMAGE.GEOTIFF", "-SPECTRAL_IMAGE_COG.TIF", "-SPECTRAL_IMAGE.BSQ",
                 "-SPECTRAL_IMAGE.BIL", "-SPECTRAL_IMAGE.BIP", "-SPECTRAL_IMAGE.JP2", "-SPECTRAL_IMAGE.JPEG2000")
#: the GDAL driver each image format needs (``.JPEG2000`` is the ending SNAP's reader and GFZ's EnPT look for)
IMAGE_DRIVERS = {"TIF": "GTiff", "GEOTIFF": "GTiff", "BSQ": "ENVI", "BIL": "ENVI", "BIP": "ENVI", "JP2": "JP2OpenJPEG",
                 "JPEG2000": "JP2OpenJPEG"}
#: an EnMAP L2A product id as DLR names its products, e.g.
#: ``ENMAP01-____L2A-DT0000326721_20170626T102020Z_001_V000204_20200406T201930Z`` (satellite, level, datatake, start
#: time, tile, processor version, processing time). Ingest builds catalogue paths from it, so nothing else is accepted.
PRODUCT_ID = re.compile(r"ENMAP\d\d-_{4}L2A-DT\d{6,12}_\d{8}T\d{6}Z_\d{3}_V\d{6}_\d{8}T\d{6}Z")


def check_product_id(pid: str, where: str, what: str) -> str:
    """``pid`` if it is an EnMAP L2A product id (``PRODUCT_ID``), else a DeepSaltInputError naming it and ``what`` it
    came from: a name such as ``../x`` or ``/etc`` can never become a path."""
    if not PRODUCT_ID.fullmatch(pid or ""):
        raise DeepSaltInputError(where, f"{what} {pid[:120]!r} is not an EnMAP L2A product id (ENMAP0N-____L2A-DT<datatake>_"
                                 "<start>_<tile>_V<version>_<processed>)", "ingest products as DLR names them")
    return pid
#: quality layers besides the ones DeepSalt can apply as masks (``config.QUALITY_LAYERS``): kept, not applied.
#: asset key -> (file tag, role)
EXTRA_LAYERS = {"quality_testflags": ("QL_QUALITY_TESTFLAGS", "quality"), "defective_pixel_mask": ("QL_PIXELMASK", "data-mask")}


def layer_file(asset: str) -> str:
    """The file tag of a quality asset in DLR's products: ``QL_QUALITY_CLOUD``, ..., ``QL_PIXELMASK``."""
    from deepsalt.config import QUALITY_ASSETS

    return f"QL_QUALITY_{QUALITY_ASSETS[asset].suffix}" if asset in QUALITY_ASSETS else EXTRA_LAYERS[asset][0]
#: a band DLR filled with nodata: its statistics in METADATA.XML
BAD_BAND_MEAN, BAD_BAND_SD = -1_000_000.0, 0.0
COVER_TAGS = {"cloud": "cloudCover", "cloud_shadow": "cloudShadow", "haze": "hazeCover", "cirrus": "cirrusCover",
              "snow": "snowCover", "water": "waterCover"}
FRAMES = ("upper_left", "upper_right", "lower_right", "lower_left")


@dataclass
class L2AMetadata:
    """What METADATA.XML says about a product. Band arrays are in band-number order (1..n)."""

    name: str
    bands: BandTable
    gain: np.ndarray
    offset: np.ndarray
    start: datetime
    stop: datetime
    mean: np.ndarray | None = None  # band statistics (DN)
    sd: np.ndarray | None = None
    vnir: list[int] = field(default_factory=list)
    swir: list[int] = field(default_factory=list)
    footprint: list[tuple[float, float]] = field(default_factory=list)  # (lon, lat), closed ring
    covers: dict = field(default_factory=dict)  # percent of the swath, by COVER_TAGS key
    nodata: float = -32768.0
    product_format: str = ""
    projection: str = ""
    correction_type: str = ""  # processing/correctionType: Land_Mode, Water_Mode or Combined (DLR's atmospheric correction)
    width: int | None = None  # specific/widthOfOrthoScene, heightOfOrthoScene (px)
    height: int | None = None

    @property
    def bad_bands(self) -> list[str]:
        """Names of the bands DLR filled with nodata (band statistics mean -1000000 and sd 0)."""
        if self.mean is None or self.sd is None:
            return []
        bad = (self.mean <= BAD_BAND_MEAN) & (self.sd == BAD_BAND_SD)
        return [n for n, b in zip(self.bands.names, bad) if b]


def _text(root, path: str, where: str, required: bool = True) -> str | None:
    el = root.find(path)
    if el is None or el.text is None or not el.text.strip():
        if required:
            raise DeepSaltInputError(where, f"METADATA.XML has no {path}", "the product is incomplete: re-download it from DLR")
        return None
    return el.text.strip()


def _time(s: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise DeepSaltInputError(where, f"METADATA.XML time {s!r} is not an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _numbers(nodes, tag: str, where: str) -> np.ndarray:
    try:
        return np.array([float(n.findtext(tag)) for n in nodes])
    except (TypeError, ValueError):
        raise DeepSaltInputError(where, f"METADATA.XML band entry without a numeric {tag}",
                                 "the product is incomplete: re-download it from DLR") from None


def parse_metadata(xml: bytes | str, where: str) -> L2AMetadata:
    """Parse a METADATA.XML; anything missing or malformed is a DeepSaltInputError naming ``where`` and the element.
    (Python's expat limits entity expansion, so a hostile XML cannot blow up memory.)"""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DeepSaltInputError(where, f"METADATA.XML is not well-formed XML ({e})", "re-download the product") from None
    if root.tag != "level_X":
        raise DeepSaltInputError(where, f"not an EnMAP METADATA.XML (root element <{root.tag}>, expected <level_X>)")
    level = _text(root, "base/level", where, required=False)
    if level and level != "L2A":
        raise DeepSaltInputError(where, f"an EnMAP {level} product, not L2A", "order the L2A (surface reflectance) product")
    bands = root.findall("specific/bandCharacterisation/bandID")
    if not bands:
        raise DeepSaltInputError(where, "METADATA.XML has no specific/bandCharacterisation/bandID entries",
                                 "the product is incomplete: re-download it from DLR")
    numbers = [b.get("number") or str(i + 1) for i, b in enumerate(bands)]
    table = BandTable(tuple(numbers), _numbers(bands, "wavelengthCenterOfBand", where), _numbers(bands, "FWHMOfBand", where))
    stats = root.findall("product/bandStatistics/bandID")
    mean = sd = None
    if stats:
        if len(stats) != len(bands):
            raise DeepSaltInputError(where, f"METADATA.XML lists {len(bands)} bands but statistics for {len(stats)}")
        mean, sd = _numbers(stats, "mean", where), _numbers(stats, "stdDeviation", where)
    start = _time(_text(root, "base/temporalCoverage/startTime", where), where)
    stop_s = _text(root, "base/temporalCoverage/stopTime", where, required=False)

    def channels(det):
        s = _text(root, f"specific/{det}ProductQuality/expectedChannelsList", where, required=False)
        return [int(v) for v in s.replace(" ", "").split(",") if v] if s else []

    footprint = []
    for pt in root.findall("base/spatialCoverage/boundingPolygon/point"):
        if (pt.findtext("frame") or "").strip().lower() == "center":  # DLR's schema 00-02-00 adds the centre after the ring
            continue
        try:
            footprint.append((float(pt.findtext("longitude")), float(pt.findtext("latitude"))))
        except (TypeError, ValueError):
            raise DeepSaltInputError(where, "METADATA.XML footprint point without numeric latitude/longitude") from None
    if len(footprint) > 1 and np.allclose(footprint[0], footprint[-1], atol=1e-6):
        footprint[-1] = footprint[0]  # DLR repeats the first corner to more digits: the ring is closed exactly
    elif footprint:
        footprint.append(footprint[0])
    if footprint and len(footprint) < 4:
        raise DeepSaltInputError(where, f"METADATA.XML footprint has {len(footprint) - 1} corner(s), not 4",
                                 "the product is incomplete: re-download it from DLR")
    covers = {}
    for key, tag in COVER_TAGS.items():
        v = root.find(f".//{tag}")
        try:
            covers[key] = float(v.text) if v is not None and v.text else None
        except ValueError:
            raise DeepSaltInputError(where, f"METADATA.XML {tag} {v.text!r} is not a number") from None
    nodata = _text(root, "specific/backgroundValue", where, required=False)
    name = (_text(root, "metadata/name", where, required=False) or "").removesuffix("-METADATA.XML")
    return L2AMetadata(name=name, bands=table, gain=_numbers(bands, "GainOfBand", where),
                       offset=_numbers(bands, "OffsetOfBand", where), start=start,
                       stop=_time(stop_s, where) if stop_s else start, mean=mean, sd=sd, vnir=channels("vnir"),
                       swir=channels("swir"), footprint=footprint, covers={k: v for k, v in covers.items() if v is not None},
                       nodata=float(nodata) if nodata else -32768.0,
                       product_format=_text(root, "processing/productFormat", where, required=False) or "",
                       projection=_text(root, "product/ortho/projection", where, required=False) or "",
                       correction_type=_text(root, "processing/correctionType", where, required=False) or "",
                       width=_int(root, "specific/widthOfOrthoScene", where), height=_int(root, "specific/heightOfOrthoScene", where))


def _int(root, path: str, where: str) -> int | None:
    s = _text(root, path, where, required=False)
    try:
        return int(s) if s else None
    except ValueError:
        raise DeepSaltInputError(where, f"METADATA.XML {path} {s!r} is not a whole number") from None


def _sub(parent, tag: str, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def metadata_xml(m: L2AMetadata, image_file: str, width: int, height: int, note: str = "") -> bytes:
    """A METADATA.XML for ``m`` in DLR's layout (the elements ``parse_metadata`` and the third-party readers use)."""
    root = ET.Element("level_X")
    md = _sub(root, "metadata")
    _sub(_sub(md, "schema"), "versionSchema", "01.04.00")
    _sub(md, "name", f"{m.name}-METADATA.XML")
    if note:
        _sub(md, "comment", note)
    base = _sub(root, "base")
    _sub(base, "level", "L2A")
    _sub(base, "format", "ENMAP_HSI_L2A")
    tc = _sub(base, "temporalCoverage")
    _sub(tc, "startTime", _iso(m.start))
    _sub(tc, "stopTime", _iso(m.stop))
    poly = _sub(_sub(base, "spatialCoverage"), "boundingPolygon")
    for frame, (lon, lat) in zip((*FRAMES, FRAMES[0]), m.footprint):
        pt = _sub(poly, "point")
        _sub(pt, "frame", frame)
        _sub(pt, "latitude", f"{lat:.6f}")
        _sub(pt, "longitude", f"{lon:.6f}")
    proc = _sub(root, "processing")
    _sub(proc, "productFormat", m.product_format)
    if m.correction_type:
        _sub(proc, "correctionType", m.correction_type)
    spec = _sub(root, "specific")
    _sub(spec, "widthOfOrthoScene", width)
    _sub(spec, "heightOfOrthoScene", height)
    _sub(spec, "backgroundValue", int(m.nodata))
    for det, chans in (("vnir", m.vnir), ("swir", m.swir)):
        q = _sub(spec, f"{det}ProductQuality")
        _sub(q, "numChannelsExpected", len(chans))
        _sub(q, "expectedChannelsList", ",".join(str(c) for c in chans))
    qual = _sub(spec, "qualityFlag")
    for key, tag in COVER_TAGS.items():
        if key in m.covers:
            _sub(qual, tag, f"{m.covers[key]:.2f}")
    bc = _sub(spec, "bandCharacterisation")
    for n, c, w, g, o in zip(m.bands.names, m.bands.centers_nm, m.bands.fwhm_nm, m.gain, m.offset):
        b = _sub(bc, "bandID", number=n)
        _sub(b, "wavelengthCenterOfBand", f"{c:g}")
        _sub(b, "FWHMOfBand", f"{w:g}")
        _sub(b, "GainOfBand", f"{g:g}")
        _sub(b, "OffsetOfBand", f"{o:g}")
    prod = _sub(root, "product")
    _sub(_sub(_sub(prod, "image"), "merge"), "name", image_file)
    ortho = _sub(prod, "ortho")
    _sub(ortho, "projection", m.projection)
    _sub(ortho, "resolution", 30)
    if m.mean is not None:
        bs = _sub(prod, "bandStatistics")
        for n, mu, s in zip(m.bands.names, m.mean, m.sd):
            b = _sub(bs, "bandID", number=n)
            _sub(b, "mean", f"{mu:.6g}")
            _sub(b, "stdDeviation", f"{s:.6g}")
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
