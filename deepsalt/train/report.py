"""RUN/report/: summary.md and PNG figures a reviewer reads first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepsalt.targets import get_target


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
    test, unseen = data.idx("sat", "test"), data.idx("sat", "unseen")
    y, p = data.sat_y[test], res["predictions"]["deepsalt"][test]
    fig, axs = plt.subplots(2, 2, figsize=(14, 11))
    ax = axs.ravel()
    lo = float(min(data.sat_y.min(), res["predictions"]["deepsalt"].min()) * 0.8)
    hi = float(max(data.sat_y.max(), res["predictions"]["deepsalt"].max()) * 1.25)
    for idx, name, c in ((test, "seen test", "tab:blue"), (unseen, "unseen region", "tab:orange")):
        ax[0].scatter(data.sat_y[idx], res["predictions"]["deepsalt"][idx], s=10, alpha=0.6, c=c, label=f"{name} (n={len(idx)})")
    ax[0].plot([lo, hi], [lo, hi], "k--", lw=1)
    t = get_target(metrics.get("target", "ece"))
    scale = "log" if t.log else "linear"
    ax[0].set(xscale=scale, yscale=scale, xlim=(lo, hi), ylim=(lo, hi), xlabel=f"observed {t.short} ({t.units})",
              ylabel=f"predicted {t.short} ({t.units})", title=f"DeepSalt, seed {metrics['seeds'][0]} ({scale} axes)")
    ax[0].legend()
    ranges = t.range_class(y)
    names = [n for _, n in t.classes if n in ranges]
    ax[1].boxplot([np.abs(p - y)[ranges == n] for n in names], tick_labels=names)
    ax[1].set(xlabel=f"observed {t.short} class", ylabel=f"absolute error ({t.units})", title=f"Error by {t.short} class, seen test")
    variants = list(metrics["results"])
    mae = [metrics["results"][v]["seen"]["mae"] for v in variants]
    sd = [metrics["results"][v]["seen"]["mae_sd"] for v in variants]
    umae = [metrics["results"][v]["unseen"]["mae"] for v in variants]
    x = np.arange(len(variants))
    ax[2].bar(x - 0.2, mae, 0.4, yerr=sd, label="seen test")
    ax[2].bar(x + 0.2, umae, 0.4, label="unseen region")
    ax[2].set_xticks(x, variants, rotation=30, ha="right")
    ax[2].set(ylabel=f"MAE ({t.units}), mean ± sd over {len(metrics['seeds'])} seeds", title="Ablations and baselines")
    ax[2].legend()
    cal, aoa = metrics.get("calibration", {}), metrics.get("aoa", {})
    if cal:
        groups = [("validation", cal.get("coverage90_val"), cal.get("coverage90_val_sd"))] + [
            (f"{r} test", cal[r]["coverage90"], cal[r].get("coverage90_sd")) for r in ("seen", "unseen")]
        ax[3].axhspan(0.85, 0.95, color="tab:green", alpha=0.15, label="85-95 % (goal)")
        ax[3].axhline(0.9, color="tab:green", lw=1)
        ax[3].bar(range(3), [g[1] for g in groups], yerr=[g[2] if g[2] == g[2] else 0 for g in groups], color="tab:purple")
        ax[3].set_xticks(range(3), [g[0] for g in groups])
        text = "; ".join(f"{r}: {100 * aoa[r]['inside_fraction']:.0f} % inside the AOA, MAE {aoa[r]['mae_inside']:.2f} "
                         f"inside / {aoa[r]['mae_outside']:.2f} outside" for r in ("seen", "unseen") if r in aoa)
        ax[3].set(ylim=(0, 1.05), ylabel="share of sites inside the interval",
                  title="Coverage of the calibrated 90 % interval (mean ± sd over seeds)")
        ax[3].text(0.02, 0.02, text.replace("; ", "\n"), transform=ax[3].transAxes, fontsize=8, va="bottom")
        ax[3].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(folder / "evaluation.png", dpi=90)
    plt.close(fig)
    a, t, te = metrics["alignment"], metrics["teacher_lab"], metrics["teacher_enmap"]
    data_targets = metrics.get("kd_targets", "?")
    n_tr = a.get("n_transfer", 0)
    transfer = (f" and on a transfer set of {n_tr:.0f} EnMAP pixels at training-block lab sample locations" if n_tr else "")
    (folder / "summary.md").write_text(
        f"# DeepSalt training report\n\nSeeds: {metrics['seeds']}; training data hash {metrics['data_hash']}; "
        f"{metrics['seconds']} s.\n\n## Students and baselines ({get_target(metrics.get('target', 'ece')).short}, {get_target(metrics.get('target', 'ece')).units}; mean ± sd over seeds)\n\n{_table(metrics)}\n\n"
        f"## DeepSalt minus each variant, paired by seed (MAE, {get_target(metrics.get('target', 'ece')).units}; < 0: DeepSalt better)\n\n{_paired(metrics)}\n\n"
        f"## Teacher on held-out lab samples\n\nseen MAE {t['seen']['mae']:.3f}, R2 {t['seen']['r2']:.3f}; "
        f"unseen-region MAE {t['unseen']['mae']:.3f}, R2 {t['unseen']['r2']:.3f}\n\n"
        f"The teacher fed the aligned EnMAP latent of the seen test sites (the authors' distillation targets): "
        f"MAE {te['seen']['mae']:.3f}, R2 {te['seen']['r2']:.3f}. This run distilled from `{data_targets}` targets"
        f"{transfer}.\n\n"
        f"## Alignment\n\n{a['n_pairs']:.0f} lab-site pairs (median {a['pair_km_median']:.2f} km); mean latent cosine "
        f"{a['cosine_before']:.3f} before alignment, {a['cosine_after']:.3f} after.\n\n{_trust(metrics)}"
        f"![evaluation](evaluation.png)\n")


def _trust(metrics: dict) -> str:
    """The calibrated interval, the area of applicability and the protocol, as prose."""
    cal, aoa, pr = metrics.get("calibration"), metrics.get("aoa"), metrics.get("protocol")
    if not cal:
        return ""
    lines = ["## Interval, area of applicability, protocol", "",
             f"90 % interval (split conformal on the validation blocks, multiplier q {cal['q']:.2f}, scaled by the MC "
             f"sd in {100 * cal.get('mc_scaled', 1):.0f} % of seeds, widening by {cal.get('di_slope', 0):.2f} of its "
             f"width per unit DI): coverage "
             f"{cal['seen']['coverage90']:.3f} on the seen test, {cal['unseen']['coverage90']:.3f} in the unseen region "
             f"(goal 0.85-0.95); median hi/lo ratio {cal['seen']['width_ratio_median']:.2f} seen, "
             f"{cal['unseen']['width_ratio_median']:.2f} unseen.", ""]
    for r in ("seen", "unseen"):
        a = aoa[r]
        lines.append(f"- {r}: {100 * a['inside_fraction']:.1f} % of test sites inside the AOA (DI threshold "
                     f"{aoa['threshold']:.3f}); MAE {a['mae_inside']:.3f} inside, {a['mae_outside']:.3f} outside.")
    lines += ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in pr.items() if isinstance(v, str)) + ".",
              f"Blocks {', '.join(f'{b:.1f}' for b in pr['block_km'])} km per seed (variogram range "
              f"{', '.join(f'{b:.1f}' for b in pr['variogram_range_km'] if b is not None)} km); median test-to-training "
              f"distance {', '.join(f'{b:.2f}' for b in pr['test_to_train_km_median'] if b is not None)} km.", "", ""]
    return "\n".join(lines)
