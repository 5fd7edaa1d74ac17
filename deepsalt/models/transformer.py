"""Teacher and student transformers with a bounded ECe head and per-layer features for distillation."""

from __future__ import annotations

import torch
from torch import nn

from deepsalt.config import OUT_RANGE, spectral_path


class RangeHead(nn.Module):
    """ECe = lo + (hi - lo) * sigmoid(linear(h) + skip): the output range is part of the model (0.05-77 dS/m);
    ``skip`` is the optional linear term of the inputs (``SpectralTransformer(linear_skip=True)``)."""

    def __init__(self, d: int, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        self.linear = nn.Linear(d, 1)
        self.register_buffer("out_range", torch.tensor([self.lo, self.hi]))

    def forward(self, h: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        logit = self.linear(h).squeeze(-1)
        return self.lo + (self.hi - self.lo) * torch.sigmoid(logit if skip is None else logit + skip)


#: CUDA's flash and memory-efficient attention kernels take at most 2**16 - 1 sequences per call ("invalid
#: argument" beyond, seen on an H200 under bf16 autocast; pytorch/pytorch#146704): larger batches go through in pieces
CUDA_ATTENTION_MAX_BATCH = 2**16 - 1


class SpectralTransformer(nn.Module):
    """Transformer encoder over a feature vector.

    ``tokens="one"``: the whole vector is one token (as the authors did). ``tokens="per_dim"``: one token per
    input dimension (value x learned embedding + position), so attention runs across latent dimensions.
    Shapes: ``x (B, in_dim)`` -> ``pred (B,)`` and a list of per-layer features ``(B, d_model)``
    (mean over tokens), one per layer. With ``skip_only`` > 0 the last ``skip_only`` inputs feed the linear term alone
    (the spectral path: principal components of the EnMAP spectrum beside the latent); the transformer body reads
    the first ``body_dim``, and the dissimilarity index is measured in those.
    """

    def __init__(self, in_dim: int, d_model: int, heads: int, layers: int, ff: int, dropout: float,
                 out_range: tuple[float, float] = OUT_RANGE, tokens: str = "one", input_proj: bool = True,
                 linear_skip: bool = False, skip_only: int = 0):
        super().__init__()
        if tokens not in ("one", "per_dim"):
            raise ValueError(f"tokens must be 'one' or 'per_dim', not '{tokens}'")
        if skip_only and (not linear_skip or skip_only >= in_dim):
            raise ValueError(f"skip_only={skip_only} needs linear_skip and fewer than in_dim={in_dim} inputs")
        self.tokens, self.in_dim, self.d_model = tokens, in_dim, d_model
        self.body_dim = in_dim - skip_only
        if tokens == "one":
            self.embed = nn.Linear(self.body_dim, d_model) if input_proj or self.body_dim != d_model else nn.Identity()
        else:
            self.value = nn.Parameter(torch.randn(self.body_dim, d_model) * 0.02)
            self.pos = nn.Parameter(torch.randn(self.body_dim, d_model) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True) for _ in range(layers))
        self.head = RangeHead(d_model, *out_range)
        # with ``linear_skip``: a linear term from the standardised inputs to the head's logit, starting at 0
        self.skip = nn.Linear(in_dim, 1) if linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        # Input standardisation, fitted on the training inputs (``fit_input_norm``) and saved with the weights:
        # sigmoid auto-encoder codes vary by ~1e-2 around a common offset, too little for attention to see.
        self.register_buffer("in_shift", torch.zeros(in_dim))
        self.register_buffer("in_scale", torch.ones(in_dim))

    @torch.no_grad()
    def fit_input_norm(self, x: torch.Tensor) -> None:
        """Set the input shift/scale to the mean and sd of ``x (n, in_dim)`` (the training inputs)."""
        self.in_shift.copy_(x.mean(0))
        self.in_scale.copy_(x.std(0).clamp_min(1e-6))

    @property
    def out_range(self) -> tuple[float, float]:
        return self.head.lo, self.head.hi

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = (x - self.in_shift) / self.in_scale
        skip = None if self.skip is None else self.skip(x).squeeze(-1)
        x = x[:, :self.body_dim]
        h = self.embed(x)[:, None, :] if self.tokens == "one" else x[..., None] * self.value + self.pos
        feats = []
        for layer in self.layers:
            if h.is_cuda and len(h) > CUDA_ATTENTION_MAX_BATCH:
                h = torch.cat([layer(c) for c in h.split(CUDA_ATTENTION_MAX_BATCH)])
            else:
                h = layer(h)
            feats.append(h.mean(1))
        return self.head(feats[-1], skip), feats


def student_inputs(variant: str, latent: int, pcs: int = 0) -> int:
    """Input width of a student variant: EnMAP latent + the 8 covariates, or one of them for the ablations; plus the
    spectral path's ``pcs`` components for every variant that reads EnMAP."""
    return {"hsi_only": latent + pcs, "ancillary_only": 8}.get(variant, latent + 8 + pcs)


def build_student(cfg, variant: str) -> SpectralTransformer:
    """The student transformer for a ``TrainConfig`` and variant (training and the model bundle build the same)."""
    d, k = cfg.latent + 8, 0 if variant == "ancillary_only" else spectral_path(cfg)
    return SpectralTransformer(student_inputs(variant, cfg.latent, k), d, cfg.student.heads, cfg.student.layers,
                               cfg.student.ff, cfg.dropout, cfg.out_range, cfg.tokens, linear_skip=cfg.student.linear_skip,
                               skip_only=k)
