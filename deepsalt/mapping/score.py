"""Score a cube against the synthetic world's ground-truth rasters (``truth/<scene>_<TARGET>.TIF``: ECE, SOC), and
draw its quicklook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.warp import reproject

from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import open_cube
from deepsalt.mapping.grid import Grid
from deepsalt.evaluation import metrics
from deepsalt.targets import get_target


def open_cube_dataset(url: str, storage_options: dict | None = None, version=None) -> xr.Dataset:
    try:
        return open_cube(url, storage_options, version, chunks=None)
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
    target = get_target(ds.attrs.get("target") or "ece")
    suffix = f"_{target.name.upper()}.TIF"
    out, ys, ps = {"scenes": {}}, [], []
    for truth in sorted((Path(world) / "truth").glob(f"*{suffix}")):
        sid = truth.name.removesuffix(suffix)
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
        pred, scene = sub[target.var].values, sub["scene"].values
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


def _regions(tiles: set[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Groups of tiles that touch (8-neighbours): one inset per mapped region."""
    left, out = set(tiles), []
    while left:
        stack, group = [left.pop()], []
        while stack:
            ty, tx = stack.pop()
            group.append((ty, tx))
            for n in [(ty + i, tx + j) for i in (-1, 0, 1) for j in (-1, 0, 1)]:
                if n in left:
                    left.remove(n)
                    stack.append(n)
        out.append(sorted(group))
    return sorted(out)


def _truth_on(world: Path, g: Grid, ys: slice, xs: slice, target) -> np.ndarray:
    """The world's truth rasters of ``target`` warped onto a window of the grid (NaN where none)."""
    h, w = ys.stop - ys.start, xs.stop - xs.start
    out = np.full((h, w), np.nan, np.float32)
    tr = rasterio.Affine(g.res, 0, g.x0 + xs.start * g.res, 0, -g.res, g.y0 - ys.start * g.res)
    for truth in sorted((Path(world) / "truth").glob(f"*_{target.name.upper()}.TIF")):
        with rasterio.open(truth) as src:
            dst = np.full((h, w), np.nan, np.float32)
            reproject(src.read(1), dst, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
                      dst_transform=tr, dst_crs=g.crs, dst_nodata=np.nan, resampling=Resampling.nearest)
        out = np.where(np.isfinite(out), out, dst)
    return out


def quicklook(cube_url: str, png: str | Path, epoch: str | None = None, storage_options: dict | None = None,
              world: str | Path | None = None, max_px: int = 600) -> Path:
    """One row per mapped region: the value in its target's classes (ECe: FAO salinity classes), its MC-dropout sd, the area of applicability
    (outside it, the model extrapolates), and the residual against the world's truth rasters (``world``), else
    the source scene; plus an overview locating the regions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from pyproj import Transformer

    from deepsalt.mapping.cube import readonly_session, recorded_tiles

    ds = open_cube_dataset(cube_url, storage_options)
    t = _epoch_index(ds, epoch)
    g = Grid(**ds.attrs["grid"])
    regions = _regions(recorded_tiles(readonly_session(cube_url, storage_options), t))
    if not regions:
        raise DeepSaltInputError(cube_url, "the epoch has no mapped tile", "run `deepsalt map` first")
    to_ll = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    target = get_target(ds.attrs.get("target") or "ece")
    uppers = [hi for hi, _ in target.classes if np.isfinite(hi)]
    bounds = [min(0.0, target.valid_range[0]), *uppers, 2 * uppers[-1]]  # above 2 x the last bound: the top class
    cmap = ListedColormap(["#2c7bb6", "#abd9e9", "#fee090", "#fc8d59", "#d7191c", "#67001f"][:len(bounds) - 1])
    norm = BoundaryNorm(bounds, cmap.N, clip=True)
    ticks = [(a + b) / 2 for a, b in zip(bounds[:-1], bounds[1:])]
    fig, axes = plt.subplots(len(regions) + 1, 4, figsize=(20, 4.6 * (len(regions) + 1)), squeeze=False)
    centres = []
    for k, group in enumerate(regions, start=1):
        tys, txs = zip(*group)
        ys = slice(min(tys) * g.chunk, min((max(tys) + 1) * g.chunk, g.height))
        xs = slice(min(txs) * g.chunk, min((max(txs) + 1) * g.chunk, g.width))
        step = max(1, int(np.ceil(max(ys.stop - ys.start, xs.stop - xs.start) / max_px)))
        sub = ds.isel(time=t, y=ys, x=xs)
        ece, sd = sub[target.var].values[::step, ::step], sub[f"{target.var}_sd"].values[::step, ::step]
        ext = (g.x0 + xs.start * g.res, g.x0 + xs.stop * g.res, g.y0 - ys.stop * g.res, g.y0 - ys.start * g.res)
        lon, lat = to_ll.transform((ext[0] + ext[1]) / 2, (ext[2] + ext[3]) / 2)
        centres.append((lon, lat))
        ax = axes[k]
        im = ax[0].imshow(ece, cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax[0], ticks=ticks, shrink=0.8)
        cb.ax.set_yticklabels([n for _, n in target.classes], fontsize=8)
        ax[0].set_title(f"region {k} ({lon:.2f}, {lat:.2f}): {target.short}, classes", fontsize=10)
        im = ax[1].imshow(sd, cmap="viridis", extent=ext, interpolation="nearest",
                          vmax=float(np.nanpercentile(sd, 98)) if np.isfinite(sd).any() else 1)
        fig.colorbar(im, ax=ax[1], label=f"{target.short} sd ({target.units}), MC dropout", shrink=0.8)
        ax[1].set_title("uncertainty", fontsize=10)
        if "aoa" in sub:
            aoa = sub["aoa"].values[::step, ::step].astype(float)
            aoa[aoa > 1] = np.nan  # the fill: not mapped
            ax[2].imshow(aoa, cmap=ListedColormap(["#bdbdbd", "#1a9850"]), vmin=0, vmax=1, extent=ext, interpolation="nearest")
            inside = float(np.nanmean(aoa)) if np.isfinite(aoa).any() else float("nan")
            ax[2].set_title(f"area of applicability: {100 * inside:.0f} % inside (green); grey: extrapolation", fontsize=10)
        if world is not None:
            res = ece - _truth_on(Path(world), g, ys, xs, target)[::step, ::step]
            lim = float(np.nanpercentile(np.abs(res), 98)) if np.isfinite(res).any() else 1.0
            im = ax[3].imshow(res, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=ext, interpolation="nearest")
            fig.colorbar(im, ax=ax[3], label=f"predicted - true {target.short} ({target.units})", shrink=0.8)
            ax[3].set_title(f"residual vs truth (MAE {np.nanmean(np.abs(res)):.2f} {target.units})", fontsize=10)
        else:
            im = ax[3].imshow(sub["scene"].values[::step, ::step], cmap="tab10", extent=ext, interpolation="nearest")
            ax[3].set_title("source scene (index into scene_ids)", fontsize=10)
        for a in ax:
            a.set_aspect("equal")
            a.tick_params(labelsize=7)
    ov = axes[0]
    for a in ov[1:]:
        a.axis("off")
    lons, lats = zip(*centres)
    ov[0].scatter(lons, lats, s=80, c="#d7191c")
    for k, (lon, lat) in enumerate(centres, start=1):
        ov[0].annotate(f" region {k}", (lon, lat), fontsize=9)
    pad = 1.0
    ov[0].set_xlim(min(lons) - pad, max(lons) + pad)
    ov[0].set_ylim(min(lats) - pad, max(lats) + pad)
    ov[0].set_xlabel("longitude")
    ov[0].set_ylabel("latitude")
    ov[0].set_title(f"DeepSalt {target.short}, epoch {str(ds['time'].values[t])[:10]}: {len(regions)} mapped region(s)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return Path(png)
