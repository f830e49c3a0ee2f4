#!/usr/bin/env bash
# Multi-rank training equivalence, under mpirun:
#   - 1, 2 and 4 ranks with the same global batch and seed give the same loss curve (1e-5 relative,
#     20 steps), with ZeRO stage 1;
#   - ZeRO stage 0 and stage 1 agree;
#   - two runs of one config give bit-identical losses and weights;
#   - gradients reduced layer by layer during backward (parallel.overlap_comm, the default) and
#     all at once after it give identical losses and weights (2 ranks: each sum is a + b), for
#     ZeRO stages 1 and 0;
#   - an odd world size (3) trains and matches 1 rank with its global batch.
# usage: train_equivalence.sh CTRAIN MPIEXEC
set -euo pipefail
ctrain=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 5 100

# run NAME RANKS [--set ...]: trains into $tmp/NAME
run() {
  local name=$1 ranks=$2
  shift 2
  if ! "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "$@" \
      > "$tmp/$name.log" 2>&1; then
    echo "FAIL: run $name ($ranks ranks) exited non-zero:" >&2
    tail -20 "$tmp/$name.log" >&2
    failures=$((failures + 1))
    return 0
  fi
}

losses() { grep -o '"loss": [-0-9.e+]*' "$1/metrics.jsonl" | awk '{print $2}'; }

# same NAME_A NAME_B TOL: loss curves within TOL relative, step for step (TOL 0: identical text)
same() {
  local a=$1 b=$2 tol=$3
  local la lb
  la=$(losses "$tmp/$a") || true
  lb=$(losses "$tmp/$b") || true
  if [ "$(wc -l <<<"$la")" -ne 20 ] || [ "$(wc -l <<<"$lb")" -ne 20 ]; then
    echo "FAIL: $a vs $b: expected 20 steps of losses" >&2
    failures=$((failures + 1))
    return 0
  fi
  local worst
  worst=$(paste <(echo "$la") <(echo "$lb") | awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r } END { printf "%.3g", m }')
  if awk -v w="$worst" -v t="$tol" 'BEGIN { exit !(w <= t) }'; then
    echo "ok: $a vs $b: worst relative loss difference $worst (tolerance $tol)"
  else
    echo "FAIL: $a vs $b: worst relative loss difference $worst > $tol" >&2
    paste <(echo "$la") <(echo "$lb") | head -20 >&2
    failures=$((failures + 1))
  fi
}

# global batch 8 = micro 2 x accum x ranks
run r1 1 --set parallel.grad_accum=4
run r2 2 --set parallel.grad_accum=2
run r4 4 --set parallel.grad_accum=1
run r2z0 2 --set parallel.grad_accum=2 --set parallel.zero_stage=0
run r2again 2 --set parallel.grad_accum=2
run r2flat 2 --set parallel.grad_accum=2 --set parallel.overlap_comm=false
run r2z0flat 2 --set parallel.grad_accum=2 --set parallel.zero_stage=0 --set parallel.overlap_comm=false
# odd world: global batch 6
run r1g6 1 --set parallel.grad_accum=3
run r3 3 --set parallel.grad_accum=1

same r1 r2 1e-5
same r1 r4 1e-5
same r2 r2z0 1e-5
same r1g6 r3 1e-5
same r2 r2again 0
same r2 r2flat 0
same r2z0 r2z0flat 0
for pair in "r2 r2flat" "r2z0 r2z0flat"; do
  set -- $pair
  if cmp -s "$tmp/$1/model.safetensors" "$tmp/$2/model.safetensors"; then
    echo "ok: $1 and $2 (overlapped and flat reduction) wrote identical weights"
  else
    echo "FAIL: $1 and $2 (overlapped and flat reduction) wrote different weights" >&2
    failures=$((failures + 1))
  fi
done
if cmp -s "$tmp/r2/model.safetensors" "$tmp/r2again/model.safetensors"; then
  echo "ok: two runs of one config wrote identical weights"
else
  echo "FAIL: two runs of one config wrote different weights" >&2
  failures=$((failures + 1))
fi
# the loss fell
first=$(losses "$tmp/r1" | head -1)
last=$(losses "$tmp/r1" | tail -1)
if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }'; then
  echo "ok: loss fell from $first to $last"
else
  echo "FAIL: loss did not fall enough: $first -> $last" >&2
  failures=$((failures + 1))
fi
exit $((failures > 0))
