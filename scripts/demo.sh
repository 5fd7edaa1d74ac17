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
# The demo's processes may write byte-code into .venv: scripts/setup.sh compiles what DeepSalt imports, and what it
# leaves out (parts of Ray's daemons, of Ray Train's torch and of plotting) is then compiled once, not in every process
unset PYTHONDONTWRITEBYTECODE
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
$ds score --cube "$OUT/cube.zarr" --world "$OUT/world" > "$OUT/score.json"  # every scene and threshold: summarised below
$ds quicklook --cube "$OUT/cube.zarr" --out "$OUT/quicklook.png" --world "$OUT/world"
.venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, seconds = sys.argv[1], int(sys.argv[2])
scored = json.load(open(f"{out}/score.json"))
cube, ref = scored["overall"], scored["reference_scene_median"]["overall"]
model = json.load(open(f"{out}/run/metrics.json"))["results"]["deepsalt"]["seen"]
c4 = cube["classes"]["4"]
print(f"cube vs truth over {cube['n_pixels']} px: R2 {cube['r2']:.3f} (of ln ECe {cube['r2_ln']:.3f}), MAE {cube['mae']:.3f} dS/m, "
      f"Spearman {cube['spearman']:.2f}; saline (> 4 dS/m, called at P >= {scored['exceedance_decision']['4']:.2f}): "
      f"recall {c4['recall']:.2f}, precision {c4['precision']:.2f}, F1 {c4['f1']:.2f}, median within-scene AUC {c4['auc']:.2f}")
print(f"  a map of each scene's true median: R2 of ln {ref['r2_ln']:.3f}, Spearman {ref['spearman']:.2f}; "
      f"model's seen-test sites: R2 {model['r2']:.3f} (of ln {model['r2_ln']:.3f}), MAE {model['mae']:.3f} (n={model['n']:.0f})")
for region in ("seen", "unseen"):
    if scored.get(region):
        r = scored[region]
        print(f"  {region} scenes: R2 of ln {r['r2_ln']:.3f}, Spearman {r['spearman']:.2f}, > 4 dS/m recall "
              f"{r['classes']['4']['recall']:.2f} precision {r['classes']['4']['precision']:.2f} F1 {r['classes']['4']['f1']:.2f} "
              f"AUC {r['classes']['4']['auc']:.2f}")
summary = {"pipeline_seconds": seconds, "cube_vs_truth": cube, "by_region": {r: scored.get(r) for r in ("seen", "unseen")},
           "reference_scene_median": ref, "exceedance_decision": scored["exceedance_decision"],
           "model_seen_test": {k: model[k] for k in ("mae", "r2", "r2_ln", "spearman", "n")}}
json.dump(summary, open(f"{out}/demo_summary.json", "w"), indent=1)
print(f"\ndone in {seconds} s (world -> ingest -> covariates -> lab import -> sites -> train -> map -> re-map -> score -> "
      f"quicklook; {out}/demo_summary.json)")
PY
echo "  cube:      $OUT/cube.zarr   (deepsalt.open_cube(\"$OUT/cube.zarr\"); history: deepsalt history --cube $OUT/cube.zarr)"
echo "  quicklook: $OUT/quicklook.png"
echo "  scores:    $OUT/score.json;  training report: $OUT/run/report/summary.md;  site drops: $OUT/inputs/sites.parquet.drops.csv"
