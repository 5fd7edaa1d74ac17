"""CPU mapping benchmark: the read stage against raw rasterio decoding of the same windows, and end to end.

    .venv/bin/python bench/map_cpu.py --world WORLD --model RUN/bundle [--out bench/results/map_cpu.json]

Measured in one run on this machine, with the same worker count for both reads (one process per CPU):
- ``raw_decode_px_s``: rasterio alone reading each (scene, tile) window of the image and of the applied
  quality masks: the decode floor for this work;
- ``read_px_s``: DeepSalt's read stage (``prepare_tile``: reads, masks, scaling, warp, composite, covariates)
  as Ray Data CPU tasks over the same tiles;
- ``end_to_end_px_s``: ``deepsalt map`` from STAC search to commit, per valid mapped pixel.
Rates count scene pixels inside the windows (px = window height x width, per scene and tile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "map_cpu.json")
    a = ap.parse_args()

    import ray

    from deepsalt.config import MapConfig
    from deepsalt.mapping.pipeline import map_region, prepare_inputs
    from deepsalt.mapping.tiles import prepare_tile
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
        kw = dict(grid=inp.grid, covariates=cfg.covariates, band_names=inp.meta["band_names"],
                  band_centers=inp.meta["band_centers_nm"], quality=tuple(cfg.quality_masks))
        ray.data.from_items(tasks[:1]).map(prepare_tile, fn_kwargs=kw).materialize()  # warm the workers
        t = time.perf_counter()
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map(
            prepare_tile, fn_kwargs=kw, num_cpus=1, memory=cfg.read_memory_mb * 2**20).materialize()
        read_s = time.perf_counter() - t
        valid = sum(int(r["n_valid"]) for r in ds.iter_rows())

        t = time.perf_counter()
        s = map_region(cfg, log=lambda *_: None)
        e2e_s = time.perf_counter() - t

    res = {"machine": f"{platform.node()}: {cpus} CPUs, {platform.machine()}, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
           "card": None, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "world": str(a.world), "tiles": len(tasks), "scene_windows": len(jobs), "window_px": n_px, "valid_px": valid,
           "workers": cpus, "mc_samples": a.mc_samples,
           "raw_decode_px_s": round(n_px / raw_s), "read_px_s": round(n_px / read_s),
           "read_over_raw": round(raw_s / read_s, 3), "goal_read_over_raw": 0.7,
           "end_to_end_px_s": round(s["pixels_mapped"] / e2e_s), "end_to_end_s": round(e2e_s, 1),
           "pixels_mapped": s["pixels_mapped"], "odc_stac_px_s": None,
           "odc_stac_note": "not measured: odc-stac is not installed in this project's environment"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
