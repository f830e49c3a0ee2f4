#!/usr/bin/env bash
# cuda_train_resume.sh — ctrain end to end on a GPU (ctest -L gpu), on tiny_run.sh's corpus and model:
#   a. an uninterrupted CUDA run of 20 steps, a checkpoint every 10;
#   b. a CUDA run of 10 steps in a fresh run.dir, then the same command with optim.max_steps=20,
#      which resumes from run.dir's latest checkpoint: steps 1..20 match (a) to 1e-6 relative (the
#      CUDA kernels are deterministic, and a resume must continue exactly);
#   c. the same config on the CPU backend: step 1 (the same initial weights) within 2% and step 20
#      within 5% of the CUDA run (bf16 against fp32);
#   d. ctrain eval and ctrain sample with run.device=cuda on (a)'s finished run: eval ends with
#      "val_loss <float>", within 2% of the CPU backend's eval of the same weights; greedy sampling
#      twice gives the same text, which starts with the prompt.
# The schedule is constant after warmup: a cosine decay depends on max_steps, which (b)'s first
# leg sets to 10. Exits 77 (ctest: skipped) where nvidia-smi lists no GPU or ctrain finds no
# usable CUDA device (a build without the CUDA backend).
# usage: cuda_train_resume.sh CTRAIN [--set KEY=VALUE]...   (the --set pairs go to every ctrain
# call: e.g. --set model.arch=llama makes it a Llama)
set -euo pipefail
ctrain=$1
shift
model=("$@")
export OMP_NUM_THREADS=2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "SKIPPED: nvidia-smi lists no GPU"
  exit 77
fi

. "$(dirname "$0")/../tiny_run.sh"
tiny_run "$tmp" 5 100 '"checkpoint": {"every": 10},'

# train NAME DEVICE [--set ...]: trains into $tmp/NAME (log $tmp/NAME.log); 1 when it failed
train() {
  local name=$1 device=$2
  shift 2
  if ! timeout 300 "$ctrain" train "$tmp/base.json" "${model[@]}" --set "run.dir=$tmp/$name" \
      --set "run.device=$device" --set optim.schedule=constant "$@" > "$tmp/$name.log" 2>&1; then
    bad "run $name ($device) exited non-zero:"
    tail -20 "$tmp/$name.log" >&2
    return 1
  fi
}

# loss_at NAME STEP: the loss of STEP in $tmp/NAME/metrics.jsonl, as printed (empty if absent)
loss_at() {
  { sed -n "s/^{\"step\": $2, \"loss\": \([-0-9.e+]*\),.*/\1/p" "$tmp/$1/metrics.jsonl" 2>/dev/null || true; } | tail -1
}

# close WHAT A B TOL: |A - B| <= TOL * |B|, both printed
close() {
  local what=$1 a=$2 b=$3 tol=$4 rel
  if [ -z "$a" ] || [ -z "$b" ]; then
    bad "$what: a value is missing ('$a', '$b')"
    return 0
  fi
  rel=$(awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; printf "%.3g", (m > 0 ? d / m : d) }')
  if awk -v r="$rel" -v t="$tol" 'BEGIN { exit !(r <= t) }'; then
    ok "$what: $a vs $b (relative difference $rel, tolerance $tol)"
  else
    bad "$what: $a vs $b (relative difference $rel > $tol)"
  fi
}

# ---- a. uninterrupted, 20 steps; the first CUDA run also tells whether ctrain can use the GPU
if ! timeout 300 "$ctrain" train "$tmp/base.json" "${model[@]}" --set "run.dir=$tmp/a" --set run.device=cuda \
    --set optim.schedule=constant > "$tmp/a.log" 2>&1; then
  if grep -q "no CUDA device is usable" "$tmp/a.log"; then
    echo "SKIPPED: ctrain finds no usable CUDA device:"
    grep "no CUDA device is usable" "$tmp/a.log"
    exit 77
  fi
  bad "run a (cuda) exited non-zero:"
  tail -20 "$tmp/a.log" >&2
  exit 1
fi
if grep -q "cuda backend" "$tmp/a.log"; then ok "a: trained on the cuda backend"; else bad "a: no 'cuda backend' in its log"; fi
if [ -f "$tmp/a/ckpt_00000010.h5" ] && [ -f "$tmp/a/ckpt_00000020.h5" ] && [ -f "$tmp/a/model.safetensors" ]; then
  ok "a: checkpoints at steps 10 and 20, model.safetensors"
else
  bad "a: expected ckpt_00000010.h5, ckpt_00000020.h5 and model.safetensors; have: $(ls "$tmp/a" | tr '\n' ' ')"
fi

# ---- b. 10 steps, then resumed in place to 20
if train b cuda --set optim.max_steps=10 && mv "$tmp/b.log" "$tmp/b_first.log" &&
    train b cuda --set optim.max_steps=20; then
  if grep -q "resumed from .*ckpt_00000010.h5 at step 10 " "$tmp/b.log"; then
    ok "b: resumed from ckpt_00000010.h5 at step 10"
  else
    bad "b: no \"resumed from ...ckpt_00000010.h5 at step 10\" in its output:"
    grep -i "resum\|error" "$tmp/b.log" >&2 || tail -5 "$tmp/b.log" >&2
  fi
  worst=0
  for step in $(seq 1 20); do
    la=$(loss_at a "$step")
    lb=$(loss_at b "$step")
    if [ -z "$la" ] || [ -z "$lb" ]; then
      bad "a vs b: no loss for step $step ('$la', '$lb')"
      continue
    fi
    worst=$(awk -v a="$la" -v b="$lb" -v w="$worst" \
      'BEGIN { d = a - b; if (d < 0) d = -d; r = d / (b < 0 ? -b : b); printf "%.3g", (r > w ? r : w) }')
  done
  echo "   step 20: a $(loss_at a 20), b (resumed) $(loss_at b 20)"
  if awk -v w="$worst" 'BEGIN { exit !(w <= 1e-6) }'; then
    ok "uninterrupted vs 10 + resumed 10 on cuda: steps 1..20 within $worst relative (tolerance 1e-6)"
  else
    bad "uninterrupted vs 10 + resumed 10 on cuda: losses differ by up to $worst relative (> 1e-6):"
    paste <(grep '"loss"' "$tmp/a/metrics.jsonl" | cut -c1-60) <(grep '"loss"' "$tmp/b/metrics.jsonl" | cut -c1-60) >&2
  fi
fi

# ---- c. the CPU backend on the same config
if train cpu cpu; then
  close "step 1 loss, cuda vs cpu (same initial weights)" "$(loss_at a 1)" "$(loss_at cpu 1)" 0.02
  close "step 20 loss, cuda vs cpu" "$(loss_at a 20)" "$(loss_at cpu 20)" 0.05
fi

# ---- d. eval and sample on the GPU, from (a)'s finished run
val=()
for device in cuda cpu; do
  if timeout 300 "$ctrain" eval "$tmp/base.json" "${model[@]}" --set "run.dir=$tmp/a" --set "run.device=$device" \
      > "$tmp/eval_$device.log" 2>&1; then
    last=$(tail -1 "$tmp/eval_$device.log")
    if [[ $last =~ ^val_loss\ [0-9]+\.[0-9]+$ ]]; then
      ok "eval ($device): $last"
      val+=("${last#val_loss }")
    else
      bad "eval ($device): the last line is '$last', not 'val_loss <float>'"
    fi
  else
    bad "eval ($device) exited non-zero:"
    tail -5 "$tmp/eval_$device.log" >&2
  fi
done
if [ "${#val[@]}" -eq 2 ]; then close "eval val_loss, cuda vs cpu (same weights)" "${val[0]}" "${val[1]}" 0.02; fi

prompt="the "
for i in 1 2; do
  if ! timeout 300 "$ctrain" sample "$tmp/base.json" "${model[@]}" --set "run.dir=$tmp/a" --set run.device=cuda \
      --set "sample.prompt=$prompt" --set sample.max_tokens=60 --set sample.temperature=0 \
      > "$tmp/sample$i.txt" 2> "$tmp/sample$i.err"; then
    bad "sample (cuda, greedy, try $i) exited non-zero:"
    tail -5 "$tmp/sample$i.err" >&2
  fi
done
if [ -s "$tmp/sample1.txt" ] && cmp -s "$tmp/sample1.txt" "$tmp/sample2.txt" &&
    [ "$(head -c ${#prompt} "$tmp/sample1.txt")" == "$prompt" ]; then
  ok "sample (cuda, greedy): the same text twice: $(head -1 "$tmp/sample1.txt")"
else
  bad "sample (cuda, greedy): empty, not starting with the prompt, or different twice: '$(cat "$tmp/sample1.txt" 2>/dev/null)' | '$(cat "$tmp/sample2.txt" 2>/dev/null)'"
fi
# sampled at a temperature, longer than the model's 32 positions: the window slides
if timeout 300 "$ctrain" sample "$tmp/base.json" "${model[@]}" --set "run.dir=$tmp/a" --set run.device=cuda \
    --set "sample.prompt=$prompt" --set sample.max_tokens=80 > "$tmp/sample3.txt" 2> "$tmp/sample3.err"; then
  ok "sample (cuda, temperature 0.8): $(head -1 "$tmp/sample3.txt")"
else
  bad "sample (cuda, temperature 0.8) exited non-zero:"
  tail -5 "$tmp/sample3.err" >&2
fi

echo "cuda_train_resume: $failures failure(s)"
exit $((failures > 0))
