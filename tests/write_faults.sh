#!/usr/bin/env bash
# Every write checked: a full disk or a file-size limit while ctrain writes its small files and
# exports stops it with an error naming the file, and loses nothing that was complete before.
#   1. metrics.jsonl past a file-size limit (ulimit -f; writes fail with EFBIG): the run exits 1
#      naming metrics.jsonl, never says "done", writes no checkpoint or weights, and leaves `latest`,
#      its checkpoint and the earlier weights byte-identical; the same command without the limit
#      then resumes and metrics.jsonl holds every step exactly once;
#   2. the same on rank 0 of 2 ranks (mpirun MPMD): the job ends within the timeout, no rank is
#      left, the error names metrics.jsonl;
#   2b. a checkpoint larger than rank 0's file-size limit, on 1 and 2 ranks: refused before HDF5
#      starts (HDF5 crashes at exit after a failed close), exit 1 naming the file, `latest` kept;
#   3. a full disk (a tmpfs with one free page, in a private mount namespace; skipped where
#      mounting is not allowed): metrics.jsonl fails with ENOSPC as in 1; with no free page the
#      resume fails rewriting ctrain.json, which keeps its old content; with two, the checkpoint
#      is refused as in 2b;
#   4. exports: `ctrain export` into a tmpfs with room for the weights alone (config.json does not
#      fit), and a PEFT export with room for the adapters alone, and an export under a file-size
#      limit: exit 1 naming the file, and the folder holds no file (no half-written model
#      presented as complete, no .tmp left).
#   5. standard output on /dev/full: train stops naming its log, eval exits 1 (val_loss unwritten);
# usage: write_faults.sh CTRAIN [MPIEXEC]   (without MPIEXEC, part 2 is skipped)
set -euo pipefail
ctrain=$1
mpiexec=${2:-}
# a private mount namespace for the tmpfs of parts 3 and 4: it goes away with the script
if [ -z "${CT_WRITE_FAULTS_NS:-}" ] && unshare -m --propagation private true 2> /dev/null; then
  CT_WRITE_FAULTS_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
mounts=()
cleanup() {
  local m
  for m in "${mounts[@]}"; do umount "$m" 2> /dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
t_script=$SECONDS
hang=60

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
check() { # check WHAT COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 1 100

# run_rc NAME CMD...: runs CMD under a timeout into $tmp/NAME.log; sets rc and secs
run_rc() {
  local name=$1 t=$SECONDS
  shift
  rc=0
  timeout -k 10 "$hang" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  secs=$((SECONDS - t))
}
# error_names NAME TEXT: a "ctrain: error:" line of $tmp/NAME.log holds TEXT
error_names() {
  if grep -q "^ctrain: error: .*$2" "$tmp/$1.log"; then
    ok "$1: $(grep -m1 "^ctrain: error:" "$tmp/$1.log")"
  else
    bad "$1: no \"ctrain: error:\" line naming $2:"
    grep -v "^ctrain: config" "$tmp/$1.log" | tail -6 >&2
  fi
}
# failed NAME: the run ended non-zero, without a hang and without saying "done"
failed() {
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    bad "$1: HANG: still running after $hang s (rc $rc)"
  elif [ "$rc" -eq 0 ]; then
    bad "$1: exited 0 (expected a failure)"
  else
    ok "$1: exited $rc after $secs s"
  fi
  if grep -q "^ctrain: done" "$tmp/$1.log"; then bad "$1: said \"done\" after a failed write"; fi
}
# snapshot DIR: copies of latest, its checkpoint, the weights and ctrain.json;
# unchanged NAME DIR: latest, the checkpoint and the weights byte-identical, no other checkpoint
snapshot() {
  rm -rf "$1.snap" && mkdir "$1.snap"
  cp "$1/latest" "$1/$(cat "$1/latest")" "$1/model.safetensors" "$1/ctrain.json" "$1.snap/"
}
unchanged() {
  local f all=1 ckpts
  for f in latest "$(cat "$2.snap/latest")" model.safetensors; do
    if ! cmp -s "$2.snap/$f" "$2/$f"; then
      bad "$1: $f changed or vanished"
      all=0
    fi
  done
  [ "$all" -eq 1 ] && ok "$1: latest ($(cat "$2/latest")), its checkpoint and the weights byte-identical"
  ckpts=$(cd "$2" && ls ckpt_*.h5)
  if [ "$ckpts" == "$(cat "$2/latest")" ]; then ok "$1: no other checkpoint written"; else
    bad "$1: checkpoints now: $ckpts"; fi
  return 0
}
# every_step_once NAME DIR N: metrics.jsonl holds the loss lines of steps 1..N, in order, each once
every_step_once() {
  local got
  got=$(awk -F'"step": ' '/"loss"/ { split($2, a, ","); printf "%s ", a[1] }' "$2/metrics.jsonl")
  if [ "$got" == "$(seq -s ' ' 1 "$3") " ]; then ok "$1: metrics.jsonl holds steps 1..$3 once each"; else
    bad "$1: metrics.jsonl steps: ${got:0:200}..."; fi
}
# first DIR: 10 steps with a checkpoint at 10, the start of every case
first() {
  if ! timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$1" --set optim.max_steps=10 \
      --set checkpoint.every=10 > "$1.first.log" 2>&1; then
    bad "$(basename "$1"): the first run failed:"
    tail -3 "$1.first.log" >&2
    return 1
  fi
  snapshot "$1"
}
# a resume that runs long enough for metrics.jsonl to pass 8 KiB; no checkpoint before the end
long=(--set optim.max_steps=400 --set checkpoint.every=1000 --set log.every=100)

# ---------------------------------------------------------------- 1. EFBIG on metrics.jsonl
name=metrics_efbig
d=$tmp/$name
if first "$d"; then
  # shellcheck disable=SC2016 # $0 and $@ are bash -c's own
  run_rc $name bash -c 'ulimit -f 8; exec "$@"' 8 "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "${long[@]}"
  failed $name
  error_names $name "metrics.jsonl: write failed: File too large"
  unchanged $name "$d"
  run_rc $name.again "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "${long[@]}"
  if [ "$rc" -eq 0 ] && grep -q "resumed from $d/ckpt_00000010.h5" "$tmp/$name.again.log"; then
    ok "$name: the same command without the limit resumes from step 10 and finishes"
    every_step_once $name "$d" 400
  else
    bad "$name: the resume without the limit failed (rc $rc):"
    tail -3 "$tmp/$name.again.log" >&2
  fi
fi

# ---------------------------------------------------------------- 2. on rank 0 of 2
name=metrics_rank0
d=$tmp/$name
if [ -z "$mpiexec" ]; then
  echo "skip: $name: no mpiexec given"
elif first "$d"; then
  # 2 ranks of micro-batch 1: the global batch the 1-rank first run trained with (a resume checks it)
  args=(train "$tmp/base.json" --set "run.dir=$d" "${long[@]}" --set data.micro_batch=1)
  # shellcheck disable=SC2016
  run_rc $name "$mpiexec" --oversubscribe -n 1 bash -c 'ulimit -f 8; exec "$@"' 8 "$ctrain" "${args[@]}" \
    : -n 1 "$ctrain" "${args[@]}"
  failed $name
  error_names $name "rank 0: .*metrics.jsonl: write failed"
  sleep 0.2
  left=$(pgrep -f "run.dir=$d( |$)" | tr '\n' ' ') || true
  if [ -z "$left" ]; then ok "$name: no process of the job left"; else
    bad "$name: processes left: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2> /dev/null || true
  fi
  unchanged $name "$d"
fi

# ---------------------------------------------------------------- 2b. a checkpoint that cannot fit
# rank 0 lays the file out with HDF5, which crashes at exit after a failed close: ctrain refuses a
# checkpoint it can see will not fit before HDF5 starts, and exits 1, not on a signal
for ranks in 1 2; do
  name=ckpt_efbig_$ranks
  d=$tmp/$name
  if [ "$ranks" -eq 2 ] && [ -z "$mpiexec" ]; then echo "skip: $name: no mpiexec given"; continue; fi
  first "$d" || continue
  args=(train "$tmp/base.json" --set "run.dir=$d" --set optim.max_steps=12 --set checkpoint.every=12
    --set data.micro_batch=$((2 / ranks))) # the global batch of the 1-rank first run
  # shellcheck disable=SC2016
  limited=(bash -c 'ulimit -f 64; exec "$@"' 64 "$ctrain" "${args[@]}")
  if [ "$ranks" -eq 1 ]; then
    run_rc $name "${limited[@]}"
  else
    run_rc $name "$mpiexec" --oversubscribe -n 1 "${limited[@]}" : -n 1 "$ctrain" "${args[@]}"
  fi
  failed $name
  check "$name: exit 1, not a crash (exit $rc)" test "$rc" -eq 1
  error_names $name "ckpt_00000012.h5.tmp: the checkpoint needs about .* MiB, more than the file-size limit"
  unchanged $name "$d"
done

# ---------------------------------------------------------------- 3 and 4: a full disk (tmpfs)
# tmpfs NAME BYTES: a tmpfs of BYTES (whole pages) at $tmp/NAME; 1 when mounting is not allowed
tmpfs() {
  mkdir -p "$tmp/$1"
  if mount -t tmpfs -o "size=$2" tmpfs "$tmp/$1" 2> /dev/null; then
    mounts+=("$tmp/$1")
    return 0
  fi
  return 1
}
# fill DIR PAGES: a filler file leaves PAGES pages of 4 KiB free on DIR's file system
fill() {
  local avail
  avail=$(df --output=avail -B4096 "$1" | tail -1)
  if [ "$avail" -gt "$2" ]; then
    dd if=/dev/zero of="$1/filler" bs=4096 count=$((avail - $2)) status=none
  fi
}
pages() { echo $((($(stat -c %s "$1") + 4095) / 4096)); }

if ! tmpfs probe 64k; then
  echo "skip: parts 3 and 4: mounting a tmpfs is not allowed here"
else
  # full_disk NAME PAGES ARGS...: the first run on a fresh tmpfs, PAGES pages left free, then a
  # resume with ARGS that must fail; sets name and d
  full_disk() {
    name=$1
    d=$tmp/$name/run
    local free=$2
    shift 2
    tmpfs "$name" 8m && first "$d" || return 1
    fill "$tmp/$name" "$free"
    run_rc "$name" "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "$@"
    failed "$name"
    unchanged "$name" "$d"
  }
  # 3a. ENOSPC on metrics.jsonl: one free page after the first run
  if full_disk metrics_enospc 1 "${long[@]}"; then
    error_names $name "metrics.jsonl: write failed: No space left on device"
    rm "$tmp/$name/filler"
    run_rc $name.again "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "${long[@]}"
    if [ "$rc" -eq 0 ]; then every_step_once $name "$d" 400; else bad "$name: the resume with room failed (rc $rc)"; fi
  fi
  # 3b. no free page: the resume cannot rewrite ctrain.json, which keeps its content
  if full_disk ctrain_json_enospc 0 "${long[@]}"; then
    error_names $name "ctrain.json"
    check "$name: ctrain.json keeps its content" cmp -s "$d.snap/ctrain.json" "$d/ctrain.json"
  fi
  # 3c. two free pages: the checkpoint at step 12 does not fit, and is refused before it starts
  if full_disk ckpt_enospc 2 --set optim.max_steps=12 --set checkpoint.every=12; then
    check "$name: exit 1, not a crash (exit $rc)" test "$rc" -eq 1
    error_names $name "ckpt_00000012.h5.tmp: the checkpoint needs about .* MiB and the file system has"
  fi

  # 4. exports into a full disk
  d=$tmp/export_src
  if first "$d"; then
    ck=$d/$(cat "$d/latest")
    timeout 60 "$ctrain" export "$ck" "$tmp/export_ok" > /dev/null
    # room for model.safetensors alone: config.json does not fit
    name=export_enospc
    tmpfs $name $(($(pages "$tmp/export_ok/model.safetensors") * 4096))
    run_rc $name "$ctrain" export "$ck" "$tmp/$name/out"
    failed $name
    error_names $name "$tmp/$name/out/"
    check "$name: the folder holds no file ($(ls -A "$tmp/$name/out" 2> /dev/null | tr '\n' ' '))" \
      test -z "$(ls -A "$tmp/$name/out" 2> /dev/null)"
    # a PEFT export: room for adapter_model.safetensors alone
    lora=(--set "model.init_from=$d" --set lora.targets=c_attn --set lora.r=4 --set optim.max_steps=2)
    if timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/lora" "${lora[@]}" > "$tmp/lora.log" 2>&1 &&
        timeout 60 "$ctrain" export "$tmp/lora/$(cat "$tmp/lora/latest")" "$tmp/lora_ok" > /dev/null; then
      name=export_peft_enospc
      tmpfs $name $(($(pages "$tmp/lora_ok/adapter_model.safetensors") * 4096))
      run_rc $name "$ctrain" export "$tmp/lora/$(cat "$tmp/lora/latest")" "$tmp/$name/out"
      failed $name
      error_names $name "$tmp/$name/out/adapter_"
      check "$name: the folder holds no file ($(ls -A "$tmp/$name/out" 2> /dev/null | tr '\n' ' '))" \
        test -z "$(ls -A "$tmp/$name/out" 2> /dev/null)"
    else
      bad "export_peft_enospc: the LoRA run or its export failed:"
      tail -3 "$tmp/lora.log" >&2
    fi
  fi
fi

# 4b. an export under a file-size limit (no mount needed): the weights do not fit
name=export_efbig
d=$tmp/export_src
if [ -f "$d/latest" ] || first "$d"; then
  # shellcheck disable=SC2016
  run_rc $name bash -c 'ulimit -f 16; exec "$@"' 16 "$ctrain" export "$d/$(cat "$d/latest")" "$tmp/$name"
  failed $name
  error_names $name "$tmp/$name/model.safetensors"
  check "$name: the folder holds no file ($(ls -A "$tmp/$name" 2> /dev/null | tr '\n' ' '))" \
    test -z "$(ls -A "$tmp/$name" 2> /dev/null)"
fi

# ---------------------------------------------------------------- 5. the log on a full device
# /dev/full fails every write with ENOSPC: train (its log) and eval (val_loss) exit 1 naming it
name=log_full
d=$tmp/$name
if first "$d"; then
  rc=0
  timeout -k 10 "$hang" "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "${long[@]}" > /dev/full 2> "$tmp/$name.log" ||
    rc=$?
  secs=0
  failed $name
  error_names $name "standard output (the log): write failed: No space left on device"
  unchanged $name "$d"
  rc=0
  timeout -k 10 "$hang" "$ctrain" eval "$tmp/base.json" --set "run.dir=$d" > /dev/full 2> "$tmp/$name.eval.log" || rc=$?
  check "$name: eval with its output on /dev/full exits 1 (exit $rc)" test "$rc" -eq 1
  error_names $name.eval "standard output: write failed: No space left on device"
fi

echo "write_faults: $failures failure(s) in $((SECONDS - t_script)) s"
exit $((failures > 0))
