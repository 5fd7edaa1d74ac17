"""The cube as a transactional, versioned store (Icechunk): kills, concurrent runs, remaps, complete
fingerprints, hostile hrefs, secrets and bad input. Real parts throughout: the CLI in subprocesses killed with
SIGKILL, the moto S3 server, Ray, GDAL on real COGs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from conftest import assert_tiles_equal, map_cfg, tile_arrays
from deepsalt import open_cube
from deepsalt.cli import app
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping import cube as cube_mod
from deepsalt.mapping import fingerprint as fp_mod
from deepsalt.mapping.pipeline import map_region, prepare_inputs, tile_fingerprints

QUIET = lambda *_: None  # noqa: E731


def _map_cmd(world, bundle, out, *extra):
    return [sys.executable, "-m", "deepsalt.cli", "map", "--stac", str(world / "stac"), "--model", str(bundle),
            "--covariates", str(world / "covariates"), "--out", str(out), "--epoch", "2024", "--mc-samples", "3", *extra]


def _digest(tiles: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tiles):
        for v in sorted(tiles[k]):
            h.update(repr((k, v)).encode() + np.ascontiguousarray(tiles[k][v]).astype(str if v == "scene" else tiles[k][v].dtype).tobytes())
    return h.hexdigest()


class Poller(threading.Thread):
    """A reader polling the cube's latest state while runs write it; every state it sees goes through ``check``.

    A state is a commit: icechunk snapshots never change, so each new branch tip is read whole (by its commit id) and
    checked once; a poll that finds a tip already checked counts as a read without reading it again. (Re-reading an
    unchanged 7-tile cube every 50 ms, 0.8 CPU-s a read, took most of one of the machine's two cores from the runs
    under test.)"""

    def __init__(self, url, check, storage_options=None):
        super().__init__(daemon=True)
        self.url, self.check, self.so = str(url), check, storage_options
        self.halt, self.reads, self.errors, self.digests = threading.Event(), 0, [], set()
        self.checked: dict[str, str] = {}  # commit id -> digest of what it held

    def run(self):
        while not self.halt.is_set():
            try:
                tip = cube_mod.open_repo(self.url, self.so).lookup_branch(cube_mod.BRANCH)
                if tip not in self.checked:
                    tiles = tile_arrays(self.url, self.so, version=tip)
                    self.checked[tip] = _digest(tiles)
                    self.check(tiles)
                    self.digests.add(self.checked[tip])
                self.reads += 1
            except DeepSaltInputError:  # no cube yet
                pass
            except AssertionError as e:
                self.errors.append(str(e)[:300])
                self.reads += 1
            except Exception as e:  # noqa: BLE001 - an unreadable state is a failure too
                self.errors.append(f"read failed: {type(e).__name__}: {e}"[:300])
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        self.join(30)


def _consistent(tiles: dict) -> None:
    """What any reader must always see: ``valid`` exactly where ``ece`` is finite, every scene index named."""
    for k, d in tiles.items():
        np.testing.assert_array_equal(d["valid"] == 1, np.isfinite(d["ece"]), err_msg=f"tile {k}: valid vs ece")
        assert ((d["scene"] != "") == (d["valid"] == 1)).all(), f"tile {k}: scene vs valid"


# --- kills ------------------------------------------------------------------------------------------------------

#: (line the driver prints, seconds after it): spread over a run, from the search to the commit itself
# (marker, seconds after it, which occurrence of it): a progress line is printed per shard written (the tiny
# world's 7 tiles lie in 3 shards of 2 x 2 tiles), so the kills land after the first, second and last shard
KILL_POINTS = [("[1/4]", 0, 1), ("[2/4]", 0, 1), ("[3/4]", 0, 1), ("[3/4]", 1.0, 1), ("[3/4]", 2.5, 1),
               ("[3/4]", 1.5, 1), ("tiles written ", 0, 1), ("tiles written ", 0, 2), ("tiles written 7/", 0, 1),
               ("committing", 0, 1), ("committing", 0.02, 1), ("committing", 0.1, 1)]


def test_driver_killed_at_12_points_never_leaves_a_partial_cube(world, trained, cube, tmp_path):
    ref = tile_arrays(cube[0])
    out = tmp_path / "killed.zarr"
    cmd = _map_cmd(world, trained[0] / "bundle", out)

    def whole_or_nothing(tiles):
        if tiles:
            assert_tiles_equal(tiles, ref)

    # The driver under test shares one core with this process, at a lower priority: when it prints a marker, this
    # process wakes and kills it before it runs on. Otherwise, with the other pytest-xdist worker keeping both cores
    # busy, a run often finished its last tiles and its commit (a few ms) before this process read the marker, and
    # the kills meant for those points landed after the commit. (The run's Ray work, in the cluster's workers, is
    # not pinned.)
    affinity = os.sched_getaffinity(0)
    cpu = max(affinity)
    os.sched_setaffinity(0, {cpu})
    poller = Poller(out, whole_or_nothing)
    poller.start()
    outcomes = []
    try:
        for marker, delay, nth in KILL_POINTS:
            p = subprocess.Popen(["taskset", "-c", str(cpu), "nice", "-n", "10", *cmd], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            hit, seen = False, 0
            for line in p.stdout:
                seen += marker in line
                if seen == nth:
                    hit = True
                    break
            time.sleep(delay)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
            before = outcomes[-1]["cube"] if outcomes else "no epoch"
            tiles = tile_arrays(out) if (out / "refs").exists() else {}
            whole_or_nothing(tiles)
            outcomes.append({"kill_after": f"{marker} #{nth}", "delay_s": delay, "marker_seen": hit, "before": before,
                             "cube": "complete" if tiles else "no epoch"})
        os.sched_setaffinity(0, affinity)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resubmitted: completes
    finally:
        poller.stop()
        os.sched_setaffinity(0, affinity)
    print(json.dumps(outcomes, indent=1))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len((r.stdout + r.stderr).splitlines()) <= 30  # a quiet console on a non-terminal (Ray's logs need -v)
    # every kill hit its point while the run still had work to do (once a kill landed after the commit, later
    # runs find nothing to do and print no "committing" line)
    assert all(o["marker_seen"] for o in outcomes if o["before"] == "no epoch"), outcomes
    assert sum(o["before"] == "no epoch" for o in outcomes) >= 10
    assert_tiles_equal(tile_arrays(out), ref)
    assert poller.reads > 20 and not poller.errors, poller.errors[:3]
    epochs = [h["epoch"] for h in cube_mod.history(str(out)) if h["epoch"]]
    assert epochs == ["2024"]  # one publication, whichever run made it
    assert any(t.startswith("epoch-2024-r") for t in cube_mod.open_repo(str(out)).list_tags())


# --- concurrent runs -------------------------------------------------------------------------------------------

def _run_together(cmds):
    """Two CLI runs at once, as two jobs on this test process's Ray head (the student in the read tasks, the CPU
    default: neither job holds a CPU the other waits for beyond a task)."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-2000:] + e[-2000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


@pytest.mark.parametrize("pair", ["disjoint", "overlapping"])
def test_concurrent_runs_on_s3_lose_nothing(pair, world, trained, cube, s3_bucket, s3_endpoint):
    url = f"s3://{s3_bucket}/cube"
    so = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bundle = trained[0] / "bundle"
    regions = [("--region", "seen"), ("--region", "unseen")] if pair == "disjoint" else [(), ()]
    summaries = _run_together([_map_cmd(world, bundle, url, *r) for r in regions])
    print(pair, json.dumps(summaries))
    assert_tiles_equal(tile_arrays(url, so), tile_arrays(cube[0]))  # every tile of both runs, as one run makes it
    commits = [h for h in cube_mod.history(url, so) if h["epoch"]]
    assert sum(h["tiles"] for h in commits) == sum(s["tiles_mapped"] for s in summaries if s["published"])
    if pair == "overlapping":  # the later run re-planned on the new state (or started after it): one publication
        assert len(commits) == 1 and sorted(s["published"] for s in summaries) == [False, True]


def _commit_after(other_run, monkeypatch):
    """Make the run under test commit only after ``other_run`` has committed: a real conflict, deterministically."""
    real = cube_mod.commit

    def commit(*a, **k):
        monkeypatch.setattr(cube_mod, "commit", real)
        other_run()
        return real(*a, **k)

    monkeypatch.setattr(cube_mod, "commit", commit)


def test_overlapping_run_replans_on_the_new_state(world, trained, cube, tmp_path, monkeypatch):
    out = tmp_path / "c.zarr"
    cfg = map_cfg(world, trained[0] / "bundle", out)
    other = {}
    _commit_after(lambda: other.update(map_region(cfg, log=QUIET)), monkeypatch)
    logs = []
    s = map_region(cfg, log=logs.append)
    assert other["published"] and other["tiles_mapped"] == cube[1]["tiles_mapped"]
    assert s["attempts"] == 2 and s["published"] is False, s  # re-planned: the other run had mapped every tile
    assert any("re-planning" in line for line in logs)
    assert_tiles_equal(tile_arrays(out), tile_arrays(cube[0]))


def _touch(path: Path) -> None:
    """Rewrite a file with the same bytes: only its modification time changes."""
    data = path.read_bytes()
    time.sleep(0.01)
    path.write_bytes(data)


def test_disjoint_runs_rebase_and_both_land(world_copy, trained, tmp_path, monkeypatch):
    from deepsalt.data.stac import search_items

    out = tmp_path / "c.zarr"
    bundle = trained[0] / "bundle"
    base = map_region(map_cfg(world_copy, bundle, out, mc_samples=0), log=QUIET)
    items = {i.id: i for i in search_items(str(world_copy / "stac"))}
    seen = [i for i in items.values() if i.bbox[1] < 40][0]
    unseen = [i for i in items.values() if i.bbox[1] > 40][0]
    _touch(Path(seen.assets["image"].href))
    _touch(Path(unseen.assets["image"].href))
    a = {}
    _commit_after(lambda: a.update(map_region(map_cfg(world_copy, bundle, out, mc_samples=0, bbox=(-110.0, 37.5, -106.0, 39.5)), log=QUIET)),
                  monkeypatch)
    b = map_region(map_cfg(world_copy, bundle, out, mc_samples=0, bbox=(-113.2, 40.6, -111.8, 41.6)), log=QUIET)
    assert a["published"] and b["published"] and b["attempts"] == 1  # rebased onto a's commit, no re-plan
    assert a["tiles_mapped"] >= 1 and b["tiles_mapped"] >= 1
    again = map_region(map_cfg(world_copy, bundle, out, mc_samples=0), log=QUIET)  # both runs' fingerprints landed
    assert again["tiles_mapped"] == 0 and again["tiles_cleared"] == 0
    msgs = [h["tiles"] for h in cube_mod.history(str(out)) if h["epoch"]]
    assert msgs == [b["tiles_mapped"], a["tiles_mapped"], base["tiles_mapped"]]


# --- remaps and versions ---------------------------------------------------------------------------------------

def _scale_raster(path: Path, add: float = 0.0, mul: float = 1.0) -> None:
    """Rewrite a raster's valid values as ``value * mul + add`` (nodata stays)."""
    with rasterio.open(path) as src:
        a, prof, nd = src.read(), src.profile, src.nodata
    keep = np.isfinite(a) if nd is None or np.isnan(nd) else (a != nd) & np.isfinite(a)
    b = a.copy()
    b[keep] = (a[keep].astype("float64") * mul + add).astype(a.dtype)
    with rasterio.open(path, "w", **{**prof, "driver": "GTiff"}) as dst:
        dst.write(b)


def test_reader_during_a_remap_sees_the_old_or_the_new_epoch_never_a_mix(world_copy, trained, tmp_path):
    out = tmp_path / "c.zarr"
    cfg = map_cfg(world_copy, trained[0] / "bundle", out, mc_samples=0)
    first = map_region(cfg, log=QUIET)
    v1 = tile_arrays(out)
    _scale_raster(world_copy / "covariates" / "sand.tif", mul=0.8)  # new covariates: every pixel's ECe moves
    poller = Poller(out, _consistent)
    poller.start()
    try:
        second = map_region(cfg, log=QUIET)
    finally:
        poller.stop()
    v2 = tile_arrays(out)
    assert second["tiles_mapped"] == first["tiles_mapped"] and second["published"]
    changed = sum(int((np.abs(v1[k]["ece"] - v2[k]["ece"]) > 1e-4).sum()) for k in v1)
    assert changed > 0.5 * first["pixels_mapped"]
    assert poller.reads > 5 and not poller.errors, poller.errors[:3]
    assert poller.digests <= {_digest(v1), _digest(v2)}, "a reader saw a state that is neither the old nor the new epoch"
    # what the map said before the remap stays readable: by tag, by commit id, by date
    assert_tiles_equal(tile_arrays(out, version="epoch-2024-r1"), v1)
    assert_tiles_equal(tile_arrays(out, version=first["commit"]), v1)
    assert_tiles_equal(tile_arrays(out, version="epoch-2024-r2"), v2)
    assert open_cube(str(out), version=first["commit"]).sizes["time"] == 1
    hist = cube_mod.history(str(out))
    assert [h["tags"] for h in hist if h["epoch"]] == [["epoch-2024-r2"], ["epoch-2024-r1"]]
    r = CliRunner().invoke(app, ["history", "--cube", str(out)])
    assert r.exit_code == 0 and "epoch-2024-r2" in r.stdout and str(first["pixels_mapped"]) in r.stdout
    with pytest.raises(DeepSaltInputError, match="no commit at or before"):
        open_cube(str(out), version="1990-01-01")


# --- fingerprints ----------------------------------------------------------------------------------------------

def _edit_item(world: Path, fn) -> str:
    p = world / "stac" / "items.json"
    fc = json.loads(p.read_text())
    fn(fc["features"][0])
    p.write_text(json.dumps(fc))
    return fc["features"][0]["id"]


def _image(item):
    return Path(item["assets"]["image"]["href"])


def _move_image(item):
    new = _image(item).with_name("MOVED_SPECTRAL_IMAGE_COG.TIF")
    shutil.copy2(_image(item), new)
    item["assets"]["image"]["href"] = str(new)


def _more_cloud(item):
    path = Path(item["assets"]["quality_cloud"]["href"])
    with rasterio.open(path) as src:
        a, prof = src.read(), src.profile
    a[0, :8, :8] = 1
    with rasterio.open(path, "w", **{**prof, "driver": "GTiff"}) as dst:
        dst.write(a)


def _edit_bundle(bundle: Path, what: str) -> None:
    if what == "json":
        meta = json.loads((bundle / "bundle.json").read_text())
        meta["scalers"]["covariates"]["shift"][0] += 0.5  # the weights stay; predictions would move
        (bundle / "bundle.json").write_text(json.dumps(meta))
    else:
        from safetensors.numpy import load_file, save_file
        t = load_file(bundle / "weights.safetensors")
        k = sorted(k for k in t if k.startswith("student.") and k.endswith("weight"))[0]
        t[k] = t[k] * 1.01
        save_file(t, bundle / "weights.safetensors")


#: input changed -> which tiles must remap: "scene" (the tiles of the edited scene) or "all"
FINGERPRINT_INPUTS = {
    "gain": ("scene", lambda w, b, c: (_edit_item(w, lambda i: i["assets"]["image"]["eo:bands"][0].update({"enmap:gain_of_band": 1.01e-4})), c)),
    "offset": ("scene", lambda w, b, c: (_edit_item(w, lambda i: i["assets"]["image"]["eo:bands"][5].update({"enmap:offset_of_band": 0.001})), c)),
    "nodata": ("scene", lambda w, b, c: (_edit_item(w, lambda i: i["properties"].update({"enmap:nodata": -9999})), c)),
    "eo_bands": ("scene", lambda w, b, c: (_edit_item(w, lambda i: i["assets"]["image"]["eo:bands"][10].update({"full_width_half_max": 9.9})), c)),
    "image_href": ("scene", lambda w, b, c: (_edit_item(w, _move_image), c)),
    "image_rewritten_same_href": ("scene", lambda w, b, c: (_edit_item(w, lambda i: _touch(_image(i))), c)),
    "quality_mask_content": ("scene", lambda w, b, c: (_edit_item(w, _more_cloud), c)),
    "quality_masks_applied": ("all", lambda w, b, c: (None, c.model_copy(update={"quality_masks": ("quality_cloud",)}))),
    "covariates": ("all", lambda w, b, c: (_scale_raster(w / "covariates" / "tm_max.tif", add=0.5), c)),
    "bundle_json_scalers": ("all", lambda w, b, c: (_edit_bundle(b, "json"), c)),
    "bundle_weights": ("all", lambda w, b, c: (_edit_bundle(b, "weights"), c)),
    "mc_samples": ("all", lambda w, b, c: (None, c.model_copy(update={"mc_samples": 5}))),
    "output_contract": ("all", lambda w, b, c: (setattr(cube_mod, "CUBE_FORMAT", "deepsalt-cube/test"), c)),
    "composite_rule": ("all", lambda w, b, c: (setattr(fp_mod, "COMPOSITE_RULE", "test"), c)),
    "nothing": ("none", lambda w, b, c: (None, c)),
}


@pytest.mark.parametrize("change", list(FINGERPRINT_INPUTS))
def test_each_input_that_changes_a_pixel_changes_the_fingerprints_of_its_tiles(change, world_copy, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(cube_mod, "CUBE_FORMAT", cube_mod.CUBE_FORMAT)  # restored after the test
    monkeypatch.setattr(fp_mod, "COMPOSITE_RULE", fp_mod.COMPOSITE_RULE)
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0] / "bundle", bundle)
    cfg = map_cfg(world_copy, bundle, tmp_path / "unused.zarr")
    before = prepare_inputs(cfg, QUIET)
    expect, edit = FINGERPRINT_INPUTS[change]
    time.sleep(0.01)
    _, cfg2 = edit(world_copy, bundle, cfg)
    after = prepare_inputs(cfg2, QUIET)
    a, b = tile_fingerprints(before), tile_fingerprints(after)
    assert set(a) == set(b)
    changed = {k for k in a if a[k] != b[k]}
    first = json.loads((world_copy / "stac" / "items.json").read_text())["features"][0]["id"]
    want = {"none": set(), "all": set(a), "scene": {k for k, its in before.tiles.items() if first in [i.id for i in its]}}[expect]
    assert want and changed == want or expect == "none" and not changed, (change, sorted(changed), sorted(want))


def test_removed_scene_empty_composite_and_a_narrower_run(world_copy, trained, tmp_path):
    from deepsalt.data.stac import search_items

    out = tmp_path / "c.zarr"
    seen_bbox = (-110.0, 37.5, -106.0, 39.5)
    cfg = map_cfg(world_copy, trained[0] / "bundle", out, mc_samples=0, bbox=seen_bbox)
    s0 = map_region(cfg, log=QUIET)
    t0 = tile_arrays(out)
    seen = sorted((i for i in search_items(str(world_copy / "stac")) if i.bbox[1] < 40), key=lambda i: i.id)
    assert len(seen) >= 2
    # a narrower run (a box inside one scene) plans the edge tiles with every scene touching them: nothing changes
    x0, y0, x1, y1 = seen[0].bbox
    narrow = map_region(cfg.model_copy(update={"bbox": (x0 + 0.01, y0 + 0.01, x0 + 0.02, y0 + 0.02)}), log=QUIET)
    assert narrow["tiles_mapped"] == 0 and narrow["tiles_cleared"] == 0 and narrow["published"] is False
    assert_tiles_equal(tile_arrays(out), t0)
    # the same box into a new cube maps the box's tiles only (not the whole scene), each as the full run did
    alone = tmp_path / "narrow.zarr"
    s_alone = map_region(cfg.model_copy(update={"bbox": (x0 + 0.01, y0 + 0.01, x0 + 0.02, y0 + 0.02), "out": str(alone)}), log=QUIET)
    assert 1 <= s_alone["tiles_mapped"] <= 4 < s0["tiles_mapped"]
    t_alone = tile_arrays(alone)
    assert_tiles_equal(t_alone, {k: t0[k] for k in t_alone})
    # an all-cloud mask: the scene's tiles are recomputed; pixels only it gave leave the cube
    gone = seen[0]
    with rasterio.open(gone.assets["quality_cloud"].href) as src:
        prof, shape = src.profile, src.shape
    with rasterio.open(gone.assets["quality_cloud"].href, "w", **{**prof, "driver": "GTiff"}) as dst:
        dst.write(np.ones((1, *shape), np.uint8))
    s1 = map_region(cfg, log=QUIET)
    t1 = tile_arrays(out)
    assert s1["tiles_mapped"] >= 1 and s1["published"]
    assert not any((d["scene"] == gone.id).any() for d in t1.values())
    assert sum(int(d["valid"].sum()) for d in t1.values()) < sum(int(d["valid"].sum()) for d in t0.values())
    assert map_region(cfg, log=QUIET)["tiles_mapped"] == 0  # repeated: writes nothing
    # a scene removed from the catalog: tiles it alone covered are cleared, its pixels are gone everywhere
    gone = seen[1]
    n_before = sum(int((d["scene"] == gone.id).sum()) for d in t1.values())
    assert n_before > 0
    p = world_copy / "stac" / "items.json"
    fc = json.loads(p.read_text())
    fc["features"] = [f for f in fc["features"] if f["id"] != gone.id]
    p.write_text(json.dumps(fc))
    s2 = map_region(cfg, log=QUIET)
    t2 = tile_arrays(out)
    assert s2["published"] and s2["tiles_cleared"] + s2["tiles_mapped"] >= 1
    assert not any((d["scene"] == gone.id).any() for d in t2.values())
    assert map_region(cfg, log=QUIET)["published"] is False
    assert s0["published"]


# --- hostile hrefs, secrets, bad input -------------------------------------------------------------------------

class CountingServer:
    """A local HTTP server that counts every request (a stand-in for an internal address workers must not call)."""

    def __init__(self):
        self.count = 0
        srv = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                srv.count += 1
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _one_line_exit_2(r, *needles):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.exit_code, r.stderr[-1500:], r.stdout[-500:])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _cli(world, bundle, out, *extra):
    return CliRunner().invoke(app, _map_cmd(world, bundle, out, *extra)[3:])


def test_hostile_hrefs_are_refused_without_a_single_request(world_copy, trained, tmp_path):
    srv = CountingServer()
    try:
        hostile = {
            f"/vsicurl/{srv.url}/latest/meta-data/x.tif": "/vsi",
            f"{srv.url}/x.tif": "plain http",
            f"<VRTDataset rasterXSize='1' rasterYSize='1'><VRTRasterBand dataType='Byte' band='1'><SimpleSource>"
            f"<SourceFilename>{srv.url}/x.tif</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>": "inline XML",
            "../../../../../../etc/passwd": "traversal",
            "s3://bucket/scenes/../../secret.tif": "traversal",
            "https://169.254.169.254/latest/meta-data/iam/security-credentials/": "metadata",
            "https://metadata.google.internal/computeMetadata/v1/x.tif": "metadata",
            "https://[fe80::1]/x.tif": "link-local",
            "HDF5:/etc/passwd://x": "driver prefix",
            "/vsis3/bucket/x.tif": "/vsi",
        }
        for href, why in hostile.items():
            _edit_item(world_copy, lambda i: i["assets"]["image"].update({"href": href}))
            r = _cli(world_copy, trained[0] / "bundle", tmp_path / "c.zarr")
            _one_line_exit_2(r, "refused", why)
        # a local path that is not a GeoTIFF: refused by the GTiff-only open, in words that do not tell whether it exists
        msgs = []
        for href in ("/etc/passwd", "/etc/no-such-file-here"):
            _edit_item(world_copy, lambda i: i["assets"]["image"].update({"href": href}))
            msgs.append(_one_line_exit_2(_cli(world_copy, trained[0] / "bundle", tmp_path / "c.zarr"), "does not exist or is not a readable GeoTIFF"))
        assert msgs[0].replace("/etc/passwd", "X") == msgs[1].replace("/etc/no-such-file-here", "X")
        assert srv.count == 0
        # --allow-http opens plain http (the flag is what gates it); metadata addresses stay refused
        _edit_item(world_copy, lambda i: i["assets"]["image"].update({"href": f"{srv.url}/x.tif"}))
        _one_line_exit_2(_cli(world_copy, trained[0] / "bundle", tmp_path / "c.zarr", "--allow-http"), "does not exist")
        assert srv.count > 0
        _edit_item(world_copy, lambda i: i["assets"]["image"].update({"href": "http://169.254.169.254/latest/x.tif"}))
        _one_line_exit_2(_cli(world_copy, trained[0] / "bundle", tmp_path / "c.zarr", "--allow-http"), "metadata")
    finally:
        srv.close()
    assert not (tmp_path / "c.zarr").exists()  # nothing was created, let alone committed


def test_no_secret_reaches_the_cube_its_history_or_the_log(world, trained, s3_bucket, s3_endpoint, capfd, monkeypatch):
    import boto3

    from deepsalt.raycluster import worker_env

    marker = f"SeCrEt{os.getpid()}"
    url = f"s3://{s3_bucket}/cube"
    so = {"key": f"AKIA{marker}", "secret": f"sk-{marker}", "client_kwargs": {"endpoint_url": s3_endpoint}}
    logs = []
    s = map_region(map_cfg(world, trained[0] / "bundle", url, mc_samples=0, storage_options=so), log=logs.append)
    assert s["published"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page.get("Contents", [])]
    assert len(keys) > 10
    for k in keys:
        assert marker.encode() not in s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read(), k
    assert marker not in json.dumps(cube_mod.history(url, so), default=str)
    assert marker not in json.dumps(open_cube(url, so).attrs)
    out, err = capfd.readouterr()
    assert marker not in "\n".join(logs) + out + err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", marker)
    monkeypatch.setenv("AWS_SESSION_TOKEN", marker)
    assert marker not in json.dumps(worker_env()) and "AWS_ENDPOINT_URL" in worker_env()


def _kelvin(world):
    for name in ("tm_min", "tm_max", "tm_avg"):
        _scale_raster(world / "covariates" / f"{name}.tif", add=273.15)


BAD_INPUT = {
    "bundle_missing_key": (lambda w, b: _bundle_json(b, lambda m: m.pop("scalers")), [], "bundle.json", "damaged or edited"),
    "bundle_bad_config": (lambda w, b: _bundle_json(b, lambda m: m["config"].update({"latent": "big"})), [], "bundle.json", "damaged"),
    "bundle_out_range": (lambda w, b: _bundle_json(b, lambda m: m.update({"out_range": [0.05, 40.0]})), [], "output range", "retrain"),
    "bundle_not_json": (lambda w, b: (b / "bundle.json").write_text("{"), [], "bundle.json", "damaged"),
    "epoch_word": (None, ["--epoch", "banana"], "--epoch", "'banana' is not YYYY"),
    "epoch_two_digits": (None, ["--epoch", "24"], "--epoch", "e.g. 2024"),
    "cloud_not_a_number": (lambda w, b: _edit_item(w, lambda i: i["properties"].update({"eo:cloud_cover": "n/a"})), [],
                           "eo:cloud_cover 'n/a'", "fix the item"),
    "scene_outside_grid": (None, ["--grid", "europe"], "outside the output grid", "--grid"),
    "covariates_in_kelvin": (lambda w, b: _kelvin(w), [], "tm_min", "Kelvin"),
    "gain_not_a_number": (lambda w, b: _edit_item(w, lambda i: i["assets"]["image"]["eo:bands"][0].update({"enmap:gain_of_band": "x"})), [],
                          "not a number", "enmap:gain_of_band"),
}


def _bundle_json(bundle: Path, fn) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    fn(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_commits_nothing(case, world_copy, trained, cube, tmp_path):
    edit, flags, *needles = BAD_INPUT[case]
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0] / "bundle", bundle)
    if edit:
        edit(world_copy, bundle)
    out = tmp_path / "c.zarr"
    if case.startswith("epoch"):
        shutil.copytree(cube[0], out)  # an existing cube stays exactly as it was
    before = cube_mod.history(str(out)) if out.exists() else None
    args = _map_cmd(world_copy, bundle, out)[3:]
    for flag in flags[::2]:  # a flag given twice: the test's value wins
        i = args.index(flag) if flag in args else None
        if i is not None:
            del args[i:i + 2]
    r = CliRunner().invoke(app, args + flags)
    _one_line_exit_2(r, *needles)
    assert (cube_mod.history(str(out)) if out.exists() else None) == before


def test_weights_that_do_not_fit_the_architecture_are_refused_and_commit_nothing(world, trained, tmp_path):
    """The driver checks bundle.json and the weights' tensor shapes against its record without torch (load_meta, as
    prepare_inputs calls it), before any Ray work; a bundle without that record is still refused, where the networks
    are built (DeepSaltBundle.load, in the actors that predict), and that run commits nothing."""
    from safetensors.numpy import load_file, save_file

    from deepsalt.models.bundle_meta import load_meta

    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0] / "bundle", bundle)
    t = load_file(bundle / "weights.safetensors")
    k = sorted(k for k in t if k.startswith("student.") and k.endswith("weight"))[0]
    shape = list(t[k].shape)
    t[k] = t[k][:-1]  # a row short: a tensor of another architecture
    save_file(t, bundle / "weights.safetensors")
    misfit = rf"weights do not fit the recorded architecture \({k}: shape \[{shape[0] - 1}, {shape[1]}\] in the weights, \[{shape[0]}, {shape[1]}\] in bundle.json\)"
    with pytest.raises(DeepSaltInputError, match=misfit):
        load_meta(str(bundle))
    out = tmp_path / "c.zarr"
    line = _one_line_exit_2(_cli(world, bundle, out), "weights do not fit the recorded architecture", f"{k}: shape")
    assert "[4/4]" not in line and not out.exists()  # refused before the cube was created
    # the same weights in a bundle.json without the record (as written before it had one): refused by torch
    meta = json.loads((bundle / "bundle.json").read_text())
    del meta["weights"]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert load_meta(str(bundle))["band_names"]
    with pytest.raises(DeepSaltInputError, match=rf"weights do not fit the recorded architecture \(.*{k.removeprefix('student.')}"):
        map_region(map_cfg(world, bundle, out), log=lambda *_: None)
    assert not [h for h in cube_mod.history(str(out)) if h["epoch"]]  # nothing published
    assert not tile_arrays(out)


@pytest.mark.parametrize("flag,value,needle", [("--chunk", "128", "chunk 256 (not 128)"), ("--shard", "1", "shard 2 (not 1)")])
def test_chunk_or_shard_differing_from_the_cube_is_refused(cube, world, trained, flag, value, needle):
    before = cube_mod.history(str(cube[0]))
    r = _cli(world, trained[0] / "bundle", cube[0], flag, value)
    _one_line_exit_2(r, needle, "--shard")
    assert cube_mod.history(str(cube[0])) == before


def test_item_with_null_datetime_maps_by_its_start(world_copy, trained, tmp_path):
    from deepsalt.data.stac import item_time, search_items

    def null(i):
        i["properties"]["start_datetime"], i["properties"]["end_datetime"] = i["properties"]["datetime"], i["properties"]["datetime"]
        i["properties"]["datetime"] = None

    sid = _edit_item(world_copy, null)
    items = {i.id: i for i in search_items(str(world_copy / "stac"), datetime_range="2024-01-01/2024-12-31")}
    assert items[sid].datetime is None and item_time(items[sid]).year == 2024
    inp = prepare_inputs(map_cfg(world_copy, trained[0] / "bundle", tmp_path / "c.zarr"), QUIET)
    assert sid in inp.scene_fp
