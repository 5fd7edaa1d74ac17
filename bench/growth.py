"""How `deepsalt map` grows with region area: seconds and peak memory at 1x, 4x and 16x area.

    .venv/bin/python bench/growth.py --world WORLD --model RUN/bundle [--out bench/results/growth.json]

WORLD should have scenes of real EnMAP size (about 1,200 x 1,300 px) and no clouds, e.g. one built with
``WorldConfig(scene_px=1244, max_cloud_cover=0, ...)`` (the command used is recorded in the results). The regions
are concentric squares inside the first seen scene's data, with areas in the ratio of ``--factors``, the largest
spanning ``INNER`` of the scene's bounding box (so that pixels grow with area); each maps into a fresh cube on the same warm local Ray. Peak private memory (RssAnon) is
sampled every 0.1 s for the driver and for every Ray worker process (the largest worker is reported).
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


#: the part of a scene's bounding box that lies inside its data (fractions from the west and north edges): the
#: synthetic scenes, like real L2A tiles, have a nodata corner at the north-west, and the largest region must hold
#: data everywhere, or its pixel count grows less than its area (an earlier run reached 6.1x instead of 16x)
INNER = (0.3, 0.95)


def regions(item_bbox, factors, inner=INNER):
    """Concentric lon/lat squares (in degrees of the scene's bbox) with areas proportional to ``factors``, the largest
    spanning the ``inner`` part of the scene's bounding box."""
    x0, y0, x1, y1 = item_bbox
    a, b = inner
    w, h = x1 - x0, y1 - y0
    cx, cy, big = x0 + w * (a + b) / 2, y1 - h * (a + b) / 2, max(factors)
    for f in factors:
        k = math.sqrt(f / big) * (b - a) / 2
        yield f, (cx - w * k, cy - h * k, cx + w * k, cy + h * k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 4, 16])
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--world-command", default="", help="how WORLD was built, recorded in the results")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "growth.json")
    a = ap.parse_args()

    from deepsalt.config import MapConfig
    from deepsalt.data.stac import search_items
    from deepsalt.mapping.pipeline import map_region
    from deepsalt.raycluster import init_ray

    seen = [s["id"] for s in json.loads((a.world / "world.json").read_text())["scenes"] if s["region"] == "seen"]
    scene = next(i for i in search_items(str(a.world / "stac")) if i.id == seen[0])
    size = scene.assets["image"].extra_fields.get("proj:shape")
    init_ray()
    rows = []
    for f, bbox in regions(scene.bbox, a.factors):
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
