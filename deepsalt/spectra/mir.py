"""Lab mid-infrared (FTIR) wavenumber grids and resampling onto the model's grid."""

from __future__ import annotations

import numpy as np

from deepsalt.errors import DeepSaltInputError

#: The model's default MIR grid: 1765 channels over 400-4000 cm-1 (2.5-25 µm), as in the DeepSalt paper.
MIR_MIN_CM1, MIR_MAX_CM1, MIR_CHANNELS = 400.0, 4000.0, 1765


def mir_grid(lo: float = MIR_MIN_CM1, hi: float = MIR_MAX_CM1, n: int = MIR_CHANNELS) -> np.ndarray:
    """Ascending wavenumber grid in cm-1, shape ``(n,)``."""
    return np.linspace(lo, hi, n)


def resample(wavenumbers: np.ndarray, spectra: np.ndarray, target: np.ndarray, where: str) -> np.ndarray:
    """Linearly resample ``spectra (n, c)`` on ``wavenumbers (c,)`` onto ``target (m,)``.

    Refuses to extrapolate: a source grid that does not cover the target is an error naming ``where``.
    """
    wn = np.asarray(wavenumbers, float)
    order = np.argsort(wn)
    wn, spectra = wn[order], np.asarray(spectra, float)[:, order]
    if np.any(np.diff(wn) <= 0):
        raise DeepSaltInputError(where, "wavenumber grid has duplicate channels", "each channel needs a distinct wavenumber")
    step = np.median(np.diff(wn))
    if wn[0] > target.min() + step or wn[-1] < target.max() - step:
        raise DeepSaltInputError(
            where,
            f"wavenumber grid covers {wn[0]:.0f}-{wn[-1]:.0f} cm-1 but the model grid needs "
            f"{target.min():.0f}-{target.max():.0f} cm-1",
            f"use a table that covers the model grid, or train on a grid inside the table's: --mir-grid "
            f"{max(wn[0], 0):.0f},{wn[-1]:.0f},N (e.g. --mir-grid 600,4000,1701 for OSSL)",
        )
    t = np.clip(target, wn[0], wn[-1])
    out = np.empty((spectra.shape[0], t.size), dtype=np.float32)
    idx = np.clip(np.searchsorted(wn, t) - 1, 0, wn.size - 2)
    frac = ((t - wn[idx]) / (wn[idx + 1] - wn[idx]))[None, :]
    out[:] = spectra[:, idx] * (1 - frac) + spectra[:, idx + 1] * frac
    return out
