"""Real lab spectra: Bruker OPUS files with their chemistry (YAMSYS, West Africa) and KSSL MIR spectra with SOC (OSSL
names as they are), through `deepsalt lab import --opus`, `lab fit` and `lab predict`."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA

YAMSYS = SHARED_DATA / "real" / "yamsys" / "data"
KSSL = SHARED_DATA / "real" / "kssl_toy500" / "toy_kssl_mir.csv.gz"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deepsalt.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_opus_files_import_with_their_chemistry_and_the_teacher_fits_their_carbon(tmp_path):
    """284 OPUS files of 94 samples (replicate scans averaged), carbon in g/kg converted to %; then a quick lab fit
    (3 folds, few epochs) of their carbon runs end to end and its bundle predicts the same samples again."""
    from brukeropus import read_opus

    r = _cli("lab", "import", "--opus", YAMSYS / "spectra", "--chem", YAMSYS / "soilchem" / "soilchem_yamsys.csv",
             "--id-column", "sample_ID", "--column", "soc=C:g/kg", "--out", tmp_path / "yam.parquet")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["samples"] == 94 and s["spectra_files"] == 284 and s["spectra_without_chemistry"] == 0
    assert s["channels"] == 1716 and 499 < s["wavenumbers_cm1"][0] < 501 and 3996 < s["wavenumbers_cm1"][1] < 3998
    lab = pd.read_parquet(tmp_path / "yam.parquet")
    chem = pd.read_csv(YAMSYS / "soilchem" / "soilchem_yamsys.csv").set_index("sample_ID")
    np.testing.assert_allclose(lab["soc"], chem.loc[lab["sample_id"], "C"].to_numpy() / 10, rtol=1e-12)
    # the average of a sample's replicate scans, on the grid of the files
    one = lab["sample_id"].iloc[0]
    scans = [read_opus(str(p)).a for p in sorted((YAMSYS / "spectra").glob(f"{one}.*"))]
    spec = lab.filter(like="scan_mir.").iloc[0].to_numpy(float)
    np.testing.assert_allclose(spec, np.mean([s.y[np.argsort(s.x)] for s in scans], axis=0), rtol=1e-5)
    assert lab["n_replicates"].iloc[0] == len(scans)
    r = _cli("lab", "fit", "--lab", tmp_path / "yam.parquet", "--target", "soc", "--folds", "3", "--epochs", "15",
             "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["samples"] == 94 and m["folds_by"] == "random (no coordinates)"
    for model in ("teacher", "plsr"):
        c = m["cv"][model]
        assert {"r2_ln", "rmse_ln", "mae", "r2_ln1p", "rmse_ln1p"} <= set(c) and c["n"] == 94 and np.isfinite(c["mae"])
    assert m["cv"]["plsr"]["r2_ln1p"] > 0.5  # the carbon is in these spectra
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert pred["teacher"].notna().all() and sorted(pred["fold"].unique()) == [0, 1, 2]
    r = _cli("lab", "predict", "--model", tmp_path / "run" / "bundle", "--lab", tmp_path / "yam.parquet", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr[-2000:]
    p = pd.read_csv(tmp_path / "p.csv")
    assert len(p) == 94 and p["soc_pred"].between(0, 60).all()


def test_a_lab_table_with_ossl_names_fits_as_it_is_and_a_bad_bundle_or_grid_is_refused(tmp_path):
    """KSSL spectra with OSSL's names (id, oc_usda.c729_w.pct, bare wavenumbers), no coordinates: read as they are; a
    bundle whose recorded range was edited, and a table that does not cover the bundle's grid, are one line each."""
    from deepsalt.errors import DeepSaltInputError
    from deepsalt.train.lab_fit import LabFitConfig, lab_fit, lab_predict

    df = pd.read_csv(KSSL).head(80)
    df.to_csv(tmp_path / "kssl.csv", index=False)
    m = lab_fit(tmp_path / "kssl.csv", tmp_path / "run", "soc", LabFitConfig(folds=2, ae_epochs=5, teacher_epochs=5),
                log=lambda *_: None)
    assert m["samples"] == 80 and m["cv"]["plsr"]["n"] == 80
    cut = df.drop(columns=[c for c in df.columns if c.isdigit() and int(c) > 3000])
    cut.to_csv(tmp_path / "cut.csv", index=False)
    with pytest.raises(DeepSaltInputError, match="wavenumber grid covers 600-3000 cm-1 but the model grid needs 600-4000"):
        lab_predict(tmp_path / "run" / "bundle", tmp_path / "cut.csv", tmp_path / "p.csv", log=lambda *_: None)
    meta = json.loads((tmp_path / "run" / "bundle" / "lab_model.json").read_text())
    meta["out_range"] = [0, 100]
    (tmp_path / "run" / "bundle" / "lab_model.json").write_text(json.dumps(meta))
    with pytest.raises(DeepSaltInputError, match=r"output range .* is not the recorded \[0, 100\]"):
        lab_predict(tmp_path / "run" / "bundle", tmp_path / "kssl.csv", tmp_path / "p.csv", log=lambda *_: None)
