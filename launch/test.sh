#!/usr/bin/env bash
# Runs ctrain's tests, in tiers (docs/DESIGN.md "Tests, in tiers"):
#   bash launch/test.sh            every tier that can run on this machine
#   bash launch/test.sh unit       C unit, gradient and bad-input tests (no Python needed)
#   bash launch/test.sh reference  against PyTorch / transformers, in .venv (installed from PyPI)
#   bash launch/test.sh gpu        CUDA ops against the CPU backend (skipped, and shown so, without a GPU)
# Installs missing Debian packages and builds first. Build dir: $CTRAIN_BUILD (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
build=${CTRAIN_BUILD:-build}
jobs=$(nproc)

bash launch/install-deps.sh
bash launch/corpus.sh # datasets/kjv.txt: the reference tier tokenizes and prepares it

cmake_args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release)
if [[ $tier == all || $tier == reference ]]; then
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import torch, transformers, safetensors, peft, h5py, jinja2, tensorboard' 2>/dev/null; then
    echo "test: creating .venv with the reference packages (PyPI)"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r tests/reference/requirements.txt
  fi
  cmake_args+=(-DCTRAIN_PYTHON="$PWD/.venv/bin/python")
fi
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build" -j "$jobs"

case $tier in
  unit) labels=unit ;;
  reference) labels=reference ;;
  gpu) labels=gpu ;;
  all) labels='unit|reference|gpu' ;;
  *) echo "usage: launch/test.sh [all|unit|reference|gpu]" >&2; exit 2 ;;
esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
ctest --test-dir "$build" -L "$labels" --output-on-failure --no-tests=error | tee "$log" || rc=$?
# ctest's "100% tests passed" counts skipped tests in its total: say what really ran.
skipped=$(grep -c '\*\*\*Skipped' "$log" || true)
total=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#' "$log" || true)
failed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#.*\*\*\*(Failed|Timeout|Exception|Not Run)' "$log" || true)
echo "test: $((total - skipped - failed)) passed, $failed failed, $skipped skipped (not run, not counted as passed)"
if [ "$skipped" -gt 0 ]; then
  echo "test: skipped: $(grep '\*\*\*Skipped' "$log" | sed -E 's/.*Test +#[0-9]+: ([^ ]+).*/\1/' | paste -sd' ')"
fi
exit $rc
