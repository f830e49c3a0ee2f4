#!/usr/bin/env bash
# Writes datasets/kjv_chat.jsonl, the bundled chat set for the chat fine-tuning walkthrough in
# README.md: each example of datasets/kjv_sft.jsonl (launch/sft_data.sh) as a one-turn
# {"messages": [user, assistant]} conversation (longer ones would not fit the quickstart model's
# 128 positions in ctrain's plain template). Deterministic and idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
out=datasets/kjv_chat.jsonl
[ -s "$out" ] && exit 0
bash launch/sft_data.sh >/dev/null
sed -E 's/^\{"prompt": (".*"), "response": (".*")\}$/{"messages": [{"role": "user", "content": \1}, {"role": "assistant", "content": \2}]}/' \
  datasets/kjv_sft.jsonl > "$out.tmp"
mv "$out.tmp" "$out"
echo "chat_data: wrote $out ($(grep -c '"messages"' "$out") conversations)"
