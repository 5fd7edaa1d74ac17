"""The cube described in STAC, rewritten after every publication: ``<cube>/stac/collection.json`` and
``<cube>/stac/deepsalt-<var>/deepsalt-<var>.json`` (``deepsalt-ece`` for ECe; a Collection and one Item with the datacube extension: dimensions,
variables, the mapped extent and epochs, and an asset that says how to open the cube at the commit it
describes). Derived from the cube itself, so a lost or stale copy is restored by the next run."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import fsspec
import numpy as np
import pystac
import zarr
from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
from rasterio.warp import transform_bounds

from deepsalt import __version__
from deepsalt.mapping.cube import cube_target, cube_vars, readonly_session, recorded_tiles
from deepsalt.mapping.grid import Grid
from deepsalt.redact import redact_url

def item_id(target) -> str:
    """The cube's Item id: ``deepsalt-<variable>``."""
    return f"deepsalt-{target.var}"


def cube_stac(url: str, storage_options: dict | None = None) -> pystac.Collection:
    """The Collection (with its one Item) describing the cube's latest commit."""
    session = readonly_session(url, storage_options)
    root = zarr.open_group(session.store, mode="r")
    g = Grid(**root.attrs["grid"])
    target = cube_target(root)
    tiles = recorded_tiles(session)
    c = g.chunk * g.res
    if tiles:
        tys, txs = zip(*tiles)
        native = (g.x0 + min(txs) * c, g.y0 - (max(tys) + 1) * c, g.x0 + (max(txs) + 1) * c, g.y0 - min(tys) * c)
    else:
        native = (g.x0, g.y0 - g.height * g.res, g.x0 + g.width * g.res, g.y0)
    bbox = list(transform_bounds(g.crs, "EPSG:4326", *native, densify_pts=21))
    days = root["time"][:] if root["time"].shape[0] else np.zeros(0, "int64")
    epochs = [datetime(1970, 1, 1, tzinfo=timezone.utc) + np.timedelta64(int(d), "D").astype(object) for d in days]
    start, end = (min(epochs), max(epochs)) if epochs else (None, None)
    geom = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
    when = start or datetime.now(timezone.utc)
    item = pystac.Item(item_id(target), geom, bbox, None if start else when, properties={
        "start_datetime": when.isoformat(), "end_datetime": (end or when).isoformat(),
        "title": root.attrs.get("title") or f"DeepSalt {target.short} cube",
        "description": root.attrs.get("summary") or f"DeepSalt {target.short} cube",
        "deepsalt:commit": session.snapshot_id, "deepsalt:epochs": [e.date().isoformat() for e in epochs],
        "deepsalt:scenes": len(root.attrs.get("scene_ids", [])), "deepsalt:version": __version__})
    epsg = int(g.crs.split(":")[1])
    cube = DatacubeExtension.ext(item, add_if_missing=True)
    cube.dimensions = {
        "x": Dimension.from_dict({"type": "spatial", "axis": "x", "extent": [native[0], native[2]], "step": g.res, "reference_system": epsg}),
        "y": Dimension.from_dict({"type": "spatial", "axis": "y", "extent": [native[1], native[3]], "step": -g.res, "reference_system": epsg}),
        "time": Dimension.from_dict({"type": "temporal", "values": [e.isoformat() for e in epochs]} if epochs else
                                    {"type": "temporal", "extent": [None, None]}),
        # the exceedance probabilities' thresholds: an additional dimension of the datacube extension
        "threshold": Dimension.from_dict({"type": "threshold", "values": [float(v) for v in root["threshold"][:]],
                                          "unit": target.units, "description": f"{target.short} threshold of the exceedance "
                                                                               "probabilities"}),
    }
    cube.variables = {name: Variable.from_dict({"dimensions": ["time", "threshold", "y", "x"] if spec.get("threshold") else ["time", "y", "x"],
                                                "type": "data", "description": spec["attrs"]["long_name"],
                                                **({"unit": spec["attrs"]["units"]} if "units" in spec["attrs"] else {})})
                      for name, spec in cube_vars(target).items()}
    href = redact_url(url)
    item.add_asset("cube", pystac.Asset(href, title=f"DeepSalt {target.short} cube (Icechunk repository, Zarr v3)", roles=["data"],
                                        media_type="application/vnd.zarr; version=3",
                                        description=f"deepsalt.open_cube({href!r}, version={session.snapshot_id!r}); or "
                                                    f"xarray.open_zarr(icechunk.Repository.open(STORAGE).readonly_session("
                                                    f"snapshot_id={session.snapshot_id!r}).store, consolidated=False)"))
    col = pystac.Collection(item_id(target), root.attrs.get("summary") or f"DeepSalt {target.short} cube",
                            pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[start, end]])),
                            title=root.attrs.get("title"), license=root.attrs.get("license", "other"),
                            catalog_type=pystac.CatalogType.SELF_CONTAINED,
                            keywords=[k.strip() for k in root.attrs.get("keywords", "").split(",") if k.strip()])
    col.add_item(item)
    return col


def write_cube_stac(url: str, storage_options: dict | None = None) -> str:
    """Write the cube's STAC beside its repository (``<cube>/stac/``); returns the collection's href."""
    col = cube_stac(url, storage_options)
    base = url.rstrip("/") + "/stac"
    col.normalize_hrefs(base)
    fs, path = fsspec.core.url_to_fs(base, **(storage_options or {}))
    item = next(iter(col.get_items()))
    for obj, rel in ((col, "collection.json"), (item, f"{item.id}/{item.id}.json")):
        d = obj.to_dict(include_self_link=False, transform_hrefs=True)
        dst = f"{path}/{rel}"
        fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(dst + ".partial", "w") as f:
            f.write(json.dumps(d, indent=1))
        fs.mv(dst + ".partial", dst)
    return f"{base}/collection.json"
