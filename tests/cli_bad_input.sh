#!/usr/bin/env bash
# The ctrain CLI on malformed model folders: each case must exit 1 (not crash, not 0) with
# "ctrain: error:" and the offending file and field in the message.
set -u
ctrain=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect EXIT_CODE NEEDLE -- ARGS...: run ctrain ARGS, check the exit code and that stderr holds NEEDLE
expect() {
  local want=$1 needle=$2
  shift 3
  local out rc
  out=$("$ctrain" "$@" 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qF -- "$needle" <<<"$out"; then
    echo "FAIL: ctrain $* -> exit $rc (want $want), stderr: $out (want: $needle)" >&2
    failures=$((failures + 1))
  else
    echo "ok: ctrain $* -> $out"
  fi
}

good_config='{"model_type": "gpt2", "vocab_size": 13, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}'

expect 1 "$tmp/none/config.json: cannot open" -- info "$tmp/none"

mkdir "$tmp/badjson"
printf '{\n  "n_embd": 8\n  "n_layer": 1\n}\n' > "$tmp/badjson/config.json"
expect 1 "badjson/config.json: malformed JSON at line 3" -- info "$tmp/badjson"

mkdir "$tmp/nohead"
echo "$good_config" > "$tmp/nohead/config.json"
expect 1 "nohead: no model.safetensors or model.safetensors.index.json" -- info "$tmp/nohead"

mkdir "$tmp/liar"
echo "$good_config" > "$tmp/liar/config.json"
printf '\xff\xff\x00\x00\x00\x00\x00\x00{}' > "$tmp/liar/model.safetensors"  # header says 65535 bytes
expect 1 "liar/model.safetensors" -- info "$tmp/liar"

mkdir "$tmp/garbage"
echo "$good_config" > "$tmp/garbage/config.json"
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a": [1, 2, 3 ' > "$tmp/garbage/model.safetensors"
expect 1 "garbage/model.safetensors" -- info "$tmp/garbage"

mkdir "$tmp/wrongshape"
echo "$good_config" > "$tmp/wrongshape/config.json"
hdr='{"transformer.wte.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'
printf "\\x$(printf %02x ${#hdr})\\x00\\x00\\x00\\x00\\x00\\x00\\x00%s" "$hdr" > "$tmp/wrongshape/model.safetensors"
head -c 16 /dev/zero >> "$tmp/wrongshape/model.safetensors"
expect 1 "tensor 'transformer.wte.weight': shape [2, 2], config.json implies [13, 8]" -- info "$tmp/wrongshape"

# ctrain plan: a config that cannot be read, a model folder that cannot, a bad key's value
expect 1 "$tmp/none.json: cannot open" -- plan "$tmp/none.json"
echo "{\"model\": {\"init_from\": \"$tmp/badjson\"}}" > "$tmp/plan_badmodel.json"
expect 1 "badjson/config.json: malformed JSON at line 3" -- plan "$tmp/plan_badmodel.json"
echo '{}' > "$tmp/plan.json"
expect 1 'model.recompute: "full" is not one of none|block' -- plan "$tmp/plan.json" --set model.recompute=full
expect 1 "parallel.zero_stage: 4 is out of range" -- plan "$tmp/plan.json" --set parallel.zero_stage=4

expect 1 "info: missing MODEL_DIR" -- info
expect 2 "unknown verb 'frobnicate'" -- frobnicate

exit $((failures > 0))
