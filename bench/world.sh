#!/usr/bin/env bash
# Time and measure peak memory of `deepsalt world` for a preset; appends to bench/results/world.txt.
# Usage: bench/world.sh [preset] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-benchmark}; seed=${2:-7}
out=$(mktemp -d)
mkdir -p bench/results
{ echo "## $(date -u +%FT%TZ) preset=$preset seed=$seed host=$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  /usr/bin/time -v .venv/bin/deepsalt world --preset "$preset" --seed "$seed" --out "$out/w" 2>&1 \
    | grep -E "^wrote|lab ECe|Elapsed|Maximum resident"
  echo "size on disk: $(du -sh "$out/w" | cut -f1)"; } | tee -a bench/results/world.txt
rm -rf "$out"
