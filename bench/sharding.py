"""Objects stored and read times of the cube, unsharded and sharded (Zarr v3 sharding), on the same world.

    python bench/sharding.py --world W --model RUN/bundle [--shards 1 2 4] [--out bench/results/sharding.json]

For each shard layout: map the world's seen region into a fresh local cube (5 MC passes), count the objects
the Icechunk repository holds for the arrays (files under ``chunks/``; manifests and snapshots counted apart),
then time, each on a cube opened afresh: one point (``deepsalt.point``, median of 20 mapped points), one
region (a 1,024 x 1,024 px window of ``ece`` at the centre of the mapped extent, median of 3) and the whole
mapped extent of ``ece``. Every layout must give the same values; the script checks it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import stamp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sharding.json")
    a = ap.parse_args()

    import deepsalt
    from pyproj import Transformer

    from deepsalt.config import MapConfig
    from deepsalt.mapping.cube import mapped_extent
    from deepsalt.mapping.pipeline import map_region

    tmp = Path(tempfile.mkdtemp(prefix="deepsalt-shard-"))
    rows, ref = [], None
    for s in a.shards:
        url = str(tmp / f"shard{s}.zarr")
        cfg = MapConfig(stac=str(a.world / "stac"), covariates=str(a.world / "covariates"), model=a.model, out=url,
                        epoch="2024", shard=s, bbox=(-110.0, 37.5, -106.0, 39.5))  # the seen region
        t0 = time.perf_counter()
        summary = map_region(cfg, log=lambda *_: None)
        map_s = time.perf_counter() - t0
        files = [p for p in (tmp / f"shard{s}.zarr" / "chunks").rglob("*") if p.is_file()]
        ds = deepsalt.open_cube(url)
        ys, xs = mapped_extent(url)
        ece = ds["ece"].isel(time=0, y=ys, x=xs).values
        if ref is None:
            ref = ece
        assert np.array_equal(ece, ref, equal_nan=True), f"shard {s}: another cube than shard {a.shards[0]}"
        valid = np.argwhere(np.isfinite(ece))
        pick = valid[np.random.default_rng(0).choice(len(valid), 20, replace=False)]
        to_ll = Transformer.from_crs(ds.attrs["grid"]["crs"], "EPSG:4326", always_xy=True)
        point_ms = []
        for r, c in pick:
            lon, lat = to_ll.transform(float(ds.x[xs.start + c]), float(ds.y[ys.start + r]))
            t0 = time.perf_counter()
            deepsalt.point(url, lon, lat)
            point_ms.append(1e3 * (time.perf_counter() - t0))
        cy, cx = (ys.start + ys.stop) // 2, (xs.start + xs.stop) // 2
        region_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            deepsalt.open_cube(url)["ece"].isel(time=0, y=slice(cy - 512, cy + 512), x=slice(cx - 512, cx + 512)).values
            region_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        deepsalt.open_cube(url)["ece"].isel(time=0, y=ys, x=xs).values
        extent_s = time.perf_counter() - t0
        rows.append({"shard": s, "tiles": summary["tiles_mapped"], "pixels": summary["pixels_mapped"],
                     "chunk_objects": len(files), "chunk_bytes": sum(p.stat().st_size for p in files),
                     "map_seconds": round(map_s, 1), "point_read_ms_median": round(float(np.median(point_ms)), 1),
                     "region_1024px_read_s_median": round(float(np.median(region_s)), 3),
                     "mapped_extent_read_s": round(extent_s, 3), "mapped_extent_px": int(ece.size)})
        print(json.dumps(rows[-1]))
    shutil.rmtree(tmp, ignore_errors=True)
    res = {**stamp(), "world": str(a.world), "model": a.model, "store": "local file system (Icechunk)", "layouts": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
