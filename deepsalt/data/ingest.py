"""`deepsalt ingest`: EnMAP L2A products as DLR delivers them become a STAC catalogue that DeepSalt maps from.

Sources (``find_sources``): product ZIPs, unzipped product folders, folders or globs holding them, on a local disk
or at any fsspec URL; or DLR STAC Items saved from its API (an Item or an ItemCollection JSON) together with
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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
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
from deepsalt.data.l2a_product import EXTRA_LAYERS, IMAGE_DRIVERS, IMAGE_ENDINGS, L2AMetadata, layer_file, parse_metadata
from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url

#: bump when what ingest writes changes: every product is then written again
INGEST_FORMAT = "deepsalt-ingest/1"
#: the spectral image's COG layout: ZSTD level 1 with horizontal differencing, 256 px blocks, pixel-interleaved, no
#: overviews (the map path reads full resolution). Of the layouts bench/ingest.py measured (pixel- and band-
#: interleaved; DEFLATE, ZSTD, LZW; 256 and 512 px blocks), the fastest for the map path to read and the quickest to
#: write (bench/results/ingest.json)
IMAGE_COG = {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "LEVEL": "1", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}
MASK_COG = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}
ZIP_ENDINGS = (".zip",)


@dataclass(frozen=True)
class Source:
    """One product to ingest: a ZIP, a product folder (holding ``<id>-METADATA.XML``), or a DLR STAC Item whose files
    lie under ``assets_root``."""

    href: str
    kind: str  # "zip" | "folder" | "item"
    item: str | None = None  # the DLR Item (JSON text), for kind "item"
    assets_root: str | None = None

    @property
    def product_id(self) -> str:
        if self.kind == "item":
            return json.loads(self.item)["id"]
        name = PurePosixPath(self.href.rstrip("/")).name
        return name.rsplit(".", 1)[0] if self.kind == "zip" else name


def _url(fs, path: str, like: str) -> str:
    """``path`` of ``fs`` written as the user wrote ``like``: with the same protocol prefix, or as a local path."""
    if "://" in like and not like.startswith("file://"):
        return fs.unstrip_protocol(path)
    return path


def _classify(fs, path: str, like: str, assets_root: str | None) -> list[Source]:
    name = PurePosixPath(path).name
    if fs.isdir(path):
        files = [p for p in fs.find(path)]
        xmls = [p for p in files if p.upper().endswith("-METADATA.XML")]
        zips = [p for p in files if p.lower().endswith(ZIP_ENDINGS)]
        folders = sorted({str(PurePosixPath(p).parent) for p in xmls})
        return [Source(_url(fs, f, like), "folder") for f in folders] + [Source(_url(fs, z, like), "zip") for z in sorted(zips)]
    if name.lower().endswith(ZIP_ENDINGS):
        return [Source(_url(fs, path, like), "zip")]
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
    raise DeepSaltInputError(like, "is not an EnMAP L2A product ZIP, a product folder (with -METADATA.XML) or a STAC Item JSON")


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
    pid = source.product_id
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
    parts: list = [INGEST_FORMAT, IMAGE_COG, MASK_COG, source.item]
    if source.kind == "zip":
        parts.append(file_stamp(source.href, f"product {source.product_id}"))
    else:
        fs, path = fsspec.core.url_to_fs(source.href)
        for p in sorted(fs.ls(path, detail=False)):
            if _member_role(PurePosixPath(p).name):
                parts.append([PurePosixPath(p).name, file_stamp(_url(fs, p, source.href), "product file")])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@contextlib.contextmanager
def staged(source: Source):
    """The product's files on local disk, ``{role: path}`` (see ``_member_role``), extracted from its ZIP or copied
    from remote storage into a temporary folder that is removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="deepsalt-ingest-"))
    try:
        files: dict[str, str] = {}
        if source.kind == "zip":
            local = source.href
            if "://" in source.href and not source.href.startswith("file://"):
                local = str(tmp / PurePosixPath(source.href).name)
                fsspec.core.url_to_fs(source.href)[0].get(fsspec.core.url_to_fs(source.href)[1], local)
            try:
                with zipfile.ZipFile(local) as z:
                    for info in z.infolist():
                        role = _member_role(PurePosixPath(info.filename).name)
                        if role is None or info.is_dir():
                            continue
                        dst = tmp / "product" / PurePosixPath(info.filename).name
                        dst.parent.mkdir(exist_ok=True)
                        _extract(z, local, info, dst)
                        files.setdefault(role, str(dst))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, _InflateError) as e:
                raise DeepSaltInputError(redact_url(source.href), f"damaged ZIP ({type(e).__name__}: {str(e)[:120]})",
                                         "download the product again") from None
        else:
            fs, path = fsspec.core.url_to_fs(source.href)
            remote = "://" in source.href and not source.href.startswith("file://")
            for p in sorted(fs.ls(path, detail=False)):
                role = _member_role(PurePosixPath(p).name)
                if role is None:
                    continue
                local = p
                if remote:
                    local = str(tmp / PurePosixPath(p).name)
                    fs.get(p, local)
                files.setdefault(role, local)
        yield files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(z: zipfile.ZipFile, path: str, info: zipfile.ZipInfo, dst: Path) -> None:
    """Copy one member out of the ZIP at ``path``. A DEFLATE member (DLR's ZIPs, the world's) is inflated by ISA-L,
    twice the speed of Python's zlib here (2.4 s against 4.9 s for a 661 MiB image: ingest's largest cost after the
    COG itself), its CRC-32 and size checked as zipfile checks them; other members go through zipfile."""
    if info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1:  # stored, other methods, encrypted
        with z.open(info) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return
    with open(path, "rb") as f, open(dst, "wb") as out:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header for {PurePosixPath(info.filename).name}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        inflate, crc, size, left = _decompressobj(-15), 0, 0, info.compress_size
        while left:
            block = f.read(min(left, 1 << 22))
            if not block:
                raise EOFError(f"{PurePosixPath(info.filename).name} is cut short")
            left -= len(block)
            data = inflate.decompress(block)
            crc, size = _crc32(data, crc), size + len(data)
            out.write(data)
        data = inflate.flush()
        crc, size = _crc32(data, crc), size + len(data)
        out.write(data)
    if crc != info.CRC or size != info.file_size:
        raise zipfile.BadZipFile(f"{PurePosixPath(info.filename).name} fails its CRC-32 check")


def _open_image(path: str, meta: L2AMetadata, where: str):
    import rasterio
    from rasterio.errors import RasterioIOError

    ext = path.rsplit(".", 1)[-1].upper()
    driver = IMAGE_DRIVERS.get(ext, "GTiff")
    with rasterio.Env() as env:
        if driver not in env.drivers():
            raise DeepSaltInputError(where, f"spectral image is {ext}, but this GDAL build has no {driver} driver",
                                     "order the product as GeoTIFF or ENVI, or install a GDAL with JPEG2000 support")
    try:
        ds = rasterio.open(path, driver=driver)
    except RasterioIOError as e:
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
    from rasterio.errors import RasterioIOError

    try:
        rasterio.shutil.copy(src, str(dst), driver="COG", **options)
    except RasterioIOError as e:
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


def _build_product(files: dict, pid: str, stamp: str, work: Path, where: str) -> dict:
    import rasterio

    from deepsalt.data.stac import enmap_item

    if "metadata" not in files:
        raise DeepSaltInputError(where, f"missing file {pid}-METADATA.XML", "the product is incomplete: download it again")
    meta = parse_metadata(Path(files["metadata"]).read_bytes(), f"{where} ({PurePosixPath(files['metadata']).name})")
    pid = meta.name or pid
    if "image" not in files:
        raise DeepSaltInputError(where, f"missing file {pid}-SPECTRAL_IMAGE ({', '.join(e.split('.')[-1] for e in IMAGE_ENDINGS)})",
                                 "the product is incomplete: download it again")
    d = work / pid
    d.mkdir(parents=True)
    out = {"metadata": d / f"{pid}-METADATA.XML", "image": d / f"{pid}-SPECTRAL_IMAGE_COG.TIF"}
    shutil.copyfile(files["metadata"], out["metadata"])
    with _open_image(files["image"], meta, where) as ds:
        crs, transform, shape = ds.crs, ds.transform, (ds.height, ds.width)
        _write_cog(ds, out["image"], IMAGE_COG, where)
    for key in (*QUALITY_ASSETS, *EXTRA_LAYERS):
        if key not in files:
            if key in QUALITY_ASSETS:
                raise DeepSaltInputError(where, f"missing file {pid}-{layer_file(key)}.TIF", "the product is incomplete: download it again")
            continue
        with rasterio.open(files[key], driver="GTiff") as q:
            if (q.height, q.width) != shape:
                raise DeepSaltInputError(where, f"{PurePosixPath(files[key]).name} is {q.height} x {q.width} px, the image "
                                         f"{shape[0]} x {shape[1]}", "the product is inconsistent: download it again")
            out[key] = d / f"{pid}-{layer_file(key)}_COG.TIF"
            _write_cog(q, out[key], MASK_COG, where)
    epsg = crs.to_epsg()
    if epsg is None:
        raise DeepSaltInputError(where, f"the image's CRS has no EPSG code ({crs.to_string()[:80]})", "EnMAP L2A products are in UTM")
    covers = meta.covers
    props = {"eo:cloud_cover": covers.get("cloud", 0.0), "enmap:cirrus_cover": covers.get("cirrus", 0.0),
             "enmap:haze_cover": covers.get("haze", 0.0), "enmap:nodata": meta.nodata,
             "start_datetime": meta.start.isoformat(), "end_datetime": meta.stop.isoformat(),
             "deepsalt:bad_bands": meta.bad_bands, "deepsalt:source": stamp, "deepsalt:ingest": INGEST_FORMAT,
             "deepsalt:product_format": meta.product_format}
    item = enmap_item(pid, meta.start, epsg, transform, shape, meta.bands, {k: str(v) for k, v in out.items()}, props,
                      meta.gain, meta.offset)
    doc = _item_json(item, d)
    (d / f"{pid}.json").write_text(json.dumps(doc, indent=1))
    return doc


def _existing(out: str, pid: str) -> dict | None:
    fs, root = fsspec.core.url_to_fs(out)
    try:
        return json.loads(fs.cat(f"{root.rstrip('/')}/{pid}/{pid}.json"))
    except (FileNotFoundError, ValueError):
        return None


def _publish(work: Path, pid: str, out: str) -> None:
    """Move ``work/<id>/`` into the catalogue: whole, replacing an older copy; the Item JSON lands last."""
    src = work / pid
    if "://" not in out or out.startswith("file://"):
        root = Path(out.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
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
    where = redact_url(source.href) if source.kind != "item" else f"STAC item {source.product_id}"
    try:
        if source.kind == "item":
            source = _find_download(source)
            where = f"{where} ({redact_url(source.href)})"
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
        pending = [task.remote(s, out) for s in sources]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            r = ray.get(done[0])
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
