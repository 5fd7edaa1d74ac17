"""Adapting the student to a new region from its unlabelled EnMAP pixels.

The aligned EnMAP latent of a new region's pixels is moved, dimension by dimension, onto the training pixels'
mean and spread: ``z' = (z - mean_target) / sd_target * sd_source + mean_source`` (first- and second-moment
feature alignment; CORAL without the cross-covariances). Only the spectral latent moves: the covariates are
physical values (a warmer climate is information, not a domain shift). No label of the new region is used.
It is applied only where ``adaptation_gate`` expects it to help; otherwise the adapted student is the student.
"""

from __future__ import annotations

import numpy as np


def latent_moments(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, np.float64)
    return z.mean(0), np.maximum(z.std(0), 1e-6)


def align_latent(z: np.ndarray, source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``z`` (rows of the new region's latent) moved from the ``target`` moments onto the ``source`` ones."""
    (ms, ss), (mt, st) = source, target
    return ((np.asarray(z, np.float64) - mt) / st * ss + ms).astype(np.float32)


#: the gate's rule: adapt only when the held-out pixels move this much closer to the training data (median DI in the
#: latent space) and the validation blocks, aligned the same way, lose at most this share of their accuracy
GATE_MIN_DI_GAIN = 0.05
GATE_MAX_VAL_LOSS = 0.05


def _median_nearest(a: np.ndarray, ref: np.ndarray) -> float:
    import torch

    d = torch.cdist(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(ref, dtype=torch.float32))
    return float(d.min(1).values.median())


def adaptation_gate(z_train: np.ndarray, z_target: np.ndarray, y_val: np.ndarray, pred_val: np.ndarray,
                    pred_val_aligned: np.ndarray, log: bool = True, seed: int = 0) -> dict:
    """Whether aligning the held-out region's latent will help, judged without its labels.

    Unlabelled criterion: the held-out pixels' median dissimilarity (nearest training latent, each dimension scaled
    by the training spread, over the training latents' mean pairwise distance) must fall by ``GATE_MIN_DI_GAIN``.
    Labelled check, on the validation blocks only: the same alignment applied to their latent (their own moments onto
    the training ones) must not raise their error (MAE, of ln values for a log target) by more than
    ``GATE_MAX_VAL_LOSS``. Returns the figures and ``applied``."""
    mu, sd = latent_moments(z_train)
    rng = np.random.default_rng(seed)
    ref = ((np.asarray(z_train, np.float64) - mu) / sd)[rng.permutation(len(z_train))[:2000]]
    tgt = np.asarray(z_target, np.float64)[rng.permutation(len(z_target))[:2000]]
    aligned = align_latent(tgt, (mu, sd), latent_moments(tgt))
    import torch

    pair = torch.cdist(torch.as_tensor(ref[:1000], dtype=torch.float32), torch.as_tensor(ref[:1000], dtype=torch.float32))
    n = len(pair)
    mean_d = float(pair.sum() / max(n * (n - 1), 1)) or 1.0
    di_before = _median_nearest((tgt - mu) / sd, ref) / mean_d
    di_after = _median_nearest((aligned - mu) / sd, ref) / mean_d

    def err(p):
        y, p = np.asarray(y_val, np.float64), np.asarray(p, np.float64)
        return float(np.mean(np.abs(np.log(np.maximum(p, 1e-6)) - np.log(np.maximum(y, 1e-6))) if log else np.abs(p - y)))

    val_before, val_after = (err(pred_val), err(pred_val_aligned)) if len(y_val) else (float("nan"), float("nan"))
    di_ok = di_after <= (1 - GATE_MIN_DI_GAIN) * di_before
    val_ok = not len(y_val) or val_after <= (1 + GATE_MAX_VAL_LOSS) * val_before
    return {"applied": bool(di_ok and val_ok), "di_median_before": di_before, "di_median_after": di_after,
            "val_error_before": val_before, "val_error_after": val_after,
            "rule": f"DI down by >= {GATE_MIN_DI_GAIN:.0%} and validation error up by <= {GATE_MAX_VAL_LOSS:.0%}"}
