"""Mapping: Ray Data from STAC to the Zarr cube, on the tiny world and the test services."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer

from deepsalt.data.covariates import sample_covariates
from deepsalt.data.stac import search_items
from deepsalt import open_cube
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import mapped_extent, readonly_session, recorded_tiles
from deepsalt.mapping.grid import Grid
from deepsalt.mapping.pipeline import map_region
from deepsalt.mapping.score import quicklook, score
from deepsalt.models.bundle import DeepSaltBundle

REPO = Path(__file__).resolve().parents[1]


from conftest import deepsalt_lines, map_cfg as _cfg, ray_head


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_cube_opens_with_xarray_and_rioxarray(cube):
    out, summary = cube
    # a user's script imports deepsalt alone: open_cube registers .rio itself (in this process another test may have)
    got = subprocess.run([sys.executable, "-c", "import sys, deepsalt; assert 'rioxarray' not in sys.modules; "
                          f"print(deepsalt.open_cube({str(out)!r}).rio.crs.to_epsg())"], capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout.strip() == "5070", got.stderr[-2000:]
    ds = open_cube(str(out))
    assert ds.rio.crs.to_epsg() == 5070
    assert ds["ece"].dims == ("time", "y", "x") and ds["ece"].dtype == np.float32
    assert ds["ece"].attrs["units"] == "dS m-1"
    assert str(ds["time"].values[0])[:10] == "2024-01-01"
    # P(ECe > 4, 8, 16 dS/m): decoded to [0, 1], NaN where not mapped, falling with the threshold, and the bundle's own
    # predictive distribution for the stored value, sd and DI (to the 1 % it is stored at)
    assert ds["exceedance"].dims == ("time", "threshold", "y", "x") and list(ds["threshold"].values) == [4.0, 8.0, 16.0]
    assert ds["threshold"].attrs["units"] == "dS m-1" and set(ds.attrs["exceedance_decision"]) == {"4", "8", "16"}
    from deepsalt.models.bundle import DeepSaltBundle as Bundle
    b = Bundle.load(ds.attrs["models"]["2024"]["bundle"])
    g = Grid(**ds.attrs["grid"])
    for ty, tx in sorted(recorded_tiles(readonly_session(str(out))))[:4]:  # tile by tile: the extent spans the continent
        sub = ds[["ece", "ece_sd", "di", "exceedance"]].isel(time=0, y=slice(ty * g.chunk, (ty + 1) * g.chunk),
                                                          x=slice(tx * g.chunk, (tx + 1) * g.chunk)).compute()
        ok = np.isfinite(sub["ece"].values)
        p = sub["exceedance"].values[:, ok]
        assert ok.any() and np.isnan(sub["exceedance"].values[:, ~ok]).all() and (p >= 0).all() and (p <= 1).all()
        assert (p[0] >= p[1] - 1e-9).all() and (p[1] >= p[2] - 1e-9).all()
        want = b.exceedance(sub["ece"].values[ok], sub["ece_sd"].values[ok], sub["di"].values[ok])
        np.testing.assert_allclose(p, want, atol=0.0051)
    assert summary["pixels_mapped"] > 10_000
    # empty chunks are never written: only mapped tiles hold chunks, and each mapped tile has its fingerprint
    session = readonly_session(str(out))
    assert len(recorded_tiles(session)) == summary["tiles_mapped"]

    async def n_chunks():
        return len([c async for c in session.chunk_coordinates("/ece")])

    from zarr.core.sync import sync
    assert 0 < sync(n_chunks()) <= summary["tiles_mapped"]
    # the plain recipe from the README reads the same data
    import icechunk
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(out)))
    plain = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    assert plain.sizes == ds.sizes and plain.attrs["scene_ids"] == ds.attrs["scene_ids"]


def test_mapped_pixels_equal_valid_pixels_and_land_in_the_right_cell(cube, world, trained):
    from conftest import tile_arrays

    out, summary = cube
    ds = open_cube(str(out))
    g = Grid(**ds.attrs["grid"])
    ys, xs = mapped_extent(str(out))
    # nothing valid outside the recorded tiles (over the whole mapped extent: one uint8 read) ...
    assert int(summary["pixels_mapped"]) == int(ds["valid"].isel(time=0, y=ys, x=xs).sum())
    # ... and in them, a value exactly where a pixel is valid; the rest read tile by tile: reading every variable over
    # the mapped extent (scenes 100 km apart: 256 M cells for 38,783 pixels) took 24 s
    tiles = tile_arrays(out)
    for k, d in tiles.items():
        np.testing.assert_array_equal(d["valid"] == 1, np.isfinite(d["ece"]), err_msg=f"tile {k}")
        assert np.isnan(d["di"][d["valid"] == 0]).all(), k
    assert int(summary["pixels_mapped"]) == sum(int(np.isfinite(d["ece"]).sum()) for d in tiles.values())

    def at(var, rows, cols):  # the cube's values at grid cells of recorded tiles
        return np.array([tiles[(r // g.chunk, c // g.chunk)][var][r % g.chunk, c % g.chunk] for r, c in zip(rows, cols)])

    bundle = DeepSaltBundle.load(str(trained[0] / "bundle"))
    item = search_items(str(world / "stac"))[0]
    assert item.id in ds.attrs["scene_ids"]
    with rasterio.open(item.assets["image"].href) as src:
        dn, s_tr, s_crs = src.read(), src.transform, src.crs
    eo = item.assets["image"].extra_fields["eo:bands"]
    sel = bundle.select_bands([b["name"] for b in eo], [b["center_wavelength"] for b in eo], item.id)
    to_grid = Transformer.from_crs(s_crs, g.crs, always_xy=True)
    to_scene = Transformer.from_crs(g.crs, s_crs, always_xy=True)
    rng = np.random.default_rng(0)
    cells, stacks = [], []
    for _ in range(200):
        r, c = rng.integers(0, dn.shape[1]), rng.integers(0, dn.shape[2])
        x, y = to_grid.transform(*(s_tr * (c + 0.5, r + 0.5)))
        row, col = g.cell_of(x, y)
        tile = tiles.get((row // g.chunk, col // g.chunk))
        if tile is None or tile["scene"][row % g.chunk, col % g.chunk] != item.id:
            continue
        # the cell's centre falls in a scene pixel at most one pixel from the one we started from ...
        sx, sy = to_scene.transform(g.x0 + (col + 0.5) * g.res, g.y0 - (row + 0.5) * g.res)
        cc, rr = ~s_tr * (sx, sy)
        rr, cc = int(np.floor(rr)), int(np.floor(cc))
        assert abs(rr - r) <= 1 and abs(cc - c) <= 1
        nb = [(rr + i, cc + j) for i in (0, -1, 1) for j in (0, -1, 1) if 0 <= rr + i < dn.shape[1] and 0 <= cc + j < dn.shape[2]]
        cells.append((row, col))
        stacks.append(np.stack([dn[:, a, b] for a, b in nb]).astype(np.float32) * 1e-4)
    # ... and the cube holds the model's prediction for exactly the scene pixel that holds the cell's centre
    # (the read stage looks it up by index; no approximate warp); covariates at the cell centres
    rows, cols = np.array(cells).T
    cov = sample_covariates(world / "covariates", g.x0 + (cols + 0.5) * g.res, g.y0 - (rows + 0.5) * g.res, g.crs)
    pred, _, di = bundle.predict(np.concatenate(stacks)[:, sel], np.repeat(cov, [len(st) for st in stacks], 0), di=True)
    cube_ece, cube_di, cube_aoa = at("ece", rows, cols), at("di", rows, cols), at("aoa", rows, cols)
    checked = exact = 0
    splits = np.cumsum([len(st) for st in stacks])[:-1]
    for i, (p, d) in enumerate(zip(np.split(pred, splits), np.split(di, splits))):
        hit = np.flatnonzero(np.isclose(p, cube_ece[i], rtol=1e-5))
        assert hit.size, (cube_ece[i], p)
        exact += hit[0] == 0
        checked += 1
        # the pixel's dissimilarity index and its area-of-applicability flag, from the same inputs
        assert cube_di[i] == pytest.approx(d[0], rel=1e-4, abs=1e-6) and cube_aoa[i] == int(d[0] <= bundle.aoa_threshold)
    assert checked > 50 and exact == checked


def test_read_tasks_of_one_or_many_tiles_make_the_same_cube(cube, world, trained, tmp_path):
    """How tiles are grouped into read tasks, and where the student runs (in them or in an actor pool), are execution
    details: the cube must not depend on them."""
    from conftest import assert_tiles_equal, tile_arrays

    out, summary = cube
    one = tmp_path / "one.zarr"
    logs = []
    s = map_region(_cfg(world, trained[0] / "bundle", one, tiles_per_read_task=1, inference="actors"), log=logs.append)
    assert any("student in up to" in line and "actor(s)" in line for line in logs), logs  # the reference: in the tasks
    assert s["tiles_mapped"] == summary["tiles_mapped"] > 4  # more tiles than one default read task takes
    assert_tiles_equal(tile_arrays(one), tile_arrays(out))
    # nor on the storage layout: unsharded (one object per chunk) and 2 x 2 shards (the default) hold the same
    # values, the sharded one in fewer objects
    flat = tmp_path / "flat.zarr"
    map_region(_cfg(world, trained[0] / "bundle", flat, shard=1), log=lambda *_: None)
    assert_tiles_equal(tile_arrays(flat), tile_arrays(out))
    assert open_cube(str(out)).ece.encoding["shards"] == (1, 512, 512) and open_cube(str(flat)).ece.encoding.get("shards") is None
    objects = {p: sum(1 for f in (p / "chunks").rglob("*") if f.is_file()) for p in (flat, out)}
    assert objects[out] < objects[flat], objects


def test_a_read_task_builds_one_aws_session_not_one_per_file(world, trained, tmp_path, monkeypatch):
    """With AWS credentials in the environment (as for inputs on S3; the suite's services set them), rasterio builds
    a boto3 session for every GDAL environment it enters (~20-30 ms each): a read task enters one for all its tiles,
    not one per file it opens (a tile opens ~20: image, quality masks, covariates)."""
    import pickle

    import rasterio.session

    from deepsalt.mapping.pipeline import prepare_inputs
    from deepsalt.mapping.tiles import prepare_tiles

    assert os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    cfg = _cfg(world, trained[0] / "bundle", tmp_path / "unused.zarr")
    inp = prepare_inputs(cfg, log=lambda *_: None)
    ids = sorted({i.id for its in inp.tiles.values() for i in its})
    tasks = [{"ty": ty, "tx": tx, "fp": 1, "items": [json.dumps(i.to_dict(include_self_link=False)) for i in its],
              "scene_index": [ids.index(i.id) for i in its]} for (ty, tx), its in inp.tiles.items()]
    sessions = []
    real = rasterio.session.AWSSession.__init__

    def counted(self, *a, **k):
        sessions.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(rasterio.session.AWSSession, "__init__", counted)
    rows = prepare_tiles({"shards": pickle.dumps([tasks])}, grid=inp.grid, covariates=cfg.covariates,
                         band_names=inp.meta["band_names"], band_centers=inp.meta["band_centers_nm"],
                         quality=tuple(cfg.quality_masks))
    assert len(tasks) == 7 and sum(len(r["pix"]) for r in rows) == 38_783  # every tile of the tiny world, read
    assert len(sessions) == 1, f"{len(sessions)} AWS sessions for one read task of {len(tasks)} tiles"


def test_cube_scores_like_the_model_and_quicklook(cube, world, trained, tmp_path):
    out, _ = cube
    s = score(str(out), world)
    assert s["overall"]["n_pixels"] > 10_000 and set(s["scenes"])
    # the figures users judge a map by, overall, per region and scene, and for a map of each scene's true median
    regions = {sc["id"]: sc["region"] for sc in json.loads((world / "world.json").read_text())["scenes"]}
    for part in (s["overall"], s["seen"], *s["scenes"].values(), s["reference_scene_median"]["overall"]):
        assert {"mae", "rmse", "r2", "r2_ln", "spearman", "n_pixels"} <= set(part)
        assert set(part["classes"]) == {"4", "8", "16"} and {"recall", "precision", "f1", "auc"} <= set(part["classes"]["4"])
    assert {sid: sc["region"] for sid, sc in s["scenes"].items()} == {sid: regions[sid] for sid in s["scenes"]}
    assert s["overall"]["n_pixels"] == sum(sc["n_pixels"] for sc in s["scenes"].values())
    # a scene's true median everywhere has no rank within a scene (AUC 0.5 in each) and its own MAE
    assert all(sc["classes"]["4"]["auc"] in (0.5,) or np.isnan(sc["classes"]["4"]["auc"])
               for sc in s["reference_scene_median"]["scenes"].values())
    assert s["exceedance_decision"] == open_cube(str(out)).attrs["exceedance_decision"]
    rel = s["reliability"]["overall"]["4"]
    assert sum(d["n"] for d in rel["deciles"]) == s["overall"]["n_pixels"] and np.isfinite(rel["brier"])
    # in hindsight no decision probability beats the best one on the same pixels, the cube's own included
    hind = s["hindsight_decision"]["overall"]["4"]
    assert hind["best_f1"]["f1"] >= s["overall"]["classes"]["4"]["f1"] - 1e-9
    # the cube against the truth rasters vs the bundle on the labelled sites of the same scenes
    import pandas as pd
    sites = pd.read_parquet(world / "samples" / "satellite_samples.parquet")
    b = DeepSaltBundle.load(str(trained[0] / "bundle"))
    cols = [f"refl_{n}" for n in b.band_names]
    pred, _ = b.predict(sites[cols].to_numpy(np.float32), sites[["sand", "clay", "tm_min", "tm_max", "tm_avg", "pr_min", "pr_max", "pr_avg"]].to_numpy(np.float32))
    site_mae = float(np.mean(np.abs(pred - sites["ece_pixel_dsm"].to_numpy())))  # the pixel's truth, not the core
    assert abs(s["overall"]["mae"] - site_mae) < 0.5 * site_mae + 0.2
    png = quicklook(str(out), tmp_path / "q.png", world=world)  # FAO classes, sd, residuals per region
    assert png.stat().st_size > 20_000


def test_repeated_run_writes_nothing(cube, world, trained):
    out, _ = cube
    before = _files(out)
    again = map_region(_cfg(world, trained[0] / "bundle", out), log=lambda *_: None)
    assert again["tiles_mapped"] == 0 and again["published"] is False
    assert _files(out) == before


def test_cube_on_s3_from_the_stac_api_through_transient_errors(world, trained, stac_url, s3_bucket, s3_endpoint):
    from s3_fault_proxy import FaultProxy

    url = f"s3://{s3_bucket}/cube.zarr"
    # the first 4 chunk PUTs get 503 SlowDown, which the store client must retry
    with FaultProxy(s3_endpoint, match="/chunks/", fail_first=4) as proxy:
        cfg = _cfg(world, trained[0] / "bundle", url, stac=stac_url, mc_samples=0,
                   storage_options={"client_kwargs": {"endpoint_url": proxy.url}})
        s = map_region(cfg, log=lambda *_: None)
    assert proxy.failed == 4 and s["published"]
    so = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    ds = open_cube(url, so)
    ys, xs = mapped_extent(url, so)
    assert int(ds["valid"][0, ys, xs].sum()) == s["pixels_mapped"] > 0
    from conftest import tile_arrays  # the values tile by tile: the mapped extent spans scenes 100 km apart

    assert sum(int(np.isfinite(d["ece"]).sum()) for d in tile_arrays(url, so).values()) == s["pixels_mapped"]


@pytest.mark.parametrize("fault", ["missing_asset", "corrupt_cog", "band_count", "covariates", "stac_down", "bucket"])
def test_faults_fail_clearly_and_publish_nothing(fault, world_copy, trained, tmp_path, s3_endpoint):
    out = tmp_path / "c.zarr"
    kw = {}
    items_path = world_copy / "stac" / "items.json"
    fc = json.loads(items_path.read_text())
    first = fc["features"][0]
    if fault == "missing_asset":
        del first["assets"]["quality_cloud"]
        match = "missing asset 'quality_cloud'"
    elif fault == "corrupt_cog":
        Path(first["assets"]["image"]["href"]).write_bytes(b"II*\x00" + os.urandom(5000))
        match = "not a readable GeoTIFF"
    elif fault == "band_count":
        first["assets"]["image"]["eo:bands"] = first["assets"]["image"]["eo:bands"][:200]
        match = "image has 224 bands but the item's eo:bands lists 200"
    elif fault == "covariates":
        for f in (world_copy / "covariates").glob("*.tif"):
            with rasterio.open(f) as src:
                a, prof = src.read(), src.profile
            a[:, :, 350:] = src.nodata  # cut the rasters east of ~110.5 W
            with rasterio.open(f, "w", **{**prof, "driver": "GTiff"}) as dst:
                dst.write(a)
        match = "covariates do not cover tile"
    elif fault == "stac_down":
        kw["stac"] = "http://127.0.0.1:9"
        match = "STAC API search failed"
    else:
        kw.update(out=f"s3://no-such-bucket-{os.getpid()}/c.zarr", storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
        match = "no-such-bucket|NoSuchBucket|not exist|Not Found|404"
    items_path.write_text(json.dumps(fc))
    with pytest.raises((DeepSaltInputError, FileNotFoundError, OSError, ValueError), match=match):
        map_region(_cfg(world_copy, trained[0] / "bundle", kw.pop("out", out), **kw), log=lambda *_: None)
    if out.exists():
        assert open_cube(str(out)).sizes["time"] == 0


def test_all_cloud_scene_is_skipped_not_fatal(world_copy, trained, tmp_path):
    item = search_items(str(world_copy / "stac"))[0]
    path = item.assets["quality_cloud"].href
    with rasterio.open(path) as src:
        prof, shape = src.profile, src.shape
    with rasterio.open(path, "w", **{**prof, "driver": "GTiff"}) as dst:
        dst.write(np.ones((1, *shape), np.uint8))
    s = map_region(_cfg(world_copy, trained[0] / "bundle", tmp_path / "c.zarr", mc_samples=0), log=lambda *_: None)
    from conftest import tile_arrays

    assert item.id in open_cube(str(tmp_path / "c.zarr")).attrs["scene_ids"]  # planned, but no pixel comes from it
    tiles = tile_arrays(tmp_path / "c.zarr")  # the recorded tiles (the mapped extent spans scenes 100 km apart)
    assert s["pixels_mapped"] == sum(int(d["valid"].sum()) for d in tiles.values()) > 0
    assert not any((d["scene"] == item.id).any() for d in tiles.values())


def test_ray_job_submit_map_region(world, trained, tmp_path):
    out = tmp_path / "job.zarr"
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "RAY_TRAIN"))}
    with ray_head(num_cpus=2, dashboard=True) as (_, dash):  # the services' heads have no dashboard, so no jobs API
        cmd = ["ray", "job", "submit", "--address", dash, "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"env_vars": env}),
               "--", "python", "jobs/map_region.py", "--stac", str(world / "stac"), "--model", str(trained[0] / "bundle"),
               "--covariates", str(world / "covariates"), "--out", str(out), "--epoch", "2024", "--mc-samples", "0"]
        for _ in range(6):  # a head whose dashboard answers may not have registered its job agent yet: Ray says to retry
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
            if "No available agent to submit job" not in r.stdout + r.stderr:
                break
            time.sleep(5)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "published epoch 2024" in r.stdout
    ys, xs = mapped_extent(str(out))
    assert int(open_cube(str(out))["valid"][0, ys, xs].sum()) > 10_000


def test_s3_permanent_write_error_fails_clearly_and_commits_nothing(world, trained, s3_bucket, s3_endpoint):
    from s3_fault_proxy import FaultProxy

    from deepsalt.mapping.cube import ensure_template, open_repo
    from deepsalt.mapping.pipeline import grid_for

    url = f"s3://{s3_bucket}/cube.zarr"
    so = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    cfg = _cfg(world, trained[0] / "bundle", url, mc_samples=0)
    ensure_template(open_repo(url, so, create=True), url, grid_for(cfg))  # the empty cube exists; tile writes then fail
    with FaultProxy(s3_endpoint, match="/chunks/", fail_first=None) as proxy:  # every chunk write: 403 AccessDenied
        cfg = _cfg(world, trained[0] / "bundle", url, mc_samples=0, storage_options={"client_kwargs": {"endpoint_url": proxy.url}})
        with pytest.raises(DeepSaltInputError, match=r"cube.zarr \(variable \w+, tile \d+_\d+\): writing to the cube failed: "
                                                      r".*nothing was committed"):
            map_region(cfg, log=lambda *_: None)
    assert proxy.failed >= 1
    assert open_cube(url, so).sizes["time"] == 0  # readers see no epoch, and no tile is recorded
    assert not recorded_tiles(readonly_session(url, so))


def test_point_reads_one_pixel_with_its_scene_and_date(cube, world, trained):
    from typer.testing import CliRunner

    import deepsalt
    from deepsalt.cli import app

    out, _ = cube
    ds = open_cube(str(out))
    ys, xs = mapped_extent(str(out))
    valid = ds["valid"][0, ys, xs].values
    r, c = np.argwhere(valid == 1)[len(np.argwhere(valid == 1)) // 2]
    row, col = ys.start + r, xs.start + c
    lon, lat = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True).transform(float(ds.x[col]), float(ds.y[row]))
    p = deepsalt.point(str(out), lon, lat)
    e = p["epochs"][0]
    assert (p["row"], p["col"]) == (row, col) and e["mapped"] and e["epoch"] == "2024-01-01"
    assert e["ece"] == pytest.approx(float(ds["ece"][0, row, col])) and e["ece_sd"] > 0 and e["units"] == "dS m-1"
    assert e["scene"] == ds.attrs["scene_ids"][int(ds["scene"][0, row, col])]
    # the area of applicability, and the calibrated 90 % interval around the prediction
    assert e["di"] == pytest.approx(float(ds["di"][0, row, col])) and e["inside_aoa"] == (int(ds["aoa"][0, row, col]) == 1)
    lo, hi = e["interval90"]
    assert lo < e["ece"] < hi
    # the exceedance probabilities and the map's call at the cube's decision probability
    dec = ds.attrs["exceedance_decision"]
    for t, x in e["exceedance"].items():
        assert x["probability"] == pytest.approx(float(ds["exceedance"].sel(threshold=float(t))[0, row, col]), abs=1e-6)
        assert x["called_above"] == (x["probability"] >= dec[t] - 1e-9)
    # the bundle's own interval for the same prediction, MC sd and DI (its width grows with the DI)
    want = DeepSaltBundle.load(str(trained[0] / "bundle")).interval([e["ece"]], [e["ece_sd"]], [e["di"]])
    assert (lo, hi) == pytest.approx((float(want[0][0]), float(want[1][0])), rel=1e-3, abs=1e-4)
    when = {i.id: i.datetime.date().isoformat() for i in search_items(str(world / "stac"))}
    assert e["acquired"] == when[e["scene"]] == str(ds["acq_date"][0, row, col].values)[:10]  # decoded to a date
    # the -1 fill is declared: unmapped pixels read as NaT. Checked on the 3 x 3 tiles around the pixel, which hold
    # unmapped pixels too: decoding the whole mapped extent (scenes 100 km apart) to dates took 14 s
    chunk = ds.attrs["grid"]["chunk"]
    wy, wx = (slice(max(v // chunk - 1, 0) * chunk, (v // chunk + 2) * chunk) for v in (row, col))
    near = ds["valid"][0, wy, wx].values
    assert (near == 0).any() and (near == 1).any()
    assert np.isnat(ds["acq_date"][0, wy, wx].values[near == 0]).all()
    r = CliRunner().invoke(app, ["point", "--cube", str(out), "--lon", str(lon), "--lat", str(lat)])
    assert r.exit_code == 0 and json.loads(r.stdout)["epochs"][0]["scene"] == e["scene"]
    r = CliRunner().invoke(app, ["point", "--cube", str(out), "--lon", "10", "--lat", "50"])
    assert r.exit_code == 2 and "outside the cube's grid" in r.stderr


def test_world_copied_elsewhere_with_the_original_deleted_maps_to_the_same_cube(world, cube, trained, tmp_path):
    from conftest import assert_tiles_equal, tile_arrays

    # the services' world as if built at w1 (every path it records rewritten to w1), then moved and w1 deleted
    shutil.copytree(world, tmp_path / "w1", ignore=shutil.ignore_patterns("deliveries", "native"))
    for f in (tmp_path / "w1").rglob("*.json"):
        f.write_text(f.read_text().replace(str(world), str(tmp_path / "w1")))
    assert not [f for f in (tmp_path / "w1").rglob("*") if f.is_file() and str(world).encode() in f.read_bytes()]
    shutil.copytree(tmp_path / "w1", tmp_path / "moved")
    shutil.rmtree(tmp_path / "w1")
    moved = tmp_path / "moved"
    s = map_region(_cfg(moved, trained[0] / "bundle", tmp_path / "c.zarr", stac=str(moved / "stac" / "collection.json")),
                   log=lambda *_: None)
    assert s["published"] and s["tiles_mapped"] == cube[1]["tiles_mapped"]
    assert_tiles_equal(tile_arrays(tmp_path / "c.zarr"), tile_arrays(cube[0]))


def test_export_cog_and_netcdf_open_in_gdal_and_xarray(cube, tmp_path):
    from rasterio.warp import transform_bounds
    from typer.testing import CliRunner

    from deepsalt.cli import app

    out, _ = cube
    ds = open_cube(str(out))
    g = Grid(**ds.attrs["grid"])
    ty, tx = sorted(recorded_tiles(readonly_session(str(out))))[0]  # one mapped tile, shrunk by 2 px: a small region
    c = g.chunk * g.res
    box = transform_bounds(g.crs, "EPSG:4326", g.x0 + tx * c + 60, g.y0 - (ty + 1) * c + 60, g.x0 + (tx + 1) * c - 60,
                           g.y0 - ty * c - 60)
    bbox = ",".join(f"{v:.6f}" for v in box)
    r = CliRunner().invoke(app, ["export", "--cube", str(out), "--out", str(tmp_path / "e.tif"), f"--bbox={bbox}"])
    assert r.exit_code == 0, r.stdout + r.stderr
    with rasterio.open(tmp_path / "e.tif") as src:
        assert src.crs.to_epsg() == 5070 and np.isnan(src.nodata) and src.overviews(1) and src.count == 6
        assert src.descriptions[3].startswith("P(ECe > 4 dS m-1)") and json.loads(src.tags()["exceedance_decision"]) == ds.attrs["exceedance_decision"]
        assert float(src.tags()["aoa_threshold"]) == pytest.approx(ds.attrs["models"]["2024"]["aoa_threshold"])
        iv = json.loads(src.tags()["interval90"])  # the interval can be rebuilt from bands 1-3 and these constants
        assert iv["q"] == pytest.approx(ds.attrs["models"]["2024"]["interval90_q"]) and iv["di_slope"] >= 0
        row0, col0 = round((g.y0 - src.transform.f) / g.res), round((src.transform.c - g.x0) / g.res)
        ref = ds["ece"][0, row0:row0 + src.height, col0:col0 + src.width].values
        assert np.isfinite(ref).sum() > 1000
        np.testing.assert_array_equal(src.read(1), ref)
        np.testing.assert_allclose(src.read(4), ds["exceedance"][0, 0, row0:row0 + src.height, col0:col0 + src.width].values, atol=1e-6)
    r = CliRunner().invoke(app, ["export", "--cube", str(out), "--out", str(tmp_path / "e.nc"), "--format", "netcdf", f"--bbox={bbox}"])
    assert r.exit_code == 0, r.stdout + r.stderr
    nc = xr.open_dataset(tmp_path / "e.nc")
    np.testing.assert_array_equal(nc["ece"][0].values, ref)
    assert int(nc["valid"].sum()) == int(np.isfinite(ref).sum())
    with rasterio.open(f"netcdf:{tmp_path / 'e.nc'}:ece") as src:  # GDAL's netCDF driver, CF grid mapping
        assert src.crs.to_epsg() == 5070 and src.shape == ref.shape
    r = CliRunner().invoke(app, ["export", "--cube", str(out), "--out", str(tmp_path / "x.tif"), "--epoch", "1999"])
    assert r.exit_code == 2 and "no such epoch" in r.stderr and not (tmp_path / "x.tif").exists()


def test_every_publish_describes_the_cube_in_valid_stac(cube):
    import pystac
    from pystac.validation import validate_dict

    out, summary = cube
    assert summary["stac"] == f"{out}/stac/collection.json"
    col_d = json.loads((out / "stac" / "collection.json").read_text())
    item_d = json.loads((out / "stac" / "deepsalt-ece" / "deepsalt-ece.json").read_text())
    # the core STAC 1.1 schemas (bundled with pystac, so this runs offline); the datacube extension's schema is
    # online only, so its required fields are checked below by hand
    validate_dict(col_d, extensions=[])
    validate_dict(item_d, extensions=[])
    item = next(iter(pystac.read_file(str(out / "stac" / "collection.json")).get_items()))
    dims, variables = item.properties["cube:dimensions"], item.properties["cube:variables"]
    assert dims["x"]["type"] == dims["y"]["type"] == "spatial" and dims["x"]["reference_system"] == 5070
    assert dims["time"]["values"] == ["2024-01-01T00:00:00+00:00"] and item.properties["deepsalt:epochs"] == ["2024-01-01"]
    assert set(variables) == {"ece", "ece_sd", "di", "aoa", "valid", "scene", "acq_date", "exceedance"} and variables["ece"]["unit"] == "dS m-1"
    assert variables["exceedance"]["dimensions"] == ["time", "threshold", "y", "x"] and dims["threshold"]["values"] == [4.0, 8.0, 16.0]
    ys, xs = mapped_extent(str(out))
    assert dims["x"]["extent"][0] == float(open_cube(str(out)).x[xs.start]) - 15  # the mapped extent, not the continent
    # the asset's open recipe reads the commit it describes
    ds = open_cube(item.assets["cube"].href, version=item.properties["deepsalt:commit"])
    assert ds.sizes["time"] == 1 and item.properties["deepsalt:commit"] in item.assets["cube"].description
    lon0, lat0, lon1, lat1 = item.bbox
    assert -115 < lon0 < lon1 < -105 and 36 < lat0 < lat1 < 43


def _clear_cells(g: Grid, ty: int, tx: int, items, band_names, band_centers, quality) -> tuple[np.ndarray, dict]:
    """Independently of the read stage: which cells of tile (ty, tx) hold, at their centre, a scene pixel that no
    quality layer flags and whose model bands all have data; and how many centres fall on each flagged kind."""
    from deepsalt.config import QUALITY_ASSETS
    from deepsalt.data.enmap import EnMAPScene

    h, w = g.tile_shape(ty, tx)
    tr = g.tile_transform(ty, tx)
    rows, cols = np.mgrid[0:h, 0:w]
    xc, yc = tr.c + (cols + 0.5) * g.res, tr.f - (rows + 0.5) * g.res
    clear = np.zeros((h, w), bool)
    seen = {"water": 0, "cirrus": 0}
    for item in items:
        scene = EnMAPScene.from_item(item)
        sel = [list(scene.bands.names).index(n) for n in band_names]
        with rasterio.open(scene.href("image")) as src:
            dn, s_tr, s_crs = src.read(), src.transform, src.crs
        flags = {}
        for key in quality:
            with rasterio.open(scene.href(key)) as q:
                flags[key] = q.read(1)
        sx, sy = Transformer.from_crs(g.crs, s_crs, always_xy=True).transform(xc, yc)
        c, r = ~s_tr * (sx, sy)
        c, r = np.floor(c).astype(int), np.floor(r).astype(int)
        inside = (r >= 0) & (r < dn.shape[1]) & (c >= 0) & (c < dn.shape[2])
        ok = ~(dn[sel] == scene.nodata).any(0)
        for key, f in flags.items():
            ok &= ~np.isin(f, QUALITY_ASSETS[key].masked)
        rr, cc = np.where(inside, r, 0), np.where(inside, c, 0)
        clear |= inside & ok[rr, cc]
        seen["water"] += int((inside & (flags["quality_classes"][rr, cc] == 2)).sum())
        seen["cirrus"] += int((inside & (flags["quality_cirrus"][rr, cc] > 0)).sum())
    return clear, seen


def test_every_clear_pixel_is_mapped_and_bad_bands_water_and_cirrus_remove_none_else(cube, world, trained):
    """The world's scenes carry DLR's bad bands (130-135 nodata everywhere), a lake and cirrus. A cell is mapped
    exactly where a scene pixel at its centre is clear: bad bands the model does not read remove no pixel; water
    and cirrus pixels stay NaN."""
    from conftest import tile_arrays

    out, summary = cube
    items = search_items(str(world / "stac"))
    with rasterio.open(items[0].assets["image"].href) as src:
        assert (src.read(130) == -32768).all() and (src.read(135) == -32768).all()
    bundle = DeepSaltBundle.load(str(trained[0] / "bundle"))
    cfg = _cfg(world, trained[0] / "bundle", out)
    g = Grid(**open_cube(str(out)).attrs["grid"])
    total = {"water": 0, "cirrus": 0, "valid": 0}
    for (ty, tx), arrays in tile_arrays(out).items():
        clear, seen = _clear_cells(g, ty, tx, items, bundle.band_names, bundle.meta["band_centers_nm"], cfg.quality_masks)
        np.testing.assert_array_equal(arrays["valid"] == 1, clear, err_msg=f"tile {ty}_{tx}")
        assert np.isfinite(arrays["ece"]).sum() == clear.sum()
        for k in seen:
            total[k] += seen[k]
        total["valid"] += int(clear.sum())
    assert total["valid"] == summary["pixels_mapped"] > 10_000 and total["water"] > 100 and total["cirrus"] > 100, total
    assert summary["pixels_dropped"]["masked by quality_cirrus (cirrus, thin to thick)"] > 0


def test_a_run_that_maps_nothing_says_which_rule_dropped_the_pixels_and_exits_2(world_copy, trained, tmp_path):
    """Band 50, which the model reads, nodata in every pixel of every scene (a product whose bad band was not
    declared): the quality layers mark clear land, the run maps 0 px, so it fails and names the band."""
    from deepsalt.data.cog import write_cog

    for item in search_items(str(world_copy / "stac")):
        href = item.assets["image"].href
        with rasterio.open(href) as src:
            dn, crs, tr = src.read(), src.crs, src.transform
        dn[49] = -32768
        write_cog(href, dn, crs, tr, -32768)
    out = tmp_path / "c.zarr"
    r = subprocess.run([sys.executable, "-m", "deepsalt.cli", "map", "--stac", str(world_copy / "stac"), "--model",
                        str(trained[0] / "bundle"), "--covariates", str(world_copy / "covariates"), "--out", str(out),
                        "--epoch", "2024", "--mc-samples", "0"], capture_output=True, text=True, timeout=600)
    lines = deepsalt_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "mapped 0 pixels" in lines[0] and "nodata in some of the model's bands" in lines[0], lines[0]
    assert "band(s) 50 are nodata in every pixel" in lines[0] and "nothing was committed" in lines[0], lines[0]
    assert open_cube(str(out)).sizes["time"] == 0


def test_out_naming_a_file_is_one_line_exit_2(world, trained, tmp_path):
    f = tmp_path / "cube.zarr"
    f.write_text("not a cube")
    r = subprocess.run([sys.executable, "-m", "deepsalt.cli", "map", "--stac", str(world / "stac"), "--model",
                        str(trained[0] / "bundle"), "--covariates", str(world / "covariates"), "--out", str(f),
                        "--epoch", "2024"], capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "is a file, not a cube folder" in lines[0], r.stderr[-2000:]
    assert f.read_text() == "not a cube"


def _relocated_scene(item, epsg: int, lon: float, lat: float, folder: Path):
    """A copy of a scene's files, georeferenced around (lon, lat) in UTM ``epsg``: the same pixels anywhere on Earth."""
    from affine import Affine

    from deepsalt.data.cog import write_cog
    from deepsalt.data.stac import enmap_item
    from deepsalt.data.enmap import EnMAPScene

    scene = EnMAPScene.from_item(item)
    cx, cy = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    with rasterio.open(scene.href("image")) as src:
        dn = src.read()
    n = dn.shape[1]
    tr = Affine(30.0, 0, round((cx - n * 15) / 30) * 30, 0, -30.0, round((cy + n * 15) / 30) * 30)
    sid = f"{item.id}-{epsg}"
    folder.mkdir(parents=True)
    files = {"image": folder / "image.tif", "metadata": folder / "m.xml"}
    write_cog(files["image"], dn, f"EPSG:{epsg}", tr, -32768)
    files["metadata"].write_text("<level_X/>")
    for key in ("quality_cloud", "quality_cloud_shadow", "quality_haze", "quality_snow", "quality_cirrus", "quality_classes"):
        with rasterio.open(scene.href(key)) as q:
            files[key] = folder / f"{key}.tif"
            write_cog(files[key], q.read(1), f"EPSG:{epsg}", tr)
    return enmap_item(sid, item.datetime, epsg, tr, (n, n), scene.bands, files, {"eo:cloud_cover": 1.0})


def test_global_grid_maps_scenes_in_three_utm_zones_across_both_hemispheres(world, trained, tmp_path):
    """Scenes over the Syr Darya (UTM 42N), the Nile delta (36N) and the Murray-Darling basin (55S, EPSG:32755)
    map onto the global equal-area grid, every clear pixel in its cell."""
    from affine import Affine

    from deepsalt.data.cog import write_cog
    from deepsalt.data.covariates import COVARIATES
    from deepsalt.data.stac import write_item_collection
    from deepsalt.mapping.cube import point

    src = search_items(str(world / "stac"))[0]
    places = [(32642, 66.8, 40.9), (32636, 31.2, 30.6), (32755, 145.9, -34.3)]
    items = [_relocated_scene(src, epsg, lon, lat, tmp_path / "scenes" / str(epsg)) for epsg, lon, lat in places]
    assert [i.bbox[1] < 0 for i in items] == [False, False, True]
    write_item_collection(items, tmp_path / "items.json")
    # coarse covariates over the three regions, in their physical units (values typical of irrigated drylands)
    typical = {"sand": 40, "clay": 22, "tm_min": -3, "tm_max": 33, "tm_avg": 16, "pr_min": 2, "pr_max": 45, "pr_avg": 18}
    (tmp_path / "cov").mkdir()
    for c in COVARIATES:
        write_cog(tmp_path / "cov" / f"{c.name}.tif", np.full((600, 1800), typical[c.name], np.float32), "EPSG:4326",
                  Affine(0.2, 0, -180, 0, -0.2, 60), -9999.0)
    out = tmp_path / "global.zarr"
    cfg = _cfg(world, trained[0] / "bundle", out, stac=str(tmp_path / "items.json"), covariates=str(tmp_path / "cov"),
               grid="global", mc_samples=0)
    s = map_region(cfg, log=lambda *_: None)
    from conftest import tile_arrays

    ds = open_cube(str(out))
    g = Grid(**ds.attrs["grid"])
    assert g.crs == "EPSG:8857" and s["scenes"] == 3
    bundle = DeepSaltBundle.load(str(trained[0] / "bundle"))
    mapped = 0
    for (ty, tx), arrays in tile_arrays(out).items():
        clear, _ = _clear_cells(g, ty, tx, items, bundle.band_names, bundle.meta["band_centers_nm"], cfg.quality_masks)
        np.testing.assert_array_equal(arrays["valid"] == 1, clear, err_msg=f"tile {ty}_{tx}")
        mapped += int(clear.sum())
    assert mapped == s["pixels_mapped"] > 3 * 5_000
    for item in items:  # each scene's centre pixel lands in its own cell, attributed to it
        lon, lat = (item.bbox[0] + item.bbox[2]) / 2, (item.bbox[1] + item.bbox[3]) / 2
        p = point(str(out), lon, lat)["epochs"][0]
        assert p["scene"] in (item.id, None) and (p["scene"] == item.id) == p["mapped"]
    assert sum(point(str(out), (i.bbox[0] + i.bbox[2]) / 2, (i.bbox[1] + i.bbox[3]) / 2)["epochs"][0]["mapped"] for i in items) >= 2
