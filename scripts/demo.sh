#!/usr/bin/env bash
# The main job on the built-in default: set up, build the demo synthetic world, and run the pipeline on it.
# Outputs go to ./out (override with DEEPSALT_OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/local_env.sh
OUT=${DEEPSALT_OUT:-out}
mkdir -p "$OUT"
.venv/bin/deepsalt world --preset demo --seed 7 --out "$OUT/world" --overwrite
echo "demo world: $OUT/world (figure: $OUT/world/world.png)"
