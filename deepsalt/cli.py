"""The ``deepsalt`` command. Bad input, a bad flag value included, prints one line naming the fault and exits
2, without a traceback and before Ray starts."""

from __future__ import annotations

import enum
import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from deepsalt import __version__
from deepsalt.errors import DeepSaltInputError

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DeepSalt: soil salinity (ECe, dS/m) maps from EnMAP imagery, distilled from lab MIR spectra.")
REGIONS = {"seen": "-110.0,37.5,-106.0,39.5", "unseen": "-113.2,40.6,-111.8,41.6", "western-us": "-125,31,-102,49"}
#: one default size for every command that has a preset
DEFAULT_PRESET = "demo"


class WorldPreset(str, enum.Enum):
    tiny = "tiny"
    demo = "demo"
    benchmark = "benchmark"


class TrainPreset(str, enum.Enum):
    tiny = "tiny"
    demo = "demo"
    benchmark = "benchmark"
    paper = "paper"


class Tokens(str, enum.Enum):
    one = "one"
    per_dim = "per_dim"


ExportFormat = enum.Enum("ExportFormat", {"cog": "cog", "netcdf": "netcdf"}, type=str)
GridName = enum.Enum("GridName", {"conus": "conus", "europe": "europe"}, type=str)
Region = enum.Enum("Region", {k.replace("-", "_"): k for k in REGIONS}, type=str)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepsalt {__version__}")
        raise typer.Exit()


@app.callback()
def _group(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """Commands: world (synthetic data), train, map, history, score, quicklook."""


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except DeepSaltInputError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        except ValidationError as e:  # a config field out of range or badly formatted: name the flag
            err = e.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "input"
            typer.secho(f"error: {flag}: {err['msg'].removeprefix('Value error, ')}", fg="red", err=True)
            raise typer.Exit(2)
    return wrapper


@app.command()
@_clean_errors
def world(
    out: Path = typer.Option(..., "--out", help="folder to create (must not exist, or be empty, unless --overwrite)"),
    preset: WorldPreset = typer.Option(DEFAULT_PRESET, help="size: tiny (3 scenes of 128 px, seconds), demo (5 x 256 px), "
                                       "benchmark (10 x 512 px, 20,000 lab samples)"),
    seed: int = typer.Option(7, min=0, help="random seed: the same seed gives identical tables and rasters"),
    overwrite: bool = typer.Option(False, help="replace an existing world at --out"),
):
    """Build the synthetic world: lab MIR library, EnMAP L2A-like scenes + STAC, covariates, truth, samples."""
    from deepsalt.config import WorldConfig
    from deepsalt.data.synthetic.world import build_world

    cfg = WorldConfig.for_preset(preset.value, seed)
    typer.echo(cfg.to_json())
    s = build_world(cfg, out, overwrite=overwrite, progress=sys.stderr.isatty())
    typer.echo(f"wrote {out} in {s['seconds']} s: {len(s['scenes'])} scenes, {s['lab']['n']} lab samples "
               f"({s['lab']['channels']} channels), {s['satellite_samples']['n']} satellite samples")
    typer.echo(f"  lab ECe percentiles (dS/m): {json.dumps(s['lab']['ece_percentiles'])}, "
               f"{100 * s['lab']['share_below_4_dsm']:.0f} % below 4 dS/m")
    for f, p in s["files"].items():
        typer.echo(f"  {f:17s} {out / p}")


@app.command()
@_clean_errors
def train(
    world: Path = typer.Option(..., help="world folder (deepsalt world) holding lab/, samples/, covariates/ and stac/ "
                               "(the EnMAP items, read for the pixels at the lab samples)"),
    out: str = typer.Option(..., help="run folder, local or any fsspec URL (s3://bucket/run): config.json, metrics.json, "
                            "report/, bundle/, ray/ checkpoints"),
    preset: TrainPreset = typer.Option(DEFAULT_PRESET, help="hyper-parameter preset: tiny (minutes on a laptop), demo, "
                                       "benchmark (3 seeds in <= 45 min on 2 CPU cores), paper (DESIGN.md's full sizes, for GPUs)"),
    workers: int = typer.Option(1, min=1, help="Ray Train workers (DDP); one per GPU with --gpu"),
    gpu: bool = typer.Option(False, help="one GPU per worker"),
    seeds: str = typer.Option("0,1,2", callback=lambda v: _seeds(v), help="comma-separated seeds (integers >= 0); "
                              "metrics are mean and sd over them"),
    tokens: Tokens = typer.Option(Tokens.one.value, help="transformer tokenisation: one (whole latent = one token) or per_dim"),
    kd_transfer: bool = typer.Option(True, help="also distil on the EnMAP pixels at training-block lab sample locations "
                                     "(needs the world's stac/); --no-kd-transfer: on the field sites only"),
):
    """Train SAU, teacher and student (+ ablations) with Ray Train; evaluate; write the model bundle.

    Re-running with the same --out resumes each seed from its last checkpoint.
    """
    from deepsalt.config import TrainConfig
    from deepsalt.train.run import train as run_train

    if not (world / "samples" / "satellite_samples.parquet").exists():
        raise DeepSaltInputError(world, "not a world folder (samples/satellite_samples.parquet missing)", "build one with `deepsalt world`")
    cfg = TrainConfig.for_preset(preset.value, workers=workers, gpu=gpu, tokens=tokens.value, kd={"transfer": kd_transfer},
                                 seeds=seeds)
    m = run_train(world, out, cfg, log=typer.echo)
    typer.echo(f"wrote {out}/metrics.json, {out}/report/summary.md, {out}/bundle ({m['seconds']} s)")
    for v, r in m["results"].items():
        typer.echo(f"  {v:15s} seen MAE {r['seen']['mae']:.3f} ± {r['seen']['mae_sd']:.3f}  R2 {r['seen']['r2']:.3f}   "
                   f"unseen MAE {r['unseen']['mae']:.3f}")


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in value.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"'{value}' is not a comma-separated list of distinct integers >= 0 (e.g. 0,1,2)")
    return seeds


def _bbox(value: Optional[str]):
    if not value:
        return None
    try:
        b = tuple(float(v) for v in value.split(","))
    except ValueError:
        b = ()
    if len(b) != 4 or not (-180 <= b[0] < b[2] <= 180 and -90 <= b[1] < b[3] <= 90):
        raise DeepSaltInputError("--bbox", f"'{value}' is not minlon,minlat,maxlon,maxlat in degrees", "e.g. --bbox=-110,37.5,-106,39.5")
    return b



@app.command("map")
@_clean_errors
def map_cmd(
    stac: str = typer.Option(..., help="STAC API URL (http...) or a static items.json / folder"),
    model: str = typer.Option(..., help="model bundle folder or URL (RUN/bundle from `deepsalt train`)"),
    covariates: str = typer.Option(..., help="folder/URL with the 8 covariate rasters, or a JSON name->path map"),
    out: str = typer.Option(..., help="cube URL: a local folder or s3://bucket/path.zarr"),
    epoch: str = typer.Option(..., help="map epoch on the cube's time axis, e.g. 2024 or 2024-06"),
    collection: str = typer.Option("ENMAP_HSI_L2A", help="STAC collection"),
    bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (deg); the region this run owns"),
    region: Optional[Region] = typer.Option(None, help="named bbox instead of --bbox: " + ", ".join(f"{k} ({v})" for k, v in REGIONS.items())),
    datetime: Optional[str] = typer.Option(None, help="STAC datetime interval, e.g. 2024-05-01/2024-09-30"),
    max_cloud: Optional[float] = typer.Option(None, min=0, max=100, help="skip scenes with eo:cloud_cover above this (%, 0-100)"),
    grid: GridName = typer.Option("conus", help="output grid: conus (EPSG:5070, 30 m) or europe (EPSG:3035, 30 m)"),
    chunk: int = typer.Option(256, min=16, max=4096, help="chunk = tile side in pixels (16-4096; a cube keeps the one it was made with)"),
    shard: int = typer.Option(2, min=1, max=16, help="tiles per shard side (1-16): one stored object per shard x shard chunks "
                              "of a variable (Zarr v3 sharding); 1: unsharded. A cube keeps the one it was made with"),
    mc_samples: int = typer.Option(5, min=0, max=100, help="MC-dropout passes for the ece_sd uncertainty (0: none)"),
    actors: Optional[int] = typer.Option(None, min=1, help="most student inference actors: the pool autoscales from "
                                         "--min-actors up to this (default: one per CPU of the cluster; with --gpu, one per GPU)"),
    min_actors: int = typer.Option(1, min=1, help="inference actors started at once"),
    gpu: bool = typer.Option(False, help="one GPU per inference actor; GPU workers scale up for the job (CPU otherwise)"),
    allow_http: bool = typer.Option(False, help="accept plain http:// asset hrefs (trusted internal servers only); "
                                    "s3://, https:// and local paths are always accepted"),
    dry_run: bool = typer.Option(False, help="print the plan (scenes, tiles to map and to clear, pixels, a time estimate) "
                                 "and stop: nothing is read beyond the headers, nothing is written"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show Ray's own INFO logs and progress blocks"),
):
    """Map ECe for the scenes of a region into the continental cube: one Icechunk commit per run.

    Runs on the Ray cluster at RAY_ADDRESS, or a local one. Only tiles whose inputs changed since the last run
    of this epoch are mapped (scenes and their files, model bundle, covariates, options); tiles of the region
    whose scenes left the catalog are cleared; running it again changes nothing. A killed run commits nothing.
    """
    from deepsalt.config import MapConfig
    from deepsalt.mapping.pipeline import grid_for, map_region

    from deepsalt.mapping.pipeline import dry_run as plan_only

    if region and bbox:
        raise DeepSaltInputError("--region", "given together with --bbox", "pass one of them")
    if region:
        bbox = REGIONS[region.value]
    so = _storage_options(out)
    cfg = MapConfig(stac=stac, collection=collection, bbox=_bbox(bbox), datetime=datetime, epoch=epoch, max_cloud=max_cloud,
                    covariates=covariates, model=model, out=out, grid=grid.value, chunk=chunk, shard=shard, mc_samples=mc_samples,
                    predict_actors=actors, min_actors=min_actors, gpu=gpu, storage_options=so, allow_http=allow_http)
    grid_for(cfg)  # Ray starts only when there are tiles to map
    if dry_run:
        typer.echo(json.dumps(plan_only(cfg, log=typer.echo)))
        return
    if not verbose:
        _quiet_ray()
    s = map_region(cfg, log=typer.echo)
    typer.echo(json.dumps(s))


def _quiet_ray() -> None:
    """Ray's INFO lines and Ray Data's progress blocks only with -v: DeepSalt prints its own progress."""
    import logging

    import ray.data  # noqa: F401 - Ray sets up its loggers on import; quiet them after that

    ray.data.DataContext.get_current().print_on_execution_start = False
    for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]:
        logging.getLogger(name).setLevel(logging.WARNING)


def _storage_options(url: str) -> dict:
    import os
    ep = os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": ep}} if url.startswith("s3://") and ep else {}


@app.command("history")
@_clean_errors
def history_cmd(cube: str = typer.Option(..., help="cube URL (local folder or s3://bucket/prefix)"),
                as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")):
    """List the cube's commits, newest first: time, commit id, tags, epoch, tiles, pixels, model.

    Read any of them with `deepsalt.open_cube(URL, version=ID_OR_TAG_OR_DATE)`.
    """
    from deepsalt.mapping.cube import history

    rows = history(cube, _storage_options(cube))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'time (UTC)':25s} {'commit':20s} {'epoch':8s} {'tiles':>5s} {'cleared':>7s} {'pixels':>9s} {'model':16s} tags")
    for r in rows:
        typer.echo(f"{r['time']:25s} {r['id']:20s} {str(r['epoch'] or '-'):8s} {str(r['tiles'] or 0):>5s} "
                   f"{str(r['tiles_cleared'] or 0):>7s} {str(r['pixels'] or 0):>9s} {str(r['model'] or '-'):16s} "
                   f"{','.join(r['tags']) or r['message']}")


@app.command("point")
@_clean_errors
def point_cmd(cube: str = typer.Option(..., help="cube URL (local folder or s3://bucket/prefix)"),
              lon: float = typer.Option(..., min=-180, max=180, help="longitude (deg, WGS84)"),
              lat: float = typer.Option(..., min=-90, max=90, help="latitude (deg, WGS84)"),
              epoch: Optional[str] = typer.Option(None, help="one epoch (default: all)"),
              version: Optional[str] = typer.Option(None, help="a tag, commit id or date (default: the latest)")):
    """Print ECe, its uncertainty and the source scene at one point, per epoch (JSON).

    The same from Python: `deepsalt.point(CUBE, lon, lat)`.
    """
    from deepsalt.mapping.cube import point

    typer.echo(json.dumps(point(cube, lon, lat, epoch, _storage_options(cube), version), indent=1))


@app.command("export")
@_clean_errors
def export_cmd(cube: str = typer.Option(..., help="cube URL (local folder or s3://bucket/prefix)"),
               out: Path = typer.Option(..., help="file to write (.tif or .nc)"),
               fmt: ExportFormat = typer.Option("cog", "--format", help="cog (ECe and sd, CRS, nodata, overviews) "
                                                "or netcdf (CF, all variables)"),
               epoch: Optional[str] = typer.Option(None, help="epoch (default: the latest)"),
               bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (deg; default: the mapped extent)"),
               version: Optional[str] = typer.Option(None, help="a tag, commit id or date (default: the latest)")):
    """Export one epoch to a GeoTIFF (COG) or NetCDF file that GIS tools open."""
    from deepsalt.mapping.export import export

    typer.echo(json.dumps(export(cube, out, fmt.value, epoch, _bbox(bbox), _storage_options(cube), version)))


@app.command("score")
@_clean_errors
def score_cmd(cube: str = typer.Option(..., help="cube URL"), world: Path = typer.Option(..., help="the world folder with truth/"),
              epoch: Optional[str] = typer.Option(None, help="epoch to score (default: the latest)")):
    """Score a cube against the synthetic world's ground-truth ECe rasters; prints JSON."""
    from deepsalt.mapping.score import score

    typer.echo(json.dumps(score(cube, world, epoch, _storage_options(cube)), indent=1))


@app.command("quicklook")
@_clean_errors
def quicklook_cmd(cube: str = typer.Option(..., help="cube URL"), out: Path = typer.Option(..., help="PNG to write"),
                  epoch: Optional[str] = typer.Option(None, help="epoch (default: the latest)"),
                  world: Optional[Path] = typer.Option(None, help="a world folder with truth/: adds residual maps")):
    """Draw an epoch per mapped region: ECe in FAO salinity classes, its uncertainty, and residuals against the
    truth (with --world) or the source scene; an overview locates the regions."""
    from deepsalt.mapping.score import quicklook

    typer.echo(f"wrote {quicklook(cube, out, epoch, _storage_options(cube), world)}")


def main(argv: list[str] | None = None) -> None:
    """The console entry point: every usage error (a bad flag value, a missing flag) is one line and exit 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except _cx.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help())
        rc = 0
    except _cx.UsageError as e:
        msg = " ".join(e.format_message().replace("Value error, ", "").split())
        typer.secho(f"error: {msg}", fg="red", err=True)
        rc = 2
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
