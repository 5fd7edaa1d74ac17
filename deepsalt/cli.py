"""The ``deepsalt`` command. Bad input prints one line naming the fault and exits 2, without a traceback."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from deepsalt.errors import DeepSaltInputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DeepSalt: soil salinity (ECe, dS/m) maps from EnMAP imagery, distilled from lab MIR spectra.")


@app.callback()
def _group() -> None:
    """Commands: world (synthetic data), and the pipeline stages."""


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except DeepSaltInputError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
    return wrapper


@app.command()
@_clean_errors
def world(
    out: Path = typer.Option(..., "--out", help="folder to create (must not exist, or be empty, unless --overwrite)"),
    preset: str = typer.Option("tiny", help="size: tiny (3 scenes of 128 px, seconds), demo (5 x 256 px), "
                               "benchmark (10 x 512 px, 20,000 lab samples)"),
    seed: int = typer.Option(7, help="random seed: the same seed gives identical tables and rasters"),
    overwrite: bool = typer.Option(False, help="replace an existing world at --out"),
):
    """Build the synthetic world: lab MIR library, EnMAP L2A-like scenes + STAC, covariates, truth, samples."""
    from deepsalt.config import WorldConfig
    from deepsalt.data.synthetic.world import build_world

    if preset not in ("tiny", "demo", "benchmark"):
        raise DeepSaltInputError("--preset", f"unknown preset '{preset}'", "use tiny, demo or benchmark")
    cfg = WorldConfig.for_preset(preset, seed)
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
    world: Path = typer.Option(..., help="world folder (deepsalt world) holding lab/, samples/ and covariates/"),
    out: Path = typer.Option(..., help="run folder: config.json, metrics.json, report/, bundle/, ray/ checkpoints"),
    preset: str = typer.Option("demo", help="hyper-parameter preset: tiny (minutes on a laptop), demo, benchmark (paper sizes)"),
    workers: int = typer.Option(1, help="Ray Train workers (DDP); one per GPU with --gpu"),
    gpu: bool = typer.Option(False, help="one GPU per worker"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds; metrics are mean and sd over them"),
    tokens: str = typer.Option("one", help="transformer tokenisation: one (whole latent = one token) or per_dim"),
):
    """Train SAU, teacher and student (+ ablations) with Ray Train; evaluate; write the model bundle.

    Re-running with the same --out resumes each seed from its last checkpoint.
    """
    from deepsalt.config import TrainConfig
    from deepsalt.train.run import train as run_train

    if preset not in ("tiny", "demo", "benchmark"):
        raise DeepSaltInputError("--preset", f"unknown preset '{preset}'", "use tiny, demo or benchmark")
    if not (world / "samples" / "satellite_samples.parquet").exists():
        raise DeepSaltInputError(world, "not a world folder (samples/satellite_samples.parquet missing)", "build one with `deepsalt world`")
    cfg = TrainConfig.for_preset(preset, workers=workers, gpu=gpu, tokens=tokens,
                                 seeds=tuple(int(s) for s in seeds.split(",")))
    m = run_train(world, out, cfg, log=typer.echo)
    typer.echo(f"wrote {out}/metrics.json, {out}/report/summary.md, {out}/bundle ({m['seconds']} s)")
    for v, r in m["results"].items():
        typer.echo(f"  {v:15s} seen MAE {r['seen']['mae']:.3f} ± {r['seen']['mae_sd']:.3f}  R2 {r['seen']['r2']:.3f}   "
                   f"unseen MAE {r['unseen']['mae']:.3f}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
