"""`deepsalt ingest` speed against gdal_translate, and the COG layout chosen by the map path's read rate.

    .venv/bin/python bench/ingest.py --world WORLD [--out bench/results/ingest.json]

WORLD must hold ``deliveries/`` (``deepsalt world --deliveries``); scenes of real EnMAP size make the numbers
comparable with real products (the command that built WORLD is recorded in its world.json). Three parts:

1. ingest: every delivery ZIP through ``ingest_product`` in this process (one core): seconds, products per minute
   per core, px/s; then the same products as Ray tasks (``ingest``), one per core, products per minute.
2. gdal_translate: the same spectral image to a COG with the same creation options, through GDAL's CreateCopy on
   the COG driver (what ``gdal_translate -of COG`` runs), with the GDAL that DeepSalt uses: on the image already
   unzipped (the conversion alone), and from the delivery by hand (``unzip``, i.e. zlib, then the same). The
   ratios are ingest's px/s over each (goal >= 0.8); ingest also unzips, parses METADATA.XML and writes 9
   quality layers and the Item.
3. layouts: one image written as COGs of several layouts; size, write seconds, and the rate at which the map
   path's reader (``EnMAPScene.read_dn``: every band of a 256 x 256 window plus the quality layers) reads all of
   its 256-px windows, median of 3 passes. Chosen: the fastest to read; of layouts within 3 % of it (the passes'
   noise), the quickest to write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYOUTS = {
    "pixel/deflate/256": ("COG", {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "LEVEL": "6", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}),
    "pixel/deflate/512": ("COG", {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "LEVEL": "6", "BLOCKSIZE": "512", "OVERVIEWS": "NONE"}),
    "pixel/zstd1/256": ("COG", {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "LEVEL": "1", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}),
    "pixel/zstd9/256": ("COG", {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "LEVEL": "9", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}),
    "pixel/lzw/256": ("COG", {"COMPRESS": "LZW", "PREDICTOR": "YES", "BLOCKSIZE": "256", "OVERVIEWS": "NONE"}),
    # GDAL 3.10's COG driver writes multi-band images pixel-interleaved only; a tiled band-interleaved GeoTIFF with
    # the same compression is the band-sequential alternative (COG-ordered, without overviews)
    "band/deflate/256": ("GTiff", {"TILED": "YES", "INTERLEAVE": "BAND", "COMPRESS": "DEFLATE", "PREDICTOR": "2", "ZLEVEL": "6",
                                   "BLOCKXSIZE": "256", "BLOCKYSIZE": "256"}),
}


def _read_rate(image: Path, masks: dict, passes: int = 3) -> float:
    """px/s of the map path's reader over every 256-px window of the image."""
    import pystac
    from rasterio.windows import Window

    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.spectra.bands import enmap_bands

    import rasterio

    with rasterio.open(image) as ds:
        h, w = ds.height, ds.width
    item = pystac.Item("bench", None, None, __import__("datetime").datetime(2024, 1, 1), {})
    item.add_asset("image", pystac.Asset(str(image), extra_fields={"eo:bands": enmap_bands().to_eo_bands()}))
    for k, p in masks.items():
        item.add_asset(k, pystac.Asset(str(p)))
    scene = EnMAPScene.from_item(item)
    wins = [Window(c, r, min(256, w - c), min(256, h - r)) for r in range(0, h, 256) for c in range(0, w, 256)]
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for win in wins:
            with rasterio.Env(GDAL_CACHEMAX=64):
                scene.read_dn(win, quality=tuple(masks))
        times.append(time.perf_counter() - t0)
    return h * w / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest.json"))
    args = ap.parse_args()

    import rasterio
    import rasterio.shutil

    from deepsalt.data.ingest import IMAGE_COG, find_sources, ingest, ingest_product, staged
    from deepsalt.raycluster import init_ray

    zips = sorted((args.world / "deliveries").glob("*.ZIP"))
    if not zips:
        sys.exit(f"{args.world}/deliveries holds no ZIP: build the world with `deepsalt world --deliveries`")
    sources, _ = find_sources([str(z) for z in zips])
    res: dict = {**stamp(), "world": json.loads((args.world / "world.json").read_text())["config"], "image_cog": IMAGE_COG}
    with tempfile.TemporaryDirectory(dir=REPO / "bench" / "results") as tmp:
        tmp = Path(tmp)
        # 1. ingest, one core
        per = []
        for s in sources:
            t0 = time.perf_counter()
            r = ingest_product(s, str(tmp / "cat1"))
            assert r["status"] == "written", r
            per.append({"id": r["id"], "seconds": round(time.perf_counter() - t0, 3), "pixels": r["pixels"],
                        "zip_mb": round(Path(s.href).stat().st_size / 2**20, 1)})
        secs, px = sum(p["seconds"] for p in per), sum(p["pixels"] for p in per)
        unzip = []
        for s in sources:  # of which: unzipping (ISA-L), the step gdal_translate on an unzipped image does not do
            t0 = time.perf_counter()
            with staged(s):
                unzip.append(time.perf_counter() - t0)
        res["ingest_one_core"] = {"products": per, "products_per_min_per_core": round(60 * len(per) / secs, 2),
                                  "px_per_s": round(px / secs), "of_which_unzip_seconds": round(sum(unzip), 3),
                                  "seconds": round(secs, 3)}
        # ... and as Ray tasks on every core
        init_ray()
        t0 = time.perf_counter()
        s = ingest([str(z) for z in zips], str(tmp / "cat2"), log=lambda *_: None)
        wall = time.perf_counter() - t0
        import ray

        cores = int(ray.cluster_resources().get("CPU", 1))
        res["ingest_ray"] = {"cores": cores, "seconds": round(wall, 2), "written": s["written"],
                             "products_per_min": round(60 * len(zips) / wall, 2),
                             "products_per_min_per_core": round(60 * len(zips) / wall / cores, 2)}
        # 2. gdal_translate -of COG with the same options: on the image already unzipped (the conversion alone), and
        # from the delivery as a person would do it by hand, `unzip` (zlib) then gdal_translate
        gt, unz = [], []
        for src in sources:
            with tempfile.TemporaryDirectory(dir=tmp) as d, zipfile.ZipFile(src.href) as z:
                members = [i for i in z.infolist() if "-SPECTRAL_IMAGE." in i.filename.upper()]  # GeoTIFF, or ENVI + .HDR
                t0 = time.perf_counter()
                paths = [z.extract(m, d) for m in members]
                unz.append(time.perf_counter() - t0)
                path = next(p for p in paths if not p.upper().endswith(".HDR"))
                with rasterio.open(path) as ds:
                    t0 = time.perf_counter()
                    rasterio.shutil.copy(ds, str(tmp / "gt.tif"), driver="COG", **IMAGE_COG)
                    gt.append((time.perf_counter() - t0, ds.width * ds.height))
        gt_s, gt_px = sum(t for t, _ in gt), sum(p for _, p in gt)
        res["gdal_translate"] = {"how": "GDAL CreateCopy, COG driver, the options above (gdal_translate -of COG), GDAL "
                                        + rasterio.__gdal_version__ + ", on the unzipped GeoTIFF",
                                 "seconds": round(gt_s, 3), "px_per_s": round(gt_px / gt_s)}
        res["unzip_then_gdal_translate"] = {"how": "zipfile (zlib, as `unzip`) extracting the image, then the same CreateCopy",
                                            "unzip_seconds": round(sum(unz), 3), "seconds": round(gt_s + sum(unz), 3),
                                            "px_per_s": round(gt_px / (gt_s + sum(unz)))}
        res["ratio_ingest_over_gdal_translate"] = round(res["ingest_one_core"]["px_per_s"] / res["gdal_translate"]["px_per_s"], 3)
        res["ratio_ingest_over_unzip_then_gdal_translate"] = round(
            res["ingest_one_core"]["px_per_s"] / res["unzip_then_gdal_translate"]["px_per_s"], 3)
        res["goal_ratio"] = 0.8
        # 3. layouts, on the first product
        with staged(sources[0]) as files:
            from deepsalt.config import QUALITY_ASSETS

            masks = {k: files[k] for k in QUALITY_ASSETS}
            layouts = {}
            for name, (driver, opts) in LAYOUTS.items():
                dst = tmp / f"{name.replace('/', '_')}.tif"
                with rasterio.open(files["image"]) as ds:
                    t0 = time.perf_counter()
                    rasterio.shutil.copy(ds, str(dst), driver=driver, **opts)
                    wsec = time.perf_counter() - t0
                layouts[name] = {"driver": driver, "options": opts, "write_seconds": round(wsec, 2),
                                 "mb": round(dst.stat().st_size / 2**20, 1), "map_read_px_per_s": round(_read_rate(dst, masks))}
                print(name, layouts[name], flush=True)
        res["layouts"] = layouts
        best = max(v["map_read_px_per_s"] for v in layouts.values())
        res["chosen"] = min((k for k, v in layouts.items() if v["map_read_px_per_s"] >= 0.97 * best),
                            key=lambda k: layouts[k]["write_seconds"])
        res["chosen_is_ingest_layout"] = layouts[res["chosen"]]["options"] == IMAGE_COG
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("ingest_one_core", "ingest_ray", "gdal_translate", "unzip_then_gdal_translate",
                                          "ratio_ingest_over_gdal_translate", "ratio_ingest_over_unzip_then_gdal_translate",
                                          "chosen", "chosen_is_ingest_layout")}, indent=1))


if __name__ == "__main__":
    main()
