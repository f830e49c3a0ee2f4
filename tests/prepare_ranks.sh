#!/usr/bin/env bash
# ctrain prepare across workers and ranks, under mpirun: 1 process with 1 thread, 1 process with 2
# and with 3 threads, 2 ranks with 1 thread and 2 ranks with 2 threads write the same train and val datasets
# (tokens, masks, document offsets and shards as ct_dataset reads them, through dsdump), for the
# byte tokenizer and a folder of .txt and .jsonl files in small chunks; the progress line appears
# on rank 0's stderr; a bad line in one rank's chunk fails the whole job with that rank's message,
# a non-zero exit and nothing left behind.
# usage: prepare_ranks.sh CTRAIN MPIEXEC DSDUMP
set -euo pipefail
ctrain=$1
mpiexec=$2
dsdump=$3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

mkdir -p "$tmp/in/sub" "$tmp/out"
awk 'BEGIN { srand(3); for (i = 0; i < 4000; i++) { n = 3 + int(rand() * 12); s = "";
       for (j = 0; j < n; j++) s = s sprintf("w%d ", int(rand() * 500)); print s "." } }' > "$tmp/in/a.txt"
awk 'BEGIN { srand(5); for (i = 0; i < 300; i++) { n = 5 + int(rand() * 40); s = "";
       for (j = 0; j < n; j++) s = s sprintf("v%d ", int(rand() * 900)); printf "{\"text\": \"%s\\nend\"}\n", s } }' \
  > "$tmp/in/sub/b.jsonl"
cp "$tmp/in/a.txt" "$tmp/in/sub/c.txt"
cat > "$tmp/cfg.json" <<JSON
{"data": {"text": "$tmp/in", "train": "$tmp/out/train.h5", "val": "$tmp/out/val.h5", "tokenizer": "bytes",
          "val_fraction": 0.1, "prepare_chunk_kb": 8}}
JSON

# prep NAME RANKS THREADS: prepares and dumps into $tmp/NAME.dump
prep() {
  local name=$1 ranks=$2 threads=$3 launch=()
  [ "$ranks" -gt 1 ] && launch=("$mpiexec" -n "$ranks" --oversubscribe)
  if ! "${launch[@]}" "$ctrain" prepare "$tmp/cfg.json" --set data.prepare_threads="$threads" \
      > "$tmp/$name.log" 2>&1; then
    fail "prepare $name exited non-zero:"
    tail -5 "$tmp/$name.log" >&2
    return
  fi
  "$dsdump" "$tmp/out/train.h5" "$tmp/out/val.h5" > "$tmp/$name.dump"
}
prep one 1 1
prep threads2 1 2
prep threads 1 3
prep ranks 2 1
prep ranks_threads 2 2
grep -q "shards [1-9]" "$tmp/one.dump" || fail "the datasets are not sharded: $(cat "$tmp/one.dump")"
for name in threads2 threads ranks ranks_threads; do
  if ! cmp -s "$tmp/one.dump" "$tmp/$name.dump"; then
    fail "$name differs from one process:"
    diff "$tmp/one.dump" "$tmp/$name.dump" >&2 || true
  fi
done
grep -q "2 ranks x 1 threads" "$tmp/ranks.log" || fail "no summary line from rank 0: $(cat "$tmp/ranks.log")"
[ "$(ls "$tmp/out" | grep -c shards)" = 2 ] || fail "stale shard folders left: $(ls "$tmp/out")"

# a bad line: the job fails with that line named, exits non-zero, and leaves the old datasets alone
before=$(cat "$tmp/one.dump")
printf '{"text": "fine"}\n{"text": null}\n' > "$tmp/in/sub/zz.jsonl"
if "$mpiexec" -n 2 --oversubscribe "$ctrain" prepare "$tmp/cfg.json" > "$tmp/bad.log" 2>&1; then
  fail "a bad line did not fail the job"
fi
grep -q "ctrain: error: rank [01]: .*zz.jsonl: line 2: field \"text\": null; must be a string" "$tmp/bad.log" ||
  fail "no message naming the bad line: $(cat "$tmp/bad.log")"
[ "$("$dsdump" "$tmp/out/train.h5" "$tmp/out/val.h5")" = "$before" ] || fail "the earlier datasets changed"
[ "$(ls "$tmp/out" | grep -c shards)" = 2 ] || fail "shard folders of the failed run left: $(ls "$tmp/out")"

if [ "$failures" -gt 0 ]; then
  echo "prepare_ranks: $failures failure(s)" >&2
  exit 1
fi
echo "prepare_ranks: 1 process = 2 threads = 3 threads = 2 ranks = 2 ranks x 2 threads; a bad line fails every rank"
