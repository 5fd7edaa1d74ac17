"""What spectra, covariates and location each explain of a world's site ln ECe, under random and spatial CV, and
(with --pixels N) what the inputs carry at pixel level: models fitted to the true ECe of N clear pixels per seen
scene, under a within-scene spatial split and a random split (``deepsalt.data.synthetic.realism``), written to a
results file.

    python bench/realism.py WORLD [--pixels 4000] [--out bench/results/realism.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from common import stamp
from deepsalt.data.synthetic.realism import explained_variance, pixel_ceiling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("world", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "realism.json")
    ap.add_argument("--pixels", type=int, default=0, help="also the pixel-level ceiling: models fitted to the true ECe "
                    "of up to this many clear pixels per seen scene (deepsalt.data.synthetic.realism.pixel_ceiling)")
    a = ap.parse_args()
    res = {**stamp(), "world": str(a.world),
           **explained_variance(pd.read_parquet(a.world / "samples" / "satellite_samples.parquet"))}
    if a.pixels:
        res["pixel_ceiling"] = pixel_ceiling(a.world, per_scene=a.pixels)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
