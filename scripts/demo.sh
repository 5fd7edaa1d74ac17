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
$ds quicklook --cube "$OUT/cube.zarr" --out "$OUT/quicklook.png"
echo
echo "done in $(( $(date +%s) - start )) s"
echo "  cube:      $OUT/cube.zarr   (xarray.open_zarr(\"$OUT/cube.zarr\"))"
echo "  quicklook: $OUT/quicklook.png"
echo "  scores:    $OUT/score.json;  training report: $OUT/run/report/summary.md"
