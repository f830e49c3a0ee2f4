#!/usr/bin/env bash
# bench/run_gpu.sh — the GPU benchmark pass, in one go (bench/RESULTS.md's GPU section):
#
#   1. GPT-2 124M pretraining (12 layers, 12 heads, width 768, vocab 50257, 1024 tokens), bf16:
#      ctrain (bench_step --device cuda: CUDA backend + the trainer's ZeRO-1 AdamW) against the
#      same model and step in PyTorch (bench/bench_torch.py: autocast bf16, fused AdamW), eager
#      and torch.compile; tokens/s and MFU. Targets: MFU >= 45%, >= 1.3x eager, >= 1.0x compile.
#   2. LoRA r=16 on every linear layer of GPT-2 medium (24 layers, 16 heads, width 1024): ctrain
#      train (the real trainer, from the same random base as a Hugging Face folder) against
#      transformers + peft (bench/bench_lora_peft.py), fp32 base under bf16 autocast and bf16
#      base; tokens/s and peak GPU memory. Target: >= 2x tokens/s at lower peak memory.
#   3. Llama-3.2-1B's shape (tests/hf_configs/llama-3.2-1b.json: 16 layers, width 2048, 32 heads,
#      8 kv heads, MLP 8192, vocab 128256, tied; random weights), micro-batch 4 x 2048 tokens:
#      LoRA r=16 on every linear of the blocks with a bf16 base: ctrain (bench_step --device
#      cuda --hf-config ... --lora 16) against transformers + peft (bench/bench_hf.py --device
#      cuda --lora 16: bf16 base, bf16 autocast, LoraConfig target_modules="all-linear"),
#      tokens/s and peak memory (nvidia-smi for both; cudaMemGetInfo's total - free at the end
#      against torch.cuda.max_memory_allocated / mem_get_info); and full fine-tuning of the same
#      model with ctrain (bench_step --device cuda --hf-config ...): tokens/s and MFU.
#      CTRAIN_BENCH_LLAMA_EAGER=1 adds full fine-tuning in transformers (fp32 parameters under
#      bf16 autocast) for comparison. CTRAIN_BENCH_LLAMA=0 leaves the Llama phases out.
#
# Peak GPU memory is sampled the same way for every run: nvidia-smi memory.used every 100 ms
# (the whole device: CUDA context, cuBLAS workspaces, caching allocators included), reported
# raw and less the idle reading taken just before the run; the PyTorch runs add their
# allocator's own peaks.
#
#   bash bench/run_gpu.sh          after launch/device_pass.sh built build-device (it runs this
#                                  as its `bench` phase); needs python3 with torch, and
#                                  transformers + peft (else .devdeps/wheels, see below)
#
# Output: $OUT (the device tool), else build-device/bench-logs: bench_gpu.log (everything),
# bench_gpu.json (every figure, the device, date and commands), bench_gpu.md (a section ready
# for bench/RESULTS.md). Big intermediate files (the 1.4 GB base model, datasets, run dirs) go
# to build-device/bench-work. Every phase runs under `timeout`, capped so the whole pass ends
# by CTRAIN_BENCH_DEADLINE (epoch seconds; default now + CTRAIN_BENCH_BUDGET_S, 420): a phase
# that no longer fits is skipped, and the summary is always written.
#
# Environment: CTRAIN_DEVICE_BUILD (build folder, default build-device), CTRAIN_BENCH_PYTHON
# (default python3), CTRAIN_PEAK_TFLOPS (dense bf16 peak for MFU; default from the GPU's name:
# H100 SXM and H200 989.4, H100 PCIe 756, H100/H200 NVL 835, A100 312), CTRAIN_BENCH_BATCH (124M
# micro-batch, 16), CTRAIN_BENCH_EXTRA_BATCH (a second ctrain-only 124M run at this batch, 32;
# empty: none), CTRAIN_BENCH_LORA_BATCH (8), CTRAIN_BENCH_STEPS (timed steps, 20),
# CTRAIN_BENCH_COMPILE=0 (skip torch.compile), CTRAIN_BENCH_ONLY (e.g. "pre_compile,lora_peft":
# rerun only these phases on a warm machine, the rest reported from the last pass; "llama" names
# every Llama phase, "gpt2" every GPT-2 one: CTRAIN_BENCH_ONLY=llama runs section 3 alone),
# CTRAIN_BENCH_LLAMA_BATCH (4), CTRAIN_BENCH_LLAMA_SEQ (2048), CTRAIN_BENCH_LLAMA_CONFIG (the
# config.json, default tests/hf_configs/llama-3.2-1b.json), CTRAIN_BENCH_WHEELS (the wheel folder, default
# .devdeps/wheels), CTRAIN_BENCH_INVOCATION (the command line bench_gpu.md names), CTRAIN_BENCH_SMOKE=1
# (tiny sizes on the CPU: a rehearsal of this script where there is no GPU; figures mean nothing).
# Exit status: 0 when every phase ran, 1 when one failed or timed out, 77 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
src=$PWD
build=$src/${CTRAIN_DEVICE_BUILD:-build-device}
out=${OUT:-$build/bench-logs}
work=$build/bench-work
smoke=${CTRAIN_BENCH_SMOKE:-0}
PY=${CTRAIN_BENCH_PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)
deadline=${CTRAIN_BENCH_DEADLINE:-$((start + ${CTRAIN_BENCH_BUDGET_S:-420}))}
mkdir -p "$out" "$work"

if [ "$smoke" = 1 ]; then
  DEV=cpu
  PRE=(--layers 2 --heads 2 --width 64 --vocab 50257 --seq 64)
  PRE_B=2 PRE_STEPS=2 PRE_WARM=1 EXTRA_B=
  LORA_L=2 LORA_H=2 LORA_C=64 LORA_T=64 LORA_B=2 LORA_STEPS=2 LORA_WARM=1 CT_LORA_STEPS=6 CT_LORA_SKIP=2
  LLAMA_SHAPE=(--layers 1 --vocab 512) LLAMA_B=1 LLAMA_T=32 LLAMA_STEPS=2 LLAMA_WARM=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
else
  DEV=cuda
  PRE=(--layers 12 --heads 12 --width 768 --vocab 50257 --seq 1024)
  PRE_B=${CTRAIN_BENCH_BATCH:-16} PRE_STEPS=${CTRAIN_BENCH_STEPS:-20} PRE_WARM=3
  EXTRA_B=${CTRAIN_BENCH_EXTRA_BATCH-32}
  LORA_L=24 LORA_H=16 LORA_C=1024 LORA_T=1024 LORA_B=${CTRAIN_BENCH_LORA_BATCH:-8}
  LORA_STEPS=${CTRAIN_BENCH_STEPS:-20} LORA_WARM=3 CT_LORA_STEPS=$((${CTRAIN_BENCH_STEPS:-20} + 10)) CT_LORA_SKIP=5
  LLAMA_SHAPE=() LLAMA_B=${CTRAIN_BENCH_LLAMA_BATCH:-4} LLAMA_T=${CTRAIN_BENCH_LLAMA_SEQ:-2048}
  LLAMA_STEPS=${CTRAIN_BENCH_STEPS:-20} LLAMA_WARM=3
fi
LLAMA_CFG=${CTRAIN_BENCH_LLAMA_CONFIG:-tests/hf_configs/llama-3.2-1b.json}
LORA_R=16 LORA_ALPHA=32 LORA_DROPOUT=0.05

smi=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi 2>/dev/null | head -1)
mem_used() { [ -n "$smi" ] && [ "$smi" != none ] && "$smi" --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1 | tr -d ' '; }

elapsed() { echo $(( $(date +%s) - start )); }

# run_phase NAME LIMIT CMD...: runs CMD under timeout (LIMIT seconds, capped by the deadline),
# sampling the GPU's memory; keeps its log, its "json: " line ($work/NAME.json) and a line of
# phase facts ($work/phases.jsonl). Returns CMD's status, 124 on a timeout, 75 when skipped.
failed=0
# CTRAIN_BENCH_ONLY=a,b: run only these phases (and pydeps); the others keep their results from
# an earlier pass on this machine (build-device/bench-work), which the summary reports again.
# "llama" and "gpt2" name their sections' phases.
llama_phases=llama_lora_ctrain,llama_lora_peft,llama_full_ctrain,llama_full_eager
gpt2_phases=pre_ctrain,pre_eager,lora_base,lora_data,lora_ctrain,lora_peft,lora_peft_bf16,pre_compile,pre_ctrain_extra
only=,${CTRAIN_BENCH_ONLY:-},
only=${only//,llama,/,$llama_phases,}
only=${only//,gpt2,/,$gpt2_phases,}
selected() { [ -z "${CTRAIN_BENCH_ONLY:-}" ] || [[ "${only}pydeps," == *",$1,"* ]]; }
run_phase() {
  local name=$1 limit=$2 left rc idle peak t0 t1 sampler=
  shift 2
  if ! selected "$name"; then
    echo "=== $name: not selected (CTRAIN_BENCH_ONLY): its earlier result, if any, is kept"
    return 0
  fi
  left=$((deadline - $(date +%s) - 15))
  rm -f "$work/$name.json" "$work/$name.mem"
  printf '%s\n' "$*" >"$work/$name.cmd"
  echo
  echo "=== $name ($(elapsed) s into the pass): $*"
  if ((left < 20)); then
    echo "=== $name: SKIPPED: ${left} s left of the time budget"
    printf '{"name": "%s", "status": "skipped", "rc": null, "seconds": 0, "limit": 0}\n' "$name" >>"$work/phases.jsonl"
    failed=1
    return 75
  fi
  ((limit > left)) && limit=$left
  idle=$(mem_used)
  if [ -n "$idle" ]; then
    "$smi" --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$work/$name.mem" 2>/dev/null &
    sampler=$!
  fi
  # a shell function of this script runs in a child bash (export -f), so timeout can stop it
  declare -F "$1" >/dev/null && set -- bash -c "$(printf '%q ' "$@")"
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
  fi
  # no samples (nvidia-smi's loop failed): no peak, rather than the reading after the run
  peak=
  [ -s "$work/$name.mem" ] && peak=$(tr -dc '0-9\n' <"$work/$name.mem" | sort -n | tail -1)
  cat "$work/$name.log"
  sed -n 's/^json: //p' "$work/$name.log" | tail -1 >"$work/$name.json"
  local status=ok
  [ "$rc" = 0 ] || status=failed
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status=timeout
  [ -s "$work/$name.json" ] || [ "$name" = lora_data ] || [ "$name" = lora_base ] || [ "$name" = pydeps ] ||
    [ "$status" != ok ] || status="failed (no json line)"
  awk -v n="$name" -v s="$status" -v r="$rc" -v a="$t0" -v b="$t1" -v l="$limit" -v i="${idle:-null}" \
    -v p="${peak:-null}" 'BEGIN {printf "{\"name\": \"%s\", \"status\": \"%s\", \"rc\": %d, \"seconds\": %.1f, \"limit\": %d, \"mem_idle_mib\": %s, \"mem_peak_mib\": %s}\n", n, s, r, b - a, l, i, p}' \
    >>"$work/phases.jsonl"
  echo "=== $name: $status (rc $rc) in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s" \
    "(limit $limit s); GPU memory idle ${idle:-?} MiB, peak ${peak:-?} MiB"
  [ "$status" = ok ] || failed=1
  return "$rc"
}

main() {
# ---- the GPU and its peak
gpu_name=cpu gpu_mem=0 driver='?' peak=${CTRAIN_PEAK_TFLOPS:-}
if [ "$smoke" != 1 ]; then
  if [ -z "$smi" ] || ! "$smi" -L 2>/dev/null | grep -q '^GPU '; then
    echo "run_gpu: no GPU here (nvidia-smi ${smi:+lists none}${smi:-not found}): nothing to benchmark" >&2
    return 77
  fi
  IFS=, read -r gpu_name gpu_mem driver < <("$smi" --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader,nounits -i 0 | sed 's/, */,/g')
  if [ -z "$peak" ]; then
    case $gpu_name in
      *H100*PCIe*) peak=756 ;;
      *H100*NVL* | *H200*NVL*) peak=835 ;;
      *H100* | *H200*) peak=989.4 ;;
      *A100*) peak=312 ;;
      *) peak=989.4; echo "run_gpu: unknown GPU '$gpu_name': MFU against 989.4 TFLOP/s (set CTRAIN_PEAK_TFLOPS)" ;;
    esac
  fi
else
  smi=none
  peak=${peak:-989.4}
fi
cuda_version=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
echo "run_gpu: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); GPU: $gpu_name, $gpu_mem MiB, driver $driver, nvcc ${cuda_version:-?};" \
  "peak dense bf16 $peak TFLOP/s; build $build; budget until $(date -u -d "@$deadline" +%H:%M:%S) UTC"
[ -n "${CTRAIN_BENCH_ONLY:-}" ] || : >"$work/phases.jsonl"
bench_step=$build/bench/bench_step ctrain=$build/train/ctrain
for exe in "$bench_step" "$ctrain"; do
  [ -x "$exe" ] || { echo "run_gpu: $exe missing: build first (launch/device_pass.sh)" >&2; return 1; }
done

# ---- Python: python3 with torch; transformers + peft from .devdeps/wheels where it lacks them,
# in a venv that also sees python3's own packages (a .pth file: python3 may itself be a venv,
# whose packages a --system-site-packages venv would not see).
pydeps() {
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || return 1
  if "$PY" -c 'import transformers, peft, safetensors; print("transformers", transformers.__version__, "peft", peft.__version__)'; then
    return 0
  fi
  local venv=$build/benchvenv wheels=${CTRAIN_BENCH_WHEELS:-$src/.devdeps/wheels}
  ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "run_gpu: transformers/peft missing and no $wheels (carry .devdeps/wheels)" >&2; return 1; }
  if [ ! -x "$venv/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$venv" || "$PY" -m venv --system-site-packages --without-pip "$venv" || return 1
    local sp
    sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # addsitedir, not a bare path: the parent's own .pth files (nvidia libraries...) apply too
    "$PY" -c 'import site; print("\n".join("import site; site.addsitedir(%r)" % d for d in site.getsitepackages()))' \
      >"$sp/ctrain-parent.pth"
    # the venv's own setuptools (older Pythons seed one) would shadow the parent's, which torch needs
    [ -x "$venv/bin/pip" ] && "$venv/bin/pip" uninstall -y -q setuptools wheel >/dev/null 2>&1
  fi
  if [ -x "$venv/bin/pip" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" transformers peft safetensors || return 1
  else
    "$PY" -m pip --python "$venv/bin/python" install -q --no-index --find-links "$wheels" transformers peft safetensors || return 1
  fi
  "$venv/bin/python" -c 'import torch, transformers, peft; print("venv:", "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' || return 1
  echo "$venv/bin/python" >"$work/python"
}
export -f pydeps
export PY build src work
rm -f "$work/python"
run_phase pydeps 120 pydeps
[ -s "$work/python" ] && PY=$(cat "$work/python")

TORCH_ARGS=(--device "$DEV" --dtype bf16 --peak-tflops "$peak")
CT_PRE=("$bench_step" --device "$DEV" "${PRE[@]}" --steps "$PRE_STEPS" --warmup "$PRE_WARM" --peak-tflops "$peak")

# ---- 1. pretraining, GPT-2 124M: ctrain, then PyTorch eager (the LoRA runs come before
# torch.compile, whose compile time is the least predictable)
run_phase pre_ctrain 150 "${CT_PRE[@]}" --batch "$PRE_B"
run_phase pre_eager 180 "$PY" bench/bench_torch.py "${PRE[@]}" --batch "$PRE_B" --steps "$PRE_STEPS" \
  --warmup "$PRE_WARM" "${TORCH_ARGS[@]}"

# ---- 2. LoRA, GPT-2 medium: the random base as a HF folder, a byte-token dataset, ctrain, peft
base=$work/base
LORA_MODEL=(--layers "$LORA_L" --heads "$LORA_H" --width "$LORA_C" --vocab 50257 --positions "$LORA_T"
  --seq "$LORA_T" --batch "$LORA_B" --r "$LORA_R" --alpha "$LORA_ALPHA" --dropout "$LORA_DROPOUT" --device "$DEV")
selected lora_base && rm -rf "$base"
run_phase lora_base 150 "$PY" bench/bench_lora_peft.py "${LORA_MODEL[@]}" --save-base "$base" --save-only

lora_data() {
  # ~2 MB of pseudo-random words: byte tokens (vocabulary 257, which fits the model's 50257)
  awk 'BEGIN { srand(11); split("the of and to in a is that for it as was with be by on not he this are or his from at which but have an they you were her she there had", w, " ");
    for (l = 0; l < 40000; l++) { s = ""; n = 5 + int(rand() * 10); for (i = 0; i < n; i++) s = s w[1 + int(rand() * 40)] " "; print s "." } }' \
    >"$work/lora_text.txt" || return 1
  printf '{"data": {"text": "%s", "train": "%s", "val": "%s", "val_fraction": 0.05}}\n' \
    "$work/lora_text.txt" "$work/lora_train.h5" "$work/lora_val.h5" >"$work/lora_prepare.json" || return 1
  "$ctrain" prepare "$work/lora_prepare.json" || return 1
  cat >"$work/lora.json" <<JSON
{
  "run": {"dir": "$work/lora_run", "seed": 1, "device": "$DEV"},
  "model": {"init_from": "$base"},
  "data": {"train": "$work/lora_train.h5", "seq_len": $LORA_T, "micro_batch": $LORA_B},
  "lora": {"targets": "c_attn,c_proj,c_fc", "r": $LORA_R, "alpha": $LORA_ALPHA, "dropout": $LORA_DROPOUT},
  "optim": {"lr": 2e-4, "schedule": "constant", "warmup_steps": 0, "max_steps": $CT_LORA_STEPS,
            "weight_decay": 0.0, "grad_clip": 1.0},
  "parallel": {"grad_accum": 1, "zero_stage": 1},
  "checkpoint": {"every": 0, "keep": 1},
  "log": {"every": 1, "eval_every": 0, "eval_batches": 0}
}
JSON
  cat "$work/lora.json"
}
export -f lora_data
export ctrain base DEV LORA_T LORA_B LORA_R LORA_ALPHA LORA_DROPOUT CT_LORA_STEPS CT_LORA_SKIP
run_phase lora_data 60 lora_data

# ctrain train prints no json line: this wrapper adds one from run.dir/metrics.jsonl (the mean
# step time of the steps after the first CT_LORA_SKIP).
lora_ctrain() {
  rm -rf "$work/lora_run"
  "$ctrain" train "$work/lora.json" || return $?
  "$PY" - "$work/lora_run/metrics.jsonl" "$CT_LORA_SKIP" "$((LORA_B * LORA_T))" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
skip, tokens = int(sys.argv[2]), int(sys.argv[3])
ms = [r["ms"] for r in rows[skip:]]
mean = sum(ms) / len(ms)
print(f"ctrain LoRA: {len(ms)} steps after {skip}: {mean:.2f} ms/step (median {statistics.median(ms):.2f}), "
      f"{tokens / mean * 1e3:.0f} tokens/s")
print("json: " + json.dumps({"impl": "ctrain", "steps": len(ms), "warmup": skip, "ms_per_step": round(mean, 3),
                             "ms_median": round(statistics.median(ms), 3), "tokens_per_s": round(tokens / mean * 1e3, 1),
                             "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
                             "ms_all": [r["ms"] for r in rows]}))
EOF
}
export -f lora_ctrain
if ! selected lora_ctrain || { [ -s "$base/model.safetensors" ] && [ -s "$work/lora.json" ]; }; then
  run_phase lora_ctrain 180 lora_ctrain
else
  echo "=== lora_ctrain: not run: no base model or dataset (lora_base or lora_data failed)"
  failed=1
fi
run_phase lora_peft 180 "$PY" bench/bench_lora_peft.py "${LORA_MODEL[@]}" --steps "$LORA_STEPS" --warmup "$LORA_WARM"
run_phase lora_peft_bf16 180 "$PY" bench/bench_lora_peft.py "${LORA_MODEL[@]}" --steps "$LORA_STEPS" \
  --warmup "$LORA_WARM" --base-dtype bf16

# ---- 3. Llama-3.2-1B's shape: LoRA (ctrain, peft) and full fine-tuning (ctrain), bf16.
# ctrain's random weights come from bench_step --init fast (ct_model_init_weights draws 1.2B
# normals on one host thread: half a minute of device time); transformers initialises on the GPU.
if [ "${CTRAIN_BENCH_LLAMA:-1}" = 1 ]; then
  LLAMA=(--hf-config "$LLAMA_CFG" "${LLAMA_SHAPE[@]}" --seq "$LLAMA_T" --batch "$LLAMA_B" --steps "$LLAMA_STEPS"
    --warmup "$LLAMA_WARM" --device "$DEV" --peak-tflops "$peak")
  run_phase llama_lora_ctrain 150 "$bench_step" "${LLAMA[@]}" --lora "$LORA_R" --init fast
  run_phase llama_lora_peft 240 "$PY" bench/bench_hf.py "${LLAMA[@]}" --lora "$LORA_R"
  run_phase llama_full_ctrain 180 "$bench_step" "${LLAMA[@]}" --init fast
  [ "${CTRAIN_BENCH_LLAMA_EAGER:-0}" = 1 ] && run_phase llama_full_eager 240 "$PY" bench/bench_hf.py "${LLAMA[@]}"
fi

# ---- 1b. torch.compile (compile time counted in its warm-up, reported apart), and ctrain at a
# larger batch (its MFU where memory allows; no PyTorch counterpart)
if [ "${CTRAIN_BENCH_COMPILE:-1}" = 1 ]; then
  run_phase pre_compile 300 "$PY" bench/bench_torch.py "${PRE[@]}" --batch "$PRE_B" --steps "$PRE_STEPS" \
    --warmup "$PRE_WARM" "${TORCH_ARGS[@]}" --compile
fi
[ -n "$EXTRA_B" ] && run_phase pre_ctrain_extra 120 "${CT_PRE[@]}" --batch "$EXTRA_B"


# ---- summary: bench_gpu.json, bench_gpu.md, and the table
echo
echo "=== summary ($(elapsed) s into the pass)"
"$PY" bench/gpu_summary.py --work "$work" --out "$out" --gpu "$gpu_name" --gpu-mem "$gpu_mem" --driver "$driver" \
  --cuda "${cuda_version:-?}" --peak "$peak" --smoke "$smoke" --elapsed "$(elapsed)" --pre-batch "$PRE_B" \
  --lora-batch "$LORA_B" --seq "$LORA_T" --llama-batch "$LLAMA_B" --llama-seq "$LLAMA_T" \
  --llama-config "$LLAMA_CFG${LLAMA_SHAPE[*]:+ ${LLAMA_SHAPE[*]}}" --invocation "${CTRAIN_BENCH_INVOCATION:-bash bench/run_gpu.sh}" ||
  { echo "run_gpu: the summary failed" >&2; failed=1; }
return $failed
}

main 2>&1 | tee "$out/bench_gpu.log"
exit "${PIPESTATUS[0]}"
