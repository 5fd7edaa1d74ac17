#!/usr/bin/env bash
# Train a preset on a world with `deepsalt train` (3 seeds, every ablation and baseline) and record the wall
# time, peak memory and the ablation table in bench/results/train_<preset>.md; the run's metrics.json and
# evaluation figure are copied to bench/results/train_<preset>_metrics.json and train_<preset>_evaluation.png.
# Usage: bench/train.sh WORLD_DIR [preset] [extra deepsalt train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
world=${1:?usage: bench/train.sh WORLD_DIR [preset] [flags...]}; preset=${2:-benchmark}; shift $(( $# > 1 ? 2 : 1 ))
. scripts/local_env.sh
run=$(mktemp -d)/run
res=bench/results/train_$preset.md
mkdir -p bench/results
/usr/bin/time -v .venv/bin/deepsalt train --world "$world" --out "$run" --preset "$preset" "$@" > "$run.log" 2>&1 || {
  tail -40 "$run.log"; exit 1; }
{ echo "## $(date -u +%FT%TZ) preset=$preset world=$world flags='$*' host=$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, no GPU"
  echo; echo '```'; grep -E "^seed [0-9]+: (DeepSalt|[0-9]+ lab)|Elapsed|Maximum resident" "$run.log"; echo '```'; echo
  sed -n '/## Students/,/!\[evaluation\]/p' "$run/report/summary.md" | grep -v '!\[evaluation\]'
  echo "run folder (metrics.json, report/, bundle/): $run"; echo; } | tee -a "$res"
cp "$run/metrics.json" "bench/results/train_${preset}_metrics.json"
cp "$run/report/evaluation.png" "bench/results/train_${preset}_evaluation.png"
