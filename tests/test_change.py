"""`deepsalt change`: the change between two epochs of a cube, its calls and flags; scored on an oracle map (the
world's truth with independent noise per epoch, and known changes in the second), so that the calling is tested
apart from the model's skill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import shapely
import xarray as xr
import zarr
from pyproj import CRS, Transformer

from conftest import map_cfg, shared
from deepsalt.data.synthetic.fields import CHANGE_DOWN, CHANGE_UP, RandomFields, ece_change
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.change import CALL_FILL, WIDE, change, change_at
from deepsalt.mapping.cube import open_repo, recorded_tiles
from deepsalt.mapping.grid import Grid
from deepsalt.mapping.pipeline import map_region
from deepsalt.mapping.score import _truth_on
from deepsalt.targets import get_target

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="session")
def two_epochs(world, trained, cube, tmp_path_factory):
    """The shared cube copied, and the same scenes mapped into it again as epoch 2025 (read-only: copy to change)."""
    def build(d):
        shutil.copytree(cube[0], d / "cube.zarr")
        map_region(map_cfg(world, trained[0] / "bundle", d / "cube.zarr", epoch="2025"), **QUIET)

    return shared(tmp_path_factory, "two-epochs", build)[0] / "cube.zarr"


def test_the_same_scenes_mapped_as_two_epochs_show_no_change(two_epochs, tmp_path):
    out = tmp_path / "change.zarr"
    s = change(str(two_epochs), "2024", "2025", str(out), **QUIET)
    compared = s["pixels"]["increase"] + s["pixels"]["decrease"] + s["pixels"]["no detectable change"]
    assert compared > 10_000 and s["share_called_change"] == 0, s  # the same predictions: nothing to call
    assert s["pixels"]["outside the area of applicability in an epoch"] > 0  # the tiny model's AOA leaves some out
    ds = xr.open_zarr(out, consolidated=False)  # CF, with the grid's CRS: what a user opens
    assert {"change", "change_ln", "change_lo", "change_hi", "call", "flag"} <= set(ds.data_vars)
    assert CRS(ds.rio.crs) == CRS(Grid(**ds.attrs["grid"]).crs)
    raw = zarr.open_group(out, mode="r")
    call, flag = raw["call"][:], raw["flag"][:]
    assert ((call == CALL_FILL) == (flag != 0)).all()  # flagged pixels are never called
    assert (flag == 2).sum() == s["pixels"]["outside the area of applicability in an epoch"]
    assert raw.attrs["summary"]["sigma"] == s["sigma"]
    # `deepsalt point --change`: the store's values at a point
    r, c = np.argwhere(flag == 0)[len(np.argwhere(flag == 0)) // 2]
    sub = Grid(**raw.attrs["grid"])
    lon, lat = Transformer.from_crs(sub.crs, "EPSG:4326", always_xy=True).transform(sub.x0 + (c + 0.5) * sub.res, sub.y0 - (r + 0.5) * sub.res)
    at = change_at(str(out), lon, lat)
    assert at["compared"] and at["call"] == {1: "increase", -1: "decrease", 0: "no detectable change"}[int(call[r, c])]
    assert at["change_ln"] == pytest.approx(float(raw["change_ln"][r, c]), abs=1e-4) and at["confidence"] == 0.99


def test_bad_requests_are_one_line_and_nothing_is_written(two_epochs, tmp_path):
    for args, match in ((("2023", "2025"), r"--from 2023: the cube has no such epoch \(.*epochs: 2024-01-01, 2025-01-01"),
                        (("2024", "2024"), "name the same epoch"), (("2024", "2025", (-80.0, 30.0, -79.0, 31.0)), "no tile is mapped in both")):
        with pytest.raises(DeepSaltInputError, match=match):
            change(str(two_epochs), *args[:2], str(tmp_path / "c.zarr"), bbox=args[2] if len(args) > 2 else None, **QUIET)
        assert not list(tmp_path.iterdir())
    with pytest.raises(DeepSaltInputError, match=r"--regions .*nope.gpkg: not a readable vector file"):
        change(str(two_epochs), "2024", "2025", str(tmp_path / "c.zarr"), regions=str(tmp_path / "nope.gpkg"), **QUIET)
    assert not list(tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "deepsalt.cli", "change", "--cube", str(two_epochs), "--from", "2024", "--to", "2031",
                        "--out", str(tmp_path / "c.zarr")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no such epoch" in r.stderr, r.stderr


def test_an_oracle_map_s_changes_are_called_and_nothing_else(world, two_epochs, tmp_path):
    """Epoch 1: the world's true ECe, epoch 2: the same soil after the second epoch's known changes (x6 salinised,
    /4 reclaimed), each with its own noise (sd 0.2 in ln ECe, as two looks at one soil differ). The calls find
    >= 80 % of the pixels that crossed 4 dS/m widely and call a change in <= 5 % of the unchanged ones; pixels
    acquired in another season are flagged, not called."""
    d = tmp_path / "oracle.zarr"
    shutil.copytree(two_epochs, d)
    repo = open_repo(str(d))
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    g = Grid(**root.attrs["grid"])
    fields, rng = RandomFields(json.loads((world / "world.json").read_text())["config"]["seed"]), np.random.default_rng(0)
    to_ll = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    tiles = sorted(recorded_tiles(session, 0) & recorded_tiles(session, 1))
    truth = {}
    for i, (ty, tx) in enumerate(tiles):
        ys, xs = g.tile_slices(ty, tx)
        e1 = _truth_on(world, g, ys, xs, get_target("ece")).astype(float)
        lon, lat = to_ll.transform(*np.meshgrid(g.x0 + (np.arange(xs.start, xs.stop) + 0.5) * g.res,
                                                g.y0 - (np.arange(ys.start, ys.stop) + 0.5) * g.res))
        cls = ece_change(fields, lon, lat)
        e2 = e1 * np.select([cls > 0, cls < 0], [CHANGE_UP, 1 / CHANGE_DOWN], 1.0)
        root["ece"][0, ys, xs] = (e1 * np.exp(0.2 * rng.standard_normal(e1.shape))).astype(np.float32)
        root["ece"][1, ys, xs] = (e2 * np.exp(0.2 * rng.standard_normal(e2.shape))).astype(np.float32)
        root["aoa"][0, ys, xs] = np.where(root["valid"][0, ys, xs] == 1, 1, 255).astype(np.uint8)  # the oracle applies everywhere
        root["aoa"][1, ys, xs] = np.where(root["valid"][1, ys, xs] == 1, 1, 255).astype(np.uint8)
        if i == 0:  # this tile's second look came in autumn
            acq = root["acq_date"][1, ys, xs]
            root["acq_date"][1, ys, xs] = np.where(acq >= 0, acq + 120, acq)
        truth[(ty, tx)] = (cls, e1, e2)
    session.commit("an oracle map with known changes")
    # two regions, the west and east halves of the tiles compared, as a GeoPackage in the grid's CRS
    x0, x1 = g.x0 + min(tx for _, tx in tiles) * g.chunk * g.res, g.x0 + (max(tx for _, tx in tiles) + 1) * g.chunk * g.res
    y1, y0 = g.y0 - min(ty for ty, _ in tiles) * g.chunk * g.res, g.y0 - (max(ty for ty, _ in tiles) + 1) * g.chunk * g.res
    xm = x0 + round((x1 - x0) / 2 / g.res) * g.res  # on a pixel edge: every pixel centre in exactly one half
    halves = [shapely.box(x0, y0, xm, y1), shapely.box(xm, y0, x1, y1)]
    pyogrio.raw.write(str(tmp_path / "regions.gpkg"), shapely.to_wkb(halves), [np.array(["west", "east"], dtype=object)],
                      fields=["district"], crs=g.crs, geometry_type="Polygon")
    out = tmp_path / "change.zarr"
    s = change(str(d), "2024", "2025", str(out), regions=str(tmp_path / "regions.gpkg"), **QUIET)
    assert set(s["regions"]) == {"west", "east"}
    for k in ("increase", "decrease", "no detectable change"):
        assert s["regions"]["west"]["pixels"][k] + s["regions"]["east"]["pixels"][k] == s["pixels"][k], k
    assert s["regions"]["west"]["pixels"]["increase"] > 0 and s["regions"]["east"]["pixels"]["increase"] > 0
    raw = zarr.open_group(out, mode="r")
    sub = Grid(**raw.attrs["grid"])
    call, flag = raw["call"][:], raw["flag"][:]
    same, up, autumn = [], [], []
    for i, ((ty, tx), (cls, e1, e2)) in enumerate(truth.items()):
        ys, xs = g.tile_slices(ty, tx)
        oy, ox = ys.start - round((g.y0 - sub.y0) / g.res), xs.start - round((sub.x0 - g.x0) / g.res)
        c = call[oy:oy + cls.shape[0], ox:ox + cls.shape[1]]
        f = flag[oy:oy + cls.shape[0], ox:ox + cls.shape[1]]
        if i == 0:
            autumn.append(f.ravel())
            continue
        ok = (f == 0) & np.isfinite(e1)
        same.append(c[ok & (cls == 0)] != 0)
        up.append(c[ok & (e1 <= 4 / WIDE) & (e2 >= 4 * WIDE)] == 1)
    same, up, autumn = np.concatenate(same), np.concatenate(up), np.concatenate(autumn)
    assert same.size > 5_000 and up.size > 100, (same.size, up.size)
    assert same.mean() <= 0.05 and up.mean() >= 0.8, (same.mean(), up.mean(), s)
    assert (autumn[autumn != 1] == 3).all() and (autumn == 3).sum() > 1_000  # another season: flagged, never called
    assert s["pixels"]["acquired in different seasons"] == (autumn == 3).sum()
    crossed = s["crossed_km2"]["4"]["up"]
    assert crossed["interval90"][0] <= crossed["estimate"] <= crossed["interval90"][1] and crossed["estimate"] > 0


def test_quicklook_of_a_later_epoch_draws_the_change_from_the_earlier(two_epochs, tmp_path):
    import matplotlib.image as mpimg

    from deepsalt.mapping.score import quicklook

    first = mpimg.imread(quicklook(str(two_epochs), tmp_path / "2024.png", epoch="2024-01-01"))
    later = mpimg.imread(quicklook(str(two_epochs), tmp_path / "2025.png"))  # the latest: 2025, after 2024
    assert later.shape[1] == pytest.approx(first.shape[1] * 6 / 5, rel=0.02)  # a sixth panel per row: the change
    assert later.shape[0] == first.shape[0]
    assert not list(tmp_path.glob("deepsalt-quicklook-*"))
