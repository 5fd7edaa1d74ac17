"""Metrics (overall and per category, each sample scored with its OWN prediction), baselines, diagnostics."""

from __future__ import annotations

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.ensemble import RandomForestRegressor

from deepsalt.config import OUT_RANGE

SALINITY_RANGES = ((0, 2), (2, 4), (4, 8), (8, 16), (16, np.inf))


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    if y.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions for {len(y)} samples: every sample needs its own prediction")
    if len(y) == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "mape": float("nan"), "n": 0}
    err = pred - y
    ss = ((y - y.mean()) ** 2).sum()
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "r2": float(1 - (err**2).sum() / ss) if ss > 0 else float("nan"),
            "mape": float(np.mean(np.abs(err) / np.maximum(np.abs(y), 0.1)) * 100), "n": int(len(y))}


def by_category(y, pred, categories) -> dict:
    """Metrics per category: row i of y, pred and categories is the same sample (positional)."""
    categories = np.asarray(categories)
    return {str(c): metrics(np.asarray(y)[categories == c], np.asarray(pred)[categories == c]) for c in np.unique(categories)}


def salinity_range(y) -> np.ndarray:
    y = np.asarray(y)
    out = np.empty(len(y), dtype=object)
    for lo, hi in SALINITY_RANGES:
        out[(y >= lo) & (y < hi)] = f"{lo}-{hi:g}" if np.isfinite(hi) else f">{lo}"
    return out.astype(str)


def fit_baseline(kind: str, x: np.ndarray, y: np.ndarray, seed: int, out_range: tuple[float, float] = OUT_RANGE):
    """A classical baseline fitted on ``x, y``; returns its predictor, clipped to ``out_range`` as the models are."""
    if kind == "plsr":
        model = PLSRegression(n_components=min(15, x.shape[1], len(x) - 1), scale=False)
    elif kind == "random_forest":
        model = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, n_jobs=-1, random_state=seed)
    else:
        raise ValueError(kind)
    model.fit(x, y)
    return lambda xx: np.clip(np.asarray(model.predict(xx)).ravel(), *out_range)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every numeric leaf, with ``<key>_sd`` companions."""
    first = per_seed[0]
    out = {}
    for k, v in first.items():
        if isinstance(v, dict):
            out[k] = aggregate([s[k] for s in per_seed if k in s])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = np.array([s[k] for s in per_seed if k in s], float)
            out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            if k != "n":
                out[f"{k}_sd"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else float("nan")
    return out
