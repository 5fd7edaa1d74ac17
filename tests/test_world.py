"""The synthetic world: formats, determinism, realism."""

import hashlib
import json

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio

from deepsalt.config import WorldConfig
from deepsalt.data.lab import read_lab_table
from deepsalt.data.synthetic import enmap_spectra, lab_spectra
from deepsalt.data.synthetic.fields import RandomFields, SoilPhysics, soil_at
from deepsalt.data.synthetic.world import build_world
from deepsalt.spectra.bands import enmap_bands
from deepsalt.spectra.mir import mir_grid


def _items(world):
    """Items as written (raw JSON, so pystac's projection-extension migration does not rename fields)."""
    return json.loads((world / "stac" / "items.json").read_text())["features"]


def test_world_layout_and_formats(world):
    summary = json.loads((world / "world.json").read_text())
    assert summary["config"]["preset"] == "tiny" and summary["config"]["seed"] == 7
    items = _items(world)
    assert len(items) == 3
    assert {i["assets"]["image"]["proj:epsg"] for i in items} >= {32612, 32613}  # two UTM zones
    bands = enmap_bands()
    for raw in items:
        item = pystac.Item.from_dict(raw)
        assert raw["properties"]["proj:epsg"] is None  # as DLR: read the asset's
        eo = raw["assets"]["image"]["eo:bands"]
        assert [b["center_wavelength"] for b in eo] == bands.centers_nm.tolist()
        assert [b["full_width_half_max"] for b in eo] == bands.fwhm_nm.tolist()
        assert {"image", "metadata", "quality_cloud", "quality_cloud_shadow", "quality_haze", "quality_snow"} <= set(item.assets)
        assert item.assets["quality_cloud"].roles == ["quality", "cloud"]
        with rasterio.open(item.assets["image"].href) as ds:
            assert ds.count == 224 and ds.dtypes[0] == "int16" and ds.nodata == -32768
            assert ds.res == (30.0, 30.0) and ds.crs.to_epsg() == raw["assets"]["image"]["proj:epsg"]
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert 0 <= float(item.properties["eo:cloud_cover"]) <= 25
    lab = read_lab_table(world / "lab" / "mir_library.parquet")
    assert lab.spectra.shape == (1000, 1765)
    assert (lab.meta["depth_top_cm"] == 0).all() and (lab.meta["depth_bottom_cm"] == 12).all()
    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    assert len(sites) == 180 and set(sites["region"]) == {"seen", "unseen"}
    assert sum(c.startswith("refl_") for c in sites.columns) == 224
    for col in ["sand", "clay", "tm_min", "tm_max", "tm_avg", "pr_min", "pr_max", "pr_avg", "koppen", "texture_class"]:
        assert sites[col].notna().all(), col
    for name in ["sand", "clay", "tm_min", "tm_max", "tm_avg", "pr_min", "pr_max", "pr_avg"]:
        with rasterio.open(world / "covariates" / f"{name}.tif") as ds:
            product = 1 / 400 if name in ("sand", "clay") else 1 / 120  # SoilGrids' 250 m, WorldClim's 30"
            assert ds.crs.to_epsg() == 4326 and ds.res[0] == pytest.approx(product)
    assert (world / "world.png").stat().st_size > 20_000


def test_truth_raster_matches_site_table_and_labels_are_soil_cores(world):
    from deepsalt.data.covariates import sample_covariates
    from deepsalt.data.synthetic.fields import texture_product

    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    for sid, grp in sites.groupby("scene_id"):
        with rasterio.open(world / "truth" / f"{sid}_ECE.TIF") as ds:
            truth = ds.read(1)
        np.testing.assert_allclose(truth[grp["row"], grp["col"]], grp["ece_pixel_dsm"], rtol=1e-6)
    # a label is a core's lab measurement, not the pixel: ln sd of the difference = hypot(point_sd, lab_ece_cv)
    phys = SoilPhysics()
    d = np.log(sites["ece_dsm"] / sites["ece_pixel_dsm"])
    assert abs(d.mean()) < 0.08 and abs(d.std() - np.hypot(phys.point_sd, phys.lab_ece_cv)) < 0.05, (d.mean(), d.std())
    # the covariates are products with errors, on their own grids: sand from the 250 m raster differs from the truth
    lon, lat = sites["longitude"].to_numpy(), sites["latitude"].to_numpy()
    true = soil_at(RandomFields(7), lon, lat)
    err = sites["sand"].to_numpy() - true["sand"]
    rms = np.sqrt(np.mean(err**2))  # the error is spatially correlated: within a few scenes it is mostly an offset
    assert 0.3 * phys.sand_err_sd < rms < 2 * phys.sand_err_sd, rms
    np.testing.assert_allclose(sample_covariates(world / "covariates", lon, lat)[:, 0], sites["sand"], rtol=1e-5)
    np.testing.assert_allclose(texture_product(RandomFields(7), lon, lat)[0], sites["sand"], atol=2.5)  # 250 m cells
    with rasterio.open(world / "covariates" / "sand.tif") as a, rasterio.open(world / "covariates" / "tm_avg.tif") as b:
        assert abs(a.res[0] - phys.soil_product_deg) < 1e-9 and abs(b.res[0] - phys.climate_product_deg) < 1e-9


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".tif",):
            with rasterio.open(p) as ds:
                h.update(ds.read().tobytes())
        elif p.suffix == ".parquet":
            h.update(pd.read_parquet(p).to_csv().encode())
        elif p.name.endswith(".csv.gz"):  # the OSSL download's files, byte for byte (no write time in their headers)
            h.update(p.read_bytes())
    return h.hexdigest()


#: a small world for the builder's own tests: small scenes and regions (covariate products and native forms scale
#: with the regions' area)
SMALL = dict(scene_px=64, n_lab=200, sites_per_scene=20, seen_bbox=(-108.6, 38.0, -107.4, 38.6),  # a world built in seconds
             unseen_bbox=(-109.8, 38.8, -109.4, 39.1), covariate_bbox=(-110.0, 37.9, -107.3, 39.2))


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    cfg = WorldConfig.for_preset("tiny", 3).model_copy(update={**SMALL, "scene_px": 32, "n_lab": 60, "sites_per_scene": 10})
    build_world(cfg, tmp_path / "a", progress=False)
    build_world(cfg, tmp_path / "b", progress=False)
    build_world(cfg.model_copy(update={"seed": 4}), tmp_path / "c", progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    import deepsalt.data.synthetic.world as w

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(w, "_figure", boom)
    with pytest.raises(RuntimeError):
        build_world(WorldConfig.for_preset("tiny").model_copy(update={**SMALL, "scene_px": 32, "n_lab": 60, "sites_per_scene": 10}),
                    tmp_path / "w", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fields_on_rasters_equal_the_fields_at_points():
    """A raster's fields come from matrix products (fields.RandomFields.grid): on a lon/lat raster they are the
    point values exactly; on a 30 m UTM scene, in 64-px blocks taken as affine, close to them."""
    from pyproj import Transformer

    from deepsalt.data.synthetic.fields import FIELD_SCALES

    f = RandomFields(7)
    lon, lat = np.meshgrid(np.linspace(-112, -111, 40), np.linspace(40, 39.5, 530))  # > 512 rows: two row bands
    assert max(np.abs(f.grid(n, lon, lat) - f(n, lon, lat)).max() for n in FIELD_SCALES) < 1e-9
    e, n = np.meshgrid(400015 + 30 * np.arange(130), 4399985 - 30 * np.arange(70))  # blocks of 64 and smaller
    lon, lat = Transformer.from_crs(32612, 4326, always_xy=True).transform(e, n)
    # unit-variance fields; the shortest (80 m) changes by about 0.01 per metre
    dev = {k: np.abs(f.grid(k, lon, lat) - f(k, lon, lat)).max() for k in FIELD_SCALES}
    assert max(dev.values()) < 0.03 and dev["elev"] < 1e-3, dev


def test_ece_is_skewed_with_a_saline_tail():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-110, -106, 40000), rng.uniform(37.5, 39.5, 40000)
    ece = soil_at(RandomFields(11), lon, lat)["ece"]
    assert (ece < 4).mean() > 0.6  # most soils are not saline
    assert (ece > 30).mean() > 0.002  # but a tail of strongly saline ones exists
    assert np.mean(ece) > np.median(ece) * 1.3  # right-skewed


def test_lab_spectra_carry_more_salinity_information_than_enmap():
    """Cross-validated ridge R2 of ECe: lab MIR clearly above EnMAP (as in reality), EnMAP still informative."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(1)
    n = 1500
    lon, lat = rng.uniform(-110, -106, n), rng.uniform(37.5, 39.5, n)
    soil = soil_at(RandomFields(5), lon, lat)
    y = soil["ece"]
    lab = lab_spectra.lab_spectra(soil, mir_grid(), rng)
    bands = enmap_bands()
    basis = enmap_spectra.band_basis(bands)
    sat = enmap_spectra.render(soil, basis, enmap_spectra.snr(bands), rng.standard_normal(224) * basis["atm_scene"], rng.standard_normal(n), rng)
    sat = sat[:, bands.model_band_mask()]
    r2 = lambda X: cross_val_score(RidgeCV(alphas=np.logspace(-6, 3, 19)), X, y, cv=5, scoring="r2").mean()  # noqa: E731
    r2_lab, r2_sat = r2(lab), r2(np.log(np.clip(sat, 1e-3, None)))
    assert r2_lab > 0.9, r2_lab
    assert 0.1 < r2_sat < r2_lab - 0.3, (r2_lab, r2_sat)


def test_enmap_shows_salt_graded_from_low_levels_below_any_crust():
    """Published soil spectra brighten in the VIS-NIR and deepen their 1450/1940 nm bands with the salt content from
    low levels up (SoilPhysics.salt_*): the same bare, dry soil at 1, 3 and 8 dS/m (no crust), noise off, differs
    in that direction and by the documented amounts; with both parameters 0 the old world (no response below the
    crust) comes back."""
    from dataclasses import replace

    bands = enmap_bands()
    basis = enmap_spectra.band_basis(bands)
    c = bands.centers_nm
    vis, b1940 = np.argmin(abs(c - 650)), np.argmin(abs(c - 1940))

    def spectra(phys):
        lon, lat = np.full(3, -108.5), np.full(3, 38.5)
        soil = soil_at(RandomFields(3), lon, lat, phys, ln_ece_offset=np.log(np.array([1.0, 3.0, 8.0]) / soil_at(
            RandomFields(3), lon[:1], lat[:1], phys)["ece"][0]))
        soil.update(crust=np.zeros(3), veg=np.zeros(3), npv=np.zeros(3), moisture=np.zeros(3))  # bare dry soil
        zero = np.zeros(len(bands))
        return soil, enmap_spectra.render(soil, basis, np.full(len(bands), 1e12), zero, np.zeros(3), np.random.default_rng(0))

    phys = SoilPhysics()
    soil, r = spectra(phys)
    np.testing.assert_allclose(soil["ece"], [1, 3, 8], rtol=1e-6)
    assert r[0, vis] < r[1, vis] < r[2, vis], r[:, vis]  # brighter with salt
    depth = 1 - r[:, b1940] / r[:, np.argmin(abs(c - 1800))]  # band depth against the shoulder
    assert depth[0] < depth[1] < depth[2], depth
    # the size: ln(reflectance) rises by salt_brightening x ln(1 + salt g/kg) in the VNIR against the zero-salt world
    _, r0 = spectra(replace(phys, salt_brightening=0.0, salt_band_depth=0.0))
    gain = np.log(r[:, vis] / r0[:, vis])
    np.testing.assert_allclose(gain, soil["salt_bright"] * basis["salt_bright"][vis], rtol=0.02)
    assert np.all(soil["salt_bright"] > 0) and (spectra(replace(phys, salt_brightening=0.0, salt_band_depth=0.0))[0]["salt_bright"] == 0).all()


def test_realism_under_spatial_cv(world):
    """On the world's own sites: under the training's spatial blocks neither the covariates nor the location
    explain ln ECe well (no look-up by fingerprint), while location under a random CV explains clearly more
    (neighbours leak), and a label is not its pixel (point vs pixel, lab error)."""
    from deepsalt.data.synthetic.realism import explained_variance

    r = explained_variance(pd.read_parquet(world / "samples" / "satellite_samples.parquet"), trees=100)
    print(r)
    sp, rnd = r["r2_ln_ece"]["spatial"], r["r2_ln_ece"]["random"]
    assert sp["covariates"] < 0.4 and sp["location"] < 0.2 and rnd["location"] > sp["location"] + 0.15, r
    assert 0.6 < r["label_vs_pixel_r2"] < 0.97, r
