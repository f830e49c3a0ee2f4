#!/usr/bin/env bash
# Models bigger than memory, on the CPU backend:
#   1. Llama-3.2-1B's shape (random weights; vocab 128256, width 2048, 16 layers, 32 heads, 8 kv
#      heads, MLP 8192, tied), micro-batch 1 x SEQ: `ctrain plan`'s peak per rank for 1 to 8 ranks
#      and ZeRO stages 0-3, with model.recompute none and block (planned only: stage 0 alone needs
#      about 20 GiB on one rank, more than a 24 GiB machine shared by several ranks holds);
#   2. measured: the same width with 2 layers and a 32000 vocabulary (203M parameters) on 1, 2 and
#      4 ranks x stages 0-3 x recompute none and block: peak memory per rank (VmHWM, the largest
#      rank) against the plan, bytes handed to collectives per step against theory (P = the padded
#      flat buffer, A = micro-batches per step, E = the tied embeddings: stage 0 P, 1 2P, 2 (A+1)P,
#      3 A(3P - E); here A = 1), and tokens/s.
#      model.recompute=block is measured on 2 ranks only unless FULL=1.
# usage: bench/run_zero.sh   (env: SEQ=128 STEPS=3 FULL=0 CTRAIN_BUILD=build)
set -euo pipefail
cd "$(dirname "$0")/.."
seq=${SEQ:-128}
steps=${STEPS:-3}
build=${CTRAIN_BUILD:-build}
ctrain=$build/train/ctrain
cmake --build "$build" --target ctrain -j "$(nproc)" >/dev/null
bash launch/corpus.sh >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc --all) cores, $(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo) GiB"

cat > "$tmp/llama.json" <<JSON
{
  "run": {"seed": 1, "device": "cpu"},
  "model": {"arch": "llama", "vocab_size": 128256, "max_seq_len": 2048, "n_layer": 16, "n_head": 32,
            "n_kv_head": 8, "n_embd": 2048, "n_inner": 8192, "rope_theta": 500000, "tie_embeddings": true},
  "data": {"text": "datasets/kjv.txt", "tokenizer": "bytes", "train": "$tmp/train.h5", "val": "$tmp/val.h5",
           "seq_len": $seq, "micro_batch": 1},
  "optim": {"lr": 1e-4, "warmup_steps": 1, "max_steps": $steps},
  "log": {"every": 1, "eval_every": 0}
}
JSON

echo
echo "## 1. Llama-3.2-1B's shape, micro-batch 1 x $seq: planned peak per rank (MiB)"
for rc in none block; do
  echo "model.recompute $rc:"
  "$ctrain" plan "$tmp/llama.json" --set "model.recompute=$rc" 2>/dev/null | sed -n '/by world size/,$p' | head -5 || true
done

echo
echo "## 2. measured: width 2048, 2 layers, vocab 32000, micro-batch 1 x $seq, $steps steps"
"$ctrain" prepare "$tmp/llama.json" --set data.val_fraction=0.01 >/dev/null 2>&1
small=(--set model.n_layer=2 --set model.vocab_size=32000 --set data.val=) # no evaluation: its gathers would count
printf "%-5s %-5s %-9s %10s %10s %12s %12s %10s\n" ranks zero recompute "plan MiB" "VmHWM MiB" "comm MiB" "theory MiB" "tokens/s"
for ranks in 1 2 4; do
  for stage in 0 1 2 3; do
    for rc in none block; do
      # recompute's cost and saving on 2 ranks; the rest without it (the 2-core machine's time)
      [ "$rc" == none ] || [ "$ranks" == 2 ] || [ "${FULL:-0}" == 1 ] || continue
      dir=$tmp/r${ranks}z${stage}$rc
      log=$(mpirun --allow-run-as-root --oversubscribe -n "$ranks" "$ctrain" train "$tmp/llama.json" "${small[@]}" \
            --set "run.dir=$dir" --set "parallel.zero_stage=$stage" --set "model.recompute=$rc" 2>&1) || {
        printf "%-5s %-5s %-9s failed: %s\n" "$ranks" "$stage" "$rc" "$(tail -1 <<<"$log")"; continue; }
      plan=$(sed -n 's/.*planned \([0-9.]*\) MiB.*/\1/p' <<<"$log")
      hwm=$(sed -n 's/.*peak memory per rank \([0-9.]*\) MiB.*/\1/p' <<<"$log")
      comm=$(sed -n 's/.*: \([0-9.]*\) MiB passed to collectives per step.*/\1/p' <<<"$log")
      flat=$(sed -n 's/.*flat buffer \([0-9]*\) floats.*/\1/p' <<<"$log")
      # A = 1; stage 3: the tied embeddings (E = 32000 x 2048) hold the head's weight, gathered
      # once for the forward and kept through the backward
      theory=$(awk -v p="$flat" -v z="$stage" 'BEGIN { k = z == 0 ? 1 : z == 1 ? 2 : z == 2 ? 2 : 3;
               printf "%.1f", (k * p - (z == 3 ? 32000 * 2048 : 0)) * 4 / 1048576 }')
      tps=$(grep -o '"tokens_per_s": [0-9.]*' "$dir/metrics.jsonl" | awk 'NR > 1 { s += $2; n++ } END { printf "%.0f", s / n }')
      printf "%-5s %-5s %-9s %10s %10s %12s %12s %10s\n" "$ranks" "$stage" "$rc" "$plan" "$hwm" "$comm" "$theory" "$tps"
      rm -rf "$dir"
    done
  done
done
