#!/usr/bin/env bash
# Checkpoints under faults, under mpirun:
#   1. kill -9 of one rank (rank 1, then rank 0) while a checkpoint is being written: the job
#      ends non-zero within the timeout, no rank is left, `latest` names a complete checkpoint
#      (ctrain eval loads it; the same command resumes from it) and never a *.tmp file;
#   2. an I/O error on the save: (a) on every rank (the checkpoint's .tmp path is a directory:
#      works as root, which ignores permissions); (b) on one rank only (a file-size limit,
#      ulimit -f, on rank 1 via mpirun's MPMD syntax): every rank stops non-zero without a hang,
#      "ctrain: error:" names the checkpoint file (and the failing rank), and the previous
#      checkpoint and `latest` are byte-identical to before;
#   3. a corrupt latest checkpoint (bytes flipped, or truncated): ctrain train exits 1 naming the
#      file, which is left byte-identical, and no checkpoint replaces it; also as model.init_from.
# usage: checkpoint_faults.sh CTRAIN MPIEXEC
set -euo pipefail
ctrain=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
t_script=$SECONDS
# Seconds a failing job may take to end before it counts as a hang (healthy: 1-3 s).
hang=30

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
check() { # check WHAT COMMAND...: ok when COMMAND succeeds
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 1 1
# ~3.2M parameters: a checkpoint of ~52 MB, so that saving takes a good share of each step
big=(--set model.n_embd=256 --set model.n_layer=4 --set model.n_head=4)

# train1 NAME [--set ...]: one process, no mpirun, into $tmp/NAME; 1 on failure. Its global batch
# (2 x 2 accumulation x 1 rank) is that of the 2-rank runs resuming from it (a resume refuses another)
train1() {
  local name=$1
  shift
  if ! timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" --set parallel.grad_accum=2 "$@" \
      > "$tmp/$name.setup.log" 2>&1; then
    bad "$name: setup run exited non-zero:"
    tail -5 "$tmp/$name.setup.log" >&2
    return 1
  fi
}

# child_of PID: the pid of PID's (only) child, waiting for it to appear
child_of() {
  local i c
  for ((i = 0; i < 500; i++)); do
    c=$(pgrep -P "$1" | head -1) || true
    if [ -n "$c" ]; then echo "$c"; return 0; fi
    sleep 0.01
  done
  return 1
}

# rank_pid MPIRUN_PID RANK: the pid of that rank (a child of mpirun)
rank_pid() {
  local p
  for p in $(pgrep -P "$1"); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# no_rank_left NAME: no ctrain process of run dir $tmp/NAME is still alive (kills any it finds)
no_rank_left() {
  local left
  sleep 0.2
  left=$(pgrep -f "run.dir=$tmp/$1( |$)" | tr '\n' ' ') || true
  if [ -z "$left" ]; then
    ok "$1: no process of the job left"
  else
    bad "$1: processes still alive after the job ended: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
}

# ended NAME RC SECS: the job ended (no timeout) with a non-zero exit
ended() {
  local name=$1 rc=$2 secs=$3
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && [ "$secs" -ge "$hang" ]; then
    bad "$name: HANG: the job was still running after $hang s and was killed by timeout (rc $rc)"
    grep -v "^ctrain: config" "$tmp/$name.log" | tail -8 >&2
    return 1
  elif [ "$rc" -eq 0 ]; then
    bad "$name: the job exited 0 (expected a failure)"
    return 1
  fi
  ok "$name: the job ended with exit $rc after ${secs} s"
}

# latest_ok NAME: `latest` names a complete checkpoint (ckpt_<step>.h5, present, loadable by
# ctrain eval); sets ck to its name
latest_ok() {
  local name=$1 d=$tmp/$1
  ck=$(cat "$d/latest" 2>/dev/null) || true
  if ! [[ $ck =~ ^ckpt_[0-9]{8}\.h5$ ]] || [ ! -f "$d/$ck" ]; then
    bad "$name: latest names '$ck', not a present ckpt_<step>.h5; dir: $(ls "$d" | tr '\n' ' ')"
    ck=
    return 1
  fi
  ok "$name: latest names $ck, present"
  if timeout 120 "$ctrain" eval "$tmp/base.json" --set "run.dir=$tmp/$name.eval" --set "model.init_from=$d/$ck" \
      > "$tmp/$name.eval.log" 2>&1 && tail -1 "$tmp/$name.eval.log" | grep -q '^val_loss [0-9.]*$'; then
    ok "$name: ctrain eval loads $ck: $(tail -1 "$tmp/$name.eval.log")"
  else
    bad "$name: ctrain eval of $ck failed:"
    tail -3 "$tmp/$name.eval.log" >&2
    ck=
    return 1
  fi
}

# ---------------------------------------------------------------- 1. kill -9 during a save
t0=$SECONDS
for victim in 1 0; do
  name=kill_rank$victim
  d=$tmp/$name
  cmd=("$mpiexec" -n 2 --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$d" "${big[@]}"
       --set checkpoint.every=1 --set optim.max_steps=1000)
  timeout -k 10 120 "${cmd[@]}" > "$tmp/$name.log" 2>&1 &
  tpid=$!
  mpid=$(child_of "$tpid") || true
  # wait for a complete checkpoint, then for the next one's .tmp: the kill lands mid-save
  during=0
  for ((i = 0; i < 6000; i++)); do
    if [ -f "$d/latest" ] && compgen -G "$d/ckpt_*.h5.tmp" > /dev/null; then during=1; break; fi
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.005
  done
  vpid=$(rank_pid "$mpid" "$victim") || true
  if [ -z "$vpid" ]; then
    bad "$name: no process of rank $victim found under mpirun (pid ${mpid:-?})"
    kill -TERM "$tpid" 2>/dev/null || true
    wait "$tpid" || true
    continue
  fi
  kill -KILL "$vpid"
  killed_at=$SECONDS
  tmps=$(cd "$d" && ls ckpt_*.h5.tmp 2>/dev/null | tr '\n' ' ') || true
  # give the job $hang s to end; then it hangs: stop it (timeout forwards SIGTERM to mpirun)
  while kill -0 "$tpid" 2>/dev/null && [ $((SECONDS - killed_at)) -lt "$hang" ]; do sleep 0.1; done
  kill -0 "$tpid" 2>/dev/null && kill -TERM "$tpid" 2>/dev/null
  rc=0
  wait "$tpid" || rc=$?
  secs=$((SECONDS - killed_at))
  [ "$secs" -ge "$hang" ] && rc=124
  if [ "$during" -eq 1 ]; then
    echo "   ($name: rank $victim killed while writing ${tmps:-a checkpoint})"
  else
    echo "   ($name: no .tmp seen before the kill; rank $victim killed between saves)"
  fi
  ended "$name" "$rc" "$secs" || true
  no_rank_left "$name"
  ck=
  latest_ok "$name" || true
  if [ -n "$ck" ]; then
    # the same command again, a step further: resumes from $ck (and clears leftover .tmp files)
    k=$((10#${ck:5:8}))
    next=$(printf 'ckpt_%08d.h5' $((k + 1)))
    if timeout -k 10 120 "${cmd[@]}" --set optim.max_steps=$((k + 1)) > "$tmp/$name.resume.log" 2>&1 &&
        grep -q "resumed from $d/$ck at step $k " "$tmp/$name.resume.log" &&
        [ "$(cat "$d/latest")" == "$next" ] && [ -f "$d/$next" ] && ! compgen -G "$d/*.tmp" > /dev/null; then
      ok "$name: the same command resumes from $ck, saves $next (now latest) and clears the .tmp files"
    else
      bad "$name: resuming from $ck failed:"
      grep -v "^ctrain: config" "$tmp/$name.resume.log" | tail -5 >&2
    fi
  fi
done
echo "   (part 1: $((SECONDS - t0)) s)"

# ---------------------------------------------------------------- 2. I/O errors on the save
t0=$SECONDS
# snapshot NAME: copies latest and the checkpoint it names; same_as_snapshot NAME: both unchanged
snapshot() {
  mkdir -p "$tmp/$1.snap"
  cp "$tmp/$1/latest" "$tmp/$1/$(cat "$tmp/$1/latest")" "$tmp/$1.snap/"
}
same_as_snapshot() {
  local name=$1 f all=1
  for f in "$tmp/$name.snap"/*; do
    if ! cmp -s "$f" "$tmp/$name/$(basename "$f")"; then
      bad "$name: $(basename "$f") changed or vanished after the failed save"
      all=0
    fi
  done
  [ "$all" -eq 1 ] && ok "$name: latest ($(cat "$tmp/$name.snap/latest")) and its checkpoint byte-identical to before"
  return 0
}
# error_names NAME FILE: a "ctrain: error:" line names FILE
error_names() {
  if grep -q "^ctrain: error: .*$2" "$tmp/$1.log"; then
    ok "$1: $(grep -m1 "^ctrain: error:" "$tmp/$1.log")"
  else
    bad "$1: no \"ctrain: error:\" line naming $2:"
    grep -v "^ctrain: config" "$tmp/$1.log" | tail -6 >&2
  fi
}
# run_fail SECS NAME ARGS...: runs ARGS (an mpirun line) under timeout, log $tmp/NAME.log; sets rc, secs
run_fail() {
  local limit=$1 name=$2
  shift 2
  local t=$SECONDS
  rc=0
  timeout -k 10 "$limit" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  secs=$((SECONDS - t))
}

# (a) every rank: ckpt_00000015.h5.tmp is a directory, so creating the file fails everywhere
name=io_all
if train1 $name --set optim.max_steps=10 --set checkpoint.every=5; then
  snapshot $name
  mkdir "$tmp/$name/ckpt_00000015.h5.tmp"
  run_fail "$hang" $name "$mpiexec" -n 2 --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
    --set optim.max_steps=20 --set checkpoint.every=5
  if ended $name "$rc" "$secs"; then
    error_names $name ckpt_00000015.h5
  fi
  no_rank_left $name
  same_as_snapshot $name
  check "$name: no ckpt_00000015.h5 was written" test ! -e "$tmp/$name/ckpt_00000015.h5"
fi

# (b) one rank: rank 1 runs under a file-size limit of LIMIT KiB (writes past it fail with EFBIG;
# ctrain ignores SIGXFSZ); big checkpoints (~52 MB): 20000 KiB stops rank 1 mid-file, 50000 KiB
# near its end
for limit in 20000 50000; do
  name=io_rank1_${limit}k
  if train1 $name "${big[@]}" --set optim.max_steps=2 --set checkpoint.every=1; then
    snapshot $name
    args=(train "$tmp/base.json" --set "run.dir=$tmp/$name" "${big[@]}" --set optim.max_steps=4 --set checkpoint.every=1)
    # shellcheck disable=SC2016 # $0 and $@ are bash -c's own
    run_fail "$hang" $name "$mpiexec" --oversubscribe -n 1 "$ctrain" "${args[@]}" \
      : -n 1 bash -c 'ulimit -f "$0"; exec "$@"' "$limit" "$ctrain" "${args[@]}"
    if grep -q "Killed\|signal 25\|File size limit" "$tmp/$name.log"; then
      bad "$name: a rank was killed by the file-size limit (SIGXFSZ) instead of failing with EFBIG"
    fi
    if ended $name "$rc" "$secs"; then
      error_names $name ckpt_00000003.h5
      if grep -q "^ctrain: error: rank 1:" "$tmp/$name.log"; then
        ok "$name: the error names rank 1, whose write failed"
      else
        bad "$name: the error does not name rank 1, the rank whose write failed (README: \"a message naming it\"): $(grep -m1 "^ctrain: error:" "$tmp/$name.log")"
      fi
    fi
    no_rank_left $name
    same_as_snapshot $name
    check "$name: no ckpt_00000003.h5 was written" test ! -e "$tmp/$name/ckpt_00000003.h5"
  fi
done
echo "   (part 2: $((SECONDS - t0)) s)"

# ---------------------------------------------------------------- 3. a corrupt latest checkpoint
t0=$SECONDS
# corrupt NAME HOW RANKS: HOW is flip@FRACTION (64 bytes at that fraction of the file) or truncate
corrupt() {
  local name=$1 how=$2 ranks=$3 d=$tmp/$1
  train1 "$name" --set optim.max_steps=10 --set checkpoint.every=5 || return 0
  local f=$d/ckpt_00000010.h5 sz
  sz=$(stat -c %s "$f")
  case $how in
    flip@*)
      local at
      at=$(awk -v s="$sz" -v f="${how#flip@}" 'BEGIN { printf "%d", s * f }')
      # 64 bytes, each with every bit inverted: always a change
      od -An -v -tu1 -j "$at" -N 64 "$f" | awk '{ for (i = 1; i <= NF; i++) printf "%c", 255 - $i }' > "$tmp/$name.flip"
      LC_ALL=C dd if="$tmp/$name.flip" of="$f" bs=1 seek="$at" conv=notrunc status=none
      ;;
    truncate) truncate -s $((sz / 2)) "$f" ;;
  esac
  cp "$f" "$tmp/$name.corrupt"
  cp "$d/latest" "$tmp/$name.latest"
  local before
  before=$(cd "$d" && ls ckpt_* | tr '\n' ' ')
  if [ "$ranks" -eq 1 ]; then
    run_fail "$hang" "$name" "$ctrain" train "$tmp/base.json" --set "run.dir=$d" --set optim.max_steps=20 \
      --set checkpoint.every=5 --set parallel.grad_accum=2
  else
    run_fail "$hang" "$name" "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" \
      --set "run.dir=$d" --set optim.max_steps=20 --set checkpoint.every=5
  fi
  if [ "$rc" -eq 1 ]; then
    ok "$name ($how, $ranks rank(s)): ctrain train exited 1"
  else
    bad "$name ($how, $ranks rank(s)): ctrain train exited $rc (expected 1) after $secs s"
  fi
  error_names "$name" ckpt_00000010.h5
  check "$name: the corrupt checkpoint is byte-identical afterwards" cmp -s "$f" "$tmp/$name.corrupt"
  check "$name: latest unchanged" cmp -s "$d/latest" "$tmp/$name.latest"
  local after
  after=$(cd "$d" && ls ckpt_* | tr '\n' ' ')
  if [ "$after" == "$before" ]; then
    ok "$name: no checkpoint written ($after)"
  else
    bad "$name: checkpoints were $before, now $after"
  fi
}
corrupt corrupt_mid flip@0.5 2
corrupt corrupt_model flip@0.15 1
corrupt corrupt_trunc truncate 2
# the corrupt file named by model.init_from in a fresh run dir
name=corrupt_init
if [ -f "$tmp/corrupt_mid/ckpt_00000010.h5" ]; then
  run_fail "$hang" $name "$mpiexec" -n 2 --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
    --set "model.init_from=$tmp/corrupt_mid/ckpt_00000010.h5"
  if [ "$rc" -eq 1 ]; then ok "$name: ctrain train exited 1"; else bad "$name: ctrain train exited $rc (expected 1)"; fi
  error_names $name ckpt_00000010.h5
  if compgen -G "$tmp/$name/ckpt_*" > /dev/null || [ -e "$tmp/$name/model.safetensors" ]; then
    bad "$name: a checkpoint or weights were written"
  else
    ok "$name: no checkpoint or weights written"
  fi
fi
echo "   (part 3: $((SECONDS - t0)) s)"

echo "checkpoint_faults: $failures failure(s) in $((SECONDS - t_script)) s"
exit $((failures > 0))
