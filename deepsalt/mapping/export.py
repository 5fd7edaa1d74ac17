"""Portable copies of one epoch of the cube for GIS users: a COG (ECe, or the cube's target, its uncertainty and DI, the
exceedance probability of each threshold, CRS, nodata, overviews) or a CF NetCDF that xarray and GDAL open. Written to a temporary name and renamed, so a failed
export leaves nothing half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.cube import cube_vars, epoch_model, mapped_extent, open_cube
from deepsalt.mapping.grid import Grid
from deepsalt.targets import get_target

FORMATS = ("cog", "netcdf")


def _window(ds, g: Grid, url: str, bbox, storage_options, version) -> tuple[slice, slice]:
    if bbox is None:
        return mapped_extent(url, storage_options, version)
    from rasterio.warp import transform_bounds

    x0, y0, x1, y1 = transform_bounds("EPSG:4326", g.crs, *bbox, densify_pts=21)
    r0, c0 = g.cell_of(x0, y1)
    r1, c1 = g.cell_of(x1, y0)
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, g.height - 1), min(c1, g.width - 1)
    if r1 < r0 or c1 < c0:
        raise DeepSaltInputError("--bbox", f"{bbox} lies outside the cube's grid", "pass a box inside the mapped region")
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def export(url: str, out: str | Path, fmt: str, epoch: str | None = None, bbox=None, storage_options: dict | None = None,
           version=None) -> dict:
    """Write one epoch (default: the latest) over ``bbox`` (lon/lat; default: the mapped extent) to ``out``."""
    if fmt not in FORMATS:
        raise DeepSaltInputError("--format", f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    ds = open_cube(url, storage_options, version, chunks=None)
    if ds.sizes["time"] == 0:
        raise DeepSaltInputError(url, "has no published epoch yet", "run `deepsalt map` first")
    times = [str(t)[:10] for t in ds["time"].values]
    if epoch is None:
        t = len(times) - 1
    else:
        day = str(np.datetime64(epoch, "D"))
        if day not in times:
            raise DeepSaltInputError(f"--epoch {epoch}", "the cube has no such epoch", f"epochs: {', '.join(times)}")
        t = times.index(day)
    g = Grid(**ds.attrs["grid"])
    target = get_target(ds.attrs.get("target") or "ece")
    var = target.var
    ys, xs = _window(ds, g, url, bbox, storage_options, version)
    sub = ds.isel(time=t, y=ys, x=xs)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    if fmt == "cog":
        from affine import Affine

        from deepsalt.data.cog import write_cog

        thr = [float(v) for v in ds["threshold"].values] if "exceedance" in sub else []
        layers = [sub[var].values, sub[f"{var}_sd"].values, sub["di"].values, *(sub["exceedance"].values if thr else [])]
        data = np.stack(layers).astype(np.float32)
        tr = Affine(g.res, 0, g.x0 + xs.start * g.res, 0, -g.res, g.y0 - ys.start * g.res)
        write_cog(out, data, g.crs, tr, nodata=float("nan"),
                  descriptions=[f"{target.short} ({target.units})", f"{target.short} uncertainty, sd ({target.units})",
                                "dissimilarity index (AOA: di <= the threshold in tag aoa_threshold)",
                                *[f"P({target.short} > {v:g} {target.units}) (called above it at the probability in tag "
                                  "exceedance_decision)" for v in thr]],
                  tags={"epoch": times[t], "units": target.units, "variable": var, "source": f"DeepSalt cube {url}",
                        "scene_ids": json.dumps(ds.attrs["scene_ids"]),
                        "aoa_threshold": str(epoch_model(ds, times[t]).get("aoa_threshold")),
                        "interval90": _interval_tag(epoch_model(ds, times[t])),
                        "exceedance_decision": json.dumps(epoch_model(ds, times[t]).get("exceedance_decision"))},
                  overviews="AUTO")
    else:
        keep = sub[list(cube_vars(target))].expand_dims(time=[sub["time"].values])
        keep["valid"] = keep["valid"].astype("int8")  # NetCDF-3 has no unsigned byte
        keep.attrs = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in ds.attrs.items()}
        keep.attrs["epoch"] = times[t]
        for v in keep.data_vars.values():
            v.encoding.clear()
        keep.load().to_netcdf(tmp, engine="scipy")
        os.replace(tmp, out)
    return {"out": str(out), "format": fmt, "epoch": times[t], "rows": ys.stop - ys.start, "cols": xs.stop - xs.start}


def _interval_tag(model: dict) -> str:
    """The calibrated 90 % interval's constants and formula, for readers of the COG's bands 1 to 3."""
    return json.dumps({"q": model.get("interval90_q"), "scaled": model.get("interval90_scaled"),
                       "di_slope": model.get("interval90_di_slope", 0.0),
                       "log": model.get("interval90_log", True),
                       "formula": "log target: lo = v / f, hi = v * f, f = exp(q * s * (1 + di_slope * di)), s = sd / v if "
                                  "scaled else 1; linear: lo, hi = v -+ q * s * (1 + di_slope * di), s = sd if scaled else 1 "
                                  "(v, sd, di: bands 1, 2 and 3)"})
