#!/usr/bin/env bash
# What ctrain train guards in its run directory:
#   1. one job per run.dir: while a train runs, a second on the same run.dir (1 process, and 2
#      ranks under mpirun) exits 1 naming the directory, with one message; after kill -9 of the
#      first, a new train starts (the lock died with its holder) and finishes;
#   2. never over its inputs: run.dir equal to or inside model.init_from (a folder; through a
#      symbolic link; through ".."), the folder of model.init_from's checkpoint, or lora.init_from
#      is refused naming run.dir and the key, and the input folder is left byte for byte as it was
#      (no run.dir made inside it, no lock file);
#   3. a failed or refused start (a corrupt latest checkpoint, a locked run.dir, a refused resume,
#      a missing model.init_from) leaves every file of an existing run.dir as it was, ctrain.json
#      included, though --set changed the config;
#   4. a resume goes on with what it resumes: other data (another file; the same path prepared
#      again from other text), another data.seq_len, another global batch (micro_batch,
#      grad_accum), another model shape, LoRA rank or full-vs-LoRA are each refused naming the key
#      (and checkpoint.allow_new_data where a change is legitimate); the same data copied elsewhere,
#      and other ranks with the same global batch, resume; checkpoint.allow_new_data=true
#      continues on new data and with a new batch.
# usage: run_dir_guards.sh CTRAIN [MPIEXEC]   (without MPIEXEC the 2-rank cases are skipped)
set -u
ctrain=$1
mpiexec=${2:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
bg=
trap '[ -n "$bg" ] && kill -KILL $bg 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 2 1000 '"checkpoint": {"every": 5},'

# train NAME RANKS ARGS...: ctrain train into $tmp/NAME; sets rc, output in $tmp/NAME.log
train() {
  local name=$1 ranks=$2
  shift 2
  rc=0
  if [ "$ranks" -gt 1 ]; then
    timeout 120 "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
      "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  else
    timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  fi
}

# refused NAME WHAT NEEDLE...: the last train exited 1 with exactly one "ctrain: error:" line,
# holding every NEEDLE
refused() {
  local name=$1 what=$2 n line
  shift 2
  n=$(grep -c "^ctrain: error:" "$tmp/$name.log")
  line=$(grep -m1 "^ctrain: error:" "$tmp/$name.log")
  local missing=
  for needle in "$@"; do grep -qF -- "$needle" <<<"$line" || missing="$missing [$needle]"; done
  if [ "$rc" -eq 1 ] && [ "$n" -eq 1 ] && [ -z "$missing" ]; then
    ok "$what: ${line:0:200}"
  else
    bad "$what: exit $rc, $n error line(s), missing$missing:"
    grep -v "^ctrain: config" "$tmp/$name.log" | tail -5 >&2
  fi
}

# snapshot DIR: every file's name and checksum
snapshot() { (cd "$1" && find . | sort | while read -r f; do if [ -f "$f" ]; then md5sum "$f"; else echo "$f/"; fi; done); }
# unchanged WHAT DIR BEFORE: DIR's snapshot is BEFORE
unchanged() {
  local now
  now=$(snapshot "$2")
  if [ "$now" == "$3" ]; then ok "$1: $(basename "$2") left as it was ($(grep -c . <<<"$3") entries)"; else
    bad "$1: $(basename "$2") changed:"
    diff <(echo "$3") <(echo "$now") >&2
  fi
}

# ---------------------------------------------------------------- 1. one job per run.dir
d=$tmp/busy
"$ctrain" train "$tmp/base.json" --set "run.dir=$d" --set optim.max_steps=100000000 \
  --set optim.warmup_steps=1 --set checkpoint.every=0 > "$tmp/busy_first.log" 2>&1 &
bg=$!
for ((i = 0; i < 1000; i++)); do
  [ -s "$d/metrics.jsonl" ] && break
  kill -0 "$bg" 2>/dev/null || break
  sleep 0.02
done
if ! [ -s "$d/metrics.jsonl" ]; then
  bad "the first train never started: $(tail -3 "$tmp/busy_first.log")"
else
  train busy 1 --set optim.max_steps=5
  refused busy "a second train on a run.dir in use" "run.dir: \"$d\" is in use by another ctrain train" "ctrain.lock"
  if [ -n "$mpiexec" ]; then
    train busy 2 --set optim.max_steps=5
    refused busy "a second train, 2 ranks, on a run.dir in use" "run.dir: \"$d\" is in use"
  fi
  kill -KILL "$bg"
  wait "$bg" 2>/dev/null
  bg=
  train busy 1 --set optim.max_steps=5
  if [ "$rc" -eq 0 ] && grep -q "^ctrain: done" "$tmp/busy.log" && [ -f "$d/ctrain.lock" ]; then
    ok "after kill -9 of the holder, a new train on the run.dir starts and finishes (ctrain.lock stays, unlocked)"
  else
    bad "after kill -9 of the holder, a new train failed: exit $rc: $(grep "error" "$tmp/busy.log")"
  fi
fi

# ---------------------------------------------------------------- 2. never over the inputs
train good 1 --set optim.max_steps=10
[ "$rc" -eq 0 ] || { bad "training the first model: exit $rc"; tail "$tmp/good.log" >&2; exit 1; }
train adapters 1 --set "model.init_from=$tmp/good" --set lora.targets=c_attn --set optim.max_steps=5
[ "$rc" -eq 0 ] || { bad "training adapters: exit $rc"; tail "$tmp/adapters.log" >&2; exit 1; }
good_before=$(snapshot "$tmp/good")
adapters_before=$(snapshot "$tmp/adapters")
ln -s "$tmp/good" "$tmp/good_link"
for case in "good|good|model.init_from=$tmp/good|is the same folder as model.init_from" \
            "good_link|good link|model.init_from=$tmp/good|is the same folder as model.init_from" \
            "good/../good|good/../good|model.init_from=$tmp/good|is the same folder as model.init_from" \
            "good/sub/run|good/sub/run|model.init_from=$tmp/good|is inside model.init_from" \
            "good_link/sub|good_link/sub|model.init_from=$tmp/good_link|is inside model.init_from" \
            "good|good|model.init_from=$tmp/good/ckpt_00000010.h5|is the folder of model.init_from's checkpoint" \
            "adapters|adapters|lora.init_from=$tmp/adapters|is the same folder as lora.init_from" \
            "adapters/x|adapters/x|lora.init_from=$tmp/adapters|is inside lora.init_from"; do
  IFS='|' read -r dir what set needle <<<"$case"
  rc=0
  timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$dir" --set "$set" \
    $([[ $set == lora* ]] && echo "--set model.init_from=$tmp/good") > "$tmp/inputs.log" 2>&1 || rc=$?
  refused inputs "run.dir $what, $set" "run.dir: \"$tmp/$dir\" $needle"
done
unchanged "inputs" "$tmp/good" "$good_before"
unchanged "inputs" "$tmp/adapters" "$adapters_before"

# ---------------------------------------------------------------- 3. a failed start changes nothing
# (good: checkpoints 5 and 10, latest, ctrain.json, metrics.jsonl, weights, ctrain.lock)
cp -r "$tmp/good" "$tmp/kept"
before=$(snapshot "$tmp/kept")
train kept 1 --set optim.max_steps=20 --set optim.lr=2e-3 --set model.init_from="$tmp/nowhere"
refused kept "a missing model.init_from" "$tmp/nowhere"
unchanged "a missing model.init_from" "$tmp/kept" "$before"
train kept 1 --set optim.max_steps=20 --set optim.lr=2e-3 --set data.seq_len=16
refused kept "a refused resume" "data.seq_len: 16"
unchanged "a refused resume" "$tmp/kept" "$before"
# a corrupt latest checkpoint (half of it), found only when it is read
truncate -s $(($(stat -c %s "$tmp/kept/ckpt_00000010.h5") / 2)) "$tmp/kept/ckpt_00000010.h5"
before=$(snapshot "$tmp/kept")
train kept 1 --set optim.max_steps=20 --set optim.lr=2e-3
refused kept "a corrupt latest checkpoint" "ckpt_00000010.h5"
unchanged "a corrupt latest checkpoint" "$tmp/kept" "$before"

# ---------------------------------------------------------------- 4. a resume checks what it resumes
# a checkpoint (step 10 of 20) of a 2-rank run, global batch 2 x 2 x 2 = 8, to resume from
ranks=1
[ -n "$mpiexec" ] && ranks=2
train src $ranks --set optim.max_steps=10 --set parallel.grad_accum=$((4 / ranks))
ck=$tmp/src/ckpt_00000010.h5
[ "$rc" -eq 0 ] && [ -f "$ck" ] || { bad "the run to resume from: exit $rc"; tail "$tmp/src.log" >&2; exit 1; }
src_before=$(snapshot "$tmp/src")
# resume NAME RANKS ARGS...: a fresh run.dir resuming from $ck, max_steps 12
resume() {
  local name=$1 ranks=$2
  shift 2
  rm -rf "${tmp:?}/$name"
  train "$name" "$ranks" --set "model.init_from=$ck" --set optim.max_steps=12 "$@"
}
accum=(--set parallel.grad_accum=$((4 / ranks)))
resume r_val $ranks "${accum[@]}" --set "data.train=$tmp/val.h5"
refused r_val "other data" "data.train: \"$tmp/val.h5\" is not the data the checkpoint $ck was trained on" \
  "checkpoint.allow_new_data=true"
resume r_len $ranks "${accum[@]}" --set data.seq_len=16
refused r_len "another data.seq_len" "data.seq_len: 16, but the checkpoint $ck was trained on windows of 32" \
  "checkpoint.allow_new_data=true"
resume r_mb $ranks "${accum[@]}" --set data.micro_batch=4
refused r_mb "another data.micro_batch" "data.micro_batch: the global batch is 16 sequences" \
  "trained with 8" "checkpoint.allow_new_data=true"
resume r_ga 1 --set parallel.grad_accum=2
refused r_ga "another global batch on another world size" "parallel.grad_accum: the global batch is 4 sequences" \
  "keep micro_batch x grad_accum x ranks at 8" "parallel.grad_accum=4 on 1 rank"
mkdir "$tmp/r_model"
cp "$ck" "$tmp/r_model/"
echo ckpt_00000010.h5 > "$tmp/r_model/latest"
train r_model 1 --set optim.max_steps=12 --set parallel.grad_accum=4 --set model.n_embd=64
refused r_model "another model shape" "model.n_embd: 64, but the checkpoint $tmp/r_model/ckpt_00000010.h5 holds a model with n_embd 32"
# LoRA: another rank; full training resumed as LoRA
train lora_src 1 --set "model.init_from=$tmp/good" --set lora.targets=c_attn --set lora.r=4 --set optim.max_steps=5
lck=$tmp/lora_src/ckpt_00000005.h5
if [ "$rc" -eq 0 ] && [ -f "$lck" ]; then
  lora_before=$(snapshot "$tmp/lora_src")
  train lora_src 1 --set "model.init_from=$tmp/good" --set lora.targets=c_attn --set lora.r=8 --set optim.max_steps=8
  refused lora_src "another LoRA rank" "lora.r: 8, but the checkpoint $lck holds adapters of rank 4"
  train lora_src 1 --set "model.init_from=$tmp/good" --set optim.max_steps=8
  refused lora_src "full training resumed from adapters" "lora.targets: this config trains the whole model, but the checkpoint $lck holds LoRA adapters"
  unchanged "refused LoRA resumes" "$tmp/lora_src" "$lora_before"
else
  bad "the LoRA run to resume from: exit $rc"
fi
unchanged "refused resumes" "$tmp/src" "$src_before"

# the same data under another path, and the same global batch on other ranks: they resume
cp "$tmp/train.h5" "$tmp/train_copy.h5"
resume r_copy 1 --set parallel.grad_accum=4 --set "data.train=$tmp/train_copy.h5"
if [ "$rc" -eq 0 ] && grep -q "resumed from $ck at step 10 " "$tmp/r_copy.log"; then
  ok "the same data copied elsewhere, on 1 rank with the same global batch (1 x 2 x 4 = $ranks x 2 x $((4 / ranks))): resumed"
else
  bad "the same data copied elsewhere, same global batch: exit $rc: $(grep error "$tmp/r_copy.log")"
fi
# the same path prepared again from other text: refused (the checkpoint knows the data's identity)
mkdir "$tmp/d2"
cp "$tmp/train.h5" "$tmp/d2/train.h5"
resume r_d2 1 --set parallel.grad_accum=4 --set "data.train=$tmp/d2/train.h5" --set optim.max_steps=11
ck2=$tmp/r_d2/ckpt_00000011.h5
head -c 100000 "$tmp/text.txt" > "$tmp/d2/text.txt"
timeout 60 "$ctrain" prepare "$tmp/base.json" --set "data.text=$tmp/d2/text.txt" --set "data.train=$tmp/d2/train.h5" \
  --set "data.val=$tmp/d2/val.h5" > /dev/null 2>&1
if [ -f "$ck2" ]; then
  train r_d2 1 --set parallel.grad_accum=4 --set "data.train=$tmp/d2/train.h5" --set optim.max_steps=12
  refused r_d2 "the same path prepared from other text" "data.train: \"$tmp/d2/train.h5\" is not the data the checkpoint $ck2" \
    "now " "checkpoint.allow_new_data=true"
else
  bad "r_d2: no checkpoint at step 11: $(grep error "$tmp/r_d2.log")"
fi
# checkpoint.allow_new_data: new data from its beginning, and another batch
resume r_new 1 --set parallel.grad_accum=4 --set "data.train=$tmp/d2/train.h5" --set checkpoint.allow_new_data=true
if [ "$rc" -eq 0 ] && grep -q "changed since the checkpoint, as checkpoint.allow_new_data allows: data.train: .*from its beginning" "$tmp/r_new.log"; then
  ok "checkpoint.allow_new_data=true: new data, resumed at step 10 and finished"
else
  bad "checkpoint.allow_new_data=true with new data: exit $rc: $(grep "error\|changed since" "$tmp/r_new.log")"
fi
resume r_batch 1 --set parallel.grad_accum=2 --set checkpoint.allow_new_data=true
if [ "$rc" -eq 0 ] && grep -q "allows: global batch: 4 sequences, was 8; the data goes on from the same share of its epoch" "$tmp/r_batch.log"; then
  ok "checkpoint.allow_new_data=true: another global batch, resumed and finished"
else
  bad "checkpoint.allow_new_data=true with another batch: exit $rc: $(grep "error\|changed since" "$tmp/r_batch.log")"
fi

echo "run_dir_guards: $failures failure(s)"
exit $((failures > 0))
