#!/usr/bin/env bash
# Writes datasets/kjv_sft.jsonl, the bundled instruction set for supervised fine-tuning: up to 2000
# prompt/response examples made from the bundled corpus datasets/kjv.txt (one verse a line;
# launch/corpus.sh writes it). Input of ctrain's SFT prepare step (ct_data_prepare_sft).
#
# Every 4th verse of at most 80 bytes and at least 6 words, in Bible order, gives one example:
#   two of every three: {"prompt": "Continue the verse: <first half of its words>",
#                        "response": "<second half>"}
#   the third:          {"prompt": "Which word comes next: <its first k words>",
#                        "response": "<word k+1, without punctuation>"}  (k from the verse's number)
# Deterministic (no randomness) and idempotent. Each example's text stays under 101 bytes, so
# with the template's 28 tokens and end-of-text it fits data.seq_len 128 (the quickstart model).
set -euo pipefail
cd "$(dirname "$0")/.."
out=datasets/kjv_sft.jsonl
[ -s "$out" ] && exit 0
[ -s datasets/kjv.txt ] || bash launch/corpus.sh
awk '
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, "\\t", s); return s }
function words(a, i, j,   s) { s = a[i]; for (i++; i <= j; i++) s = s " " a[i]; return s }
length($0) <= 80 {
    n = split($0, w, " ")
    if (n < 6 || eligible++ % 4 != 0) next
    if (made % 3 == 2) {
        k = 2 + NR % (n - 2)               # 2 .. n-1 words shown
        nextw = w[k + 1]
        gsub(/^[(]+|[,;:.?!)]+$/, "", nextw)
        if (nextw == "") next
        printf "{\"prompt\": \"Which word comes next: %s\", \"response\": \"%s\"}\n", esc(words(w, 1, k)), esc(nextw)
    } else {
        h = int(n / 2)
        printf "{\"prompt\": \"Continue the verse: %s\", \"response\": \"%s\"}\n", esc(words(w, 1, h)), esc(words(w, h + 1, n))
    }
    if (++made == 2000) exit
}' datasets/kjv.txt > "$out.tmp"
mv "$out.tmp" "$out"
echo "sft_data: wrote $out ($(wc -l < "$out") examples, $(wc -c < "$out") bytes)"
