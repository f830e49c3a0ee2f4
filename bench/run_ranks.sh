#!/usr/bin/env bash
# Data-parallel CPU training on the quickstart model: tokens/s with 1 and 2 ranks (16 x 128 tokens
# per rank per step), optimizer state per rank with ZeRO stage 0 vs 1, and the bytes each rank
# hands to collectives per step against the theoretical volume (stage 1: reduce-scatter P floats +
# all-gather P floats; stage 0: all-reduce P floats; P = padded flat parameter buffer).
# Needs the quickstart's datasets: bash launch/quickstart.sh (or launch/corpus.sh + ctrain prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-60}
ctrain=${CTRAIN_BUILD:-build}/train/ctrain
cmake --build "${CTRAIN_BUILD:-build}" --target ctrain -j "$(nproc)" >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $steps steps each"
printf "%-6s %-5s %12s %16s %18s %18s\n" ranks zero "tokens/s" "optim MiB/rank" "comm MiB/step" "theory MiB/step"
for run in "1 1" "2 1" "2 0"; do
  set -- $run
  ranks=$1 zero=$2 dir=runs/bench_r${1}_z${2}
  rm -rf "$dir" # a finished run dir would resume at its last step and train nothing
  log=$(bash launch/mpirun.sh -n "$ranks" -- "$ctrain" train configs/quickstart.json --set run.device=cpu --set run.dir="$dir" \
        --set optim.max_steps="$steps" --set optim.warmup_steps=5 --set data.val= --set log.every=1000 \
        --set parallel.zero_stage="$zero" 2>&1)
  tps=$(grep -o '"tokens_per_s": [0-9.]*' "$dir/metrics.jsonl" | awk 'NR > 5 { s += $2; n++ } END { printf "%.0f", s / n }')
  optim=$(sed -n 's/.*optimizer state \([0-9.]*\) MiB.*/\1/p' <<<"$log")
  comm=$(sed -n 's/.*: \([0-9.]*\) MiB passed to collectives per step.*/\1/p' <<<"$log")
  flat=$(sed -n 's/.*flat buffer \([0-9]*\) floats.*/\1/p' <<<"$log")
  theory=$(awk -v p="$flat" -v z="$zero" 'BEGIN { printf "%.3f", (z == 1 ? 2 : 1) * p * 4 / 1048576 }')
  printf "%-6s %-5s %12s %16s %18s %18s\n" "$ranks" "$zero" "$tps" "$optim" "$comm" "$theory"
done
