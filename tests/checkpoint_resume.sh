#!/usr/bin/env bash
# Checkpoint and resume under mpirun:
#   1. a run resumed from its step-10 checkpoint (model.init_from=<ckpt>, a new run.dir) on the
#      same ranks continues bit-exactly: losses of steps 11..20 identical as printed, final
#      model.safetensors byte-identical (2 -> 2 ranks and 1 -> 1 rank);
#   2. resharding with the same global batch: saved by 2 resumed on 1, 2 -> 3 (global batch 12),
#      4 -> 2: steps 11..20 within 1e-5 relative of the uninterrupted run; LoRA with adapter
#      dropout resumed 2 -> 2 (exact) and 2 -> 1 (1e-5);
#   3. resume in place: `latest` pointed back at ckpt_00000015.h5 in a finished run's dir, the same
#      command resumes ("resumed from"), repeats steps 16..20 exactly and metrics.jsonl holds
#      every step once;
#   4. preemption: SIGUSR1 to mpirun (Open MPI forwards it to the ranks), and SIGTERM to a plain
#      single-process run, stop the run at a step boundary with exit 0, a checkpoint and `latest`;
#      running the command again resumes there and ends with the losses and weights of an
#      uninterrupted run.
# usage: checkpoint_resume.sh CTRAIN MPIEXEC
set -euo pipefail
ctrain=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
t_script=$SECONDS

ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

. "$(dirname "$0")/tiny_run.sh"
tiny_run "$tmp" 5 100 '"checkpoint": {"every": 10},'

# run NAME RANKS [--set ...]: trains into $tmp/NAME (log $tmp/NAME.log); 1 when it failed
run() {
  local name=$1 ranks=$2
  shift 2
  if ! timeout 120 "$mpiexec" -n "$ranks" --oversubscribe "$ctrain" train "$tmp/base.json" \
      --set "run.dir=$tmp/$name" "$@" > "$tmp/$name.log" 2>&1; then
    bad "run $name ($ranks ranks) exited non-zero:"
    tail -20 "$tmp/$name.log" >&2
    return 1
  fi
}

# losses DIR [FROM [TO]]: "step loss" lines of metrics.jsonl, as printed, steps FROM..TO
losses() {
  sed -n 's/^{"step": \([0-9]*\), "loss": \([-0-9.e+]*\),.*/\1 \2/p' "$1/metrics.jsonl" 2>/dev/null |
    awk -v a="${2:-0}" -v b="${3:-1000000000}" '$1 >= a && $1 <= b'
}

# exact WHAT A B FROM TO: the loss lines of dirs A and B for steps FROM..TO are identical text
exact() {
  local what=$1 a=$2 b=$3 from=$4 to=$5
  local la lb n=$((to - from + 1))
  la=$(losses "$tmp/$a" "$from" "$to")
  lb=$(losses "$tmp/$b" "$from" "$to")
  if [ -z "$la" ] || [ "$(wc -l <<<"$la")" -ne "$n" ] || [ "$(wc -l <<<"$lb")" -ne "$n" ]; then
    bad "$what: expected $n losses (steps $from..$to) in both $a and $b, got $(grep -c . <<<"$la") and $(grep -c . <<<"$lb")"
  elif [ "$la" == "$lb" ]; then
    ok "$what: steps $from..$to identical losses"
  else
    bad "$what: losses of steps $from..$to differ ($a | $b):"
    paste <(echo "$la") <(echo "$lb") | head -20 >&2
  fi
}

# close WHAT A B FROM TO TOL: losses of steps FROM..TO within TOL relative, step for step
close() {
  local what=$1 a=$2 b=$3 from=$4 to=$5 tol=$6
  local la lb n=$((to - from + 1)) worst
  la=$(losses "$tmp/$a" "$from" "$to")
  lb=$(losses "$tmp/$b" "$from" "$to")
  if [ -z "$la" ] || [ "$(wc -l <<<"$la")" -ne "$n" ] || [ "$(wc -l <<<"$lb")" -ne "$n" ]; then
    bad "$what: expected $n losses (steps $from..$to) in both $a and $b"
    return 0
  fi
  worst=$(paste <(echo "$la") <(echo "$lb") | awk '
    $1 != $3 { bad = 1 }
    { d = $2 - $4; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > m) m = r }
    END { if (bad) print "steps-misaligned"; else printf "%.3g", m }')
  if [ "$worst" != steps-misaligned ] && awk -v w="$worst" -v t="$tol" 'BEGIN { exit !(w <= t) }'; then
    ok "$what: steps $from..$to worst relative loss difference $worst (tolerance $tol)"
  else
    bad "$what: steps $from..$to worst relative loss difference $worst > $tol ($a | $b):"
    paste <(echo "$la") <(echo "$lb") | head -20 >&2
  fi
}

same_weights() {
  local what=$1 a=$2 b=$3
  if cmp -s "$tmp/$a/model.safetensors" "$tmp/$b/model.safetensors"; then
    ok "$what: model.safetensors byte-identical"
  else
    bad "$what: model.safetensors of $a and $b differ (or are missing)"
  fi
}

resumed_at() { # resumed_at NAME STEP: the log says it resumed at STEP
  if grep -q "resumed from .* at step $2 " "$tmp/$1.log"; then
    ok "$1: resumed at step $2"
  else
    bad "$1: no \"resumed from ... at step $2\" in its output:"
    grep -i "resum\|error" "$tmp/$1.log" >&2 || tail -5 "$tmp/$1.log" >&2
  fi
}

# ---- 1. bit-exact resume on the same ranks (global batch 8)
t0=$SECONDS
if run full2 2 --set parallel.grad_accum=2 && [ -f "$tmp/full2/ckpt_00000010.h5" ]; then
  if run res2 2 --set parallel.grad_accum=2 --set "model.init_from=$tmp/full2/ckpt_00000010.h5"; then
    resumed_at res2 10
    exact "resume 2 -> 2 ranks" full2 res2 11 20
    same_weights "resume 2 -> 2 ranks" full2 res2
  fi
else
  bad "full2: no ckpt_00000010.h5"
fi
if run full1 1 --set parallel.grad_accum=4 && [ -f "$tmp/full1/ckpt_00000010.h5" ]; then
  if run res1 1 --set parallel.grad_accum=4 --set "model.init_from=$tmp/full1/ckpt_00000010.h5"; then
    resumed_at res1 10
    exact "resume 1 -> 1 rank" full1 res1 11 20
    same_weights "resume 1 -> 1 rank" full1 res1
  fi
else
  bad "full1: no ckpt_00000010.h5"
fi
echo "   (part 1: $((SECONDS - t0)) s)"

# ---- 2. resharding, same global batch
t0=$SECONDS
if [ -f "$tmp/full2/ckpt_00000010.h5" ] &&
    run res2to1 1 --set parallel.grad_accum=4 --set "model.init_from=$tmp/full2/ckpt_00000010.h5"; then
  resumed_at res2to1 10
  close "reshard 2 -> 1 ranks" full2 res2to1 11 20 1e-5
fi
# global batch 12 = micro 2 x accum 3 x 2 ranks = micro 2 x accum 2 x 3 ranks
if run full2g12 2 --set parallel.grad_accum=3 && [ -f "$tmp/full2g12/ckpt_00000010.h5" ] &&
    run res2to3 3 --set parallel.grad_accum=2 --set "model.init_from=$tmp/full2g12/ckpt_00000010.h5"; then
  resumed_at res2to3 10
  close "reshard 2 -> 3 ranks" full2g12 res2to3 11 20 1e-5
fi
if run full4 4 --set parallel.grad_accum=1 && [ -f "$tmp/full4/ckpt_00000010.h5" ] &&
    run res4to2 2 --set parallel.grad_accum=2 --set "model.init_from=$tmp/full4/ckpt_00000010.h5"; then
  resumed_at res4to2 10
  close "reshard 4 -> 2 ranks" full4 res4to2 11 20 1e-5
fi
# LoRA with adapter dropout, base = full2's final weights: the masks follow the windows (a
# micro-batch's slot in the global batch), so a resume on other ranks matches too
lora=(--set "model.init_from=$tmp/full2" --set lora.targets=c_attn,c_fc --set lora.r=4 --set lora.dropout=0.2)
if [ -f "$tmp/full2/model.safetensors" ] && run lora2 2 --set parallel.grad_accum=2 "${lora[@]}" &&
    [ -f "$tmp/lora2/ckpt_00000010.h5" ]; then
  for to in 2 1; do
    mkdir -p "$tmp/lora2to$to"
    cp "$tmp/lora2/ckpt_00000010.h5" "$tmp/lora2to$to/"
    echo ckpt_00000010.h5 > "$tmp/lora2to$to/latest"
    if run "lora2to$to" "$to" --set parallel.grad_accum=$((4 / to)) "${lora[@]}"; then
      resumed_at "lora2to$to" 10
      if [ "$to" = 2 ]; then exact "LoRA (dropout 0.2) resume 2 -> 2 ranks" lora2 lora2to2 11 20
      else close "LoRA (dropout 0.2) reshard 2 -> 1 ranks" lora2 lora2to1 11 20 1e-5; fi
    fi
  done
fi
echo "   (part 2: $((SECONDS - t0)) s)"

# ---- 3. resume in place: latest pointed back at step 15 of a finished run
t0=$SECONDS
if run inplace 2 --set parallel.grad_accum=2 --set checkpoint.every=5; then
  d=$tmp/inplace
  mkdir -p "$tmp/inplace_orig"
  cp "$d/metrics.jsonl" "$d/model.safetensors" "$tmp/inplace_orig/"
  if [ -f "$d/ckpt_00000015.h5" ] && [ -f "$d/ckpt_00000020.h5" ] && [ "$(cat "$d/latest")" == ckpt_00000020.h5 ]; then
    ok "inplace: ckpt_00000015.h5, ckpt_00000020.h5 kept (checkpoint.keep 2), latest names step 20"
  else
    bad "inplace: expected ckpt_00000015.h5, ckpt_00000020.h5 and latest = ckpt_00000020.h5; have: $(ls "$d" | tr '\n' ' ') latest=$(cat "$d/latest" 2>/dev/null)"
  fi
  rm -f "$d/model.safetensors" "$d/ckpt_00000020.h5"
  echo ckpt_00000015.h5 > "$d/latest"
  mv "$tmp/inplace.log" "$tmp/inplace_first.log"
  if run inplace 2 --set parallel.grad_accum=2 --set checkpoint.every=5; then
    resumed_at inplace 15
    exact "resume in place" inplace_orig inplace 1 20
    same_weights "resume in place" inplace_orig inplace
    steps=$(losses "$d" | awk '{print $1}' | tr '\n' ' ')
    if [ "$steps" == "$(seq -s ' ' 1 20) " ]; then
      ok "resume in place: metrics.jsonl holds steps 1..20 once each, in order"
    else
      bad "resume in place: metrics.jsonl steps are: $steps"
    fi
    nval=$(grep -c '"val_loss"' "$d/metrics.jsonl" || true)
    if [ "$nval" -eq 1 ]; then
      ok "resume in place: one val_loss entry"
    else
      bad "resume in place: $nval val_loss entries in metrics.jsonl (expected 1)"
    fi
    if [ "$(cat "$d/latest")" == ckpt_00000020.h5 ] && [ -f "$d/ckpt_00000020.h5" ]; then
      ok "resume in place: latest names the new ckpt_00000020.h5"
    else
      bad "resume in place: latest is '$(cat "$d/latest")' after the resumed run"
    fi
  fi
fi
echo "   (part 3: $((SECONDS - t0)) s)"

# ---- 4. preemption
t0=$SECONDS
# Heavier steps than above (a few ms each) so that the signal lands mid-run.
P=300
pre=(--set "optim.max_steps=$P" --set checkpoint.every=0 --set model.n_embd=64 --set data.micro_batch=4
     --set log.every=100000)

# wait_steps DIR N PID: waits until DIR/metrics.jsonl has N lines or PID is gone
wait_steps() {
  local i
  for ((i = 0; i < 2000; i++)); do
    [ -f "$1/metrics.jsonl" ] && [ "$(wc -l < "$1/metrics.jsonl")" -ge "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
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

# stopped NAME RC: the interrupted run NAME exited 0, said so, and saved step k < P named by
# latest; sets k to that step, to "late" when the run ended before the signal, or to "" on failure
stopped() {
  local name=$1 rc=$2 d=$tmp/$1
  k=$(sed -n 's/^ctrain: stopped by a signal after step \([0-9]*\);.*/\1/p' "$tmp/$name.log")
  if [ "$rc" -ne 0 ]; then
    bad "$name: the signalled run exited $rc (expected 0):"
    tail -5 "$tmp/$name.log" >&2
    k=
    return 0
  fi
  if [ -z "$k" ]; then
    if grep -q "^ctrain: done" "$tmp/$name.log"; then
      k=late
    else
      bad "$name: no \"stopped by a signal\" message:"
      tail -5 "$tmp/$name.log" >&2
    fi
    return 0
  fi
  local want
  want=$(printf 'ckpt_%08d.h5' "$k")
  if [ "$k" -lt "$P" ] && [ -f "$d/$want" ] && [ "$(cat "$d/latest" 2>/dev/null)" == "$want" ] &&
      [ ! -e "$d/model.safetensors" ]; then
    return 0
  else
    bad "$name: stopped at step $k, but expected $want named by latest and no model.safetensors; have: $(ls "$d" | tr '\n' ' ') latest=$(cat "$d/latest" 2>/dev/null)"
    k=
  fi
}

# The reference: uninterrupted runs of the same configs.
run pre2_ref 2 "${pre[@]}" --set parallel.grad_accum=1 || true
if ! timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/pre1_ref" "${pre[@]}" \
    --set parallel.grad_accum=2 > "$tmp/pre1_ref.log" 2>&1; then
  bad "pre1_ref (one process) exited non-zero:"
  tail -5 "$tmp/pre1_ref.log" >&2
fi

# 2 ranks under mpirun, SIGUSR1 to mpirun; up to 3 tries should the signal come too late
for try in 1 2 3; do
  name=pre2
  rm -rf "${tmp:?}/$name"
  timeout 120 "$mpiexec" -n 2 --oversubscribe "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" \
    "${pre[@]}" --set parallel.grad_accum=1 > "$tmp/$name.log" 2>&1 &
  tpid=$!
  mpid=$(child_of "$tpid") || true
  if [ -n "$mpid" ] && wait_steps "$tmp/$name" 20 "$mpid"; then
    kill -USR1 "$mpid" 2>/dev/null || true
  fi
  rc=0
  wait "$tpid" || rc=$?
  stopped "$name" "$rc"
  [ "$k" != late ] && break
  echo "   (try $try: the run finished before the signal; again)"
done
if [ "$k" == late ]; then
  bad "pre2: SIGUSR1 never arrived before the end of $P steps in 3 tries"
elif [ -n "$k" ]; then
  ok "preempt 2 ranks (SIGUSR1 to mpirun): exit 0, \"stopped by a signal\", latest = ckpt at step $k < $P"
  n=$(losses "$tmp/$name" | wc -l)
  if [ "$n" -eq "$k" ]; then ok "preempt 2 ranks: metrics.jsonl has steps 1..$k"; else bad "preempt 2 ranks: metrics.jsonl has $n losses, expected $k"; fi
  mv "$tmp/$name.log" "$tmp/${name}_stop.log"
  if run "$name" 2 "${pre[@]}" --set parallel.grad_accum=1; then
    resumed_at "$name" "$k"
    exact "preempted + resumed vs uninterrupted, 2 ranks" pre2_ref "$name" 1 "$P"
    same_weights "preempted + resumed vs uninterrupted, 2 ranks" pre2_ref "$name"
  fi
fi

# one process, no mpirun, SIGTERM to the process itself
for try in 1 2 3; do
  name=pre1
  rm -rf "${tmp:?}/$name"
  timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "${pre[@]}" --set parallel.grad_accum=2 \
    > "$tmp/$name.log" 2>&1 &
  tpid=$!
  cpid=$(child_of "$tpid") || true # ctrain itself, not timeout
  if [ -n "$cpid" ] && wait_steps "$tmp/$name" 20 "$cpid"; then
    kill -TERM "$cpid" 2>/dev/null || true
  fi
  rc=0
  wait "$tpid" || rc=$?
  stopped "$name" "$rc"
  [ "$k" != late ] && break
  echo "   (try $try: the run finished before the signal; again)"
done
if [ "$k" == late ]; then
  bad "pre1: SIGTERM never arrived before the end of $P steps in 3 tries"
elif [ -n "$k" ]; then
  ok "preempt 1 process (SIGTERM): exit 0, \"stopped by a signal\", latest = ckpt at step $k < $P"
  n=$(losses "$tmp/$name" | wc -l)
  if [ "$n" -eq "$k" ]; then ok "preempt 1 process: metrics.jsonl has steps 1..$k"; else bad "preempt 1 process: metrics.jsonl has $n losses, expected $k"; fi
  mv "$tmp/$name.log" "$tmp/${name}_stop.log"
  if timeout 120 "$ctrain" train "$tmp/base.json" --set "run.dir=$tmp/$name" "${pre[@]}" \
      --set parallel.grad_accum=2 > "$tmp/$name.log" 2>&1; then
    resumed_at "$name" "$k"
    exact "preempted + resumed vs uninterrupted, 1 process" pre1_ref "$name" 1 "$P"
    same_weights "preempted + resumed vs uninterrupted, 1 process" pre1_ref "$name"
  else
    bad "pre1: the resumed run exited non-zero:"
    tail -5 "$tmp/$name.log" >&2
  fi
fi
echo "   (part 4: $((SECONDS - t0)) s)"

echo "checkpoint_resume: $failures failure(s) in $((SECONDS - t_script)) s"
exit $((failures > 0))
