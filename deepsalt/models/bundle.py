"""The model bundle: everything needed to map with a trained student, and nothing that runs code on load.

``bundle.json`` (format, versions, band list, covariate names/units, scalers, output range, architecture,
full training config, training-data hash, the calibrated 90 % interval's multiplier and the area of
applicability's constants) + ``weights.safetensors`` (aligned EnMAP encoder + student, and the training sites'
standardised inputs the dissimilarity index is measured against).
Local folder or any fsspec URL. Loading refuses a mismatch instead of guessing.
"""

from __future__ import annotations

import json
import platform

import fsspec
import numpy as np
import torch
from safetensors.torch import load as st_load, save as st_save

from deepsalt import __version__
from deepsalt.config import TrainConfig
from deepsalt.errors import DeepSaltInputError
from deepsalt.models.applicability import dissimilarity, mc_dropout
from deepsalt.models.autoencoder import SparseAutoEncoder
from deepsalt.models.bundle_meta import FORMAT, check_meta, check_weights, checked, exceedance_decision, read_parts
from deepsalt.models.scalers import scaler_from_dict
from deepsalt.models.transformer import SpectralTransformer, build_student
from deepsalt.spectra.bands import select_bands
from deepsalt.targets import get_target


class DeepSaltBundle:
    def __init__(self, meta: dict, encoder: SparseAutoEncoder, student: SpectralTransformer, reference: torch.Tensor):
        self.meta, self.encoder, self.student = meta, encoder.eval(), student.eval()
        self.scalers = {k: scaler_from_dict(v) for k, v in meta["scalers"].items()}
        self.reference = reference  # (n_train_sites, body_dim): standardised student inputs, for the DI

    @property
    def band_names(self) -> list[str]:
        return self.meta["band_names"]

    @staticmethod
    def _build(meta: dict):
        cfg = TrainConfig(**meta["config"])
        enc = SparseAutoEncoder(len(meta["band_names"]), tuple(cfg.ae.hidden), cfg.latent)
        return enc, build_student(cfg, "deepsalt")

    def tensors(self) -> dict[str, torch.Tensor]:
        """What ``weights.safetensors`` holds: the encoder's and student's parameters and the DI's reference rows."""
        tensors = {f"encoder.{k}": v.contiguous() for k, v in self.encoder.state_dict().items()}
        tensors.update({f"student.{k}": v.contiguous() for k, v in self.student.state_dict().items()})
        tensors["aoa.reference"] = self.reference.detach().cpu().float().contiguous()
        return tensors

    def save(self, url: str) -> None:
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path, exist_ok=True)
        with fs.open(f"{path}/weights.safetensors", "wb") as f:
            f.write(st_save(self.tensors()))
        with fs.open(f"{path}/bundle.json", "w") as f:
            f.write(json.dumps(self.meta, indent=2))

    @classmethod
    def create(cls, encoder_state, student_state, *, cfg: TrainConfig, scalers: dict, band_names, band_centers,
               covariates: dict, data_hash: str, seed: int, interval90: dict, aoa: dict,
               reference: np.ndarray) -> "DeepSaltBundle":
        """``interval90``: ``{"q", "scaled", "di_slope", "mc_samples", ...}`` (``applicability.choose_interval``); ``aoa``:
        ``{"mean_distance": ..., "threshold": ..., "n_reference": ...}`` (``applicability.fit_aoa``), with
        ``reference`` the training sites' standardised student inputs."""
        meta = {"format": FORMAT, "deepsalt_version": __version__, "torch_version": torch.__version__,
                "python": platform.python_version(), "band_names": list(band_names),
                "band_centers_nm": [float(c) for c in band_centers],
                "covariates": [{"name": k, "units": u} for k, u in covariates.items()],
                "target": get_target(cfg.target).to_dict(),
                "out_range": list(cfg.out_range), "scalers": {k: s.to_dict() for k, s in scalers.items()},
                "data_hash": data_hash, "seed": seed, "variant": "deepsalt", "config": cfg.model_dump(mode="json"),
                "interval90": dict(interval90), "aoa": dict(aoa)}
        enc, stu = cls._build(meta)
        enc.load_state_dict(encoder_state)
        stu.load_state_dict(student_state)
        bundle = cls(meta, enc, stu, torch.as_tensor(np.asarray(reference, np.float32)))
        # every tensor's shape, so that a driver without torch can tell weights that do not fit the architecture
        meta["weights"] = {k: list(v.shape) for k, v in bundle.tensors().items()}
        return bundle

    @classmethod
    def load(cls, url: str) -> "DeepSaltBundle":
        """Load and check a bundle. Anything missing, damaged or edited is a DeepSaltInputError naming it."""
        meta, blob = read_parts(url)
        return checked(url, lambda: cls._from_parts(url, meta, blob))

    @classmethod
    def _from_parts(cls, url: str, meta: dict, blob: bytes) -> "DeepSaltBundle":
        check_meta(url, meta)  # everything bundle.json says, as a map run's driver checks it (no torch there)
        tensors = st_load(blob)
        check_weights(url, meta, tensors)
        enc, stu = cls._build(meta)
        for prefix, model in (("encoder.", enc), ("student.", stu)):
            sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise DeepSaltInputError(url, f"weights do not fit the recorded architecture ({' '.join(str(e).split())[:240]})",
                                         "use the bundle exactly as `deepsalt train` wrote it, or retrain") from None
        ref = tensors["aoa.reference"]
        if ref.shape[1] != stu.body_dim:
            raise DeepSaltInputError(f"{url}/bundle.json", f"the area of applicability's reference sites have {ref.shape[1]} "
                                     f"features, the student's body reads {stu.body_dim}", "do not edit bundle.json; retrain")
        return cls(meta, enc, stu, ref.float())

    def select_bands(self, band_names, band_centers, where: str) -> np.ndarray:
        """Column indices of the bundle's bands in an input with ``band_names``; refuses a mismatch."""
        return select_bands(self.band_names, self.meta["band_centers_nm"], band_names, band_centers, where)

    @torch.no_grad()
    def predict(self, reflectance: np.ndarray, covariates: np.ndarray, mc_samples: int = 0, seed: int = 0, scale=None,
                di: bool = False):
        """ECe for rows of raw reflectance ``(N, n_bundle_bands)`` and raw covariates ``(N, 8)``.

        With ``scale = (gain, offset, slot)`` the first argument is raw DN instead (integers, e.g. EnMAP's int16):
        it crosses to the model's device as it is (half the bytes of float32) and becomes reflectance there,
        ``dn * gain[slot] + offset[slot]``, with ``gain``/``offset (k, n_bundle_bands)`` and ``slot (N,)``.

        Returns ``(ece, sd)``, and with ``di`` also the dissimilarity index (``ece``: the deterministic prediction,
        dropout off, exactly what was evaluated; ``sd``: with ``mc_samples`` > 1 the spread of that many passes
        with dropout on, seeded, otherwise zeros). ``interval`` turns ``ece, sd`` into the calibrated 90 % interval;
        a pixel is inside the area of applicability where ``di <= self.aoa_threshold``.
        """
        x = self._inputs(reflectance, covariates, scale)
        pred, sd = (t.cpu().numpy() for t in mc_dropout(self.student, x, mc_samples, seed))
        if not di:
            return pred, sd
        xs = ((x - self.student.in_shift) / self.student.in_scale)[:, :self.student.body_dim]
        return pred, sd, dissimilarity(xs, self.reference.to(self.device), self.meta["aoa"]["mean_distance"]).cpu().numpy()

    def _inputs(self, reflectance, covariates, scale=None) -> torch.Tensor:
        """The student's inputs (the encoder's code of the scaled reflectance, then the scaled covariates)."""
        dev = self.device

        def to_dev(a, dtype=None):  # to a GPU through page-locked memory: ~8x the rate of a pageable copy (H200)
            t = torch.from_numpy(np.ascontiguousarray(a, dtype))
            return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t

        x = to_dev(reflectance)
        if scale is not None:
            gain, offset, slot = (to_dev(a) for a in scale)
            slot = slot.long()
            x = x.float() * gain[slot] + offset[slot]
        xs = self.scalers["enmap"].transform(x)
        parts = [self.encoder.encode(xs), self.scalers["covariates"].transform(to_dev(covariates, np.float32))]
        if "enmap_pcs" in self.scalers:  # the spectral path: the linear term reads it, the DI does not
            parts.append(self.scalers["enmap_pcs"].transform(xs))
        return torch.cat(parts, 1)

    @torch.no_grad()
    def features(self, reflectance: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """The space the dissimilarity index is measured in, ``(N, d)`` float32: the student's inputs standardised by
        its own input normalisation (``self.reference`` holds the training sites in it; the AOA's
        ``meta["aoa"]["mean_distance"]`` is its unit)."""
        x = self._inputs(reflectance, covariates)
        return ((x - self.student.in_shift) / self.student.in_scale)[:, :self.student.body_dim].float().cpu().numpy()

    @property
    def target(self):
        """The soil property the bundle predicts (``deepsalt.targets.Target``)."""
        return get_target(self.meta["target"])

    @property
    def aoa_threshold(self) -> float:
        return float(self.meta["aoa"]["threshold"])

    def interval(self, ece, sd, di=None) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated 90 % interval (in the target's units) for predictions, MC sds made with the bundle's ``mc_samples`` and
        dissimilarity indices (``predict(..., di=True)``; needed where ``interval90.di_slope`` > 0)."""
        from deepsalt.models.applicability import interval

        iv = self.meta["interval90"]
        return interval(ece, sd, float(iv["q"]), bool(iv.get("scaled", True)), di, float(iv.get("di_slope", 0.0)),
                        self.target.log)

    @property
    def decision(self) -> dict[str, float]:
        """Per threshold (``"4"``), the exceedance probability at which a pixel is called above it (chosen on the
        validation sites; 0.5 for a bundle that predates the choice)."""
        return exceedance_decision(self.meta)

    def exceedance(self, value, sd, di=None) -> np.ndarray:
        """``P(value > t)`` for the target's thresholds (rows) from the calibrated predictive distribution
        (``applicability.exceedance``), for predictions, their MC sds and dissimilarity indices."""
        from deepsalt.models.applicability import exceedance

        iv = self.meta["interval90"]
        return exceedance(value, sd, self.target.thresholds, float(iv["q"]), bool(iv.get("scaled", True)), di,
                          float(iv.get("di_slope", 0.0)), self.target.log)

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    def to(self, device) -> "DeepSaltBundle":
        """Move the encoder and student to ``device`` (e.g. "cuda"); inputs follow, outputs come back as numpy."""
        self.encoder.to(device)
        self.student.to(device)
        self.reference = self.reference.to(device)
        return self
