"""`deepsalt map` / jobs/map_region.py: STAC search -> tile plan -> Ray Data (read+warp+join -> student
inference in an actor pool -> chunk writes) -> atomic publish of the epoch, with incremental state.

Only tiles whose fingerprint (scene set, scene content pointers, model) changed since the last published
run of this epoch are mapped; a repeated run writes nothing. A killed run leaves its state unchanged and
its epoch unpublished; submitted again it re-maps the pending tiles (inference is deterministic, MC dropout
seeded per tile) and publishes a cube equal to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone

import numpy as np

from deepsalt.config import MapConfig
from deepsalt.errors import DeepSaltInputError, find_input_error
from deepsalt.mapping import cube as cube_mod
from deepsalt.mapping.grid import GRIDS, Grid
from deepsalt.mapping.tiles import fingerprint, plan, prepare_tile


def grid_for(cfg: MapConfig) -> Grid:
    if cfg.grid not in GRIDS:
        raise DeepSaltInputError("--grid", f"unknown grid '{cfg.grid}'", f"use one of {', '.join(GRIDS)}")
    g = GRIDS[cfg.grid]
    return Grid(g.crs, g.res, g.x0, g.y0, g.width, g.height, cfg.chunk)


class Predictor:
    """Ray Data actor: loads the bundle once, predicts ECe (+ MC-dropout sd) for a tile's valid pixels."""

    def __init__(self, model: str, mc_samples: int):
        from deepsalt.models.bundle import DeepSaltBundle
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.bundle, self.mc = DeepSaltBundle.load(model), mc_samples

    def __call__(self, row: dict) -> dict:
        n = len(row["pix"])
        mean = np.zeros(n, np.float32)
        sd = np.zeros(n, np.float32)
        for i in range(0, n, 16384):
            m, s = self.bundle.predict(row["refl"][i:i + 16384], row["cov"][i:i + 16384], self.mc,
                                       seed=int(row["ty"]) * 100003 + int(row["tx"]) + i)
            mean[i:i + 16384], sd[i:i + 16384] = m, s
        return {"ty": row["ty"], "tx": row["tx"], "pix": row["pix"], "scene": row["scene"], "ece": mean, "ece_sd": sd}


def _write(row: dict, url: str, storage_options: dict, grid: Grid, t: int) -> dict:
    h, w = grid.tile_shape(row["ty"], row["tx"])
    arrays = {"ece": np.full(h * w, np.nan, np.float32), "ece_sd": np.full(h * w, np.nan, np.float32),
              "valid": np.zeros(h * w, np.uint8), "scene": np.full(h * w, -1, np.int32)}
    pix = np.asarray(row["pix"], np.int64)
    arrays["ece"][pix], arrays["ece_sd"][pix] = row["ece"], row["ece_sd"]
    arrays["valid"][pix], arrays["scene"][pix] = 1, row["scene"]
    cube_mod.write_tile(url, storage_options, grid, t, int(row["ty"]), int(row["tx"]),
                        {k: v.reshape(h, w) for k, v in arrays.items()})
    return {"ty": row["ty"], "tx": row["tx"], "n": len(pix)}


def _model_hash(model: str) -> tuple[str, dict]:
    import fsspec
    fs, path = fsspec.core.url_to_fs(model)
    try:
        meta = json.loads(fs.cat(f"{path}/bundle.json"))
        weights = fs.cat(f"{path}/weights.safetensors")
    except FileNotFoundError:
        raise DeepSaltInputError(model, "not a model bundle", "pass RUN/bundle from `deepsalt train`") from None
    return hashlib.sha256(weights).hexdigest()[:16], meta


def map_region(cfg: MapConfig, log=print) -> dict:
    import ray

    from deepsalt.data.enmap import EnMAPScene
    from deepsalt.data.stac import search_items
    from deepsalt.models.bundle import DeepSaltBundle

    t0 = time.time()
    grid = grid_for(cfg)
    DeepSaltBundle.load(cfg.model)  # refuse a bad bundle before any work
    model_hash, meta = _model_hash(cfg.model)
    items = search_items(cfg.stac, cfg.collection, cfg.bbox, cfg.datetime, cfg.max_cloud)
    log(f"[1/4] STAC: {len(items)} scenes in {cfg.collection} (bbox={cfg.bbox}, datetime={cfg.datetime}, max_cloud={cfg.max_cloud})")
    for item in items:
        EnMAPScene.from_item(item)  # missing image asset or eo:bands: fail before any work
        for key in cfg.quality_masks:
            if key not in item.assets:
                raise DeepSaltInputError(f"STAC item {item.id}", f"missing asset '{key}'", "drop it from --quality-masks or fix the item")
    tiles = plan(items, grid)
    root = cube_mod.open_cube(cfg.out, grid, cfg.storage_options)
    state = cube_mod.read_state(cfg.out, cfg.storage_options)
    done = state["epochs"].get(cfg.epoch, {}).get("tiles", {})
    fps = {f"{ty}_{tx}": fingerprint(its, model_hash) for (ty, tx), its in tiles.items()}
    todo = [k for k in tiles if done.get(f"{k[0]}_{k[1]}") != fps[f"{k[0]}_{k[1]}"]]
    log(f"[2/4] plan: {len(tiles)} tiles of {grid.chunk} x {grid.chunk} px on {grid.crs}; {len(todo)} new or changed, "
        f"{len(tiles) - len(todo)} up to date")
    summary = {"epoch": cfg.epoch, "scenes": len(items), "tiles": len(tiles), "tiles_mapped": len(todo), "pixels_mapped": 0}
    if not todo:
        log("[4/4] nothing to do: the cube is up to date for this epoch")
        return {**summary, "seconds": round(time.time() - t0, 1), "published": False}
    scene_ids = list(state.get("scene_ids", []))
    for item in items:
        if item.id not in scene_ids:
            scene_ids.append(item.id)
    t_index = cube_mod.epoch_index(root, cfg.epoch)
    tasks = [{"ty": ty, "tx": tx, "items": [json.dumps(i.to_dict(include_self_link=False)) for i in tiles[(ty, tx)]],
              "scene_index": [scene_ids.index(i.id) for i in tiles[(ty, tx)]]} for ty, tx in todo]
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    ds = (ray.data.from_items(tasks, override_num_blocks=len(tasks))
          .map(prepare_tile, fn_kwargs=dict(grid=grid, covariates=cfg.covariates, band_names=meta["band_names"],
                                            band_centers=meta["band_centers_nm"], quality=tuple(cfg.quality_masks)))
          .filter(lambda r: r["n_valid"] > 0)
          .map(Predictor, fn_constructor_kwargs=dict(model=cfg.model, mc_samples=cfg.mc_samples),
               concurrency=cfg.predict_actors, num_gpus=1 if gpus else 0)
          .map(_write, fn_kwargs=dict(url=cfg.out, storage_options=cfg.storage_options, grid=grid, t=t_index)))
    log(f"[3/4] Ray Data: read + warp + covariates -> student ({cfg.predict_actors} actor(s){', GPU' if gpus else ''}) -> zarr chunks")
    n_pix = 0
    try:
        for row in ds.iter_rows():
            n_pix += int(row["n"])
    except Exception as e:  # noqa: BLE001 - nothing is published; surface the input fault if there is one
        cause = find_input_error(e)
        if cause is not None:
            raise DeepSaltInputError(cause.where, cause.fault + " (nothing was published)", cause.fix) from None
        raise
    cube_mod.publish(cfg.out, cfg.storage_options, scene_ids,
                     {**root.attrs.get("models", {}), cfg.epoch: {"bundle": cfg.model, "weights_sha256": model_hash,
                                                                   "data_hash": meta["data_hash"]}})
    state["scene_ids"] = scene_ids
    state["epochs"][cfg.epoch] = {"tiles": {**done, **{f"{ty}_{tx}": fps[f"{ty}_{tx}"] for ty, tx in todo}}, "model": model_hash}
    cube_mod.write_state(cfg.out, cfg.storage_options, state)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary.update(pixels_mapped=n_pix, seconds=round(time.time() - t0, 1), published=True)
    cube_mod.write_state(cfg.out, cfg.storage_options, {"config": cfg.model_dump(mode="json"), "summary": summary},
                         f"_deepsalt/runs/{stamp}-{cfg.epoch}.json")
    log(f"[4/4] published epoch {cfg.epoch} (time index {t_index}): {n_pix} pixels in {len(todo)} tiles, {summary['seconds']} s")
    return summary
