"""Feature scalers fitted once on RAW training data and stored in the bundle (DESIGN defect 6)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np


def _tensor(x) -> bool:
    """Whether ``x`` is a torch tensor; torch is imported only where one can exist (a map run's driver has none)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass
class Scaler:
    """``(x - shift) / scale``. kind "minmax" maps the training range to [0, 1]; "standard" to mean 0, sd 1."""

    kind: str
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str = "minmax") -> "Scaler":
        x = np.asarray(x, np.float64)
        if kind == "minmax":
            lo, hi = np.nanmin(x, 0), np.nanmax(x, 0)
            return cls(kind, lo.astype(np.float32), np.maximum(hi - lo, 1e-6).astype(np.float32))
        if kind == "standard":
            return cls(kind, np.nanmean(x, 0).astype(np.float32), np.maximum(np.nanstd(x, 0), 1e-6).astype(np.float32))
        raise ValueError(f"unknown scaler kind '{kind}'")

    def transform(self, x):
        """Scale rows of ``x`` (array-like, or a torch tensor: scaled on its own device)."""
        if _tensor(x):
            import torch

            lib, out = torch, x.float()
            shift, scale = torch.from_numpy(self.shift).to(x.device), torch.from_numpy(self.scale).to(x.device)
        else:
            lib, out, shift, scale = np, np.asarray(x, np.float32), self.shift, self.scale
        if out.shape[-1] != self.shift.size:
            raise ValueError(f"scaler expects {self.shift.size} features, got {out.shape[-1]}")
        out = (out - shift) / scale
        # min-max inputs feed a Sigmoid decoder: keep them in its range even when a pixel exceeds the training range
        return lib.clip(out, 0.0, 1.0) if self.kind == "minmax" else out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(d["kind"], np.asarray(d["shift"], np.float32), np.asarray(d["scale"], np.float32))


@dataclass
class Projection:
    """Rows of ``x`` onto the leading principal components of the rows it was fitted on: ``(x - mean) @ components.T``
    (the students' spectral path, ``TransformerConfig.spectral_path``). Each component's sign is fixed (its largest
    loading positive), so the same rows give the same projection."""

    mean: np.ndarray
    components: np.ndarray  # (k, n_features)

    @classmethod
    def fit(cls, x: np.ndarray, k: int) -> "Projection":
        x = np.asarray(x, np.float64)
        if k < 1 or k > min(x.shape):
            raise ValueError(f"{k} principal components need at least {k} rows and columns, got {x.shape}")
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        vt = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
        return cls(mean.astype(np.float32), vt.astype(np.float32))

    def transform(self, x):
        """Project rows of ``x`` (array-like, or a torch tensor: projected on its own device)."""
        if _tensor(x):
            import torch

            return (x.float() - torch.from_numpy(self.mean).to(x.device)) @ torch.from_numpy(self.components).to(x.device).T
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.mean.size:
            raise ValueError(f"projection expects {self.mean.size} features, got {x.shape[-1]}")
        return (x - self.mean) @ self.components.T

    def to_dict(self) -> dict:
        return {"kind": "pca", "mean": self.mean.tolist(), "components": self.components.tolist()}


def scaler_from_dict(d: dict) -> "Scaler | Projection":
    """A ``Scaler`` or ``Projection`` from its ``to_dict``."""
    if d.get("kind") == "pca":
        return Projection(np.asarray(d["mean"], np.float32), np.asarray(d["components"], np.float32))
    return Scaler.from_dict(d)
