#!/usr/bin/env bash
# NaN and Inf stop a run; nothing broken is applied or saved:
#   1. a Hugging Face folder with one NaN weight, fully fine-tuned on 2 ranks (a checkpoint every
#      step): exit 1 naming step 1, no checkpoint, no final weights, the step marked "nonfinite"
#      in metrics.jsonl (JSON: null, never nan); the same with an Inf weight on 1 rank;
#   2. ctrain eval of that folder: exit 1 with a message, no val_loss line;
#   3. a LoRA run with good checkpoints at steps 5 and 10, resumed on 2 ranks with a learning
#      rate and weight decay that blow its adapters up (lr 10, decay 10: each step scales them by
#      -99) until its loss is not finite at some step S: it stops at S; the checkpoints, `latest`
#      and the adapters are byte-identical afterwards, and no checkpoint of a later step exists
#      (the base cannot be poisoned instead: a LoRA run refuses another base);
#   4. the same with optim.skip_nonfinite=3: steps S to S+2 are skipped (warned, marked in
#      metrics.jsonl; the state stays that of step S-1, so they are not finite either), step S+3
#      stops the run ("4 such steps"), nothing is saved.
# usage: train_nonfinite.sh CTRAIN [MPIEXEC]   (without MPIEXEC, every run is one process)
set -u
ctrain=$1
mpiexec=${2:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 2 1

# train NAME RANKS ARGS...: ctrain train into $tmp/NAME on RANKS ranks (mpirun when there is one);
# sets rc, output in $tmp/NAME.log
train() {
  local name=$1 ranks=$2
  shift 2
  rc=0
  if [ -n "$mpiexec" ] && [ "$ranks" -gt 1 ]; then
    timeout 120 "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
      "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  else
    timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  fi
}

# poison FILE TENSOR INDEX BYTES: element INDEX of the F32 tensor TENSOR in the safetensors FILE
# becomes BYTES (printf escapes, little-endian)
poison() {
  local f=$1 name=$2 idx=$3 bytes=$4 hlen at
  hlen=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
  at=$(head -c $((8 + hlen)) "$f" | tail -c "$hlen" | grep -o "\"$name\":{[^}]*}" |
    sed -n 's/.*"data_offsets":\[\([0-9]*\),.*/\1/p')
  [ -n "$at" ] || { bad "poison: no tensor $name in $f"; return 1; }
  # shellcheck disable=SC2059 # BYTES holds printf escapes on purpose
  printf "$bytes" | dd of="$f" bs=1 seek=$((8 + hlen + at + 4 * idx)) conv=notrunc status=none
}
NAN='\x00\x00\xc0\x7f'
INF='\x00\x00\x80\x7f'

# stopped NAME STEP WHAT: the run exited 1 and its error names STEP and says "not finite"
stopped() {
  local name=$1 step=$2 what=$3
  if [ "$rc" -eq 1 ] && grep -q "^ctrain: error: step $step: .*not finite" "$tmp/$name.log"; then
    ok "$what: exit 1, $(grep -m1 "^ctrain: error:" "$tmp/$name.log" | cut -c1-140)..."
  else
    bad "$what: expected exit 1 and \"ctrain: error: step $step: ... not finite\"; exit $rc:"
    grep -v "^ctrain: config" "$tmp/$name.log" | tail -5 >&2
  fi
  if grep -q "nan\|inf" "$tmp/$name/metrics.jsonl" 2>/dev/null; then
    bad "$what: metrics.jsonl holds nan or inf, which is not JSON"
  fi
}

# snapshot DIR: every file's name and checksum
snapshot() { (cd "$1" && find . -type f | sort | xargs md5sum); }

# ---- a good model: a Hugging Face folder
train good 1 --set optim.max_steps=6
[ "$rc" -eq 0 ] && [ -f "$tmp/good/model.safetensors" ] || { bad "training the base model: exit $rc"; tail "$tmp/good.log"; exit 1; }
mkdir "$tmp/nan_model" "$tmp/inf_model"
for d in nan_model inf_model; do cp "$tmp/good/model.safetensors" "$tmp/good/config.json" "$tmp/$d/"; done
poison "$tmp/nan_model/model.safetensors" transformer.h.1.mlp.c_fc.weight 5 "$NAN"
poison "$tmp/inf_model/model.safetensors" transformer.wte.weight 40 "$INF"

# ---- 1. fine-tuning a poisoned folder
for case in "nan_model 2" "inf_model 1"; do
  set -- $case
  name=ft_$1
  train "$name" "$2" --set "model.init_from=$tmp/$1" --set checkpoint.every=1
  stopped "$name" 1 "${1%_model} weight, $2 rank(s)"
  if compgen -G "$tmp/$name/ckpt_*" > /dev/null || [ -e "$tmp/$name/model.safetensors" ]; then
    bad "$name: a checkpoint or weights were written: $(ls "$tmp/$name" | tr '\n' ' ')"
  else
    ok "$name: no checkpoint, no weights written"
  fi
  if grep -q '^{"step": 1, "loss": null, .*"grad_norm": null, .*"nonfinite": true}$' "$tmp/$name/metrics.jsonl" 2>/dev/null; then
    ok "$name: metrics.jsonl marks step 1 nonfinite"
  else
    bad "$name: metrics.jsonl does not mark step 1 nonfinite: $(cat "$tmp/$name/metrics.jsonl" 2>/dev/null)"
  fi
done

# ---- 2. eval of the poisoned folder
rc=0
out=$(timeout 60 "$ctrain" eval "$tmp/base.json" --set "run.dir=$tmp/none" --set "model.init_from=$tmp/nan_model" 2>&1) || rc=$?
if [ "$rc" -eq 1 ] && grep -q "^ctrain: error: $tmp/nan_model: val_loss nan on data.val .* is not finite" <<<"$out" &&
    ! grep -q "^val_loss" <<<"$out"; then
  ok "eval of a NaN weight: exit 1, $(grep "^ctrain: error" <<<"$out" | cut -c1-120)..."
else
  bad "eval of a NaN weight: exit $rc: $out"
fi

# ---- 3 and 4. good checkpoints, then the base turns bad
lora=(--set "model.init_from=$tmp/base_ok" --set lora.targets=c_attn,c_fc --set lora.r=4 --set checkpoint.every=5)
for skip in 0 3; do
  name=lora_skip$skip
  rm -rf "$tmp/base_ok"
  mkdir "$tmp/base_ok"
  cp "$tmp/good/model.safetensors" "$tmp/good/config.json" "$tmp/base_ok/"
  train "$name" 2 "${lora[@]}" --set optim.max_steps=10
  if [ "$rc" -ne 0 ] || [ ! -f "$tmp/$name/ckpt_00000010.h5" ]; then
    bad "$name: the good run failed (exit $rc)"
    continue
  fi
  before=$(snapshot "$tmp/$name" | grep -v "metrics.jsonl\|ctrain.json\|tfevents")
  mv "$tmp/$name.log" "$tmp/$name.first.log"
  skipping=()
  [ "$skip" -gt 0 ] && skipping=(--set optim.skip_nonfinite=$skip) # 0: the default
  train "$name" 2 "${lora[@]}" --set optim.max_steps=40 "${skipping[@]}" --set optim.lr=10 \
    --set optim.weight_decay=10 --set optim.grad_clip=0 --set optim.warmup_steps=0 --set optim.schedule=constant \
    --set checkpoint.every=1000
  if [ "$skip" -eq 0 ]; then # S: where the blow-up first gives a non-finite loss
    first=$(sed -n 's/^ctrain: error: step \([0-9]*\): .*not finite.*/\1/p' "$tmp/$name.log" | head -1)
    [ -n "$first" ] && [ "$first" -gt 10 ] || { bad "$name: no non-finite step after 10"; first=11; }
  fi
  stop=$((first + skip))
  stopped "$name" $stop "resumed with lr 10 and weight decay 10 (first non-finite step $first), optim.skip_nonfinite $skip"
  after=$(snapshot "$tmp/$name" | grep -v "metrics.jsonl\|ctrain.json\|tfevents")
  if [ "$before" == "$after" ]; then
    ok "$name: checkpoints 5 and 10, latest and the adapters byte-identical, nothing new"
  else
    bad "$name: run.dir changed:"
    diff <(echo "$before") <(echo "$after") >&2
  fi
  marked=$(grep -c '"nonfinite": true' "$tmp/$name/metrics.jsonl")
  warned=$(grep -c "^ctrain: warning: step [0-9]*: .*not finite: the step is skipped" "$tmp/$name.log")
  if [ "$marked" -eq $((skip + 1)) ] && [ "$warned" -eq "$skip" ] &&
      { [ "$skip" -eq 0 ] || grep -q "$((skip + 1)) such steps, optim.skip_nonfinite allows $skip" "$tmp/$name.log"; }; then
    ok "$name: $skip step(s) skipped and warned, $marked marked nonfinite in metrics.jsonl"
  else
    bad "$name: $marked steps marked nonfinite, $warned warnings (expected $((skip + 1)) and $skip)"
  fi
done

echo "train_nonfinite: $failures failure(s)"
exit $((failures > 0))
