"""`deepsalt ingest`: DLR's EnMAP L2A deliveries (ZIPs, folders, DLR STAC items) become a catalogue that maps."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from conftest import assert_tiles_equal, delivery_zips, map_cfg, rezip, tile_arrays, zip_members
from deepsalt.data.ingest import catalogue_items, find_sources, ingest_product, post_items
from deepsalt.data.l2a_product import parse_metadata
from deepsalt.data.stac import search_items
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.pipeline import map_region
from deepsalt.spectra.bands import enmap_bands


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deepsalt.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)





def test_metadata_xml_is_read_as_dlr_writes_it(world):
    """The delivery's METADATA.XML, at the paths EnMAP-Box and SNAP read: band table, scaling, bad bands from the
    statistics, detector channel lists, times and cover, in agreement with the scene's STAC item."""
    items = {i.id: i for i in search_items(str(world / "stac"))}
    for z in delivery_zips(world):
        xml = next(v for k, v in zip_members(z).items() if k.endswith("-METADATA.XML"))
        m = parse_metadata(xml, z.name)
        item = items[m.name]
        assert z.name == f"{m.name}.ZIP"
        np.testing.assert_array_equal(m.bands.centers_nm, enmap_bands().centers_nm)
        np.testing.assert_array_equal(m.bands.fwhm_nm, enmap_bands().fwhm_nm)
        assert (m.gain == 1e-4).all() and (m.offset == 0).all() and m.nodata == -32768
        assert m.bad_bands == ["130", "131", "132", "133", "134", "135"]
        assert len(m.vnir) == 91 and len(m.swir) == 133 and sorted(m.vnir + m.swir) == list(range(1, 225))
        assert m.start == item.datetime and m.covers["cloud"] == item.properties["eo:cloud_cover"]
        assert len(m.footprint) == 5 and m.product_format in ("GeoTIFF+Metadata", "BSQ+Metadata")
    with pytest.raises(DeepSaltInputError, match="METADATA.XML has no base/temporalCoverage/startTime"):
        parse_metadata(xml.replace(b"<startTime>", b"<beginTime>").replace(b"</startTime>", b"</beginTime>"), "x")


def test_ingested_deliveries_map_to_the_same_cube_as_the_native_catalogue(world, trained, cube, catalogue, tmp_path):
    """GeoTIFF and ENVI deliveries with bands 130-135 at nodata -> ingest -> map == the cube from the world's own
    catalogue, array for array; the COGs hold the same DN."""
    cat, summary = catalogue
    assert summary["written"] == 3 and summary["failed"] == 0 and summary["items_in_catalogue"] == 3
    native = {i.id: i for i in search_items(str(world / "stac"))}
    for item in search_items(str(cat / "collection.json")):
        assert item.properties["deepsalt:bad_bands"] == [str(b) for b in range(130, 136)]
        assert item.assets["image"].extra_fields["eo:bands"] == native[item.id].assets["image"].extra_fields["eo:bands"]
        with rasterio.open(item.assets["image"].href) as a, rasterio.open(native[item.id].assets["image"].href) as b:
            assert a.profile["driver"] == "GTiff" and a.dtypes[0] == "int16" and a.crs == b.crs and a.transform == b.transform
            np.testing.assert_array_equal(a.read(), b.read())
    out = tmp_path / "from_ingest.zarr"
    s = map_region(map_cfg(world, trained[0] / "bundle", out, stac=str(cat / "collection.json")), log=lambda *_: None)
    assert s["pixels_mapped"] == cube[1]["pixels_mapped"] > 10_000
    assert_tiles_equal(tile_arrays(out), tile_arrays(cube[0]))


def test_reingesting_unchanged_products_writes_nothing(world, catalogue):
    cat, _ = catalogue
    before = {p: p.stat().st_mtime_ns for p in cat.rglob("*")}
    r = _cli("ingest", str(world / "deliveries"), "--out", str(cat))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "0 written, 3 unchanged, 0 failed" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in cat.rglob("*")} == before


def test_bad_products_fail_one_line_each_and_the_rest_land(world, tmp_path):
    src = tmp_path / "orders"
    src.mkdir()
    good, *others = delivery_zips(world)
    shutil.copy(good, src)
    broken = [z.name for z in others]
    # a damaged download: the ZIP cut short
    data = others[0].read_bytes()
    (src / others[0].name).write_bytes(data[: len(data) // 2])
    # a product without its cloud layer, and one whose XML describes 223 bands
    m = zip_members(others[1])
    rezip({k: v for k, v in m.items() if not k.endswith("QL_QUALITY_CLOUD.TIF")}, src / others[1].name)
    third = tmp_path / "third"
    third.mkdir()
    old_id = others[1].name.removesuffix(".ZIP")
    new_id = old_id.replace("L2A-DT", "L2A-DT9")  # another product id, so that both are ingested
    xml_name = next(k for k in m if k.endswith("-METADATA.XML"))
    xml = m[xml_name].decode().replace(old_id, new_id)
    for section in ("bandCharacterisation", "bandStatistics"):
        head, rest = xml.split(f"<{section}>", 1)
        body, tail = rest.split(f"</{section}>", 1)
        body = body[: body.rindex("<bandID")]  # drop band 224
        xml = f"{head}<{section}>{body}</{section}>{tail}"
    m3 = {k.replace(old_id, new_id): v for k, v in m.items()}
    m3[xml_name.replace(old_id, new_id)] = xml.encode()
    rezip(m3, third / f"{new_id}.ZIP")
    broken.append(f"{new_id}.ZIP")
    r = _cli("ingest", str(src), str(third), "--out", str(tmp_path / "cat"))
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 3, errors
    assert any(broken[0] in e and "damaged ZIP" in e for e in errors), errors
    assert any(broken[1] in e and "missing file" in e and "QL_QUALITY_CLOUD.TIF" in e for e in errors), errors
    assert any(broken[2] in e and "has 224 bands but METADATA.XML describes 223" in e for e in errors), errors
    assert "1 written, 0 unchanged, 3 failed" in r.stdout
    assert [d["id"] for d in catalogue_items(str(tmp_path / "cat"))] == [good.name.removesuffix(".ZIP")]


@pytest.mark.parametrize("stored", [False, True])
def test_unzipping_gives_the_members_bytes_and_a_flipped_bit_is_a_damaged_zip(stored, world, tmp_path):
    """ISA-L inflates DEFLATE members (zipfile the rest): the same bytes as zipfile reads, and a corrupted member
    fails its CRC-32 check with one line naming the file."""
    from deepsalt.data.ingest import staged

    z = delivery_zips(world)[0]
    members = zip_members(z)
    if stored:
        z = tmp_path / z.name
        with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
            for name, data in members.items():
                f.writestr(name, data)
    (source,), _ = find_sources([str(z)])
    with staged(source) as files:
        got = {Path(p).name: Path(p).read_bytes() for p in files.values()}
    assert got and all(got[Path(k).name] == v for k, v in members.items() if Path(k).name in got)
    with zipfile.ZipFile(z) as f:
        image = max(f.infolist(), key=lambda i: i.file_size)
    raw = z.read_bytes()

    def ingest_damaged(data: bytearray, match: str) -> None:
        bad = tmp_path / f"bad{len(list(tmp_path.glob('bad*')))}" / z.name
        bad.parent.mkdir()
        bad.write_bytes(bytes(data))
        (source,), _ = find_sources([str(bad)])
        with pytest.raises(DeepSaltInputError, match=match):
            with staged(source):
                pass

    # the image's bytes intact, its recorded CRC-32 (central directory, as zipfile reads it) off by one bit: the
    # member inflates fully and fails the check
    data, pos, name = bytearray(raw), 0, image.filename.encode()
    while (pos := raw.find(b"PK\x01\x02", pos + 1)) >= 0 and raw[pos + 46:pos + 46 + len(name)] != name:
        pass
    assert pos >= 0, "the image's central directory record"
    data[pos + 16] ^= 0x01
    ingest_damaged(data, r"damaged ZIP \(BadZipFile: .*CRC-32")
    # a flipped bit inside the compressed image: whichever check it trips first (the stream, the size or the
    # CRC-32, depending on where it lands), the error names the product and says to download it again
    data = bytearray(raw)
    data[image.header_offset + 200 + image.compress_size // 2] ^= 0xFF
    ingest_damaged(data, rf"{re.escape(z.name)}: .*(damaged ZIP|inflates past).*download (it|the product) again")


@pytest.mark.parametrize("fmt", ["BIL", "BIP", "JP2", "COG"])
def test_every_image_format_dlr_offers_ingests_to_the_same_dn(fmt, world, tmp_path):
    """ENVI BIL/BIP and JPEG2000 images (GeoTIFF and BSQ come with the world), and EOLab's _COG file names, from an
    unzipped product folder."""
    z = delivery_zips(world)[0]
    folder = tmp_path / "product"
    with zipfile.ZipFile(z) as f:
        f.extractall(tmp_path)
    shutil.move(tmp_path / z.name.removesuffix(".ZIP"), folder)
    image = next(folder.glob("*-SPECTRAL_IMAGE.*"))
    assert image.suffix == ".TIF"
    with rasterio.open(image) as s:
        dn = s.read()
        if fmt == "JP2":
            rasterio.shutil.copy(s, str(image.with_suffix(".JP2")), driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100")
        elif fmt in ("BIL", "BIP"):
            prof = {k: v for k, v in s.profile.items() if k not in ("tiled", "blockxsize", "blockysize", "compress", "interleave")}
            with rasterio.open(image.with_suffix(f".{fmt}"), "w", **{**prof, "driver": "ENVI", "interleave": fmt.lower()}) as d:
                d.write(dn)
            image.with_suffix(".hdr").rename(image.with_suffix(".HDR"))
    if fmt == "COG":  # EOLab's analysis-ready names: every raster *_COG.TIF
        for f in list(folder.glob("*.TIF")):
            f.rename(f.with_name(f.name.replace(".TIF", "_COG.TIF")))
    else:
        image.unlink()
    for aux in folder.glob("*.aux.xml"):
        aux.unlink()
    before = sorted(p.name for p in folder.iterdir())
    sources, failed = find_sources([str(folder)])
    assert not failed and [s.kind for s in sources] == ["folder"]
    r = ingest_product(sources[0], str(tmp_path / "cat"))
    assert r["status"] == "written", r
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside the user's files
    item = catalogue_items(str(tmp_path / "cat"))[0]
    with rasterio.open(tmp_path / "cat" / item["id"] / item["assets"]["image"]["href"]) as c:
        np.testing.assert_array_equal(c.read(), dn)


def test_dlr_stac_items_find_their_downloads_under_assets_root(world, tmp_path):
    """Items saved from DLR's STAC API (their asset links need a login) plus the folder where the downloads are."""
    ids = [z.name.removesuffix(".ZIP") for z in delivery_zips(world)] + ["ENMAP01-____L2A-DT9999999999_20240101T000000Z_001_V010402_20240801T000000Z"]
    feats = [{"type": "Feature", "stac_version": "1.0.0", "id": i, "geometry": None, "properties": {"datetime": "2024-01-01T00:00:00Z"},
              "links": [], "assets": {"image": {"href": f"https://download.geoservice.dlr.de/ENMAP/files/L2A/{i}-SPECTRAL_IMAGE_COG.TIF"}}}
             for i in ids]
    saved = tmp_path / "search.json"
    saved.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    r = _cli("ingest", str(saved), "--out", str(tmp_path / "cat"))
    assert r.returncode == 2 and "pass --assets-root DIR" in r.stderr
    r = _cli("ingest", str(saved), "--assets-root", str(world / "deliveries"), "--out", str(tmp_path / "cat"))
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(errors) == 1 and f"no download under {world / 'deliveries'}" in errors[0], r.stderr[-2000:]
    assert "3 written, 0 unchanged, 1 failed" in r.stdout
    assert sorted(d["id"] for d in catalogue_items(str(tmp_path / "cat"))) == ids[:3]


def test_items_post_to_a_stac_api_with_transactions(catalogue, stac_url):
    from stac_tx_server import TransactionServer

    cat, _ = catalogue
    docs = catalogue_items(str(cat))
    with TransactionServer() as api:
        assert post_items(api.url, docs, str(cat)) == 3
        assert post_items(api.url, docs, str(cat)) == 3  # again: each item replaced in place
        assert [m for m, _ in api.requests].count("PUT") == 3 and len(api.items) == 3
        for (_, iid), item in api.items.items():
            for a in item["assets"].values():
                assert Path(a["href"]).is_absolute() and Path(a["href"]).exists(), a["href"]
    # rustac serve (the suite's STAC API) has no transaction endpoints: one clear line, not a traceback
    with pytest.raises(DeepSaltInputError, match="does not implement the Transaction extension"):
        post_items(stac_url, docs[:1], str(cat))


def test_a_bad_band_the_model_reads_is_refused(world, trained, catalogue, tmp_path):
    cat, _ = catalogue
    copy = tmp_path / "cat"
    shutil.copytree(cat, copy)
    first = next(copy.glob("*/*.json"))
    doc = json.loads(first.read_text())
    doc["properties"]["deepsalt:bad_bands"] = ["129", "130"]
    first.write_text(json.dumps(doc))
    with pytest.raises(DeepSaltInputError, match=r"bad band\(s\) 129 .* --exclude-bands 129"):
        map_region(map_cfg(world, trained[0] / "bundle", tmp_path / "c.zarr", stac=str(copy / "collection.json")), log=lambda *_: None)
