#!/usr/bin/env bash
# comm_abort.sh LIMIT_S COMMAND... — runs COMMAND (an mpirun of test_comm_abort) and passes
# when it exits non-zero within LIMIT_S seconds and no rank got past its barrier: one rank's
# ct_comm_abort must end every rank, not leave the others waiting.
set -u
limit=$1; shift
start=$(date +%s%N)
out=$(timeout --kill-after=5 "$((limit * 2))" "$@" 2>&1)
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '%s\n' "$out"
echo "comm_abort: exit status $rc after ${ms} ms"
if [ "$rc" -eq 0 ]; then echo "comm_abort: FAIL: the job exited 0 although a rank aborted"; exit 1; fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "comm_abort: FAIL: the job hung (killed by timeout)"; exit 1; fi
if printf '%s\n' "$out" | grep -q "barrier returned"; then echo "comm_abort: FAIL: a rank went on past the abort"; exit 1; fi
if [ "$ms" -gt "$((limit * 1000))" ]; then echo "comm_abort: FAIL: took over ${limit}s"; exit 1; fi
echo "comm_abort: passed"
