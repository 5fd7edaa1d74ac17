"""How `deepsalt map` grows with region area: seconds and peak memory at 1x, 4x and 16x area.

    .venv/bin/python bench/growth.py --world WORLD --model RUN/bundle [--out bench/results/growth.json]

The regions are nested blocks of whole output tiles (256 x 256 px): one tile, 2 x 2 and 4 x 4 for ``--factors 1 4
16``, the largest inside the first seen scene's data, so that the pixels mapped grow exactly with the area. A 4 x 4
block (1,024 px a side, turned against the scene's UTM grid) needs a scene larger than a real EnMAP tile (about
1,200 x 1,300 px) and no clouds, e.g. ``WorldConfig(scene_px=1800, max_cloud_cover=0, ...)`` (the command used is
recorded in the results). Each region maps into a fresh cube on the same warm local Ray. Peak private memory
(RssAnon) is sampled every 0.1 s for the driver and for every Ray worker process (the largest worker is reported).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]


def _rss(pid) -> int:
    """Private resident memory (RssAnon), bytes: a Ray worker's RSS also counts the pages of the shared object
    store it has touched (RssShmem), which belong to the node's object store, not to the worker."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class PeakRSS:
    """Peak private memory of this process and of every Ray worker process, sampled from /proc in a thread.
    (Linux; on a local Ray started by this process, the workers are all on this machine.)"""

    def __init__(self, every_s: float = 0.1):
        self.every, self.driver, self.workers = every_s, 0, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.driver = max(self.driver, _rss(os.getpid()))
            for d in Path("/proc").iterdir():
                if not d.name.isdigit() or int(d.name) == os.getpid():
                    continue
                try:
                    cmd = (d / "cmdline").read_bytes()
                    if cmd.startswith(b"ray::") or b"default_worker.py" in cmd:
                        rss = _rss(d.name)
                        if rss > self.workers.get(d.name, (0, ""))[0]:
                            self.workers[d.name] = (rss, cmd.split(b"\0")[0].decode(errors="replace")[:60])
                except OSError:  # gone meanwhile
                    pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _by_task(workers: dict) -> dict:
    """Largest peak per Ray process title at its peak (e.g. ``ray::Map(prepare_tile)``), MB."""
    out: dict = {}
    for rss, title in workers.values():
        out[title] = max(out.get(title, 0), round(rss / 2**20))
    return dict(sorted(out.items()))


def _valid_lookup(item):
    """``inside(xs, ys, crs)``: whether points lie on the scene's data (band 1 not nodata), from a decimated read."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    from deepsalt.data.covariates import transformer
    from deepsalt.data.enmap import EnMAPScene

    scene = EnMAPScene.from_item(item)
    with rasterio.open(scene.href("image")) as ds:
        f = max(1, min(ds.width, ds.height) // 400)
        band = ds.read(1, out_shape=(ds.height // f, ds.width // f), resampling=Resampling.nearest)
        valid = band != ds.nodata
        inv = ~(ds.transform * Affine.scale(ds.width / band.shape[1], ds.height / band.shape[0]))
        scene_crs = str(ds.crs)

    def inside(xs, ys, crs):
        x, y = transformer(crs, scene_crs).transform(xs, ys)
        c, r = inv * (np.asarray(x), np.asarray(y))
        c, r = np.floor(c).astype(int), np.floor(r).astype(int)
        ok = (r >= 0) & (r < valid.shape[0]) & (c >= 0) & (c < valid.shape[1])
        return ok.all() and valid[r, c].all()

    return inside


def regions(item, grid, factors):
    """Nested blocks of whole output tiles, ``sqrt(f)`` tiles a side for each area factor ``f`` (1, 4, 16: one
    tile, 2 x 2, 4 x 4), the largest inside the scene's data, as lon/lat boxes that select exactly those tiles.
    `deepsalt map --bbox` maps every tile the box touches, so a box that is not tile-aligned grows by whole tiles
    and its pixels do not grow with its area (an earlier, fractional layout reached 11.5x for 16x)."""
    import numpy as np

    from deepsalt.data.covariates import transformer
    from deepsalt.mapping.tiles import plan

    sides = [round(math.sqrt(f)) for f in factors]
    if any(s * s != f for s, f in zip(sides, factors)):
        raise SystemExit(f"--factors must be square numbers of tiles (1 4 16), got {factors}")
    big = max(sides)
    inside = _valid_lookup(item)
    keys = sorted(plan([item], grid))
    c = grid.chunk * grid.res
    u = (np.arange(33) + 0.5) / 33  # a 33 x 33 lattice of points over a block checks it is all data
    cands = []
    for ty, tx in keys:
        x0, y1 = grid.x0 + tx * c, grid.y0 - ty * c
        xs, ys = np.meshgrid(x0 + u * big * c, y1 - u * big * c)
        if inside(xs.ravel(), ys.ravel(), grid.crs):
            cands.append((ty, tx))
    if not cands:
        raise SystemExit(f"no block of {big} x {big} tiles lies inside the data of scene {item.id}: build a larger "
                         "scene (WorldConfig scene_px)")
    mid = np.mean(keys, axis=0)
    ty0, tx0 = min(cands, key=lambda k: (k[0] + big / 2 - mid[0]) ** 2 + (k[1] + big / 2 - mid[1]) ** 2)
    to_ll = transformer(grid.crs, "EPSG:4326")
    for f, s in zip(factors, sides):
        o = (big - s) // 2  # centred in the largest block
        ty, tx = ty0 + o, tx0 + o
        cx, cy = grid.x0 + (tx + s / 2) * c, grid.y0 - (ty + s / 2) * c
        lon, lat = to_ll.transform(cx, cy)
        half = s * c / 2
        for _ in range(20):  # a lon/lat box whose projected envelope (the grid is rotated here) stays in the block
            dy, dx = half / 110_574, half / (111_320 * math.cos(math.radians(lat)))
            bbox = (lon - dx, lat - dy, lon + dx, lat + dy)
            b = grid.tile_box(bbox, "EPSG:4326")
            if (b.ty0, b.ty1, b.tx0, b.tx1) == (ty, ty + s - 1, tx, tx + s - 1):
                break
            half *= 0.9
        else:
            raise SystemExit(f"no lon/lat box selects exactly tiles {ty}..{ty + s - 1} x {tx}..{tx + s - 1}")
        yield f, bbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16], help="areas in tiles: square numbers")
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--world-command", default="", help="how WORLD was built, recorded in the results")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "growth.json")
    a = ap.parse_args()

    from deepsalt.config import MapConfig
    from deepsalt.data.stac import search_items
    from deepsalt.mapping.pipeline import grid_for, map_region
    from deepsalt.raycluster import init_ray

    seen = [s["id"] for s in json.loads((a.world / "world.json").read_text())["scenes"] if s["region"] == "seen"]
    scene = next(i for i in search_items(str(a.world / "stac")) if i.id == seen[0])
    size = scene.assets["image"].extra_fields.get("proj:shape")
    grid = grid_for(MapConfig(stac=str(a.world / "stac"), covariates=str(a.world / "covariates"), model=a.model,
                              out="unused", epoch="2024"))
    boxes = list(regions(scene, grid, a.factors))
    init_ray()
    rows = []
    for f, bbox in boxes:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = MapConfig(stac=str(a.world / "stac"), covariates=str(a.world / "covariates"), model=a.model,
                            out=f"{tmp}/cube", epoch="2024", mc_samples=a.mc_samples, bbox=bbox)
            with PeakRSS() as mem:
                t = time.perf_counter()
                s = map_region(cfg, log=lambda *_: None)
                sec = time.perf_counter() - t
        rows.append({"area_factor": f, "bbox": [round(v, 5) for v in bbox], "tiles": s["tiles_mapped"],
                     "pixels_mapped": s["pixels_mapped"], "seconds": round(sec, 1),
                     "us_per_px": round(sec / max(1, s["pixels_mapped"]) * 1e6, 1),
                     "peak_rss_mb": round(mem.driver / 2**20), "driver_peak_rss_mb": round(mem.driver / 2**20),
                     "worker_peak_rss_mb": round(max((r for r, _ in mem.workers.values()), default=0) / 2**20),
                     "worker_peak_rss_mb_by_task": _by_task(mem.workers),
                     "workers_seen": len(mem.workers)})
        print(json.dumps(rows[-1]), flush=True)
    res = {**stamp(), "world_command": a.world_command,
           "scene": scene.id, "scene_shape": size, "mc_samples": a.mc_samples,
           "pixels_over_1x": [round(r["pixels_mapped"] / max(1, rows[0]["pixels_mapped"]), 2) for r in rows],
           "us_per_px_over_1x": [round(r["us_per_px"] / rows[0]["us_per_px"], 3) for r in rows],
           "driver_rss_over_1x": [round(r["driver_peak_rss_mb"] / max(1, rows[0]["driver_peak_rss_mb"]), 3) for r in rows],
           "worker_rss_over_1x": [round(r["worker_peak_rss_mb"] / max(1, rows[0]["worker_peak_rss_mb"]), 3) for r in rows],
           "goal": "us/px within 1.3x and memory within 1.5x of the 1x run",
           "note": "private resident memory (RssAnon; the shared object store's pages are not counted), sampled every "
                   "0.1 s: peak_rss_mb is the driver's, worker_peak_rss_mb the largest Ray worker's",
           "runs": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
