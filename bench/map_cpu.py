"""CPU mapping benchmark: the read stage against raw rasterio decoding of the same windows, and end to end.

    .venv/bin/python bench/map_cpu.py --world WORLD --model RUN/bundle [--out bench/results/map_cpu.json]

Measured in one run on this machine, with the same worker count for both reads (one process per CPU), each
``--repeats`` times, alternated, after a warm-up pass (the rates are the medians; ``raw_decode_s`` and ``read_s`` list
every pass); ``read_over_raw_before_ray`` compares with the same decode timed before Ray started, on a machine
without Ray's idle daemons:
- ``raw_decode_px_s``: rasterio alone reading each (scene, tile) window of the image and of the applied
  quality masks: the decode floor for this work;
- ``read_px_s``: DeepSalt's read stage (``prepare_tile``: reads, masks, nearest-pixel lookup, composite, covariates)
  as Ray Data CPU tasks over the same tiles (``pipeline.read_stage``, exactly as `deepsalt map` runs it);
- ``end_to_end_px_s``: ``deepsalt map`` from STAC search to commit, per valid mapped pixel (median of two runs;
  two more with another setting run between them, ``--compare``: the student in an actor pool, ``--inference
  actors``, against the default on CPU, in the read tasks; or Ray Data's per-operator resource reservation on,
  ``reserve_stage_resources``);
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
import statistics
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

    from deepsalt.config import QUALITY_ASSETS
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
        for k in quality:  # each layer's own flagged values (land is class 1 in QL_QUALITY_CLASSES)
            bad = bad | ds[k].isin(QUALITY_ASSETS[k].masked)
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


def _profile(inp, tasks, repeats: int) -> dict:
    """Where the read stage's time goes: every tile prepared in turn in this process, timed by part (seconds per
    pass, median of ``repeats``), and the same prepare in a process pool, with the raw decode alternated beside it."""
    import pyproj

    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.mapping import tiles

    kw = dict(grid=inp.grid, covariates=inp.cfg.covariates, band_names=inp.meta["band_names"],
              band_centers=inp.meta["band_centers_nm"], quality=tuple(inp.cfg.quality_masks))
    spent: dict = {}
    patched = []

    def timed(owner, name, part):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - t
        patched.append((owner, name, real))
        setattr(owner, name, wrapper)

    # the projections overlap the other parts (the covariates' own are inside their time); the rest is the total
    # less the decode and the covariates
    timed(EnMAPScene, "read_dn", "decode: image and mask windows (read_dn)")
    timed(tiles, "sample_covariates", "covariates: open, project, read (sample_covariates)")
    timed(pyproj.Transformer, "transform", "exact projections (pyproj, all callers)")
    passes = []
    try:
        for t in tasks[:3]:
            tiles.prepare_tile(t, **kw)
        for _ in range(repeats):
            spent.clear()
            t0 = time.perf_counter()
            for t in tasks:
                tiles.prepare_tile(t, **kw)
            passes.append({"total": time.perf_counter() - t0, **spent})
    finally:
        for owner, name, real in patched:
            setattr(owner, name, real)
    med = {k: round(statistics.median(p.get(k, 0.0) for p in passes), 3) for k in passes[0]}
    main_parts = [k for k in med if k.startswith(("decode", "covariates"))]
    med["rest of prepare_tile (gather, nodata test, composite, outputs)"] = round(med["total"] - sum(med[k] for k in main_parts), 3)

    pool_runs = {"raw_decode": [], "prepare_tile": []}
    jobs = _windows(inp)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_decode, jobs))
        list(pool.map(_valid_count, [(t, kw) for t in tasks[:4]]))
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(_decode, jobs))
            pool_runs["raw_decode"].append(round(time.perf_counter() - t0, 3))
            t0 = time.perf_counter()
            list(pool.map(_valid_count, [(t, kw) for t in tasks]))
            pool_runs["prepare_tile"].append(round(time.perf_counter() - t0, 3))
    return {"serial_s": med, "serial_passes": len(passes), "process_pool_s": pool_runs,
            "process_pool_prepare_over_raw": round(statistics.median(pool_runs["raw_decode"])
                                                   / statistics.median(pool_runs["prepare_tile"]), 3)}


def _valid_count(job) -> int:
    from deepsalt.mapping.tiles import prepare_tile

    task, kw = job
    return prepare_tile(task, **kw)["n_valid"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="raw decode and read stage, alternated; medians reported")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "map_cpu.json")
    ap.add_argument("--profile-only", action="store_true", help="write only the read stage's profile (no Ray, no "
                    "odc-stac): e.g. with PYTHONPATH set to a checkout of older code, to compare")
    ap.add_argument("--compare", choices=("inference", "reserve"), default="inference",
                    help="the other setting of the end-to-end runs (ABBA with the default): --inference actors, or "
                         "Ray Data's per-operator resource reservation on")
    ap.add_argument("--no-odc-stac", action="store_true", help="skip the odc-stac comparison (minutes)")
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

        with ProcessPoolExecutor(cpus) as pool:  # the decode floor on a quiet machine, before Ray starts
            list(pool.map(_decode, jobs))
            quiet_runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                assert sum(pool.map(_decode, jobs)) == n_px
                quiet_runs.append(time.perf_counter() - t)
        tasks = [{"ty": ty, "tx": tx, "items": [json.dumps(i.to_dict(include_self_link=False)) for i in its],
                  "scene_index": list(range(len(its)))} for (ty, tx), its in inp.tiles.items()]
        profile = _profile(inp, tasks, a.repeats)
        if a.profile_only:
            import deepsalt

            res = {**stamp(), "world": str(a.world), "deepsalt": str(Path(deepsalt.__file__).parent), "tiles": len(tasks),
                   "profile": profile}
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(res, indent=1))
            return
        init_ray()
        raw_runs, read_runs = [], []
        with ProcessPoolExecutor(cpus) as pool:
            list(pool.map(_decode, jobs))  # start and warm one process per CPU
            read_stage(inp, tasks[:cpus * cfg.tiles_per_read_task]).materialize()  # and one Ray worker per CPU
            for _ in range(a.repeats):  # alternated, so that both see the same state of the machine
                t = time.perf_counter()
                assert sum(pool.map(_decode, jobs)) == n_px
                raw_runs.append(time.perf_counter() - t)
                t = time.perf_counter()
                ds = read_stage(inp, tasks).materialize()  # exactly the pipeline's read stage
                read_runs.append(time.perf_counter() - t)
                valid = sum(int(r["n_valid"]) for r in ds.iter_rows())
                del ds
        raw_s, read_s = statistics.median(raw_runs), statistics.median(read_runs)

        other = {"inference": {"inference": "actors"}, "reserve": {"reserve_stage_resources": True}}[a.compare]
        e2e = {False: [], True: []}  # the default and the other setting, in ABBA order
        for k, alt in enumerate([False, True, True, False]):
            run_cfg = cfg.model_copy(update={"out": f"{tmp}/cube{k}", **(other if alt else {})})
            t = time.perf_counter()
            s = map_region(run_cfg, log=lambda *_: None)
            e2e[alt].append(time.perf_counter() - t)
            assert s["pixels_mapped"] == valid, s
        e2e_s = statistics.median(e2e[False])
        if a.no_odc_stac:
            odc = {"error": "not measured (--no-odc-stac)"}
        else:
            try:
                odc = _odc_stac(inp, a.model, a.mc_samples)
            except ImportError as e:
                odc = {"error": f"not measured: {e} (install the bench extra)"}

    res = {**stamp(),
           "world": str(a.world), "tiles": len(tasks), "scene_windows": len(jobs), "window_px": n_px, "valid_px": valid,
           "workers": cpus, "mc_samples": a.mc_samples,
           "raw_decode_px_s": round(n_px / raw_s), "read_px_s": round(n_px / read_s),
           "read_over_raw": round(raw_s / read_s, 3), "goal_read_over_raw": 0.7,
           "raw_decode_s": [round(x, 3) for x in raw_runs], "read_s": [round(x, 3) for x in read_runs],
           "raw_decode_before_ray_s": [round(x, 3) for x in quiet_runs],
           "read_over_raw_before_ray": round(statistics.median(quiet_runs) / read_s, 3),
           "profile": profile,
           "end_to_end_px_s": round(s["pixels_mapped"] / e2e_s), "end_to_end_s": round(e2e_s, 1),
           "end_to_end_runs_s": [round(x, 1) for x in e2e[False]],
           "end_to_end_default": {"inference": cfg.inference_mode, "reserve_stage_resources": cfg.reserve_stage_resources},
           f"end_to_end_{'inference_actors' if a.compare == 'inference' else 'reserve_stage_resources'}_s": [round(x, 1) for x in e2e[True]],
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
