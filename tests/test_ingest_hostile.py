"""`deepsalt ingest` against hostile, damaged and inconsistent products: nothing outside `--out` is written or
deleted, memory and temp disk stay bounded, every bad product fails alone in one line, and DLR's real METADATA.XML
and download archive read as DLR writes them."""

import io
import json
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from conftest import SHARED_DATA, delivery_zips, rezip, zip_members
from deepsalt.data.ingest import catalogue_items, find_sources, ingest, ingest_product
from deepsalt.data.l2a_product import parse_metadata
from deepsalt.errors import DeepSaltInputError

REAL_XML = next((SHARED_DATA / "real" / "enmap_metadata").glob("*-METADATA.XML"))





def _key(members: dict, ending: str) -> str:
    return next(k for k in members if k.upper().endswith(ending))


def _patch(z: Path, ending: str, *, flags: int | None = None, method: int | None = None, size: int | None = None) -> None:
    """Rewrite a member's header fields in place, in both the local header and the central directory, as a hostile
    or foreign ZIP tool would have written them (general-purpose flags, compression method, uncompressed size)."""
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as f:
        info = next(i for i in f.infolist() if i.filename.upper().endswith(ending))
        start_dir = f.start_dir  # the central directory, after every local header
    cd = data.find(info.filename.encode(), start_dir) - 46
    assert data[cd:cd + 4] == b"PK\x01\x02"
    for off, flag_at, method_at, size_at in ((info.header_offset, 6, 8, 22), (cd, 8, 10, 24)):
        if flags is not None:
            data[off + flag_at:off + flag_at + 2] = struct.pack("<H", flags)
        if method is not None:
            data[off + method_at:off + method_at + 2] = struct.pack("<H", method)
        if size is not None:
            data[off + size_at:off + size_at + 4] = struct.pack("<I", size)
    z.write_bytes(bytes(data))


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in root.rglob("*")}


def test_a_crafted_name_can_neither_delete_nor_write_outside_the_catalogue(world, tmp_path):
    """METADATA.XML's metadata/name `../victim` (once: ingest deleted the folder victim/ beside the catalogue), an
    absolute name, a STAC item id `../victim` and member files named for `../victim`: each is one failed line, and
    nothing outside --out is written or deleted."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("the user's data")
    z = delivery_zips(world)[0]
    pid = z.name.removesuffix(".ZIP")
    m = zip_members(z)
    xml = _key(m, "-METADATA.XML")
    orders = tmp_path / "orders"
    for i, name in enumerate(("../victim", str(tmp_path / "abs"))):
        bad = dict(m)
        bad[xml] = m[xml].replace(f"<name>{pid}-METADATA.XML</name>".encode(), f"<name>{name}-METADATA.XML</name>".encode())
        assert bad[xml] != m[xml]
        rezip(bad, orders / f"crafted{i}.ZIP")  # (two ZIPs of one name would be one product to find_sources)
    # every file named for another "product" (the id the files carry decides the catalogue path)
    rezip({k.replace(f"{pid}/{pid}", "../../victim"): v for k, v in m.items()}, orders / "renamed.ZIP")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "../victim", "geometry": None, "links": [], "assets": {},
            "properties": {"datetime": "2024-01-01T00:00:00Z"}}
    (orders / "item.json").write_text(json.dumps(item))
    before = _tree(tmp_path)
    cat = tmp_path / "cat"
    summary = ingest([str(orders / "crafted0.ZIP"), str(orders / "crafted1.ZIP"), str(orders / "renamed.ZIP")], str(cat),
                     log=lambda *_: None)
    s2 = ingest([str(orders / "item.json")], str(cat), assets_root=str(world / "deliveries"), log=lambda *_: None)
    errors = summary["failures"] + s2["failures"]
    assert summary["written"] == 0 and summary["failed"] == 3 and s2["failed"] == 1, errors
    assert sum("METADATA.XML names product '../victim'" in e for e in errors) == 1, errors
    assert sum(f"METADATA.XML names product '{tmp_path / 'abs'}'" in e for e in errors) == 1, errors
    assert sum("is not an EnMAP L2A product id" in e for e in errors) == 2, errors
    after = _tree(tmp_path)
    assert (victim / "keep.txt").read_text() == "the user's data"
    assert {k: v for k, v in after.items() if not k.startswith("cat")} == before
    assert not (tmp_path / "abs").exists() and not list(cat.glob("*/*.json"))


def test_a_zip_bomb_stops_in_one_line_before_memory_or_disk_run_out(world, tmp_path):
    """An image member declaring more than the scene the XML describes can need is refused before inflating; one
    that declares little and inflates to more stops at its declared size. Neither leaves files behind."""
    z = delivery_zips(world)[0]
    m = zip_members(z)
    img = _key(m, "-SPECTRAL_IMAGE.TIF")  # the world's first and third deliveries are GeoTIFF, the second ENVI BSQ
    meta = parse_metadata(m[_key(m, "-METADATA.XML")], "x")
    cap = len(meta.bands) * (meta.height + 512) * (meta.width + 512) * 2 + (16 << 20)
    bomb = tmp_path / "bomb" / z.name
    bomb.parent.mkdir()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as f:
        for name, data in m.items():
            if name != img:
                f.writestr(name, data)
        with f.open(img, "w", force_zip64=True) as out:  # zeros: ~1000x compression
            block = bytes(16 << 20)
            for _ in range(cap // len(block) + 2):
                out.write(block)
    assert bomb.stat().st_size < cap // 100
    (src,), _ = find_sources([str(bomb)])
    r = ingest_product(src, str(tmp_path / "cat"))
    assert r["status"] == "failed" and "declares" in r["error"] and "ZIP bomb" in r["error"], r
    liar = tmp_path / "liar" / z.name
    liar.parent.mkdir()
    shutil.copy(z, liar)
    _patch(liar, img.upper(), size=1000)  # says 1000 bytes, inflates to the whole image
    (src,), _ = find_sources([str(liar)])
    r = ingest_product(src, str(tmp_path / "cat"))
    assert r["status"] == "failed" and "inflates past its declared" in r["error"], r
    assert not (tmp_path / "cat").exists() or not list((tmp_path / "cat").rglob("*.json"))


def test_damaged_foreign_and_inconsistent_products_fail_alone_and_the_batch_lands(world, tmp_path):
    """Under Ray, one line per bad product and the good one lands with collection.json: a truncated image, a mask
    that is no TIFF, an encrypted member, Deflate64 (Windows-made ZIPs), two images, product A's XML with product B's
    files, and two products in one ZIP."""
    (a, b, c) = delivery_zips(world)
    ma, mb = zip_members(a), zip_members(b)
    pa, pb = a.name.removesuffix(".ZIP"), b.name.removesuffix(".ZIP")
    img = _key(ma, "-SPECTRAL_IMAGE.TIF")
    cloud = _key(ma, "QL_QUALITY_CLOUD.TIF")
    orders = tmp_path / "orders"
    cases = {
        "truncated": {**ma, img: ma[img][: len(ma[img]) // 3]},
        "notiff": {**ma, cloud: b"<html>404 Not Found</html>" * 40},
        "twoimages": {**ma, img.replace("-SPECTRAL_IMAGE.", "-SPECTRAL_IMAGE_COG."): ma[img]},
        "mixed": {**{k: v for k, v in mb.items() if not k.endswith("-METADATA.XML")},
                  _key(mb, "-METADATA.XML"): ma[_key(ma, "-METADATA.XML")]},
        "twoproducts": {**ma, **mb},
    }
    for case, members in cases.items():  # a ZIP name each: two ZIPs of one name are one product to find_sources
        rezip(members, orders / case / f"{case}.ZIP")
    for case, kw in (("encrypted", {"flags": 0x1}), ("deflate64", {"method": 9})):
        (orders / case).mkdir()
        shutil.copy(a, orders / case / f"{case}.ZIP")
        _patch(orders / case / f"{case}.ZIP", cloud.upper(), **kw)
    (orders / "good").mkdir()
    shutil.copy(c, orders / "good")
    summary = ingest(sorted(str(p) for p in orders.iterdir()), str(tmp_path / "cat"), log=lambda *_: None)
    errors = {e.split("/orders/")[1].split("/")[0]: e for e in summary["failures"]}
    assert summary["written"] == 1 and summary["failed"] == 7 and len(errors) == 7, summary["failures"]
    expect = {"truncated": "SPECTRAL_IMAGE.TIF", "notiff": "QL_QUALITY_CLOUD.TIF is not a readable GeoTIFF",
              "encrypted": "QL_QUALITY_CLOUD.TIF is encrypted", "deflate64": "ZIP method 9 (deflate64)",
              "twoimages": "holds two spectral image files", "mixed": f"METADATA.XML names product '{pa}', but the files are {pb}'s",
              "twoproducts": "holds two METADATA.XML files"}
    for case, text in expect.items():
        assert text in errors[case] and "\n" not in errors[case], (case, errors[case])
    assert all("Traceback" not in e for e in errors.values())
    assert [d["id"] for d in catalogue_items(str(tmp_path / "cat"))] == [c.name.removesuffix(".ZIP")]
    assert json.loads((tmp_path / "cat" / "collection.json").read_text())["links"][1]["href"].endswith(".json")


def test_dlr_download_archives_and_jpeg2000_endings_ingest(world, tmp_path):
    """DLR's download (a .tar.gz of the product ZIPs) ingests like the ZIPs; a .JPEG2000 image (SNAP's and EnPT's
    ending) is read by the JPEG2000 driver to the same DN; the XML's correctionType reaches the Item, and covers the
    XML leaves out are computed from the quality layers."""
    zips = delivery_zips(world)
    tgz = tmp_path / "dlr_order.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for z in zips[:2]:
            t.add(z, arcname=f"order/{z.name}")
    s = ingest([str(tgz)], str(tmp_path / "cat"), log=lambda *_: None)
    assert s["written"] == 2 and s["failed"] == 0, s
    items = {d["id"]: d for d in catalogue_items(str(tmp_path / "cat"))}
    assert sorted(items) == [z.name.removesuffix(".ZIP") for z in zips[:2]]
    assert all(d["properties"]["enmap:correction_type"] == "Land_Mode" for d in items.values())
    # a product without cover percentages in its XML, its image as .JPEG2000
    z = zips[2]
    m = zip_members(z)
    xml_key = _key(m, "-METADATA.XML")
    xml = m[xml_key].decode()
    for tag in ("cloudCover", "hazeCover", "cirrusCover"):
        head, rest = xml.split(f"<{tag}>", 1)
        xml = head + rest.split(f"</{tag}>", 1)[1]
    folder = tmp_path / "product"
    with zipfile.ZipFile(z) as f:
        f.extractall(tmp_path / "x")
    shutil.move(next((tmp_path / "x").iterdir()), folder)
    (folder / Path(xml_key).name).write_text(xml)
    image = next(folder.glob("*-SPECTRAL_IMAGE.TIF"))
    with rasterio.open(image) as src:
        dn = src.read()
        rasterio.shutil.copy(src, str(image.with_suffix(".JPEG2000")), driver="JP2OpenJPEG", CODEC="JP2", REVERSIBLE="YES",
                              QUALITY="100")
    image.unlink()
    for aux in folder.glob("*.aux.xml"):
        aux.unlink()
    (src,), _ = find_sources([str(folder)])
    r = ingest_product(src, str(tmp_path / "cat2"))
    assert r["status"] == "written", r
    item = catalogue_items(str(tmp_path / "cat2"))[0]
    props = item["properties"]
    assert props["deepsalt:covers_from_quality_layers"] == ["cloud", "cirrus", "haze"]
    with rasterio.open(folder / f"{item['id']}-QL_QUALITY_CLOUD.TIF") as q, \
            rasterio.open(folder / f"{item['id']}-QL_QUALITY_CLASSES.TIF") as cl:
        swath = cl.read(1) != 3
        expected = 100 * float(((q.read(1) == 1) & swath).sum()) / swath.sum()
    assert props["eo:cloud_cover"] == pytest.approx(expected, abs=0.01) and props["eo:cloud_cover"] > 0
    with rasterio.open(tmp_path / "cat2" / item["id"] / item["assets"]["image"]["href"]) as c:
        np.testing.assert_array_equal(c.read(), dn)


def test_dlr_real_metadata_xml_reads_band_table_scaling_times_and_a_valid_ring():
    """A real DLR L2A METADATA.XML (schema 00-02-00, from ESA SNAP's EnMAP reader's test data; see its README): this
    pre-launch product lists 218 bands (88 VNIR + 130 SWIR channels expected), gain 0.0001 and offset 0, its times, Land_Mode, the ortho scene size, and a footprint of its four corners
    as a closed, valid ring (the `center` point it lists after them is not part of it)."""
    m = parse_metadata(REAL_XML.read_bytes(), REAL_XML.name)
    assert m.name == REAL_XML.name.removesuffix("-METADATA.XML")
    assert len(m.vnir) == 88 and len(m.swir) == 130 and sorted(m.vnir + m.swir) == list(range(1, 219))
    assert m.bands.names == tuple(str(b) for b in range(1, 219))
    assert 400 < m.bands.centers_nm[0] < 430 and 2400 < m.bands.centers_nm[-1] < 2460
    assert np.all(np.diff(m.bands.centers_nm[:90]) > 0) and np.all(m.bands.fwhm_nm > 0)
    assert (m.gain == 1e-4).all() and (m.offset == 0).all() and m.nodata == 0
    assert m.start.isoformat() == "2017-06-26T10:20:20.999936+00:00" and m.stop.isoformat() == "2017-06-26T10:20:25.545157+00:00"
    assert m.correction_type == "Land_Mode" and (m.width, m.height) == (1128, 1212)
    with rasterio.open(next(REAL_XML.parent.glob("*QL_QUALITY_CLASSES.TIF"))) as q:
        assert (q.height, q.width) == (m.height, m.width)
    ring = np.array(m.footprint)
    assert len(ring) == 5 and np.allclose(ring[0], ring[-1], atol=1e-6)
    assert (10.7 < ring[:, 0]).all() and (ring[:, 0] < 11.2).all() and (47.4 < ring[:, 1]).all() and (ring[:, 1] < 47.8).all()
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))
    assert abs(area) > 0.05  # ~0.1 square degree: four distinct corners, not a degenerate ring
    # a simple ring: no two of its edges cross
    def cross(p, q, r, s):
        d = lambda a, b, c: np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
        return d(p, q, r) * d(p, q, s) < 0 and d(r, s, p) * d(r, s, q) < 0
    edges = [(ring[i], ring[i + 1]) for i in range(4)]
    assert not cross(*edges[0], *edges[2]) and not cross(*edges[1], *edges[3])
    with pytest.raises(DeepSaltInputError, match="footprint has 2 corner"):
        xml = REAL_XML.read_text()
        head, rest = xml.split("<boundingPolygon>", 1)
        poly, tail = rest.split("</boundingPolygon>", 1)
        pts = poly.split("</point>")
        parse_metadata(head + "<boundingPolygon>" + "</point>".join(pts[:2]) + "</point></boundingPolygon>" + tail, "x")
