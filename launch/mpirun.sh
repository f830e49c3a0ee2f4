#!/usr/bin/env bash
# mpirun.sh — starts a command on N ranks with Open MPI's mpirun, each rank on cores of its own.
#
#   launch/mpirun.sh [-n RANKS] [--hosts h1:slots,h2:slots] [--bind core|socket|none]
#                    [--cores-per-rank N] [--oversubscribe] [--dry-run] -- COMMAND [ARGS...]
#   launch/mpirun.sh -n 2 -- ctrain train configs/quickstart.json --set optim.lr=3e-4
#
# Ranks are mapped by slot (rank 0, 1, … fill the first host, then the next). With --bind core
# (the default) each rank is bound to its own PE=cores-per-rank cores and runs that many
# OpenMP threads (OMP_NUM_THREADS, passed with -x), so ranks never share cores. cores-per-rank
# defaults to the cores of this machine divided by the ranks per host: hosts are assumed alike.
# --oversubscribe is added when asked, or when ranks x cores-per-rank exceed a host's cores; the
# ranks are then left unbound (one thread each, unless --cores-per-rank says otherwise).
# Defaults: 2 ranks on this host.
# A COMMAND of `ctrain` not on PATH means ${CTRAIN_BUILD:-build}/train/ctrain in this repo.
# Other Open MPI settings go through the environment (OMPI_MCA_btl=..., etc.).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
die() { echo "mpirun.sh: $*" >&2; exit 2; }

ranks="" hosts="" bind=core cores_per_rank="" oversubscribe=0 dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    -n|--np|-np) [ $# -ge 2 ] || die "$1 needs a number"; ranks=$2; shift 2 ;;
    --hosts|-H) [ $# -ge 2 ] || die "$1 needs host:slots,host:slots"; hosts=$2; shift 2 ;;
    --bind) [ $# -ge 2 ] || die "--bind needs core, socket or none"; bind=$2; shift 2 ;;
    --cores-per-rank) [ $# -ge 2 ] || die "--cores-per-rank needs a number"; cores_per_rank=$2; shift 2 ;;
    --oversubscribe) oversubscribe=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command to run goes after --; see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no command: put it after --, e.g. launch/mpirun.sh -n 2 -- ctrain train CONFIG"
case $bind in core|socket|none) ;; *) die "--bind must be core, socket or none, not '$bind'" ;; esac
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# Ranks per host: the largest slot count named (by-slot mapping fills each host up to it).
per_host=0 total_slots=0
if [ -n "$hosts" ]; then
  IFS=, read -r -a host_list <<< "$hosts"
  for h in "${host_list[@]}"; do
    slots=1
    [[ $h == *:* ]] && slots=${h##*:}
    is_count "$slots" || die "--hosts: '$h' is not host:slots with slots a positive number"
    total_slots=$((total_slots + slots))
    [ "$slots" -gt "$per_host" ] && per_host=$slots
  done
  ranks=${ranks:-$total_slots}
fi
ranks=${ranks:-2}
is_count "$ranks" || die "-n must be a positive number of ranks, not '$ranks'"
if [ -z "$hosts" ] || [ "$ranks" -lt "$per_host" ]; then per_host=$ranks; fi

# Physical cores here (Open MPI binds to cores, not hardware threads), capped by the CPUs this
# process may use (a container or cgroup may allow fewer).
cpus=$(nproc)
cores=$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
{ [ -z "$cores" ] || [ "$cores" -eq 0 ] || [ "$cores" -gt "$cpus" ]; } && cores=$cpus

# overloaded: more cores wanted on a host than it has, so binding would stack ranks on the
# same cores; they are left unbound for the OS to spread.
overloaded=0
explicit_cpr=$cores_per_rank
if [ -n "$cores_per_rank" ]; then
  is_count "$cores_per_rank" || die "--cores-per-rank must be a positive number"
else
  cores_per_rank=$((cores / per_host))
  [ "$cores_per_rank" -lt 1 ] && cores_per_rank=1
fi
# (--cores-per-rank with --hosts is taken on trust: those hosts' cores are not counted here.)
if [ $((cores_per_rank * per_host)) -gt "$cores" ] && ! { [ -n "$hosts" ] && [ -n "$explicit_cpr" ]; }; then
  overloaded=1
  oversubscribe=1
fi

command -v mpirun >/dev/null || die "mpirun not found: install Open MPI (launch/install-deps.sh) or put it on PATH"
mpirun --version 2>/dev/null | grep -q "Open MPI" ||
  die "this script speaks Open MPI's mpirun; with another MPI run its mpiexec -n $ranks directly"

cmd=("$@")
if [ "${cmd[0]}" = ctrain ] && ! command -v ctrain >/dev/null; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  exe=$root/${CTRAIN_BUILD:-build}/train/ctrain
  [ -x "$exe" ] || die "ctrain is not on PATH and $exe is not built: cmake -S . -B build && cmake --build build"
  cmd[0]=$exe
fi

args=(mpirun -n "$ranks")
[ -n "$hosts" ] && args+=(--host "$hosts")
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
[ "$oversubscribe" -eq 1 ] && args+=(--oversubscribe)
if [ "$overloaded" -eq 1 ]; then
  bind=none
  echo "mpirun.sh: $per_host rank(s) x $cores_per_rank core(s) per host, but this host has $cores: ranks left unbound" >&2
fi
case $bind in
  core) args+=(--map-by "slot:PE=$cores_per_rank" --bind-to core) ;;
  socket) args+=(--map-by socket --bind-to socket) ;;
  none) args+=(--map-by slot --bind-to none) ;;
esac
threads=$cores_per_rank
args+=(-x "OMP_NUM_THREADS=$threads")
# Within its cores, one OpenMP thread per core, kept there.
[ "$bind" = core ] && args+=(-x OMP_PLACES=cores -x OMP_PROC_BIND=close)
# Remote hosts get only the environment named with -x: the same PATH and libraries as here.
args+=(-x PATH)
[ -n "${LD_LIBRARY_PATH:-}" ] && args+=(-x LD_LIBRARY_PATH)
args+=("${cmd[@]}")

printf 'mpirun.sh: %d rank(s), %d per host, %d core(s) and OpenMP thread(s) each (%d cores here):\n+' \
  "$ranks" "$per_host" "$threads" "$cores" >&2
printf ' %q' "${args[@]}" >&2
printf '\n' >&2
[ "$dry_run" -eq 1 ] && exit 0
exec "${args[@]}"
