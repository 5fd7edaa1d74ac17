"""The four training stages as one resumable loop, run on every Ray Train worker.

auto-encoders -> spectral adaptation (alignment) -> teacher -> students (DeepSalt and its ablations).
Each worker trains on its shard of every batch-permutation; DDP (via ``prepare_model``) averages the
gradients, so 1 CPU worker and N GPU workers run the same code. A checkpoint (all weights, optimiser,
scheduler and early-stopping state, and the position in the stage list) is reported every
``checkpoint_every`` epochs and at each stage end; a restarted run continues from the last one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import math
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepsalt.config import TrainConfig
from deepsalt.errors import DeepSaltInputError
from deepsalt.models.autoencoder import SparseAutoEncoder, alignment_loss, kl_sparsity
from deepsalt.models.losses import distillation_loss
from deepsalt.models.transformer import SpectralTransformer, build_student
from deepsalt.targets import get_target

STATE_FILE = "state.pt"


def build_models(cfg: TrainConfig, n_mir: int, n_bands: int) -> dict[str, nn.Module]:
    m: dict[str, nn.Module] = {
        "ae_ftir": SparseAutoEncoder(n_mir, cfg.ae.hidden, cfg.latent),
        "ae_enmap": SparseAutoEncoder(n_bands, cfg.ae.hidden, cfg.latent),
        "teacher": SpectralTransformer(cfg.latent, cfg.latent, cfg.teacher.heads, cfg.teacher.layers, cfg.teacher.ff,
                                       cfg.dropout, cfg.out_range, cfg.tokens, linear_skip=cfg.teacher.linear_skip),
    }
    m["sau_ftir"], m["sau_enmap"] = copy.deepcopy(m["ae_ftir"]), copy.deepcopy(m["ae_enmap"])
    for v in cfg.variants:
        m[f"student:{v}"] = build_student(cfg, v)
    return m


def stage_list(cfg: TrainConfig) -> list[tuple[str, int]]:
    return [("ae", cfg.ae.epochs), ("sau", cfg.sau.epochs), ("teacher", cfg.teacher.epochs),
            *[(f"student:{v}", cfg.student.epochs) for v in cfg.variants]]


class Ctx:
    """What a worker knows about the run: rank, world size, device, and how to report."""

    def __init__(self, rank=0, world=1, device="cpu", report=None, prepare=None):
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.report = report or (lambda metrics, ckpt_dir=None: None)
        self.prepare = prepare or (lambda m: m.to(self.device))


def _shard_batches(idx: np.ndarray, batch: int, rng: np.random.Generator, ctx: Ctx):
    perm = rng.permutation(idx)
    per = len(perm) // ctx.world  # equal shards: every rank runs the same number of DDP steps
    shard = perm[ctx.rank * per:(ctx.rank + 1) * per]
    local = max(1, math.ceil(batch / ctx.world))
    return [shard[i:i + local] for i in range(0, len(shard), local) if len(shard[i:i + local]) > 1]


def _t(a, ctx):
    return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=ctx.device)


def _std_target(y: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The target in its learning space (ln y for ECe), standardised with the training samples' mean and sd (the
    auto-encoders' read-out target)."""
    z = get_target(cfg.target).transform(y)
    return (z - z[train_idx].mean()) / max(z[train_idx].std(), 1e-6)


def _unwrap(m):
    return m.module if hasattr(m, "module") else m


@torch.no_grad()
def encode(model: SparseAutoEncoder, x: np.ndarray, ctx: Ctx) -> np.ndarray:
    _unwrap(model).eval()
    out = [_unwrap(model).encode(_t(x[i:i + 4096], ctx)).cpu().numpy() for i in range(0, len(x), 4096)]
    return np.concatenate(out) if out else np.zeros((0, _unwrap(model).latent), np.float32)


@torch.no_grad()
def predict(model: SpectralTransformer, x: np.ndarray, ctx: Ctx) -> tuple[np.ndarray, list[np.ndarray]]:
    m = _unwrap(model)
    m.eval()
    pred, feats = m(_t(x, ctx))
    return pred.cpu().numpy(), [f.cpu().numpy() for f in feats]


def student_features(data, models, variant: str, ctx: Ctx, transfer: bool = False) -> np.ndarray:
    """Student inputs [EnMAP latent | covariates | spectral path] (or a part, for ablations) for every satellite
    sample, or with ``transfer`` for every transfer-set sample (the pixels at lab sample locations)."""
    x, cov = (data.transfer_x, data.transfer_cov) if transfer else (data.sat_x, data.sat_cov)
    if variant == "ancillary_only":
        return cov
    z = encode(models["ae_enmap"] if variant == "student_no_sau" else models["sau_enmap"], x, ctx)
    parts = [z] if variant == "hsi_only" else [z, cov]
    if "enmap_pcs" in data.scalers:  # the spectral path (TransformerConfig.spectral_path): read by the linear term only
        parts.append(data.scalers["enmap_pcs"].transform(x))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _teacher_dims(models) -> list[int]:
    return [_unwrap(models["teacher"]).d_model] * len(_unwrap(models["teacher"]).layers)


def distillation_targets(data, models, variant: str, kind: str, ctx: Ctx):
    """Teacher prediction and layer features for every satellite sample, and a 0/1 mask of samples that have one.

    ``aligned_enmap`` (the authors'): the teacher reads the site's own EnMAP latent (aligned; unaligned for the
    ``student_no_sau`` ablation), so every site gets targets, as good as the alignment is.
    ``paired_lab``: the teacher reads the FTIR latent of the lab sample paired with the site (mutual nearest
    neighbour within ``pair_max_km``), i.e. real privileged information; sites without a pair get no
    distillation terms, only the task term.
    """
    if kind == "none":  # distillation only on the transfer set (if any): every site gets the task term alone
        n = len(data.sat_y)
        return np.ones(n, np.float32), [np.zeros((n, d), np.float32) for d in _teacher_dims(models)], np.zeros(n, np.float32)
    if kind == "aligned_enmap":
        z_sat = encode(models["ae_enmap"] if variant == "student_no_sau" else models["sau_enmap"], data.sat_x, ctx)
        pred, feats = predict(models["teacher"], z_sat, ctx)
        return pred, feats, np.ones(len(pred), np.float32)
    li, sj, _ = data.pairs
    n = len(data.sat_y)
    pred, feats = predict(models["teacher"], encode(models["sau_ftir"], data.lab_x[li], ctx), ctx)
    full_pred = np.ones(n, np.float32)  # placeholder 1 dS/m (log 0) where masked out
    full_pred[sj] = pred
    full_feats = []
    for f in feats:
        ff = np.zeros((n, f.shape[1]), np.float32)
        ff[sj] = f
        full_feats.append(ff)
    mask = np.zeros(n, np.float32)
    mask[sj] = 1.0
    return full_pred, full_feats, mask


def with_transfer_set(data, models, variant: str, ctx: Ctx, x, y, t_pred, t_feats, t_mask):
    """Append the transfer set to a student's inputs and targets: the pixels at training-block lab sample locations,
    with the teacher's prediction and features from each sample's own FTIR latent. Returns the extended
    ``x, y, t_pred, t_feats, t_mask`` and the task-term weights (0 on transfer rows: they have no field label;
    ``y`` holds the teacher's prediction there, used only to undersample near-zero ECe)."""
    n_tr = len(data.transfer_lab)
    task_w = np.concatenate([np.ones(len(y), np.float32), np.zeros(n_tr, np.float32)])
    if not n_tr:
        return x, y, t_pred, t_feats, t_mask, task_w
    p_tr, f_tr = predict(models["teacher"], encode(models["sau_ftir"], data.lab_x[data.transfer_lab], ctx), ctx)
    return (np.concatenate([x, student_features(data, models, variant, ctx, transfer=True)]),
            np.concatenate([y, p_tr]).astype(np.float32), np.concatenate([t_pred, p_tr]),
            [np.concatenate([a, b]) for a, b in zip(t_feats, f_tr)],
            np.concatenate([t_mask, np.ones(n_tr, np.float32)]), task_w)


def check_resume(state: dict, cfg: TrainConfig, where: str) -> None:
    """Refuse a checkpoint whose transformers were trained for another output range (DESIGN defect 7):
    ``load_state_dict`` would copy the old ``head.out_range`` buffer into a head that computes with the new one."""
    for name, sd in state["models"].items():
        r = sd.get("head.out_range")
        if r is not None and not np.allclose(r.detach().cpu().numpy(), cfg.out_range):
            units = get_target(cfg.target).units
            raise DeepSaltInputError(where, f"the checkpoint's '{name}' was trained for output range {r.tolist()} {units}, "
                                     f"this run asks for {list(cfg.out_range)}",
                                     "resume with the out_range it was trained with, or train into a new run folder")


@dataclass
class Stage:
    """One training stage, ready for the shared epoch loop: the modules it trains (prepared for DDP), their
    optimiser, and ``epoch(rng, epoch) -> metric``, which runs one epoch and returns ``loss``, and ``val_mae``
    for the teacher and the students (the loop then minimises it and keeps the best epoch)."""

    trained: dict
    opt: torch.optim.Optimizer
    epoch: object
    n_train: int  # training rows the stage draws its batches from


def _auto_encoder_stage(name: str, data, cfg: TrainConfig, models: dict, ctx: Ctx, start: int) -> Stage:
    """``ae``: both auto-encoders learn to reconstruct; ``sau``: they start from there and align on the pairs."""
    pre = name
    if name == "sau" and start == 0:  # alignment starts from the pre-trained auto-encoders
        models["sau_ftir"].load_state_dict(models["ae_ftir"].state_dict())
        models["sau_enmap"].load_state_dict(models["ae_enmap"].state_dict())
    trained = {k: ctx.prepare(models[k]) for k in (f"{pre}_ftir", f"{pre}_enmap")}
    opt = torch.optim.Adam([p for m in trained.values() for p in m.parameters()], lr=cfg.ae.lr, weight_decay=cfg.ae.wd)
    lab_idx, sat_idx = data.idx("lab", "train"), data.idx("sat", "train")
    ly, sy = _std_target(data.lab_y, lab_idx, cfg), _std_target(data.sat_y, sat_idx, cfg)

    def epoch(rng, _epoch) -> dict:
        lab_b = _shard_batches(lab_idx, cfg.ae.batch, rng, ctx)
        sat_b = _shard_batches(sat_idx, cfg.ae.batch, rng, ctx)
        pair_b = _shard_batches(np.arange(len(data.pairs[0])), cfg.ae.batch, rng, ctx) if name == "sau" else []
        losses = []
        for b in range(max(len(lab_b), len(sat_b))):
            # One forward per model per step (DDP allows no second forward before backward): the
            # paired samples ride along with the reconstruction batch.
            li, si_ = lab_b[b % len(lab_b)], sat_b[b % len(sat_b)]
            p = pair_b[b % len(pair_b)] if pair_b else np.array([], dtype=int)
            xf = _t(data.lab_x[np.concatenate([li, data.pairs[0][p]])], ctx)
            xe = _t(data.sat_x[np.concatenate([si_, data.pairs[1][p]])], ctx)
            zf, xf_hat = trained[f"{pre}_ftir"](xf)
            ze, xe_hat = trained[f"{pre}_enmap"](xe)
            loss = (F.mse_loss(xf_hat[:len(li)], xf[:len(li)]) + cfg.ae.kl_weight * kl_sparsity(zf[:len(li)], cfg.ae.kl_rho)
                    + F.mse_loss(xe_hat[:len(si_)], xe[:len(si_)]) + cfg.ae.kl_weight * kl_sparsity(ze[:len(si_)], cfg.ae.kl_rho))
            # always in the graph (DDP expects every parameter to get a gradient), weighted 0 when off
            loss = loss + cfg.ae.aux_weight * (
                F.mse_loss(_unwrap(trained[f"{pre}_ftir"]).aux(zf[:len(li)]).squeeze(-1), _t(ly[li], ctx))
                + F.mse_loss(_unwrap(trained[f"{pre}_enmap"]).aux(ze[:len(si_)]).squeeze(-1), _t(sy[si_], ctx)))
            if name == "sau":
                loss = cfg.sau.recon_weight * loss
                if len(p):
                    loss = loss + cfg.sau.align_weight * alignment_loss(zf[len(li):], ze[len(si_):], cfg.sau.align_loss,
                                                                        cfg.sau.align_temperature)
            _step(opt, loss, trained, cfg)
            losses.append(loss.item())
        return {"loss": float(np.mean(losses))}

    return Stage(trained, opt, epoch, len(lab_idx) + len(sat_idx))


def _regression_stage(name: str, data, cfg: TrainConfig, models: dict, ctx: Ctx, start: int, seed: int) -> Stage:
    """``teacher`` on the aligned FTIR latent of the lab samples, or ``student:<variant>`` on the sites (plus the
    transfer set for the distilled variants), with the teacher's targets where the variant distils."""
    from deepsalt.train.data import undersample_zero_ec

    kd = False
    if name == "teacher":
        x_all, y_all = encode(models["sau_ftir"], data.lab_x, ctx), data.lab_y
        tr_all, val_idx, batch, lr, wd = data.idx("lab", "train"), data.idx("lab", "val"), cfg.teacher.batch, cfg.teacher.lr, cfg.teacher.wd
    else:
        variant = name.split(":", 1)[1]
        x_all, y_all = student_features(data, models, variant, ctx), data.sat_y
        tr_all, val_idx, batch, lr, wd = data.idx("sat", "train"), data.idx("sat", "val"), cfg.student.batch, cfg.student.lr, cfg.student.wd
    if start == 0:  # input standardisation from the training inputs (sites only, so every variant alike)
        models[name].fit_input_norm(_t(x_all[tr_all], ctx))
    trained = {name: ctx.prepare(models[name])}
    opt = torch.optim.Adam(trained[name].parameters(), lr=lr, weight_decay=wd)
    if name != "teacher":
        kd = variant in ("deepsalt", "student_no_sau")
        if variant == "lab_labels" and len(data.transfer_lab):  # the transfer pixels, labelled by the lab
            n_site = len(y_all)
            x_all = np.concatenate([x_all, student_features(data, models, variant, ctx, transfer=True)])
            y_all = np.concatenate([y_all, data.lab_y[data.transfer_lab]]).astype(np.float32)
            tr_all = np.concatenate([tr_all, np.arange(n_site, len(y_all))])
        task_w = np.ones(len(y_all), np.float32)
        if kd:
            t_pred, t_feats, t_mask = distillation_targets(data, models, variant, cfg.kd.targets, ctx)
            if cfg.kd.transfer:
                n_site = len(y_all)
                x_all, y_all, t_pred, t_feats, t_mask, task_w = with_transfer_set(
                    data, models, variant, ctx, x_all, y_all, t_pred, t_feats, t_mask)
                tr_all = np.concatenate([tr_all, np.arange(n_site, len(y_all))])
    model = trained[name]
    log_space = get_target(cfg.target).log

    def epoch(rng, epoch_: int) -> dict:
        tr_idx = undersample_zero_ec(y_all, tr_all, cfg.zero_ec_dsm, cfg.zero_ec_keep, seed * 100 + epoch_)
        losses = []
        for bidx in _shard_batches(tr_idx, batch, rng, ctx):
            pred, feats = model(_t(x_all[bidx], ctx))
            if kd:
                loss, _ = distillation_loss(pred, feats, _t(y_all[bidx], ctx), _t(t_pred[bidx], ctx),
                                            [_t(f[bidx], ctx) for f in t_feats], mask=_t(t_mask[bidx], ctx),
                                            task_mask=_t(task_w[bidx], ctx), alpha=cfg.kd.alpha, beta=cfg.kd.beta,
                                            gamma=cfg.kd.gamma, layer_map=cfg.kd.layer_map,
                                            weights=cfg.kd.layer_weights, feat_dim=cfg.latent, sigma=cfg.kd.sigma,
                                            log=log_space)
            else:
                loss, _ = distillation_loss(pred, feats, _t(y_all[bidx], ctx))
            _step(opt, loss, trained, cfg)
            losses.append(loss.item())
        p, _ = predict(model, x_all[val_idx], ctx)
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "val_mae": float(np.mean(np.abs(p - y_all[val_idx])))}

    return Stage(trained, opt, epoch, len(tr_all))


def _step(opt, loss, trained: dict, cfg: TrainConfig) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for m in trained.values() for p in m.parameters()], cfg.grad_clip)
    opt.step()


def _epoch_loop(name: str, si: int, epochs: int, start: int, stage: Stage, stage_state: dict, models: dict,
                history: list, cfg: TrainConfig, seed: int, ctx: Ctx) -> None:
    """The loop every stage shares: epochs from ``start``, LR on plateau, best-epoch tracking, early stopping
    (students), checkpoints every ``checkpoint_every`` epochs and at the stage's end, one report per epoch."""
    opt = stage.opt
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if start and stage_state.get("opt"):
        opt.load_state_dict(stage_state["opt"])
        sched.load_state_dict(stage_state["sched"])
    best, best_state, bad = stage_state.get("best", float("inf")), stage_state.get("best_state"), stage_state.get("bad", 0)
    for epoch in range(start, epochs):
        # data order and dropout depend on (seed, stage, epoch) only: a run restarted from any checkpoint (a lost
        # worker, a preempted node) trains on exactly what an uninterrupted run would have
        rng = np.random.default_rng([seed, si, epoch])
        torch.manual_seed(int(np.random.default_rng([seed, si, epoch, 7]).integers(2**62)))
        for m in stage.trained.values():
            m.train()
        metric = stage.epoch(rng, epoch)
        val = metric.get("val_mae", metric["loss"])
        sched.step(val)
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: copy.deepcopy(_unwrap(m).state_dict()) for k, m in stage.trained.items()}
        else:
            bad += 1
        stop = name.startswith("student") and bad >= cfg.early_stop
        last = epoch == epochs - 1 or stop
        history.append({"seed": seed, "stage": name, "epoch": epoch, **metric})
        if last and best_state is not None and "val_mae" in metric:
            for k, sd in best_state.items():  # keep the best validation epoch, not the last
                models[k].load_state_dict(sd)
        ckpt = None
        if last or (epoch + 1) % cfg.checkpoint_every == 0:
            nxt = {"stage": si + 1, "epoch": 0} if last else {"stage": si, "epoch": epoch + 1}
            st = {} if last else {"opt": opt.state_dict(), "sched": sched.state_dict(), "best": best,
                                   "best_state": best_state, "bad": bad}
            ckpt = {"models": {k: _unwrap(m).state_dict() for k, m in models.items()}, "progress": nxt,
                    "stage_state": st, "history": history}
        ctx.report({"seed": seed, "stage": name, "epoch": epoch, **metric}, ckpt)
        if stop:
            break


def run_pipeline(data, cfg: TrainConfig, seed: int, ctx: Ctx, resume: dict | None = None) -> dict:
    """Train every stage; returns {"models": state_dicts, "history": [...]}. ``resume`` is a loaded state."""
    torch.manual_seed(seed)
    models = build_models(cfg, data.lab_x.shape[1], data.sat_x.shape[1])
    progress, stage_state, history = {"stage": 0, "epoch": 0}, {}, []
    if resume:
        check_resume(resume, cfg, "checkpoint")
        for k, sd in resume["models"].items():
            models[k].load_state_dict(sd)
        progress, stage_state, history = resume["progress"], resume["stage_state"], resume["history"]
    for m in models.values():
        m.to(ctx.device)
    stages = stage_list(cfg)
    for si in range(progress["stage"], len(stages)):
        name, epochs = stages[si]
        start = progress["epoch"] if si == progress["stage"] else 0
        torch.manual_seed(seed * 1000 + si)
        stage = (_auto_encoder_stage(name, data, cfg, models, ctx, start) if name in ("ae", "sau")
                 else _regression_stage(name, data, cfg, models, ctx, start, seed))
        _epoch_loop(name, si, epochs, start, stage, stage_state, models, history, cfg, seed, ctx)
        stage_state = {}
    return {"models": {k: _unwrap(m).state_dict() for k, m in models.items()}, "history": history}


def save_state(state: dict, directory: str) -> None:
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_state(directory: str) -> dict:
    """The state saved in a checkpoint folder (local path or fsspec URL)."""
    import fsspec

    # weights_only: a checkpoint is never unpickled as arbitrary code
    with fsspec.open(f"{str(directory).rstrip('/')}/{STATE_FILE}", "rb") as f:
        return torch.load(f, weights_only=True, map_location="cpu")


def make_ckpt_dir(state: dict) -> str:
    d = tempfile.mkdtemp(prefix="deepsalt-ckpt-")
    save_state(state, d)
    return d
