#!/usr/bin/env bash
# The memory plan against what the ranks use, on the CPU backend under mpirun:
#   - 1, 2 and 3 ranks x ZeRO stages 0-3, full and LoRA: each run's measured peak (VmHWM, the
#     largest rank) within 10% of the peak its plan printed;
#   - ZeRO-3's weights per rank are the model over N (within padding);
#   - `ctrain plan` prints the same plan as `train`, and a table over world sizes;
#   - a model that cannot fit is refused by train and plan before anything is allocated, naming
#     the memory and what would fit; a run that fits only with a change is told that change.
# usage: memory_plan.sh CTRAIN MPIEXEC
set -euo pipefail
ctrain=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 1 100 '"checkpoint": {"every": 2},'
# a model large enough that its buffers, not the process, make the memory: 25M parameters
big=(--set model.n_embd=512 --set model.n_layer=8 --set model.n_head=8 --set optim.max_steps=4)

run() { # NAME RANKS [--set ...]
  local name=$1 ranks=$2
  shift 2
  if ! "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "${big[@]}" \
      "$@" > "$tmp/$name.log" 2>&1; then
    bad "run $name ($ranks ranks) exited non-zero:"
    tail -20 "$tmp/$name.log" >&2
    return 0
  fi
  local planned measured
  planned=$(grep -o 'planned [0-9.]* MiB' "$tmp/$name.log" | awk '{print $2}')
  measured=$(grep -o 'peak memory per rank [0-9.]* MiB' "$tmp/$name.log" | awk '{print $5}')
  if [ -z "$planned" ] || [ -z "$measured" ]; then bad "$name: no planned and measured peak in its log"; return 0; fi
  if awk -v p="$planned" -v m="$measured" 'BEGIN { d = m - p; if (d < 0) d = -d; exit !(d <= 0.1 * p) }'; then
    ok "$name: measured $measured MiB, planned $planned MiB"
  else
    bad "$name: measured $measured MiB, planned $planned MiB (more than 10% apart)"
  fi
}

for ranks in 1 2 3; do
  for stage in 0 1 2 3; do run "g${ranks}z$stage" "$ranks" --set "parallel.zero_stage=$stage"; done
done
lora=(--set "model.init_from=$tmp/g1z0" --set lora.r=8 --set lora.targets=all-linear)
run a3z3 3 --set parallel.zero_stage=3 "${lora[@]}"
run a2z1 2 --set parallel.zero_stage=1 "${lora[@]}"

weights() { grep -m1 '^  weights' "$tmp/$1.log" | awk '{print $2}'; }
w1=$(weights g1z0)
w3=$(weights g3z3)
if awk -v a="$w1" -v b="$w3" 'BEGIN { r = 3 * b / a; exit !(r >= 0.999 && r <= 1.01) }'; then
  ok "ZeRO-3 weights per rank on 3 ranks: $w3 MiB, the model's $w1 MiB over 3"
else
  bad "ZeRO-3 weights per rank on 3 ranks: $w3 MiB, the model's $w1 MiB over 3"
fi

# ctrain plan: the plan train printed, and the table
"$mpiexec" -n 3 --oversubscribe "$ctrain" plan "$tmp/base.json" "${big[@]}" --set parallel.zero_stage=2 \
  > "$tmp/plan.log" 2>&1 || bad "ctrain plan exited non-zero: $(tail -3 "$tmp/plan.log")"
if diff <(grep -A6 'memory plan per rank' "$tmp/plan.log") <(grep -A6 'memory plan per rank' "$tmp/g3z2.log") \
    > /dev/null; then
  ok "ctrain plan prints the plan train printed (the process's own memory aside)"
else
  bad "ctrain plan and train print different plans"
fi
if grep -qE '^ +64 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$tmp/plan.log"; then ok "ctrain plan prints the table up to 64 ranks"
else bad "ctrain plan: no table row for 64 ranks"; fi

# far too large: refused at start, before the model exists, by plan and by train
huge=(--set model.n_embd=8192 --set model.n_layer=48 --set model.n_head=64)
for verb in plan train; do
  if "$ctrain" "$verb" "$tmp/base.json" --set "run.dir=$tmp/huge_$verb" "${huge[@]}" > "$tmp/huge_$verb.log" 2>&1; then
    bad "$verb of a 39B-parameter model on this machine succeeded"
  elif grep -q 'the memory plan needs .* MiB per rank .* but .* MiB are available' "$tmp/huge_$verb.log"; then
    ok "$verb refuses a 39B-parameter model, naming the memory: $(grep -o 'needs [0-9.]* MiB' "$tmp/huge_$verb.log")"
  else
    bad "$verb of a huge model failed without the plan's message: $(tail -2 "$tmp/huge_$verb.log")"
  fi
done
[ ! -e "$tmp/huge_train/model.safetensors" ] && [ ! -e "$tmp/huge_train/ctrain.json" ] \
  && ok "the refused run wrote nothing" || bad "the refused run wrote into run.dir"

# fits only with a change: a micro-batch whose activations (the CPU keeps B x heads x T x T attention
# probabilities) exceed the machine, named with the change that fits
avail_mib=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
mb=$(awk -v a="$avail_mib" 'BEGIN { b = 1; while (b * 128 < a * 1.5) b *= 2; print b }') # 128 MiB a row
"$ctrain" plan "$tmp/base.json" --set model.max_seq_len=2048 --set data.seq_len=2048 --set model.n_head=8 \
  --set "data.micro_batch=$mb" > "$tmp/change.log" 2>&1 || true
if grep -q 'these changes fit: --set data.micro_batch=' "$tmp/change.log"; then
  ok "a micro-batch of $mb x 2048 is refused with a smaller one that fits: $(grep -o 'these changes fit: [^;]*' "$tmp/change.log")"
else
  bad "a micro-batch of $mb x 2048: expected a refusal naming a smaller micro-batch: $(tail -2 "$tmp/change.log")"
fi
exit $((failures > 0))
