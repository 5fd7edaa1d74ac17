"""CPU mapping benchmark: the read stage against raw rasterio decoding of the same windows, and end to end.

    .venv/bin/python bench/map_cpu.py --world WORLD --model RUN/bundle [--out bench/results/map_cpu.json]

Measured in one run on this machine, with the same worker count for both reads (one process per CPU):
- ``raw_decode_px_s``: rasterio alone reading each (scene, tile) window of the image and of the applied
  quality masks: the decode floor for this work;
- ``read_px_s``: DeepSalt's read stage (``prepare_tile``: reads, masks, nearest-pixel lookup, composite, covariates)
  as Ray Data CPU tasks over the same tiles (``pipeline.read_stage``, exactly as `deepsalt map` runs it);
- ``end_to_end_px_s``: ``deepsalt map`` from STAC search to commit, per valid mapped pixel;
- ``odc_stac_*``: the same tiles as a user would map them without DeepSalt: ``odc.stac.load`` per tile (dask,
  threads, nearest resampling onto the tile's grid; ``raster:bands`` added to the items, which odc-stac needs
  for a multi-band asset), quality masks and first-valid composite in xarray, covariates by
  ``rioxarray.reproject_match``, and the same model with the same MC passes; nothing is written.
  ``odc_stac_read_px_s`` times the load alone, ``odc_stac_px_s`` everything, per valid mapped pixel.
Rates count scene pixels inside the windows (px = window height x width, per scene and tile).
Needs the ``bench`` extra (``pip install -c constraints.txt -e ".[bench]"``) for odc-stac.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]


def _windows(inp):
    """(image href, mask hrefs, window) for every scene of every planned tile: the work of the read stage."""
    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.mapping.tiles import _window

    out = []
    for (ty, tx), items in inp.tiles.items():
        g = inp.grid
        h, w = g.tile_shape(ty, tx)
        tr = g.tile_transform(ty, tx)
        bounds = (tr.c, tr.f - h * g.res, tr.c + w * g.res, tr.f)
        for item in items:
            scene = EnMAPScene.from_item(item)
            win = _window(scene.header(), bounds, g.crs)
            if win is not None:
                out.append((scene.href("image"), [scene.href(k) for k in inp.cfg.quality_masks],
                            (int(win.col_off), int(win.row_off), int(win.width), int(win.height))))
    return out


def _decode(job) -> int:
    import rasterio
    from rasterio.windows import Window

    image, masks, (c, r, w, h) = job
    win = Window(c, r, w, h)
    with rasterio.open(image) as ds:
        ds.read(window=win)
    for m in masks:
        with rasterio.open(m) as ds:
            ds.read(1, window=win)
    return w * h


def _odc_stac(inp, model: str, mc_samples: int) -> dict:
    """The user's path without DeepSalt (see the module docstring). Returns timings and pixel counts."""
    import dask
    import numpy as np
    import odc.stac
    import rioxarray
    import xarray as xr
    from odc.geo.geobox import GeoBox

    from deepsalt.data.covariates import covariate_hrefs
    from deepsalt.data.stac import item_time
    from deepsalt.models.bundle import DeepSaltBundle

    bundle = DeepSaltBundle.load(model)
    quality = list(inp.cfg.quality_masks)

    def with_raster_bands(item):
        item = item.clone()
        n = len(item.assets["image"].extra_fields["eo:bands"])
        item.assets["image"].extra_fields["raster:bands"] = [{"data_type": "int16", "nodata": -32768}] * n
        for k in quality:
            item.assets[k].extra_fields["raster:bands"] = [{"data_type": "uint8"}]
        return item

    g = inp.grid
    t0 = time.perf_counter()
    lazy = {}
    for (ty, tx), items in inp.tiles.items():
        h, w = g.tile_shape(ty, tx)
        gbox = GeoBox((h, w), g.tile_transform(ty, tx), g.crs)
        lazy[(ty, tx)] = odc.stac.load([with_raster_bands(i) for i in items], bands=[*bundle.band_names, *quality],
                                       geobox=gbox, resampling="nearest", groupby="id", chunks={})
    loaded = dict(zip(lazy, dask.compute(*lazy.values())))
    read_s = time.perf_counter() - t0
    covs = {n: rioxarray.open_rasterio(h, masked=True).squeeze("band", drop=True) for n, h in covariate_hrefs(inp.cfg.covariates).items()}
    n_px = 0
    for (ty, tx), ds in loaded.items():
        rank = {np.datetime64(item_time(i).replace(tzinfo=None), "ns"): k for k, i in enumerate(inp.tiles[(ty, tx)])}
        ds = ds.isel(time=np.argsort([rank.get(np.datetime64(t, "ns"), len(rank)) for t in ds.time.values]))  # least cloud first
        dn = xr.concat([ds[b] for b in bundle.band_names], "band")  # (band, time, y, x)
        bad = (dn == -32768).any("band")
        for k in quality:
            bad = bad | (ds[k] == 1)
        refl = (dn.astype("float32") * 1e-4).where(~bad)
        comp = refl.isel(time=0)
        for t in range(1, refl.sizes["time"]):
            comp = comp.fillna(refl.isel(time=t))
        cov = xr.concat([c.rio.reproject_match(comp.isel(band=0)) for c in covs.values()], "cov")
        x = comp.values.reshape(len(bundle.band_names), -1).T
        c = cov.values.reshape(len(covs), -1).T
        ok = np.isfinite(x).all(1) & np.isfinite(c).all(1)
        if ok.any():
            bundle.predict(x[ok], c[ok], mc_samples, seed=ty * 100003 + tx, di=True)  # the same work as deepsalt map
        n_px += int(ok.sum())
    return {"read_s": read_s, "total_s": time.perf_counter() - t0, "pixels": n_px}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "map_cpu.json")
    a = ap.parse_args()


    from deepsalt.config import MapConfig
    from deepsalt.mapping.pipeline import map_region, prepare_inputs, read_stage
    from deepsalt.raycluster import init_ray

    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = MapConfig(stac=str(a.world / "stac"), covariates=str(a.world / "covariates"), model=a.model,
                        out=f"{tmp}/cube", epoch="2024", mc_samples=a.mc_samples)
        inp = prepare_inputs(cfg, log=lambda *_: None)
        jobs = _windows(inp)
        n_px = sum(j[2][2] * j[2][3] for j in jobs)

        t = time.perf_counter()
        with ProcessPoolExecutor(cpus) as pool:
            assert sum(pool.map(_decode, jobs)) == n_px
        raw_s = time.perf_counter() - t

        init_ray()
        tasks = [{"ty": ty, "tx": tx, "items": [json.dumps(i.to_dict(include_self_link=False)) for i in its],
                  "scene_index": list(range(len(its)))} for (ty, tx), its in inp.tiles.items()]
        read_stage(inp, tasks[:cpus * cfg.tiles_per_read_task]).materialize()  # start and warm one worker per CPU
        t = time.perf_counter()
        ds = read_stage(inp, tasks).materialize()  # exactly the pipeline's read stage
        read_s = time.perf_counter() - t
        valid = sum(int(r["n_valid"]) for r in ds.iter_rows())

        t = time.perf_counter()
        s = map_region(cfg, log=lambda *_: None)
        e2e_s = time.perf_counter() - t
        try:
            odc = _odc_stac(inp, a.model, a.mc_samples)
        except ImportError as e:
            odc = {"error": f"not measured: {e} (install the bench extra)"}

    res = {**stamp(),
           "world": str(a.world), "tiles": len(tasks), "scene_windows": len(jobs), "window_px": n_px, "valid_px": valid,
           "workers": cpus, "mc_samples": a.mc_samples,
           "raw_decode_px_s": round(n_px / raw_s), "read_px_s": round(n_px / read_s),
           "read_over_raw": round(raw_s / read_s, 3), "goal_read_over_raw": 0.7,
           "end_to_end_px_s": round(s["pixels_mapped"] / e2e_s), "end_to_end_s": round(e2e_s, 1),
           "pixels_mapped": s["pixels_mapped"]}
    if "error" in odc:
        res.update(odc_stac_px_s=None, odc_stac_note=odc["error"])
    else:
        res.update(odc_stac_read_px_s=round(n_px / odc["read_s"]), odc_stac_px_s=round(odc["pixels"] / odc["total_s"]),
                   odc_stac_s=round(odc["total_s"], 1), odc_stac_pixels=odc["pixels"],
                   read_over_odc_stac_read=round(odc["read_s"] / read_s, 2),
                   end_to_end_over_odc_stac=round((s["pixels_mapped"] / e2e_s) / (odc["pixels"] / odc["total_s"]), 2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
