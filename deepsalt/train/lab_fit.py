"""`deepsalt lab fit` / `lab predict`: the FTIR auto-encoder and the teacher on a lab table alone (spectra to a soil
property, as soil labs use MIR with or without a satellite), with PLSR beside it on the same folds.

- Input: a DeepSalt lab table, or a table with OSSL's names as it is (``id``/``id.layer_uuid_txt``, the target's OSSL
  column such as ``oc_usda.c729_w.pct`` for SOC, absorbance columns named ``scan_mir.<wn>_abs`` or by the bare
  wavenumber). Coordinates and depths are optional. The spectral grid is the table's own unless ``mir_grid`` is given.
- Folds: spatial blocks (``block_km`` squares, shuffled into ``folds`` groups) where every sample has coordinates,
  else shuffled random folds; seeded.
- Per fold, on the training folds only: the sparse auto-encoder learns to reconstruct the spectra (their
  Savitzky-Golay first derivative, window ``sg_window``, quadratic: it removes the baseline offsets of bench scans;
  then min-max scaled per channel) while a linear read-out of its code learns the target (the ``aux`` term, as in DeepSalt's training);
  then the teacher transformer learns the target from the code, the encoder fine-tuned with it at a lower rate.
  The loss is the squared error of ln(1 + y), the space soil spectroscopy fits SOC in. 10 % of the training folds
  (seeded) stop the teacher early.
- PLSR: the number of components (1 to ``plsr_max_components``) chosen by a 5-fold CV inside the training folds,
  fitted on ln(1 + y), predictions clipped to the training range.
- ``RUN/metrics.json``: ``cv.teacher`` and ``cv.plsr`` with ``r2_ln1p``, ``rmse_ln1p``, ``r2_ln``, ``rmse_ln``,
  ``mae``, ``r2``, ``spearman`` over the out-of-fold predictions, and per fold; ``RUN/bundle`` holds the teacher
  fitted on every sample (its grid, channel scaling, target and output range, versions), which ``lab predict``
  applies to a new table (resampled onto the bundle's grid; a table that does not cover it is refused).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepsalt import __version__
from deepsalt.errors import DeepSaltInputError
from deepsalt.targets import Target, get_target

FORMAT = "deepsalt-lab-bundle/1"
#: OSSL's column of each built-in target (its lab table's own names are read too)
OSSL_COLUMNS = {"soc": "oc_usda.c729_w.pct"}
ID_COLUMNS = ("sample_id", "id", "id.layer_uuid_txt")


@dataclass
class LabFitConfig:
    folds: int = 10
    seed: int = 0
    block_km: float = 50.0
    mir_grid: tuple[float, float, int] | None = None
    hidden: tuple[int, ...] = (256,)
    latent: int = 64
    ae_epochs: int = 300
    teacher_epochs: int = 300
    batch: int = 64
    lr: float = 1e-3
    encoder_lr: float = 2e-4
    aux_weight: float = 1.0
    kl_weight: float = 1e-3
    kl_rho: float = 0.05
    heads: int = 4
    layers: int = 2
    ff: int = 128
    dropout: float = 0.1
    patience: int = 40
    plsr_max_components: int = 25
    sg_window: int = 11  # Savitzky-Golay first derivative of the teacher's input (channels; odd); 0: raw absorbance
    extra: dict = field(default_factory=dict)


@dataclass
class LabData:
    ids: np.ndarray
    x: np.ndarray  # (n, channels) absorbance
    wavenumbers: np.ndarray
    y: np.ndarray
    lat: np.ndarray
    lon: np.ndarray


def read_lab(path: str | Path, target: Target, mir_grid=None, need_target: bool = True) -> LabData:
    """A lab table as it is (DeepSalt's names or OSSL's), its spectra on their own grid or on ``mir_grid``."""
    from deepsalt.data.lab import spectral_columns
    from deepsalt.spectra.mir import resample

    where = str(path)
    try:
        df = pd.read_parquet(path) if where.lower().endswith((".parquet", ".pq")) else pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise DeepSaltInputError(where, "does not exist", "check the path") from None
    except Exception as e:  # noqa: BLE001 - any parser failure means the table is unusable
        raise DeepSaltInputError(where, f"not a readable Parquet/CSV table ({type(e).__name__}: {str(e)[:100]})") from None
    spec_cols, wns = spectral_columns(df.columns, where)
    col = target.column if target.column in df.columns else OSSL_COLUMNS.get(target.name)
    if need_target and (col is None or col not in df.columns):
        raise DeepSaltInputError(where, f"has no {target.column} column" + (f" (nor OSSL's {OSSL_COLUMNS[target.name]})" if target.name in OSSL_COLUMNS else ""),
                                 f"name the measured {target.short} column {target.column}")
    idc = next((c for c in ID_COLUMNS if c in df.columns), None)
    ids = df[idc].astype(str).to_numpy() if idc else np.array([f"sample{i}" for i in range(len(df))], object)
    y = pd.to_numeric(df[col], errors="coerce").to_numpy(float) if col in df.columns else np.full(len(df), np.nan)
    x = df[spec_cols].to_numpy(np.float64)
    keep = np.isfinite(x).all(1) & (np.isfinite(y) if need_target else True)
    if need_target:
        target.check_plausible(y[keep], f"{where} ({col})", ids=ids[keep])
    order = np.argsort(wns)
    wn, x = np.asarray(wns)[order], x[:, order]
    if mir_grid is not None:
        grid = np.linspace(float(mir_grid[0]), float(mir_grid[1]), int(mir_grid[2]))
        x = resample(wn, x, grid, where)
        wn = grid
    lat = pd.to_numeric(df["latitude"], errors="coerce").to_numpy(float) if "latitude" in df else np.full(len(df), np.nan)
    lon = pd.to_numeric(df["longitude"], errors="coerce").to_numpy(float) if "longitude" in df else np.full(len(df), np.nan)
    if not keep.any():
        raise DeepSaltInputError(where, f"no sample has a complete spectrum{' and a ' + target.column if need_target else ''}")
    return LabData(ids[keep], x[keep].astype(np.float32), wn, y[keep], lat[keep], lon[keep])


def make_folds(d: LabData, k: int, seed: int, block_km: float) -> tuple[np.ndarray, str]:
    """Fold of each sample: whole spatial blocks where every sample has coordinates, else random; seeded."""
    rng = np.random.default_rng(seed)
    n = len(d.y)
    if k < 2 or k > n:
        raise DeepSaltInputError("--folds", f"{k} folds for {n} samples", "use 2 to the number of samples")
    if np.isfinite(d.lat).all() and np.isfinite(d.lon).all():
        ky = d.lat * 111.0
        kx = d.lon * 111.0 * np.cos(np.radians(np.nanmean(d.lat)))
        blocks = np.unique(np.stack([np.floor(kx / block_km), np.floor(ky / block_km)], 1), axis=0, return_inverse=True)[1].ravel()
        if len(np.unique(blocks)) >= k:
            order = rng.permutation(np.unique(blocks))
            fold_of = {b: i % k for i, b in enumerate(order)}
            return np.array([fold_of[b] for b in blocks]), f"spatial blocks of {block_km:g} km"
    folds = np.empty(n, int)
    folds[rng.permutation(n)] = np.arange(n) % k
    return folds, "random (no coordinates)" if not np.isfinite(d.lat).all() else "random (fewer blocks than folds)"


def _space(y):
    return np.log1p(np.maximum(np.asarray(y, float), 0))


def fit_plsr(x: np.ndarray, y: np.ndarray, max_components: int, seed: int):
    """PLSR on ln(1 + y), its components chosen by 5-fold CV inside ``x``; returns (predict, n_components)."""
    from sklearn.cross_decomposition import PLSRegression

    from deepsalt.evaluation import plsr_components

    z = _space(y)
    best = plsr_components(x, z, None, max_components, seed)
    model = PLSRegression(best, scale=False).fit(x, z)
    lo, hi = float(z.min()), float(z.max())
    return (lambda xx: np.expm1(np.clip(model.predict(xx).ravel(), lo, hi))), best


class LabTeacher:
    """The fitted encoder and teacher, with the channel scaling and grid they were fitted on."""

    def __init__(self, cfg: LabFitConfig, target: Target, wavenumbers: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        from deepsalt.models.autoencoder import SparseAutoEncoder
        from deepsalt.models.transformer import SpectralTransformer

        self.cfg, self.target, self.wavenumbers, self.lo, self.hi = cfg, target, np.asarray(wavenumbers, float), lo, hi
        self.ae = SparseAutoEncoder(len(wavenumbers), tuple(cfg.hidden), cfg.latent)
        rng_out = (0.0, float(target.plausible[1] if target.plausible else target.valid_range[1]))
        self.teacher = SpectralTransformer(cfg.latent, cfg.latent, cfg.heads, cfg.layers, cfg.ff, cfg.dropout, rng_out, "one",
                                           linear_skip=True)

    def scale(self, x):
        import torch

        x = preprocess(x, self.cfg.sg_window)
        return torch.as_tensor(np.clip((x - self.lo) / np.maximum(self.hi - self.lo, 1e-6), 0, 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.ae.eval()
        self.teacher.eval()
        with torch.no_grad():
            return np.concatenate([self.teacher(self.ae.encode(self.scale(x[i:i + 4096])))[0].numpy()
                                   for i in range(0, len(x), 4096)]).astype(float)


def preprocess(x: np.ndarray, window: int) -> np.ndarray:
    """The teacher's input: the Savitzky-Golay first derivative along the channels (``window`` odd; 0: ``x``)."""
    from scipy.signal import savgol_filter

    x = np.asarray(x, np.float32)
    return savgol_filter(x, window, 2, deriv=1, axis=1).astype(np.float32) if window else x


def fit_teacher(x: np.ndarray, y: np.ndarray, wavenumbers, target: Target, cfg: LabFitConfig, seed: int) -> LabTeacher:
    """The auto-encoder (reconstruction, sparsity and a linear read-out of the target), then the teacher on its code
    with the encoder fine-tuned; early stopping on 10 % of ``x`` (seeded)."""
    import copy

    import torch
    import torch.nn.functional as F

    from deepsalt.models.autoencoder import kl_sparsity

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    px = preprocess(x, cfg.sg_window)
    lo, hi = px.min(0).astype(np.float32), px.max(0).astype(np.float32)
    m = LabTeacher(cfg, target, wavenumbers, lo, hi)
    perm = rng.permutation(len(x))
    n_val = max(1, len(x) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    xt = m.scale(x)
    z = _space(y)
    zs = torch.as_tensor((z - z[tr].mean()) / max(z[tr].std(), 1e-6), dtype=torch.float32)
    zt = torch.as_tensor(z, dtype=torch.float32)
    opt = torch.optim.Adam(m.ae.parameters(), cfg.lr, weight_decay=1e-5)
    for _ in range(cfg.ae_epochs):
        m.ae.train()
        for b in np.array_split(rng.permutation(tr), max(1, len(tr) // cfg.batch)):
            code, xh = m.ae(xt[b])
            loss = (F.mse_loss(xh, xt[b]) + cfg.kl_weight * kl_sparsity(code, cfg.kl_rho)
                    + cfg.aux_weight * F.mse_loss(m.ae.aux(code).squeeze(-1), zs[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.ae.eval()
    with torch.no_grad():
        m.teacher.fit_input_norm(m.ae.encode(xt[tr]))
    opt = torch.optim.Adam([{"params": m.teacher.parameters(), "lr": cfg.lr},
                            {"params": m.ae.encoder.parameters(), "lr": cfg.encoder_lr}], weight_decay=1e-4)
    best, best_state, wait = np.inf, None, 0
    for _ in range(cfg.teacher_epochs):
        m.teacher.train()
        m.ae.train()
        for b in np.array_split(rng.permutation(tr), max(1, len(tr) // cfg.batch)):
            pred, _ = m.teacher(m.ae.encode(xt[b]))
            loss = F.mse_loss(torch.log1p(pred), zt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = float(np.mean((_space(m.predict(x[val])) - z[val]) ** 2))
        if v < best - 1e-6:
            best, wait = v, 0
            best_state = (copy.deepcopy(m.ae.state_dict()), copy.deepcopy(m.teacher.state_dict()))
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    m.ae.load_state_dict(best_state[0])
    m.teacher.load_state_dict(best_state[1])
    return m


def skill(y: np.ndarray, pred: np.ndarray) -> dict:
    """The project's metrics plus R2 and RMSE of ln(1 + y) (the space the models are fitted in)."""
    from deepsalt.evaluation import metrics

    m = metrics(y, pred)
    a, b = _space(y), _space(pred)
    ss = float(((a - a.mean()) ** 2).sum())
    return {**{k: m[k] for k in ("mae", "rmse", "r2", "r2_ln", "mae_ln", "spearman", "n")},
            "rmse_ln": float(np.sqrt(np.mean((np.log(np.maximum(pred, 1e-3)) - np.log(np.maximum(y, 1e-3))) ** 2))),
            "r2_ln1p": 1 - float(((a - b) ** 2).sum()) / ss if ss > 0 else float("nan"),
            "rmse_ln1p": float(np.sqrt(np.mean((a - b) ** 2)))}


def lab_fit(lab: str | Path, out: str | Path, target: str = "soc", cfg: LabFitConfig | None = None, log=print) -> dict:
    """Cross-validate the teacher and PLSR on the same folds, then fit the teacher on every sample into
    ``out/bundle``; writes ``out/{config.json, metrics.json, predictions.csv}``."""
    import torch

    cfg = cfg or LabFitConfig()
    t0 = time.time()
    tgt = get_target(target)
    d = read_lab(lab, tgt, cfg.mir_grid)
    if cfg.sg_window and (cfg.sg_window % 2 == 0 or cfg.sg_window < 3 or cfg.sg_window > len(d.wavenumbers)):
        raise DeepSaltInputError("sg_window", f"{cfg.sg_window} is not an odd window of 3 to {len(d.wavenumbers)} channels",
                                 "use e.g. 11, or 0 for raw absorbance")
    folds, how = make_folds(d, cfg.folds, cfg.seed, cfg.block_km)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DeepSaltInputError(out, "is a file", "pass a folder for the run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "lab": str(lab), "target": tgt.to_dict(), "folds_by": how,
                                                 "deepsalt_version": __version__, "torch": torch.__version__}, indent=1))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log(f"lab fit: {len(d.y)} samples, {len(d.wavenumbers)} channels ({d.wavenumbers[0]:.0f}-{d.wavenumbers[-1]:.0f} cm-1), "
        f"{tgt.short} ({tgt.units}); {cfg.folds} folds by {how}")
    pt, pp = np.full(len(d.y), np.nan), np.full(len(d.y), np.nan)
    per_fold = []
    for k in range(cfg.folds):
        te, tr = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        teacher = fit_teacher(d.x[tr], d.y[tr], d.wavenumbers, tgt, cfg, cfg.seed * 1000 + k)
        pt[te] = teacher.predict(d.x[te])
        plsr, nc = fit_plsr(d.x[tr], d.y[tr], cfg.plsr_max_components, cfg.seed)
        pp[te] = plsr(d.x[te])
        per_fold.append({"fold": k, "n": int(len(te)), "plsr_components": nc, "teacher": skill(d.y[te], pt[te]),
                         "plsr": skill(d.y[te], pp[te])})
        log(f"  fold {k + 1}/{cfg.folds}: R2 of ln(1+{tgt.name}) teacher {per_fold[-1]['teacher']['r2_ln1p']:.3f}, PLSR "
            f"{per_fold[-1]['plsr']['r2_ln1p']:.3f} ({nc} components); {time.time() - t0:.0f} s, ETA "
            f"{(time.time() - t0) / (k + 1) * (cfg.folds - k - 1):.0f} s")
    metrics = {"target": tgt.to_dict(), "samples": int(len(d.y)), "folds": cfg.folds, "folds_by": how,
               "cv": {"teacher": skill(d.y, pt), "plsr": skill(d.y, pp)}, "per_fold": per_fold}
    final = fit_teacher(d.x, d.y, d.wavenumbers, tgt, cfg, cfg.seed)
    save_bundle(final, out / "bundle", {"samples": int(len(d.y)), "lab": str(lab)})
    pd.DataFrame({"sample_id": d.ids, tgt.column: d.y, "fold": folds, "teacher": pt, "plsr": pp}).to_csv(out / "predictions.csv", index=False)
    metrics["seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    c = metrics["cv"]
    log(f"lab fit: R2 of ln(1+{tgt.name}) teacher {c['teacher']['r2_ln1p']:.3f} (RMSE {c['teacher']['rmse_ln1p']:.3f}), PLSR "
        f"{c['plsr']['r2_ln1p']:.3f} (RMSE {c['plsr']['rmse_ln1p']:.3f}) over {len(d.y)} samples; {out / 'metrics.json'}")
    return metrics


def save_bundle(m: LabTeacher, folder: Path, extra: dict) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"ae.{k}": v.contiguous() for k, v in m.ae.state_dict().items()}
    tensors.update({f"teacher.{k}": v.contiguous() for k, v in m.teacher.state_dict().items()})
    save_file(tensors, str(folder / "weights.safetensors"))
    meta = {"format": FORMAT, "deepsalt_version": __version__, "torch": torch.__version__, "target": m.target.to_dict(),
            "config": asdict(m.cfg), "wavenumbers_cm1": m.wavenumbers.tolist(), "scale_lo": m.lo.tolist(),
            "scale_hi": m.hi.tolist(), "out_range": list(m.teacher.out_range), "space": "ln(1 + y)", **extra}
    (folder / "lab_model.json").write_text(json.dumps(meta))


def load_bundle(folder: str | Path) -> LabTeacher:
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "lab_model.json").read_text())
        tensors = load_file(str(folder / "weights.safetensors"))
    except (OSError, ValueError) as e:
        raise DeepSaltInputError(folder, f"not a lab model bundle ({type(e).__name__})", "pass RUN/bundle of `deepsalt lab fit`") from None
    if meta.get("format") != FORMAT:
        raise DeepSaltInputError(folder, f"bundle format {meta.get('format')!r} is not {FORMAT!r}", "fit it again with this version")
    if str(meta["deepsalt_version"]).split(".")[:2] != __version__.split(".")[:2]:
        raise DeepSaltInputError(folder, f"made by deepsalt {meta['deepsalt_version']}, this is {__version__}", "fit it again")
    cfg = LabFitConfig(**{**meta["config"], "hidden": tuple(meta["config"]["hidden"]),
                          "mir_grid": tuple(meta["config"]["mir_grid"]) if meta["config"].get("mir_grid") else None})
    m = LabTeacher(cfg, get_target(meta["target"]), np.asarray(meta["wavenumbers_cm1"]), np.asarray(meta["scale_lo"], np.float32),
                   np.asarray(meta["scale_hi"], np.float32))
    try:
        m.ae.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("ae.")})
        m.teacher.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")})
    except RuntimeError as e:
        raise DeepSaltInputError(folder, f"weights do not fit lab_model.json ({str(e)[:120]})", "do not edit the bundle; fit again") from None
    if not np.allclose(m.teacher.out_range, meta["out_range"]):
        raise DeepSaltInputError(folder, f"weights' output range {m.teacher.out_range} is not the recorded {meta['out_range']}",
                                 "do not edit the bundle; fit again")
    return m


def lab_predict(bundle: str | Path, lab: str | Path, out: str | Path, log=print) -> dict:
    """The bundle's teacher on a new lab table (resampled onto the bundle's grid): ``out`` (CSV or Parquet) with
    ``sample_id`` and the prediction; a table that does not cover the grid is refused."""
    from deepsalt.spectra.mir import resample

    m = load_bundle(bundle)
    d = read_lab(lab, m.target, need_target=False)
    x = resample(d.wavenumbers, d.x, m.wavenumbers, str(lab)).astype(np.float32)
    pred = m.predict(x)
    df = pd.DataFrame({"sample_id": d.ids, f"{m.target.column}_pred": pred})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (df.to_parquet(out, index=False) if out.suffix.lower() in (".parquet", ".pq") else df.to_csv(out, index=False))
    log(f"lab predict: {len(df)} samples -> {out} ({m.target.short}, {m.target.units})")
    return {"out": str(out), "samples": int(len(df)), "target": m.target.name}
