"""The README's headline table from a training run's metrics.json: every model side by side, seen and unseen,
with DeepSalt's paired per-seed differences, the interval coverage and the area of applicability.

    python bench/table.py bench/results/train_benchmark_metrics.json [--out bench/results/train_benchmark_table.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _seeds(per_seed: list[dict]) -> str:
    return ", ".join(f"{d['mae_diff']:+.2f} [{d['ci95_lo']:+.2f}, {d['ci95_hi']:+.2f}]" for d in per_seed)


def table(m: dict) -> str:
    res, paired = m["results"], m.get("deepsalt_minus_per_seed", {})
    n = len(m["seeds"])
    lines = [f"Seeds {m['seeds']} (mean ± sample sd over {n} seeds). MAE in dS/m. Paired: DeepSalt's MAE minus the "
             "model's on the same sites, per seed, with its 95 % bootstrap interval over the sites; < 0: DeepSalt better.", "",
             "| model | seen MAE | seen R2 | unseen MAE | unseen R2 | DeepSalt minus model, seen, per seed | unseen, per seed |",
             "|---|---|---|---|---|---|---|"]
    for v, r in res.items():
        s, u = r["seen"], r["unseen"]
        lines.append(f"| {v} | {s['mae']:.3f} ± {s['mae_sd']:.3f} | {s['r2']:.3f} | {u['mae']:.3f} ± {u['mae_sd']:.3f} | "
                     f"{u['r2']:.3f} | {_seeds(paired.get(v, {}).get('seen', []))} | {_seeds(paired.get(v, {}).get('unseen', []))} |")
    lines.append("")
    for key, what, goal in (("unseen_over_seen_mae", "MAE", " (goal <= 1.5)"),
                            ("unseen_over_seen_mae_ln", "MAE of ln ECe (a relative error)", "")):
        ratio = m.get(key, {})
        if ratio:
            lines.append(f"unseen / seen {what}: " + "; ".join(f"{v} {r:.2f} ± {ratio[v + '_sd']:.2f}" for v, r in ratio.items()
                                                             if not v.endswith("_sd")) + goal)
    cal, aoa = m.get("calibration"), m.get("aoa")
    if cal:
        lines.append(f"90 % interval coverage: validation {cal['coverage90_val']:.3f}, seen test {cal['seen']['coverage90']:.3f} "
                     f"± {cal['seen']['coverage90_sd']:.3f}, unseen {cal['unseen']['coverage90']:.3f} ± "
                     f"{cal['unseen']['coverage90_sd']:.3f} (goal 0.85-0.95); median hi/lo {cal['seen']['width_ratio_median']:.2f} "
                     f"seen, {cal['unseen']['width_ratio_median']:.2f} unseen; width growth per unit DI "
                     f"{cal.get('di_slope', 0):.2f} ± {cal.get('di_slope_sd', 0):.2f}")
    if aoa:
        lines.append("Area of applicability: " + "; ".join(
            f"{r}: {100 * aoa[r]['inside_fraction']:.1f} % of test sites inside, MAE {aoa[r]['mae_inside']:.3f} inside / "
            f"{aoa[r]['mae_outside']:.3f} outside" for r in ("seen", "unseen")))
    pr = m.get("protocol")
    if pr:
        lines.append(f"Blocks: {', '.join(f'{b:.1f}' for b in pr['block_km'])} km per seed (variogram range "
                     f"{', '.join(f'{b:.1f}' for b in pr['variogram_range_km'] if b is not None)} km); median distance "
                     f"from a test site to the nearest training site {', '.join(f'{b:.2f}' for b in pr['test_to_train_km_median'] if b is not None)} km")
    lines.append(f"Training time {m['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    text = table(json.loads(a.metrics.read_text()))
    if a.out:
        a.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
