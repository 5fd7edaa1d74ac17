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
- The dissimilarity index (DI) and area of applicability (AOA) of Meyer & Pebesma (2021): in the space the
  student reads (its inputs standardised by its own input normalisation, all dimensions weighted equally),
  DI = distance to the nearest training site / mean distance between training sites. The AOA threshold is
  the outlier-removed maximum (upper whisker: Q3 + 1.5 IQR) of the training sites' own DI, each computed
  against the training sites of the other cross-validation folds (spatial blocks).
"""

from __future__ import annotations

import math

import numpy as np
import torch

LEVEL = 0.90


@torch.no_grad()
def mc_dropout(student, x: torch.Tensor, passes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, sd)`` for student inputs ``x (N, in_dim)``: ``pred`` with dropout off (the evaluated prediction);
    ``sd`` the spread of ``passes`` passes with dropout on, all in one batch, seeded (zeros for passes <= 1)."""
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


def _nearest(x: torch.Tensor, ref: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = [torch.cdist(x[i:i + chunk], ref).min(1).values for i in range(0, len(x), chunk)]
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


@torch.no_grad()
def dissimilarity(x_std: torch.Tensor, reference: torch.Tensor, mean_distance: float) -> torch.Tensor:
    """DI of standardised inputs ``x_std (N, d)`` against the training sites ``reference (n, d)``."""
    return _nearest(x_std.float(), reference.float()) / mean_distance


def fit_aoa(reference: np.ndarray, folds: np.ndarray, seed: int, max_pairs_rows: int = 2000) -> dict:
    """The AOA's constants from the training sites' standardised inputs and their CV folds: the mean pairwise
    distance (over at most ``max_pairs_rows`` sites, seeded) and the DI threshold."""
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
