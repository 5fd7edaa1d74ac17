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


def test_ec_rules_keep_low_ec_above_zero_and_follow_the_published_lines_above():
    """Hogg & Henry's medium-texture 1:2 line gives ECe 0 below EC1:2 = 0.153 dS/m (OSSL's example value is 0.031):
    at the low end the rule follows the published line that stays above 0; higher up the medium line, continuously;
    the world's inverse gives back the extract's EC."""
    import numpy as np

    from deepsalt.data.ossl import EC_RULES

    ec = np.array([0.0, 0.031, 0.153, 1.0, 2.05, 2.1, 5.0])
    r12 = EC_RULES["1:2"].to_ece(ec)
    assert r12[1] == pytest.approx(2.16 * 0.031 + 0.03) and r12[2] > 0.3 and (np.diff(r12) > 0).all()
    assert r12[-1] == pytest.approx(2.35 * 5.0 - 0.36) and r12[4] == pytest.approx(2.35 * 2.05 - 0.36, abs=0.01)
    r11 = EC_RULES["1:1"].to_ece(ec)
    assert r11[0] == 0 and r11[1] == pytest.approx(2.11 * 0.031) and r11[-1] == pytest.approx(3.01 * 5 - 0.77)
    for rule in EC_RULES.values():
        np.testing.assert_allclose(rule.to_extract(rule.to_ece(ec[1:])), ec[1:], rtol=1e-12)


def _ossl_subset(world, dst, n=12):
    """The first ``n`` 0-12 cm layers of the world's OSSL download (site, soil lab and MIR tables, OSSL's names)."""
    import pandas as pd

    o = world / "native" / "ossl"
    mir = pd.read_csv(o / "ossl_mir_L0_v1.2.csv.gz", nrows=n, dtype={"id.layer_uuid_txt": str})
    ids = set(mir["id.layer_uuid_txt"])
    site = pd.read_csv(o / "ossl_soilsite_L0_v1.2.csv.gz", dtype=str)
    lab = pd.read_csv(o / "ossl_soillab_L1_v1.2.csv.gz", dtype={"id.layer_uuid_txt": str})
    site, lab = site[site["id.layer_uuid_txt"].isin(ids)].reset_index(drop=True), lab[lab["id.layer_uuid_txt"].isin(ids)].reset_index(drop=True)
    dst.mkdir(parents=True, exist_ok=True)
    return site, lab, mir


def _write_ossl(dst, site, lab, mir, lab_name="ossl_soillab_L1_v1.2.csv.gz"):
    site.to_csv(dst / "ossl_soilsite_L0_v1.2.csv.gz", index=False)
    lab.to_csv(dst / lab_name, index=False)
    mir.to_csv(dst / "ossl_mir_L0_v1.2.csv.gz", index=False)


def test_ossl_profiles_are_sites_of_a_dataset_and_every_left_out_layer_is_counted(world, tmp_path):
    """Site ids are unique only within a dataset: a LUCAS layer whose site id equals a KSSL pedon's is its own
    sample, not averaged into the pedon. Ids stay text ("1001", not "1001.0"); a layer without a site id is its own
    profile; a layer without a lower depth or lost in the join, and a repeated row, are counted; with soil-lab tables at both levels,
    L1 is read and named."""
    import pandas as pd

    from deepsalt.data.ossl import EC_RULES, import_ossl

    d = tmp_path / "ossl"
    site, lab, mir = _ossl_subset(world, d)
    pair = site.index[site["id.dataset.site_ascii_txt"] == "1001"]  # the world mixes them: two datasets, one site id
    assert sorted(site.loc[pair, "dataset.code_ascii_txt"]) == ["KSSL.SSL", "LUCAS.SSL"]
    site.loc[2, "id.dataset.site_ascii_txt"] = None  # no site id
    site.loc[3, "layer.lower.depth_usda_cm"] = None  # no lower depth
    mir = mir.iloc[:-1]  # the last layer has no spectrum: lost in the join
    mir = pd.concat([mir, mir.iloc[[0]]])  # a repeated row: read once, counted
    l0 = lab.copy()
    l0["ec_usda.a364_ds.m"] = 99.0  # the unharmonised level, which must not be read
    _write_ossl(d, site, lab, mir)
    l0.to_csv(d / "ossl_soillab_L0_v1.2.csv.gz", index=False)
    lines = []
    s = import_ossl(str(d), str(tmp_path / "lab.parquet"), log=lines.append)
    assert s["tables"] == ["ossl_soilsite_L0_v1.2.csv.gz", "ossl_soillab_L1_v1.2.csv.gz", "ossl_mir_L0_v1.2.csv.gz"]
    assert "read ossl_soilsite_L0_v1.2.csv.gz, ossl_soillab_L1_v1.2.csv.gz" in lines[0]
    assert s["layers_lost_in_join"] == 1 and s["layers_without_depth"] == 1 and s["layers_without_site_id"] == 1
    assert s["layer_rows_repeated"] == 1 and s["layers"] == 11
    assert s["samples"] == 12 - 1 - 1  # 12 layers, one lost in the join, one without depth
    t = pd.read_parquet(tmp_path / "lab.parquet", columns=["sample_id", "dataset", "ece_dsm", "n_layers"])
    ids = set(t["sample_id"])
    assert {"KSSL.SSL:1001", "LUCAS.SSL:1001"} <= ids and not any(i.endswith(".0") for i in ids)
    assert (t["n_layers"] == 1).all() and t["ece_dsm"].max() < 99 * 2  # no layer averaged into another; L0 not read
    ec = dict(zip(site["dataset.code_ascii_txt"].to_numpy()[pair], lab.set_index("id.layer_uuid_txt").loc[
        site.loc[pair, "id.layer_uuid_txt"], "ec_usda.a364_ds.m"]))
    kssl, lucas = ec["KSSL.SSL"], ec["LUCAS.SSL"]  # KSSL's EC is of a 1:2 extract, LUCAS's of a 1:5 one (ISO 11265)
    want = {"KSSL.SSL:1001": EC_RULES["1:2"].to_ece(kssl), "LUCAS.SSL:1001": 7.5 * lucas}
    for sid, v in want.items():
        assert float(t.loc[t["sample_id"] == sid, "ece_dsm"].iloc[0]) == pytest.approx(v, rel=1e-5)
    assert f"{site.loc[2, 'dataset.code_ascii_txt']}:layer {site.loc[2, 'id.layer_uuid_txt']}" in ids  # no site id


@pytest.mark.parametrize("column, factor, match", [("ec_usda.a364_ds.m", 1000.0, r"ece_dsm outside 0-200 dS m-1 .*mS/m"),
                                                   ("oc_usda.c729_w.pct", 100.0, r"soc outside 0-60 % .*g/kg")])
def test_ossl_values_in_other_units_are_refused_naming_the_unit(world, tmp_path, column, factor, match):
    from deepsalt.data.ossl import import_ossl
    from deepsalt.errors import DeepSaltInputError

    d = tmp_path / "ossl"
    site, lab, mir = _ossl_subset(world, d, n=4)
    lab[column] = lab[column] * factor
    _write_ossl(d, site, lab, mir)
    with pytest.raises(DeepSaltInputError, match=match):
        import_ossl(str(d), str(tmp_path / "lab.parquet"), log=lambda *_: None)
    (d / "ossl_all_L1_v1.2.qs").write_bytes(b"qs\x00")
    with pytest.raises(DeepSaltInputError, match=r"an R serialisation .*download OSSL's CSV tables"):
        import_ossl(str(d / "ossl_all_L1_v1.2.qs"), str(tmp_path / "lab.parquet"), log=lambda *_: None)


def test_ossl_ec_rule_is_chosen_per_dataset_and_an_unknown_one_in_a_mix_is_refused(world, tmp_path):
    """OSSL L1 puts KSSL's 1:2 EC and LUCAS's 1:5 (ISO 11265) EC in one column: each dataset gets its own rule,
    recorded per sample; a dataset of no known method in a mixed download is refused, naming it, until declared."""
    import pandas as pd

    from deepsalt.data.ossl import EC_RULES, import_ossl
    from deepsalt.errors import DeepSaltInputError

    d = tmp_path / "ossl"
    site, lab, mir = _ossl_subset(world, d, n=6)
    site.loc[0:1, "dataset.code_ascii_txt"] = "KSSL.SSL"
    site.loc[2:3, "dataset.code_ascii_txt"] = "LUCAS.SSL"
    site.loc[4:5, "dataset.code_ascii_txt"] = "AFSIS1.SSL"
    _write_ossl(d, site, lab, mir)
    with pytest.raises(DeepSaltInputError, match=r"dataset AFSIS1.SSL has EC .* no known extract method.*--ec-method AFSIS1.SSL=1:2"):
        import_ossl(str(d), str(tmp_path / "lab.parquet"), log=lambda *_: None)
    s = import_ossl(str(d), str(tmp_path / "lab.parquet"), ec_method="AFSIS1.SSL=1:1", log=lambda *_: None)
    assert s["ec_method_by_dataset"] == {"AFSIS1.SSL": "1:1", "KSSL.SSL": "1:2", "LUCAS.SSL": "1:5"}
    t = pd.read_parquet(tmp_path / "lab.parquet", columns=["sample_id", "dataset", "ece_dsm", "ec_method", "ec_rule"]).set_index("sample_id")
    ec = dict(zip(site["dataset.code_ascii_txt"] + ":" + site["id.dataset.site_ascii_txt"], lab["ec_usda.a364_ds.m"]))
    for sid, row in t.iterrows():
        rule = EC_RULES[{"KSSL.SSL": "1:2", "LUCAS.SSL": "1:5", "AFSIS1.SSL": "1:1"}[row["dataset"]]]
        assert row["ece_dsm"] == pytest.approx(float(rule.to_ece(ec[sid])), rel=1e-6)
        assert row["ec_method"] == {"KSSL.SSL": "1:2", "LUCAS.SSL": "1:5", "AFSIS1.SSL": "1:1"}[row["dataset"]]
    assert "7.5 EC1:5" in t.loc[t["dataset"] == "LUCAS.SSL", "ec_rule"].iloc[0]
