"""Adapting the student to a new region from its unlabelled EnMAP pixels.

The aligned EnMAP latent of a new region's pixels is moved, dimension by dimension, onto the training pixels'
mean and spread: ``z' = (z - mean_target) / sd_target * sd_source + mean_source`` (first- and second-moment
feature alignment; CORAL without the cross-covariances). Only the spectral latent moves: the covariates are
physical values (a warmer climate is information, not a domain shift). No label of the new region is used.
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
