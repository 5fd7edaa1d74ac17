"""Models, losses and the bundle; one test per defect listed in DESIGN.md where it lives here."""

import numpy as np
import pytest
import torch

from deepsalt.config import TrainConfig
from deepsalt.models.autoencoder import SparseAutoEncoder, alignment_loss, kl_sparsity
from deepsalt.models.bundle import DeepSaltBundle
from deepsalt.models.losses import check_layer_map, distillation_loss, response_kl
from deepsalt.models.scalers import Projection, Scaler
from deepsalt.models.transformer import SpectralTransformer
from deepsalt.errors import DeepSaltInputError
from deepsalt.train.data import spatial_split, undersample_zero_ec
from deepsalt.evaluation import aggregate, by_category, fit_location_baseline, metrics, paired_mae_difference
from deepsalt.models.transformer import build_student


def test_kl_sparsity_is_nonzero_with_gradient_and_refuses_scalar_outputs():
    # defect 2: KL on (B, 1) outputs (softmax of one element) was identically 0
    z = torch.full((16, 8), 0.5, requires_grad=True)
    kl = kl_sparsity(z, 0.05)
    assert kl.item() > 1.0
    kl.backward()
    assert z.grad.abs().sum() > 0
    assert kl_sparsity(torch.full((16, 8), 0.05), 0.05).item() == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="batch, units>=2"):
        kl_sparsity(torch.rand(16, 1))


def test_alignment_losses():
    a = torch.rand(8, 64)
    assert alignment_loss(a, a).item() == pytest.approx(0, abs=1e-6)
    assert alignment_loss(a, torch.rand(8, 64)).item() > 0
    assert alignment_loss(a, a, "infonce").item() < alignment_loss(a, a.flip(0), "infonce").item()


def test_response_term_is_nonzero_and_passes_gradient():
    s = torch.tensor([1.0, 5.0], requires_grad=True)
    r = response_kl(s, torch.tensor([2.0, 5.0]))
    assert r.item() > 0
    r.backward()
    assert s.grad[0] < 0 and s.grad[1] == 0  # pulls the first prediction up towards the teacher


def test_distillation_terms_only_where_the_teacher_has_targets():
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(4, generator=g) * 5 + 0.5).requires_grad_()
    feats = [torch.randn(4, 72, generator=g, requires_grad=True) for _ in range(4)]
    t_pred, t_feats = torch.rand(4, generator=g) * 5 + 0.5, [torch.randn(4, 64, generator=g) for _ in range(3)]
    y = torch.rand(4, generator=g) * 5
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # garbage targets on the masked-out samples change nothing
    t_pred2, t_feats2 = t_pred.clone(), [f.clone() for f in t_feats]
    t_pred2[2:], t_feats2[0][2:] = 70.0, 1e3
    a, pa = distillation_loss(pred, feats, y, t_pred, t_feats, mask=mask)
    b, pb = distillation_loss(pred, feats, y, t_pred2, t_feats2, mask=mask)
    assert torch.allclose(a, b) and pa["response"] > 0 and pa["feature"] > 0
    a.backward()
    assert feats[0].grad[2:].abs().sum() == 0 and feats[0].grad[:2].abs().sum() > 0
    # without a mask every sample counts
    c, _ = distillation_loss(pred, feats, y, t_pred2, t_feats2)
    assert c > a
    # transfer-set rows have no field label: a task mask keeps their (placeholder) y out of the task term
    y2 = y.clone()
    y2[3] = 70.0
    tm = torch.tensor([1.0, 1.0, 1.0, 0.0])
    _, pt = distillation_loss(pred, feats, y, t_pred, t_feats, mask=mask, task_mask=tm)
    _, pt2 = distillation_loss(pred, feats, y2, t_pred, t_feats, mask=mask, task_mask=tm)
    assert pt["task"] == pytest.approx(pt2["task"]) and pt["task"] == pytest.approx(
        torch.nn.functional.huber_loss(pred[:3], y[:3]).item())


def test_paired_lab_targets_come_from_the_paired_lab_samples():
    from types import SimpleNamespace

    from deepsalt.train.stages import Ctx, build_models, distillation_targets, encode, predict

    cfg = TrainConfig.for_preset("tiny", ae={"hidden": (16,)}, variants=("deepsalt",))
    rng = np.random.default_rng(0)
    data = SimpleNamespace(lab_x=rng.random((10, 30), dtype=np.float32), sat_x=rng.random((6, 20), dtype=np.float32),
                           sat_y=np.ones(6, np.float32), pairs=(np.array([7, 2]), np.array([4, 1]), np.array([0.1, 0.3])))
    models = build_models(cfg, 30, 20)
    ctx = Ctx()
    pred, feats, mask = distillation_targets(data, models, "deepsalt", "paired_lab", ctx)
    np.testing.assert_array_equal(mask, [0, 1, 0, 0, 1, 0])
    t, tf = predict(models["teacher"], encode(models["sau_ftir"], data.lab_x[[7, 2]], ctx), ctx)
    np.testing.assert_allclose(pred[[4, 1]], t, rtol=1e-6)
    np.testing.assert_allclose(feats[-1][[4, 1]], tf[-1], rtol=1e-6)
    pred, _, mask = distillation_targets(data, models, "deepsalt", "aligned_enmap", ctx)
    assert mask.all() and pred.shape == (6,)


def test_every_student_layer_gets_a_teacher_layer():
    # defect 4: 3 weights for 4 student layers left the deepest layer without signal
    with pytest.raises(ValueError, match="student has 4 layers, layer_map has 3, weights has 3"):
        check_layer_map(4, 3, (0, 1, 2), (1.35, 1.05, 0.65))
    with pytest.raises(ValueError, match="teacher layers \\[3\\]"):
        check_layer_map(4, 3, (0, 1, 2, 3), (1, 1, 1, 1))
    student, teacher = SpectralTransformer(72, 72, 8, 4, 256, 0.0), SpectralTransformer(64, 64, 4, 3, 128, 0.0)
    x = torch.rand(6, 72)
    ps, fs = student(x)
    pt, ft = teacher(x[:, :64])
    loss, parts = distillation_loss(ps, fs, torch.rand(6) * 10, pt, ft)
    loss.backward()
    deepest = student.layers[3].linear2.weight.grad
    assert deepest is not None and deepest.abs().sum() > 0
    assert parts["feature"] > 0 and parts["response"] >= 0
    # the feature term alone must reach the deepest layer: the task and response terms reach it through the
    # head anyway, so the check above would pass with layer 4's feature term skipped
    student.zero_grad()
    ps, fs = student(x)
    feat_only, _ = distillation_loss(ps, fs, torch.rand(6) * 10, pt, ft, alpha=0.0, gamma=0.0)
    feat_only.backward()
    assert student.layers[3].linear2.weight.grad.abs().sum() > 0


def test_tokenisations_and_output_range():
    for tokens in ("one", "per_dim"):
        m = SpectralTransformer(72, 72, 8, 2, 64, 0.1, (0.05, 77.0), tokens)
        pred, feats = m(torch.randn(5, 72) * 100)
        assert pred.shape == (5,) and len(feats) == 2 and feats[0].shape == (5, 72)
        assert (pred >= 0.05).all() and (pred <= 77.0).all()


def test_input_standardisation_is_fitted_and_saved_with_the_weights():
    # sigmoid codes: a common offset with ~1e-2 spread, which the transformer must see standardised
    x = 0.05 + 0.01 * torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    m = SpectralTransformer(6, 8, 2, 1, 16, 0.0)
    m.fit_input_norm(x)
    z = (x - m.in_shift) / m.in_scale
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5) and torch.allclose(z.std(0), torch.ones(6), atol=1e-4)
    m2 = SpectralTransformer(6, 8, 2, 1, 16, 0.0)
    assert not torch.allclose(m2.eval()(x)[0], m.eval()(x)[0])
    m2.load_state_dict(m.state_dict())  # the buffers travel in the state dict, hence in checkpoints and the bundle
    assert torch.equal(m2.eval()(x)[0], m.eval()(x)[0])


def test_auto_encoder_read_out_makes_the_code_carry_the_target():
    # a weak, low-variance target direction among strong nuisance variation (like salt among minerals)
    g = torch.Generator().manual_seed(0)
    n, d = 512, 40
    target = torch.randn(n, generator=g)
    x = torch.sigmoid(torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g) + 0.05 * target[:, None] * torch.randn(1, d, generator=g))
    r2 = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        ae = SparseAutoEncoder(d, (32,), 8)
        opt = torch.optim.Adam(ae.parameters(), 3e-3)
        for _ in range(300):
            z, xh = ae(x)
            loss = torch.nn.functional.mse_loss(xh, x) + w * torch.nn.functional.mse_loss(ae.aux(z).squeeze(-1), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        z = ae.encode(x).detach()
        zz = torch.cat([z, torch.ones(n, 1)], 1)
        coef = torch.linalg.lstsq(zz, target[:, None]).solution
        r2[w] = 1 - float(((zz @ coef).squeeze() - target).pow(2).mean() / target.var())
    assert r2[1.0] > 0.8 and r2[1.0] > r2[0.0] + 0.2, r2


def test_metrics_score_each_sample_with_its_own_prediction():
    # defect 5: per-category metrics scored every sample with the batch's last prediction
    y = np.array([1.0, 2.0, 10.0, 20.0])
    p = np.array([1.0, 2.0, 10.0, 20.0])
    cats = by_category(y, p, np.array(["a", "a", "b", "b"]))
    assert cats["a"]["mae"] == 0 and cats["b"]["mae"] == 0
    with pytest.raises(ValueError, match="every sample needs its own prediction"):
        metrics(y, p[-1:])


def test_scaler_fitted_on_raw_training_values():
    # defect 6: scaler fitted on scaled data in one place and fed raw data in another
    raw = np.array([[0.1, 10.0], [0.3, 30.0]])
    s = Scaler.fit(raw, "minmax")
    np.testing.assert_allclose(s.transform(raw), [[0, 0], [1, 1]])
    s2 = Scaler.from_dict(s.to_dict())
    np.testing.assert_allclose(s2.transform(np.array([[0.2, 20.0]])), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="expects 2 features"):
        s.transform(np.zeros((1, 3)))


def test_positional_indices_and_seeded_undersampling():
    # defect 8: labels used as positions after rows were dropped; unseeded undersampling
    y = np.array([0.05] * 50 + [3.0] * 50)
    idx = np.arange(100)
    a = undersample_zero_ec(y, idx, 0.1, 0.1, seed=3)
    assert np.array_equal(a, undersample_zero_ec(y, idx, 0.1, 0.1, seed=3))
    assert (y[a] >= 0.1).sum() == 50 and 0 < (y[a] < 0.1).sum() < 15
    # rows dropped: positions are no longer 0..n-1, and position i of ``idx`` is not row i of ``y``
    gaps = np.arange(1, 100, 2)  # 25 low rows, then 25 high ones
    kept = undersample_zero_ec(y, gaps, 0.1, 0.0, seed=1)
    np.testing.assert_array_equal(kept, gaps[y[gaps] >= 0.1])  # exactly rows 51, 53, ..., 99
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(38, 39, 300), rng.uniform(-110, -109, 300)
    split = spatial_split(lat, lon, np.ones(300), 10.0, (0.8, 0.1, 0.1), 0)
    names = split.names
    assert set(names) == {"train", "val", "test"} and 0.6 < (names == "train").mean() < 0.95
    assert split.info["block_km"] == 10.0 and split.info["n_blocks"] >= 10
    for b in np.unique(split.blocks):  # whole blocks: one name per block
        assert len(set(names[split.blocks == b])) == 1
    # other points (lab samples) take the split of the block they fall in: a point on a site is in that site's block
    again = spatial_split(lat, lon, np.ones(300), 10.0, (0.8, 0.1, 0.1), 0, also=(lat[:50] + 1e-6, lon[:50]))
    np.testing.assert_array_equal(again.names, names)
    np.testing.assert_array_equal(again.other_names, names[:50])
    # block size 0: the variogram range of ln y. A field with a 126 km period (semivariance rising to ~63 km) gives
    # a practical range of tens of km; blocks are that, halved while fewer than 10 blocks hold sites
    lat, lon = rng.uniform(37, 40, 1500), rng.uniform(-111, -107, 1500)
    y = np.exp(np.sin(lon * 111 * 0.78 / 20) + np.cos(lat * 111 / 20) + 0.1 * rng.standard_normal(1500))
    auto = spatial_split(lat, lon, y, 0, (0.8, 0.1, 0.1), 0)
    assert 30 < auto.info["variogram"]["range_km"] < 150 and auto.info["block_km"] <= auto.info["variogram"]["range_km"]
    assert auto.info["test_to_train_km_median"] > 2  # the test is a few km from training: mapping, not neighbours


def test_transfer_set_is_lab_pixels_in_training_blocks_with_teacher_targets(world):
    from deepsalt.data.lab import read_lab_table
    from deepsalt.train.data import load_training_data
    from deepsalt.train.stages import Ctx, build_models, encode, predict, with_transfer_set

    cfg = TrainConfig.for_preset("tiny", ae={"hidden": (16,)}, variants=("deepsalt",))
    d = load_training_data(world, cfg, 0)
    n_tr = len(d.transfer_lab)
    assert n_tr > 20 and d.info["n_transfer"] == n_tr and np.isfinite(d.transfer_x).all() and np.isfinite(d.transfer_cov).all()
    # no transfer sample sits in a validation or test block of the site split, nor in the held-out region
    seen = d.sat_split != "unseen"
    lat, lon = d.sat_meta["latitude"].to_numpy()[seen], d.sat_meta["longitude"].to_numpy()[seen]
    assert (d.lab_split[d.transfer_lab] != "unseen").all()
    meta = read_lab_table(world / "lab" / "mir_library.parquet").meta
    blocks = spatial_split(lat, lon, d.sat_y[seen], cfg.split_block_km, cfg.split_fractions, 0,
                           also=(meta["latitude"].to_numpy()[d.transfer_lab], meta["longitude"].to_numpy()[d.transfer_lab])).other_names
    assert (blocks == "train").all()
    # the lab samples are split by the same blocks: those in test blocks are the lab test set
    all_lab = spatial_split(lat, lon, d.sat_y[seen], cfg.split_block_km, cfg.split_fractions, 0,
                            also=(meta["latitude"].to_numpy(), meta["longitude"].to_numpy())).other_names
    lab_seen = d.lab_split != "unseen"
    np.testing.assert_array_equal(d.lab_split[lab_seen], all_lab[lab_seen])
    assert len(d.pairs[0]) and (d.lab_split[d.pairs[0]] == "train").all() and (d.sat_split[d.pairs[1]] == "train").all()
    # appended rows: the student's inputs at those pixels, the teacher's reading of each sample's own FTIR
    # spectrum as target, no task term
    models, ctx = build_models(cfg, d.lab_x.shape[1], d.sat_x.shape[1]), Ctx()
    n, w = len(d.sat_y), 72 + cfg.student.spectral_path  # latent, covariates, the spectral path's components
    x, y, tp, tf, tm, tw = with_transfer_set(d, models, "deepsalt", ctx, np.zeros((n, w), np.float32), d.sat_y,
                                             np.ones(n, np.float32), [np.zeros((n, 64), np.float32)] * 3,
                                             np.zeros(n, np.float32))
    t, _ = predict(models["teacher"], encode(models["sau_ftir"], d.lab_x[d.transfer_lab], ctx), ctx)
    assert x.shape == (n + n_tr, w) and len(tf) == 3 and tf[0].shape == (n + n_tr, 64)
    np.testing.assert_allclose(tp[n:], t, rtol=1e-6)
    assert tm[n:].all() and not tm[:n].any() and tw[:n].all() and not tw[n:].any()
    np.testing.assert_allclose(x[n:, 64:72], d.transfer_cov)
    np.testing.assert_allclose(x[n:, 72:], d.scalers["enmap_pcs"].transform(d.transfer_x), rtol=1e-5, atol=1e-6)
    assert len(load_training_data(world, TrainConfig.for_preset("tiny", kd={"transfer": False}), 0).transfer_lab) == 0


def test_lab_labels_control_trains_on_the_sites_plus_the_transfer_pixels_with_lab_ece(world):
    """The distillation control sees the data DeepSalt's teacher adds, labelled by the lab instead of a teacher."""
    from deepsalt.train.data import load_training_data
    from deepsalt.train.stages import Ctx, _regression_stage, build_models

    cfg = TrainConfig.for_preset("tiny")
    data = load_training_data(world, cfg, 0)
    assert len(data.transfer_lab) > 0
    models = build_models(cfg, data.lab_x.shape[1], data.sat_x.shape[1])
    plain = _regression_stage("student:student_no_kd", data, cfg, models, Ctx(), 0, 0)
    control = _regression_stage("student:lab_labels", data, cfg, models, Ctx(), 0, 0)
    assert plain.n_train == len(data.idx("sat", "train"))
    assert control.n_train == plain.n_train + len(data.transfer_lab)


def test_transfer_set_without_stac_items_is_a_clear_error(world_copy):
    import shutil

    from deepsalt.errors import DeepSaltInputError
    from deepsalt.train.data import load_training_data

    shutil.rmtree(world_copy / "stac")
    with pytest.raises(DeepSaltInputError, match="stac: no EnMAP catalogue for the distillation transfer set.*--no-kd-transfer"):
        load_training_data(world_copy, TrainConfig.for_preset("tiny"), 0)


def _bundle(cfg):
    enc = SparseAutoEncoder(218, cfg.ae.hidden, cfg.latent)
    stu = build_student(cfg, "deepsalt")
    sc = {"enmap": Scaler.fit(np.random.rand(20, 218)), "covariates": Scaler.fit(np.random.rand(20, 8), "standard")}
    if cfg.student.spectral_path:
        sc["enmap_pcs"] = Projection.fit(np.random.default_rng(1).random((60, 218)), cfg.student.spectral_path)
    ref = np.random.default_rng(0).standard_normal((30, cfg.latent + 8)).astype(np.float32)
    return DeepSaltBundle.create(enc.state_dict(), stu.state_dict(), cfg=cfg, scalers=sc,
                                 band_names=[str(i) for i in range(218)], band_centers=np.linspace(420, 2400, 218),
                                 covariates={f"c{i}": "u" for i in range(8)}, data_hash="abc", seed=0,
                                 interval90={"q": 1.5, "mc_samples": 5, "di_slope": 0.0}, aoa={"mean_distance": 11.0, "threshold": 0.4,
                                                                              "n_reference": 30}, reference=ref)


def test_bundle_round_trip_and_refusals(tmp_path):
    import json
    cfg = TrainConfig.for_preset("tiny")
    b = _bundle(cfg)
    b.save(str(tmp_path / "b"))
    loaded = DeepSaltBundle.load(str(tmp_path / "b"))
    x, c = np.random.rand(7, 218).astype(np.float32), np.random.rand(7, 8).astype(np.float32)
    np.testing.assert_allclose(b.predict(x, c)[0], loaded.predict(x, c)[0], rtol=1e-6)
    mean, sd = loaded.predict(x, c, mc_samples=8)
    assert mean.shape == (7,) and (sd > 0).any()
    with pytest.raises(DeepSaltInputError, match="missing"):
        loaded.select_bands([str(i) for i in range(100)], np.linspace(420, 2400, 100), "scene X")
    # defect 7: a checkpoint loaded into a head with another output range must fail
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["out_range"] = [0.0, 20.0]
    meta["config"]["out_range"] = [0.0, 20.0]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(DeepSaltInputError, match="trained for output range \\[0.05"):
        DeepSaltBundle.load(str(tmp_path / "b"))
    with pytest.raises(DeepSaltInputError, match="not a model bundle"):
        DeepSaltBundle.load(str(tmp_path / "nothing"))
    # the area of applicability travels with the weights; a bundle whose record disagrees with them is refused
    meta["out_range"] = meta["config"]["out_range"] = list(cfg.out_range)
    meta["aoa"]["n_reference"] = 29
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(DeepSaltInputError, match="area of applicability"):
        DeepSaltBundle.load(str(tmp_path / "b"))
    # the DI of a training site's own input is 0; far from every training site it is large
    import torch

    xs = torch.cat([b.reference[:3], b.reference[:3] + 100.0])
    body = b.student.body_dim  # the DI's space: the body's inputs, not the spectral path's
    assert body == cfg.latent + 8 == b.student.in_dim - cfg.student.spectral_path and b.features(x, c).shape == (7, body)
    raw = xs * b.student.in_scale[:body] + b.student.in_shift[:body]
    from deepsalt.models.applicability import dissimilarity

    di = dissimilarity((raw - b.student.in_shift[:body]) / b.student.in_scale[:body], b.reference, 11.0).numpy()
    np.testing.assert_allclose(di[:3], 0, atol=1e-3)
    assert (di[3:] > 10).all()
    assert b.predict(x, c, mc_samples=3, di=True)[2].shape == (7,)
    # the spectral path's projection travels with the bundle: without it, or with another shape, it is refused
    meta["aoa"]["n_reference"] = 30
    for edit, match in ((lambda m: m["scalers"].pop("enmap_pcs"), "scalers are inconsistent"),
                        (lambda m: m["scalers"]["enmap_pcs"]["components"].pop(), "spectral path's projection")):
        bad = json.loads(json.dumps(meta))
        edit(bad)
        (tmp_path / "b" / "bundle.json").write_text(json.dumps(bad))
        with pytest.raises(DeepSaltInputError, match=match):
            DeepSaltBundle.load(str(tmp_path / "b"))


def test_conformal_interval_and_aoa_threshold():
    """The 90 % interval calibrated on one half covers ~90 % of the other; the AOA threshold is the training
    DI's upper whisker; sites far outside have larger error and fall outside the AOA."""
    from deepsalt.models import applicability as ap

    rng = np.random.default_rng(0)
    n = 4000
    sd_log = rng.uniform(0.1, 0.6, n)  # heteroscedastic: the MC sd tells which sites are uncertain
    pred = np.exp(rng.normal(0.5, 1.0, n))
    y = pred * np.exp(sd_log * 1.3 * rng.standard_normal(n))
    sd = sd_log * pred
    q = ap.conformal_scale(y[:2000], pred[:2000], sd[:2000])
    assert 1.9 < q < 2.4  # 1.3 x 1.645
    assert 0.87 < ap.coverage(y[2000:], pred[2000:], sd[2000:], q) < 0.93
    lo, hi = ap.interval(pred, sd, q)
    assert (lo < pred).all() and (hi > pred).all()
    ref = rng.standard_normal((500, 4)).astype(np.float32)
    consts = ap.fit_aoa(ref, np.arange(500) % 5, seed=0)
    assert 0.1 < consts["threshold"] < 1.0 and consts["mean_distance"] > 2
    far = ap.aoa_metrics(np.ones(4), np.array([1.0, 1.1, 3.0, 4.0]), np.array([0.0, 0.1, 5.0, 9.0]), consts["threshold"])
    assert far["inside_fraction"] == 0.5 and far["mae_inside"] < far["mae_outside"]


def test_spectral_path_reaches_the_output_through_the_linear_term_only():
    """The last ``skip_only`` inputs (the spectral path's components) move the prediction through the linear term and
    leave the body's layer features alone; a learnable signal carried only there is learnt; a student built from a
    config has them exactly when the linear term is on."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((512, 6)), dtype=torch.float32)
    m = SpectralTransformer(6, 16, 2, 2, 32, 0.0, linear_skip=True, skip_only=2)
    m.fit_input_norm(x)
    m.eval()
    with torch.no_grad():
        p0, f0 = m(x)
        x2 = x.clone()
        x2[:, 4:] += 3.0
        p1, f1 = m(x2)
    assert m.body_dim == 4 and torch.equal(p0, p1) and all(torch.equal(a, b) for a, b in zip(f0, f1))  # skip starts at 0
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(300):  # ln y follows input 5, which only the linear term reads
        opt.zero_grad()
        F.huber_loss(m(x)[0], torch.exp(0.5 + 0.6 * x[:, 5])).backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        err = (torch.log(m(x)[0]) - (0.5 + 0.6 * x[:, 5])).abs().mean().item()
    assert err < 0.1, err
    with pytest.raises(ValueError, match="skip_only"):
        SpectralTransformer(6, 16, 2, 2, 32, 0.0, linear_skip=False, skip_only=2)
    on, off = TrainConfig.for_preset("tiny"), TrainConfig.for_preset("tiny", student={"linear_skip": False})
    assert build_student(on, "deepsalt").in_dim == on.latent + 8 + on.student.spectral_path > on.latent + 8
    assert build_student(off, "deepsalt").in_dim == on.latent + 8 and build_student(on, "ancillary_only").in_dim == 8


def test_linear_skip_extrapolates_a_log_linear_trend():
    """Trained on inputs in [-1, 1] with ln ECe linear in one of them, the student with the linear path follows
    the trend to three times that range; without it the layer-normalised features level off."""
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(-1, 1, (512, 4)), dtype=torch.float32)
    far = torch.zeros(4, 4)
    far[:, 0] = torch.tensor([0.5, 2.0, 2.5, 3.0])

    def log_error(skip: bool) -> np.ndarray:
        torch.manual_seed(0)
        m = SpectralTransformer(4, 16, 2, 2, 32, 0.0, linear_skip=skip)
        m.fit_input_norm(x)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            F.huber_loss(m(x)[0], torch.exp(0.3 + 0.8 * x[:, 0])).backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            return (torch.log(m(far)[0]) - (0.3 + 0.8 * far[:, 0])).abs().numpy()

    with_skip, without = log_error(True), log_error(False)
    assert with_skip.max() < 0.2 and without[0] < 0.05  # both fit inside the range; only one follows it out
    assert without[-1] > 0.5
    cfg = TrainConfig.for_preset("tiny")
    assert "skip.weight" in build_student(cfg, "deepsalt").state_dict()
    assert cfg.student.linear_skip and not cfg.teacher.linear_skip


def test_interval_widens_with_the_dissimilarity_index():
    """Where the log error grows with the DI, the interval calibrated on low-DI sites keeps ~90 % coverage on
    sites far outside them; one width does not. Where it does not grow, the slope stays ~0."""
    from deepsalt.models import applicability as ap

    rng = np.random.default_rng(1)

    def sites(n, lo, hi, growth=2.0):
        di = rng.uniform(lo, hi, n)
        pred = np.exp(rng.normal(0.5, 1.0, n))
        return pred * np.exp(0.3 * (1 + growth * di) * rng.standard_normal(n)), pred, 0.2 * pred, di

    y, pred, sd, di = sites(3000, 0.0, 0.5)
    assert 1.5 < ap.fit_di_slope(y, pred, di) < 2.5  # the generating growth: 2 per unit DI
    iv = ap.choose_interval(y, pred, sd, di)
    flat = ap.choose_interval(y, pred, sd)  # without the DI: one width for all
    assert flat["di_slope"] == 0 and iv["di_slope"] > 1.5
    fy, fpred, fsd, fdi = sites(2000, 1.0, 1.5)  # extrapolation: DI two to three times the calibration range
    assert 0.85 < ap.coverage(fy, fpred, fsd, iv["q"], iv["scaled"], fdi, iv["di_slope"]) < 0.95
    assert ap.coverage(fy, fpred, fsd, flat["q"], flat["scaled"]) < 0.75
    assert ap.fit_di_slope(*sites(3000, 0.0, 0.5, growth=0.0)[:2], di) < 0.3
    with pytest.raises(ValueError, match="pass di"):
        ap.interval(pred, sd, 1.0, di_slope=1.0)


def test_predict_from_int16_dn_scales_on_the_device_exactly_as_from_reflectance():
    """The mapping actors send int16 DN and per-scene gain/offset; the model must see the same reflectance."""
    import torch

    b = _bundle(TrainConfig.for_preset("tiny"))
    rng = np.random.default_rng(0)
    dn = rng.integers(100, 5000, size=(50, 218), dtype=np.int16)
    cov = rng.random((50, 8), dtype=np.float32)
    gain = np.stack([np.full(218, 1e-4, np.float32), np.linspace(0.9e-4, 1.1e-4, 218, dtype=np.float32)])
    offset = np.stack([np.zeros(218, np.float32), np.full(218, 0.01, np.float32)])
    slot = (np.arange(50) % 2).astype(np.int16)  # two scenes with different scaling in one tile
    refl = dn.astype(np.float32) * gain[slot] + offset[slot]
    a, sd_a = b.predict(refl, cov, mc_samples=4, seed=3)
    d, sd_d = b.predict(dn, cov, mc_samples=4, seed=3, scale=(gain, offset, slot))
    np.testing.assert_array_equal(a, d)
    np.testing.assert_array_equal(sd_a, sd_d)
    # the scaler on a tensor (the device path) and on an array agree
    s = b.scalers["enmap"]
    np.testing.assert_allclose(s.transform(torch.from_numpy(refl)).numpy(), s.transform(refl), rtol=1e-6)
    p = b.scalers["enmap_pcs"]
    np.testing.assert_allclose(p.transform(torch.from_numpy(refl)).numpy(), p.transform(refl), rtol=1e-4, atol=1e-5)


def test_location_baselines_know_only_where_a_site_is():
    """nn_label returns the nearest training site's label; kriging interpolates a smooth field between sites."""
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(38.0, 38.5, 150), rng.uniform(-110.0, -109.4, 150)
    field = lambda la, lo: np.exp(1.0 + np.sin((la - 38.0) * 12) + np.cos((lo + 110.0) * 9))  # ~10 km waves
    y = field(lat, lon) * np.exp(rng.normal(0, 0.05, 150))  # 5 % label noise
    nn = fit_location_baseline("nn_label", lat[:100], lon[:100], y[:100], seed=0)
    np.testing.assert_allclose(nn(lat[:100], lon[:100]), np.clip(y[:100], 0.05, 77.0))
    np.testing.assert_allclose(nn(lat[:5] + 1e-4, lon[:5]), np.clip(y[:5], 0.05, 77.0))  # a few metres away
    kr = fit_location_baseline("kriging", lat[:100], lon[:100], y[:100], seed=0)
    m = metrics(y[100:], kr(lat[100:], lon[100:]))
    assert m["r2"] > 0.8, m
    assert metrics(y[100:], np.full(50, np.exp(np.log(y[:100]).mean())))["r2"] < 0.2  # what knowing nothing gives
    with pytest.raises(ValueError):
        fit_location_baseline("idw", lat, lon, y, seed=0)


def test_spread_over_seeds_is_the_sample_sd():
    agg = aggregate([{"mae": 1.0, "n": 10}, {"mae": 3.0, "n": 10}])
    assert agg["mae"] == 2.0 and agg["mae_sd"] == pytest.approx(np.sqrt(2.0)) and "n_sd" not in agg
    assert np.isnan(aggregate([{"mae": 1.0}])["mae_sd"])  # one seed: no spread to report


def test_paired_difference_with_a_bootstrap_interval_over_the_samples():
    rng = np.random.default_rng(1)
    y = rng.uniform(0.5, 10, 300)
    good, bad = y + rng.normal(0, 0.5, 300), y + rng.normal(0, 1.5, 300)
    d = paired_mae_difference(y, good, bad, seed=0)
    assert d["mae_diff"] == pytest.approx(metrics(y, good)["mae"] - metrics(y, bad)["mae"])
    assert d["ci95_lo"] < d["mae_diff"] < d["ci95_hi"] < 0 and d["n"] == 300  # clearly better: all of it below 0
    assert d == paired_mae_difference(y, good, bad, seed=0)  # seeded
    same = paired_mae_difference(y, good, good + rng.normal(0, 0.01, 300), seed=0)
    assert same["ci95_lo"] < 0 < same["ci95_hi"]  # no difference: the interval spans 0


def test_adaptation_moves_the_new_regions_latent_onto_the_training_moments():
    from deepsalt.models.adaptation import align_latent, latent_moments

    rng = np.random.default_rng(0)
    src = rng.normal(0.5, 0.02, (3000, 64))
    tgt = rng.normal(0.47, 0.05, (2000, 64))  # another region: shifted and wider
    moved = align_latent(tgt, latent_moments(src), latent_moments(tgt))
    np.testing.assert_allclose(moved.mean(0), src.mean(0), atol=2e-3)
    np.testing.assert_allclose(moved.std(0), src.std(0), rtol=0.05)
    # a site of the new region keeps its rank within the region: the alignment is monotone per dimension
    np.testing.assert_array_equal(np.argsort(moved[:, 0]), np.argsort(tgt[:, 0]))


def test_adaptation_is_applied_only_where_the_unlabelled_criterion_and_the_validation_check_agree():
    from deepsalt.models.adaptation import adaptation_gate

    rng = np.random.default_rng(1)
    src = rng.normal(0.0, 1.0, (1500, 8))
    y = rng.lognormal(1.0, 1.0, 40)
    good = y * np.exp(rng.normal(0, 0.3, 40))  # validation predictions
    shifted = rng.normal(2.0, 2.5, (1000, 8))  # a region shifted and wider: alignment brings it in
    g = adaptation_gate(src, shifted, y, good, good)
    assert g["applied"] and g["di_median_after"] < 0.9 * g["di_median_before"], g
    same = rng.normal(0.0, 1.0, (1000, 8))  # a region like the training one: nothing to gain
    g = adaptation_gate(src, same, y, good, good)
    assert not g["applied"] and g["di_median_after"] > 0.95 * g["di_median_before"], g
    worse = good * 1.5  # the alignment, tried on the validation blocks, costs accuracy there
    g = adaptation_gate(src, shifted, y, good, worse)
    assert not g["applied"] and g["val_error_after"] > 1.05 * g["val_error_before"], g


def test_exceedance_is_the_intervals_distribution_and_calls_where_f1_is_best():
    """P(y > t) comes from the distribution whose central 90 % is the calibrated interval (DI widening included):
    at the interval's ends it is 0.95 and 0.05. On heteroscedastic log-normal data the probabilities are reliable
    (observed frequency within 0.05 of predicted in every well-filled decile, Brier skill > 0), the decision
    probability chosen for the best F1 calls more of the right-skewed tail than the median rule does, and the AUC
    equals scikit-learn's."""
    from sklearn.metrics import roc_auc_score

    from deepsalt.models import applicability as ap

    rng = np.random.default_rng(1)
    n = 20000
    sd_log = rng.uniform(0.2, 0.8, n)
    pred = np.exp(rng.normal(0.8, 0.9, n))
    y = pred * np.exp(sd_log * rng.standard_normal(n))
    sd, di = sd_log * pred, rng.uniform(0, 0.5, n)
    form = dict(q=1.4, scaled=True, di=di, di_slope=0.3)
    lo, hi = ap.interval(pred, sd, **form)
    p_lo = ap.exceedance(pred, sd, [1.0], **form)  # shape check: one threshold, n pixels
    assert p_lo.shape == (1, n) and p_lo.dtype == np.float32
    at_lo = np.array([ap.exceedance(pred[i:i + 1], sd[i:i + 1], [lo[i]], 1.4, True, di[i:i + 1], 0.3)[0, 0] for i in range(50)])
    at_hi = np.array([ap.exceedance(pred[i:i + 1], sd[i:i + 1], [hi[i]], 1.4, True, di[i:i + 1], 0.3)[0, 0] for i in range(50)])
    np.testing.assert_allclose(at_lo, 0.95, atol=1e-4)
    np.testing.assert_allclose(at_hi, 0.05, atol=1e-4)
    # calibrated probabilities: the truth's own log-sd, no DI widening
    prob = ap.exceedance(pred, sd, [4.0, 8.0], q=ap.Z_LEVEL, scaled=True)
    rel = ap.reliability(y, prob, [4.0, 8.0])
    for t in ("4", "8"):
        assert rel[t]["brier_skill"] > 0.2, rel[t]["brier_skill"]
        for d in rel[t]["deciles"]:
            if d["n"] >= 500:
                assert abs(d["predicted"] - d["observed"]) < 0.05, (t, d)
    dec = ap.choose_decision(y[:10000], prob[:, :10000], [4.0, 8.0])
    assert set(dec) == {"4", "8"} and all(0.05 <= v <= 0.95 for v in dec.values())
    called = ap.class_figures(y[10000:] > 4, prob[0, 10000:] >= dec["4"], prob[0, 10000:])
    median_rule = ap.class_figures(y[10000:] > 4, pred[10000:] > 4)
    assert dec["4"] < 0.5 and called["recall"] > median_rule["recall"] and called["f1"] >= median_rule["f1"] - 0.01
    assert called["auc"] == pytest.approx(roc_auc_score(y[10000:] > 4, prob[0, 10000:]), abs=1e-9)
    # too few sites above a threshold to choose: 0.5
    assert ap.choose_decision(np.ones(100), prob[:1, :100], [4.0]) == {"4": 0.5}
    # in hindsight, on the cases themselves: the best F1 over the grid is at least the chosen decision's, the balanced
    # decision's smaller of recall and precision at least that of any decision of the grid; all above: nothing to say
    hind = ap.hindsight_decision(y[10000:], prob[:, 10000:], [4.0, 8.0])
    best, bal = hind["4"]["best_f1"], hind["4"]["balanced"]
    assert best["f1"] >= called["f1"] - 1e-12 and best["decision"] in ap.DECISION_GRID
    assert min(bal["recall"], bal["precision"]) >= min(called["recall"], called["precision"]) - 1e-12
    assert bal["f1"] == pytest.approx(ap.class_figures(y[10000:] > 4, prob[0, 10000:] >= bal["decision"])["f1"])
    assert ap.hindsight_decision(np.full(10, 9.0), prob[:1, :10], [4.0]) == {"4": None}


def test_metrics_report_ln_skill_rank_and_class_figures():
    from deepsalt.evaluation import metrics

    y = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 9.0, 20.0])
    m = metrics(y, y * 1.1, thresholds=(4.0, 8.0))
    assert m["spearman"] == pytest.approx(1.0) and m["r2_ln"] == pytest.approx(1 - 7 * np.log(1.1) ** 2 / np.sum((np.log(y) - np.log(y).mean()) ** 2))
    assert m["classes"]["4"] == {"recall": 1.0, "precision": 1.0, "f1": 1.0, "n_above": 3, "n": 7, "auc": 1.0}
    low = metrics(y, np.full(7, 2.0), thresholds=(4.0,))
    assert low["classes"]["4"]["recall"] == 0.0 and np.isnan(low["classes"]["4"]["precision"]) and low["classes"]["4"]["auc"] == 0.5


def test_baselines_learn_in_log_space_choose_plsr_components_by_block_cv_and_stay_in_the_training_range():
    """PLSR's components come from a CV over whole training blocks (not a fixed 15), PLSR and the random forest
    learn ln ECe, and neither predicts outside the training range, however far a new input lies."""
    from deepsalt.evaluation import fit_baseline, plsr_components

    rng = np.random.default_rng(3)
    n, d = 300, 40
    latent = rng.normal(size=(n, 3))
    x = latent @ rng.normal(size=(3, d)) + 0.05 * rng.normal(size=(n, d))
    y = np.exp(latent @ np.array([0.8, -0.5, 0.3]) + 0.1 * rng.normal(size=n))
    blocks = np.arange(n) // 30
    k = plsr_components(x, np.log(y), blocks)
    assert 2 <= k <= 6  # three latent factors, not the old fixed 15
    far = x[:5] * 50  # inputs far outside the training data
    for kind in ("plsr", "random_forest"):
        f = fit_baseline(kind, x[:250], y[:250], seed=0, groups=blocks[:250])
        p = f(np.concatenate([x[250:], far]))
        assert (p >= y[:250].min() - 1e-9).all() and (p <= y[:250].max() + 1e-9).all()
        r2_ln = 1 - np.sum((np.log(p[:50]) - np.log(y[250:])) ** 2) / np.sum((np.log(y[250:]) - np.log(y[250:]).mean()) ** 2)
        assert r2_ln > 0.7, (kind, r2_ln)
