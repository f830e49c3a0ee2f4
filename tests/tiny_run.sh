# tiny_run.sh — sourced by the multi-rank test scripts: the small corpus and model they share.
#
# tiny_run DIR WARMUP LOG_EVERY [JSON]: writes DIR/text.txt (a deterministic ~200 KB of pseudo-
# random words in lines) and DIR/base.json (a GPT-2 of 2 layers, width 32, on bytes, on the CPU
# backend, which these tests are about, even where a GPU is visible; 20 steps;
# JSON adds sections, e.g. '"checkpoint": {"every": 10},'), and prepares the datasets with $ctrain.
tiny_run() {
  local dir=$1 warmup=$2 every=$3 extra=${4:-}
  awk 'BEGIN { srand(7); split("the of and to in a is that for it as was with be by on not he this are or his from at which but have an they you were her she there had", w, " ");
    for (l = 0; l < 4000; l++) { s = ""; n = 5 + int(rand() * 10); for (i = 0; i < n; i++) s = s w[1 + int(rand() * 40)] " "; print s "." } }' \
    > "$dir/text.txt"
  cat > "$dir/base.json" <<JSON
{
  "run": {"seed": 5, "device": "cpu"},
  "model": {"vocab_size": 257, "max_seq_len": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
  "data": {"text": "$dir/text.txt", "train": "$dir/train.h5", "val": "$dir/val.h5", "seq_len": 32, "micro_batch": 2},
  "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": $warmup, "max_steps": 20},
  $extra
  "log": {"every": $every, "eval_every": 0, "eval_batches": 2}
}
JSON
  "$ctrain" prepare "$dir/base.json" > /dev/null
}
