#!/usr/bin/env bash
# The main job on the built-in default, end to end on one machine, through the path a user with real data takes:
#   set up -> demo synthetic world (and its data as users have it: DLR deliveries, SoilGrids, WorldClim, an OSSL
#   download, field sites) -> ingest the deliveries -> build the covariates -> import the lab library -> extract the
#   sites -> train (Ray Train) -> map (Ray Data -> Zarr cube) -> re-map (nothing to do) -> score -> quicklook.
# Outputs go to ./out (override with DEEPSALT_OUT=...). Uses a local Ray started in-process, or the cluster at
# RAY_ADDRESS if set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/local_env.sh
OUT=${DEEPSALT_OUT:-out}
mkdir -p "$OUT"
ds=.venv/bin/deepsalt
start=$(date +%s)
$ds world --preset demo --seed 7 --out "$OUT/world" --overwrite --deliveries
rm -rf "$OUT/run" "$OUT/cube.zarr" "$OUT/catalog" "$OUT/inputs"
W="$OUT/world/native"
echo "ingesting DLR's deliveries (ZIPs) into a STAC catalogue"
$ds ingest "$OUT/world/deliveries" --out "$OUT/catalog"
CAT="$OUT/catalog/collection.json"
echo "building the 8 covariates from SoilGrids and WorldClim as shipped"
bbox=$(.venv/bin/python -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["native_bbox"])))' "$OUT/world/world.json")
$ds covariates build --soilgrids "$W/soilgrids" --worldclim "$W/worldclim" --bbox="$bbox" --out "$OUT/inputs/covariates"
echo "importing the OSSL download and extracting the field sites"
$ds lab import --ossl "$W/ossl" --out "$OUT/inputs/lab.parquet"
$ds sites --sites "$W/sites.csv" --stac "$CAT" --covariates "$OUT/inputs/covariates" --out "$OUT/inputs/sites.parquet"
$ds train --lab "$OUT/inputs/lab.parquet" --sites "$OUT/inputs/sites.parquet" --stac "$CAT" \
          --covariates "$OUT/inputs/covariates" --mir-grid 600,4000,1701 --out "$OUT/run" --preset tiny --seeds 0
$ds map --stac "$CAT" --model "$OUT/run/bundle" --covariates "$OUT/inputs/covariates" \
        --out "$OUT/cube.zarr" --epoch 2024 --region seen
echo "re-running the same map job: incremental, so nothing should be re-mapped"
$ds map --stac "$CAT" --model "$OUT/run/bundle" --covariates "$OUT/inputs/covariates" \
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
print(f"\ndone in {seconds} s (world -> ingest -> covariates -> lab import -> sites -> train -> map -> re-map -> score -> "
      f"quicklook; {out}/demo_summary.json)")
PY
echo "  cube:      $OUT/cube.zarr   (deepsalt.open_cube(\"$OUT/cube.zarr\"); history: deepsalt history --cube $OUT/cube.zarr)"
echo "  quicklook: $OUT/quicklook.png"
echo "  scores:    $OUT/score.json;  training report: $OUT/run/report/summary.md;  site drops: $OUT/inputs/sites.parquet.drops.csv"
