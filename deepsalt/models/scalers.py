"""Feature scalers fitted once on RAW training data and stored in the bundle (DESIGN defect 6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        if isinstance(x, torch.Tensor):
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
