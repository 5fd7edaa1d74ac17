"""Does `deepsalt plan-sampling` teach the model more than random sites? On each world: train, map every scene,
plan N sites by coverage and N at random (same pool, seed and spacing), label them from the world's truth, retrain
with each set added, re-map, and compare the share of the mapped area outside the area of applicability and the
map's error against the truth pixels (overall, and in the held-out region where the first model had no site).

    python bench/sampling.py [--worlds 11,12,13] [--preset tiny] [--n 20] [--out bench/results/sampling.json]

Development world seeds only (never the headline seed). Writes the results file after each world.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import stamp, world_parser


def truth_at(world: Path, scene_ids, lon, lat, suffix: str = "ECE") -> np.ndarray:
    """The world's true value at points, from the truth raster of the scene each point was mapped from."""
    import rasterio
    from pyproj import Transformer

    out = np.full(len(lon), np.nan)
    for s in sorted(set(scene_ids)):
        k = np.flatnonzero(np.asarray(scene_ids) == s)
        with rasterio.open(world / "truth" / f"{s}_{suffix}.TIF") as src:
            x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(np.asarray(lon)[k], np.asarray(lat)[k])
            out[k] = [v[0] for v in src.sample(zip(x, y))]
    return out


def outside_share(cube: str) -> dict:
    """Share of the mapped pixels outside the area of applicability."""
    from deepsalt.mapping.cube import mapped_extent
    from deepsalt.mapping.score import open_cube_dataset

    ys, xs = mapped_extent(cube)  # never the continent
    ds = open_cube_dataset(cube).isel(time=-1, y=ys, x=xs)
    valid, aoa = ds["valid"].values == 1, ds["aoa"].values == 1
    return {"outside_aoa": float((valid & ~aoa).sum() / max(valid.sum(), 1)), "mapped_pixels": int(valid.sum())}


def run_arm(name: str, world: Path, sites: pd.DataFrame, work: Path, cfg, log) -> dict:
    from deepsalt.config import MapConfig
    from deepsalt.mapping.pipeline import map_region
    from deepsalt.mapping.score import score
    from deepsalt.train.data import TrainInputs
    from deepsalt.train.run import train

    table = work / f"{name}_sites.parquet"
    sites.to_parquet(table, index=False)
    inputs = TrainInputs(str(world / "lab" / "mir_library.parquet"), str(table), str(world / "stac"), str(world / "covariates"))
    t0 = time.time()
    metrics = train(inputs, work / f"{name}_run", cfg, log=lambda *_: None)
    cube = str(work / f"{name}.zarr")
    map_region(MapConfig(stac=str(world / "stac"), covariates=str(world / "covariates"), model=str(work / f"{name}_run" / "bundle"),
                         out=cube, epoch="2024", mc_samples=cfg.mc_samples), log=lambda *_: None)
    sc = score(cube, world)
    res = {"sites": int(len(sites)), **outside_share(cube), "seconds": round(time.time() - t0, 1)}
    for part in ("overall", "seen", "unseen"):
        if sc.get(part):
            res[part] = {k: sc[part][k] for k in ("mae", "mae_ln", "r2_ln", "spearman")} | \
                {f"{k}_4": sc[part]["classes"]["4"][k] for k in ("recall", "precision", "f1", "auc")}
    res["model_unseen_test"] = {k: metrics["results"]["deepsalt"].get("unseen", {}).get(k) for k in ("mae", "r2_ln", "n")}
    log(f"  {name}: {len(sites)} sites, outside AOA {100 * res['outside_aoa']:.1f} %, map MAE {res['overall']['mae']:.3f}, "
        f"MAE of ln {res['overall']['mae_ln']:.3f} ({res['seconds']} s)")
    return res


def one_world(seed: int, preset: str, n: int, spacing: float, work: Path, log) -> dict:
    from deepsalt.config import TrainConfig, WorldConfig
    from deepsalt.data.sites import extract_sites
    from deepsalt.data.synthetic.world import build_world
    from deepsalt.mapping.sampling import plan_sampling

    world = work / "world"
    build_world(WorldConfig.for_preset(preset, seed=seed), world, progress=False)
    cfg = TrainConfig.for_preset("tiny", seeds=(0,), variants=("deepsalt",))
    base_sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    out = {"world_seed": seed, "world_preset": preset, "n": n}
    out["base"] = run_arm("base", world, base_sites, work, cfg, log)
    for method in ("coverage", "random"):
        gpkg = work / f"{method}.gpkg"
        plan = plan_sampling(str(work / "base.zarr"), str(work / "base_run" / "bundle"), n, gpkg, str(world / "stac"),
                             str(world / "covariates"), method=method, spacing_m=spacing, seed=seed, log=lambda *_: None)
        import pyogrio

        meta, _, geom, fields = pyogrio.raw.read(gpkg)
        f = dict(zip(meta["fields"], fields))
        import shapely

        pts = shapely.from_wkb(geom)
        lon, lat = shapely.get_x(pts), shapely.get_y(pts)
        csv = work / f"{method}_labelled.csv"
        pd.DataFrame({"site_id": f["site_id"], "lon": lon, "lat": lat, "date": f["date"],
                      "ece_dsm": truth_at(world, f["scene_id"], lon, lat), "region": "seen"}).to_csv(csv, index=False)
        extract_sites(str(csv), str(world / "stac"), str(world / "covariates"), str(work / f"{method}_new.parquet"),
                      log=lambda *_: None)
        new = pd.read_parquet(work / f"{method}_new.parquet")
        res = run_arm(method, world, pd.concat([base_sites, new], ignore_index=True), work, cfg, log)
        res["plan"] = {k: plan[k] for k in ("n", "sites_outside_aoa", "pool_outside_aoa", "pool_outside_aoa_with_sites",
                                            "median_site_di")}
        res["labelled_sites"] = int(len(new))
        out[method] = res
    c, r = out["coverage"], out["random"]
    out["coverage_beats_random"] = {
        "outside_aoa": c["outside_aoa"] < r["outside_aoa"],
        "mae": c["overall"]["mae"] < r["overall"]["mae"], "mae_ln": c["overall"]["mae_ln"] < r["overall"]["mae_ln"]}
    return out


def main() -> None:
    from deepsalt.raycluster import init_ray

    ap = world_parser(__doc__, "11,12,13", "sampling.json")
    ap.add_argument("--preset", default="tiny", help="world preset")
    ap.add_argument("--n", type=int, default=20, help="sites added by each plan")
    ap.add_argument("--spacing", type=float, default=300.0, help="least distance between proposed sites (m)")
    a = ap.parse_args()
    init_ray()
    res = {**stamp(), "n": a.n, "spacing_m": a.spacing, "training": "preset tiny, seed 0, variant deepsalt", "worlds": []}
    for s in a.worlds:
        print(f"world {s} ({a.preset})", flush=True)
        with tempfile.TemporaryDirectory() as d:
            res["worlds"].append(one_world(s, a.preset, a.n, a.spacing, Path(d), lambda m: print(m, flush=True)))
        wins = {k: sum(w["coverage_beats_random"][k] for w in res["worlds"]) for k in ("outside_aoa", "mae", "mae_ln")}
        res["coverage_beats_random_on"] = {k: f"{v} of {len(res['worlds'])} worlds" for k, v in wins.items()}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["coverage_beats_random_on"], indent=1))


if __name__ == "__main__":
    main()
