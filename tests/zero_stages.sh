#!/usr/bin/env bash
# ZeRO stages 0-3 under mpirun, on the CPU backend:
#   - 1, 2 and 3 ranks x stages 0-3 (GPT-2), the same global batch: loss curves within 1e-5 of
#     1 rank at stage 0 over 20 steps;
#   - stages 2 and 3 add in the same order: bit-identical losses and weights on 2 ranks;
#   - a Llama with an untied head and a LoRA run: 3 ranks at stages 2 and 3 against 1 rank;
#   - checkpoints keep one layout: saved at step 10 under stage 3 on 3 ranks, resumed under stage
#     1 on 2 ranks and stage 0 on 1; saved under stage 0 on 1 rank, resumed under stage 3 on 3;
#     each ends where the uninterrupted run ends (1e-5);
#   - communication per step against theory: stage 3 moves the weights three more times than
#     stage 1 (forward and backward gathers) and stage 2 reduces every micro-batch.
# usage: zero_stages.sh CTRAIN MPIEXEC
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
tiny_run "$tmp" 5 100 '"checkpoint": {"every": 10, "keep": 5},'

# run NAME RANKS [--set ...]: trains into $tmp/NAME; global batch 12 = micro 2 x accum x ranks
run() {
  local name=$1 ranks=$2
  shift 2
  if ! "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
      --set "parallel.grad_accum=$((6 / ranks))" "$@" > "$tmp/$name.log" 2>&1; then
    bad "run $name ($ranks ranks) exited non-zero:"
    tail -20 "$tmp/$name.log" >&2
  fi
}

losses() { grep -o '"loss": [-0-9.e+]*' "$1/metrics.jsonl" | awk '{print $2}'; }

# same A B TOL: loss curves within TOL relative, step for step
same() {
  local la lb worst
  la=$(losses "$tmp/$1") || true
  lb=$(losses "$tmp/$2") || true
  if [ "$(wc -l <<<"$la")" -ne 20 ] || [ "$(wc -l <<<"$lb")" -ne 20 ]; then
    bad "$1 vs $2: expected 20 steps of losses"
    return 0
  fi
  worst=$(paste <(echo "$la") <(echo "$lb") | awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r } END { printf "%.3g", m }')
  if awk -v w="$worst" -v t="$3" 'BEGIN { exit !(w <= t) }'; then ok "$1 vs $2: worst relative loss difference $worst (tolerance $3)"
  else bad "$1 vs $2: worst relative loss difference $worst > $3"; fi
}

for ranks in 1 2 3; do
  for stage in 0 1 2 3; do run "g${ranks}z$stage" "$ranks" --set "parallel.zero_stage=$stage"; done
done
for ranks in 1 2 3; do
  for stage in 0 1 2 3; do [ "$ranks$stage" == 10 ] || same "g${ranks}z$stage" g1z0 1e-5; done
done
same g2z2 g2z3 0
if cmp -s "$tmp/g2z2/model.safetensors" "$tmp/g2z3/model.safetensors"; then ok "stages 2 and 3 wrote identical weights"
else bad "stages 2 and 3 wrote different weights"; fi

llama=(--set model.arch=llama --set model.n_kv_head=1 --set model.tie_embeddings=false)
run l1z0 1 "${llama[@]}" --set parallel.zero_stage=0
run l3z2 3 "${llama[@]}" --set parallel.zero_stage=2
run l3z3 3 "${llama[@]}" --set parallel.zero_stage=3
same l3z2 l1z0 1e-5
same l3z3 l1z0 1e-5
# LoRA on the GPT-2 trained above (its adapters on every linear of the blocks)
lora=(--set "model.init_from=$tmp/g1z0" --set lora.targets=all-linear --set lora.r=4 --set lora.alpha=8)
run a1z0 1 "${lora[@]}" --set parallel.zero_stage=0
run a2z2 2 "${lora[@]}" --set parallel.zero_stage=2
run a3z3 3 "${lora[@]}" --set parallel.zero_stage=3
same a2z2 a1z0 1e-5
same a3z3 a1z0 1e-5

# resume NAME FROM RANKS STAGE [--set ...]: FROM's directory, latest pointed back at step 10, resumed
resume() {
  local name=$1 from=$2 ranks=$3 stage=$4
  shift 4
  cp -r "$tmp/$from" "$tmp/$name"
  rm -f "$tmp/$name"/model.safetensors "$tmp/$name"/adapter_model.safetensors "$tmp/$name"/ckpt_00000020.h5
  echo ckpt_00000010.h5 > "$tmp/$name/latest"
  run "$name" "$ranks" --set "parallel.zero_stage=$stage" "$@"
  if grep -q "resumed from .*ckpt_00000010.h5 at step 10" "$tmp/$name.log"; then ok "$name: resumed from step 10"
  else bad "$name: did not resume from step 10"; fi
}
resume g3z3to2z1 g3z3 2 1
resume g3z3to1z0 g3z3 1 0
resume g1z0to3z3 g1z0 3 3
for r in g3z3to2z1 g3z3to1z0 g1z0to3z3; do same "$r" g1z0 1e-5; done
resume l3z3to1z0 l3z3 1 0 "${llama[@]}"
same l3z3to1z0 l1z0 1e-5
resume a3z3to2z1 a3z3 2 1 "${lora[@]}"
same a3z3to2z1 a1z0 1e-5

# a damaged /model under stage 3, where each rank reads and checks only its slice (the checksums
# summed across ranks): refused, naming the file, on every rank
cp -r "$tmp/g3z3" "$tmp/g3z3bad"
rm -f "$tmp/g3z3bad"/model.safetensors "$tmp/g3z3bad"/ckpt_00000020.h5
echo ckpt_00000010.h5 > "$tmp/g3z3bad/latest"
f=$tmp/g3z3bad/ckpt_00000010.h5
at=$(( $(stat -c %s "$f") * 15 / 100 ))
od -An -v -tu1 -j "$at" -N 64 "$f" | awk '{ for (i = 1; i <= NF; i++) printf "%c", 255 - $i }' > "$tmp/flip"
LC_ALL=C dd if="$tmp/flip" of="$f" bs=1 seek="$at" conv=notrunc status=none
if "$mpiexec" -n 3 --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/g3z3bad" \
    --set parallel.grad_accum=2 --set parallel.zero_stage=3 > "$tmp/g3z3bad.log" 2>&1; then
  bad "a damaged checkpoint resumed under stage 3"
elif grep -q "ckpt_00000010.h5.*\(checksum mismatch\|corrupt\|cannot read\)" "$tmp/g3z3bad.log"; then
  ok "stage 3 refuses a damaged /model: $(grep -o 'ckpt_00000010.h5: [^:]*: [a-z ]*' "$tmp/g3z3bad.log" | head -1)"
else
  bad "stage 3 resume of a damaged checkpoint failed without naming it: $(grep error "$tmp/g3z3bad.log" | head -2)"
fi

# bytes per step and rank (the run's own count) against theory, 3 ranks, P = the padded buffer:
# stage 1: reduce-scatter + all-gather = 2P; stage 2: one reduction per micro-batch (2) + all-
# gather = 3P; stage 3: two reductions, and a gather of every unit for each micro-batch's forward
# and of every unit but the embeddings for its backward (they hold the tied LM head's weight,
# which stays from the forward to the backward's end) = 6P - 2E, E = wte + wpe = 257 x 32 + 32 x 32
# floats in tiny_run.sh's GPT-2. Evaluation and checkpoints add a little.
mib() { grep -o '[0-9.]* MiB passed to collectives' "$tmp/$1.log" | awk '{print $1}'; }
flat=$(grep -o 'flat buffer [0-9]* floats' "$tmp/g3z1.log" | awk '{print $3 * 4 / 1048576}')
embed=$(awk 'BEGIN { print (257 * 32 + 32 * 32) * 4 / 1048576 }')
for pair in "g3z1 2 0" "g3z2 3 0" "g3z3 6 2"; do
  set -- $pair
  got=$(mib "$1")
  if awk -v g="$got" -v p="$flat" -v k="$2" -v e="$embed" -v j="$3" \
      'BEGIN { t = k * p - j * e; exit !(g >= t * 0.99 && g <= t * 1.1) }'; then
    ok "$1: $got MiB per step, theory $2 x $flat - $3 x $embed MiB"
  else
    bad "$1: $got MiB per step, theory $2 x $flat - $3 x $embed MiB"
  fi
done
exit $((failures > 0))
