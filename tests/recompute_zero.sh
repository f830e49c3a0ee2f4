#!/usr/bin/env bash
# Activation recompute and the chunked loss under ZeRO-3, under mpirun: 3 ranks with
# model.recompute=block and model.loss_chunk=256 (micro-batches of 384 tokens: two chunks of the
# LM head) give
#   - the losses and weights of the same 3 ranks without either, bit for bit (both change no bit
#     on the cpu), and
#   - the losses of 1 rank without either on the same global batch (1e-5 relative: another
#     summation order across ranks),
# for GPT-2 (the tied head's weight in the embeddings' unit) and an untied Llama (the head in the
# final unit).
# usage: recompute_zero.sh CTRAIN MPIEXEC
set -euo pipefail
ctrain=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 5 100

# run NAME RANKS [--set ...]: trains into $tmp/NAME (global batch 36 = micro 12 x accum x ranks)
run() {
  local name=$1 ranks=$2
  shift 2
  if ! "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
      --set data.micro_batch=12 --set parallel.grad_accum=$((3 / ranks)) "$@" > "$tmp/$name.log" 2>&1; then
    echo "FAIL: run $name ($ranks ranks) exited non-zero:" >&2
    tail -20 "$tmp/$name.log" >&2
    failures=$((failures + 1))
  fi
}

losses() { grep -o '"loss": [-0-9.e+]*' "$1/metrics.jsonl" | awk '{print $2}'; }

# same A B TOL: loss curves within TOL relative, step for step (TOL 0: identical text)
same() {
  local a=$1 b=$2 tol=$3 la lb worst
  la=$(losses "$tmp/$a") || true
  lb=$(losses "$tmp/$b") || true
  if [ "$(wc -l <<<"$la")" -ne 20 ] || [ "$(wc -l <<<"$lb")" -ne 20 ]; then
    echo "FAIL: $a vs $b: expected 20 steps of losses" >&2
    failures=$((failures + 1))
    return 0
  fi
  worst=$(paste <(echo "$la") <(echo "$lb") | awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r } END { printf "%.3g", m }')
  if [ "$tol" = 0 ] && [ "$la" = "$lb" ] || [ "$tol" != 0 ] && awk -v w="$worst" -v t="$tol" 'BEGIN { exit !(w <= t) }'; then
    echo "ok: $a vs $b: worst relative loss difference $worst (tolerance $tol)"
  else
    echo "FAIL: $a vs $b: worst relative loss difference $worst > $tol" >&2
    paste <(echo "$la") <(echo "$lb") | head -20 >&2
    failures=$((failures + 1))
  fi
}

saving="--set model.recompute=block --set model.loss_chunk=256"
plain="--set model.recompute=none --set model.loss_chunk=0"
llama="--set model.arch=llama --set model.tie_embeddings=false"
# shellcheck disable=SC2086
{
  run g1 1 $plain
  run g3 3 --set parallel.zero_stage=3 $plain
  run g3rc 3 --set parallel.zero_stage=3 $saving
  run l1 1 $llama $plain
  run l3 3 --set parallel.zero_stage=3 $llama $plain
  run l3rc 3 --set parallel.zero_stage=3 $llama $saving
}
for f in g l; do
  same ${f}3 ${f}3rc 0
  same ${f}1 ${f}3rc 1e-5
  if cmp -s "$tmp/${f}3/model.safetensors" "$tmp/${f}3rc/model.safetensors"; then
    echo "ok: ${f}3 and ${f}3rc (recompute, chunked loss) wrote identical weights"
  else
    echo "FAIL: ${f}3 and ${f}3rc (recompute, chunked loss) wrote different weights" >&2
    failures=$((failures + 1))
  fi
done
exit $((failures > 0))
