"""RUN/report/: summary.md and PNG figures a reviewer reads first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepsalt import evaluation as ev


def _table(metrics: dict) -> str:
    rows = ["| variant | seen MAE | seen RMSE | seen R2 | unseen MAE | unseen R2 |", "|---|---|---|---|---|---|"]
    for v, r in metrics["results"].items():
        s, u = r["seen"], r["unseen"]
        rows.append(f"| {v} | {s['mae']:.3f} ± {s['mae_sd']:.3f} | {s['rmse']:.3f} ± {s['rmse_sd']:.3f} | "
                    f"{s['r2']:.3f} ± {s['r2_sd']:.3f} | {u['mae']:.3f} ± {u['mae_sd']:.3f} | {u['r2']:.3f} ± {u['r2_sd']:.3f} |")
    return "\n".join(rows)


def _paired(metrics: dict) -> str:
    """Mean ± sd over seeds, then each seed's difference with its 95 % bootstrap interval over the test sites."""
    per_seed = metrics.get("deepsalt_minus_per_seed", {})

    def seeds(v, region):
        return "; ".join(f"{d['mae_diff']:+.3f} [{d['ci95_lo']:+.3f}, {d['ci95_hi']:+.3f}]" for d in per_seed.get(v, {}).get(region, []))

    rows = ["| variant | seen | seen, per seed [95 % CI] | unseen | unseen, per seed [95 % CI] |", "|---|---|---|---|---|"]
    for v, r in metrics.get("deepsalt_minus", {}).items():
        rows.append(f"| {v} | {r['seen']['mae']:+.3f} ± {r['seen']['mae_sd']:.3f} | {seeds(v, 'seen')} "
                    f"| {r['unseen']['mae']:+.3f} ± {r['unseen']['mae_sd']:.3f} | {seeds(v, 'unseen')} |")
    return "\n".join(rows)


def write_report(folder: Path, metrics: dict, data, res: dict, history: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    test = data.idx("sat", "test")
    y, p = data.sat_y[test], res["predictions"]["deepsalt"][test]
    fig, ax = plt.subplots(1, 3, figsize=(17, 5))
    hi = float(max(y.max(), p.max()) * 1.05)
    ax[0].scatter(y, p, s=10, alpha=0.6)
    ax[0].plot([0, hi], [0, hi], "k--", lw=1)
    ax[0].set(xlabel="observed ECe (dS/m)", ylabel="predicted ECe (dS/m)",
              title=f"DeepSalt, seen test (seed {metrics['seeds'][0]}, n={len(y)})")
    ranges = ev.salinity_range(y)
    names = [n for n in ["0-2", "2-4", "4-8", "8-16", ">16"] if n in ranges]
    ax[1].boxplot([np.abs(p - y)[ranges == n] for n in names], tick_labels=names)
    ax[1].set(xlabel="observed salinity range (dS/m)", ylabel="absolute error (dS/m)", title="Error by salinity range")
    variants = list(metrics["results"])
    mae = [metrics["results"][v]["seen"]["mae"] for v in variants]
    sd = [metrics["results"][v]["seen"]["mae_sd"] for v in variants]
    umae = [metrics["results"][v]["unseen"]["mae"] for v in variants]
    x = np.arange(len(variants))
    ax[2].bar(x - 0.2, mae, 0.4, yerr=sd, label="seen test")
    ax[2].bar(x + 0.2, umae, 0.4, label="unseen region")
    ax[2].set_xticks(x, variants, rotation=30, ha="right")
    ax[2].set(ylabel=f"MAE (dS/m), mean ± sd over {len(metrics['seeds'])} seeds", title="Ablations and baselines")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(folder / "evaluation.png", dpi=90)
    plt.close(fig)
    a, t, te = metrics["alignment"], metrics["teacher_lab"], metrics["teacher_enmap"]
    data_targets = metrics.get("kd_targets", "?")
    n_tr = a.get("n_transfer", 0)
    transfer = (f" and on a transfer set of {n_tr:.0f} EnMAP pixels at training-block lab sample locations" if n_tr else "")
    (folder / "summary.md").write_text(
        f"# DeepSalt training report\n\nSeeds: {metrics['seeds']}; training data hash {metrics['data_hash']}; "
        f"{metrics['seconds']} s.\n\n## Students and baselines (ECe, dS/m; mean ± sd over seeds)\n\n{_table(metrics)}\n\n"
        f"## DeepSalt minus each variant, paired by seed (MAE, dS/m; < 0: DeepSalt better)\n\n{_paired(metrics)}\n\n"
        f"## Teacher on held-out lab samples\n\nseen MAE {t['seen']['mae']:.3f}, R2 {t['seen']['r2']:.3f}; "
        f"unseen-region MAE {t['unseen']['mae']:.3f}, R2 {t['unseen']['r2']:.3f}\n\n"
        f"The teacher fed the aligned EnMAP latent of the seen test sites (the authors' distillation targets): "
        f"MAE {te['seen']['mae']:.3f}, R2 {te['seen']['r2']:.3f}. This run distilled from `{data_targets}` targets"
        f"{transfer}.\n\n"
        f"## Alignment\n\n{a['n_pairs']:.0f} lab-site pairs (median {a['pair_km_median']:.2f} km); mean latent cosine "
        f"{a['cosine_before']:.3f} before alignment, {a['cosine_after']:.3f} after.\n\n![evaluation](evaluation.png)\n")
