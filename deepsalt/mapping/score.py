"""Score a cube against the synthetic world's ground-truth ECe rasters, and open cubes for reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.warp import reproject

from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import mapped_extent, open_cube
from deepsalt.mapping.grid import Grid
from deepsalt.train.evaluate import metrics


def open_cube_dataset(url: str, storage_options: dict | None = None, version=None) -> xr.Dataset:
    try:
        return open_cube(url, storage_options, version)
    except (FileNotFoundError, KeyError) as e:
        raise DeepSaltInputError(url, f"not a DeepSalt cube ({type(e).__name__}: {str(e)[:120]})", "pass the --out of `deepsalt map`") from None


def _epoch_index(ds: xr.Dataset, epoch: str | None) -> int:
    if ds.sizes["time"] == 0:
        raise DeepSaltInputError("cube", "has no published epoch yet", "run `deepsalt map` first")
    if epoch is None:
        return ds.sizes["time"] - 1
    hit = np.flatnonzero(ds["time"].values == np.datetime64(epoch, "ns"))
    if not hit.size:
        raise DeepSaltInputError("cube", f"has no epoch {epoch}", f"epochs: {[str(t)[:10] for t in ds['time'].values]}")
    return int(hit[0])


def score(cube_url: str, world: str | Path, epoch: str | None = None, storage_options: dict | None = None) -> dict:
    ds = open_cube_dataset(cube_url, storage_options)
    g = Grid(**ds.attrs["grid"])
    t = _epoch_index(ds, epoch)
    scene_ids = list(ds.attrs.get("scene_ids", []))
    out, ys, ps = {"scenes": {}}, [], []
    for truth in sorted((Path(world) / "truth").glob("*_ECE.TIF")):
        sid = truth.name.removesuffix("_ECE.TIF")
        if sid not in scene_ids:
            continue
        with rasterio.open(truth) as src:
            b = rasterio.warp.transform_bounds(src.crs, g.crs, *src.bounds)
            r0, c0 = g.cell_of(b[0], b[3])
            r1, c1 = g.cell_of(b[2], b[1])
            r0, c0 = max(r0, 0), max(c0, 0)
            sub = ds.isel(time=t, y=slice(r0, r1 + 1), x=slice(c0, c1 + 1))
            dst = np.full((sub.sizes["y"], sub.sizes["x"]), np.nan, np.float32)
            tr = rasterio.Affine(g.res, 0, g.x0 + c0 * g.res, 0, -g.res, g.y0 - r0 * g.res)
            reproject(src.read(1), dst, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
                      dst_transform=tr, dst_crs=g.crs, dst_nodata=np.nan, resampling=Resampling.nearest)
        pred, scene = sub["ece"].values, sub["scene"].values
        ok = np.isfinite(pred) & np.isfinite(dst) & (scene == scene_ids.index(sid))
        m = metrics(dst[ok], pred[ok])
        out["scenes"][sid] = {**{k: m[k] for k in ("mae", "rmse", "r2")}, "n_pixels": m["n"]}
        ys.append(dst[ok])
        ps.append(pred[ok])
    if not ys:
        raise DeepSaltInputError(world, "no ground-truth raster matches a scene in the cube", "score the cube with the world it was mapped from")
    m = metrics(np.concatenate(ys), np.concatenate(ps))
    out["overall"] = {**{k: m[k] for k in ("mae", "rmse", "r2")}, "n_pixels": m["n"]}
    return {"overall": out["overall"], "scenes": out["scenes"]}


def quicklook(cube_url: str, png: str | Path, epoch: str | None = None, storage_options: dict | None = None,
              max_px: int = 1600) -> Path:
    """A map of ECe (dS/m) over the cube's mapped extent, with a colour bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_cube_dataset(cube_url, storage_options)
    t = _epoch_index(ds, epoch)
    g = Grid(**ds.attrs["grid"])
    ys, xs = mapped_extent(cube_url, storage_options)
    sub = ds["ece"].isel(time=t, y=ys, x=xs)
    step = max(1, int(np.ceil(max(sub.shape) / max_px)))
    arr = sub.isel(y=slice(None, None, step), x=slice(None, None, step))
    fig, ax = plt.subplots(figsize=(10, 8))
    vmax = float(np.nanpercentile(arr.values, 98)) if np.isfinite(arr.values).any() else 1.0
    im = arr.plot.imshow(ax=ax, cmap="magma_r", vmin=0, vmax=vmax, add_colorbar=False)
    fig.colorbar(im, ax=ax, label="ECe (dS/m)")
    ax.set_title(f"DeepSalt ECe, epoch {str(ds['time'].values[t])[:10]}  ({g.crs}, {g.res:g} m{', every ' + str(step) + ' px' if step > 1 else ''})")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
