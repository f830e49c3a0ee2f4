#!/usr/bin/env bash
# launch/slurm.sbatch under stand-ins for srun, scancel and scontrol: a USR1 from "Slurm" to the
# batch script reaches ctrain, which checkpoints and exits 0; the script requeues the job; the
# "requeued" job (the script run again) resumes from the checkpoint and finishes, with the same
# losses as an uninterrupted run.
# usage: slurm_requeue.sh CTRAIN REPO_ROOT
set -u
ctrain=$1
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
export OMP_NUM_THREADS=1

mkdir "$tmp/bin"
# srun: one task; drop srun's own options and run the command
printf '%s\n' '#!/usr/bin/env bash' 'while [[ $1 == --* ]]; do shift; done' 'exec "$@"' > "$tmp/bin/srun"
# scancel --signal=USR1 JOB: signal the job's steps, here this test's ctrain
printf '%s\n' '#!/usr/bin/env bash' 'pkill -USR1 -f "ctrain train $CONFIG"' > "$tmp/bin/scancel"
printf '%s\n' '#!/usr/bin/env bash' 'echo "$@" >> "$TEST_TMP/scontrol.log"' > "$tmp/bin/scontrol"
chmod +x "$tmp/bin/"*

awk 'BEGIN { srand(3); for (l = 0; l < 3000; l++) { s = ""; for (i = 0; i < 9; i++) s = s int(rand() * 500) " "; print s } }' \
  > "$tmp/text.txt"
printf '%s\n' "{ \"run\": {\"dir\": \"$tmp/run\", \"device\": \"cpu\"}," \
  " \"model\": {\"max_seq_len\": 32, \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 32}," \
  " \"data\": {\"text\": \"$tmp/text.txt\", \"train\": \"$tmp/train.h5\", \"val\": \"\", \"seq_len\": 32, \"micro_batch\": 4}," \
  " \"optim\": {\"max_steps\": 4000, \"warmup_steps\": 10}, \"log\": {\"every\": 100000} }" > "$tmp/cfg.json"
"$ctrain" prepare "$tmp/cfg.json" --set data.val="$tmp/val.h5" > /dev/null

export PATH="$tmp/bin:$PATH" TEST_TMP=$tmp CTRAIN=$ctrain CONFIG=$tmp/cfg.json SLURM_JOB_ID=4242 SLURM_CPUS_PER_TASK=1
cd "$root" || exit 1
bash launch/slurm.sbatch > "$tmp/job1.log" 2>&1 &
job=$!
sleep 1
kill -USR1 "$job" # what --signal=B:USR1 does
wait "$job"
rc=$?
if [ "$rc" -eq 0 ] && grep -q "requeue 4242" "$tmp/scontrol.log" 2>/dev/null && [ -f "$tmp/run/latest" ] &&
  [ ! -f "$tmp/run/model.safetensors" ]; then
  echo "ok: preempted job checkpointed at $(cat "$tmp/run/latest"), exited 0 and requeued itself"
else
  echo "FAIL: preempted job: exit $rc, scontrol: $(cat "$tmp/scontrol.log" 2>/dev/null)" >&2
  tail -5 "$tmp/job1.log" >&2
  failures=$((failures + 1))
fi
bash launch/slurm.sbatch > "$tmp/job2.log" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q "resumed from" "$tmp/job2.log" && [ -f "$tmp/run/model.safetensors" ] &&
  [ "$(grep -c requeue "$tmp/scontrol.log")" -eq 1 ]; then
  echo "ok: requeued job resumed and finished"
else
  echo "FAIL: requeued job: exit $rc" >&2
  tail -5 "$tmp/job2.log" >&2
  failures=$((failures + 1))
fi
# the same losses as one uninterrupted run
"$ctrain" train "$tmp/cfg.json" --set run.dir="$tmp/straight" > /dev/null 2>&1
if [ -s "$tmp/straight/metrics.jsonl" ] &&
  cmp -s <(grep -o '"loss": [0-9.]*' "$tmp/run/metrics.jsonl") <(grep -o '"loss": [0-9.]*' "$tmp/straight/metrics.jsonl"); then
  echo "ok: preempted + requeued losses equal the uninterrupted run's, step for step"
else
  echo "FAIL: losses differ from the uninterrupted run" >&2
  failures=$((failures + 1))
fi
exit $((failures > 0))
