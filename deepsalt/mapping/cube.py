"""The ECe cube: an Icechunk repository (Zarr v3 underneath) on a local folder or ``s3://bucket/prefix``.

Layout of the ``main`` branch (dims ``time, y, x``; CF attributes; CRS in ``spatial_ref``, readable by
rioxarray):

- ``ece`` (or the cube's target's variable, ``soc``...), ``ece_sd``, ``di``, ``aoa``, ``valid``, ``scene``,
  ``acq_date``, and ``exceedance`` (dims ``time, threshold, y, x``: the probability that the value exceeds each of the
  target's thresholds, in percent with ``scale_factor`` 0.01): one chunk per tile and epoch, stored
  ``grid.shard`` x ``grid.shard`` chunks to an object (Zarr v3 sharding); tiles with no mapped pixel hold no
  chunk;
- ``time``, ``x``, ``y``, ``spatial_ref``: coordinates;
- root attributes: ``grid``, ``target`` (the soil property, ``deepsalt.targets``), ``scene_ids`` (what ``scene``
  indexes), ``models`` (the bundle per epoch, with its ``exceedance_decision``), ``exceedance_decision`` (the newest
  epoch's: per threshold, the probability at which a pixel is called above it), ``deepsalt_cube`` (the contract's version);
- ``_deepsalt/fingerprint`` ``(time, tile_y, tile_x)`` uint64: per tile, a hash of everything that made its
  pixels (see ``mapping.fingerprint``); 0 = no tile. One chunk per tile, so runs on other tiles never touch it.

Every run is one Icechunk commit: data and fingerprints change together or not at all. Ray workers write
tiles into forks of the driver's session, the driver merges them and commits once; a killed run commits
nothing. Each commit carries metadata (epoch, tiles, pixels, scenes, model, run) and each published epoch
gets a tag ``epoch-<E>-r<N>``, so every earlier state stays readable (``open_cube(..., version=...)``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from datetime import datetime, time as dtime, timezone
from pathlib import Path

import numpy as np
import zarr
from pyproj import CRS

from deepsalt import __version__
from deepsalt.errors import DeepSaltInputError
from deepsalt.mapping.grid import Grid
from deepsalt.redact import redact_url
from deepsalt.targets import get_target

#: The output contract: bump when the meaning of a stored value changes (a fingerprint input too).
CUBE_FORMAT = "deepsalt-cube/6"  # 3: acq_date per pixel; 4: di and aoa per pixel; 5: any target (the variables are named by it);
# 6: exceedance probabilities (time, threshold, y, x)
BRANCH = "main"


def cube_vars(target="ece") -> dict:
    """The variables of a cube of ``target`` (a name or ``Target``): the value (``ece`` for ECe), its MC sd, the DI and
    AOA flag, the valid mask, the source scene and its date, and the exceedance probabilities (a variable with
    ``"threshold"`` in its spec has that dimension after time)."""
    t = get_target(target)
    return {
        "exceedance": dict(dtype="uint8", fill=255, threshold=True, attrs={
            "long_name": f"probability that {t.short} exceeds the threshold, from the calibrated predictive distribution "
                         "(normal in the learnt space, its central 90 % the calibrated interval, DI widening included)",
            "units": "1", "scale_factor": 0.01, "_FillValue": 255, "valid_range": [0, 100]}),
        t.var: dict(dtype="float32", fill=np.nan, attrs={"units": t.units, "long_name": t.long_name,
                                                         "valid_min": t.valid_range[0], "valid_max": t.valid_range[1]}),
        f"{t.var}_sd": dict(dtype="float32", fill=np.nan, attrs={"units": t.units, "long_name": f"{t.short} uncertainty: standard "
                                                                 "deviation over MC-dropout passes of the student"}),
        "di": dict(dtype="float32", fill=np.nan, attrs={"units": "1", "long_name": "dissimilarity index (Meyer & Pebesma 2021): "
                                                         "distance of the pixel's model inputs to the nearest training site over the mean distance between training sites"}),
        "aoa": dict(dtype="uint8", fill=255, attrs={"long_name": "area of applicability: 1 where di is at most the threshold from the "
                                                    "training cross-validation (the `models` attribute records it per epoch)",
                                                    "flag_values": [0, 1], "flag_meanings": "outside_aoa inside_aoa", "_FillValue": 255}),
        "valid": dict(dtype="uint8", fill=0, attrs={"long_name": f"1 where {t.short} was mapped (clear, valid EnMAP pixel with covariates)",
                                                   "flag_values": [0, 1], "flag_meanings": "not_mapped mapped"}),
        "scene": dict(dtype="int32", fill=-1, attrs={"long_name": "index of the EnMAP scene the pixel came from (see the scene_ids "
                                                     "attribute); -1 (the fill value) where not mapped", "_FillValue": -1}),
        "acq_date": dict(dtype="int32", fill=-1, attrs={"long_name": "acquisition date of the EnMAP scene the pixel came from",
                                                        "standard_name": "time", "units": "days since 1970-01-01",
                                                        "calendar": "proleptic_gregorian", "_FillValue": -1}),
    }


#: the variables of an ECe cube, the default
VARS = cube_vars("ece")


def cube_target(root: zarr.Group):
    """The target a cube holds (cubes record it in their ``target`` attribute)."""
    return get_target(root.attrs.get("target") or "ece")


FINGERPRINT = "_deepsalt/fingerprint"
#: botocore-style attempts per S3 request (exponential backoff on 5xx, throttling and dropped connections)
S3_RETRIES = 10


def _quiet_icechunk() -> None:
    """Icechunk logs a warning per local-filesystem open; DeepSalt serialises local commits itself (``_commit_lock``)."""
    import icechunk

    if "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter("error")


def storage(url: str, storage_options: dict | None = None):
    """The Icechunk storage for a cube URL: a local folder, or ``s3://bucket/prefix`` (endpoint and keys from
    ``storage_options`` in s3fs style, else from the ``AWS_*`` environment)."""
    import icechunk

    _quiet_icechunk()
    so = storage_options or {}
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        ep = (so.get("client_kwargs") or {}).get("endpoint_url") or so.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        creds = dict(access_key_id=so["key"], secret_access_key=so.get("secret"), session_token=so.get("token")) if so.get("key") else dict(from_env=True)
        return icechunk.s3_storage(bucket=bucket, prefix=prefix.strip("/") or None, endpoint_url=ep,
                                   region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                                   allow_http=bool(ep and ep.startswith("http://")), force_path_style=bool(ep), **creds)
    if "://" in url and not url.startswith("file://"):
        raise DeepSaltInputError(redact_url(url), "unsupported cube URL", "use a local folder or s3://bucket/prefix")
    return icechunk.local_filesystem_storage(str(Path(url.removeprefix("file://")).resolve()))


def _config():
    import icechunk

    return icechunk.RepositoryConfig(storage=icechunk.StorageSettings(
        retries=icechunk.StorageRetriesSettings(max_tries=S3_RETRIES, initial_backoff_ms=100, max_backoff_ms=5000)))


def open_repo(url: str, storage_options: dict | None = None, create: bool = False):
    """The cube's repository; with ``create``, a new one if none exists (``ensure_template`` then fills it)."""
    import time

    import icechunk

    local = "://" not in url or url.startswith("file://")
    if local and not create and not Path(url.removeprefix("file://")).exists():  # opening must not create the folder
        raise DeepSaltInputError(redact_url(url), "no DeepSalt cube here", "pass the --out of `deepsalt map`")
    if local and Path(url.removeprefix("file://")).exists() and not Path(url.removeprefix("file://")).is_dir():
        raise DeepSaltInputError(redact_url(url), "is a file, not a cube folder", "pass a new folder name (e.g. out/cube.zarr) "
                                 "or the folder of an existing cube")
    st = storage(url, storage_options)
    for attempt in range(3):
        try:
            if icechunk.Repository.exists(st):
                return icechunk.Repository.open(st, config=_config())
            if create:
                return icechunk.Repository.open_or_create(st, config=_config())
            break
        except icechunk.IcechunkError as e:
            if attempt < 2 and create:  # two first runs racing to create the repository: the loser opens it
                time.sleep(0.5)
                continue
            raise DeepSaltInputError(redact_url(url), f"cannot open the cube's store ({str(e).strip().splitlines()[0][:200]})",
                                     "check the URL, the bucket and the credentials") from None
    raise DeepSaltInputError(redact_url(url), "no DeepSalt cube here", "pass the --out of `deepsalt map`")


@contextlib.contextmanager
def _commit_lock(url: str):
    """Icechunk's local-filesystem storage has no atomic conditional writes: serialise commits on this machine
    with an advisory lock. Object storage (S3) detects concurrent commits itself."""
    if "://" in url and not url.startswith("file://"):
        yield
        return
    import fcntl

    path = Path(url.removeprefix("file://")).resolve() / ".deepsalt-commit.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_template(repo, url: str, grid: Grid, target="ece") -> None:
    """Create the empty cube (no epoch) for ``target`` in its own commit if the branch has none; refuse another grid
    or another target.

    A run killed before this commit leaves an empty repository, which the next run completes.
    """
    import icechunk

    try:
        attrs = zarr.open_group(repo.readonly_session(BRANCH).store, mode="r").attrs
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        attrs = {}
    if "deepsalt_cube" not in attrs:
        session = repo.writable_session(BRANCH)
        _create(session.store, grid, target)
        with _commit_lock(url):
            try:
                session.commit("create the empty cube", metadata={"deepsalt": __version__, "kind": "template"})
            except icechunk.ConflictError:  # another run created it first; its template is checked below
                pass
    check_grid(zarr.open_group(repo.readonly_session(BRANCH).store, mode="r"), grid, url, target)


def check_grid(root: zarr.Group, grid: Grid, url: str, target=None) -> None:
    """Refuse a cube of another output contract, grid or (with ``target``) soil property."""
    have = root.attrs.get("grid")
    if root.attrs.get("deepsalt_cube") != CUBE_FORMAT:
        raise DeepSaltInputError(redact_url(url), f"cube format {root.attrs.get('deepsalt_cube')!r} is not {CUBE_FORMAT!r}",
                                 "write to a new cube URL")
    if have != grid.to_dict():
        diff = ", ".join(f"{k} {have.get(k)!r} (not {v!r})" for k, v in grid.to_dict().items() if have.get(k) != v)
        raise DeepSaltInputError(redact_url(url), f"the cube was made with another grid: {diff}",
                                 "use the cube's --grid, --chunk and --shard, or write to a new cube URL")
    if target is not None and cube_target(root).name != get_target(target).name:
        raise DeepSaltInputError(redact_url(url), f"the cube holds {cube_target(root).name}, the model predicts "
                                 f"{get_target(target).name}", "write this target to a new cube URL")


def _create(store, grid: Grid, target="ece") -> None:
    t = get_target(target)
    root = zarr.open_group(store, mode="w", attributes={
        "Conventions": "CF-1.8, ACDD-1.3", "title": f"DeepSalt {t.short} cube", "source": f"deepsalt {__version__}",
        "summary": f"{t.long_name} ({t.units}) at 30 m, predicted from EnMAP L2A reflectance and 8 soil and climate "
                   "covariates by a student transformer distilled from laboratory mid-infrared spectra; one time step "
                   "per map epoch, with MC-dropout uncertainty and the source scene.",
        "license": "CC-BY-4.0", "references": "DeepSalt, arXiv:2510.23124",
        "history": "each mapping run is one Icechunk commit: list them with `deepsalt history --cube URL`",
        "keywords": f"{t.short}, {t.long_name.split(',')[0]}, EnMAP, hyperspectral, knowledge distillation",
        "deepsalt_cube": CUBE_FORMAT, "target": t.to_dict(), "grid": grid.to_dict(), "scene_ids": [], "models": {}})
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
    tarr = root.create_array("time", shape=(0,), dtype="int64", chunks=(64,), dimension_names=("time",), fill_value=0)
    tarr.attrs.update({"standard_name": "time", "units": "days since 1970-01-01", "calendar": "proleptic_gregorian",
                    "long_name": "map epoch (start)"})
    thr = root.create_array("threshold", shape=(len(t.thresholds),), dtype="float64", dimension_names=("threshold",))
    thr[:] = np.asarray(t.thresholds, float)
    thr.attrs.update({"units": t.units, "long_name": f"{t.short} threshold of the exceedance probabilities"})
    side = grid.chunk * grid.shard
    k = len(t.thresholds)
    for name, spec in cube_vars(t).items():
        lead, dims = ((0, k), ("time", "threshold")) if spec.get("threshold") else ((0,), ("time",))
        ones = (1, k)[:len(lead)]
        a = root.create_array(name, shape=(*lead, grid.height, grid.width), chunks=(*ones, grid.chunk, grid.chunk),
                              shards=(*ones, side, side) if grid.shard > 1 else None,
                              dtype=spec["dtype"], fill_value=spec["fill"], dimension_names=(*dims, "y", "x"))
        a.attrs.update({**spec["attrs"], "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"})
    nty, ntx = grid.n_tiles
    fp = root.create_group("_deepsalt").create_array("fingerprint", shape=(0, nty, ntx), chunks=(1, 1, 1), dtype="uint64",
                                                     fill_value=0, dimension_names=("time", "tile_y", "tile_x"))
    fp.attrs["description"] = "per tile: hash of the scenes, model, covariates and options that made its pixels; 0 = none"


def epoch_days(epoch: str) -> int:
    return int(np.datetime64(epoch, "D").astype("int64"))


def epoch_model(ds, day: str) -> dict:
    """The ``models`` record (bundle, AOA threshold, interval) of the epoch whose time is ``day`` (YYYY-MM-DD)."""
    return next((v for k, v in ds.attrs.get("models", {}).items() if str(np.datetime64(epoch_days(k), "D")) == day), {})


def epoch_slot(root: zarr.Group, epoch: str) -> tuple[int, bool]:
    """(time index of ``epoch``, whether it is new). A new epoch goes after the existing ones."""
    t = root["time"]
    hit = np.flatnonzero((t[:] if t.shape[0] else np.zeros(0, "int64")) == epoch_days(epoch))
    return (int(hit[0]), False) if hit.size else (t.shape[0], True)


def recorded_tiles(session, t: int | None = None) -> set[tuple[int, int]]:
    """Tiles with a fingerprint (at time index ``t``, or at any): from the chunk index, never a scan of the grid."""
    from zarr.core.sync import sync

    async def coords():
        return [c async for c in session.chunk_coordinates(f"/{FINGERPRINT}")]

    return {(int(c[1]), int(c[2])) for c in sync(coords()) if t is None or c[0] == t}


def read_fingerprints(root: zarr.Group, t: int, tiles: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    fp = root[FINGERPRINT]
    if not tiles or t >= fp.shape[0]:
        return {k: 0 for k in tiles}
    tys, txs = np.array(tiles).T
    vals = fp.get_coordinate_selection((np.full(len(tiles), t), tys, txs))
    return {k: int(v) for k, v in zip(tiles, vals)}


def fork_bytes(session) -> bytes:
    """A pickled fork of a clean writable session, for Ray workers (Icechunk's distributed-write pattern)."""
    return pickle.dumps(session.fork())


def write_tiles(fork: bytes, where: str, grid: Grid, t: int, tiles: list) -> bytes:
    """Write the tiles of one shard, ``[(ty, tx, arrays | None, fingerprint), ...]`` (``None`` clears a tile), and
    their fingerprints at time index ``t`` into a fork of the run's session; returns the fork for the driver to
    merge. Nothing is visible to readers until the driver commits.

    Each variable's shard is read once, the tiles pasted in (the shard's other tiles keep their values) and
    written once: one object per shard and variable. The caller owns the whole shard (no other task writes it).

    Transient store errors are retried by Icechunk's storage client (``S3_RETRIES`` attempts with backoff);
    what still fails is reported with the store and tile it hit, and nothing is committed.
    """
    session = pickle.loads(fork)
    name, (ty, tx) = "open", tiles[0][:2]
    if len({grid.shard_of(ty_, tx_) for ty_, tx_, _, _ in tiles}) != 1:
        raise ValueError(f"tiles of several shards in one write: {[(a, b) for a, b, _, _ in tiles]}")
    try:
        root = zarr.open_group(session.store, mode="r+")
        variables = cube_vars(cube_target(root))
        for name in (*variables, FINGERPRINT):  # a new epoch: every fork grows the arrays the same way; merge keeps one
            a = root[name]
            if a.shape[0] < t + 1:
                a.resize((t + 1, *a.shape[1:]))
        sy, sx = grid.shard_slices(*grid.shard_of(ty, tx)) if grid.shard > 1 else grid.tile_slices(ty, tx)
        for name, spec in variables.items():
            at = (t, slice(None), sy, sx) if spec.get("threshold") else (t, sy, sx)  # (threshold,) y, x of one epoch
            lead = root[name].shape[1:-2]
            block = root[name][at] if grid.shard > 1 else np.empty((*lead, sy.stop - sy.start, sx.stop - sx.start), spec["dtype"])
            for ty, tx, arrays, _ in tiles:
                ys, xs = grid.tile_slices(ty, tx)
                block[..., ys.start - sy.start:ys.stop - sy.start, xs.start - sx.start:xs.stop - sx.start] = \
                    arrays[name] if arrays is not None else spec["fill"]
            root[name][at] = block
        name = FINGERPRINT
        for ty, tx, _, fingerprint in tiles:
            root[FINGERPRINT][t, ty, tx] = fingerprint
    except Exception as e:  # noqa: BLE001 - any store failure left after the client's retries
        raise DeepSaltInputError(f"{where} (variable {name.split('/')[-1]}, tile {ty}_{tx})",
                                 f"writing to the cube failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                                 "check that the store is reachable and writable with these credentials; "
                                 "transient errors were already retried") from None
    return pickle.dumps(session)


def finish_epoch(session, t: int, epoch: str, scene_ids: list[str], models: dict) -> None:
    """The driver's part of a run, after merging the forks: the time coordinate and the root attributes.
    Only what changed is written, so runs that add nothing new here can rebase onto each other."""
    root = zarr.open_group(session.store, mode="r+")
    tarr = root["time"]
    if tarr.shape[0] < t + 1:
        tarr.resize((t + 1,))
        tarr[t] = epoch_days(epoch)
    if list(root.attrs.get("scene_ids", [])) != scene_ids:
        root.attrs["scene_ids"] = scene_ids
    if root.attrs.get("models", {}) != models:
        root.attrs["models"] = models
    newest = models.get(max(models, key=epoch_days)) if models else None
    if newest and root.attrs.get("exceedance_decision") != newest.get("exceedance_decision"):
        root.attrs["exceedance_decision"] = newest.get("exceedance_decision")


def commit(repo, session, url: str, message: str, metadata: dict) -> str:
    """One commit; rebases onto runs that committed meanwhile when nothing conflicts (disjoint tiles, no shared
    metadata). Raises ``icechunk.RebaseFailedError`` when something does: the caller re-plans."""
    import icechunk

    with _commit_lock(url):
        return session.commit(message, metadata=metadata, rebase_with=icechunk.ConflictDetector(), rebase_tries=10)


def tag_epoch(repo, epoch: str, snapshot_id: str) -> str:
    """Tag a published epoch ``epoch-<E>-r<N>`` (N counts its publications), so it stays readable after remaps."""
    base = f"epoch-{epoch}-r"
    for _ in range(10):
        n = 1 + max([int(t[len(base):]) for t in repo.list_tags() if t.startswith(base) and t[len(base):].isdigit()] or [0])
        try:
            repo.create_tag(f"{base}{n}", snapshot_id=snapshot_id)
            return f"{base}{n}"
        except Exception:  # noqa: BLE001 - a concurrent run took that number
            continue
    raise DeepSaltInputError(epoch, "could not tag the commit", "tag it by hand with icechunk")


def ensure_tagged(repo, epoch: str) -> None:
    """Tag the branch tip if it published ``epoch`` and has no tag yet."""
    tip = next(iter(repo.ancestry(branch=BRANCH)))
    if (tip.metadata or {}).get("epoch") == epoch and tip.id not in {repo.lookup_tag(t) for t in repo.list_tags()}:
        tag_epoch(repo, epoch, tip.id)


# --- reading -------------------------------------------------------------------------------------------------

_SNAPSHOT_ID = re.compile(r"^[0-9A-Z]{20}$")


def readonly_session(url: str, storage_options: dict | None = None, version: str | datetime | None = None):
    """A read-only session of the cube at ``version``: None (latest), a tag, a commit (snapshot) id, or a date or
    datetime (the latest commit at or before it; a bare date means the end of that day, UTC)."""
    repo = open_repo(url, storage_options)
    if version is None:
        return repo.readonly_session(BRANCH)
    if isinstance(version, str) and version in set(repo.list_tags()):
        return repo.readonly_session(tag=version)
    if isinstance(version, str) and _SNAPSHOT_ID.match(version):
        try:
            return repo.readonly_session(snapshot_id=version)
        except Exception:  # noqa: BLE001
            raise DeepSaltInputError(f"--version {version}", "no such commit in the cube", "see `deepsalt history`") from None
    when = version
    if isinstance(version, str):
        try:
            when = datetime.fromisoformat(version.replace("Z", "+00:00"))
            if len(version) == 10:
                when = datetime.combine(when.date(), dtime.max)
        except ValueError:
            raise DeepSaltInputError(f"--version {version}", "is not a tag, a commit id or a date",
                                     "see `deepsalt history` for tags and commit ids, or pass e.g. 2026-05-01") from None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    try:
        return repo.readonly_session(BRANCH, as_of=when)
    except Exception:  # noqa: BLE001
        raise DeepSaltInputError(f"--version {version}", "the cube has no commit at or before that time", "see `deepsalt history`") from None


#: dask chunks per epoch above which ``open_cube`` groups 16 x 16 stored chunks into one dask chunk: the global grid
#: has ~10 million chunks per epoch and variable, and a dask graph over them would take minutes and gigabytes
MAX_DASK_CHUNKS = 2**20


def open_cube(url: str, storage_options: dict | None = None, version: str | datetime | None = None, chunks="auto"):
    """The cube as a lazy ``xarray.Dataset``, at ``version`` (see ``readonly_session``).

    ``chunks="auto"``: dask-backed (xarray's "auto" from the stored chunks), or for grids of more than
    ``MAX_DASK_CHUNKS`` chunks (the global grid) one dask chunk per 16 x 16 stored chunks; ``None``: no dask, lazily indexed (a selection reads just
    the chunks it touches: what DeepSalt's own point, export and score use); or a dict, as for ``xarray.open_zarr``."""
    import rioxarray  # noqa: F401 - registers ``.rio`` (``ds.rio.crs`` from ``spatial_ref``), which the README promises
    import xarray as xr

    session = readonly_session(url, storage_options, version)
    if chunks == "auto":
        g = zarr.open_group(session.store, mode="r").attrs.get("grid") or {}
        if g and (g["height"] // g["chunk"] + 1) * (g["width"] // g["chunk"] + 1) > MAX_DASK_CHUNKS:
            chunks = {"time": 1, "y": 16 * g["chunk"], "x": 16 * g["chunk"]}
        # else xarray's own "auto": dask chunks from the stored ones
    return xr.open_zarr(session.store, consolidated=False, zarr_format=3, chunks=chunks)


def mapped_extent(url: str, storage_options: dict | None = None, version=None) -> tuple[slice, slice]:
    """(y, x) slices covering every tile of any epoch: the part worth reading, never the continent."""
    session = readonly_session(url, storage_options, version)
    chunk = zarr.open_group(session.store, mode="r").attrs["grid"]["chunk"]
    keys = recorded_tiles(session)
    if not keys:
        raise DeepSaltInputError(redact_url(url), "no mapped tiles recorded", "run `deepsalt map` first")
    tys, txs = zip(*keys)
    return slice(min(tys) * chunk, (max(tys) + 1) * chunk), slice(min(txs) * chunk, (max(txs) + 1) * chunk)


def history(url: str, storage_options: dict | None = None) -> list[dict]:
    """The cube's commits, newest first: time, id, tags, message, and the run's epoch, tiles, pixels, model."""
    repo = open_repo(url, storage_options)
    tags: dict[str, list[str]] = {}
    for tag in repo.list_tags():
        tags.setdefault(repo.lookup_tag(tag), []).append(tag)
    out = []
    for snap in repo.ancestry(branch=BRANCH):
        m = snap.metadata or {}
        out.append({"time": snap.written_at.astimezone(timezone.utc).isoformat(timespec="seconds"), "id": snap.id,
                    "tags": sorted(tags.get(snap.id, [])), "message": snap.message,
                    **{k: m.get(k) for k in ("epoch", "tiles", "tiles_cleared", "pixels", "model", "run")}})
    return out


def point(url: str, lon: float, lat: float, epoch: str | None = None, storage_options: dict | None = None,
          version=None) -> dict:
    """The cube's value (ECe, or its target), its uncertainty, interval and provenance at one WGS84 point, for every
    epoch (or one): reads one chunk per variable and epoch."""
    from pyproj import Transformer

    ds = open_cube(url, storage_options, version, chunks=None)
    g = Grid(**ds.attrs["grid"])
    x, y = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(lon, lat)
    row, col = g.cell_of(x, y)
    if not (0 <= row < g.height and 0 <= col < g.width):
        raise DeepSaltInputError(f"--lon {lon} --lat {lat}", f"the point lies outside the cube's grid ({g.crs})",
                                 "pass a point inside the mapped region")
    times = [str(t)[:10] for t in ds["time"].values]
    if epoch is not None:
        day = str(np.datetime64(epoch, "D"))
        if day not in times:
            raise DeepSaltInputError(f"--epoch {epoch}", "the cube has no such epoch", f"epochs: {', '.join(times) or 'none'}")
        times = [day]
    cell = ds.isel(y=row, x=col).sel(time=times).compute()
    ids = list(ds.attrs.get("scene_ids", []))
    target = get_target(ds.attrs.get("target") or "ece")
    var = target.var
    out = []
    for i, t in enumerate(times):
        v = cell.isel(time=i)
        s = float(v["scene"])  # decoded: the -1 fill becomes NaN
        s = int(s) if np.isfinite(s) else -1
        mapped = bool(int(v["valid"]))
        acq = v["acq_date"].values if "acq_date" in v else None
        model = epoch_model(ds, t)
        q, scaled = model.get("interval90_q"), model.get("interval90_scaled", True)
        rec = {"epoch": t, var: float(v[var]) if mapped else None, f"{var}_sd": float(v[f"{var}_sd"]) if mapped else None,
               "units": target.units}
        if mapped and "di" in v:
            rec.update(di=float(v["di"]), inside_aoa=bool(int(v["aoa"]) == 1))
        if mapped and q and (not scaled or model.get("mc_samples", 0) > 1):  # a scaled interval needs the MC sd
            from deepsalt.models.applicability import interval

            lo, hi = interval([rec[var]], [rec[f"{var}_sd"]], float(q), bool(scaled), [rec.get("di", 0.0)],
                              float(model.get("interval90_di_slope", 0.0)), target.log)
            rec["interval90"] = [round(float(lo[0]), 4), round(float(hi[0]), 4)]
        if mapped and "exceedance" in v:  # P(value > threshold) and the map's call at the epoch's decision probability
            dec = model.get("exceedance_decision") or {}
            rec["exceedance"] = {f"{th:g}": {"probability": round(float(pr), 2),
                                             "called_above": bool(float(pr) >= float(dec.get(f"{th:g}", 0.5)) - 1e-9)}
                                 for th, pr in zip(v["threshold"].values, v["exceedance"].values)}
        out.append({**rec, "mapped": mapped, "scene": ids[s] if 0 <= s < len(ids) else None,
                    "acquired": str(acq)[:10] if mapped and acq is not None and not np.isnat(acq) else None})
    return {"lon": lon, "lat": lat, "crs": g.crs, "x": float(g.x0 + (col + 0.5) * g.res), "y": float(g.y0 - (row + 0.5) * g.res),
            "row": row, "col": col, "epochs": out}
