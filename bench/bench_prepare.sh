#!/usr/bin/env bash
# `ctrain prepare` against the tokenizers library (Hugging Face, Rust), the same corpus and the same
# tokenizer, 1 core and all cores, every figure measured in this one run:
#   (a) throughput: MB of document text per second of `ctrain prepare` (reading the .jsonl, parsing
#       it, encoding, writing the HDF5 shards; ct_data_prepare's own clock, the tokenizer's loading
#       apart) against tokenizers' encode_batch of the same documents (already in memory; its
#       threads set by RAYON_NUM_THREADS), for a GPT-2-style (ByteLevel with GPT-2's regex) and a
#       Llama-3-style (Split + ByteLevel, <|begin_of_text|> template) 16k-vocabulary BPE trained
#       offline on the bundled corpus (bench/bench_prepare.py make); each ctrain run's train and
#       val ids are checked against encode_batch's (+ eos, split as data.h says): "ids" must say yes;
#   (b) memory: the peak resident set (/usr/bin/time -v) of every run above, and of a prepare of a
#       multi-GB corpus written on disk (GB; .jsonl parts and one long text file), deleted after.
#
#   bash bench/bench_prepare.sh                # 100 MB corpus, 3 GB for (b)
#   MB=10 GB=0 bash bench/bench_prepare.sh     # a check that it all runs (~1 min)
#
# Environment: CTRAIN_BUILD (default build), PYTHON (with tokenizers and h5py; default
# .venv/bin/python, else python3), WORK (default runs/bench_prepare: the corpus, tokenizers and
# outputs, about 3 x MB + 2 x GB of disk while it runs), MB, GB, CHUNK_KB (data.prepare_chunk_kb).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CTRAIN_BUILD:-build}
if [ -z "${PYTHON:-}" ]; then
  for p in .venv/bin/python python3; do
    command -v "$p" >/dev/null && { PYTHON=$p; break; }
  done
fi
work=${WORK:-runs/bench_prepare}
mb=${MB:-100}
gb=${GB:-3}
chunk=${CHUNK_KB:-16384}
cores=$(nproc)
cmake --build "$build" --target ctrain -j "$cores" >/dev/null
ctrain=$build/train/ctrain
mkdir -p "$work"
"$PYTHON" bench/bench_prepare.py make --out "$work" --mb "$mb"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $cores cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load: $(uptime | sed 's/.*load average: //')"
echo "corpus: $work/corpus.jsonl ($(du -m "$work/corpus.jsonl" | cut -f1) MB of JSON lines), chunks of $chunk KiB"

# prep NAME TEXT TOKENIZER THREADS: ctrain prepare into $work/NAME; sets secs, rss_mb, wall
prep() {
  local name=$1 text=$2 tok=$3 threads=$4 out=$work/$1
  rm -rf "$out"
  mkdir -p "$out"
  echo "{}" > "$work/empty.json"
  /usr/bin/time -v "$ctrain" prepare "$work/empty.json" --set data.text="$text" --set data.train="$out/train.h5" \
    --set data.val="$out/val.h5" --set data.tokenizer="$tok" --set data.prepare_threads="$threads" \
    --set data.prepare_chunk_kb="$chunk" > "$out/stdout.log" 2> "$out/time.log" ||
    { cat "$out/stdout.log" "$out/time.log" >&2; exit 1; }
  secs=$(sed -n 's/.* of text in \([0-9.]*\) s .*/\1/p' "$out/stdout.log")
  rss_mb=$(awk '/Maximum resident set size/ { printf "%.0f", $6 / 1024 }' "$out/time.log")
  wall=$(awk '/Elapsed \(wall clock\)/ { n = split($8, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$out/time.log")
}

printf "%-9s %7s %12s %16s %7s %7s %14s %4s\n" tokenizer threads "ctrain MB/s" "tokenizers MB/s" ratio "wall s" "ctrain RSS MB" ids
for tok in gpt2 llama3; do
  for threads in 1 "$cores"; do
    prep "out_${tok}_$threads" "$work/corpus.jsonl" "$work/$tok" "$threads"
    py=$(RAYON_NUM_THREADS=$threads "$PYTHON" bench/bench_prepare.py encode --tokenizer "$work/$tok" \
         --corpus "$work/corpus.jsonl" --train "$work/out_${tok}_$threads/train.h5" \
         --val "$work/out_${tok}_$threads/val.h5")
    text_mb=$(sed 's/.*"mb": \([0-9.]*\).*/\1/' <<<"$py")
    py_rate=$(sed 's/.*"mb_per_s": \([0-9.]*\).*/\1/' <<<"$py")
    same=$(grep -q '"ids_identical": true' <<<"$py" && echo yes || echo NO)
    c_rate=$(awk -v m="$text_mb" -v s="$secs" 'BEGIN { printf "%.1f", m / s }')
    printf "%-9s %7s %12s %16.1f %6.2fx %7s %14s %4s\n" "$tok" "$threads" "$c_rate" "$py_rate" \
      "$(awk -v a="$c_rate" -v b="$py_rate" 'BEGIN { print a / b }')" "$wall" "$rss_mb" "$same"
    rm -rf "$work/out_${tok}_$threads"
  done
done

if [ "$(awk -v g="$gb" 'BEGIN { print (g > 0) }')" = 1 ]; then
  "$PYTHON" bench/bench_prepare.py big --out "$work" --gb "$gb" > "$work/big.json"
  size=$(du -sm "$work/big" | cut -f1)
  prep out_big "$work/big" "$work/gpt2" "$cores"
  shards=$(ls "$work/out_big" | grep -c shards || true)
  echo "big corpus: $size MB in $(ls "$work/big" | wc -l) files ($(cat "$work/big.json")), gpt2, $cores threads:" \
    "$(awk -v m="$size" -v s="$secs" 'BEGIN { printf "%.1f", m * 1.048576 / s }') MB/s of files, $wall s wall," \
    "peak RSS $rss_mb MB; $(grep -h 'wrote' "$work/out_big/stdout.log" | tr '\n' ' ')"
  rm -rf "$work/big" "$work/out_big" "$work/big.json"
fi
