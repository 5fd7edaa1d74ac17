#!/usr/bin/env bash
# `deepsalt plan-sampling` on the demo: the demo's cube (seen region) with the held-out region mapped too, 20 sites
# planned by coverage and 20 at random from the same pool. Usage: bench/plan.sh [DEMO_OUT] (default: out, as
# scripts/demo.sh leaves it). Writes bench/results/plan_demo.json and DEMO_OUT/plan.gpkg, DEMO_OUT/plan_random.gpkg.
set -euo pipefail
cd "$(dirname "$0")/.."
o=${1:-out}
. scripts/local_env.sh
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
ds=.venv/bin/deepsalt
cp -r "$o/cube.zarr" "$w/cube.zarr"
args=(--stac "$o/catalog/collection.json" --covariates "$o/inputs/covariates")
$ds map "${args[@]}" --model "$o/run/bundle" --out "$w/cube.zarr" --epoch 2024 --region unseen > /dev/null
for m in coverage random; do
  $ds plan-sampling --cube "$w/cube.zarr" --model "$o/run/bundle" "${args[@]}" --n 20 --method $m \
      --out "$o/plan$([ $m = random ] && echo _random).gpkg" > "$w/$m.json"
done
.venv/bin/python - "$w" "bench/plan.sh $*" <<'PY' | tee bench/results/plan_demo.json
import json, sys
w, cmd = sys.argv[1:]
print(json.dumps({"command": cmd, **{m: json.load(open(f"{w}/{m}.json")) for m in ("coverage", "random")}}, indent=1))
PY
