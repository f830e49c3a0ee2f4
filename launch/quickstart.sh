#!/usr/bin/env bash
# The quickstart, from a fresh clone: installs what is missing, builds, writes the bundled corpus
# (the King James Bible), trains configs/quickstart.json on 2 MPI ranks, and samples text.
# A few minutes on a 2-core machine. Extra arguments go to `ctrain train` (e.g. --set optim.max_steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/quickstart.json

bash launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target ctrain
bash launch/corpus.sh
build/train/ctrain prepare "$config"
bash launch/mpirun.sh -n 2 -- build/train/ctrain train "$config" "$@"
echo "--- sample:"
build/train/ctrain sample "$config"
