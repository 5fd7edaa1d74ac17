"""What every results file records: machine, card, date and the command that wrote it."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model and the widest vector instructions it offers (torch's CPU kernels pick theirs from these, and
    the rounding of a training's sums with them: the same seed trains another model on an AVX2 machine than on an
    AVX-512 one)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown"
    model = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "unknown")
    flags = set(next((x.split(":", 1)[1].split() for x in info.splitlines() if x.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    forced = os.environ.get("ATEN_CPU_CAPABILITY")  # torch's override of its own detection
    return f"{model}, {isa}" + (f" (torch's kernels limited to {forced} by ATEN_CPU_CAPABILITY)" if forced else "")


def stamp(card: str | None = None) -> dict:
    cpus = os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"machine": f"{platform.node()}: {cpus} CPUs, {platform.machine()}, {ram:.0f} GiB", "cpu": cpu_model(), "card": card,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def int_list(text: str) -> list[int]:
    """``"7,11,12"`` -> ``[7, 11, 12]`` (an argparse type)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def world_parser(doc: str, worlds: str, out: str, seeds: str | None = None,
                 seeds_help: str = "training seeds (comma-separated)") -> argparse.ArgumentParser:
    """The options of a bench over development worlds: ``--worlds`` (world seeds, never the headline one), ``--seeds``
    (training seeds, where ``seeds`` gives their default) and ``--out`` (``results/OUT`` by default), as lists of
    ints and a path once parsed; the caller adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--worlds", type=int_list, default=worlds, help="development world seeds (comma-separated)")
    if seeds is not None:
        ap.add_argument("--seeds", type=int_list, default=seeds, help=seeds_help)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / out, help=f"results file (default: results/{out})")
    return ap
