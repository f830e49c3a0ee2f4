#!/usr/bin/env bash
# CPU training-step benchmark: ctrain against PyTorch eager fp32, same model, same threads,
# both measured in this one run. Extra arguments go to both (e.g. --steps 10 --batch 4).
#   bash bench/run_cpu.sh                     # the bench model: 6 layers, width 384, 256 x 8 tokens
# Needs a build (build/) and the reference venv (.venv): launch/test.sh makes both.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${OMP_NUM_THREADS:-$(nproc)}
build=${CTRAIN_BUILD:-build}
cmake --build "$build" --target bench_step -j "$(nproc)" >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads: $threads"
ct=$(OMP_NUM_THREADS=$threads "$build/bench/bench_step" "$@")
echo "$ct" | grep -v '^json: '
pt=$(OMP_NUM_THREADS=$threads .venv/bin/python bench/bench_torch.py --threads "$threads" "$@")
echo "$pt" | grep -v '^json: '
.venv/bin/python - "$(echo "$ct" | sed -n 's/^json: //p')" "$(echo "$pt" | sed -n 's/^json: //p')" <<'PY'
import json, sys
ct, pt = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ctrain / pytorch tokens/s: {ct['tokens_per_s'] / pt['tokens_per_s']:.2f}x; "
      f"ctrain matmuls at {ct['matmul_gflops'] / ct['sgemm_gflops']:.0%} of measured sgemm")
PY
