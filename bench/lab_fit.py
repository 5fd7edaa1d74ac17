"""The teacher against PLSR on real lab spectra: `deepsalt lab fit` on the 500 KSSL MIR spectra with SOC
(``shared/data/real/kssl_toy500``, OSSL names as they are; CC-BY 4.0 OSSL/KSSL data), 10 folds, written to a
results file.

    python bench/lab_fit.py [--lab ../shared/data/real/kssl_toy500/toy_kssl_mir.csv.gz] [--out bench/results/lab_fit_kssl.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import stamp
from deepsalt.train.lab_fit import LabFitConfig, lab_fit

KSSL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "kssl_toy500" / "toy_kssl_mir.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", type=Path, default=KSSL)
    ap.add_argument("--target", default="soc")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lab_fit_kssl.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as run:
        m = lab_fit(a.lab, run, a.target, LabFitConfig(folds=a.folds, seed=a.seed))
        config = json.loads((Path(run) / "config.json").read_text())
    res = {**stamp(), "lab": str(a.lab), "config": config, "samples": m["samples"], "folds_by": m["folds_by"],
           "cv": m["cv"], "plsr_components": [f["plsr_components"] for f in m["per_fold"]],
           "per_fold_r2_ln1p": {k: [f[k]["r2_ln1p"] for f in m["per_fold"]] for k in ("teacher", "plsr")},
           "seconds": m["seconds"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("samples", "folds_by", "cv", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
