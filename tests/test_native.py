"""Your own training data in: field sites, an OSSL download, SoilGrids and WorldClim as shipped, any target.

The tiny world writes each of them in its native form (``WORLD/native/``); the commands turn them into the same
training table and covariates as the world's ready-made ones."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from conftest import FAST, deepsalt_lines, shared, tile_arrays
from deepsalt.config import QUALITY_ASSETS
from deepsalt.data.covariates import COVARIATE_NAMES, sample_covariates
from deepsalt.data.lab import read_lab_table
from deepsalt.errors import DeepSaltInputError

#: SoilGrids' texture reaches the covariate grid through a Homolosine (250 m) -> EPSG:4326 (1/400 deg) bilinear
#: resampling and int16 g/kg storage (0.05 % rounding per layer): built sand and clay agree with the world's own
#: products within this many % (absolute). WorldClim's aggregates share the grid: float32 rounding only.
TEXTURE_TOL = 0.5
CLIMATE_RTOL = 1e-5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deepsalt.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def _one_line_exit_2(r, needle):
    lines = deepsalt_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def native(world, tmp_path_factory):
    """The world's native inputs through `deepsalt covariates build`, `lab import` and `sites` (their CLI)."""
    from deepsalt.config import WorldConfig
    from deepsalt.data.synthetic.native import native_bbox

    bbox = ",".join(str(v) for v in native_bbox(WorldConfig.for_preset("tiny", 7)))

    def build(d):
        runs = {
            "covariates": _cli("covariates", "build", "--soilgrids", world / "native" / "soilgrids", "--worldclim",
                               world / "native" / "worldclim", f"--bbox={bbox}", "--out", d / "cov"),
            "lab": _cli("lab", "import", "--ossl", world / "native" / "ossl", "--out", d / "lab.parquet"),
            "sites": _cli("sites", "--sites", world / "native" / "sites.csv", "--stac", world / "stac", "--covariates",
                          world / "covariates", "--out", d / "sites.parquet"),
        }
        for name, r in runs.items():
            assert r.returncode == 0, (name, r.stderr[-3000:])
        return {k: json.loads(r.stdout.strip().splitlines()[-1]) for k, r in runs.items()}

    return shared(tmp_path_factory, "native", build)


def test_native_forms_are_laid_out_as_their_products_ship(world):
    n = world / "native"
    sites = pd.read_csv(n / "sites.csv")
    assert {"lon", "lat", "date", "ece_dsm", "soc"} <= set(sites.columns) and len(sites) == 180
    site = pd.read_csv(n / "ossl" / "ossl_soilsite_L0_v1.2.csv.gz")
    lab = pd.read_csv(n / "ossl" / "ossl_soillab_L1_v1.2.csv.gz")
    mir = pd.read_csv(n / "ossl" / "ossl_mir_L0_v1.2.csv.gz", nrows=3)
    assert {"id.layer_uuid_txt", "latitude.point_wgs84_dd", "longitude.point_wgs84_dd", "layer.upper.depth_usda_cm",
            "layer.lower.depth_usda_cm"} <= set(site.columns)
    assert {"id.layer_uuid_txt", "ec_usda.a364_ds.m", "oc_usda.c729_w.pct"} <= set(lab.columns)
    spec = [c for c in mir.columns if c.startswith("scan_mir.") and c.endswith("_abs")]
    assert len(spec) == 1701 and spec[0] == "scan_mir.600_abs" and spec[-1] == "scan_mir.4000_abs"
    for prop in ("sand", "clay"):
        for depth in ("0-5cm", "5-15cm"):
            with rasterio.open(n / "soilgrids" / prop / f"{prop}_{depth}_mean.vrt") as ds:
                assert ds.driver == "VRT" and ds.dtypes[0] == "int16" and "+proj=igh" in ds.crs.to_proj4()
                assert ds.res == (250.0, 250.0) and 50 < np.ma.median(ds.read(1, masked=True)) < 900  # g/kg
    months = sorted(p.name for p in (n / "worldclim").glob("wc2.1_30s_*.tif"))
    assert len(months) == 48 and "wc2.1_30s_prec_12.tif" in months


def test_sites_extract_exactly_the_world_samples_with_a_drop_report(world, native, tmp_path):
    """The extracted table equals satellite_samples.parquet: every reflectance and covariate exactly, from the same
    scene, row and column. Sites no scene saw within --max-days, or outside every scene, are dropped and reported."""
    d, s = native
    assert s["sites"]["extracted"] == 180 and not s["sites"]["dropped"]
    got = pd.read_parquet(d / "sites.parquet").set_index("site_id")
    ref = pd.read_parquet(world / "samples" / "satellite_samples.parquet").set_index("site_id").loc[got.index]
    refl = [c for c in ref.columns if c.startswith("refl_")]
    assert len(refl) == 224 and ref[refl].isna().all().sum() == 6  # the bad bands: NaN in both
    np.testing.assert_array_equal(got[refl].to_numpy(), ref[refl].to_numpy())
    np.testing.assert_array_equal(got[list(COVARIATE_NAMES)].to_numpy(), ref[list(COVARIATE_NAMES)].to_numpy())
    assert (got["scene_id"] == ref["scene_id"]).all() and (got["row"] == ref["row"]).all() and (got["col"] == ref["col"]).all()
    assert got["days_apart"].abs().max() <= 3 and {"ece_dsm", "soc", "region"} <= set(got.columns)
    # drops: a site dated 90 days from any scene, one far from every scene, one on a cloud
    sites = pd.read_csv(world / "native" / "sites.csv")
    cloudy = _cloudy_site(world)
    extra = pd.DataFrame([{**sites.iloc[0], "site_id": "late", "date": "2024-12-01"},
                          {**sites.iloc[1], "site_id": "far", "lon": -100.0, "lat": 35.0},
                          {**sites.iloc[2], "site_id": "cloudy", "lon": cloudy[0], "lat": cloudy[1]}])
    pd.concat([sites, extra]).to_csv(tmp_path / "sites.csv", index=False)
    r = _cli("sites", "--sites", tmp_path / "sites.csv", "--stac", world / "stac", "--covariates", world / "covariates",
             "--out", tmp_path / "out.parquet", "--max-days", 30)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["extracted"] == 180 and summary["dropped"] == {"no_scene": 2, "masked:quality_cloud": 1}
    assert "sites: 183 in, 180 extracted; dropped: 2 no_scene, 1 masked:quality_cloud" in r.stdout
    drops = pd.read_csv(tmp_path / "out.parquet.drops.csv").set_index("site_id")
    assert drops.loc["cloudy", "detail"] == "masked by quality_cloud (clouds)" and drops.loc["far", "reason"] == "no_scene"


def _cloudy_site(world) -> tuple[float, float]:
    """lon/lat of a cloud-flagged pixel centre of one of the world's scenes."""
    from pyproj import Transformer

    from deepsalt.data.stac import search_items

    for item in search_items(str(world / "stac")):
        with rasterio.open(item.assets["quality_cloud"].href) as q:
            rows, cols = np.nonzero(q.read(1) == 1)
            if len(rows):
                x, y = q.transform * (cols[0] + 0.5, rows[0] + 0.5)
                return Transformer.from_crs(q.crs, "EPSG:4326", always_xy=True).transform(x, y)
    raise AssertionError("no cloud in the world")


def test_the_mapping_reader_at_each_site_pixel_gives_the_same_dn_and_covariates(world, native):
    """prepare_tile, the mapping's read stage, on a grid aligned to each scene: the DN and covariates it gives at each
    site's pixel are exactly the extracted ones (no training/serving skew)."""
    import json as js

    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.data.stac import search_items
    from deepsalt.mapping.grid import Grid
    from deepsalt.mapping.tiles import prepare_tile
    from deepsalt.spectra.bands import enmap_bands

    d, _ = native
    got = pd.read_parquet(d / "sites.parquet")
    bands = enmap_bands()
    keep = bands.model_band_mask()
    names, centres = list(np.array(bands.names)[keep]), list(bands.centers_nm[keep])
    checked = 0
    for item in search_items(str(world / "stac")):
        scene = EnMAPScene.from_item(item)
        h = scene.header()
        t = h["transform"]
        grid = Grid(h["crs"].to_string(), 30.0, t.c, t.f, h["width"], h["height"], chunk=max(h["width"], h["height"]))
        out = prepare_tile({"ty": 0, "tx": 0, "items": [js.dumps(item.to_dict(include_self_link=False))], "scene_index": [0]},
                           grid, str(world / "covariates"), names, centres, tuple(QUALITY_ASSETS))
        mine = got[got["scene_id"] == item.id]
        pix = mine["row"].to_numpy() * grid.chunk + mine["col"].to_numpy()
        at = np.searchsorted(out["pix"], pix)
        assert (out["pix"][at] == pix).all()  # every site's pixel is one the map reads
        refl = out["dn"][at].astype(np.float32) * out["gain"][out["slot"][at]] + out["offset"][out["slot"][at]]
        np.testing.assert_array_equal(refl, mine[[f"refl_{n}" for n in names]].to_numpy())
        np.testing.assert_array_equal(out["cov"][at], mine[list(COVARIATE_NAMES)].to_numpy())
        checked += len(mine)
    assert checked == 180


def test_lab_import_reads_ossl_as_shipped(world, native, tmp_path):
    """Real OSSL names, separate tables joined by id, mixed as real downloads are: KSSL's EC of the 1:2 extract and
    LUCAS's of the 1:5 one, each converted by its dataset's rule (recorded per sample), site ids that collide across
    the two and some missing, the soil-lab table at both levels (L1 read), unused columns and unusable layers; the
    0-12 cm layer chosen over the deeper one; NaN targets dropped and counted."""
    d, s = native
    lab = s["lab"]
    site = pd.read_csv(world / "native" / "ossl" / "ossl_soilsite_L0_v1.2.csv.gz", dtype=str)
    assert set(site["dataset.code_ascii_txt"]) == {"KSSL.SSL", "LUCAS.SSL", "AFSIS1.SSL"}
    ids = site.groupby("dataset.code_ascii_txt")["id.dataset.site_ascii_txt"].agg(set)
    assert len(ids["KSSL.SSL"] & ids["LUCAS.SSL"]) > 250 and site["id.dataset.site_ascii_txt"].isna().sum() == 28
    assert (world / "native" / "ossl" / "ossl_soillab_L0_v1.2.csv.gz").exists()
    assert lab["tables"] == ["ossl_soilsite_L0_v1.2.csv.gz", "ossl_soillab_L1_v1.2.csv.gz", "ossl_mir_L0_v1.2.csv.gz"]
    assert lab["samples"] == 1000 and lab["layers"] == 1704 and lab["layers_outside_depth"] == 700
    assert lab["layers_without_depth"] == 4 and lab["layers_without_site_id"] == 28 and lab["layers_lost_in_join"] == 0
    assert lab["ec_method_by_dataset"] == {"KSSL.SSL": "1:2", "LUCAS.SSL": "1:5"} and "2.35" in lab["ec_rule"]
    got = read_lab_table(d / "lab.parquet", target_grid=np.arange(600, 4001, 2.0))
    ref = read_lab_table(world / "lab" / "mir_library.parquet", target_grid=np.arange(600, 4001, 2.0))
    got.meta.index = got.meta["sample_id"]
    order = got.meta.index.get_indexer(ref.meta["sample_id"])
    np.testing.assert_allclose(got.meta["ece_dsm"].to_numpy()[order], ref.meta["ece_dsm"], rtol=1e-6)
    np.testing.assert_allclose(got.meta["soc"].to_numpy()[order], ref.meta["soc"], rtol=1e-6)
    # the world's own table names its 1,765 channels to 0.01 cm-1: the two resamplings agree to 1e-3 absorbance
    np.testing.assert_allclose(got.spectra[order], ref.spectra, atol=1e-3)
    assert (got.meta["ec_method"] == got.meta["dataset"].map({"KSSL.SSL": "1:2", "LUCAS.SSL": "1:5"})).all()
    # the joined table, a missing EC, a method nobody declared
    o = world / "native" / "ossl"
    joined = pd.read_csv(o / "ossl_soilsite_L0_v1.2.csv.gz").merge(pd.read_csv(o / "ossl_soillab_L1_v1.2.csv.gz")) \
        .merge(pd.read_csv(o / "ossl_mir_L0_v1.2.csv.gz"))
    top = (joined["layer.upper.depth_usda_cm"] == 0) & joined["layer.lower.depth_usda_cm"].notna()
    joined.loc[top.to_numpy().nonzero()[0][:7], ["ec_usda.a364_ds.m", "oc_usda.c729_w.pct"]] = np.nan
    joined.to_csv(tmp_path / "ossl_all_L0_v1.2.csv", index=False)
    r = _cli("lab", "import", "--ossl", tmp_path / "ossl_all_L0_v1.2.csv", "--out", tmp_path / "lab.parquet", "--ec-method", "1:2")
    assert r.returncode == 0, r.stderr[-2000:]
    s2 = json.loads(r.stdout.strip().splitlines()[-1])
    assert s2["samples"] == 993 and s2["profiles_without_any_target"] == 7 and "7 profiles without any target" in r.stdout
    _one_line_exit_2(_cli("lab", "import", "--ossl", o, "--out", tmp_path / "x.parquet", "--ec-method", "1:10"),
                     "unknown EC method '1:10' (declare one of 1:1, 1:2, 1:5, paste)")
    # as OSSL ships it, the table starts at 600 cm-1: the default 400-4000 grid is refused with the flag that fits
    with pytest.raises(DeepSaltInputError, match=r"--mir-grid 600,4000,N"):
        read_lab_table(d / "lab.parquet")


def test_covariates_build_from_soilgrids_and_worldclim(world, native):
    d, _ = native
    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    lon, lat = sites["longitude"].to_numpy(), sites["latitude"].to_numpy()
    built, own = sample_covariates(d / "cov", lon, lat), sample_covariates(world / "covariates", lon, lat)
    assert np.abs(built[:, :2] - own[:, :2]).max() < TEXTURE_TOL
    np.testing.assert_allclose(built[:, 2:], own[:, 2:], rtol=CLIMATE_RTOL, atol=1e-5)
    for name in COVARIATE_NAMES:
        with rasterio.open(d / "cov" / f"{name}.tif") as ds:
            assert ds.crs.to_epsg() == 4326 and ds.dtypes[0] == "float32" and ds.nodata == -9999


@pytest.mark.parametrize("mistake, needle", [
    ("grams", "looks like g/kg, SoilGrids' mapped units: divide by 10"),
    ("kelvin", "looks like Kelvin: subtract 273.15"),
    ("annual", "looks like annual totals: pr_avg is the mean monthly precipitation"),
])
def test_unit_mistakes_are_refused_with_the_right_hint(mistake, needle, world, native, tmp_path):
    """Covariates in the wrong units stop mapping and training with one line that names the likely mistake; an
    int16 raster (SoilGrids' type) is read, not a crash."""
    d, _ = native
    cov = tmp_path / "cov"
    shutil.copytree(d / "cov", cov)
    name, f = {"grams": ("sand", lambda a: a * 10), "kelvin": ("tm_avg", lambda a: a + 273.15),
               "annual": ("pr_avg", lambda a: a * 12)}[mistake]
    with rasterio.open(cov / f"{name}.tif") as src:
        a, prof = src.read(1), src.profile
    a = np.where(a == -9999, a, f(a))
    prof = {**prof, "driver": "GTiff"}
    if mistake == "grams":
        a, prof = np.where(a == -9999, -32768, np.round(a)).astype(np.int16), {**prof, "dtype": "int16", "nodata": -32768}
    with rasterio.open(cov / f"{name}.tif", "w", **prof) as dst:
        dst.write(a, 1)
    _one_line_exit_2(_cli("train", "--lab", d / "lab.parquet", "--sites", _resampled_sites(d, cov, tmp_path), "--stac",
                          world / "stac", "--covariates", cov, "--mir-grid", "600,4000,1701", "--out", tmp_path / "run",
                          "--preset", "tiny", "--seeds", "0"), needle)


def _resampled_sites(d: Path, cov: Path, tmp: Path) -> Path:
    """The extracted sites with their covariates from ``cov`` (as `deepsalt sites --covariates cov` gives them)."""
    s = pd.read_parquet(d / "sites.parquet")
    s[list(COVARIATE_NAMES)] = sample_covariates(cov, s["longitude"].to_numpy(), s["latitude"].to_numpy())
    s.to_parquet(tmp / "sites.parquet")
    return tmp / "sites.parquet"


@pytest.fixture(scope="session")
def soc_run(world, native, tmp_path_factory):
    """A second target, defined by a [target] table and trained from the native inputs named in one TOML config (the
    tiny preset, shortened); no mir_grid: the lab table's own (OSSL's 600-4000 cm-1, 1701 channels)."""
    d, _ = native
    run = tmp_path_factory.mktemp("soc") / "run"
    cfg = d / "soc.toml"
    sections = "\n".join(f"[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv) if not isinstance(vv, tuple) else json.dumps(list(vv))}"
                                                 for kk, vv in v.items()) for k, v in FAST.items() if isinstance(v, dict))
    cfg.write_text(f'preset = "tiny"\nseeds = [0]\ncheckpoint_every = 2\n'
                   f'variants = ["deepsalt"]\n'
                   '[target]\nname = "soc"\ncolumn = "soc"\nunits = "%"\nvalid_range = [0.01, 30.0]\nlog = true\n'
                   'thresholds = [0.5, 1.5, 3.0]\nclass_names = ["low", "medium", "high", "very high"]\nshort = "SOC"\n'
                   f'[inputs]\nlab = "{d / "lab.parquet"}"\nsites = "{d / "sites.parquet"}"\nstac = "{world / "stac"}"\n'
                   f'covariates = "{world / "covariates"}"\n{sections}\n')
    r = _cli("train", "--config", cfg, "--out", run)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r.stdout


def test_a_second_target_trains_from_a_config_and_maps_with_its_own_name_and_units(world, soc_run, trained, tmp_path):
    from deepsalt import open_cube

    run, stdout = soc_run
    bundle = json.loads((run / "bundle" / "bundle.json").read_text())
    assert bundle["target"]["name"] == "soc" and bundle["out_range"] == [0.01, 30.0] and bundle["band_names"][0] == "1"
    assert json.loads((run / "inputs.json").read_text())["lab"].endswith("lab.parquet") and " %  R2" in stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["target"]["units"] == "%" and "texture_class" not in metrics["categories"]  # not in the native sites
    assert metrics["results"]["deepsalt"]["seen"]["n"] > 5
    out = tmp_path / "soc.zarr"
    r = _cli("map", "--stac", world / "stac", "--model", run / "bundle", "--covariates", world / "covariates", "--out", out,
             "--epoch", "2024", "--mc-samples", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    ds = open_cube(str(out))
    assert {"soc", "soc_sd"} <= set(ds.data_vars) and "ece" not in ds.data_vars
    assert ds["soc"].attrs["units"] == "%" and ds.attrs["target"]["name"] == "soc"
    assert list(ds["threshold"].values) == [0.5, 1.5, 3.0] and ds.attrs["target"]["classes"][-1] == [None, "very high"]
    assert json.loads((run / "config.json").read_text())["mir_grid"] is None
    v = np.concatenate([d["soc"].ravel() for d in tile_arrays(out).values()])  # the recorded tiles, not the extent
    assert np.isfinite(v).sum() > 10_000 and 0.01 <= np.nanmin(v) and np.nanmax(v) <= 30
    r = _cli("score", "--cube", out, "--world", world)  # against the world's SOC truth rasters
    assert r.returncode == 0 and json.loads(r.stdout)["overall"]["n_pixels"] == int(np.isfinite(v).sum())
    # an ECe model cannot write into the SOC cube
    r = _cli("map", "--stac", world / "stac", "--model", trained[0] / "bundle", "--covariates", world / "covariates",
             "--out", out, "--epoch", "2024")
    _one_line_exit_2(r, "the cube holds soc, the model predicts ece")
