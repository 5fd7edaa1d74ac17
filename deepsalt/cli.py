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
from deepsalt.config import QUALITY_LAYERS
from deepsalt.targets import TARGETS, get_target
from deepsalt.errors import DeepSaltInputError, DeepSaltRunError

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
GridName = enum.Enum("GridName", {k: k for k in ("conus", "europe", "global")}, type=str)  # mapping.grid.GRIDS
Region = enum.Enum("Region", {k.replace("-", "_"): k for k in REGIONS}, type=str)
Inference = enum.Enum("Inference", {k: k for k in ("auto", "tasks", "actors")}, type=str)  # config.MapConfig.inference
SamplingMethod = enum.Enum("SamplingMethod", {k: k for k in ("coverage", "random")}, type=str)  # mapping.sampling.METHODS


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepsalt {__version__}")
        raise typer.Exit()


@app.callback()
def _group(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """Commands: world (synthetic data); your data in: ingest (DLR deliveries), lab import (OSSL), covariates build
    (SoilGrids, WorldClim), sites (field sites); train, map, history, point, export, score, quicklook."""


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except DeepSaltInputError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        except DeepSaltRunError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1)
        except ValidationError as e:  # a config field out of range or badly formatted: name the flag
            err = e.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            if err.get("loc"):  # a field's own check names its flag; a check across fields names them in its text
                msg = "--" + str(err["loc"][0]).replace("_", "-") + ": " + msg
            typer.secho(f"error: {msg}", fg="red", err=True)
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
    deliveries: bool = typer.Option(False, help="also write deliveries/<id>.ZIP: each scene as DLR ships an L2A product "
                                    "(METADATA.XML, GeoTIFF or ENVI image, quality layers), for `deepsalt ingest`"),
    second_epoch: bool = typer.Option(False, help="also render every scene a year later (2025, the same season) with ECe "
                                      "changed in known patches (x6 salinised, /4 reclaimed; truth/<id>_CHANGE.TIF), "
                                      "in the same catalogue: map each year with --datetime, compare with `deepsalt change`"),
):
    """Build the synthetic world: lab MIR library, EnMAP L2A-like scenes + STAC, covariates, truth, samples."""
    from deepsalt.config import WorldConfig
    from deepsalt.data.synthetic.world import build_world

    cfg = WorldConfig.for_preset(preset.value, seed, second_epoch=second_epoch)
    typer.echo(cfg.to_json())
    s = build_world(cfg, out, overwrite=overwrite, progress=sys.stderr.isatty(), deliveries=deliveries)
    typer.echo(f"wrote {out} in {s['seconds']} s: {len(s['scenes'])} scenes, {s['lab']['n']} lab samples "
               f"({s['lab']['channels']} channels), {s['satellite_samples']['n']} satellite samples")
    typer.echo(f"  lab ECe percentiles (dS/m): {json.dumps(s['lab']['ece_percentiles'])}, "
               f"{100 * s['lab']['share_below_4_dsm']:.0f} % below 4 dS/m")
    for f, p in s["files"].items():
        typer.echo(f"  {f:17s} {out / p}")


@app.command()
@_clean_errors
def train(
    out: str = typer.Option(..., help="run folder, local or any fsspec URL (s3://bucket/run): config.json, inputs.json, "
                            "metrics.json, report/, bundle/, ray/ checkpoints"),
    world: Optional[Path] = typer.Option(None, help="a world folder (deepsalt world): its lab/, samples/, stac/ and "
                                         "covariates/ (a shortcut for the four inputs below)"),
    lab: Optional[str] = typer.Option(None, help="lab library: Parquet/CSV with scan_mir.<cm-1>_abs columns and the target "
                                      "column (`deepsalt lab import` makes one from OSSL)"),
    sites: Optional[str] = typer.Option(None, help="site table: refl_<band>, the 8 covariates, the target column, "
                                        "latitude, longitude (`deepsalt sites` makes one)"),
    stac: Optional[str] = typer.Option(None, help="EnMAP catalogue (STAC API, static catalogue or folder) for the "
                                       "distillation transfer set and the adaptation pixels"),
    covariates: Optional[str] = typer.Option(None, help="covariate folder or JSON map (for the transfer set)"),
    target: Optional[str] = typer.Option(None, help="soil property to learn: " + ", ".join(
        f"{t.name} ({t.column}, {t.units})" for t in TARGETS.values()) + "; default ece"),
    config: Optional[Path] = typer.Option(None, help="a TOML or YAML file naming the inputs (world, or lab, sites, stac, "
                                          "covariates) and any training setting (target, preset, seeds, sections ae, sau, "
                                          "teacher, student, kd...); flags given here override it"),
    preset: Optional[TrainPreset] = typer.Option(None, help="hyper-parameter preset: tiny (minutes on a laptop), demo "
                                                 "(default), benchmark (3 seeds in <= 45 min on 2 CPU cores), paper "
                                                 "(DESIGN.md's full sizes, for GPUs)"),
    workers: Optional[int] = typer.Option(None, min=1, help="Ray Train workers (DDP); one per GPU with --gpu (default 1)"),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="one GPU per worker"),
    seeds: Optional[str] = typer.Option(None, callback=lambda v: v and _seeds(v), help="comma-separated seeds (integers "
                                        ">= 0; default 0,1,2); metrics are mean and sd over them"),
    tokens: Optional[Tokens] = typer.Option(None, help="transformer tokenisation: one (whole latent = one token, the "
                                            "default) or per_dim"),
    kd_transfer: Optional[bool] = typer.Option(None, "--kd-transfer/--no-kd-transfer", help="also distil on the EnMAP "
                                               "pixels at training-block lab sample locations (needs --stac; default on)"),
    max_failures: Optional[int] = typer.Option(None, min=0, max=100, help="worker or node losses (preemptions) a seed's "
                                               "training survives by restarting its workers from the last checkpoint, "
                                               "with no one at the keyboard (default 3); past that it stops, and the "
                                               "same command resumes it"),
    exclude_bands: Optional[str] = typer.Option(None, help="EnMAP bands (numbers 1-224, comma-separated) the model does "
                                                "not read (default 130-135, the method's); add your products' bad bands "
                                                "(`deepsalt ingest` lists them) so that the model maps them"),
    mir_grid: Optional[str] = typer.Option(None, help="the model's MIR grid FIRST,LAST,N in cm-1 (default 400,4000,1765); "
                                           "it must lie inside the lab table's: OSSL's is 600,4000,1701"),
):
    """Train SAU, teacher and student (+ ablations) with Ray Train; evaluate; write the model bundle.

    Inputs: --world (a world folder), or --lab and --sites (with --stac and --covariates for the distillation
    transfer set), or a --config file. Re-running with the same --out resumes each seed from its last checkpoint.
    """
    from deepsalt.config import TrainConfig
    from deepsalt.train.data import TrainInputs
    from deepsalt.train.run import train as run_train

    file = _read_config(config) if config else {}
    given = {k: v for k, v in dict(world=world, lab=lab, sites=sites, stac=stac, covariates=covariates).items() if v is not None}
    named = {k: file.pop(k) for k in ("world", "lab", "sites", "stac", "covariates") if k in file}
    both = sorted(set(given) & set(named))
    if both:
        raise DeepSaltInputError(f"--{both[0]}", f"given both here and in {config}", "name each input once")
    inputs = {**named, **{k: str(v) for k, v in given.items()}}
    flags = {"workers": workers, "gpu": gpu, "seeds": seeds, "tokens": tokens and tokens.value, "target": target,
             "max_failures": max_failures, "exclude_bands": exclude_bands,
             "mir_grid": mir_grid and _numbers(mir_grid, "--mir-grid", 3)}
    settings = {**file, **{k: v for k, v in flags.items() if v is not None}}
    if kd_transfer is not None:
        settings["kd"] = {**settings.get("kd", {}), "transfer": kd_transfer}
    cfg = TrainConfig.for_preset((preset.value if preset else None) or settings.pop("preset", DEFAULT_PRESET),
                                 **{k: v for k, v in settings.items() if k != "preset"})
    if "world" in inputs:
        if set(inputs) - {"world"}:
            raise DeepSaltInputError("--world", f"given together with --{sorted(set(inputs) - {'world'})[0]}",
                                     "pass a world folder, or the inputs one by one")
        w = Path(inputs["world"])
        if not (w / "samples" / "satellite_samples.parquet").exists():
            raise DeepSaltInputError(w, "not a world folder (samples/satellite_samples.parquet missing)",
                                     "build one with `deepsalt world`, or pass --lab and --sites")
        ins = TrainInputs.world(w)
    elif {"lab", "sites"} <= set(inputs):
        ins = TrainInputs(inputs["lab"], inputs["sites"], inputs.get("stac"), inputs.get("covariates"))
    else:
        raise DeepSaltInputError("inputs", "no training data named", "pass --world DIR, or --lab FILE --sites FILE "
                                 "(with --stac and --covariates), or a --config file naming them")
    if cfg.kd.transfer and (not ins.stac or not ins.covariates):
        raise DeepSaltInputError("--stac", "the distillation transfer set needs the EnMAP catalogue and the covariates",
                                 "pass --stac and --covariates, or --no-kd-transfer")
    m = run_train(ins, out, cfg, log=typer.echo)
    typer.echo(f"wrote {out}/metrics.json, {out}/report/summary.md, {out}/bundle ({m['seconds']} s)")
    units = get_target(cfg.target).units
    for v, r in m["results"].items():
        typer.echo(f"  {v:15s} seen MAE {r['seen']['mae']:.3f} ± {r['seen']['mae_sd']:.3f} {units}  R2 {r['seen']['r2']:.3f}   "
                   f"unseen MAE {r['unseen']['mae']:.3f}")


def _read_config(path: Path) -> dict:
    """A TOML or YAML training config as a dict (its keys checked by TrainConfig)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DeepSaltInputError(path, f"cannot read the config ({e.strerror})", "check the path") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            doc = tomllib.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - a syntax error in the user's file
        raise DeepSaltInputError(path, f"not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'} "
                                 f"({str(e).splitlines()[0][:160]})", "fix the file") from None
    if not isinstance(doc, dict):
        raise DeepSaltInputError(path, "holds no settings (a mapping of names to values)", "see `deepsalt train --help`")
    inputs = doc.pop("inputs", {})
    return {**inputs, **doc}


def _numbers(value: str, flag: str, n: int) -> tuple:
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise DeepSaltInputError(flag, f"'{value}' is not {n} comma-separated number{'s' if n > 1 else ''}",
                                 {"--mir-grid": "e.g. --mir-grid 600,4000,1701", "--depth": "e.g. --depth 0,12"}.get(
                                     flag, "e.g. --ec-factor 2.35,-0.36"))
    return vals


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



@app.command("ingest")
@_clean_errors
def ingest_cmd(
    src: list[str] = typer.Argument(..., help="product ZIPs, unzipped product folders, folders or globs holding them "
                                    "(local or any fsspec URL, e.g. s3://bucket/enmap/*.ZIP), or DLR STAC Item JSON files "
                                    "(with --assets-root)"),
    out: str = typer.Option(..., help="catalogue folder or URL: <id>/ with COGs and the Item per product, collection.json"),
    assets_root: Optional[str] = typer.Option(None, help="folder (or URL) holding the downloads of the DLR STAC Items "
                                              "passed as SRC: <id>.ZIP files or product folders, anywhere below it"),
    stac_api: Optional[str] = typer.Option(None, help="also post the Items to this STAC API (Transaction extension: "
                                           "POST /collections/ENMAP_HSI_L2A/items, PUT to replace)"),
):
    """Turn DLR's EnMAP L2A deliveries into a STAC catalogue that `deepsalt map --stac CATALOG/collection.json` reads.

    Each product (one Ray task each): METADATA.XML parsed (bands, gains, bad bands, times, cloud cover, footprint),
    the image (GeoTIFF, ENVI BSQ/BIL/BIP, JPEG2000) and quality layers written as COGs, a STAC Item in DLR's layout.
    A product whose source is unchanged is not written again. A bad product stops with one line; the rest go on;
    the exit code is 2 if any failed.
    """
    from deepsalt.data.ingest import ingest

    _quiet_ray()
    s = ingest(src, out, assets_root, stac_api, log=typer.echo)
    typer.echo(f"ingest: {s['written']} written, {s['unchanged']} unchanged, {s['failed']} failed; "
               f"{s['items_in_catalogue']} items in {s['collection']} ({s['seconds']} s)"
               + (f"; {s['posted']} posted to {stac_api}" if stac_api else ""))
    if s["failed"]:
        for line in s["failures"]:
            typer.secho(f"error: {line}", fg="red", err=True)
        raise typer.Exit(2)


@app.command("sites")
@_clean_errors
def sites_cmd(
    sites: str = typer.Option(..., help="field sites: CSV (',' or ';' with decimal commas), Parquet/GeoParquet, GeoPackage, "
                              "GeoJSON, FlatGeobuf or Shapefile with lon/lat (WGS84) or point geometries (any declared CRS), a "
                              "sampling date, target columns (ece_dsm, soc...) and an optional id"),
    stac: str = typer.Option(..., help="EnMAP catalogue: STAC API URL, a static catalogue/collection or folder"),
    covariates: str = typer.Option(..., help="covariate folder or JSON map (`deepsalt covariates build` makes one)"),
    out: str = typer.Option(..., help="training rows to write (Parquet); the drop report goes beside it, OUT.drops.csv"),
    max_days: int = typer.Option(30, min=0, max=3650, help="largest number of days between a site's sampling date and "
                                 "the scene it takes its pixel from (the nearest clear one in time)"),
    targets: Optional[str] = typer.Option(None, help="target columns to keep, comma-separated (default: every target "
                                          "column DeepSalt knows that the file has)"),
    collection: str = typer.Option("ENMAP_HSI_L2A", help="STAC collection"),
    quality_masks: str = typer.Option(",".join(QUALITY_LAYERS), callback=lambda v: _quality(v),
                                      help="quality layers whose flagged pixels are not used (as for `deepsalt map`)"),
    exclude_bands: str = typer.Option("130,131,132,133,134,135", help="bands the model will not read (as for `deepsalt "
                                      "train`): nodata in them does not drop a site"),
    allow_http: bool = typer.Option(False, help="accept plain http:// asset hrefs (trusted internal servers only)"),
    layer: Optional[str] = typer.Option(None, help="the layer to read from a file of several (GeoPackage, ...)"),
    date_format: Optional[str] = typer.Option(None, help="how the dates are written, in strptime codes (e.g. %d/%m/%Y); "
                                              "default ISO 8601 (YYYY-MM-DD); day/month orders that could be either, "
                                              "numbers (Excel serial days) and bare years are refused"),
):
    """Turn field sites into training rows: each site's clear EnMAP pixel nearest in time (read exactly as `deepsalt
    map` reads it) and its covariates, with the scene, date and pixel it came from; a drop report says why the
    others were left out. Scenes are read as Ray tasks, one per scene."""
    from deepsalt.config import TrainConfig
    from deepsalt.data.sites import extract_sites

    bands = TrainConfig(exclude_bands=exclude_bands).exclude_bands  # checked as training checks it
    _quiet_ray()
    s = extract_sites(sites, stac, covariates, out, max_days, targets and [t.strip() for t in targets.split(",")],
                      quality_masks, bands, collection, allow_http, layer, date_format, log=typer.echo)
    typer.echo(json.dumps(s))


lab_app = typer.Typer(no_args_is_help=True, help="Lab libraries: import an OSSL download or Bruker OPUS files as a DeepSalt "
                      "lab table; fit the teacher (with PLSR beside it) on a lab table alone and predict new spectra.")
app.add_typer(lab_app, name="lab")


@lab_app.command("import")
@_clean_errors
def lab_import_cmd(
    out: Path = typer.Option(..., help="lab table to write (Parquet)"),
    ossl: Optional[str] = typer.Option(None, help="an OSSL v1.2 download: a folder (or URL) with ossl_soilsite_*, ossl_soillab_* "
                                       "and ossl_mir_* CSVs (joined by id.layer_uuid_txt), or the joined ossl_all_* CSV"),
    opus: Optional[Path] = typer.Option(None, help="a folder of Bruker OPUS files (<sample>.0, .1, ...: replicate scans, "
                                        "averaged), with --chem and --id-column"),
    chem: Optional[Path] = typer.Option(None, help="with --opus: the chemistry table (CSV or Parquet), one row per sample"),
    id_column: Optional[str] = typer.Option(None, help="with --opus: the chemistry table's column holding the OPUS files' "
                                            "sample names (the file name without its scan number)"),
    column: list[str] = typer.Option([], help="with --opus: TARGET=COLUMN[:UNITS], e.g. soc=C:g/kg or ece_dsm=EC:mS/m "
                                     "(repeatable); values are converted to the target's units and range-checked"),
    lat_column: Optional[str] = typer.Option(None, help="with --opus: the chemistry table's latitude column (optional)"),
    lon_column: Optional[str] = typer.Option(None, help="with --opus: the chemistry table's longitude column (optional)"),
    ec_method: Optional[str] = typer.Option(None, help="the extract OSSL's EC (ec_usda.a364_ds.m) was measured in, for "
                                            "every dataset (1:1, 1:2, 1:5 or paste) or per dataset (KSSL.SSL=1:2,LUCAS.SSL=1:5); "
                                            "default: KSSL 1:2 and LUCAS 1:5 (ISO 11265), and 1:2 for a download of one other "
                                            "dataset; converted to ECe by a stated rule, recorded per sample"),
    ec_factor: Optional[str] = typer.Option(None, help="your own conversion ECe = A x EC + B, as A or A,B (a local "
                                            "calibration; replaces the built-in rule of the --ec-method given for all)"),
    depth: str = typer.Option("0,12", help="target depth TOP,BOTTOM in cm: a profile's layers overlapping it are "
                              "averaged, weighted by their overlap"),
):
    """Import an Open Soil Spectral Library download (OSSL's column names, EC converted to ECe by a declared rule,
    samples composited to the target depth, rows without a value dropped with a count), or Bruker OPUS files with
    their chemistry table."""
    from deepsalt.data.ossl import ECRule, import_ossl, parse_ec_methods

    if (ossl is None) == (opus is None):
        raise DeepSaltInputError("lab import", "needs exactly one of --ossl and --opus", "see `deepsalt lab import --help`")
    if opus is not None:
        from deepsalt.data.opus import import_opus

        if chem is None or id_column is None:
            raise DeepSaltInputError("--opus", "needs --chem TABLE and --id-column C", "name the chemistry table and its sample column")
        typer.echo(json.dumps(import_opus(opus, chem, id_column, out, column, lat_column, lon_column, log=typer.echo)))
        return

    rule = None
    default, _ = parse_ec_methods(ec_method)  # checked before anything is read
    if ec_factor:
        if default is None:
            raise DeepSaltInputError("--ec-factor", "needs the extract it calibrates", "pass --ec-method 1:2 (or 1:1, 1:5, paste) with it")
        a, b = (*_numbers(ec_factor, "--ec-factor", 2 if "," in ec_factor else 1), 0.0)[:2]
        rule = ECRule(a, b, f"user calibration for {default}: ECe = {a:g} EC + {b:g}")
    top, bottom = _numbers(depth, "--depth", 2)
    typer.echo(json.dumps(import_ossl(ossl, str(out), ec_method, (top, bottom), rule, log=typer.echo)))


@lab_app.command("fit")
@_clean_errors
def lab_fit_cmd(
    lab: Path = typer.Option(..., help="a lab table (`deepsalt lab import`'s, or OSSL's names as they are: id, "
                             "oc_usda.c729_w.pct, absorbance columns by bare wavenumber or scan_mir.<wn>_abs)"),
    out: Path = typer.Option(..., help="run folder: config.json, metrics.json, predictions.csv, bundle/"),
    target: str = typer.Option("soc", help="the property: soc or ece"),
    folds: int = typer.Option(10, min=2, max=100, help="cross-validation folds: whole spatial blocks where every sample "
                              "has coordinates, else random (seeded)"),
    mir_grid: Optional[str] = typer.Option(None, help="FIRST,LAST,N cm-1 to resample onto (default: the table's own grid)"),
    seed: int = typer.Option(0, min=0, help="seed of the folds and the networks"),
    epochs: int = typer.Option(300, min=5, max=5000, help="most epochs of the auto-encoder and of the teacher (the teacher "
                               "stops early on 10 % of its training folds)"),
):
    """Fit the FTIR auto-encoder and the teacher on a lab table alone, with PLSR (components by inner CV) on the same
    folds: spectra to a soil property, as soil labs use MIR. Writes cv.teacher and cv.plsr skill to metrics.json and
    the teacher fitted on every sample to RUN/bundle (`deepsalt lab predict` applies it)."""
    from deepsalt.train.lab_fit import LabFitConfig, lab_fit

    grid = None
    if mir_grid:
        a, b, n = _numbers(mir_grid, "--mir-grid", 3)
        grid = (a, b, int(n))
    if target not in ("soc", "ece"):
        raise DeepSaltInputError("--target", f"unknown target {target!r}", "use soc or ece")
    cfg = LabFitConfig(folds=folds, seed=seed, mir_grid=grid, ae_epochs=epochs, teacher_epochs=epochs)
    m = lab_fit(lab, out, target, cfg, log=typer.echo)
    typer.echo(json.dumps({"out": str(out), "cv": {k: {m_: round(v, 4) for m_, v in d.items()} for k, d in m["cv"].items()}}))


@lab_app.command("predict")
@_clean_errors
def lab_predict_cmd(
    model: Path = typer.Option(..., help="RUN/bundle of `deepsalt lab fit`"),
    lab: Path = typer.Option(..., help="a lab table with spectra covering the bundle's wavenumber grid"),
    out: Path = typer.Option(..., help="predictions to write (CSV, or Parquet by its ending)"),
):
    """Predict the bundle's property for new spectra (resampled onto its grid; a table that does not cover it is
    refused)."""
    from deepsalt.train.lab_fit import lab_predict

    typer.echo(json.dumps(lab_predict(model, lab, out, log=typer.echo)))


cov_app = typer.Typer(no_args_is_help=True, help="Covariates: build the 8 rasters from SoilGrids 2.0 and WorldClim 2.1.")
app.add_typer(cov_app, name="covariates")


@cov_app.command("build")
@_clean_errors
def covariates_build_cmd(
    soilgrids: str = typer.Option(..., help="SoilGrids 2.0 as ISRIC ships it: a folder or URL with sand/ and clay/ "
                                  "layers 0-5cm and 5-15cm (VRT over tiles, or GeoTIFF), int16 g/kg, Homolosine"),
    worldclim: str = typer.Option(..., help="WorldClim 2.1 monthly 30-second files: a folder with "
                                  "wc2.1_30s_{tmin,tmax,tavg,prec}_{01..12}.tif"),
    bbox: str = typer.Option(..., help="minlon,minlat,maxlon,maxlat (deg) to cover"),
    out: Path = typer.Option(..., help="folder to write the 8 COGs to (sand.tif ... pr_avg.tif)"),
):
    """Build the 8 covariates: sand and clay (%, 0-12 cm) from SoilGrids, and the temperature and precipitation
    extremes and means from WorldClim's monthly files; float32 COGs in EPSG:4326, checked for their units."""
    from deepsalt.data.products import build_covariates

    s = build_covariates(soilgrids, worldclim, _bbox(bbox), out, log=typer.echo)
    typer.echo(json.dumps(s))


def _quality(value: str) -> tuple[str, ...]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in QUALITY_LAYERS]
    if bad or not names:
        raise typer.BadParameter(f"'{value}': use names from {', '.join(QUALITY_LAYERS)} (comma-separated), or none")
    return tuple(QUALITY_LAYERS[n].asset for n in names)


QUALITY_HELP = ("quality layers whose flagged pixels are not mapped, comma-separated: "
                + "; ".join(f"{k} ({q.what}, QL_QUALITY_{q.suffix})" for k, q in QUALITY_LAYERS.items()) + "; or none")


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
    grid: GridName = typer.Option("conus", help="output grid: conus (EPSG:5070, 30 m), europe (EPSG:3035, 30 m) or global "
                                  "(Equal Earth, EPSG:8857, 30 m: every land surface, any UTM zone of either hemisphere)"),
    chunk: int = typer.Option(256, min=16, max=4096, help="chunk = tile side in pixels (16-4096; a cube keeps the one it was made with)"),
    shard: int = typer.Option(2, min=1, max=16, help="tiles per shard side (1-16): one stored object per shard x shard chunks "
                              "of a variable (Zarr v3 sharding); 1: unsharded. A cube keeps the one it was made with"),
    mc_samples: int = typer.Option(5, min=0, max=100, help="MC-dropout passes for the ece_sd uncertainty (0: none)"),
    inference: Inference = typer.Option("auto", help="where the student runs. tasks: in the read tasks, on CPU (no actor "
                                        "to start; a shard's pixels never cross the object store); actors: in an autoscaling "
                                        "actor pool (--actors, --min-actors; one GPU each with --gpu); auto: actors with --gpu "
                                        "or --actors, tasks otherwise"),
    actors: Optional[int] = typer.Option(None, min=1, help="most student inference actors: the pool autoscales from "
                                         "--min-actors up to this (default: one per CPU of the cluster; with --gpu, one per GPU)"),
    min_actors: int = typer.Option(1, min=1, help="inference actors started at once"),
    gpu: bool = typer.Option(False, help="one GPU per inference actor; GPU workers scale up for the job (CPU otherwise)"),
    allow_http: bool = typer.Option(False, help="accept plain http:// asset hrefs (trusted internal servers only); "
                                    "s3://, https:// and local paths are always accepted"),
    quality_masks: str = typer.Option(",".join(QUALITY_LAYERS), callback=lambda v: _quality(v), help=QUALITY_HELP),
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
                    inference=inference.value, predict_actors=actors, min_actors=min_actors, gpu=gpu, storage_options=so, allow_http=allow_http,
                    quality_masks=quality_masks)
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
              version: Optional[str] = typer.Option(None, help="a tag, commit id or date (default: the latest)"),
              change: Optional[str] = typer.Option(None, help="a change store (`deepsalt change --out`): adds the change "
                                                   "at the point, its 90 % interval and the call")):
    """Print ECe, its uncertainty and the source scene at one point, per epoch (JSON).

    The same from Python: `deepsalt.point(CUBE, lon, lat)`.
    """
    from deepsalt.mapping.cube import point

    out = point(cube, lon, lat, epoch, _storage_options(cube), version)
    if change:
        from deepsalt.mapping.change import change_at

        out["change"] = change_at(change, lon, lat)
    typer.echo(json.dumps(out, indent=1))


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


@app.command("change")
@_clean_errors
def change_cmd(cube: str = typer.Option(..., help="cube URL (local folder or s3://bucket/prefix) with both epochs"),
               e_from: str = typer.Option(..., "--from", help="the earlier epoch (YYYY or YYYY-MM-DD, as mapped)"),
               e_to: str = typer.Option(..., "--to", help="the later epoch"),
               out: str = typer.Option(..., help="Zarr store to create (a local path, or a URL): change, change_ln, "
                                       "change_lo/_hi (90 % interval), call, flag; its attributes hold the summary"),
               bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (deg): compare and summarise only "
                                                  "this region (default: every tile mapped in both epochs)"),
               confidence: float = typer.Option(0.99, help="two-sided confidence of the increase/decrease calls (about "
                                                "1 - confidence of unchanged land is called changed)"),
               season_days: int = typer.Option(45, min=0, help="acquisitions further apart than this in the year are "
                                                "flagged, not compared"),
               regions: Optional[str] = typer.Option(None, help="a vector file of polygons (GeoPackage, GeoJSON, "
                                                     "Shapefile; read by GDAL): the calls and crossed areas per polygon"),
               region_field: Optional[str] = typer.Option(None, help="the field that names each polygon (default: the "
                                                          "first text field)"),
               layer: Optional[str] = typer.Option(None, help="the layer of a --regions file of several"),
               world: Optional[Path] = typer.Option(None, help="a synthetic world built with --second-epoch: scores the "
                                                    "calls against its truth (false-change rate, detection)")):
    """Where the mapped property rose or fell between two epochs: per pixel the change, its 90 % interval and a
    call (increase, decrease, no detectable change); pixels outside the area of applicability in either epoch, or
    acquired in different seasons, are flagged, not called. Prints the summary (JSON): the change's noise (sigma),
    the pixels called and flagged, and the area that crossed each class threshold, with its 90 % range."""
    from deepsalt.mapping.change import change

    typer.echo(json.dumps(change(cube, e_from, e_to, out, _bbox(bbox), confidence, season_days, _storage_options(cube),
                                 world=world, regions=regions, region_field=region_field, layer=layer,
                                 log=lambda m: typer.echo(m, err=True)), indent=1))


@app.command("plan-sampling")
@_clean_errors
def plan_sampling_cmd(cube: str = typer.Option(..., help="cube URL (local folder or s3://bucket/prefix)"),
                      model: str = typer.Option(..., help="the bundle that mapped the epoch (RUN/bundle)"),
                      n: int = typer.Option(..., "--n", help="number of field sites to propose"),
                      out: Path = typer.Option(..., help="GeoPackage to write (.gpkg): one point per site with its reasons; "
                                               "fill in the measured value and `deepsalt sites` reads it as it is"),
                      stac: str = typer.Option(..., help="the catalogue the cube was mapped from (the candidates' spectra "
                                               "are read again from it)"),
                      covariates: str = typer.Option(..., help="the covariates the cube was mapped with"),
                      bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (deg): propose sites only "
                                                         "here (default: every mapped tile)"),
                      exclude: Optional[str] = typer.Option(None, help="a vector file (GeoPackage, GeoJSON, Shapefile) of "
                                                            "polygons to keep out of (no access, water) and/or points (sites "
                                                            "already sampled) to keep --spacing away from"),
                      epoch: Optional[str] = typer.Option(None, help="the epoch to plan from (default: the latest)"),
                      method: SamplingMethod = typer.Option("coverage", help="coverage: the sites that bring the most of the map "
                                                 "inside the area of applicability, widest intervals first; random: a "
                                                 "uniform random sample (for validation; the baseline)"),
                      spacing: float = typer.Option(300.0, min=0, help="least distance between two proposed sites (m)"),
                      pool: int = typer.Option(4000, min=10, max=20000, help="candidate pixels drawn from the map (seeded)"),
                      seed: int = typer.Option(0, help="seed of the candidate draw (and of the random method)")):
    """Where to sample next: N field sites that most reduce what the model does not know. Candidates are drawn from
    the mapped pixels; each site is the one that, as a training site, would bring the most of the map inside the area
    of applicability (weighted by interval width), kept --spacing apart. Prints the plan's summary (JSON)."""
    from deepsalt.mapping.sampling import plan_sampling

    typer.echo(json.dumps(plan_sampling(cube, model, n, out, stac, covariates, _bbox(bbox), exclude, epoch, method.value,
                                        spacing, pool, seed, _storage_options(cube), log=lambda m: typer.echo(m, err=True)),
                          indent=1))


@app.command("quicklook")
@_clean_errors
def quicklook_cmd(cube: str = typer.Option(..., help="cube URL"), out: Path = typer.Option(..., help="PNG to write"),
                  epoch: Optional[str] = typer.Option(None, help="epoch (default: the latest)"),
                  world: Optional[Path] = typer.Option(None, help="a world folder with truth/: adds residual maps"),
                  change: Optional[str] = typer.Option(None, help="a change store (`deepsalt change --out`): adds the "
                                                       "change's calls per region (default: for a cube with an earlier "
                                                       "epoch, the change from it, at `deepsalt change`'s defaults)")):
    """Draw an epoch per mapped region: ECe in FAO salinity classes, its uncertainty, and residuals against the
    truth (with --world) or the source scene; an overview locates the regions."""
    from deepsalt.mapping.score import quicklook

    typer.echo(f"wrote {quicklook(cube, out, epoch, _storage_options(cube), world, change=change)}")


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
    if "ray" in sys.modules:  # a command that joined Ray leaves it here, sooner than Ray's exit hook would (cli_overhead.json)
        import ray

        if ray.is_initialized():
            ray.shutdown()
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
