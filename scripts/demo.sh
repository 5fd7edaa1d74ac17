#!/usr/bin/env bash
# The main job on the built-in default, end to end on one machine:
#   set up -> demo synthetic world -> train (Ray Train) -> map (Ray Data -> Zarr cube) -> score -> quicklook.
# Outputs go to ./out (override with DEEPSALT_OUT=...). Uses a local Ray started in-process, or the
# cluster at RAY_ADDRESS if set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/local_env.sh
OUT=${DEEPSALT_OUT:-out}
mkdir -p "$OUT"
ds=.venv/bin/deepsalt
start=$(date +%s)
$ds world --preset demo --seed 7 --out "$OUT/world" --overwrite
rm -rf "$OUT/run" "$OUT/cube.zarr"
$ds train --world "$OUT/world" --out "$OUT/run" --preset tiny --seeds 0
$ds map --stac "$OUT/world/stac" --model "$OUT/run/bundle" --covariates "$OUT/world/covariates" \
        --out "$OUT/cube.zarr" --epoch 2024 --region seen
echo "re-running the same map job: incremental, so nothing should be re-mapped"
$ds map --stac "$OUT/world/stac" --model "$OUT/run/bundle" --covariates "$OUT/world/covariates" \
        --out "$OUT/cube.zarr" --epoch 2024 --region seen
$ds score --cube "$OUT/cube.zarr" --world "$OUT/world" | tee "$OUT/score.json"
$ds quicklook --cube "$OUT/cube.zarr" --out "$OUT/quicklook.png" --world "$OUT/world"
.venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, seconds = sys.argv[1], int(sys.argv[2])
cube = json.load(open(f"{out}/score.json"))["overall"]
model = json.load(open(f"{out}/run/metrics.json"))["results"]["deepsalt"]["seen"]
print(f"cube vs truth: R2 {cube['r2']:.3f}, MAE {cube['mae']:.3f} dS/m over {cube['n_pixels']} px; "
      f"model's pixel-level seen-test R2 {model['r2']:.3f}, MAE {model['mae']:.3f} (n={model['n']:.0f}); "
      f"R2 gap {abs(cube['r2'] - model['r2']):.3f}")
summary = {"pipeline_seconds": seconds, "cube_vs_truth": cube, "model_seen_test": {k: model[k] for k in ("mae", "r2", "n")}}
json.dump(summary, open(f"{out}/demo_summary.json", "w"), indent=1)
print(f"\ndone in {seconds} s (world -> train -> map -> re-map -> score -> quicklook; {out}/demo_summary.json)")
PY
echo "  cube:      $OUT/cube.zarr   (deepsalt.open_cube(\"$OUT/cube.zarr\"); history: deepsalt history --cube $OUT/cube.zarr)"
echo "  quicklook: $OUT/quicklook.png"
echo "  scores:    $OUT/score.json;  training report: $OUT/run/report/summary.md"
