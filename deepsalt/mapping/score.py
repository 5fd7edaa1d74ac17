"""Score a cube against the synthetic world's ground-truth rasters (``truth/<scene>_<TARGET>.TIF``: ECE, SOC), and
draw its quicklook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
import zarr
from rasterio.enums import Resampling
from rasterio.warp import reproject

from deepsalt.data.cog import one_gdal_env
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import epoch_model, open_cube
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


def _skill(y: np.ndarray, pred: np.ndarray, calls: np.ndarray | None, thresholds) -> dict:
    """The figures users judge a map by: MAE, RMSE, R2, R2 and MAE of ln values, Spearman, and per threshold the
    recall, precision and F1 of the map's calls (``calls``: bool, thresholds x pixels; else the value above the
    threshold) and the AUC of the value."""
    m = metrics(y, pred, thresholds, calls)
    keep = ("mae", "rmse", "r2", "r2_ln", "mae_ln", "spearman")
    return {**{k: m[k] for k in keep}, "n_pixels": m["n"], **({"classes": m["classes"]} if "classes" in m else {})}


def _pooled(parts: list[dict], thresholds) -> dict:
    """Skill over several scenes' pixels together; each class's ``auc`` is the median of the scenes' own AUCs (the
    ranking within a scene, not between scenes), the pooled one beside it as ``auc_pooled``."""
    if not parts:
        return {}
    cat = lambda k: np.concatenate([p[k] for p in parts], axis=-1)  # noqa: E731
    calls = cat("calls") if parts[0]["calls"] is not None else None
    out = _skill(cat("y"), cat("pred"), calls, thresholds)
    for t, c in out.get("classes", {}).items():
        aucs = [p["skill"]["classes"][t]["auc"] for p in parts]
        aucs = [a for a in aucs if np.isfinite(a)]
        c["auc_pooled"] = c["auc"]
        c["auc"] = float(np.median(aucs)) if aucs else float("nan")
        c["n_scenes_auc"] = len(aucs)
    return out


@one_gdal_env
def score(cube_url: str, world: str | Path, epoch: str | None = None, storage_options: dict | None = None) -> dict:
    """The cube against the world's truth rasters, overall, per region (``seen``, ``unseen``: the world's held-out
    region) and per scene (see ``_skill``); the class calls are the cube's (exceedance probability at the decision
    probability it records), the AUC ranks pixels by the value within each scene. ``reference_scene_median`` gives
    the same figures for a map that is each scene's true median everywhere (no skill within a scene), and
    ``reliability`` the exceedance probabilities' calibration against the truth pixels (Brier skill, deciles), and
    ``hindsight_decision`` what the best decision probability would have called (``hindsight_decision``)."""
    from deepsalt.models.applicability import hindsight_decision, reliability

    ds = open_cube_dataset(cube_url, storage_options)
    g = Grid(**ds.attrs["grid"])
    t = _epoch_index(ds, epoch)
    scene_ids = list(ds.attrs.get("scene_ids", []))
    target = get_target(ds.attrs.get("target") or "ece")
    thresholds = tuple(float(v) for v in ds["threshold"].values) if "exceedance" in ds else target.thresholds
    day = str(ds["time"].values[t])[:10]
    decision = (epoch_model(ds, day).get("exceedance_decision") or ds.attrs.get("exceedance_decision") or {})
    dec = np.array([float(decision.get(f"{v:g}", 0.5)) for v in thresholds])[:, None]
    try:
        regions = {s["id"]: s.get("region", "seen") for s in json.loads((Path(world) / "world.json").read_text())["scenes"]}
    except (OSError, ValueError, KeyError):
        regions = {}
    suffix = f"_{target.name.upper()}.TIF"
    parts = []
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
        prob = sub["exceedance"].values[:, ok].astype(float) if "exceedance" in sub else None
        y, p = dst[ok].astype(float), pred[ok].astype(float)
        calls = prob >= dec - 1e-9 if prob is not None else None
        parts.append({"id": sid, "region": regions.get(sid, "seen"), "y": y, "pred": p, "prob": prob, "calls": calls,
                      "median": np.full(len(y), np.median(y) if len(y) else np.nan),
                      "skill": _skill(y, p, calls, thresholds)})
    if not parts:
        raise DeepSaltInputError(world, "no ground-truth raster matches a scene in the cube", "score the cube with the world it was mapped from")
    groups = {"overall": parts, **{r: [p for p in parts if p["region"] == r] for r in ("seen", "unseen")}}
    out = {name: _pooled(ps, thresholds) for name, ps in groups.items()}
    out["scenes"] = {p["id"]: {**p["skill"], "region": p["region"]} for p in parts}
    ref = [{**p, "pred": p["median"], "calls": None, "skill": _skill(p["y"], p["median"], None, thresholds)} for p in parts]
    out["reference_scene_median"] = {**{name: _pooled([r for r in ref if name == "overall" or r["region"] == name], thresholds)
                                        for name in groups}, "scenes": {r["id"]: r["skill"] for r in ref}}
    if parts[0]["prob"] is not None:
        out["reliability"] = {name: reliability(np.concatenate([p["y"] for p in ps]),
                                                np.concatenate([p["prob"] for p in ps], axis=1), thresholds)
                              for name, ps in groups.items() if ps}
        out["hindsight_decision"] = {name: hindsight_decision(np.concatenate([p["y"] for p in ps]),
                                                              np.concatenate([p["prob"] for p in ps], axis=1), thresholds)
                                     for name, ps in groups.items() if ps}
    out["exceedance_decision"] = {f"{v:g}": float(d) for v, d in zip(thresholds, dec[:, 0])}
    out["epoch"] = day
    return out


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


def _change_panel(ax, chg, g: Grid, ys: slice, xs: slice, step: int, ext) -> None:
    """The change store's calls over a window of the cube's grid (the store covers the tiles it compared)."""
    from matplotlib.colors import ListedColormap

    sub = Grid(**chg.attrs["grid"])
    oy, ox = round((g.y0 - sub.y0) / g.res), round((sub.x0 - g.x0) / g.res)  # the store's origin, in grid cells
    h, w = ys.stop - ys.start, xs.stop - xs.start
    show = np.full((h, w), np.nan)
    r0, r1 = max(ys.start, oy), min(ys.stop, oy + sub.height)
    c0, c1 = max(xs.start, ox), min(xs.stop, ox + sub.width)
    if r0 < r1 and c0 < c1:
        call = chg["call"][r0 - oy:r1 - oy, c0 - ox:c1 - ox].astype(float)
        flag = chg["flag"][r0 - oy:r1 - oy, c0 - ox:c1 - ox]
        # 0 decrease, 1 no detectable change, 2 increase, 3 flagged (AOA, season); not compared: blank
        code = np.where(flag == 0, call + 1, np.where(flag > 1, 3, np.nan))
        show[r0 - ys.start:r1 - ys.start, c0 - xs.start:c1 - xs.start] = code
    show = show[::step, ::step]
    cmap = ListedColormap(["#2166ac", "#f0f0f0", "#b2182b", "#636363"])
    ax.imshow(show, cmap=cmap, vmin=-0.5, vmax=3.5, extent=ext, interpolation="nearest")
    seen = show[np.isfinite(show)]
    names = ["decrease", "no detectable change", "increase", "flagged (AOA, season)"]
    shares = [100 * float(np.mean(seen == i)) if seen.size else 0.0 for i in range(4)]
    ax.legend([_rect(cmap(i)) for i in range(4)], [f"{nm} ({sh:.0f} %)" for nm, sh in zip(names, shares)], fontsize=7,
              loc="lower left", framealpha=0.85)
    s = chg.attrs["summary"]
    ax.set_title(f"change {s['from']} -> {s['to']} at {100 * s['confidence']:g} % confidence", fontsize=9)


def _rect(color):
    import matplotlib.pyplot as plt

    return plt.Rectangle((0, 0), 1, 1, color=color)


def _km_axes(ax, crs: str) -> None:
    """Projected axes labelled in km, a few readable ticks."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(4))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:,.0f}"))
    ax.set_xlabel(f"x (km, {crs})", fontsize=8)
    ax.set_ylabel("y (km)", fontsize=8)
    ax.tick_params(labelsize=7)


@one_gdal_env
def quicklook(cube_url: str, png: str | Path, epoch: str | None = None, storage_options: dict | None = None,
              world: str | Path | None = None, max_px: int = 600, change: str | None = None) -> Path:
    """A picture of one epoch. Top row: an overview locating the mapped regions, and (with ``world``) the predicted
    against the true value on log axes with the 1:1 line and the exceedance probabilities' reliability, else the
    distribution of mapped values. One row per mapped region: the map's class calls (exceedance probability at the
    cube's decision probability; the value's classes for a cube without exceedance), the probability of exceeding
    the first threshold, the uncertainty (MC-dropout sd), the area of applicability (outside it the model
    extrapolates), and the residual against the world's truth (``world``), else the source scene; with ``change`` (a
    store of `deepsalt change`), or where the cube holds an earlier epoch (then the change from it to this one, at
    `deepsalt change`'s defaults), also the change's calls: increase, decrease, no detectable change, flagged. Axes
    in km."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
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
    day = str(ds["time"].values[t])[:10]
    has_p = "exceedance" in ds
    thresholds = [float(v) for v in ds["threshold"].values] if has_p else list(target.thresholds)
    decision = epoch_model(ds, day).get("exceedance_decision") or {}
    dec = np.array([float(decision.get(f"{v:g}", 0.5)) for v in thresholds])
    u = target.units.replace(" m-1", "/m")
    labels = [f"< {thresholds[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(thresholds[:-1], thresholds[1:])] + [f"> {thresholds[-1]:g}"]
    cmap = ListedColormap(["#2c7bb6", "#fee090", "#fc8d59", "#d7191c", "#67001f"][:len(labels)])
    n = len(regions)
    tmp = None
    if change is None and t >= 1:  # a cube of two epochs or more: the change from the previous epoch to this one
        import tempfile

        from deepsalt.mapping.change import change as compute_change

        tmp = tempfile.TemporaryDirectory(prefix="deepsalt-quicklook-")
        try:
            compute_change(cube_url, str(ds["time"].values[t - 1])[:10], day, f"{tmp.name}/change.zarr",
                           storage_options=storage_options, log=lambda *_: None)
            change = f"{tmp.name}/change.zarr"
        except DeepSaltInputError:  # no tile mapped in both epochs: nothing to draw
            change = None
    chg = zarr.open_group(change, mode="r") if change else None
    panels = 6 if chg is not None else 5
    fig = plt.figure(figsize=(22 * panels / 5, 4.4 * (n + 1)))
    gs = fig.add_gridspec(n + 1, 3 * panels)  # a region row: panels of 3 columns; the top row: 3 panels
    truths, values, probs, centres = [], [], [], []
    for k, group in enumerate(regions, start=1):
        tys, txs = zip(*group)
        ys = slice(min(tys) * g.chunk, min((max(tys) + 1) * g.chunk, g.height))
        xs = slice(min(txs) * g.chunk, min((max(txs) + 1) * g.chunk, g.width))
        step = max(1, int(np.ceil(max(ys.stop - ys.start, xs.stop - xs.start) / max_px)))
        sub = ds.isel(time=t, y=ys, x=xs)
        val, sd = sub[target.var].values[::step, ::step], sub[f"{target.var}_sd"].values[::step, ::step]
        prob = sub["exceedance"].values[:, ::step, ::step] if has_p else None
        ext = (g.x0 + xs.start * g.res, g.x0 + xs.stop * g.res, g.y0 - ys.stop * g.res, g.y0 - ys.start * g.res)
        lon, lat = to_ll.transform((ext[0] + ext[1]) / 2, (ext[2] + ext[3]) / 2)
        centres.append((lon, lat))
        ax = [fig.add_subplot(gs[k, 3 * j:3 * j + 3]) for j in range(panels)]
        # the map's calls: how many thresholds each pixel is called above
        called = (prob >= dec[:, None, None] - 1e-9).sum(0) if has_p else np.searchsorted(thresholds, val, side="right")
        called = np.where(np.isfinite(val), called, np.nan)
        ax[0].imshow(called, cmap=cmap, vmin=-0.5, vmax=len(labels) - 0.5, extent=ext, interpolation="nearest")
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(labels))]
        mapped = called[np.isfinite(called)]
        shares = [100 * float(np.mean(mapped == i)) if mapped.size else 0.0 for i in range(len(labels))]
        ax[0].legend(handles, [f"{lb} ({s:.0f} %)" for lb, s in zip(labels, shares)], fontsize=7, loc="lower left",
                     title=f"{target.short} ({u}) called", title_fontsize=7, framealpha=0.85)
        how = "P(exceed) >= decision probability" if has_p else "value's class"
        ax[0].set_title(f"region {k} ({lon:.2f}, {lat:.2f}): {target.short} class calls ({how})", fontsize=9)
        if has_p:
            im = ax[1].imshow(prob[0], cmap="magma_r", vmin=0, vmax=1, extent=ext, interpolation="nearest")
            fig.colorbar(im, ax=ax[1], shrink=0.8, label="probability")
            ax[1].set_title(f"P({target.short} > {thresholds[0]:g} {u}); called at >= {dec[0]:.2f}", fontsize=9)
        else:
            im = ax[1].imshow(val, cmap="YlOrRd", extent=ext, interpolation="nearest",
                              vmax=float(np.nanpercentile(val, 98)) if np.isfinite(val).any() else 1)
            fig.colorbar(im, ax=ax[1], shrink=0.8, label=f"{target.short} ({u})")
            ax[1].set_title(f"{target.short} (no exceedance in this cube)", fontsize=9)
        im = ax[2].imshow(sd, cmap="viridis", extent=ext, interpolation="nearest",
                          vmax=float(np.nanpercentile(sd, 98)) if np.isfinite(sd).any() else 1)
        fig.colorbar(im, ax=ax[2], label=f"sd ({u}), MC dropout", shrink=0.8)
        ax[2].set_title("uncertainty", fontsize=9)
        aoa = sub["aoa"].values[::step, ::step].astype(float)
        aoa[aoa > 1] = np.nan  # the fill: not mapped
        ax[3].imshow(aoa, cmap=ListedColormap(["#bdbdbd", "#1a9850"]), vmin=0, vmax=1, extent=ext, interpolation="nearest")
        inside = float(np.nanmean(aoa)) if np.isfinite(aoa).any() else float("nan")
        ax[3].set_title(f"area of applicability: {100 * inside:.0f} % inside (green)\ngrey: extrapolation", fontsize=9)
        if world is not None:
            truth = _truth_on(Path(world), g, ys, xs, target)[::step, ::step]
            res = val - truth
            lim = float(np.nanpercentile(np.abs(res), 98)) if np.isfinite(res).any() else 1.0
            im = ax[4].imshow(res, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=ext, interpolation="nearest")
            fig.colorbar(im, ax=ax[4], label=f"predicted - true ({u})", shrink=0.8)
            ax[4].set_title(f"residual vs truth (MAE {np.nanmean(np.abs(res)):.2f} {u})", fontsize=9)
            ok = np.isfinite(val) & np.isfinite(truth)
            truths.append(truth[ok])
            values.append(val[ok])
            if has_p:
                probs.append(prob[:, ok])
        else:
            ax[4].imshow(sub["scene"].values[::step, ::step], cmap="tab10", extent=ext, interpolation="nearest")
            ax[4].set_title("source scene (index into scene_ids)", fontsize=9)
            values.append(val[np.isfinite(val)])
        if chg is not None:
            _change_panel(ax[5], chg, g, ys, xs, step, ext)
        for a in ax:
            a.set_aspect("equal")
            _km_axes(a, g.crs)
    w = panels  # the top row's three panels
    ov = fig.add_subplot(gs[0, 0:w])
    lons, lats = zip(*centres)
    ov.scatter(lons, lats, s=80, c="#d7191c")
    for k, (lon, lat) in enumerate(centres, start=1):
        ov.annotate(f" region {k}", (lon, lat), fontsize=9)
    ov.set_xlim(min(lons) - 1.0, max(lons) + 1.0)
    ov.set_ylim(min(lats) - 1.0, max(lats) + 1.0)
    ov.set_xlabel("longitude (deg)")
    ov.set_ylabel("latitude (deg)")
    ov.set_title(f"DeepSalt {target.short}, epoch {day}: {n} mapped region(s)", fontsize=11)
    ax1, ax2 = fig.add_subplot(gs[0, w:2 * w]), fig.add_subplot(gs[0, 2 * w:3 * w])
    v = np.concatenate(values)
    rng = np.random.default_rng(0)
    if truths:
        y = np.concatenate(truths)
        pick = rng.permutation(len(y))[:20000]
        lo = max(float(np.nanmin(np.r_[y, v])), 1e-2)
        hi = float(np.nanmax(np.r_[y, v]))
        ax1.scatter(np.maximum(y[pick], lo), np.maximum(v[pick], lo), s=2, alpha=0.25, c="#3182bd", rasterized=True)
        ax1.plot([lo, hi], [lo, hi], "k-", lw=1, label="1:1")
        for th in thresholds:
            ax1.axvline(th, color="#d7191c", lw=0.6, ls=":")
            ax1.axhline(th, color="#d7191c", lw=0.6, ls=":")
        ax1.set(xscale="log", yscale="log", xlabel=f"true {target.short} ({u})", ylabel=f"mapped {target.short} ({u})")
        sk = metrics(y, v)
        ax1.set_title(f"mapped vs true, the {len(y):,} px of the regions drawn below (20,000 shown; whole cube: deepsalt "
                      f"score)\nR2 of ln {sk['r2_ln']:.2f}, Spearman {sk['spearman']:.2f}; dotted: thresholds", fontsize=9)
        ax1.legend(fontsize=8, loc="upper left")
        if probs:
            from deepsalt.models.applicability import reliability

            rel = reliability(y, np.concatenate(probs, axis=1), thresholds)
            for i, th in enumerate(thresholds):
                r = rel[f"{th:g}"]
                pts = [(d["predicted"], d["observed"]) for d in r["deciles"] if d["n"] >= 20]
                if pts:
                    ax2.plot(*zip(*pts), "o-", ms=4, label=f"> {th:g} {u}: Brier skill {r['brier_skill']:.2f}")
            ax2.plot([0, 1], [0, 1], "k-", lw=1)
            ax2.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability (bins of 0.1, >= 20 px)",
                    ylabel="observed frequency against the truth")
            ax2.set_title("reliability of the exceedance probabilities", fontsize=9)
            ax2.legend(fontsize=8, loc="upper left")
        else:
            ax2.hist(np.log10(np.maximum(y, 1e-2)), bins=60, alpha=0.6, label="true")
            ax2.hist(np.log10(np.maximum(v, 1e-2)), bins=60, alpha=0.6, label="mapped")
            ax2.set(xlabel=f"log10 {target.short} ({u})", ylabel="pixels")
            ax2.legend(fontsize=8)
            ax2.set_title("distribution of values", fontsize=9)
    else:
        ax1.hist(np.log10(np.maximum(v, 1e-2)), bins=60, color="#3182bd")
        ax1.set(xlabel=f"log10 mapped {target.short} ({u})", ylabel="pixels")
        ax1.set_title(f"distribution of the mapped values ({len(v):,} px)", fontsize=9)
        share = [100 * float(np.mean(v > th)) for th in thresholds]
        ax2.bar([f"> {th:g}" for th in thresholds], share, color="#d7191c")
        ax2.set(ylabel="share of mapped pixels (%)", xlabel=f"{target.short} ({u})")
        ax2.set_title("mapped value above each threshold (pass --world to score against truth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    if tmp is not None:
        tmp.cleanup()
    return Path(png)
