#!/usr/bin/env bash
# Checkpoint cost on the bench model (GPT-2: 6 layers, width 384, 6 heads, vocab 50257, 8 x 256
# tokens per rank): save time, load (resume) time and file size with 1 and 2 ranks, against the
# time of one training step. Needs the quickstart's datasets (bash launch/quickstart.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ctrain=${CTRAIN_BUILD:-build}/train/ctrain
cmake --build "${CTRAIN_BUILD:-build}" --target ctrain -j "$(nproc)" >/dev/null
model=(--set model.n_layer=6 --set model.n_embd=384 --set model.n_head=6 --set model.vocab_size=50257
       --set model.max_seq_len=256 --set data.seq_len=256 --set data.micro_batch=8 --set data.val=
       --set optim.warmup_steps=1 --set log.every=1)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; disk: $(df -h . | awk 'NR==2 {print $1}')"
printf "%-6s %10s %10s %10s %12s %14s\n" ranks "step s" "save s" "load s" "file MiB" "save / step"
for ranks in 1 2; do
  dir=runs/bench_ckpt_r$ranks
  rm -rf "$dir"
  log=$(bash launch/mpirun.sh -n "$ranks" -- "$ctrain" train configs/quickstart.json --set run.device=cpu --set run.dir="$dir" \
        "${model[@]}" --set optim.max_steps=3 --set checkpoint.every=1 --set checkpoint.keep=3 2>&1)
  step=$(grep -o '"ms": [0-9.]*' "$dir/metrics.jsonl" | awk 'NR > 1 { s += $2; n++ } END { printf "%.2f", s / n / 1000 }')
  save=$(grep -o 'checkpoint .*(\([0-9.]*\) s)' <<<"$log" | sed 's/.*(\([0-9.]*\) s)/\1/' | awk 'NR > 1 { s += $1; n++ } END { printf "%.2f", s / n }')
  size=$(du -m "$dir/ckpt_00000003.h5" | cut -f1)
  # resume from step 2's checkpoint and run step 3 again: the load time is printed
  log2=$(bash launch/mpirun.sh -n "$ranks" -- "$ctrain" train configs/quickstart.json --set run.device=cpu --set run.dir="$dir.resume" \
        "${model[@]}" --set optim.max_steps=3 --set model.init_from="$dir/ckpt_00000002.h5" 2>&1)
  load=$(sed -n 's/.*loaded in \([0-9.]*\) s.*/\1/p' <<<"$log2")
  rm -rf "$dir.resume"
  printf "%-6s %10s %10s %10s %12s %14s\n" "$ranks" "$step" "$save" "$load" "$size" \
    "$(awk -v a="$save" -v b="$step" 'BEGIN { printf "%.2f", a / b }')"
done
