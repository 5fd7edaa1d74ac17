#!/usr/bin/env bash
# `deepsalt change` on a world with a second epoch whose changes are known, scored against its truth.
# Usage: bench/change.sh MODEL [preset] [seed]   (MODEL: a bundle trained on that world's first epoch, e.g. the
# demo's out/run/bundle for the demo preset and seed 7). Writes bench/results/change_<preset>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; preset=${2:-demo}; seed=${3:-7}
. scripts/local_env.sh
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
ds=.venv/bin/deepsalt
$ds world --preset "$preset" --seed "$seed" --second-epoch --out "$w/world" > /dev/null
for y in 2024 2025; do  # each year from its own scenes: the catalogue holds both
  $ds map --stac "$w/world/stac" --covariates "$w/world/covariates" --model "$model" --out "$w/cube.zarr" \
          --epoch $y --datetime $y > /dev/null
done
$ds change --cube "$w/cube.zarr" --from 2024 --to 2025 --out "$w/change.zarr" --world "$w/world" \
  | .venv/bin/python -c 'import json, sys; d = json.load(sys.stdin); d["command"] = sys.argv[1]; d["model"] = sys.argv[2]
print(json.dumps(d, indent=1))' "bench/change.sh $*" "$model" | tee "bench/results/change_$preset.json"
