"""The ECe cube: Zarr v3 on any fsspec URL, dims (time, y, x), CF attributes, readable by xarray/rioxarray.

Publishing is one write: tasks write chunks into arrays that were resized beyond what the consolidated
metadata (the root ``zarr.json``) advertises, and the run ends by re-consolidating. Readers that open with
consolidated metadata (``xr.open_zarr``'s default) see the new epoch all at once or not at all.
"""

from __future__ import annotations

import json

import fsspec
import numpy as np
import zarr
from pyproj import CRS

from deepsalt import __version__
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.grid import Grid

VARS = {
    "ece": dict(dtype="float32", fill=np.nan, attrs={"units": "dS m-1", "long_name": "soil salinity, electrical conductivity of the saturated-paste extract, 0-12 cm",
                                                       "valid_min": 0.05, "valid_max": 77.0}),
    "ece_sd": dict(dtype="float32", fill=np.nan, attrs={"units": "dS m-1", "long_name": "ECe uncertainty: standard deviation over MC-dropout passes of the student"}),
    "valid": dict(dtype="uint8", fill=0, attrs={"long_name": "1 where ECe was mapped (clear, valid EnMAP pixel with covariates)", "flag_values": [0, 1],
                                               "flag_meanings": "not_mapped mapped"}),
    "scene": dict(dtype="int32", fill=-1, attrs={"long_name": "index of the EnMAP scene the pixel came from (see the scene_ids attribute)"}),
}
STATE = "_deepsalt/state.json"


#: botocore attempts per S3 request (standard mode: exponential backoff on 5xx, throttling and dropped connections)
S3_RETRIES = 10


def _options(url: str, storage_options: dict | None) -> dict:
    so = dict(storage_options or {})
    if url.startswith("s3://"):
        ck = dict(so.get("config_kwargs", {}))
        ck.setdefault("retries", {"max_attempts": S3_RETRIES, "mode": "standard"})
        so["config_kwargs"] = ck
    return so


def _store(url: str, storage_options: dict | None):
    return zarr.storage.FsspecStore.from_url(url, storage_options=_options(url, storage_options)) if "://" in url else url


def _fs(url: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(url, **_options(url, storage_options))


def open_cube(url: str, grid: Grid, storage_options: dict | None = None) -> zarr.Group:
    """Open the cube, creating its (empty, zero-epoch) template on first use; refuses another grid."""
    store = _store(url, storage_options)
    try:
        root = zarr.open_group(store, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        root = _create(store, grid)
    if root.attrs.get("grid") != grid.to_dict():
        raise ValueError(f"{url}: the cube's grid {root.attrs.get('grid')} is not the requested {grid.to_dict()}")
    return root


def _create(store, grid: Grid) -> zarr.Group:
    root = zarr.open_group(store, mode="w", attributes={
        "Conventions": "CF-1.8", "title": "DeepSalt soil salinity (ECe) cube", "source": f"deepsalt {__version__}",
        "grid": grid.to_dict(), "scene_ids": [], "models": {}})
    crs = CRS.from_user_input(grid.crs)
    sr = root.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    sr.attrs.update({**crs.to_cf(), "crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
                     "GeoTransform": " ".join(str(v) for v in grid.transform.to_gdal())})
    x = root.create_array("x", shape=(grid.width,), dtype="float64", chunks=(min(grid.width, 1 << 16),), dimension_names=("x",))
    x[:] = grid.x0 + (np.arange(grid.width) + 0.5) * grid.res
    x.attrs.update({"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
    y = root.create_array("y", shape=(grid.height,), dtype="float64", chunks=(min(grid.height, 1 << 16),), dimension_names=("y",))
    y[:] = grid.y0 - (np.arange(grid.height) + 0.5) * grid.res
    y.attrs.update({"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
    t = root.create_array("time", shape=(0,), dtype="int64", chunks=(64,), dimension_names=("time",), fill_value=0)
    t.attrs.update({"standard_name": "time", "units": "days since 1970-01-01", "calendar": "proleptic_gregorian",
                    "long_name": "map epoch (start)"})
    for name, spec in VARS.items():
        a = root.create_array(name, shape=(0, grid.height, grid.width), chunks=(1, grid.chunk, grid.chunk),
                              dtype=spec["dtype"], fill_value=spec["fill"], dimension_names=("time", "y", "x"))
        a.attrs.update({**spec["attrs"], "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"})
    zarr.consolidate_metadata(store)
    return zarr.open_group(store, mode="r+")


def epoch_days(epoch: str) -> int:
    return int(np.datetime64(epoch, "D").astype("int64"))


def epoch_index(root: zarr.Group, epoch: str) -> int:
    """Index of ``epoch`` on the time axis, appending it (unpublished) if new."""
    days = epoch_days(epoch)
    t = root["time"]
    values = t[:] if t.shape[0] else np.array([], dtype="int64")
    hit = np.flatnonzero(values == days)
    if hit.size:
        return int(hit[0])
    n = t.shape[0]
    t.resize((n + 1,))
    t[n] = days
    for name in VARS:
        a = root[name]
        a.resize((n + 1, *a.shape[1:]))
    return n


def write_tile(url: str, storage_options: dict | None, grid: Grid, t: int, ty: int, tx: int, arrays: dict) -> None:
    """Write one tile (= one chunk per variable) at time index ``t``.

    Transient store errors (S3 503 SlowDown, 500, throttling, dropped connections) are retried by the
    client (botocore: up to ``S3_RETRIES`` attempts with backoff); what still fails is reported with the
    store and tile it hit, and the epoch stays unpublished.
    """
    store = _store(url, storage_options)
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    ys, xs = grid.tile_slices(ty, tx)
    for name, values in arrays.items():
        try:
            root[name][t, ys, xs] = values
        except Exception as e:  # noqa: BLE001 - any store failure left after the client's retries
            raise DeepSaltInputError(f"{url} (variable {name}, tile {ty}_{tx})", f"writing to the cube failed: {type(e).__name__}: {e}",
                                     "check that the store is reachable and writable with these credentials; "
                                     "transient errors were already retried") from e


def publish(url: str, storage_options: dict | None, scene_ids: list[str], models: dict) -> None:
    store = _store(url, storage_options)
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    root.attrs.update({"scene_ids": scene_ids, "models": models})
    root["scene"].attrs["scene_ids"] = scene_ids
    zarr.consolidate_metadata(store)


def read_state(url: str, storage_options: dict | None) -> dict:
    fs, path = _fs(url, storage_options)
    p = f"{path.rstrip('/')}/{STATE}"
    return json.loads(fs.cat(p)) if fs.exists(p) else {"epochs": {}, "scene_ids": []}


def write_state(url: str, storage_options: dict | None, state: dict, name: str = STATE) -> None:
    fs, path = _fs(url, storage_options)
    p = f"{path.rstrip('/')}/{name}"
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        f.write(json.dumps(state, indent=1, sort_keys=True))


def mapped_extent(url: str, storage_options: dict | None, chunk: int) -> tuple[slice, slice]:
    """(y, x) slices covering every tile the cube's state records: the part worth reading, never the continent."""
    from deepsalt.errors import DeepSaltInputError

    keys = [k for e in read_state(url, storage_options)["epochs"].values() for k in e["tiles"]]
    if not keys:
        raise DeepSaltInputError(url, "no mapped tiles recorded", "run `deepsalt map` first")
    tys, txs = [int(k.split("_")[0]) for k in keys], [int(k.split("_")[1]) for k in keys]
    return slice(min(tys) * chunk, (max(tys) + 1) * chunk), slice(min(txs) * chunk, (max(txs) + 1) * chunk)
