import numpy as np
import pandas as pd
import pytest

from deepsalt.data.lab import read_lab_table
from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.mir import mir_grid


def _ossl_table(n=5, lo=600, hi=4000, step=2, **overrides):
    """An OSSL-style table: integer wavenumber columns scan_mir.<wn>_abs, a smooth known spectrum."""
    wn = np.arange(lo, hi + step, step)
    rng = np.random.default_rng(0)
    amp = rng.uniform(0.5, 1.5, n)
    spec = amp[:, None] * (1 + np.sin(wn / 300.0))[None, :]
    df = pd.DataFrame({"sample_id": [f"S{i}" for i in range(n)], "latitude": 40.0, "longitude": -110.0,
                       "depth_top_cm": 0.0, "depth_bottom_cm": 12.0, "ece_dsm": np.linspace(0.5, 9, n)})
    df = pd.concat([df, pd.DataFrame(spec, columns=[f"scan_mir.{w}_abs" for w in wn])], axis=1)
    for k, v in overrides.items():
        df[k] = v
    return df, amp


def test_ossl_table_is_resampled_onto_the_model_grid(tmp_path):
    df, amp = _ossl_table()
    df.to_parquet(tmp_path / "ossl.parquet")
    grid = mir_grid(600, 4000, 1765)
    lab = read_lab_table(tmp_path / "ossl.parquet", target_grid=grid)
    assert lab.spectra.shape == (5, 1765)
    np.testing.assert_allclose(lab.spectra, amp[:, None] * (1 + np.sin(grid / 300.0))[None], atol=2e-4)
    assert list(lab.meta.columns[:6]) == ["sample_id", "latitude", "longitude", "depth_top_cm", "depth_bottom_cm", "ece_dsm"]


def test_bare_wavenumber_columns_and_csv(tmp_path):
    df, _ = _ossl_table(lo=400)
    df.columns = [c.removeprefix("scan_mir.").removesuffix("_abs") for c in df.columns]
    df.to_csv(tmp_path / "authors.csv", index=False)
    assert read_lab_table(tmp_path / "authors.csv").spectra.shape == (5, 1765)


def test_generator_table_reads_back(world):
    lab = read_lab_table(world / "lab" / "mir_library.parquet")
    assert lab.wavenumbers.size == 1765 and np.isfinite(lab.spectra).all()
    assert lab.meta["ece_dsm"].min() > 0


@pytest.mark.parametrize("fault, match", [
    ("missing", "missing columns: ece_dsm"),
    ("few_channels", "found 51 spectral channels, need at least 200"),
    ("grid", "covers 600-4000 cm-1 but the model grid needs 400-4000"),
    ("latlon", "latitude/longitude out of range"),
    ("nan", "missing absorbance values"),
])
def test_bad_tables_name_file_and_fault(tmp_path, fault, match):
    df, _ = _ossl_table()
    if fault == "missing":
        df = df.drop(columns=["ece_dsm"])
    elif fault == "few_channels":
        df, _ = _ossl_table(lo=3900, step=2)
    elif fault == "latlon":
        df.loc[2, "latitude"] = 140.0
    elif fault == "nan":
        df.iloc[1, 10] = np.nan
    path = tmp_path / f"{fault}.parquet"
    df.to_parquet(path)
    with pytest.raises(DeepSaltInputError, match=match) as e:
        read_lab_table(path)  # default grid 400-4000
    assert str(path) in str(e.value)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "lab.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DeepSaltInputError, match="not a readable Parquet/CSV table"):
        read_lab_table(bad)
    with pytest.raises(DeepSaltInputError, match="does not exist"):
        read_lab_table(tmp_path / "nope.parquet")
