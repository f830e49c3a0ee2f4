#!/usr/bin/env bash
# Installs the Debian packages ctrain builds against; does nothing when they are all there.
# The CUDA toolkit (with NCCL) is not a Debian package here: it is used from /usr/local/cuda
# when present, and the build goes without the CUDA backend otherwise.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin          # MPI transport and launcher
  slurmctld slurmd slurm-client munge # a one-node Slurm cluster for tests/slurm_cluster.sh (slurm-wlm)
  slurm-wlm-basic-plugins             # srun --mpi=pmix and pmi2 (mpi_pmix.so)
  libhdf5-openmpi-dev hdf5-tools      # parallel HDF5: datasets and checkpoints; h5dump
  libcjson-dev                        # configs, safetensors headers
  libopenblas-openmp-dev              # sgemm, sharing OpenMP's threads
  libpcre2-dev libutf8proc-dev        # tokenizer.json: pre-tokenizer regexes (PCRE2 JIT), NFC
  bible-kjv                           # the bundled corpus: the King James Bible (public domain)
  python3 python3-venv                # reference tests and benchmarks only, never the trainer
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A Python that already has venv (pyenv, a distribution build) stands in for Debian's.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  keep=()
  for p in "${missing[@]}"; do [[ $p == python3 || $p == python3-venv ]] || keep+=("$p"); done
  missing=("${keep[@]+"${keep[@]}"}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
