"""`deepsalt plan-sampling`: field sites where the model does not know, written as a GeoPackage a user opens, fills
in and feeds back to `deepsalt sites`. Whether the proposed sites, labelled and trained on, beat random ones is a
retraining experiment on several worlds: `bench/sampling.py` (bench/results/sampling.json)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from deepsalt.data.sites import read_sites
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import point
from deepsalt.mapping.grid import Grid
from deepsalt.mapping.sampling import plan_sampling

QUIET = dict(log=lambda *_: None)
N = 8
SPACING = 300.0


def _inputs(world, trained, cube):
    return dict(cube=str(cube[0]), model=str(trained[0] / "bundle"), stac=str(world / "stac"),
                covariates=str(world / "covariates"))


def _read(gpkg):
    meta, _, geom, fields = pyogrio.raw.read(gpkg)
    pts = shapely.from_wkb(geom)
    return meta, dict(zip(meta["fields"], fields)), shapely.get_x(pts), shapely.get_y(pts)


def _metres(cube, lon, lat):
    import zarr

    from deepsalt.mapping.cube import readonly_session

    g = Grid(**zarr.open_group(readonly_session(str(cube)).store, mode="r").attrs["grid"])
    return np.column_stack(Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(lon, lat))


def test_plan_covers_the_unknown_better_than_random(world, trained, cube, tmp_path):
    kw = dict(**_inputs(world, trained, cube), n=N, pool=1500, spacing_m=SPACING, seed=3, **QUIET)
    cov = plan_sampling(out=tmp_path / "plan.gpkg", **kw)
    rnd = plan_sampling(out=tmp_path / "random.gpkg", method="random", **kw)
    # the tiny model leaves part of the map outside its area of applicability (the held-out scene, mostly)
    assert cov["pool_outside_aoa"] > 0.02, cov
    assert cov["pool_outside_aoa"] == rnd["pool_outside_aoa"]  # the same pool: only the choice differs
    # as training sites (the model held fixed), the planned ones bring more of the pool inside than random ones
    assert cov["pool_outside_aoa_with_sites"] < rnd["pool_outside_aoa_with_sites"], (cov, rnd)
    assert cov["pool_outside_aoa_with_sites"] < cov["pool_outside_aoa"]
    assert cov["sites_outside_aoa"] > rnd["sites_outside_aoa"] or cov["sites_outside_aoa"] == N
    meta, f, lon, lat = _read(tmp_path / "plan.gpkg")
    assert meta["crs"] == "EPSG:4326" and len(lon) == cov["n"] == N
    assert list(f["rank"]) == list(range(1, N + 1))
    assert all(len(r) > 20 for r in f["reason"]) and (f["di"][f["outside_aoa"] == 1] > f["aoa_threshold"][0]).all()
    assert (f["interval_lo"] <= f["mapped_ece"]).all() and (f["mapped_ece"] <= f["interval_hi"]).all()
    xy = _metres(cube[0], lon, lat)
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(N, 1)].min() >= SPACING - 1  # spread in geography
    for k in range(N):  # each site is a mapped pixel of the epoch, with the value and DI the plan reports
        p = point(str(cube[0]), float(lon[k]), float(lat[k]))["epochs"][0]
        assert p["mapped"] and p["ece"] == pytest.approx(f["mapped_ece"][k], rel=1e-4), p
        assert p["di"] == pytest.approx(f["di"][k], rel=1e-3, abs=1e-3)
    # the field team fills in the measured values: the file is a site table as it is
    sites, found = read_sites(str(tmp_path / "plan.gpkg"))
    assert found == ["ece_dsm"] and len(sites) == N and sites["date"].notna().all()


def test_exclusions_and_bad_input(world, trained, cube, tmp_path):
    kw = dict(**_inputs(world, trained, cube), n=4, pool=800, spacing_m=SPACING, seed=1, **QUIET)
    first = plan_sampling(out=tmp_path / "a.gpkg", **kw)
    _, f, lon, lat = _read(tmp_path / "a.gpkg")
    # keep the next plan away from those sites (points) and out of a box around the first (a polygon)
    box = shapely.box(lon[0] - 0.01, lat[0] - 0.01, lon[0] + 0.01, lat[0] + 0.01)
    geoms = shapely.to_wkb(np.array([*shapely.points(lon, lat), box], dtype=object))
    pyogrio.raw.write(str(tmp_path / "avoid.gpkg"), geoms, [np.arange(len(geoms))], ["k"], driver="GPKG",
                      geometry_type="Unknown", crs="EPSG:4326")
    again = plan_sampling(out=tmp_path / "b.gpkg", exclude=str(tmp_path / "avoid.gpkg"), **kw)
    _, _, lon2, lat2 = _read(tmp_path / "b.gpkg")
    assert again["eligible_pixels"] < first["eligible_pixels"]
    assert not shapely.contains_xy(box, lon2, lat2).any()
    a, b = _metres(cube[0], lon, lat), _metres(cube[0], lon2, lat2)
    assert np.hypot(*(a[:, None] - b[None]).transpose(2, 0, 1)).min() >= SPACING - 1
    for bad, words in ((dict(n=0), "--n 0"), (dict(out=tmp_path / "x.shp"), "GeoPackage"),
                       (dict(bbox=(0.0, 0.0, 1.0, 1.0)), "no mapped tile"),
                       (dict(exclude=str(tmp_path / "nothing.gpkg")), "--exclude"),
                       (dict(method="best"), "--method best")):
        args = {**kw, "out": tmp_path / "c.gpkg", **bad}
        with pytest.raises(DeepSaltInputError, match=words):
            plan_sampling(**args)
    assert not (tmp_path / "c.gpkg").exists() and not list(tmp_path.glob(".*tmp*"))  # nothing half-written


def test_cli_writes_a_plan(world, trained, cube, tmp_path):
    i = _inputs(world, trained, cube)
    r = subprocess.run([sys.executable, "-m", "deepsalt.cli", "plan-sampling", "--cube", i["cube"], "--model", i["model"],
                        "--n", "3", "--out", str(tmp_path / "p.gpkg"), "--stac", i["stac"], "--covariates", i["covariates"],
                        "--method", "random", "--pool", "300"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["n"] == 3 and s["method"] == "random" and "[3/3] wrote 3 sites" in r.stderr
    assert len(_read(tmp_path / "p.gpkg")[2]) == 3
