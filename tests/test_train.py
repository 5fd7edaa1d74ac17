"""Ray Train end to end on the tiny world, against the Ray head that scripts/services.sh started."""

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import load as load_file_bytes
from safetensors.torch import load_file

from deepsalt.config import TrainConfig
from deepsalt.models.bundle import DeepSaltBundle
from deepsalt.train.run import _latest_checkpoint, train
from deepsalt.train.stages import load_state

from conftest import FAST


@pytest.fixture(scope="module")
def run(trained):
    return trained


def test_run_writes_metrics_report_and_bundle(run):
    out, metrics = run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["seeds"] == [0]
    expected = {"deepsalt", "student_no_kd", "student_no_sau", "hsi_only", "ancillary_only", "lab_labels", "plsr", "random_forest",
                "nn_label", "kriging", "deepsalt_adapted"}
    assert set(on_disk["results"]) == expected
    # the held-out region's adaptation changes the unseen predictions only
    assert on_disk["results"]["deepsalt_adapted"]["seen"] == on_disk["results"]["deepsalt"]["seen"]
    assert set(on_disk["unseen_over_seen_mae"]) >= {"deepsalt", "deepsalt_adapted"}
    # applied only where the gate said so; otherwise the adapted student is the student, unseen too
    (gate,) = on_disk["adaptation"]
    assert gate["applied"] == (on_disk["results"]["deepsalt_adapted"]["unseen"] != on_disk["results"]["deepsalt"]["unseen"])
    assert on_disk["per_seed"]["deepsalt"]["unseen"]["mae"] == [on_disk["results"]["deepsalt"]["unseen"]["mae"]]
    # calibrated interval and area of applicability, seen and unseen, and the protocol that produced them
    for region in ("seen", "unseen"):
        assert 0 <= on_disk["calibration"][region]["coverage90"] <= 1
        a = on_disk["aoa"][region]
        assert 0 <= a["inside_fraction"] <= 1 and a["n_inside"] + a["n_outside"] == r_n(on_disk, region)
    assert on_disk["calibration"]["coverage90_val"] >= 0.85  # conformal: at least nominal on its own sites
    b = json.loads((out / "bundle" / "bundle.json").read_text())
    assert b["interval90"]["q"] == pytest.approx(on_disk["calibration"]["q"]) and b["aoa"]["threshold"] == pytest.approx(on_disk["aoa"]["threshold"])
    # ln-space skill, rank and class figures on the test sites; exceedance calls at the decision probability chosen on
    # the validation sites, and their reliability on the validation and test sites
    seen = on_disk["results"]["deepsalt"]["seen"]
    assert {"r2_ln", "spearman"} <= set(seen) and set(seen["classes"]) == {"4", "8", "16"}
    ex = on_disk["exceedance_per_seed"][0]
    assert set(ex["decision"]) == {"4", "8", "16"} and all(0.05 <= p <= 0.95 for p in ex["decision"].values())
    assert b["interval90"]["exceedance_decision"] == ex["decision"]
    for region in ("val", "seen", "unseen"):
        rel = ex[region]["reliability"]["4"]
        assert sum(d["n"] for d in rel["deciles"]) == ex[region]["classes"]["4"]["n"] and 0 <= rel["base_rate"] <= 1
    assert on_disk["protocol"]["block_km"][0] > 0 and on_disk["protocol"]["early_stopping"] == "validation blocks"
    for v, r in on_disk["results"].items():
        for region in ("seen", "unseen"):
            assert {"mae", "rmse", "r2", "mape", "mae_sd"} <= set(r[region]), (v, region)
            assert np.isfinite(r[region]["mae"])
        # defect 5: the unseen-region evaluation must really run, on real samples
        assert r["unseen"]["n"] > 0 and r["seen"]["n"] > 0
    assert on_disk["alignment"]["n_pairs"] > 0 and on_disk["alignment"]["n_transfer"] > 0
    assert {"teacher_lab", "teacher_enmap", "categories"} <= set(on_disk)
    r = on_disk["results"]
    for v in expected - {"deepsalt"}:  # paired by seed: with one seed, exactly the difference of the two MAEs
        assert on_disk["deepsalt_minus"][v]["seen"]["mae"] == pytest.approx(r["deepsalt"]["seen"]["mae"] - r[v]["seen"]["mae"])
        (one,) = on_disk["deepsalt_minus_per_seed"][v]["seen"]  # per seed, with a bootstrap interval over the sites
        assert one["mae_diff"] == pytest.approx(r["deepsalt"]["seen"]["mae"] - r[v]["seen"]["mae"])
        assert one["ci95_lo"] <= one["mae_diff"] <= one["ci95_hi"] and one["n"] == r[v]["seen"]["n"]
    assert on_disk["kd_targets"] == "paired_lab"
    assert (out / "report" / "evaluation.png").stat().st_size > 10_000
    assert "Students and baselines" in (out / "report" / "summary.md").read_text()
    assert json.loads((out / "config.json").read_text())["ae"]["epochs"] == 3


def r_n(metrics: dict, region: str) -> int:
    return metrics["results"]["deepsalt"][region]["n"]


def test_training_prints_progress_per_stage(run):
    """Every stage of every seed ends with one progress line from the driver (rank 0's reports)."""
    from conftest import TRAIN_LOG
    from deepsalt.train.stages import stage_list

    cfg = TrainConfig.for_preset("tiny", **FAST)
    stages = stage_list(cfg)
    ends = [line for line in TRAIN_LOG if line.startswith("seed 0: [") and "ETA" not in line]
    assert len(ends) == len(stages), TRAIN_LOG
    for i, ((name, epochs), line) in enumerate(zip(stages, ends), 1):
        assert f"[{i}/{len(stages)}] {name} epoch " in line, line
        done = int(line.split(" epoch ")[1].split("/")[0])
        assert f"/{epochs}" in line and (done == epochs or "(early stop)" in line), line


def test_alignment_changes_the_encoder_and_the_bundle_carries_the_aligned_one(run):
    # defect 1: aligned weights were saved but never loaded downstream
    out, metrics = run
    state = load_state(_latest_checkpoint(out / "ray" / "seed0"))
    enc = {k.removeprefix("encoder."): v for k, v in load_file(out / "bundle" / "weights.safetensors").items() if k.startswith("encoder.")}
    for k, v in enc.items():
        assert torch.equal(v, state["models"]["sau_enmap"][k]), k
    assert any(not torch.equal(state["models"]["sau_enmap"][k], state["models"]["ae_enmap"][k]) for k in enc)
    assert metrics["alignment"]["cosine_after"] > metrics["alignment"]["cosine_before"]
    b = DeepSaltBundle.load(str(out / "bundle"))
    assert b.meta["data_hash"] == metrics["data_hash"] and len(b.band_names) == 218


def test_the_bundle_on_raw_pixels_predicts_what_the_evaluation_scored(world, run):
    """Defects 6 and 1 end to end: the bundle fed raw site reflectance and raw covariates, as the mapping feeds
    it, must give the evaluation's predictions for those sites. A scaler fitted or applied differently in
    training than in the bundle, or an evaluation on another encoder than the bundle's, breaks the equality."""
    import pandas as pd

    from deepsalt.data.covariates import COVARIATE_NAMES
    from deepsalt.train.data import load_training_data
    from deepsalt.train.stages import Ctx, build_models, predict, student_features

    out, _ = run
    cfg = TrainConfig.for_preset("tiny", **FAST)
    data = load_training_data(world, cfg, 0)
    models = build_models(cfg, data.lab_x.shape[1], data.sat_x.shape[1])
    for k, sd in load_state(_latest_checkpoint(out / "ray" / "seed0"))["models"].items():
        models[k].load_state_dict(sd)
    scored, _ = predict(models["student:deepsalt"], student_features(data, models, "deepsalt", Ctx()), Ctx())
    sat = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    raw = sat[[f"refl_{b}" for b in data.band_names]].to_numpy(np.float32)
    cov = sat[list(COVARIATE_NAMES)].to_numpy(np.float32)
    ok = np.isfinite(raw).all(1) & np.isfinite(cov).all(1)
    mapped, _ = DeepSaltBundle.load(str(out / "bundle")).predict(raw[ok], cov[ok])
    assert len(mapped) == len(scored) > 100
    np.testing.assert_allclose(mapped, scored, rtol=1e-4, atol=1e-4)


def test_resuming_a_checkpoint_made_for_another_output_range_is_refused(world, run, tmp_path):
    """Defect 7 on the resume path: the heads' out_range buffers would be copied silently into another range."""
    import shutil

    from deepsalt.errors import DeepSaltInputError
    from deepsalt.train.data import load_training_data
    from deepsalt.train.run import fit_seed

    out, _ = run
    shutil.copytree(out / "ray" / "seed0", tmp_path / "seed0")
    cfg = TrainConfig.for_preset("tiny", **{**FAST, "out_range": (0.05, 40.0)})
    with pytest.raises(DeepSaltInputError, match=r"trained for output range \[0\.05.*77\.0\] dS m-1, this run asks for \[0\.05, 40\.0\]"):
        fit_seed(load_training_data(world, cfg, 0), cfg, 0, str(tmp_path))


def _flat(d: dict, prefix: str = "") -> dict:
    """{"a.b.c": number} of a nested metrics dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def test_killed_run_on_s3_resumes_from_its_last_checkpoint(world, run, s3_bucket, monkeypatch, tmp_path):
    """With no restarts allowed (--max-failures 0) a lost worker stops the run with one line that says how to
    resume; the same command then resumes from the last checkpoint and gives exactly the uninterrupted run's model."""
    from deepsalt.errors import DeepSaltRunError

    ref_dir, ref = run  # the same config as the shared `trained` run: the uninterrupted reference
    cfg = TrainConfig.for_preset("tiny", **FAST, max_failures=0)
    url = f"s3://{s3_bucket}/run"
    monkeypatch.setenv("DEEPSALT_FAIL_AT", "teacher:3")  # the worker process dies mid-teacher, once
    monkeypatch.setenv("DEEPSALT_FAIL_MARKER", str(tmp_path / "failed-once"))  # "once": this test's run, not an earlier one
    with pytest.raises(DeepSaltRunError, match=r"training of seed 0: stopped after 0 restart\(s\) of lost workers .*"
                                               r"run the same command again: it resumes from the last checkpoint") as failure:
        train(world, url, cfg, log=lambda *_: None)
    assert "\n" not in str(failure.value)
    assert _latest_checkpoint(f"{url}/ray/seed0") is not None
    resumed = train(world, url, cfg, log=lambda *_: None)
    state = load_state(_latest_checkpoint(f"{url}/ray/seed0"))
    stages = [h["stage"] for h in state["history"]]
    assert stages.count("ae") == 3  # the auto-encoder stage was not run again
    # data order and dropout depend on (seed, stage, epoch) only: where the run resumed cannot show. The weights are
    # equal bit for bit; the metrics up to the order of float sums in the evaluation (1e-12 relative)
    fs, path = fsspec.core.url_to_fs(url)
    got = load_file_bytes(fs.cat_file(f"{path}/bundle/weights.safetensors"))
    want = load_file(str(ref_dir / "bundle" / "weights.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    flat_got, flat_want = _flat(resumed["results"]), _flat(ref["results"])
    assert sorted(flat_got) == sorted(flat_want)
    assert all(flat_got[k] == flat_want[k] or (np.isnan(flat_got[k]) and np.isnan(flat_want[k]))
               or flat_got[k] == pytest.approx(flat_want[k], rel=1e-12, abs=1e-12) for k in flat_want), \
        {k: (flat_got[k], flat_want[k]) for k in flat_want if flat_got[k] != flat_want[k]}
    # the whole run folder is on S3, and the bundle loads from there
    assert {"config.json", "metrics.json", "report", "bundle", "ray"} <= {p.rsplit("/", 1)[-1] for p in fs.ls(path)}
    assert DeepSaltBundle.load(f"{url}/bundle").meta["data_hash"] == ref["data_hash"]


def test_two_workers_train_to_comparable_quality(world, tmp_path, run):
    _, one = run
    # DeepSalt's student alone (the ablations train the same way, and the shared run trains them all)
    two = train(world, tmp_path / "two", TrainConfig.for_preset("tiny", workers=2, **FAST, variants=("deepsalt",)), log=lambda *_: None)
    assert two["results"]["deepsalt"]["seen"]["n"] == one["results"]["deepsalt"]["seen"]["n"]
    assert abs(two["results"]["deepsalt"]["seen"]["mae"] - one["results"]["deepsalt"]["seen"]["mae"]) < 0.5


def test_a_checkpoint_cut_short_is_passed_over_for_the_one_before(run, tmp_path):
    """A kill while Ray Train copies a checkpoint into storage leaves a state file without its end: resuming (and
    anyone watching the run) takes the newest whole one instead of failing on the torn file."""
    out, _ = run
    src = Path(_latest_checkpoint(out / "ray" / "seed0"))
    runs = tmp_path / "seed0"
    shutil.copytree(src, runs / "checkpoint_000001")
    torn = runs / "checkpoint_000002"
    torn.mkdir()
    whole = (src / "state.pt").read_bytes()
    (torn / "state.pt").write_bytes(whole[: len(whole) // 2])
    assert _latest_checkpoint(runs) == str(runs / "checkpoint_000001")
    load_state(_latest_checkpoint(runs))  # loads
    (torn / "state.pt").write_bytes(whole)
    assert _latest_checkpoint(runs) == str(torn)


def test_the_trainer_starts_no_cleaner_and_no_dataset_actor_unless_given_datasets():
    """Ray Train 2.60 starts a Ray Data actor per worker group for the trainer's ``datasets`` (its DatasetsCallback),
    with or without any, and a detached placement-group cleaner per fit: DeepSalt's trainer drops the cleaner, and the
    Ray Data actor when there are no datasets. Fails if a Ray release moves or renames what the override relies on."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from deepsalt.train.run import _trainer_class

    def loop(config):
        pass

    kw = dict(scaling_config=ray.train.ScalingConfig(num_workers=1))
    names = lambda t: [type(c).__name__ for c in t._create_default_callbacks()]  # noqa: E731
    stock, ours = names(TorchTrainer(loop, **kw)), names(_trainer_class()(loop, **kw))
    dropped = {DatasetsCallback.__name__, PlacementGroupCleanerCallback.__name__}
    assert dropped <= set(stock) and ours == [n for n in stock if n not in dropped], (stock, ours)
    given = names(_trainer_class()(loop, datasets={"x": lambda: None}, **kw))  # given datasets, their actor stays
    assert given == [n for n in stock if n != PlacementGroupCleanerCallback.__name__], (stock, given)
