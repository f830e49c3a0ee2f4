#!/usr/bin/env bash
# The Llama family on the CPU: ctrain against transformers (+ peft), the same model from the same
# config.json (tests/hf_configs/smollm2-135m.json: SmolLM2-135M's shape, random weights), the same
# thread count, every figure measured in this one run:
#   (a) full training step (forward, cross-entropy, backward, AdamW), fp32: ctrain
#       (bench_step --hf-config) against PyTorch eager (bench/bench_hf.py: transformers'
#       LlamaForCausalLM, SDPA and eager attention both measured, the faster one kept); ctrain's
#       line adds its matmuls' share and rate against cblas_sgemm alone (measured after the steps);
#   (b) LoRA step, r=16 on every linear of the blocks, alpha 32: ctrain (bench_step --lora)
#       against transformers + peft (bench_hf.py --lora: LoraConfig target_modules="all-linear");
#   (c) greedy sampling with a KV cache: ctrain (bench_step --decode: ct_model_decode token by
#       token, as `ctrain sample` at temperature 0) against transformers generate (greedy,
#       use_cache=True, the same prompt length and number of new tokens).
# For each: ms/step (or per generation), tokens/s, the ratio, and the peak resident memory of
# both processes (getrusage ru_maxrss: the Python interpreter and torch's libraries count on
# PyTorch's side, as ctrain's whole process does on its own).
# Both sides run the same weights (transformers' random initialisation, saved once as a Hugging
# Face folder by bench_hf.py --save and loaded by bench_step --init-from) on the same tokens, so
# the first step's loss must agree (full and LoRA: the adapters' B starts at 0) and so must the
# greedy tokens: the summary checks both, a check that the two sides compute the same thing.
#
#   bash bench/run_llama_cpu.sh            # full size: 30 layers, micro-batch 4 x 256 tokens
#   bash bench/run_llama_cpu.sh --small    # 4 layers, 2 x 64 tokens: a check that it all runs (~1-2 min)
#
# Environment: OMP_NUM_THREADS (threads for both; default all cores), CTRAIN_BUILD (default
# build), PYTHON (with torch, transformers and peft; default .venv/bin/python, else python3),
# CONFIG (the config.json), LAYERS (override the
# config's), SEQ, BATCH, STEPS (timed steps), WARMUP, LORA_R, PROMPT and NEW (sampling: prompt
# length and new tokens; batch 1), PT_ATTN (auto: measure sdpa and eager in (a), use the faster
# for (b) and (c); or sdpa / eager), WORK (where the saved model goes, default
# runs/bench_llama_cpu: 0.5 GB at full size), OUT (a folder: bench_llama_cpu.json is written there).
set -euo pipefail
cd "$(dirname "$0")/.."
small=0
[ "${1:-}" = --small ] && small=1
threads=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
build=${CTRAIN_BUILD:-build}
if [ -z "${PYTHON:-}" ]; then
  for p in .venv/bin/python python3; do
    command -v "$p" >/dev/null && { PYTHON=$p; break; }
  done
fi
config=${CONFIG:-tests/hf_configs/smollm2-135m.json}
if [ $small = 1 ]; then
  layers=${LAYERS:-4} seq=${SEQ:-64} batch=${BATCH:-2} steps=${STEPS:-2} warmup=${WARMUP:-1}
  prompt=${PROMPT:-32} new=${NEW:-16}
else
  layers=${LAYERS:-} seq=${SEQ:-256} batch=${BATCH:-4} steps=${STEPS:-3} warmup=${WARMUP:-1}
  prompt=${PROMPT:-64} new=${NEW:-128}
fi
lora_r=${LORA_R:-16}
pt_attn=${PT_ATTN:-auto}
work=${WORK:-runs/bench_llama_cpu}
make=(--hf-config "$config")
[ -n "$layers" ] && make+=(--layers "$layers")
model=(--init-from "$work/model")
train=("${model[@]}" --seq "$seq" --batch "$batch" --steps "$steps" --warmup "$warmup")
sample=("${model[@]}" --seq "$prompt" --batch 1 --decode "$new" --steps "$steps" --warmup 1)
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTHONWARNINGS=ignore

cmake --build "$build" --target bench_step -j "$(nproc)" >/dev/null
"$PYTHON" -c 'import torch, transformers, peft' || { echo "run_llama_cpu: $PYTHON lacks torch, transformers or peft (set PYTHON)" >&2; exit 1; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); threads: $threads;" \
  "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); config: $config${layers:+ (--layers $layers)};" \
  "training $batch x $seq tokens, $steps timed steps after $warmup; sampling $prompt + $new tokens"
echo "python: $PYTHON ($("$PYTHON" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))"

results=$(mktemp) errlog=$(mktemp)
trap 'rm -f "$results" "$errlog"' EXIT
# run KEY CMD...: runs CMD, shows its summary lines, keeps its json line under KEY; its stderr
# (library warnings) only when it fails
run() {
  local key=$1 out
  shift
  echo
  echo "--- $key: $*"
  out=$("$@" 2>"$errlog") || { echo "$out"; cat "$errlog"; echo "run_llama_cpu: $key failed" >&2; exit 1; }
  grep -v '^json: ' <<<"$out" || true
  printf '%s\t%s\n' "$key" "$(sed -n 's/^json: //p' <<<"$out" | tail -1)" >>"$results"
}
ct=("$build/bench/bench_step")
pt=("$PYTHON" bench/bench_hf.py --threads "$threads")

# the random model both sides load
rm -rf "$work/model"
mkdir -p "$work"
echo
echo "--- model: $PYTHON bench/bench_hf.py ${make[*]} --save $work/model --save-only"
"${pt[@]}" "${make[@]}" --save "$work/model" --save-only 2>"$errlog" || { cat "$errlog"; exit 1; }

# (a) full training step
run full_ctrain "${ct[@]}" "${train[@]}"
if [ "$pt_attn" = auto ]; then
  run full_pytorch_sdpa "${pt[@]}" "${train[@]}" --attn sdpa
  run full_pytorch_eager "${pt[@]}" "${train[@]}" --attn eager
  pt_attn=$("$PYTHON" - "$results" <<'PY'
import json, sys
r = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[1]))
s, e = json.loads(r["full_pytorch_sdpa"]), json.loads(r["full_pytorch_eager"])
print("sdpa" if s["tokens_per_s"] >= e["tokens_per_s"] else "eager")
PY
)
  echo "(PyTorch's faster attention here: $pt_attn; (b) and (c) use it)"
else
  run "full_pytorch_$pt_attn" "${pt[@]}" "${train[@]}" --attn "$pt_attn"
fi
# (b) LoRA step
run lora_ctrain "${ct[@]}" "${train[@]}" --lora "$lora_r" --probe 0
run lora_peft "${pt[@]}" "${train[@]}" --lora "$lora_r" --attn "$pt_attn"
# (c) sampling
run sample_ctrain "${ct[@]}" "${sample[@]}"
run sample_transformers "${pt[@]}" "${sample[@]}" --attn "$pt_attn"

echo
load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)$(awk -v l="$load" -v t="$threads" -v n="$(nproc)" \
  'BEGIN { if (l > n + 0.5 || (t < n && l > t + 0.5)) print " (above what this run uses: other work shared the cores; the figures are noisy)" }')"
"$PYTHON" - "$results" "$pt_attn" "${OUT:-}" <<'PY'
import json, os, sys
r = {k: json.loads(v) for k, v in (l.rstrip("\n").split("\t", 1) for l in open(sys.argv[1]))}
attn, out = sys.argv[2], sys.argv[3]
rows = [("(a) full step", "full_ctrain", f"full_pytorch_{attn}", f"PyTorch eager fp32 ({attn})"),
        ("(b) LoRA r=%d step" % r["lora_ctrain"]["lora_r"], "lora_ctrain", "lora_peft", f"transformers + peft ({attn})"),
        ("(c) sampling", "sample_ctrain", "sample_transformers", f"transformers generate ({attn})")]
print()
print(f"{'':22} {'ctrain tok/s':>13} {'PyTorch tok/s':>14} {'ratio':>7} {'ctrain RSS':>11} {'PyTorch RSS':>12}  PyTorch side")
summary = {"threads": r["full_ctrain"].get("threads"), "attn": attn, "runs": r, "ratios": {}}
for label, c, p, what in rows:
    a, b = r[c], r[p]
    ratio = a["tokens_per_s"] / b["tokens_per_s"]
    summary["ratios"][c.split("_")[0]] = ratio
    print(f"{label:22} {a['tokens_per_s']:13.1f} {b['tokens_per_s']:14.1f} {ratio:6.2f}x "
          f"{a['peak_rss_mib']:8.0f} MiB {b['peak_rss_mib']:8.0f} MiB  {what}")
if "full_pytorch_sdpa" in r and "full_pytorch_eager" in r:
    print(f"(a) PyTorch attention: sdpa {r['full_pytorch_sdpa']['tokens_per_s']:.1f}, eager "
          f"{r['full_pytorch_eager']['tokens_per_s']:.1f} tokens/s")
sc, st = r["sample_ctrain"], r["sample_transformers"]
print(f"(c) per token after the prefill: ctrain {sc['ms_per_token']:.2f} ms, transformers {st['ms_per_token']:.2f} ms; "
      f"prefill of {sc['seq']} tokens: {sc['ms_prefill']:.1f} vs {st['ms_prefill']:.1f} ms")
fc, fp, lc, lp = r["full_ctrain"], r[f"full_pytorch_{attn}"], r["lora_ctrain"], r["lora_peft"]
same = sum(1 for _ in __import__("itertools").takewhile(lambda x: x[0] == x[1], zip(sc["ids"], st["ids"])))
check = {"full_loss_first": [fc["loss_first"], fp["loss_first"]], "full_loss_last": [fc["loss_last"], fp["loss_last"]],
         "lora_loss_first": [lc["loss_first"], lp["loss_first"]], "greedy_ids_agree": same, "new_tokens": len(sc["ids"])}
summary["same_computation"] = check
print(f"same weights and tokens on both sides: first-step loss ctrain {fc['loss_first']:.5f} vs PyTorch "
      f"{fp['loss_first']:.5f} (last {fc['loss_last']:.5f} vs {fp['loss_last']:.5f}); LoRA {lc['loss_first']:.5f} vs "
      f"{lp['loss_first']:.5f}; greedy tokens agree for the first {same} of {len(sc['ids'])}")
print("tokens/s: training B*T / mean step time; sampling new tokens / the whole generation (prefill included). "
      "RSS: each process's peak resident memory (ru_maxrss).")
if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_llama_cpu.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"written: {os.path.join(out, 'bench_llama_cpu.json')}")
PY
