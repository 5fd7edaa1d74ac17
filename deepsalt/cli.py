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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
