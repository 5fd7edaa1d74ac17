"""Models, losses and the bundle; one test per defect listed in DESIGN.md where it lives here."""

import numpy as np
import pytest
import torch

from deepsalt.config import TrainConfig
from deepsalt.models.autoencoder import SparseAutoEncoder, alignment_loss, kl_sparsity
from deepsalt.models.bundle import DeepSaltBundle
from deepsalt.models.losses import check_layer_map, distillation_loss, response_kl
from deepsalt.models.scalers import Scaler
from deepsalt.models.transformer import SpectralTransformer
from deepsalt.errors import DeepSaltInputError
from deepsalt.train.data import spatial_split, undersample_zero_ec
from deepsalt.train.evaluate import by_category, metrics
from deepsalt.train.stages import build_student


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


def test_tokenisations_and_output_range():
    for tokens in ("one", "per_dim"):
        m = SpectralTransformer(72, 72, 8, 2, 64, 0.1, (0.05, 77.0), tokens)
        pred, feats = m(torch.randn(5, 72) * 100)
        assert pred.shape == (5,) and len(feats) == 2 and feats[0].shape == (5, 72)
        assert (pred >= 0.05).all() and (pred <= 77.0).all()


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
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(38, 39, 300), rng.uniform(-110, -109, 300)
    split = spatial_split(lat, lon, 20, (0.8, 0.1, 0.1), 0)
    assert set(split) == {"train", "val", "test"} and 0.6 < (split == "train").mean() < 0.95


def _bundle(cfg):
    enc = SparseAutoEncoder(218, cfg.ae_hidden, cfg.latent)
    stu = build_student(cfg, "deepsalt")
    sc = {"enmap": Scaler.fit(np.random.rand(20, 218)), "covariates": Scaler.fit(np.random.rand(20, 8), "standard")}
    return DeepSaltBundle.create(enc.state_dict(), stu.state_dict(), cfg=cfg, scalers=sc,
                                 band_names=[str(i) for i in range(218)], band_centers=np.linspace(420, 2400, 218),
                                 covariates={f"c{i}": "u" for i in range(8)}, data_hash="abc", seed=0)


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
