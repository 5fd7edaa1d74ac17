"""Metrics (overall and per category, each sample scored with its OWN prediction), baselines, diagnostics."""

from __future__ import annotations

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.ensemble import RandomForestRegressor

from deepsalt.config import OUT_RANGE


def metrics(y: np.ndarray, pred: np.ndarray, thresholds=(), calls=None) -> dict:
    """MAE, MAE and R2 of ln values, RMSE, R2, MAPE, Spearman's rank correlation; with ``thresholds``, per threshold
    ``classes["4"] = {recall, precision, f1, auc}`` of the calls ``calls[i]`` (bool per sample; default: the
    prediction above the threshold), the AUC ranking the samples by the prediction."""
    from scipy.stats import spearmanr

    from deepsalt.models.applicability import class_figures

    y, pred = np.asarray(y, float), np.asarray(pred, float)
    if y.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions for {len(y)} samples: every sample needs its own prediction")
    nan = float("nan")
    if len(y) == 0:
        return {"mae": nan, "mae_ln": nan, "rmse": nan, "r2": nan, "r2_ln": nan, "spearman": nan, "mape": nan, "n": 0,
                **({"classes": {f"{t:g}": class_figures([], [], []) for t in thresholds}} if len(thresholds) else {})}
    err = pred - y
    # the MAE of ln ECe: a relative error, comparable between regions of different salinity
    ly, lp = np.log(np.maximum(y, 1e-3)), np.log(np.maximum(pred, 1e-3))
    mae_ln = float(np.abs(lp - ly).mean())
    ss, ss_ln = ((y - y.mean()) ** 2).sum(), ((ly - ly.mean()) ** 2).sum()
    out = {"mae": float(np.abs(err).mean()), "mae_ln": mae_ln, "rmse": float(np.sqrt((err**2).mean())),
           "r2": float(1 - (err**2).sum() / ss) if ss > 0 else nan,
           "r2_ln": float(1 - ((lp - ly) ** 2).sum() / ss_ln) if ss_ln > 0 else nan,
           "spearman": float(spearmanr(y, pred).statistic) if len(y) > 2 and np.ptp(y) > 0 and np.ptp(pred) > 0 else nan,
           "mape": float(np.mean(np.abs(err) / np.maximum(np.abs(y), 0.1)) * 100), "n": int(len(y))}
    if len(thresholds):
        out["classes"] = {f"{t:g}": class_figures(y > t, pred > t if calls is None else calls[i], pred)
                          for i, t in enumerate(thresholds)}
    return out


def paired_mae_difference(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, seed: int, n_boot: int = 2000) -> dict:
    """MAE of ``pred_a`` minus MAE of ``pred_b`` on the same samples, with a 95 % bootstrap interval over the
    samples (the per-sample differences of absolute errors resampled ``n_boot`` times, seeded)."""
    d = np.abs(np.asarray(pred_a, float) - y) - np.abs(np.asarray(pred_b, float) - y)
    if len(d) == 0:
        return {"mae_diff": float("nan"), "ci95_lo": float("nan"), "ci95_hi": float("nan"), "n": 0}
    boots = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    return {"mae_diff": float(d.mean()), "ci95_lo": float(np.percentile(boots, 2.5)),
            "ci95_hi": float(np.percentile(boots, 97.5)), "n": int(len(d))}


def by_category(y, pred, categories) -> dict:
    """Metrics per category: row i of y, pred and categories is the same sample (positional)."""
    categories = np.asarray(categories)
    return {str(c): metrics(np.asarray(y)[categories == c], np.asarray(pred)[categories == c]) for c in np.unique(categories)}


def plsr_components(x: np.ndarray, z: np.ndarray, groups=None, max_components: int = 20, seed: int = 0) -> int:
    """PLSR's number of components with the lowest CV RMSE of ``z``: 5 folds of whole ``groups`` (the training
    blocks) where there are at least 5, else 5 shuffled folds (seeded)."""
    from sklearn.model_selection import GroupKFold, KFold, cross_val_predict

    groups = None if groups is None or len(np.unique(groups)) < 5 else np.asarray(groups)
    cv = GroupKFold(5) if groups is not None else KFold(5, shuffle=True, random_state=seed)
    top = max(1, min(max_components, x.shape[1], len(x) - len(x) // 5 - 1))
    rmse = [float(np.sqrt(np.mean((cross_val_predict(PLSRegression(c, scale=False), x, z, cv=cv, groups=groups).ravel() - z) ** 2)))
            for c in range(1, top + 1)]
    return int(np.argmin(rmse)) + 1


def fit_baseline(kind: str, x: np.ndarray, y: np.ndarray, seed: int, out_range: tuple[float, float] = OUT_RANGE,
                 log: bool = True, groups=None):
    """A classical baseline fitted on ``x, y``; returns its predictor. Both learn the target in its own space (ln y
    for a log target) and predict within the training range (clipped to it, and to ``out_range``), so one seed's
    extrapolation cannot blow up: PLSR takes its number of components from a CV over the training ``groups``
    (``plsr_components``)."""
    z = np.log(np.clip(y, 1e-3, None)) if log else np.asarray(y, float)
    if kind == "plsr":
        model = PLSRegression(n_components=plsr_components(x, z, groups, seed=seed), scale=False)
    elif kind == "random_forest":
        model = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, n_jobs=-1, random_state=seed)
    else:
        raise ValueError(kind)
    model.fit(x, z)
    lo, hi = max(float(np.min(y)), out_range[0]), min(float(np.max(y)), out_range[1])

    def predict(xx):
        p = np.asarray(model.predict(xx), float).ravel()
        return np.clip(np.exp(p) if log else p, lo, hi)

    return predict


def fit_location_baseline(kind: str, lat: np.ndarray, lon: np.ndarray, y: np.ndarray, seed: int,
                          out_range: tuple[float, float] = OUT_RANGE, log: bool = True):
    """A predictor ``f(lat, lon)`` from the training sites' locations and labels alone.

    ``nn_label``: the label of the nearest training site (great-circle distance). ``kriging``: ordinary
    kriging of ln y (of y for a target learnt in linear space) as a Gaussian process on local x/y in km (constant x Matern(nu=1.5) + white noise,
    hyper-parameters by maximum likelihood, seeded), back-transformed with exp; both clipped to ``out_range``.
    """
    from sklearn.neighbors import BallTree

    lat, lon, y = np.asarray(lat, float), np.asarray(lon, float), np.asarray(y, float)
    if kind == "nn_label":
        tree = BallTree(np.radians(np.column_stack([lat, lon])), metric="haversine")
        return lambda la, lo: np.clip(y[tree.query(np.radians(np.column_stack([la, lo])), k=1)[1][:, 0]], *out_range)
    if kind != "kriging":
        raise ValueError(kind)
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    lat0 = float(np.mean(lat))

    def xy(la, lo):  # km on a local equirectangular plane: fine over a region of a few hundred km
        return np.column_stack([np.radians(np.asarray(lo, float)) * np.cos(np.radians(lat0)),
                                np.radians(np.asarray(la, float))]) * 6371.0088

    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(5.0, (0.05, 500.0), nu=1.5) + WhiteKernel(0.1, (1e-4, 10.0))
    with warnings.catch_warnings():  # a hyper-parameter at its bound (e.g. noise-free labels) is fine for a control
        warnings.simplefilter("ignore", ConvergenceWarning)
        z = np.log(np.clip(y, *out_range)) if log else np.clip(y, *out_range)
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed).fit(xy(lat, lon), z)
    back = np.exp if log else (lambda v: v)
    return lambda la, lo: np.clip(back(gp.predict(xy(la, lo))), *out_range)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every numeric leaf, with ``<key>_sd`` companions: the sample sd over seeds (ddof=1),
    NaN with fewer than two seeds."""
    first = per_seed[0]
    out = {}
    for k, v in first.items():
        if isinstance(v, dict):
            out[k] = aggregate([s[k] for s in per_seed if k in s])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = np.array([s[k] for s in per_seed if k in s], float)
            out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            if k != "n":
                ok = vals[np.isfinite(vals)]
                out[f"{k}_sd"] = float(np.std(ok, ddof=1)) if len(ok) > 1 else float("nan")
    return out
