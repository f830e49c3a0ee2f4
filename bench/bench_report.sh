#!/usr/bin/env bash
# How long `ctrain report` takes on a long run: a made-up run directory of 100,000 steps (its
# metrics.jsonl as ctrain writes it, an evaluation every 200 steps) beside the quickstart's, if
# there is one; prints the time and peak memory of three reports and the output's size.
# usage: bench/bench_report.sh [BUILD_DIR]   (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
ctrain=${1:-build}/train/ctrain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/long"
python3 - "$tmp/long" <<'PY'
import json, math, sys
d = sys.argv[1]
with open(f"{d}/metrics.jsonl", "w") as f:
    for s in range(1, 100001):
        f.write(json.dumps({"step": s, "loss": round(5 * math.exp(-s / 30000) + 0.01 * math.sin(s), 8), "lr": 1e-3,
                            "grad_norm": round(1 + 1 / s, 6), "ms": 3.0, "tokens_per_s": 1000.0, "tokens": 512 * s,
                            "mfu": 0.4, "memory_gib": 1.5}) + "\n")
        if s % 200 == 0:
            f.write(json.dumps({"step": s, "val_loss": round(5 * math.exp(-s / 30000), 6)}) + "\n")
with open(f"{d}/ctrain.json", "w") as f:
    json.dump({"run": {"dir": d}, "optim": {"lr": 1e-3, "max_steps": 100000}}, f)
PY
runs=("$tmp/long")
[ -f runs/quickstart/metrics.jsonl ] && runs+=(runs/quickstart)
echo "bench_report: metrics.jsonl of $(wc -l < "$tmp/long/metrics.jsonl") lines ($(wc -c < "$tmp/long/metrics.jsonl") bytes); runs: ${#runs[@]}"
for i in 1 2 3; do
  /usr/bin/time -f "bench_report: %e s, peak RSS %M KiB" "$ctrain" report "${runs[@]}" -o "$tmp/report.html" 2>&1 > /dev/null
done
echo "bench_report: report.html $(wc -c < "$tmp/report.html") bytes"
