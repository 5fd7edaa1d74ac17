"""`deepsalt ingest`: EnMAP L2A products as DLR delivers them become a STAC catalogue that DeepSalt maps from.

Sources (``find_sources``): product ZIPs, unzipped product folders, DLR's download archives (``.tar.gz`` holding
product ZIPs), folders or globs holding them, on a local disk or at any fsspec URL; or DLR STAC Items saved from its API (an Item or an ItemCollection JSON) together with
``assets_root``, the folder where the user keeps the downloads (DLR's asset links need an account login).

Per product, one Ray task (``ingest_product``):

1. METADATA.XML is parsed (``data.l2a_product``): band table, gains and offsets, bad bands from the band
   statistics, times, cover percentages, footprint.
2. The spectral image (GeoTIFF, ENVI BSQ/BIL/BIP, or JPEG2000 through GDAL's JP2OpenJPEG driver) and each quality
   layer are written as COGs, int16 and uint8, with ``IMAGE_COG`` (chosen by measuring the map path's read rate:
   bench/ingest.py). The CRS and geotransform come from the image.
3. A STAC Item in DLR's layout (``data.stac.enmap_item``; relative asset hrefs) records the source's identity
   (``deepsalt:source``) and the bad bands (``deepsalt:bad_bands``); it is written last, so an Item on disk means a
   complete product. A product whose source is unchanged since its last ingest is not written again.

Then ``CATALOG/collection.json`` links every Item in the catalogue (relative hrefs, relocatable), and, with a STAC
API URL, the Items are posted to it (Transaction extension). A damaged ZIP, a missing file or a band count that
disagrees with the XML stops that product with one line; the others go on.

Nothing in a product can turn ingest against the user: catalogue paths are built only from ids that match DLR's
pattern (``l2a_product.PRODUCT_ID``) and are checked to stay inside ``--out``; each member is inflated in bounded
blocks up to a cap from the scene size the XML declares (a ZIP bomb stops with one line, memory and temp disk
bounded); files of two products, two images, or an XML naming another product than its files are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
from isal.isal_zlib import crc32 as _crc32  # ISA-L's DEFLATE, for _extract
from isal.isal_zlib import decompressobj as _decompressobj
from isal.isal_zlib import error as _InflateError

from deepsalt import __version__
from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.cog import file_stamp
from deepsalt.data.l2a_product import (EXTRA_LAYERS, IMAGE_DRIVERS, IMAGE_ENDINGS, L2AMetadata, check_product_id, layer_file,
                                       parse_metadata)
from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url

#: bump when what ingest writes changes: every product is then written again
INGEST_FORMAT = "deepsalt-ingest/2"  # 2: correctionType, covers from the quality layers
#: the spectral image's COG layout: ZSTD level 1 with horizontal differencing, 256 px blocks, pixel-interleaved, no
#: overviews (the map path reads full resolution). Of the layouts bench/ingest.py measured (pixel- and band-
#: interleaved; DEFLATE, ZSTD, LZW; 256 and 512 px blocks), the fastest for the map path to read and the quickest to
#: write (bench/results/ingest.json)
IMAGE_COG = {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "LEVEL": "1", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}
MASK_COG = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}
ZIP_ENDINGS = (".zip",)
#: DLR's download archives: a tar (usually gzipped) of the ordered products' ZIPs
TAR_ENDINGS = (".tar.gz", ".tgz", ".tar")
#: the most bytes a product's METADATA.XML or ENVI header may inflate to (DLR's XML is ~4 MB)
TEXT_CAP = 64 << 20
#: scene size assumed when METADATA.XML gives none: EnMAP L2A tiles are ~1000-1300 px a side
FALLBACK_SIDE = 2048
#: inflate in blocks of at most this many bytes: memory stays bounded whatever a member claims
INFLATE_BLOCK = 4 << 20


@dataclass(frozen=True)
class Source:
    """One product to ingest: a ZIP, a product folder (holding ``<id>-METADATA.XML``), or a DLR STAC Item whose files
    lie under ``assets_root``."""

    href: str
    kind: str  # "zip" | "folder" | "item"
    item: str | None = None  # the DLR Item (JSON text), for kind "item"
    assets_root: str | None = None
    member: str | None = None  # for a ZIP inside a download archive (``href``): its name there

    @property
    def product_id(self) -> str:
        """The id the source's name suggests (the files inside decide: ``_build_product``)."""
        if self.kind == "item":
            return str(json.loads(self.item).get("id", ""))
        name = PurePosixPath((self.member or self.href).rstrip("/")).name
        return name.rsplit(".", 1)[0] if self.kind == "zip" else name

    @property
    def where(self) -> str:
        """How messages name the source (credentials redacted)."""
        if self.kind == "item":
            return f"STAC item {self.product_id}"
        return redact_url(self.href) + (f"!{self.member}" if self.member else "")


def _url(fs, path: str, like: str) -> str:
    """``path`` of ``fs`` written as the user wrote ``like``: with the same protocol prefix, or as a local path."""
    if "://" in like and not like.startswith("file://"):
        return fs.unstrip_protocol(path)
    return path


def _tar_products(fs, path: str, like: str) -> list[Source]:
    """The product ZIPs inside one of DLR's download archives."""
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as t:
            names = sorted(m.name for m in t.getmembers() if m.isfile() and m.name.lower().endswith(ZIP_ENDINGS))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DeepSaltInputError(redact_url(_url(fs, path, like)), f"damaged archive ({type(e).__name__}: {str(e)[:120]})",
                                 "download it again") from None
    if not names:
        raise DeepSaltInputError(redact_url(_url(fs, path, like)), "holds no product ZIP",
                                 "DLR's download archives hold one <id>.ZIP per ordered product")
    return [Source(_url(fs, path, like), "zip", member=n) for n in names]


def _classify(fs, path: str, like: str, assets_root: str | None) -> list[Source]:
    name = PurePosixPath(path).name
    if fs.isdir(path):
        files = [p for p in fs.find(path)]
        xmls = [p for p in files if p.upper().endswith("-METADATA.XML")]
        zips = [p for p in files if p.lower().endswith(ZIP_ENDINGS)]
        tars = [p for p in files if p.lower().endswith(TAR_ENDINGS)]
        folders = sorted({str(PurePosixPath(p).parent) for p in xmls})
        return ([Source(_url(fs, f, like), "folder") for f in folders] + [Source(_url(fs, z, like), "zip") for z in sorted(zips)]
                + [s for t in sorted(tars) for s in _tar_products(fs, t, like)])
    if name.lower().endswith(ZIP_ENDINGS):
        return [Source(_url(fs, path, like), "zip")]
    if name.lower().endswith(TAR_ENDINGS):
        return _tar_products(fs, path, like)
    if name.upper().endswith("-METADATA.XML"):
        return [Source(_url(fs, str(PurePosixPath(path).parent), like), "folder")]
    if name.lower().endswith(".json"):
        if not assets_root:
            raise DeepSaltInputError(like, "is a STAC Item or ItemCollection", "pass --assets-root DIR, the folder holding the "
                                     "downloaded products (ZIPs or folders) of its items")
        try:
            doc = json.loads(fs.cat(path))
        except Exception as e:  # noqa: BLE001
            raise DeepSaltInputError(like, f"not readable JSON ({type(e).__name__})", "pass a STAC Item or ItemCollection") from None
        feats = doc.get("features", []) if doc.get("type") == "FeatureCollection" else [doc] if doc.get("type") == "Feature" else None
        if not feats:
            raise DeepSaltInputError(like, "holds no STAC Item", "pass a DLR STAC Item or ItemCollection saved from its API")
        return [Source(like, "item", json.dumps(f), assets_root) for f in feats]
    raise DeepSaltInputError(like, "is not an EnMAP L2A product ZIP, a download archive (.tar.gz), a product folder (with "
                             "-METADATA.XML) or a STAC Item JSON")


def find_sources(srcs: list[str], assets_root: str | None = None) -> tuple[list[Source], list[dict]]:
    """The products the user named (the first source of each product id), and one failure line for each name that
    holds none (missing, or not a product)."""
    found, failed, seen = [], [], set()
    for src in srcs:
        try:
            fs, path = fsspec.core.url_to_fs(src)
            if any(c in path for c in "*?["):
                paths = sorted(fs.glob(path))
            elif fs.exists(path):
                paths = [path]
            else:
                raise DeepSaltInputError(redact_url(src), "does not exist", "check the path or URL")
            got = [s for p in paths for s in _classify(fs, p, src, assets_root)]
            if not got:
                raise DeepSaltInputError(redact_url(src), "holds no EnMAP product (no *.ZIP, no *-METADATA.XML)")
        except DeepSaltInputError as e:
            failed.append({"source": redact_url(src), "status": "failed", "error": str(e)})
            continue
        for s in got:  # one source per product: a ZIP and its unzipped folder would race for the same Item
            if s.product_id not in seen:
                seen.add(s.product_id)
                found.append(s)
    return found, failed


# --- one product ---------------------------------------------------------------------------------------------

def _find_download(source: Source) -> Source:
    """A DLR Item's product under ``assets_root``: ``<id>.ZIP``, or a folder with ``<id>-METADATA.XML``."""
    pid = check_product_id(source.product_id, source.where, "the item's id")
    fs, root = fsspec.core.url_to_fs(source.assets_root)
    for p in sorted(fs.find(root)):
        name = PurePosixPath(p).name
        if name.lower() == f"{pid}.zip".lower():
            return Source(_url(fs, p, source.assets_root), "zip")
        if name == f"{pid}-METADATA.XML":
            return Source(_url(fs, str(PurePosixPath(p).parent), source.assets_root), "folder")
    raise DeepSaltInputError(f"STAC item {pid}", f"no download under {redact_url(source.assets_root)} (looked for {pid}.ZIP "
                             f"and a folder with {pid}-METADATA.XML)", "download the product from DLR into --assets-root")


def _member_role(name: str) -> str | None:
    """What a product file is: ``metadata``, ``image``, ``header`` (ENVI), a quality asset key, or None."""
    up = name.upper()
    if up.endswith("-METADATA.XML"):
        return "metadata"
    if any(up.endswith(e) for e in IMAGE_ENDINGS):
        return "image"
    if up.endswith("-SPECTRAL_IMAGE.HDR"):
        return "header"
    stem = up.removesuffix(".TIF").removesuffix("_COG")
    for key in (*QUALITY_ASSETS, *EXTRA_LAYERS):
        if stem.endswith("-" + layer_file(key)):
            return key
    return None


def source_stamp(source: Source) -> str:
    """A hash of what the product's files are (size and mtime, or ETag) and how ingest writes them."""
    parts: list = [INGEST_FORMAT, IMAGE_COG, MASK_COG, source.item, source.member]
    if source.kind == "zip":
        parts.append(file_stamp(source.href, f"product {source.product_id}"))
    else:
        fs, path = fsspec.core.url_to_fs(source.href)
        for p in sorted(fs.ls(path, detail=False)):
            if _member_role(PurePosixPath(p).name):
                parts.append([PurePosixPath(p).name, file_stamp(_url(fs, p, source.href), "product file")])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


ROLE_NAMES = {"metadata": "METADATA.XML", "image": "spectral image", "header": "ENVI header"}


def _caps(xml: bytes | None) -> dict[str, int]:
    """The most bytes each kind of member may inflate to, from the scene size and band count the XML declares (with
    room for TIFF tiling and headers); a ZIP bomb exceeds them long before memory or disk run out."""
    import xml.etree.ElementTree as ET

    bands, h, w = 224, FALLBACK_SIDE, FALLBACK_SIDE
    try:
        root = ET.fromstring(xml) if xml else None
    except ET.ParseError:
        root = None  # parse_metadata says what is wrong with it
    if root is not None:
        n = len(root.findall("specific/bandCharacterisation/bandID"))
        try:
            h = int(root.findtext("specific/heightOfOrthoScene") or h)
            w = int(root.findtext("specific/widthOfOrthoScene") or w)
        except ValueError:
            pass
        bands = n or bands
    plane = (max(h, 1) + 512) * (max(w, 1) + 512)
    return {"metadata": TEXT_CAP, "header": TEXT_CAP, "image": bands * plane * 2 + (16 << 20), "layer": plane * 2 + (16 << 20)}


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"


def _roles(names: list[str], where: str) -> dict[str, str]:
    """``{role: name}`` for a product's files; two files in one role (two images, two products) are refused."""
    out: dict[str, str] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if "__MACOSX" in parts or parts[-1].startswith("._"):  # a Mac's resource forks in a re-zipped product
            continue
        role = _member_role(parts[-1])
        if role is None:
            continue
        if role in out:
            raise DeepSaltInputError(where, f"holds two {ROLE_NAMES.get(role, role)} files ({PurePosixPath(out[role]).name} and "
                                     f"{PurePosixPath(name).name})", "ingest one product per ZIP or folder, as DLR delivers them")
        out[role] = name
    return out


@contextlib.contextmanager
def staged(source: Source):
    """The product's files on local disk, ``{role: path}`` (see ``_member_role``), extracted from its ZIP or copied
    from remote storage into a temporary folder that is removed afterwards. Each ZIP member is inflated up to its cap
    (``_caps``), and the temp disk must hold them all before anything is written."""
    tmp = Path(tempfile.mkdtemp(prefix="deepsalt-ingest-"))
    where = source.where
    try:
        files: dict[str, str] = {}
        if source.kind == "zip":
            local = _local_zip(source, tmp)
            try:
                with zipfile.ZipFile(local) as z:
                    infos = {i.filename: i for i in z.infolist() if not i.is_dir()}
                    roles = _roles(list(infos), where)
                    (tmp / "product").mkdir()
                    xml = None
                    if "metadata" in roles:
                        files["metadata"] = _extract(z, local, infos[roles["metadata"]], tmp / "product", TEXT_CAP, where)
                        xml = Path(files["metadata"]).read_bytes()
                    caps = _caps(xml)
                    rest = {r: infos[n] for r, n in roles.items() if r != "metadata"}
                    need = sum(i.file_size for i in rest.values())
                    free = shutil.disk_usage(tmp).free
                    if need > free:
                        raise DeepSaltInputError(where, f"needs {_gib(need)} of temporary disk to unpack, {_gib(free)} is free "
                                                 f"in {tmp.parent}", "free space there or point TMPDIR at a larger disk")
                    for role, info in rest.items():
                        files[role] = _extract(z, local, info, tmp / "product", caps.get(role, caps["layer"]), where)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, _InflateError) as e:
                raise DeepSaltInputError(where, f"damaged ZIP ({type(e).__name__}: {str(e)[:120]})",
                                         "download the product again") from None
        else:
            fs, path = fsspec.core.url_to_fs(source.href)
            remote = "://" in source.href and not source.href.startswith("file://")
            for role, p in _roles(sorted(fs.ls(path, detail=False)), where).items():
                local = p
                if remote:
                    local = str(tmp / PurePosixPath(p).name)
                    fs.get(p, local)
                files[role] = local
        yield files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _local_zip(source: Source, tmp: Path) -> str:
    """A local path to the source's ZIP: itself, or a copy from remote storage or out of a download archive."""
    if source.member is None and ("://" not in source.href or source.href.startswith("file://")):
        return source.href
    fs, path = fsspec.core.url_to_fs(source.href)
    local = tmp / PurePosixPath(source.member or path).name
    if source.member is None:
        fs.get(path, str(local))
        return str(local)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as t:
            m = t.getmember(source.member)
            free = shutil.disk_usage(tmp).free
            if m.size > free:
                raise DeepSaltInputError(source.where, f"needs {_gib(m.size)} of temporary disk, {_gib(free)} is free",
                                         "free space there or point TMPDIR at a larger disk")
            with t.extractfile(m) as src, open(local, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        raise DeepSaltInputError(source.where, f"damaged archive ({type(e).__name__}: {str(e)[:120]})", "download it again") from None
    return str(local)


def _extract(z: zipfile.ZipFile, path: str, info: zipfile.ZipInfo, folder: Path, cap: int, where: str) -> str:
    """Copy one member out of the ZIP at ``path`` into ``folder``; returns the file's path. A DEFLATE member (DLR's
    ZIPs, the world's) is inflated by ISA-L, twice the speed of Python's zlib here (2.4 s against 4.9 s for a 661 MiB
    image: ingest's largest cost after the COG itself), its CRC-32 and size checked as zipfile checks them; other
    members go through zipfile. Memory stays bounded (blocks of ``INFLATE_BLOCK``), and so does disk: a member that
    declares, or inflates to, more than ``cap`` bytes or than it declares, stops with one line."""
    name = PurePosixPath(info.filename).name
    dst = folder / name
    if info.file_size > cap:
        raise DeepSaltInputError(where, f"{name} declares {_gib(info.file_size)}, more than the scene METADATA.XML describes "
                                 f"can need ({_gib(cap)})", "not a DLR product as delivered (a ZIP bomb?): download it again")
    limit = min(cap, info.file_size)

    def overflow():
        return DeepSaltInputError(where, f"{name} inflates past its declared {_gib(info.file_size)}",
                                  "not a DLR product as delivered (a ZIP bomb?): download it again")

    if info.flag_bits & 0x1:
        raise DeepSaltInputError(where, f"{name} is encrypted", "DLR's products are not: download the product again")
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        if info.compress_type not in zipfile.compressor_names or info.compress_type in (9, 10):  # Deflate64, PKWARE DCL
            raise DeepSaltInputError(where, f"{name} is compressed with ZIP method {info.compress_type} "
                                     f"({zipfile.compressor_names.get(info.compress_type, 'unknown')}), which Python's zipfile "
                                     "cannot read", "unzip it with 7-Zip or Info-ZIP and ingest the folder, or re-zip it "
                                     "with plain DEFLATE")
    if info.compress_type != zipfile.ZIP_DEFLATED:
        try:
            with z.open(info) as src, open(dst, "wb") as out:
                size = 0
                while block := src.read(INFLATE_BLOCK):
                    size += len(block)
                    if size > limit:
                        raise overflow()
                    out.write(block)
        except (NotImplementedError, RuntimeError) as e:
            raise DeepSaltInputError(where, f"{name} cannot be unpacked ({str(e)[:120]})",
                                     "unzip it with 7-Zip or Info-ZIP and ingest the folder") from None
        return str(dst)
    with open(path, "rb") as f, open(dst, "wb") as out:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header for {name}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        inflate, crc, size, left = _decompressobj(-15), 0, 0, info.compress_size
        while left or inflate.unconsumed_tail:
            block = inflate.unconsumed_tail
            if not block:
                block = f.read(min(left, 1 << 22))
                if not block:
                    raise EOFError(f"{name} is cut short")
                left -= len(block)
            data = inflate.decompress(block, INFLATE_BLOCK)
            crc, size = _crc32(data, crc), size + len(data)
            if size > limit:
                raise overflow()
            out.write(data)
        data = inflate.flush()
        crc, size = _crc32(data, crc), size + len(data)
        if size > limit:
            raise overflow()
        out.write(data)
    if crc != info.CRC or size != info.file_size:
        raise zipfile.BadZipFile(f"{name} fails its CRC-32 check")
    return str(dst)


def _open_image(path: str, meta: L2AMetadata, where: str):
    import rasterio
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    ext = path.rsplit(".", 1)[-1].upper()
    driver = IMAGE_DRIVERS.get(ext, "GTiff")
    with rasterio.Env() as env:
        if driver not in env.drivers():
            raise DeepSaltInputError(where, f"spectral image is {ext}, but this GDAL build has no {driver} driver",
                                     "order the product as GeoTIFF or ENVI, or install a GDAL with JPEG2000 support")
    try:
        ds = rasterio.open(path, driver=driver)
    except (RasterioError, CPLE_BaseError) as e:
        raise DeepSaltInputError(where, f"spectral image {PurePosixPath(path).name} is not readable ({str(e)[:120]})",
                                 "download the product again") from None
    if ds.count != len(meta.bands):
        ds.close()
        raise DeepSaltInputError(where, f"spectral image {PurePosixPath(path).name} has {ds.count} bands but METADATA.XML "
                                 f"describes {len(meta.bands)}", "the product is inconsistent: download it again")
    if ds.dtypes[0] != "int16":
        ds.close()
        raise DeepSaltInputError(where, f"spectral image is {ds.dtypes[0]}, not int16 DN as in DLR's L2A products",
                                 "ingest the product as DLR delivered it, not a converted copy")
    if ds.crs is None:
        ds.close()
        raise DeepSaltInputError(where, "spectral image has no CRS", "download the product again")
    return ds


def _write_cog(src, dst: Path, options: dict, where: str) -> None:
    import rasterio.shutil
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    try:
        rasterio.shutil.copy(src, str(dst), driver="COG", **options)
    except (RasterioError, CPLE_BaseError) as e:
        raise DeepSaltInputError(where, f"reading {PurePosixPath(getattr(src, 'name', str(src))).name} failed ({str(e)[:160]})",
                                 "the file is truncated or damaged: download the product again") from None


def _item_json(item, out_dir: Path) -> dict:
    """The Item with asset hrefs relative to its own file and links up to the catalogue's collection.json."""
    d = item.to_dict(include_self_link=False)
    for a in d["assets"].values():
        a["href"] = "./" + Path(a["href"]).name
    d["links"] = [{"rel": rel, "href": "../collection.json", "type": "application/json"} for rel in ("root", "parent", "collection")]
    return d


def build_product(files: dict, pid: str, stamp: str, work: Path, where: str) -> dict:
    """Write one product's COGs, METADATA.XML and Item into ``work/<id>/``; returns the Item as a dict. GDAL writes
    no side files (.aux.xml) beside the sources: a product folder stays as the user keeps it."""
    import rasterio

    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        return _build_product(files, pid, stamp, work, where)


def _file_product_id(path: str, role: str) -> str:
    """The product id a product file's name carries: its name before ``-METADATA.XML``, ``-SPECTRAL_IMAGE...``,
    ``-QL_...``."""
    name = PurePosixPath(path).name
    up = name.upper()
    for tag in ("-METADATA.XML", "-SPECTRAL_IMAGE", "-QL_"):
        if tag in up:
            return name[: up.rindex(tag)]
    return name


def _cover(files: dict, key: str, shape: tuple[int, int]) -> float | None:
    """Percent of the swath (pixels not background in QL_QUALITY_CLASSES) that a quality layer flags, for a cover
    METADATA.XML does not give; None without the layer."""
    import rasterio

    from deepsalt.config import QUALITY_LAYERS

    layer = QUALITY_LAYERS.get(key)
    if layer is None or layer.asset not in files:
        return None
    with rasterio.open(files[layer.asset], driver="GTiff") as q:
        a = q.read(1)
    swath = np.ones(shape, bool)
    if "quality_classes" in files:
        with rasterio.open(files["quality_classes"], driver="GTiff") as c:
            swath = c.read(1) != 3
    flagged = np.isin(a, (2,) if key == "water" else layer.masked) & swath
    return round(100.0 * float(flagged.sum()) / max(int(swath.sum()), 1), 2)


def _build_product(files: dict, pid: str, stamp: str, work: Path, where: str) -> dict:
    import rasterio
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    from deepsalt.data.stac import enmap_item

    if "metadata" not in files:
        raise DeepSaltInputError(where, f"missing file {pid}-METADATA.XML", "the product is incomplete: download it again")
    ids = sorted({_file_product_id(f, r) for r, f in files.items()})
    if len(ids) > 1:
        raise DeepSaltInputError(where, f"holds files of {len(ids)} products ({', '.join(i[:80] for i in ids)})",
                                 "ingest one product per ZIP or folder, as DLR delivers them")
    pid = check_product_id(ids[0], where, "product id")
    meta = parse_metadata(Path(files["metadata"]).read_bytes(), f"{where} ({PurePosixPath(files['metadata']).name})")
    if meta.name and meta.name != pid:
        raise DeepSaltInputError(where, f"METADATA.XML names product {meta.name[:120]!r}, but the files are {pid}'s",
                                 "the product is inconsistent: download it again")
    if "image" not in files:
        raise DeepSaltInputError(where, f"missing file {pid}-SPECTRAL_IMAGE ({', '.join(e.split('.')[-1] for e in IMAGE_ENDINGS)})",
                                 "the product is incomplete: download it again")
    d = work / pid
    d.mkdir(parents=True)
    out = {"metadata": d / f"{pid}-METADATA.XML", "image": d / f"{pid}-SPECTRAL_IMAGE_COG.TIF"}
    shutil.copyfile(files["metadata"], out["metadata"])
    with _open_image(files["image"], meta, where) as ds:
        crs, transform, shape = ds.crs, ds.transform, (ds.height, ds.width)
        if (meta.height, meta.width) != (None, None) and (meta.height, meta.width) != shape:
            raise DeepSaltInputError(where, f"spectral image is {shape[0]} x {shape[1]} px but METADATA.XML describes "
                                     f"{meta.height} x {meta.width}", "the product is inconsistent: download it again")
        _write_cog(ds, out["image"], IMAGE_COG, where)
    for key in (*QUALITY_ASSETS, *EXTRA_LAYERS):
        if key not in files:
            if key in QUALITY_ASSETS:
                raise DeepSaltInputError(where, f"missing file {pid}-{layer_file(key)}.TIF", "the product is incomplete: download it again")
            continue
        try:
            q = rasterio.open(files[key], driver="GTiff")
        except (RasterioError, CPLE_BaseError) as e:
            raise DeepSaltInputError(where, f"{PurePosixPath(files[key]).name} is not a readable GeoTIFF ({str(e)[:120]})",
                                     "the file is truncated or damaged: download the product again") from None
        with q:
            if (q.height, q.width) != shape:
                raise DeepSaltInputError(where, f"{PurePosixPath(files[key]).name} is {q.height} x {q.width} px, the image "
                                         f"{shape[0]} x {shape[1]}", "the product is inconsistent: download it again")
            out[key] = d / f"{pid}-{layer_file(key)}_COG.TIF"
            _write_cog(q, out[key], MASK_COG, where)
    epsg = crs.to_epsg()
    if epsg is None:
        raise DeepSaltInputError(where, f"the image's CRS has no EPSG code ({crs.to_string()[:80]})", "EnMAP L2A products are in UTM")
    covers, derived = dict(meta.covers), []
    for key in ("cloud", "cirrus", "haze"):  # the covers the Item carries: from the quality layers where the XML has none
        if key not in covers and (v := _cover(files, key, shape)) is not None:
            covers[key] = v
            derived.append(key)
    props = {"eo:cloud_cover": covers.get("cloud"), "enmap:cirrus_cover": covers.get("cirrus"),
             "enmap:haze_cover": covers.get("haze"), "enmap:nodata": meta.nodata,
             "start_datetime": meta.start.isoformat(), "end_datetime": meta.stop.isoformat(),
             "deepsalt:bad_bands": meta.bad_bands, "deepsalt:source": stamp, "deepsalt:ingest": INGEST_FORMAT,
             "deepsalt:product_format": meta.product_format}
    if meta.correction_type:
        props["enmap:correction_type"] = meta.correction_type
    if derived:
        props["deepsalt:covers_from_quality_layers"] = derived
    props = {k: v for k, v in props.items() if v is not None}
    item = enmap_item(pid, meta.start, epsg, transform, shape, meta.bands, {k: str(v) for k, v in out.items()}, props,
                      meta.gain, meta.offset)
    doc = _item_json(item, d)
    (d / f"{pid}.json").write_text(json.dumps(doc, indent=1))
    return doc


def _existing(out: str, pid: str) -> dict | None:
    from deepsalt.data.l2a_product import PRODUCT_ID

    if not PRODUCT_ID.fullmatch(pid):  # a name that is no product id is never looked up as a path
        return None
    fs, root = fsspec.core.url_to_fs(out)
    try:
        return json.loads(fs.cat(f"{root.rstrip('/')}/{pid}/{pid}.json"))
    except (FileNotFoundError, ValueError):
        return None


def _publish(work: Path, pid: str, out: str) -> None:
    """Move ``work/<id>/`` into the catalogue: whole, replacing an older copy; the Item JSON lands last."""
    check_product_id(pid, redact_url(out), "catalogue entry")
    src = work / pid
    if "://" not in out or out.startswith("file://"):
        root = Path(out.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        if (root / pid).resolve().parent != root.resolve():  # never reached by a valid id: a last guard
            raise DeepSaltInputError(redact_url(out), f"{pid[:120]!r} would land outside the catalogue")
        part = root / f".{pid}.partial-{os.getpid()}"
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(src, part)
        final, old = root / pid, root / f".{pid}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(part, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs, root = fsspec.core.url_to_fs(out)
    dst = f"{root.rstrip('/')}/{pid}"
    item = src / f"{pid}.json"
    for f in sorted(src.iterdir()):
        if f != item:
            fs.put_file(str(f), f"{dst}/{f.name}")
    fs.put_file(str(item), f"{dst}/{item.name}")


def ingest_product(source: Source, out: str) -> dict:
    """Ingest one product into the catalogue at ``out``; never raises for bad input: returns ``{"source", "id",
    "status": "written" | "unchanged" | "failed", "error"?, "seconds", "pixels"?}``."""
    t0 = time.time()
    where = source.where
    try:
        if source.kind == "item":
            source = _find_download(source)
            where = f"{where} ({source.where})"
        pid = source.product_id
        stamp = source_stamp(source)
        have = _existing(out, pid)
        if have and have.get("properties", {}).get("deepsalt:source") == stamp and _complete(out, have):
            return {"source": where, "id": pid, "status": "unchanged", "seconds": round(time.time() - t0, 2)}
        with staged(source) as files, tempfile.TemporaryDirectory(prefix="deepsalt-cog-") as work:
            doc = build_product(files, pid, stamp, Path(work), where)
            pid = doc["id"]
            _publish(Path(work), pid, out)
        h, w = doc["assets"]["image"]["proj:shape"]
        return {"source": where, "id": pid, "status": "written", "seconds": round(time.time() - t0, 2), "pixels": int(h * w),
                "bad_bands": doc["properties"]["deepsalt:bad_bands"]}
    except DeepSaltInputError as e:
        return {"source": where, "status": "failed", "error": str(e), "seconds": round(time.time() - t0, 2)}
    except Exception as e:  # noqa: BLE001 - whatever a product holds, it fails alone, in one line
        return {"source": where, "status": "failed", "seconds": round(time.time() - t0, 2),
                "error": f"{where}: unreadable product ({type(e).__name__}: {str(e)[:160]}) (download it again; if it persists, "
                         "report it with the product's id)"}


def _complete(out: str, item: dict) -> bool:
    fs, root = fsspec.core.url_to_fs(out)
    return all(fs.exists(f"{root.rstrip('/')}/{item['id']}/{Path(a['href']).name}") for a in item["assets"].values())


# --- the catalogue -------------------------------------------------------------------------------------------

def catalogue_items(out: str) -> list[dict]:
    """Every Item in the catalogue at ``out`` (``<id>/<id>.json``), sorted by id."""
    fs, root = fsspec.core.url_to_fs(out)
    docs = []
    for p in sorted(fs.glob(f"{root.rstrip('/')}/*/*.json")):
        parts = PurePosixPath(p).parts
        if parts[-1] == f"{parts[-2]}.json" and not parts[-2].startswith("."):
            docs.append(json.loads(fs.cat(p)))
    return docs


def write_collection(out: str, docs: list[dict]) -> bool:
    """``out/collection.json`` linking ``docs`` by relative hrefs; written only if it changes. True if written."""
    from deepsalt.data.stac import COLLECTION, EXTENSIONS

    bb = np.array([d["bbox"] for d in docs]) if docs else np.array([[-180.0, -90.0, 180.0, 90.0]])
    times = sorted(d["properties"]["datetime"] for d in docs) or [None]
    col = {"type": "Collection", "stac_version": "1.1.0", "stac_extensions": EXTENSIONS, "id": COLLECTION,
           "description": f"EnMAP HSI L2A products ingested by deepsalt {__version__} ({INGEST_FORMAT}): COGs and Items in "
                          "DLR's layout", "license": "proprietary",
           "extent": {"spatial": {"bbox": [[float(bb[:, 0].min()), float(bb[:, 1].min()), float(bb[:, 2].max()), float(bb[:, 3].max())]]},
                      "temporal": {"interval": [[times[0], times[-1]]]}},
           "links": [{"rel": "root", "href": "./collection.json", "type": "application/json"},
                     *[{"rel": "item", "href": f"./{d['id']}/{d['id']}.json", "type": "application/geo+json"} for d in docs]]}
    text = json.dumps(col, indent=1) + "\n"
    fs, root = fsspec.core.url_to_fs(out)
    path = f"{root.rstrip('/')}/collection.json"
    try:
        if fs.cat(path).decode() == text:
            return False
    except FileNotFoundError:
        pass
    fs.pipe(path, text.encode())
    return True


def post_items(api: str, docs: list[dict], out: str) -> int:
    """Post Items to a STAC API with the Transaction extension (``POST /collections/{c}/items``; an existing Item is
    replaced with ``PUT``; a missing collection is created first). Asset hrefs become absolute (the catalogue's
    location). Returns the number of Items sent."""
    import urllib.error
    import urllib.request

    from deepsalt.data.stac import COLLECTION

    base = api.rstrip("/")
    fs, root = fsspec.core.url_to_fs(out)
    loc = str(Path(root).resolve()) if "://" not in out or out.startswith("file://") else out.rstrip("/")

    def send(method: str, url: str, body: dict) -> int:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError) as e:
            raise DeepSaltInputError(redact_url(api), f"STAC API not reachable ({e})", "check --stac-api") from None

    def refuse(code: int, what: str):
        hint = ("the API does not implement the Transaction extension (rustac serve does not, for one)"
                if code in (404, 405, 501) else "check the API's logs")
        raise DeepSaltInputError(redact_url(api), f"{what} answered HTTP {code}", hint)

    n = 0
    for d in docs:
        item = json.loads(json.dumps(d))
        for a in item["assets"].values():
            a["href"] = f"{loc}/{item['id']}/{Path(a['href']).name}"
        item["links"] = []
        item["collection"] = COLLECTION
        code = send("POST", f"{base}/collections/{COLLECTION}/items", item)
        if code == 404:  # no such collection yet
            col = {"type": "Collection", "stac_version": "1.1.0", "id": COLLECTION, "description": "EnMAP HSI L2A",
                   "license": "proprietary", "links": [],
                   "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}
            c = send("POST", f"{base}/collections", col)
            if c not in (200, 201, 409):
                refuse(c, "creating the collection")
            code = send("POST", f"{base}/collections/{COLLECTION}/items", item)
        if code == 409:  # already there: replace it
            code = send("PUT", f"{base}/collections/{COLLECTION}/items/{item['id']}", item)
        if code not in (200, 201, 202, 204):
            refuse(code, f"posting item {item['id']}")
        n += 1
    return n


def ingest(srcs: list[str], out: str, assets_root: str | None = None, stac_api: str | None = None, log=print) -> dict:
    """Ingest every product the sources hold, as Ray tasks (one per product), then write the collection and, with
    ``stac_api``, post the Items. Returns the summary; ``failed`` lists one line per failed product or source."""
    import ray

    from deepsalt.raycluster import init_ray

    t0 = time.time()
    sources, failed = find_sources(srcs, assets_root)
    for f in failed:
        log(f"  failed  {f['error']}")
    results = []
    if sources:
        log(f"ingest: {len(sources)} product(s) -> {redact_url(out)}")
        init_ray()
        task = ray.remote(num_cpus=1, memory=1 << 30, max_retries=2)(ingest_product)
        refs = {task.remote(s, out): s for s in sources}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                r = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a worker lost or killed (out of memory, say): that product fails alone
                where = refs[done[0]].where
                r = {"source": where, "status": "failed", "error": f"{where}: ingest task failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:160] if str(e) else ''}) (run ingest again: finished products are kept)"}
            results.append(r)
            line = r["error"] if r["status"] == "failed" else f"{r['id']} ({r['seconds']} s)"
            log(f"  [{len(results)}/{len(sources)}] {r['status']:9s} {line}")
    docs = catalogue_items(out) if sources else []
    wrote_col = write_collection(out, docs) if docs else False
    ok = [r for r in results if r["status"] != "failed"]
    posted = post_items(stac_api, [d for d in docs if d["id"] in {r["id"] for r in ok}], out) if stac_api and ok else 0
    failed += [r for r in results if r["status"] == "failed"]
    summary = {"products": len(sources), "written": sum(r["status"] == "written" for r in results),
               "unchanged": sum(r["status"] == "unchanged" for r in results), "failed": len(failed),
               "items_in_catalogue": len(docs), "collection_written": wrote_col, "posted": posted,
               "pixels_written": sum(r.get("pixels", 0) for r in results), "seconds": round(time.time() - t0, 1),
               "collection": f"{out.rstrip('/')}/collection.json" if docs else None,
               "failures": [f["error"] for f in failed]}
    return summary
