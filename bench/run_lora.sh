#!/usr/bin/env bash
# LoRA vs full fine-tuning of the bench model (GPT-2: 6 layers, width 384, 6 heads, vocab 50257,
# 30M parameters) on the bundled instruction set, 8 x 128 tokens per rank per step, 2 ranks:
# tokens/s and per-rank memory (weights, gradients, optimizer state). The base is the bench
# model after one step of training from its random init (any weights do for timing).
# Needs the quickstart's corpus (bash launch/quickstart.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-30}
ctrain=${CTRAIN_BUILD:-build}/train/ctrain
cmake --build "${CTRAIN_BUILD:-build}" --target ctrain -j "$(nproc)" >/dev/null
bash launch/chat_data.sh
"$ctrain" prepare configs/lora_sft.json >/dev/null
model=(--set model.n_layer=6 --set model.n_embd=384 --set model.n_head=6 --set model.vocab_size=50257
       --set model.max_seq_len=128)
rm -rf runs/bench_lora_base
"$ctrain" train configs/quickstart.json --set run.device=cpu --set run.dir=runs/bench_lora_base "${model[@]}" --set optim.max_steps=1 \
  --set optim.warmup_steps=0 --set data.val= >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; 2 ranks; $steps steps each"
printf "%-22s %10s %12s %14s %16s\n" run "tokens/s" "weights MiB" "gradients MiB" "optimizer MiB"
for kind in full "lora r=16 all-linear"; do
  dir=runs/bench_lora_run
  rm -rf "$dir"
  extra=(--set lora.targets=)
  [ "$kind" = full ] || extra=(--set lora.targets=all-linear --set lora.r=16 --set lora.alpha=32)
  log=$(bash launch/mpirun.sh -n 2 -- "$ctrain" train configs/lora_sft.json --set run.device=cpu --set run.dir="$dir" \
        --set model.init_from=runs/bench_lora_base --set optim.max_steps="$steps" --set optim.warmup_steps=2 \
        --set log.eval_every=0 --set data.val= --set checkpoint.every=0 --set log.every=1000 "${extra[@]}" 2>&1)
  tps=$(grep -o '"tokens_per_s": [0-9.]*' "$dir/metrics.jsonl" | awk 'NR > 3 { s += $2; n++ } END { printf "%.0f", s / n }')
  mem=$(sed -n 's/.*weights \([0-9.]*\) MiB, gradients \([0-9.]*\) MiB, optimizer state \([0-9.]*\) MiB.*/\1 \2 \3/p' <<<"$log")
  read -r w g o <<<"$mem"
  printf "%-22s %10s %12s %14s %16s\n" "$kind" "$tps" "$w" "$g" "$o"
done
