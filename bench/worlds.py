"""Does each part of the method earn its place across worlds? On each development world: train every seed three
times, with the defaults (DeepSalt and its ablations), without the transfer set, without the spectral path (the
linear term reads the latent and covariates only), and without the linear path (and so without the spectral path), and
pair the runs by seed (same split, same test sites). A part's gain is the MAE without it minus the MAE with it, on
the seen test sites and in the held-out region: > 0, the part helps. Per world and pooled over worlds, each gain
comes with its 95 % t-interval over the (world, seed) pairs; a part is "helps" or "hurts" where that interval
excludes 0, else "neutral", and stays on by default only where it helps or is neutral, seen and unseen, pooled.

    python bench/worlds.py [--worlds 11,12,13] [--world-preset tiny] [--preset tiny] [--seeds 0,1,2]

Development world seeds only (never the headline seed). Writes bench/results/worlds.json after each world.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import stamp, world_parser

#: part -> (run without it, model in that run, model with it in the default run)
PARTS = {
    "sau": ("default", "student_no_sau", "deepsalt"),
    "distillation": ("default", "student_no_kd", "deepsalt"),
    "transfer_set": ("no_transfer", "deepsalt", "deepsalt"),
    "spectral_path": ("no_spectral_path", "deepsalt", "deepsalt"),
    "linear_path": ("no_linear_path", "deepsalt", "deepsalt"),
    "adaptation": ("default", "deepsalt", "deepsalt_adapted"),  # the gate's choice (seen: unchanged)
}
RUNS = {"default": {}, "no_transfer": {"kd": {"transfer": False}, "variants": ("deepsalt",)},
        "no_spectral_path": {"student": {"spectral_path": 0}, "variants": ("deepsalt",)},
        "no_linear_path": {"student": {"linear_skip": False}, "variants": ("deepsalt",)}}
METRICS = ("mae", "mae_ln")


def interval(x) -> dict:
    """Mean and 95 % t-interval of paired differences."""
    from scipy import stats

    x = np.asarray([v for v in x if np.isfinite(v)], float)
    if len(x) < 2:
        return {"mean": float(x.mean()) if len(x) else float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(len(x))}
    h = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return {"mean": float(x.mean()), "lo": float(x.mean() - h), "hi": float(x.mean() + h), "n": int(len(x))}


def verdict(iv: dict) -> str:
    return "helps" if iv["lo"] > 0 else "hurts" if iv["hi"] < 0 else "neutral"


def gains(runs: dict) -> dict:
    """{part: {region: {metric: [gain per seed]}}} from one world's runs (their metrics.json ``per_seed``)."""
    out = {}
    for part, (run, without, with_) in PARTS.items():
        out[part] = {region: {m: list(np.array(runs[run]["per_seed"][without][region][m]) -
                                      np.array(runs["default"]["per_seed"][with_][region][m])) for m in METRICS}
                     for region in ("seen", "unseen")}
    return out


def summarise(per_world: dict) -> dict:
    """Per part and region: the pooled interval over every (world, seed) pair, its verdict, and on by default?"""
    out = {}
    for part in PARTS:
        out[part] = {region: {m: (lambda iv: {**iv, "verdict": verdict(iv)})(
            interval([g for w in per_world.values() for g in w[part][region][m]])) for m in METRICS}
            for region in ("seen", "unseen")}
        out[part]["on_by_default"] = all(out[part][r]["mae"]["verdict"] != "hurts" for r in ("seen", "unseen"))
    return out


def one_world(seed: int, world_preset: str, preset: str, seeds: tuple, work: Path, log) -> dict:
    from deepsalt.config import TrainConfig, WorldConfig
    from deepsalt.data.synthetic.world import build_world
    from deepsalt.train.run import train

    world = work / "world"
    t0 = time.time()
    build_world(WorldConfig.for_preset(world_preset, seed=seed), world, progress=False)
    runs = {}
    for name, over in RUNS.items():
        t1 = time.time()
        m = train(world, work / name, TrainConfig.for_preset(preset, seeds=seeds, **over), log=lambda *_: None)
        runs[name] = {"per_seed": m["per_seed"], "adaptation": m.get("adaptation"), "seconds": round(time.time() - t1, 1)}
        log(f"  {name}: DeepSalt MAE seen {m['results']['deepsalt']['seen']['mae']:.3f}, unseen "
            f"{m['results']['deepsalt']['unseen']['mae']:.3f} ({runs[name]['seconds']} s)")
    g = gains(runs)
    per_part = {part: {region: {m: (lambda iv: {**iv, "verdict": verdict(iv)})(interval(g[part][region][m]))
                                for m in METRICS} for region in ("seen", "unseen")} for part in PARTS}
    return {"world_seed": seed, "world_preset": world_preset, "runs": runs, "gain_per_seed": g, "gain": per_part,
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    from deepsalt.raycluster import init_ray

    ap = world_parser(__doc__, "11,12,13", "worlds.json", seeds="0,1,2")
    ap.add_argument("--world-preset", default="tiny", help="world preset")
    ap.add_argument("--preset", default="tiny", help="training preset")
    a = ap.parse_args()
    seeds = tuple(a.seeds)
    init_ray()
    res = {**stamp(), "world_preset": a.world_preset, "training": f"preset {a.preset}, seeds {list(seeds)}",
           "gain": "MAE without the part minus MAE with it, paired by seed; > 0: the part helps", "worlds": []}
    for s in a.worlds:
        print(f"world {s} ({a.world_preset})", flush=True)
        with tempfile.TemporaryDirectory() as d:
            res["worlds"].append(one_world(s, a.world_preset, a.preset, seeds, Path(d), lambda m: print(m, flush=True)))
        res["pooled"] = summarise({w["world_seed"]: w["gain_per_seed"] for w in res["worlds"]})
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    for part, v in res["pooled"].items():
        print(f"{part:13s} seen {v['seen']['mae']['mean']:+.3f} [{v['seen']['mae']['lo']:+.3f}, {v['seen']['mae']['hi']:+.3f}] "
              f"{v['seen']['mae']['verdict']:7s} unseen {v['unseen']['mae']['mean']:+.3f} [{v['unseen']['mae']['lo']:+.3f}, "
              f"{v['unseen']['mae']['hi']:+.3f}] {v['unseen']['mae']['verdict']:7s} on by default: {v['on_by_default']}")


if __name__ == "__main__":
    main()
