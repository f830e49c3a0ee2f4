#!/usr/bin/env bash
# slurm_cluster.sh — a real one-node Slurm cluster (munged, slurmctld, slurmd, all in a temporary
# folder, stopped by PID at the end) and ctrain under it:
#   1. `srun -n 2 [--mpi=pmix] ctrain train` trains as 2 ranks that find each other;
#   2. `sbatch launch/slurm.sbatch` trains to completion;
#   3. `scancel --batch --signal=USR1 JOB` mid-run: the ranks save and exit 0, the script requeues
#      the job, the requeued job resumes, and its losses equal the uninterrupted run's (2);
#   4. `scancel JOB` outright leaves the newest checkpoint readable (`ctrain export` works).
# Needs root (the daemons run as root, SlurmUser=root) and the Debian packages slurmctld, slurmd,
# slurm-client, munge and slurm-wlm-basic-plugins (launch/install-deps.sh); it tries to install
# them when missing and skips (exit 77), saying why, when it cannot.
# usage: slurm_cluster.sh CTRAIN REPO_ROOT [MPIEXEC]   (MPIEXEC empty: ctrain built without MPI)
set -u
ctrain=$(readlink -f "$1")
root=$(readlink -f "$2")
mpiexec=${3:-}
skip() { echo "SKIP slurm_cluster: $*"; exit 77; }
failures=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

[ -n "$mpiexec" ] || skip "ctrain was built without MPI: srun's ranks could not find each other"
[ "$(id -u)" -eq 0 ] || skip "needs root: munged, slurmctld and slurmd run here as root (SlurmUser=root)"
need=(slurmctld slurmd srun sbatch sinfo scontrol scancel munged)
have_all() { local c; for c in "${need[@]}"; do command -v "$c" > /dev/null || return 1; done; }
if ! have_all; then
  echo "slurm_cluster: Slurm or munge missing; trying to install them (launch/install-deps.sh)"
  timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge slurm-wlm-basic-plugins > /dev/null 2>&1 || true
  have_all || skip "slurm-wlm (slurmctld, slurmd, slurm-client) and munge are not installed and could not be (apt-get install slurm-wlm munge, or launch/install-deps.sh)"
fi
ls /usr/lib/*/slurm-wlm/mpi_pmi*.so > /dev/null 2>&1 ||
  skip "Slurm's MPI plugins (mpi_pmix, mpi_pmi2) are missing: install slurm-wlm-basic-plugins"

tmp=$(mktemp -d /tmp/ctrain-slurm.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  local p
  # jobs first (they run under slurmd), then the daemons, each by the PID it was started with
  [ -n "${SLURM_CONF:-}" ] && timeout 10 scancel --full --signal=KILL -u root > /dev/null 2>&1
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2> /dev/null; done
  for p in "${pids[@]+"${pids[@]}"}"; do
    for _ in $(seq 50); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$p" 2> /dev/null
  done
  if [ "$failures" -gt 0 ] || [ -n "${KEEP_SLURM_TMP:-}" ]; then
    echo "slurm_cluster: logs kept in $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# -- munge: a fresh key, the daemon on a socket in $tmp ------------------------------------
mkdir -m 700 "$tmp/munge"
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$tmp/munge/munge.key"
msock=$tmp/munge/munge.socket
munged --force --key-file="$tmp/munge/munge.key" --socket="$msock" --pid-file="$tmp/munge/munged.pid" \
  --log-file="$tmp/munge/munged.log" --seed-file="$tmp/munge/munged.seed" > "$tmp/munge/start.log" 2>&1 ||
  skip "munged would not start: $(tail -3 "$tmp/munge/start.log" "$tmp/munge/munged.log" 2>/dev/null | tr '\n' ' ')"
pids+=("$(cat "$tmp/munge/munged.pid")")

# -- slurm.conf for this host ------------------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc --all)
mem=$(awk '/^MemTotal/ { m = int($2 / 1024) - 1024; if (m < 512) m = 512; print m }' /proc/meminfo)
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/log"
# a ctest run inside a Slurm job must not hand that job's variables to this cluster's clients
for v in $(compgen -v SLURM_); do unset "$v"; done
export SLURM_CONF=$tmp/slurm.conf
write_conf() {
  cat > "$SLURM_CONF" <<CONF
ClusterName=ctraintest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$msock
SlurmctldPort=$1
SlurmdPort=$2
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=$3
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}
# ports not taken by another cluster on this machine
port=$((20000 + RANDOM % 20000))
write_conf "$port" "$((port + 1))" none
mpi=none
if srun --mpi=list 2>&1 | grep -qw pmix; then
  mpi=pmix
elif srun --mpi=list 2>&1 | grep -qw pmi2; then
  mpi=pmi2
fi
write_conf "$port" "$((port + 1))" "$mpi"
echo "slurm_cluster: node $host, $cpus CPUs, ${mem} MB, MpiDefault=$mpi, ports $port-$((port + 1)), in $tmp"
[ "$mpi" != none ] || skip "srun --mpi=list offers neither pmix nor pmi2: $(srun --mpi=list 2>&1 | tr '\n' ' ')"

slurmctld -f "$SLURM_CONF" -i > "$tmp/log/slurmctld.start" 2>&1
for _ in $(seq 50); do [ -s "$tmp/slurmctld.pid" ] && break; sleep 0.2; done
[ -s "$tmp/slurmctld.pid" ] && pids+=("$(cat "$tmp/slurmctld.pid")")
slurmd -f "$SLURM_CONF" -N "$host" > "$tmp/log/slurmd.start" 2>&1
for _ in $(seq 50); do [ -s "$tmp/slurmd.pid" ] && break; sleep 0.2; done
[ -s "$tmp/slurmd.pid" ] && pids+=("$(cat "$tmp/slurmd.pid")")
state=
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null)
  [ "$state" = idle ] && break
  sleep 1
done
if [ "$state" != idle ]; then
  tail -5 "$tmp/log/slurmctld.log" "$tmp/log/slurmd.log" "$tmp/log/"*.start >&2
  bad "the node did not come up idle (sinfo: '$state')"
  exit 1
fi
ok "one-node cluster up: $(sinfo -h -o '%P %D %T %C')"

# -- ctrain under it ---------------------------------------------------------------------------
# Open MPI refuses root unless told; sbatch and srun pass this environment on to the job
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
. "$root/tests/tiny_run.sh"
tiny_run "$tmp" 5 1
steps=${SLURM_TEST_STEPS:-400}
cfg=$tmp/base.json
losses() { grep -o '"loss": [0-9.e+-]*' "$1/metrics.jsonl" 2>/dev/null; }
# job_state JOB: its state (PENDING, RUNNING, COMPLETED, CANCELLED...) and restart count
job_state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_restarts() { scontrol show job "$1" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }
# wait_lines DIR N SECS: until DIR/metrics.jsonl has N lines
wait_lines() {
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    [ "$(cat "$1/metrics.jsonl" 2>/dev/null | wc -l)" -ge "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
sb() { (cd "$tmp" && CTRAIN=$ctrain CONFIG=$cfg sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
  --time=15 --output="$tmp/job-%j.out" "$@"); }

# 1. srun -n 2: two ranks that find each other
if timeout 180 srun -n 2 -c 1 --mpi="$mpi" "$ctrain" train "$cfg" --set run.dir="$tmp/srun" > "$tmp/srun.log" 2>&1 &&
  grep -q 'x 2 ranks' "$tmp/srun.log" && [ -f "$tmp/srun/model.safetensors" ]; then
  ok "srun -n 2 --mpi=$mpi: trained as 2 ranks: $(grep -o '[0-9]* tokens per step.*ranks' "$tmp/srun.log" | head -1)"
else
  bad "srun -n 2 --mpi=$mpi ctrain train:"; tail -5 "$tmp/srun.log" >&2
fi

# 2. sbatch launch/slurm.sbatch, uninterrupted: the reference run
job=$(sb --wait "$root/launch/slurm.sbatch" --set run.dir="$tmp/straight" --set optim.max_steps="$steps")
rc=$?
if [ "$rc" -eq 0 ] && [ -f "$tmp/straight/model.safetensors" ] && grep -q 'x 2 ranks' "$tmp/job-$job.out" &&
  [ "$(losses "$tmp/straight" | wc -l)" -eq "$steps" ]; then
  ok "sbatch launch/slurm.sbatch: job $job trained $steps steps as 2 ranks and finished ($(job_state "$job"))"
else
  bad "sbatch launch/slurm.sbatch: job $job, sbatch --wait exit $rc, $(losses "$tmp/straight" | wc -l) losses:"
  tail -8 "$tmp/job-$job.out" >&2
fi

# 3. scancel --batch --signal=USR1 mid-run: save, exit 0, requeue, resume, the same losses
job=$(sb "$root/launch/slurm.sbatch" --set run.dir="$tmp/pre" --set optim.max_steps="$steps")
if wait_lines "$tmp/pre" 5 120; then
  scancel --batch --signal=USR1 "$job"
  for _ in $(seq 300); do
    st=$(job_state "$job")
    [ "$st" = COMPLETED ] || [ "$st" = FAILED ] || [ "$st" = CANCELLED ] || [ "$st" = TIMEOUT ] && break
    sleep 1
  done
  log=$tmp/job-$job.out
  if [ "$st" = COMPLETED ] && [ "$(job_restarts "$job")" -ge 1 ] && grep -q 'requeueing job' "$log" &&
    grep -q 'resumed from' "$log" && [ -f "$tmp/pre/model.safetensors" ]; then
    ok "USR1 to job $job's script: checkpointed, requeued ($(job_restarts "$job") restart), $(grep -o 'resumed from [^ ]*' "$log" | head -1), completed"
  else
    bad "USR1 to job $job: state '$st', restarts $(job_restarts "$job"):"; tail -12 "$log" >&2
  fi
  if [ "$(losses "$tmp/pre" | wc -l)" -eq "$steps" ] &&
    cmp -s <(losses "$tmp/pre") <(losses "$tmp/straight"); then
    ok "preempted + requeued job's losses equal the uninterrupted job's, step for step"
  else
    bad "preempted job's losses differ from the uninterrupted job's ($(losses "$tmp/pre" | wc -l) vs $(losses "$tmp/straight" | wc -l) lines)"
  fi
else
  bad "job $job never logged 5 steps: state $(job_state "$job")"; tail -5 "$tmp/job-$job.out" >&2
fi

# 4. scancel outright: the newest checkpoint stays readable
job=$(sb "$root/launch/slurm.sbatch" --set run.dir="$tmp/kill" --set optim.max_steps="$steps" --set checkpoint.every=5)
if wait_lines "$tmp/kill" 12 120; then
  scancel "$job"
  for _ in $(seq 60); do
    st=$(job_state "$job")
    [ "$st" = RUNNING ] || [ "$st" = COMPLETING ] || [ "$st" = PENDING ] || break
    sleep 1
  done
  ck=$(cat "$tmp/kill/latest" 2>/dev/null)
  if [ "$st" = CANCELLED ] && [ -n "$ck" ] && [ -f "$tmp/kill/$ck" ] &&
    "$ctrain" export "$tmp/kill/$ck" "$tmp/kill-export" > "$tmp/export.log" 2>&1; then
    ok "scancel $job ($st): newest checkpoint $ck exports: $(ls "$tmp/kill-export" | tr '\n' ' ')"
  else
    bad "scancel $job: state '$st', latest '$ck':"; tail -3 "$tmp/export.log" >&2
  fi
else
  bad "job $job never logged 12 steps: state $(job_state "$job")"; tail -5 "$tmp/job-$job.out" >&2
fi
exit $((failures > 0))
