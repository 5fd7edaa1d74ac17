"""`deepsalt map` / jobs/map_region.py: STAC search -> tile plan -> Ray Data (read + nearest-pixel composite +
covariates -> student inference, in those CPU tasks or in an actor pool -> tile writes into forks of one Icechunk
session) -> one commit.

A run maps the tiles whose fingerprint (``mapping.fingerprint``) differs from the one stored in the cube,
and clears the tiles of its region whose scenes are gone; a repeated run commits nothing. The plan takes
every scene that touches a planned tile, also those outside ``--bbox``, so a narrower run never degrades
edge tiles. Inference is deterministic (MC dropout seeded per tile), so a killed run resubmitted, or a run
that re-plans after a conflicting commit, gives the same cube as one uninterrupted run.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from dataclasses import dataclass
from datetime import timezone

import numpy as np
import zarr

from deepsalt import __version__
from deepsalt.config import MapConfig
from deepsalt.data.cog import one_gdal_env
from deepsalt.errors import DeepSaltInputError, find_input_error
from deepsalt.mapping import cube as cube_mod
from deepsalt.mapping.fingerprint import bundle_identity, run_identity, scene_identity, tile_fingerprint
from deepsalt.mapping.grid import GRIDS, Grid, TileBox
from deepsalt.mapping.predictor import Predictor, predict_in_task
from deepsalt.mapping.tiles import drop_reasons, plan, prepare_tiles
from deepsalt.raycluster import init_ray
from deepsalt.redact import redact, redact_url
from deepsalt.targets import get_target


def grid_for(cfg: MapConfig) -> Grid:
    if cfg.grid not in GRIDS:
        raise DeepSaltInputError("--grid", f"unknown grid '{cfg.grid}'", f"use one of {', '.join(GRIDS)}")
    g = GRIDS[cfg.grid]
    return Grid(g.crs, g.res, g.x0, g.y0, g.width, g.height, cfg.chunk, cfg.shard)


def _write(row: dict, fork: bytes, where: str, grid: Grid, t: int, scene_days: np.ndarray, target: dict) -> dict:
    """Tile arrays from the predicted pixels of one shard's tiles (a tile with none is cleared), written into a
    fork of the session. ``scene_days[i]``: acquisition date of scene ``i`` of ``scene_ids``, days since 1970;
    ``target``: the bundle's (its variable names the cube's arrays)."""
    variables = cube_mod.cube_vars(target)
    var = get_target(target).var
    k = len(get_target(target).thresholds)
    exceed = np.asarray(row["exceed"]).reshape(-1, k)
    tiles, start = [], 0
    for (ty, tx), fp, cnt in zip(row["tiles"], row["fps"], row["counts"]):
        sl = slice(start, start + int(cnt))
        start += int(cnt)
        pix = np.asarray(row["pix"][sl], np.int64)
        arrays = None
        if len(pix):
            h, w = grid.tile_shape(int(ty), int(tx))
            arrays = {name: np.full((k, h * w) if spec.get("threshold") else h * w, spec["fill"], spec["dtype"])
                      for name, spec in variables.items()}
            for name, key in ((var, "value"), (f"{var}_sd", "sd"), ("di", "di"), ("aoa", "aoa")):
                arrays[name][pix] = row[key][sl]
            arrays["exceedance"][:, pix] = exceed[sl].T
            arrays["valid"][pix], arrays["scene"][pix] = 1, row["scene"][sl]
            arrays["acq_date"][pix] = scene_days[np.asarray(row["scene"][sl], np.int64)]
            arrays = {name: v.reshape(*v.shape[:-1], h, w) for name, v in arrays.items()}
        tiles.append((int(ty), int(tx), arrays, int(fp)))
    fork = cube_mod.write_tiles(fork, where, grid, t, tiles)
    return {"tiles": len(tiles), "n": start, "fork": fork, "drops": row["drops"], "band_nodata": row["band_nodata"],
            "swath_rows": row["swath_rows"]}


@dataclass
class RunInputs:
    """What a run maps, independent of the cube's state: checked once, before anything is written."""

    cfg: MapConfig
    grid: Grid
    meta: dict  # bundle.json
    bundle_sha: str  # SHA-256 of bundle.json + weights
    run_id: str  # identity of model, covariates, options
    tiles: dict  # (ty, tx) -> items in compositing order
    scene_fp: dict  # item id -> scene identity
    scope: TileBox  # tiles this run owns: recorded tiles here without a scene any more are cleared


@dataclass
class Plan:
    t: int
    new_epoch: bool
    scene_ids: list[str]
    todo: list  # tiles to (re)map
    clear: list  # tiles whose scenes are gone
    fps: dict  # (ty, tx) -> fingerprint


def _lonlat_bounds(grid: Grid, keys) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    c = grid.chunk * grid.res
    tys, txs = zip(*keys)
    b = (grid.x0 + min(txs) * c, grid.y0 - (max(tys) + 1) * c, grid.x0 + (max(txs) + 1) * c, grid.y0 - min(tys) * c)
    return transform_bounds(grid.crs, "EPSG:4326", *b, densify_pts=21)


@one_gdal_env
def prepare_inputs(cfg: MapConfig, log=print) -> RunInputs:
    """Search, check and plan: every input fault surfaces here, before the cube is touched."""
    from deepsalt.data.covariates import check_covariate_ranges, sample_covariates
    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.data.stac import search_items
    from deepsalt.models.bundle_meta import load_meta

    grid = grid_for(cfg)
    meta = load_meta(cfg.model)  # refuse a bad bundle before any work (without torch: the actors load the networks)
    quality = tuple(cfg.quality_masks)

    def search(bbox):
        items = search_items(cfg.stac, cfg.collection, bbox, cfg.datetime, cfg.max_cloud)
        for item in items:
            scene = EnMAPScene.from_item(item, cfg.allow_http)  # missing image asset or eo:bands, bad numbers
            for key in (scene.IMAGE_ASSET, *quality):
                scene.href(key)  # missing asset, hostile href: before GDAL ever sees it
            check_bad_bands(scene, meta["band_names"], cfg.model)
        return items

    items = search(cfg.bbox)
    log(f"[1/4] STAC: {len(items)} scenes in {cfg.collection} (bbox={cfg.bbox}, datetime={cfg.datetime}, max_cloud={cfg.max_cloud})")
    if not items and cfg.bbox is None:
        raise DeepSaltInputError(redact_url(cfg.stac), f"no scene in {cfg.collection} matches the search",
                                 "check --collection, --datetime and --max-cloud (with --bbox, a region without scenes is cleared)")
    region = cfg.bbox or tuple(np.r_[np.min([i.bbox[:2] for i in items], 0), np.max([i.bbox[2:] for i in items], 0)])
    scope = grid.tile_box(region, "EPSG:4326")
    tiles = {k: v for k, v in plan(items, grid, cfg.allow_http).items() if cfg.bbox is None or k in scope}  # the bbox's tiles only
    if cfg.bbox is not None and tiles:  # every scene touching a planned tile, also outside the bbox: edge tiles stay whole
        wider = {i.id: i for i in search(_lonlat_bounds(grid, tiles))}
        full = plan([wider[k] for k in sorted(wider)], grid, cfg.allow_http)
        tiles = {k: full[k] for k in tiles}
    # covariates: present and in physical units, checked at the tile centres before any work
    c = grid.chunk * grid.res
    keys = list(tiles)
    xs = np.array([grid.x0 + (tx + 0.5) * c for _, tx in keys])
    ys = np.array([grid.y0 - (ty + 0.5) * c for ty, _ in keys])
    if keys:
        check_covariate_ranges(sample_covariates(cfg.covariates, xs, ys, grid.crs).T, cfg.covariates)
    scenes = {i.id: i for its in tiles.values() for i in its}
    scene_fp = {sid: scene_identity(it, quality, cfg.allow_http) for sid, it in scenes.items()}
    bundle_sha = bundle_identity(cfg.model)
    run_id = run_identity(bundle_sha, cfg.covariates, cfg.mc_samples, quality)
    return RunInputs(cfg, grid, meta, bundle_sha, run_id, tiles, scene_fp, scope)


def check_bad_bands(scene, model_bands: list[str], model: str) -> None:
    """Refuse a product whose recorded bad bands (nodata in every pixel) include a band the model reads: it would map
    no pixel. Bad bands the model does not read are harmless."""
    hit = [b for b in scene.bad_bands if b in set(model_bands)]
    if hit:
        raise DeepSaltInputError(f"STAC item {scene.id}", f"bad band(s) {', '.join(hit)} (nodata in every pixel, per the "
                                 f"product's band statistics) are bands the model {redact_url(model)} reads",
                                 f"train a model without them (deepsalt train --exclude-bands {','.join(hit)}), or drop this scene")


def explain_empty(drops: np.ndarray, band_nodata: np.ndarray, swath_rows: int, quality, band_names) -> str:
    """Why tiles mapped no pixel: the tile pixels each rule dropped, largest first, and the bands that were nodata
    in every in-swath pixel read."""
    parts = [f"{int(n):,} px {why}" for n, why in sorted(zip(drops, drop_reasons(tuple(quality))), key=lambda t: -t[0]) if n]
    bad = [b for b, n in zip(band_names, band_nodata) if swath_rows and n == swath_rows]
    text = "; ".join(parts) or "no pixel"
    if bad:
        text += f"; the model's band(s) {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} are nodata in every pixel"
    return text


def tile_fingerprints(inp: RunInputs) -> dict[tuple[int, int], int]:
    return {k: tile_fingerprint(inp.run_id, [inp.scene_fp[i.id] for i in its]) for k, its in inp.tiles.items()}


def plan_run(inp: RunInputs, session) -> Plan:
    """Against one state of the cube (a session): which tiles to map, which to clear, at which time index."""
    root = zarr.open_group(session.store, mode="r")
    t, new = cube_mod.epoch_slot(root, inp.cfg.epoch)
    fps = tile_fingerprints(inp)
    have = cube_mod.read_fingerprints(root, t, list(fps))
    todo = [k for k in fps if have[k] != fps[k]]
    recorded = set() if new else cube_mod.recorded_tiles(session, t)
    clear = sorted(k for k in recorded if k in inp.scope and k not in fps)
    scene_ids = list(root.attrs.get("scene_ids", []))
    for k in todo:
        for item in inp.tiles[k]:
            if item.id not in scene_ids:
                scene_ids.append(item.id)
    return Plan(t, new, scene_ids, todo, clear, fps)


def _scene_days(inp: RunInputs, scene_ids: list[str]) -> np.ndarray:
    """Acquisition day (since 1970-01-01) of each scene in ``scene_ids`` this run maps; -1 for the others."""
    from deepsalt.data.stac import item_time

    when = {i.id: item_time(i) for its in inp.tiles.values() for i in its}
    return np.array([int(np.datetime64(when[s].astimezone(timezone.utc).replace(tzinfo=None), "D").astype("int64"))
                     if s in when else -1 for s in scene_ids], np.int32)


def read_stage(inp: RunInputs, tasks: list[dict]):
    """Ray Data dataset of prepared shards (``tiles.combine`` rows, one per shard) from tile tasks: the tasks are
    grouped by shard (a write task must own a whole shard) and the shards packed, in the plan's order, into CPU
    tasks of about ``tiles_per_read_task`` tiles each, spread over every node. Sets the driver's Ray Data
    ``op_resource_reservation_enabled`` to ``reserve_stage_resources`` for the datasets built from it."""
    import ray

    cfg, grid = inp.cfg, inp.grid
    ray.data.DataContext.get_current().op_resource_reservation_enabled = cfg.reserve_stage_resources
    shards: dict = {}
    for task in tasks:
        shards.setdefault(grid.shard_of(task["ty"], task["tx"]), []).append(task)
    groups, cur = [], []
    for unit in shards.values():
        cur.append(unit)
        if sum(map(len, cur)) >= cfg.tiles_per_read_task:
            groups.append(cur)
            cur = []
    groups += [cur] if cur else []
    return ray.data.from_items([{"shards": pickle.dumps(g)} for g in groups], override_num_blocks=max(1, len(groups))).flat_map(
        prepare_tiles, fn_kwargs=dict(grid=grid, covariates=cfg.covariates, band_names=inp.meta["band_names"],
                                      band_centers=inp.meta["band_centers_nm"], quality=tuple(cfg.quality_masks),
                                      allow_http=cfg.allow_http),
        **_read_args(cfg))


def _read_args(cfg: MapConfig) -> dict:
    """Ray remote arguments of a read task: 1 CPU and ``read_memory_mb``. Inference in the read tasks asks for the
    same, so that Ray Data fuses it into them (operators with other remote arguments are never fused)."""
    return dict(num_cpus=1, memory=cfg.read_memory_mb * 2**20)


def _execute(inp: RunInputs, p: Plan, session, log) -> int:
    """Ray Data over the plan's tiles, each written into a fork of ``session``; forks merged as they finish."""
    import ray

    cfg, grid = inp.cfg, inp.grid
    tasks = [{"ty": ty, "tx": tx, "fp": p.fps[(ty, tx)],
              "items": [json.dumps(i.to_dict(include_self_link=False)) for i in inp.tiles[(ty, tx)]],
              "scene_index": [p.scene_ids.index(i.id) for i in inp.tiles[(ty, tx)]]} for ty, tx in p.todo]
    tasks += [{"ty": ty, "tx": tx, "fp": 0, "items": [], "scene_index": []} for ty, tx in p.clear]
    # Reads as CPU tasks spread over every node; inference in them ('tasks': Ray Data fuses the two, as their remote
    # arguments are the same) or in an autoscaling actor pool ('actors'; GPUs when the job asks for them); writes as
    # light tasks, never fused with either (their resource request differs).
    ds = read_stage(inp, tasks)
    predict = dict(model=cfg.model, mc_samples=cfg.mc_samples, batch=cfg.predict_batch)
    if cfg.inference_mode == "tasks":
        ds = ds.map(predict_in_task, fn_kwargs=dict(predict, identity=inp.bundle_sha), **_read_args(cfg))
        where = "in the read tasks (CPU)"
    else:
        actors = cfg.predict_actors or max(1, int(ray.cluster_resources().get("GPU" if cfg.gpu else "CPU", 1)))
        ds = ds.map(Predictor, fn_constructor_kwargs=dict(predict, gpu=cfg.gpu),
                    compute=ray.data.ActorPoolStrategy(min_size=min(cfg.min_actors, actors), max_size=actors),
                    num_gpus=1 if cfg.gpu else 0, num_cpus=0 if cfg.gpu else 1)
        where = f"in up to {actors} actor(s){', one GPU each' if cfg.gpu else ''}"
    ds = ds.map(_write, fn_kwargs=dict(fork=cube_mod.fork_bytes(session), where=redact_url(cfg.out), grid=grid, t=p.t,
                                       scene_days=_scene_days(inp, p.scene_ids), target=inp.meta["target"]),
                num_cpus=0.25)  # I/O-bound: never starve the read and inference stages of a CPU
    log(f"[3/4] Ray Data: read + composite + covariates -> student {where} -> {len(tasks)} tiles into one transaction")
    n_pix = done = 0
    t0 = time.time()
    stats = {"drops": 0, "band_nodata": 0, "swath_rows": 0}
    try:
        for row in ds.iter_rows():
            session.merge(pickle.loads(row["fork"]))
            n_pix += int(row["n"])
            for k in stats:
                stats[k] = stats[k] + np.asarray(row[k])
            before, done = done, done + int(row["tiles"])  # a row is one shard: one or more tiles
            step = max(1, len(tasks) // 10)
            if done == len(tasks) or done // step > before // step:  # at most ~10 lines, whatever the size
                s = time.time() - t0
                log(f"      tiles written {done}/{len(tasks)} ({100 * done // len(tasks)} %), {n_pix:,} px, "
                    f"{n_pix / max(s, 1e-9):,.0f} px/s, ETA {s / done * (len(tasks) - done):.0f} s")
    except Exception as e:  # noqa: BLE001 - nothing is committed; surface the input fault if there is one
        cause = find_input_error(e)
        if cause is not None:
            raise DeepSaltInputError(cause.where, cause.fault + " (nothing was committed)", cause.fix) from None
        raise
    return n_pix, stats


#: end-to-end mapping rate per CPU core, 5 MC passes, for dry-run estimates: bench/map_cpu.py measured 6,711 px/s
#: on 2 cores (bench/results/map_cpu.json); GPUs and other machines differ, so the estimate is rough
PX_PER_CORE_S = 3000


def dry_run(cfg: MapConfig, log=print) -> dict:
    """The plan of ``map_region`` against the cube as it is now (or an empty one): nothing is written."""
    import os

    inp = prepare_inputs(cfg, log)
    try:
        session = cube_mod.open_repo(cfg.out, cfg.storage_options).readonly_session(cube_mod.BRANCH)
        cube_mod.check_grid(zarr.open_group(session.store, mode="r"), inp.grid, cfg.out, inp.meta["target"])
        p = plan_run(inp, session)
    except (DeepSaltInputError, FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        if isinstance(e, DeepSaltInputError) and ("another grid" in str(e) or "the model predicts" in str(e)):
            raise
        p = Plan(0, True, [], list(inp.tiles), [], tile_fingerprints(inp))
    px = sum(int(np.prod(inp.grid.tile_shape(*k))) for k in p.todo)
    cores = os.cpu_count() or 1
    out = {"epoch": cfg.epoch, "scenes": len(inp.scene_fp), "tiles": len(inp.tiles), "tiles_to_map": len(p.todo),
           "tiles_to_clear": len(p.clear), "tiles_up_to_date": len(inp.tiles) - len(p.todo), "tile_pixels_to_map": px,
           "estimated_seconds": round(px / (PX_PER_CORE_S * cores) * max(1, cfg.mc_samples) / 5, 1),
           "estimate_basis": f"{PX_PER_CORE_S} px/s per core x {cores} cores (bench/map_cpu.py); tile pixels include "
                             "cells no scene covers, so this is an upper bound"}
    log(f"[dry run] {out['scenes']} scenes, {out['tiles']} tiles: {out['tiles_to_map']} to map, {out['tiles_to_clear']} "
        f"to clear, {out['tiles_up_to_date']} up to date; <= {px:,} px, about {out['estimated_seconds']} s here")
    return out


def map_region(cfg: MapConfig, log=print) -> dict:
    """One mapping run = at most one commit to the cube. Returns the run's summary."""
    import icechunk

    t0 = time.time()
    run = uuid.uuid4().hex[:12]
    inp = prepare_inputs(cfg, log)
    repo = cube_mod.open_repo(cfg.out, cfg.storage_options, create=True)
    cube_mod.ensure_template(repo, cfg.out, inp.grid, inp.meta["target"])
    summary = {"epoch": cfg.epoch, "run": run, "scenes": len(inp.scene_fp), "tiles": len(inp.tiles)}
    for attempt in range(1, cfg.commit_attempts + 1):
        session = repo.writable_session(cube_mod.BRANCH)
        p = plan_run(inp, session)
        log(f"[2/4] plan: {len(inp.tiles)} tiles of {inp.grid.chunk} x {inp.grid.chunk} px on {inp.grid.crs}; "
            f"{len(p.todo)} new or changed, {len(inp.tiles) - len(p.todo)} up to date, {len(p.clear)} to clear"
            + (f" (attempt {attempt})" if attempt > 1 else ""))
        summary.update(tiles_mapped=len(p.todo), tiles_cleared=len(p.clear), pixels_mapped=0, attempts=attempt)
        if not p.todo and not p.clear:
            cube_mod.ensure_tagged(repo, cfg.epoch)  # a run killed between its commit and its tag
            log("[4/4] nothing to do: the cube is up to date for this epoch")
            return {**summary, "seconds": round(time.time() - t0, 1), "published": False}
        init_ray()
        n_pix, stats = _execute(inp, p, session, log)
        why = explain_empty(np.asarray(stats["drops"]).ravel(), np.asarray(stats["band_nodata"]).ravel(),
                            int(stats["swath_rows"]), cfg.quality_masks, inp.meta["band_names"]) if p.todo else ""
        if p.todo:
            summary["pixels_dropped"] = dict(zip(drop_reasons(tuple(cfg.quality_masks)), np.asarray(stats["drops"]).ravel().tolist()))
        nodata_drops = int(np.asarray(stats["drops"]).ravel()[-1]) if p.todo else 0  # drop_reasons' last: model-band nodata
        if p.todo and n_pix == 0 and nodata_drops:
            # the quality layers call pixels clear, yet a band the model reads is nodata in all of them: never a success
            raise DeepSaltInputError(f"epoch {cfg.epoch}", f"{len(p.todo)} planned tile(s) of {len(inp.scene_fp)} scene(s) mapped "
                                     f"0 pixels: {why}; nothing was committed",
                                     "train without the products' bad bands (--exclude-bands), or fix the scenes' nodata bands")
        if p.todo and n_pix == 0:  # every planned pixel masked or outside: the tiles are rewritten empty, and it says so
            log(f"      0 pixels mapped from {len(p.todo)} tile(s): {why}")
        from deepsalt.models.bundle_meta import exceedance_decision

        models = dict(zarr.open_group(session.store, mode="r").attrs.get("models", {}))
        models[cfg.epoch] = {"bundle": redact_url(cfg.model), "sha256": inp.bundle_sha, "data_hash": inp.meta.get("data_hash"),
                             "aoa_threshold": inp.meta["aoa"]["threshold"], "interval90_q": inp.meta["interval90"]["q"],
                             "interval90_scaled": bool(inp.meta["interval90"].get("scaled", True)),
                             "interval90_di_slope": float(inp.meta["interval90"]["di_slope"]),
                             "interval90_mc_samples": inp.meta["interval90"]["mc_samples"], "mc_samples": cfg.mc_samples,
                             "interval90_log": get_target(inp.meta["target"]).log,
                             "exceedance_decision": exceedance_decision(inp.meta)}
        cube_mod.finish_epoch(session, p.t, cfg.epoch, p.scene_ids, models)
        summary.update(pixels_mapped=n_pix)
        used = sorted({i.id for k in p.todo for i in inp.tiles[k]})
        meta = {"deepsalt": __version__, "epoch": cfg.epoch, "tiles": len(p.todo), "tiles_cleared": len(p.clear),
                "pixels": n_pix, "scenes": used, "model": models[cfg.epoch]["sha256"][:16], "run": run,
                "config": redact(cfg.model_dump(mode="json"))}
        message = (f"map epoch {cfg.epoch}: {len(p.todo)} tiles, {n_pix} px, {len(used)} scenes, "
                   f"{len(p.clear)} tiles cleared, model {meta['model']}, run {run}")
        log(f"      committing: {message}")
        try:
            snap = cube_mod.commit(repo, session, cfg.out, message, meta)
        except (icechunk.RebaseFailedError, icechunk.ConflictError) as e:
            n = len(getattr(e, "conflicts", []) or [])
            log(f"      another run changed the same tiles or cube metadata first ({n} conflicts): re-planning")
            continue
        except icechunk.IcechunkError as e:
            raise DeepSaltInputError(redact_url(cfg.out), f"commit failed, nothing was committed ({str(e).splitlines()[0][:200]})",
                                     "check that the store is reachable and writable, then resubmit") from None
        tag = cube_mod.tag_epoch(repo, cfg.epoch, snap)
        from deepsalt.mapping.cube_stac import write_cube_stac

        try:  # derived from the cube, so a failure here loses nothing: the next publication rewrites it
            stac = write_cube_stac(cfg.out, cfg.storage_options)
        except Exception as e:  # noqa: BLE001
            stac = None
            log(f"      warning: the cube's STAC description was not written ({type(e).__name__}: {str(e)[:160]})")
        summary.update(seconds=round(time.time() - t0, 1), published=True, commit=snap, tag=tag, stac=stac and redact_url(stac))
        log(f"[4/4] published epoch {cfg.epoch} (time index {p.t}) as commit {snap} (tag {tag}): {n_pix} pixels in "
            f"{len(p.todo)} tiles, {len(p.clear)} cleared, {summary['seconds']} s")
        return summary
    raise DeepSaltInputError(redact_url(cfg.out), f"conflict: other runs kept committing to the same tiles or epoch metadata "
                             f"({cfg.commit_attempts} attempts); nothing of this run was committed and nothing else was lost",
                             "resubmit when the other runs have finished, or raise commit_attempts")

