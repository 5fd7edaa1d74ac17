"""How far a prediction can be trusted: MC-dropout spread, a calibrated 90 % interval, and the area of applicability.

- ``mc_dropout``: the deterministic prediction and the spread of ``passes`` seeded passes with dropout on.
- The 90 % interval is split-conformal in log space: on held-out (validation) sites
  ``score = |ln y - ln pred| / s``, ``q`` = its ceil((n+1) 0.9)-th smallest value, and the interval is
  ``pred * exp(+-q s)``. ECe is right-skewed, so the interval is multiplicative. A target learnt in linear space
  (``log=False``) gets the additive form: ``|y - pred| / s`` and ``pred +- q s``, with ``s`` the MC sd itself. With ``scaled`` the scale
  ``s`` is the MC spread in log units (``sd / pred``), so it widens where the passes disagree; without it
  ``s = 1`` (one width everywhere). Training keeps whichever gives the narrower median interval on the
  validation sites (``choose_interval``). Either is multiplied by ``1 + di_slope * DI``: the interval widens
  with the dissimilarity index at the rate the validation sites' log error grows with it (``fit_di_slope``),
  so that it does not keep the seen region's width where the model extrapolates.
- Exceedance probabilities: the predictive distribution behind the interval is taken as normal in the space the
  target is learnt in (ln y for ECe), centred on the prediction, with the sd that makes its central 90 % the
  calibrated interval (``q s / z_0.95``). ``P(y > t)`` follows for each threshold ``t``. A pixel is *called* above
  ``t`` where that probability reaches the decision probability chosen on the validation sites (the best F1 there,
  ``choose_decision``): a median thresholded at ``t`` under-calls a right-skewed property.
- The dissimilarity index (DI) and area of applicability (AOA) of Meyer & Pebesma (2021): in the space the
  student reads (its inputs standardised by its own input normalisation, all dimensions weighted equally),
  DI = distance to the nearest training site / mean distance between training sites. The AOA threshold is
  the outlier-removed maximum (upper whisker: Q3 + 1.5 IQR) of the training sites' own DI, each computed
  against the training sites of the other cross-validation folds (spatial blocks).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LEVEL = 0.90
#: the standard normal quantile of the interval's upper end: its half-width is Z_LEVEL predictive sds
Z_LEVEL = NormalDist().inv_cdf(0.5 + LEVEL / 2)
#: decision probabilities tried on the validation sites
DECISION_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
#: fewest validation sites on each side of a threshold for its decision to be chosen there (else 0.5)
MIN_DECISION_SITES = 5


def mc_dropout(student, x: torch.Tensor, passes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, sd)`` for student inputs ``x (N, in_dim)``: ``pred`` with dropout off (the evaluated prediction);
    ``sd`` the spread of ``passes`` passes with dropout on, all in one batch, seeded (zeros for passes <= 1)."""
    import torch  # here and below: the scoring and decision rules of this module need numpy only

    with torch.no_grad():
        student.eval()
        pred = student(x)[0].float()
        if passes <= 1:
            return pred, torch.zeros_like(pred)
        torch.manual_seed(seed)
        student.train()
        runs = student(x.repeat(passes, 1))[0].float().reshape(passes, -1)
        student.eval()
        return pred, runs.std(0, unbiased=False)


def _scale(pred, sd, scaled: bool, di=None, di_slope: float = 0.0, log: bool = True):
    """The MC spread as a log-space sd (delta method; with ``log=False`` the sd itself), floored so that a zero
    spread gives a finite score; or 1; times ``1 + di_slope * di`` where the width grows with the dissimilarity index."""
    sd = np.asarray(sd, float)
    s = (np.maximum(sd / np.maximum(np.asarray(pred, float), 1e-6) if log else sd, 1e-4) if scaled
         else np.ones(np.shape(pred)))
    if di_slope:
        if di is None:
            raise ValueError(f"this interval widens with the dissimilarity index (slope {di_slope:.3g}): pass di")
        s = s * (1 + di_slope * np.asarray(di, float))
    return s


def _log_error(y, pred, log: bool = True) -> np.ndarray:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    if not log:
        return np.abs(y - pred)
    return np.abs(np.log(np.maximum(y, 1e-6)) - np.log(np.maximum(pred, 1e-6)))


def conformal_scale(y, pred, sd, scaled: bool = True, level: float = LEVEL, di=None, di_slope: float = 0.0,
                    log: bool = True) -> float:
    """The split-conformal multiplier ``q`` from held-out sites (their labels, predictions, MC sds and DIs)."""
    if len(y) == 0:
        return float("nan")
    score = np.sort(_log_error(y, pred, log) / _scale(pred, sd, scaled, di, di_slope, log))
    k = min(len(score), math.ceil((len(score) + 1) * level)) - 1
    return float(score[k])


def fit_di_slope(y, pred, di, log: bool = True) -> float:
    """How fast the log error grows with the DI on held-out sites: ``|ln y - ln pred| ~ a + b DI`` by least
    squares, and the slope ``b / a`` (the relative growth per unit DI); 0 where the error does not grow with the
    DI or the sites do not tell (fewer than 10, or all at one DI)."""
    di, err = np.asarray(di, float), _log_error(y, pred, log)
    if len(di) < 10 or np.ptp(di) <= 0:
        return 0.0
    b, a = np.polyfit(di, err, 1)
    a = max(float(a), 0.1 * float(err.mean()))  # an intercept at or below 0 would make the width all slope
    return max(float(b), 0.0) / a


def interval(pred, sd, q: float, scaled: bool = True, di=None, di_slope: float = 0.0,
             log: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated interval ``(lo, hi)``, in the target's units, for predictions, their MC sds and (where the
    width grows with it) their dissimilarity index."""
    pred = np.asarray(pred, float)
    w = q * _scale(pred, sd, scaled, di, di_slope, log)
    return (pred / np.exp(w), pred * np.exp(w)) if log else (pred - w, pred + w)


_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _ndtr(x: np.ndarray) -> np.ndarray:
    """The standard normal CDF, as scipy.special.ndtr (equal within 3e-16), without importing SciPy (0.33 CPU-s)
    into every inference actor."""
    return 0.5 * _ERFC(-np.asarray(x, float) / math.sqrt(2)).astype(float)


def exceedance(pred, sd, thresholds, q: float, scaled: bool = True, di=None, di_slope: float = 0.0,
               log: bool = True) -> np.ndarray:
    """``P(y > t)`` for each threshold (rows) and prediction (columns), float32: the predictive distribution is
    normal in the learnt space (ln y for a log target) around the prediction, with sd ``q s / Z_LEVEL``, the one
    whose central 90 % is the calibrated interval."""
    pred = np.asarray(pred, float)
    sigma = np.maximum(q * _scale(pred, sd, scaled, di, di_slope, log) / Z_LEVEL, 1e-6)
    f = (lambda v: np.log(np.maximum(v, 1e-6))) if log else (lambda v: np.asarray(v, float))
    return np.stack([_ndtr((f(pred) - f(t)) / sigma) for t in thresholds]).astype(np.float32) if len(thresholds) else \
        np.zeros((0, len(pred)), np.float32)


def class_figures(y, above, score=None) -> dict:
    """Recall, precision and F1 of calls ``above`` (bool) against ``y`` (bool), and the AUC of ``score`` (how well it
    ranks the cases above the threshold over those below; NaN with one class only)."""
    y, above = np.asarray(y, bool), np.asarray(above, bool)
    tp, fp, fn = int((y & above).sum()), int((~y & above).sum()), int((y & ~above).sum())
    rec = tp / (tp + fn) if tp + fn else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    out = {"recall": rec, "precision": prec, "f1": f1, "n_above": int(y.sum()), "n": int(len(y))}
    if score is not None:
        out["auc"] = auc(y, score)
    return out


def auc(y, score) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    y, score = np.asarray(y, bool), np.asarray(score, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def choose_decision(y, prob, thresholds) -> dict:
    """Per threshold, the decision probability with the best F1 on these (validation) sites, from ``DECISION_GRID``
    (ties: the one nearest 0.5); 0.5 where fewer than ``MIN_DECISION_SITES`` sites lie on either side."""
    y = np.asarray(y, float)
    out = {}
    for t, p in zip(thresholds, prob):
        above = y > t
        if above.sum() < MIN_DECISION_SITES or (~above).sum() < MIN_DECISION_SITES:
            out[f"{t:g}"] = 0.5
            continue
        f1 = np.array([class_figures(above, p >= d)["f1"] for d in DECISION_GRID])
        best = np.flatnonzero(f1 >= np.nanmax(f1) - 1e-12)
        out[f"{t:g}"] = float(DECISION_GRID[best[np.argmin(np.abs(DECISION_GRID[best] - 0.5))]])
    return out


def hindsight_decision(y, prob, thresholds) -> dict:
    """Per threshold, what the best decision probability of ``DECISION_GRID`` would have given against these cases,
    known only in hindsight (the world's truth pixels): ``best_f1`` (its probability, recall, precision, F1) and
    ``balanced``, the one whose smaller of recall and precision is largest. It tells whether a map's calls fall short
    through the decision probability chosen on the validation sites or through the probabilities themselves."""
    y = np.asarray(y, float)
    out = {}
    for t, p in zip(thresholds, prob):
        above, p = y > t, np.asarray(p, float)
        if not above.any() or above.all():
            out[f"{t:g}"] = None
            continue
        rows = [{"decision": float(d), **{k: v for k, v in class_figures(above, p >= d - 1e-9).items()
                                          if k in ("recall", "precision", "f1")}} for d in DECISION_GRID]
        f1 = np.array([r["f1"] for r in rows], float)
        low = np.array([min(r["recall"], r["precision"]) for r in rows], float)  # NaN (no call) counts as no balance
        out[f"{t:g}"] = {"best_f1": rows[int(np.nanargmax(f1))],
                         "balanced": rows[int(np.nanargmax(np.where(np.isfinite(low), low, -1)))]}
    return out


def reliability(y, prob, thresholds, bins: int = 10) -> dict:
    """Per threshold: observed frequency against mean predicted probability in ``bins`` equal-width probability bins
    (deciles of probability), the Brier score, and its skill against the base rate of these samples
    (``1 - BS / (b (1 - b))``, b the share above the threshold)."""
    y = np.asarray(y, float)
    out = {}
    for t, p in zip(thresholds, prob):
        o = (y > t).astype(float)
        p = np.asarray(p, float)
        edges = np.linspace(0, 1, bins + 1)
        k = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        rows = [{"bin": [float(edges[i]), float(edges[i + 1])], "n": int((k == i).sum()),
                 "predicted": float(p[k == i].mean()) if (k == i).any() else None,
                 "observed": float(o[k == i].mean()) if (k == i).any() else None} for i in range(bins)]
        bs = float(np.mean((p - o) ** 2)) if len(o) else float("nan")
        base = float(o.mean()) if len(o) else float("nan")
        ref = base * (1 - base)
        out[f"{t:g}"] = {"brier": bs, "base_rate": base, "brier_skill": 1 - bs / ref if ref > 0 else float("nan"),
                         "deciles": rows, "n": int(len(o))}
    return out


def coverage(y, pred, sd, q: float, scaled: bool = True, di=None, di_slope: float = 0.0, log: bool = True) -> float:
    lo, hi = interval(pred, sd, q, scaled, di, di_slope, log)
    y = np.asarray(y, float)
    return float(np.mean((y >= lo) & (y <= hi))) if len(y) else float("nan")


def choose_interval(y, pred, sd, di=None, log: bool = True) -> dict:
    """``{"q", "scaled", "di_slope"}``: the MC-scaled or the constant-width interval, whichever is narrower
    (median hi/lo; hi - lo for a linear target) on these (validation) sites at the same nominal coverage; both widen
    with the DI at the rate these sites show (``fit_di_slope``; 0 without ``di``)."""
    slope = 0.0 if di is None else fit_di_slope(y, pred, di, log)
    best = None
    for scaled in (True, False):
        q = conformal_scale(y, pred, sd, scaled, di=di, di_slope=slope, log=log)
        lo, hi = interval(pred, sd, q, scaled, di, slope, log)
        width = (float(np.median(hi / lo)) if log else float(np.median(hi - lo))) if len(lo) else float("nan")
        if best is None or width < best["val_width_ratio_median"]:
            best = {"q": q, "scaled": scaled, "di_slope": slope, "val_width_ratio_median": width}
    return best


def _nearest(x: torch.Tensor, ref: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Each row's distance to its nearest ``ref`` row, in chunks of rows whose distance matrix holds at most 2**22
    numbers on the CPU (16 MiB) and 2**26 on a GPU (256 MiB: a 262,144-pixel batch against a few hundred sites in
    one or two calls, where 4,096-row chunks cost 64 kernel launches)."""
    import torch

    if chunk is None:
        chunk = max(1, (2**26 if x.is_cuda else 2**22) // max(len(ref), 1))
    out = [torch.cdist(x[i:i + chunk], ref).min(1).values for i in range(0, len(x), chunk)]
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


def dissimilarity(x_std: torch.Tensor, reference: torch.Tensor, mean_distance: float) -> torch.Tensor:
    """DI of standardised inputs ``x_std (N, d)`` against the training sites ``reference (n, d)``."""
    import torch

    with torch.no_grad():
        return _nearest(x_std.float(), reference.float()) / mean_distance


def fit_aoa(reference: np.ndarray, folds: np.ndarray, seed: int, max_pairs_rows: int = 2000) -> dict:
    """The AOA's constants from the training sites' standardised inputs and their CV folds: the mean pairwise
    distance (over at most ``max_pairs_rows`` sites, seeded) and the DI threshold."""
    import torch

    ref = torch.as_tensor(np.asarray(reference, np.float32))
    folds = np.asarray(folds)
    sub = ref[np.random.default_rng(seed).permutation(len(ref))[:max_pairs_rows]]
    d = torch.cdist(sub, sub)
    n = len(sub)
    mean_distance = float(d.sum() / max(n * (n - 1), 1))
    di = np.full(len(ref), np.nan)
    for f in np.unique(folds):
        inside, other = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        if len(other):
            di[inside] = (_nearest(ref[inside], ref[other]) / mean_distance).numpy()
    di = di[np.isfinite(di)]
    q1, q3 = np.percentile(di, [25, 75])
    threshold = float(di[di <= q3 + 1.5 * (q3 - q1)].max())
    return {"mean_distance": mean_distance, "threshold": threshold, "train_di_median": float(np.median(di)),
            "n_reference": int(len(ref)), "n_folds": int(len(np.unique(folds)))}


def aoa_metrics(y, pred, di, threshold: float) -> dict:
    """Share of sites inside the AOA and the MAE inside and outside it."""
    y, pred, inside = np.asarray(y, float), np.asarray(pred, float), np.asarray(di) <= threshold
    mae = lambda m: float(np.abs(pred[m] - y[m]).mean()) if m.any() else float("nan")  # noqa: E731
    return {"inside_fraction": float(inside.mean()) if len(y) else float("nan"), "mae_inside": mae(inside),
            "mae_outside": mae(~inside), "n_inside": int(inside.sum()), "n_outside": int((~inside).sum())}
