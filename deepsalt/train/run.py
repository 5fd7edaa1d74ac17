"""`deepsalt train`: one Ray Train TorchTrainer run per seed, then evaluation, bundle and report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np

from deepsalt.config import BASELINES, LOCATION_BASELINES, TrainConfig
from deepsalt.errors import DeepSaltInputError, DeepSaltRunError, find_input_error
from deepsalt.redact import redact, redact_url
from deepsalt.targets import get_target
from deepsalt.raycluster import init_ray
from deepsalt import evaluation as ev
from deepsalt.train.data import TrainingData, load_training_data


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    from deepsalt.train.stages import Ctx, load_state, make_ckpt_dir, run_pipeline

    ctx_ = ray.train.get_context()
    rank = ctx_.get_world_rank()

    def report(metrics, state=None):
        if state is not None and rank == 0:
            d = make_ckpt_dir(state)
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            finally:
                shutil.rmtree(d, ignore_errors=True)
        else:
            ray.train.report(metrics)
        if rank == 0 and config.get("progress") is not None:
            try:  # the driver prints it; a full or gone queue must never stop training
                config["progress"].put_nowait(metrics)
            except Exception:  # noqa: BLE001
                pass
        fail = config.get("fail_at")  # fault injection for the resume test: "stage:epoch"
        if fail and f"{metrics['stage']}:{metrics['epoch']}" == fail and not os.path.exists(config["fail_marker"]):
            Path(config["fail_marker"]).touch()
            os._exit(1)  # a hard kill, as a lost node would be

    ctx = Ctx(rank, ctx_.get_world_size(), ray.train.torch.get_device(), report, ray.train.torch.prepare_model)
    resume = None
    ck = ray.train.get_checkpoint()
    if ck:
        with ck.as_directory() as d:
            resume = load_state(d)
    run_pipeline(ray.get(config["data"]), TrainConfig(**config["cfg"]), config["seed"], ctx, resume)


def _whole(fs, path: str) -> bool:
    """Whether a state file was written to its end: torch.save writes a ZIP, whose directory comes last, so a file
    that Ray Train was still copying into storage (or that a kill cut short) has none."""
    import zipfile

    try:
        with fs.open(path, "rb") as f:
            return zipfile.is_zipfile(f)
    except OSError:
        return False


def _latest_checkpoint(run_dir: str | Path) -> str | None:
    """The newest ``checkpoint_*`` folder whose state file is whole, under a local path or fsspec URL, or None: a
    checkpoint still being written, or cut short by a kill, is passed over for the one before it."""
    fs, path = fsspec.core.url_to_fs(str(run_dir))
    cands = sorted(fs.glob(f"{path.rstrip('/')}/checkpoint_*"), key=lambda p: p.rsplit("/", 1)[-1], reverse=True)
    best = next((p for p in cands if fs.exists(f"{p}/state.pt") and _whole(fs, f"{p}/state.pt")), None)
    if best is None:
        return None
    return best if "://" not in str(run_dir) else f"{str(run_dir).split('://', 1)[0]}://{best}"


def _ray_storage(url: str) -> tuple[str, object]:
    """(storage_path, storage_filesystem) for Ray Train: local paths as they are; remote URLs through the same
    fsspec filesystem (endpoint, credentials) the rest of DeepSalt uses, wrapped for pyarrow."""
    if "://" not in url:
        return str(Path(url).resolve()), None
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(url)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _fit_with_progress(trainer, queue, cfg: TrainConfig, seed: int, log):
    """``trainer.fit()`` in a thread while this thread prints per-stage progress from rank 0's reports: one line
    when a stage ends, and one at most every 15 s within a long stage (epoch of total, loss, elapsed, ETA)."""
    import threading

    from deepsalt.train.stages import stage_list

    epochs = dict(stage_list(cfg))
    names = [n for n, _ in stage_list(cfg)]
    box: dict = {}

    def fit():
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=fit, daemon=True)
    th.start()
    t0 = last = time.time()
    state = {"stage": None, "t0": t0, "pending": None, "prev": t0}  # prev: when the last report arrived

    def show(m, final: bool):
        name, epoch = m.get("stage"), int(m.get("epoch", 0))
        total = epochs.get(name, epoch + 1)
        el = time.time() - state["t0"]
        val = ", ".join(f"{k} {m[k]:.4g}" for k in ("loss", "val_mae") if isinstance(m.get(k), (int, float)))
        tail = ("" if epoch + 1 == total else " (early stop)") if final else f", ETA {el / (epoch + 1) * (total - epoch - 1):.0f} s"
        log(f"seed {seed}: [{names.index(name) + 1 if name in names else '?'}/{len(names)}] {name} epoch {epoch + 1}/{total}"
            f"{', ' + val if val else ''}, {el:.0f} s{tail} (run {time.time() - t0:.0f} s)")

    while th.is_alive() or not queue.empty():
        try:
            m = queue.get(timeout=0.5)
        except Exception:  # noqa: BLE001 - ray.util.queue.Empty, or the queue gone
            if not th.is_alive():
                break
            continue
        if m.get("stage") != state["stage"]:
            if state["pending"] is not None:  # the previous stage ended (early stopping: before its last epoch)
                show(state["pending"], True)
            state.update(stage=m.get("stage"), t0=state["prev"], pending=None)
        state["prev"] = time.time()
        if int(m.get("epoch", 0)) + 1 == epochs.get(m.get("stage"), 0):
            show(m, True)
            state["pending"], last = None, time.time()
            continue
        state["pending"] = m
        if time.time() - last >= 15:
            show(m, False)
            last = time.time()
    if state["pending"] is not None:
        show(state["pending"], True)
    th.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _trainer_class():
    """Ray Train's TorchTrainer less two actors that Ray 2.60 starts with every fit:
    - the Ray Data actor for the trainer's ``datasets`` (DatasetsCallback), started with every worker group whether
      or not there are any: dropped when there are none (DeepSalt hands its arrays to the workers in the object
      store, never as Ray Datasets);
    - the detached placement-group cleaner (PlacementGroupCleanerCallback), which removes a fit's placement group if
      the controller dies while the job lives on; the worker group waits for it to start. A DeepSalt training whose
      controller dies fails, and its job ends (the CLI, a `ray job submit` run), which removes the group: a placement
      group that is not detached lives no longer than the job that created it. A Python session that calls ``train`` and carries
      on after such a failure keeps the group's resources until it ends.
    A trivial fit on a 2-CPU head took 9.5 busy CPU-s and 6.7 s against 12.9 and 8.8 s with the stock trainer
    (bench/results/ray_train_fit.json). The override is of a private method of Ray 2.60 (pinned in constraints.txt):
    a Ray upgrade must check it (tests/test_train.py compares the callbacks with Ray's)."""
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback) and (self.datasets or not isinstance(c, DatasetsCallback))]

    return Trainer


def fit_seed(data: TrainingData, cfg: TrainConfig, seed: int, storage: str, log=None) -> dict:
    """Train all stages for one seed with Ray Train; resumes from the latest checkpoint under ``storage``
    (a local folder or an fsspec URL such as s3://bucket/run/ray). A lost worker or node restarts the worker group
    from the last checkpoint, up to ``cfg.max_failures`` times; past that a DeepSaltRunError says how to resume."""
    from deepsalt.train.stages import check_resume, load_state  # torch: only once the inputs are read and checked

    latest = _latest_checkpoint(f"{storage}/seed{seed}")
    if latest is not None:
        check_resume(load_state(latest), cfg, latest)  # before any worker starts: one clear line, not a worker crash
        print(f"seed {seed}: resuming from {latest.rsplit('/', 1)[-1]}")
    import ray
    import ray.train

    name = f"seed{seed}"
    storage_path, storage_fs = _ray_storage(storage)
    queue = None
    if log is not None:  # rank 0 sends its epoch reports here; the driver prints them per stage
        from ray.util.queue import Queue

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node, as Ray Train's controller: a lost worker node must not take the progress with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0, "scheduling_strategy": here})
    trainer = _trainer_class()(
        _train_loop,
        train_loop_config={"data": ray.put(data), "cfg": cfg.model_dump(mode="json"), "seed": seed,
                           "fail_marker": os.environ.get("DEEPSALT_FAIL_MARKER") or os.path.join(
                               tempfile.gettempdir(), "deepsalt-" + hashlib.sha256(f"{storage}/{name}".encode()).hexdigest()[:12]
                               + ".failed-once"),
                           "fail_at": os.environ.get("DEEPSALT_FAIL_AT"), "progress": queue},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )  # same name + storage as an interrupted run: Ray Train restores its latest checkpoint (get_checkpoint)
    try:
        result = _fit_with_progress(trainer, queue, cfg, seed, log) if queue is not None else trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray Train's errors wrap the workers'; say what failed in one line
        cause = find_input_error(e)
        if cause is not None:
            raise DeepSaltInputError(cause.where, cause.fault, cause.fix) from None
        root = e
        while getattr(root, "__cause__", None) is not None:
            root = root.__cause__
        why = " ".join(str(root).split())[:200] or type(root).__name__
        raise DeepSaltRunError(f"training of seed {seed}", f"stopped after {cfg.max_failures} restart(s) of lost workers "
                               f"({type(root).__name__}: {why})", f"run the same command again: it resumes from the last "
                               f"checkpoint under {redact_url(storage)}/seed{seed}; raise --max-failures on preemptible "
                               "nodes") from None
    finally:
        if queue is not None:
            queue.shutdown()
    with result.checkpoint.as_directory() as d:
        return load_state(d)


def evaluate_seed(data: TrainingData, cfg: TrainConfig, state: dict, seed: int) -> dict:
    from deepsalt.train.stages import Ctx, build_models, encode, predict, student_features

    models = build_models(cfg, data.lab_x.shape[1], data.sat_x.shape[1])
    for k, sd in state["models"].items():
        models[k].load_state_dict(sd)
    ctx = Ctx()
    seen_test, unseen = data.idx("sat", "test"), data.idx("sat", "unseen")
    meta = data.sat_meta
    out = {"results": {}, "categories": {}, "predictions": {}}

    thresholds = get_target(cfg.target).thresholds

    def keep(name: str, pred: np.ndarray) -> None:
        out["results"][name] = {"seen": ev.metrics(data.sat_y[seen_test], pred[seen_test], thresholds),
                                "unseen": ev.metrics(data.sat_y[unseen], pred[unseen], thresholds)}
        out["predictions"][name] = pred

    for v in cfg.variants:
        keep(v, predict(models[f"student:{v}"], student_features(data, models, v, ctx), ctx)[0])
    if len(data.target_x):  # DeepSalt adapted to the held-out region with its unlabelled pixels (seen: unchanged)
        from deepsalt.models.adaptation import adaptation_gate, align_latent, latent_moments

        x = student_features(data, models, "deepsalt", ctx)
        z_train = np.concatenate([x[data.idx("sat", "train"), :cfg.latent],
                                  encode(models["sau_enmap"], data.transfer_x, ctx)])
        z_target = encode(models["sau_enmap"], data.target_x, ctx)
        val = data.idx("sat", "val")
        val = val if len(val) >= 2 else val[:0]  # moments of fewer than two sites mean nothing: no labelled check
        stu = models["student:deepsalt"]
        p_val = p_val_aligned = np.zeros(0)
        if len(val):  # the gate's check on labelled data: the validation blocks aligned onto the training moments
            x_val = x[val].copy()
            x_val[:, :cfg.latent] = align_latent(x_val[:, :cfg.latent], latent_moments(z_train),
                                                 latent_moments(x_val[:, :cfg.latent]))
            p_val, p_val_aligned = predict(stu, x[val], ctx)[0], predict(stu, x_val, ctx)[0]
        gate = adaptation_gate(z_train, z_target, data.sat_y[val], p_val, p_val_aligned, log=get_target(cfg.target).log,
                               seed=seed)
        if gate["applied"]:
            x[unseen, :cfg.latent] = align_latent(x[unseen, :cfg.latent], latent_moments(z_train), latent_moments(z_target))
        out["adaptation"] = gate
        keep("deepsalt_adapted", predict(stu, x, ctx)[0])
    # Classical baselines on the same inputs as the full student: scaled bands + covariates.
    x_base = np.concatenate([data.sat_x, data.sat_cov], 1)
    tr = data.idx("sat", "train")
    for b in BASELINES:
        keep(b, ev.fit_baseline(b, x_base[tr], data.sat_y[tr], seed, cfg.out_range, log=get_target(cfg.target).log,
                                groups=data.sat_block[tr])(x_base))
    lat, lon = meta["latitude"].to_numpy(), meta["longitude"].to_numpy()
    out.update(_applicability(data, cfg, models, seed, ctx))
    for b in LOCATION_BASELINES:  # location alone: how much of the test is interpolation
        keep(b, ev.fit_location_baseline(b, lat[tr], lon[tr], data.sat_y[tr], seed, cfg.out_range,
                                         log=get_target(cfg.target).log)(lat, lon))
    p = out["predictions"]["deepsalt"]
    y = data.sat_y
    # DeepSalt minus each other model on the same sites, with a bootstrap interval over the sites
    out["paired"] = {v: {region: ev.paired_mae_difference(y[idx], p[idx], out["predictions"][v][idx], seed)
                         for region, idx in (("seen", seen_test), ("unseen", unseen))}
                     for v in out["predictions"] if v != "deepsalt"}
    target = get_target(cfg.target)
    out["categories"] = {"value_range": ev.by_category(y[seen_test], p[seen_test], target.range_class(y[seen_test]))}
    for col in ("texture_class", "koppen"):  # where the site table carries them (a site without one: "unknown")
        if col in meta:
            cats = meta[col].astype(object).where(meta[col].notna(), "unknown").astype(str).to_numpy(dtype=object)
            out["categories"][col] = ev.by_category(y[seen_test], p[seen_test], cats[seen_test])
    z_lab = encode(models["sau_ftir"], data.lab_x, ctx)
    tp, _ = predict(models["teacher"], z_lab, ctx)
    lt, lu = data.idx("lab", "test"), data.idx("lab", "unseen")
    out["teacher_lab"] = {"seen": ev.metrics(data.lab_y[lt], tp[lt]), "unseen": ev.metrics(data.lab_y[lu], tp[lu])}
    # the distillation targets' quality: the teacher fed the aligned EnMAP latent of the satellite test sites
    tsat, _ = predict(models["teacher"], encode(models["sau_enmap"], data.sat_x, ctx), ctx)
    out["teacher_enmap"] = {"seen": ev.metrics(data.sat_y[seen_test], tsat[seen_test]),
                            "unseen": ev.metrics(data.sat_y[unseen], tsat[unseen])}
    li, sj, km = data.pairs
    cos_before = ev.cosine_rows(encode(models["ae_ftir"], data.lab_x[li], ctx), encode(models["ae_enmap"], data.sat_x[sj], ctx))
    cos_after = ev.cosine_rows(encode(models["sau_ftir"], data.lab_x[li], ctx), encode(models["sau_enmap"], data.sat_x[sj], ctx))
    out["alignment"] = {"n_pairs": int(len(li)), "n_transfer": int(len(data.transfer_lab)),
                        "pair_km_median": float(np.median(km)) if len(km) else float("nan"),
                        "pair_km_p90": float(np.percentile(km, 90)) if len(km) else float("nan"),
                        "cosine_before": float(cos_before.mean()) if len(li) else float("nan"),
                        "cosine_after": float(cos_after.mean()) if len(li) else float("nan")}
    return out


def _applicability(data: TrainingData, cfg: TrainConfig, models: dict, seed: int, ctx) -> dict:
    """The DeepSalt student's calibrated 90 % interval (split conformal on the validation blocks) and its area of
    applicability (threshold from a cross-validation over the training blocks), scored on the test sites."""
    import torch

    from deepsalt.models import applicability as ap
    from deepsalt.train.stages import predict, student_features

    stu = models["student:deepsalt"]
    x = torch.as_tensor(student_features(data, models, "deepsalt", ctx))
    pred, sd = (t.numpy() for t in ap.mc_dropout(stu, x, cfg.mc_samples, seed))
    y, val, tr = data.sat_y, data.idx("sat", "val"), data.idx("sat", "train")
    regions = {"seen": data.idx("sat", "test"), "unseen": data.idx("sat", "unseen")}
    xs = ((x - stu.in_shift) / stu.in_scale).numpy()[:, :stu.body_dim]  # the DI's space: what the body reads
    # CV folds for the AOA threshold: the training blocks, shuffled (seeded) into at most 5 folds
    blocks = data.sat_block[tr]
    fold_of = {b: i % 5 for i, b in enumerate(np.random.default_rng(seed).permutation(np.unique(blocks)))}
    consts = ap.fit_aoa(xs[tr], np.array([fold_of[b] for b in blocks]), seed)
    di = ap.dissimilarity(torch.as_tensor(xs), torch.as_tensor(xs[tr]), consts["mean_distance"]).numpy()
    aoa = {"threshold": consts["threshold"], **{region: ap.aoa_metrics(y[idx], pred[idx], di[idx], consts["threshold"])
                                                  for region, idx in regions.items()}}
    log_space = get_target(cfg.target).log
    iv = ap.choose_interval(y[val], pred[val], sd[val], di[val], log=log_space)
    form = {"q": iv["q"], "scaled": iv["scaled"], "di_slope": iv["di_slope"], "log": log_space}
    calibration = {"q": iv["q"], "mc_scaled": float(iv["scaled"]), "di_slope": iv["di_slope"], "n_val": int(len(val)),
                   "coverage90_val": ap.coverage(y[val], pred[val], sd[val], di=di[val], **form)}
    for region, idx in regions.items():
        lo, hi = ap.interval(pred[idx], sd[idx], di=di[idx], **form)
        calibration[region] = {"coverage90": ap.coverage(y[idx], pred[idx], sd[idx], di=di[idx], **form),
                               "width_ratio_median": float(np.median(hi / lo)) if len(idx) and log_space else float("nan"),
                               "width_median": float(np.median(hi - lo)) if len(idx) else float("nan")}
    # exceedance probabilities from the same predictive distribution; the decision probability per threshold is the
    # best F1 on the validation sites, then scored on the test sites
    thresholds = get_target(cfg.target).thresholds
    prob = ap.exceedance(pred, sd, thresholds, di=di, **form)
    decision = ap.choose_decision(y[val], prob[:, val], thresholds)
    dec = np.array([decision[f"{t:g}"] for t in thresholds])[:, None]
    exceed = {"decision": decision}
    for region, idx in {"val": val, **regions}.items():
        exceed[region] = {"classes": {f"{t:g}": ap.class_figures(y[idx] > t, prob[i, idx] >= dec[i, 0], prob[i, idx])
                                      for i, t in enumerate(thresholds)},
                          "reliability": ap.reliability(y[idx], prob[:, idx], thresholds)}
    extras = {"interval90": {"q": iv["q"], "scaled": bool(iv["scaled"]), "di_slope": iv["di_slope"], "level": ap.LEVEL,
                             "exceedance_decision": decision,
                             "mc_samples": cfg.mc_samples, "n_val": int(len(val)),
                             "log": log_space,
                             "method": f"split conformal on the validation blocks, {'ln ' if log_space else ''}{get_target(cfg.target).name}; "
                             "scaled: by the MC-dropout sd (in log units for a log target), else one width (the narrower "
                             "on validation); either times 1 + di_slope * DI"},
              "aoa": consts, "reference": xs[tr]}
    return {"calibration": calibration, "aoa": aoa, "exceedance": exceed, "bundle_extras": extras}


def train(inputs, out: str | Path, cfg: TrainConfig, log=print) -> dict:
    """Train every seed on ``inputs`` (a ``train.data.TrainInputs``, or a world folder), evaluate, write
    RUN/{config.json, inputs.json, metrics.json, report/, bundle/}."""
    from deepsalt.train.data import TrainInputs

    inputs = inputs if isinstance(inputs, TrainInputs) else TrainInputs.world(inputs)
    from deepsalt.data.covariates import COVARIATES
    from deepsalt.models.bundle import DeepSaltBundle
    from deepsalt.train.report import write_report

    out_url = str(out)
    remote = "://" in out_url
    # A remote run folder (s3://...) is written locally and uploaded when complete; its Ray Train
    # checkpoints go straight to the remote storage, so a run resumes from any machine.
    out = Path(tempfile.mkdtemp(prefix="deepsalt-run-")) if remote else Path(out_url)
    storage = f"{out_url.rstrip('/')}/ray" if remote else str(out / "ray")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    (out / "inputs.json").write_text(json.dumps(redact(dataclasses.asdict(inputs)), indent=2) + "\n")
    if remote:
        _upload(out / "config.json", f"{out_url.rstrip('/')}/config.json")
        _upload(out / "inputs.json", f"{out_url.rstrip('/')}/inputs.json")
    per_seed, t0 = [], time.time()
    for seed in cfg.seeds:
        data = load_training_data(inputs, cfg, seed)
        init_ray()  # after the inputs are read and checked: a bad input stops before Ray starts
        log(f"seed {seed}: {data.info['n_lab']} lab samples, {data.info['n_sat']} sites, {data.info['n_pairs']} pairs, "
            f"{data.info['n_transfer']} transfer pixels; training on "
            f"{cfg.workers} worker(s){' with GPU' if cfg.gpu else ''}")
        state = fit_seed(data, cfg, seed, storage, log=log)
        res = evaluate_seed(data, cfg, state, seed)
        res["split"] = data.info["split"]
        log(f"seed {seed}: DeepSalt seen MAE {res['results']['deepsalt']['seen']['mae']:.3f} {get_target(cfg.target).units} "
            f"R2 {res['results']['deepsalt']['seen']['r2']:.3f} ({time.time() - t0:.0f} s)")
        per_seed.append(res)
        if seed == cfg.seeds[0]:
            DeepSaltBundle.create(state["models"]["sau_enmap"], state["models"]["student:deepsalt"], cfg=cfg,
                                  scalers={k: v for k, v in data.scalers.items() if k != "ftir"},
                                  band_names=data.band_names, band_centers=data.band_centers,
                                  covariates={c.name: c.units for c in COVARIATES}, data_hash=data.data_hash,
                                  seed=seed, **res["bundle_extras"]).save(str(out / "bundle"))
            first = (data, res, state["history"])
        res.pop("bundle_extras")  # the training sites' inputs: needed for the bundle only
    metrics = {"seeds": list(cfg.seeds), "target": get_target(cfg.target).to_dict(), "data_hash": first[0].data_hash,
               "kd_targets": cfg.kd.targets,
               "teacher_lab": ev.aggregate([r["teacher_lab"] for r in per_seed]),
               "teacher_enmap": ev.aggregate([r["teacher_enmap"] for r in per_seed]),
               "alignment": ev.aggregate([r["alignment"] for r in per_seed]),
               "results": {v: ev.aggregate([r["results"][v] for r in per_seed]) for v in per_seed[0]["results"]},
               "categories": ev.aggregate([r["categories"] for r in per_seed]),
               # paired by seed (same split, same test sites): DeepSalt's MAE minus each variant's; < 0: DeepSalt better
               "calibration": ev.aggregate([r["calibration"] for r in per_seed]),
               # P(value > threshold) on the sites: calls at the decision probability chosen on the validation sites
               # (per seed: exceedance_per_seed), and its reliability (Brier skill against the base rate; deciles per seed)
               "exceedance": ev.aggregate([r["exceedance"] for r in per_seed]),
               "exceedance_per_seed": [r["exceedance"] for r in per_seed],
               # the unseen region's MAE over the seen test's, per seed then averaged (goal <= 1.5)
               "unseen_over_seen_mae": _ratio(per_seed, "mae"),
               # the same for the MAE of ln ECe, which does not grow with the region's salinity level
               "unseen_over_seen_mae_ln": _ratio(per_seed, "mae_ln"),
               "aoa": ev.aggregate([r["aoa"] for r in per_seed]),
               "protocol": _protocol(cfg, per_seed),
               "deepsalt_minus": ev.aggregate([{v: {region: {"mae": r["results"]["deepsalt"][region]["mae"] - r["results"][v][region]["mae"]}
                                                    for region in ("seen", "unseen")} for v in r["results"] if v != "deepsalt"}
                                               for r in per_seed]),
               # the same per seed, with each seed's 95 % bootstrap interval over its test sites
               "deepsalt_minus_per_seed": {v: {region: [r["paired"][v][region] for r in per_seed] for region in ("seen", "unseen")}
                                           for v in per_seed[0]["paired"]},
               # each seed's MAE and MAE of ln values per model and region, to pair runs that differ in one setting
               "per_seed": {v: {region: {m: [r["results"][v][region][m] for r in per_seed] for m in ("mae", "mae_ln")}
                                for region in ("seen", "unseen")} for v in per_seed[0]["results"]},
               # whether each seed's student was adapted to the held-out region (models/adaptation.adaptation_gate)
               "adaptation": [r.get("adaptation") for r in per_seed],
               "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out / "report", metrics, *first)
    if remote:
        _upload(out, out_url)
        shutil.rmtree(out, ignore_errors=True)
    return metrics


def _ratio(per_seed: list[dict], metric: str) -> dict:
    """The unseen region's ``metric`` over the seen test's, per seed then aggregated, unadapted and adapted."""
    return ev.aggregate([{v: r["results"][v]["unseen"][metric] / r["results"][v]["seen"][metric]
                          for v in ("deepsalt", "deepsalt_adapted") if v in r["results"]} for r in per_seed])


def _protocol(cfg: TrainConfig, per_seed: list[dict]) -> dict:
    """How the numbers were obtained, so that a reader can check that no test site chose anything."""
    return {
        "split": "square spatial blocks of the seen region, whole blocks to train/val/test; lab samples by the same "
                 "blocks (teacher, SAU pairs and transfer set use training blocks only); the held-out region is never trained on",
        "block_km": [r["split"]["block_km"] for r in per_seed],
        "variogram_range_km": [r["split"].get("variogram", {}).get("range_km") for r in per_seed],
        "test_to_train_km_median": [r["split"].get("test_to_train_km_median") for r in per_seed],
        "early_stopping": "validation blocks",
        "interval_calibration": "validation blocks (split conformal)",
        "aoa_threshold": "cross-validation over the training blocks",
        "hyper_parameters": f"the '{cfg.preset}' preset's fixed values, chosen during development on other worlds; "
                            "nothing is tuned on this run's test blocks or held-out region",
    }


def _upload(local: Path, url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if local.is_dir():
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(f), f"{path.rstrip('/')}/{f.relative_to(local).as_posix()}")
    else:
        fs.put_file(str(local), path)
