#!/usr/bin/env bash
# Writes the bundled corpus, the King James Bible (public domain, from Debian's bible-kjv),
# to datasets/kjv.txt: one verse a line, verse numbers dropped (4.2 MB). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
out=datasets/kjv.txt
[ -s "$out" ] && exit 0
command -v bible >/dev/null || { echo "corpus: 'bible' not found: run launch/install-deps.sh" >&2; exit 1; }
mkdir -p datasets
bible -f Gen1:1-Rev22:21 | sed -E 's/^[^ ]+ //' > "$out.tmp"
mv "$out.tmp" "$out"
echo "corpus: wrote $out ($(wc -c < "$out") bytes)"
