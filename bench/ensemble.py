"""Is the single model's variance what keeps #27's targets for > 4 dS/m out of reach? Per world (trained and mapped as
`bench/targets.py` does, demo-preset world, tiny training preset), K models that differ only in their training seed
each map every scene; their maps are then pooled pixel by pixel, the value as the geometric mean (the students predict
ln ECe) and P(ECe > 4) as the mean, and the pooled map is scored by `deepsalt score`'s own code against the truth
pixels, beside each single model's. An ensemble is not what `deepsalt map` does today: this measures what one would
give before anyone builds it.

Reports per world and model (each seed alone, then the pool): the seen scenes' median within-scene AUC, the
recall and precision at the decision probability the model chose (the pool: the mean of its members' decisions,
as no validation run chose one for it), the balanced decision in hindsight, and the held-out region's F1 at that
decision and its best in hindsight.

    python bench/ensemble.py [--worlds 7,11,13,16] [--seeds 0,1,2] [--out bench/results/ensemble.json]

Development world seeds only (never the headline seed). Writes the results file after each world.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import stamp, world_parser
from targets import TARGETS


def pooled(cubes: list[str]):
    """The K cubes' latest epochs as one lazy (dask) dataset: ``ece`` the geometric mean, ``exceedance`` the mean, the
    rest (and every attribute) the first cube's. Only what `score` selects is computed (the grid is continental)."""
    from deepsalt.mapping.cube import open_cube

    dss = [open_cube(c) for c in cubes]
    out = dss[0].copy()
    out["ece"] = np.exp(sum(np.log(d["ece"]) for d in dss) / len(dss)).astype(np.float32)
    out["exceedance"] = (sum(d["exceedance"].astype(np.float64) for d in dss) / len(dss)).astype(np.float32)
    return out


def figures(sc: dict) -> dict:
    s, u = sc["seen"]["classes"]["4"], sc["unseen"]["classes"]["4"]
    bal = sc["hindsight_decision"]["seen"]["4"]["balanced"]
    return {"decision": sc["exceedance_decision"]["4"], "seen_auc": s["auc"], "seen_recall": s["recall"],
            "seen_precision": s["precision"], "seen_r2_ln": sc["seen"]["r2_ln"], "seen_spearman": sc["seen"]["spearman"],
            "seen_balanced_in_hindsight": {k: bal[k] for k in ("decision", "recall", "precision")},
            "unseen_f1": u["f1"], "unseen_auc": u["auc"],
            "unseen_best_f1_in_hindsight": sc["hindsight_decision"]["unseen"]["4"]["best_f1"]["f1"]}


def one_world(seed: int, seeds: list[int], work: Path, log) -> dict:
    import deepsalt.mapping.score as score_mod
    from deepsalt.config import MapConfig, TrainConfig, WorldConfig
    from deepsalt.data.synthetic.world import build_world
    from deepsalt.mapping.pipeline import map_region
    from deepsalt.train.run import train

    t0 = time.time()
    world = work / "world"
    build_world(WorldConfig.for_preset("demo", seed=seed), world, progress=False)
    cubes, models = [], {}
    for t in seeds:
        run = work / f"run{t}"
        train(world, run, TrainConfig.for_preset("tiny", seeds=(t,), variants=("deepsalt",)), log=lambda *_: None)
        cubes.append(str(work / f"cube{t}.zarr"))
        map_region(MapConfig(stac=str(world / "stac"), covariates=str(world / "covariates"), model=str(run / "bundle"),
                             out=cubes[-1], epoch="2024"), log=lambda *_: None)
        models[f"seed{t}"] = figures(score_mod.score(cubes[-1], world))
        log(f"  world {seed}, seed {t}: {json.dumps(models[f'seed{t}'])}")
    pool = pooled(cubes)
    decisions = {k: float(np.mean([models[f"seed{t}"]["decision"] for t in seeds])) for k in ("4",)}
    pool.attrs["exceedance_decision"] = {**pool.attrs.get("exceedance_decision", {}), **decisions}
    real_open, real_epoch_model = score_mod.open_cube_dataset, score_mod.epoch_model
    score_mod.open_cube_dataset = lambda *a, **k: pool
    score_mod.epoch_model = lambda ds, day: {}  # the pool's decision is in its attributes
    try:
        models["pool"] = figures(score_mod.score(cubes[0], world))
    finally:
        score_mod.open_cube_dataset, score_mod.epoch_model = real_open, real_epoch_model
    log(f"  world {seed}, pool of {len(seeds)}: {json.dumps(models['pool'])}")
    singles = [models[f"seed{t}"] for t in seeds]
    return {"world_seed": seed, "seeds": seeds, "models": models,
            "pool_minus_mean_single": {k: models["pool"][k] - float(np.mean([m[k] for m in singles]))
                                       for k in ("seen_auc", "seen_recall", "seen_precision", "unseen_f1", "unseen_auc")},
            "pool_met": {"seen_auc": models["pool"]["seen_auc"] >= TARGETS["seen_auc"],
                         "seen_recall_and_precision": min(models["pool"]["seen_recall"], models["pool"]["seen_precision"]) >= TARGETS["seen_recall"],
                         "unseen_f1": models["pool"]["unseen_f1"] >= TARGETS["unseen_f1"]},
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    from deepsalt.raycluster import init_ray

    a = world_parser(__doc__, "7,11,13,16", "ensemble.json", seeds="0,1,2", seeds_help="training seeds pooled (comma-separated)").parse_args()
    init_ray()
    seeds = a.seeds
    res = {**stamp(), "training": f"preset tiny, variant deepsalt, seeds {seeds}; demo-preset worlds", "targets": TARGETS,
           "worlds": []}
    for w in a.worlds:
        print(f"world {w}", flush=True)
        with tempfile.TemporaryDirectory() as d:
            res["worlds"].append(one_world(w, seeds, Path(d), lambda m: print(m, flush=True)))
        ws = res["worlds"]
        res["mean_pool_minus_mean_single"] = {k: float(np.mean([x["pool_minus_mean_single"][k] for x in ws]))
                                              for k in ws[0]["pool_minus_mean_single"]}
        res["pool_beats_every_single_seen_auc_on"] = sum(
            x["models"]["pool"]["seen_auc"] > max(x["models"][f"seed{t}"]["seen_auc"] for t in seeds) for x in ws)
        res["pool_met_on"] = {k: sum(x["pool_met"][k] for x in ws) for k in ws[0]["pool_met"]}
        res["n_worlds"] = len(ws)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("mean_pool_minus_mean_single", "pool_beats_every_single_seen_auc_on", "pool_met_on")}, indent=1))


if __name__ == "__main__":
    main()
