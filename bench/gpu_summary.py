"""Summary of bench/run_gpu.sh: reads each phase's facts and JSON line from the work folder,
writes OUT/bench_gpu.json (every figure, the device, the date, the commands) and
OUT/bench_gpu.md (a section ready for bench/RESULTS.md), and prints the tables.

usage: python gpu_summary.py --work DIR --out DIR --gpu NAME --gpu-mem MIB --driver V --cuda V
                             --peak TFLOPS [--smoke 0|1] [--elapsed S] [--pre-batch B] [--lora-batch B]
                             [--seq T] [--llama-batch B] [--llama-seq T] [--llama-config FILE]
                             [--invocation CMD]
Without a work folder's phases it writes the files anyway (every figure "-"): a dry run.
"""
import argparse
import datetime
import json
import os
import re


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def fmt(x, spec=",.0f", missing="-"):
    return missing if x is None else format(x, spec)


def mib(x):
    return "-" if x is None else f"{x:,.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu", default="?")
    ap.add_argument("--gpu-mem", default="?")
    ap.add_argument("--driver", default="?")
    ap.add_argument("--cuda", default="?")
    ap.add_argument("--peak", type=float, default=989.4)
    ap.add_argument("--smoke", default="0")
    ap.add_argument("--elapsed", type=float, default=0)
    ap.add_argument("--pre-batch", default="?")
    ap.add_argument("--lora-batch", default="?")
    ap.add_argument("--seq", default="?")
    ap.add_argument("--llama-batch", default="?")
    ap.add_argument("--llama-seq", default="?")
    ap.add_argument("--llama-config", default="tests/hf_configs/llama-3.2-1b.json")
    ap.add_argument("--invocation", default="bash bench/run_gpu.sh")
    a = ap.parse_args()
    w = a.work

    phases = {}
    for line in read(os.path.join(w, "phases.jsonl")).splitlines():
        try:
            p = json.loads(line)
        except ValueError:
            continue
        name = p["name"]
        p["command"] = read(os.path.join(w, name + ".cmd")).strip()
        p["result"] = load_json(os.path.join(w, name + ".json"))
        if p.get("mem_peak_mib") is not None and p.get("mem_idle_mib") is not None:
            p["mem_peak_less_idle_mib"] = p["mem_peak_mib"] - p["mem_idle_mib"]
        phases[name] = p

    def res(name):
        p = phases.get(name)
        return p["result"] if p and p.get("status") == "ok" and p.get("result") else None

    def mem(name):
        p = phases.get(name) or {}
        return p.get("mem_peak_less_idle_mib")

    def ratio(x, y, key="tokens_per_s"):
        return x[key] / y[key] if x and y and y.get(key) else None

    ct, eager, comp, extra = res("pre_ctrain"), res("pre_eager"), res("pre_compile"), res("pre_ctrain_extra")
    lct, lpf, lpb = res("lora_ctrain"), res("lora_peft"), res("lora_peft_bf16")
    lora_log = read(os.path.join(w, "lora_ctrain.log"))
    m = re.search(r"memory per rank: (.*)", lora_log)
    lora_ct_mem_line = m.group(1).strip() if m else None
    m = re.search(r"trainable params: ([\d,]+)", lora_log)
    lora_ct_trainable = int(m.group(1).replace(",", "")) if m else None

    pre = {
        "model": "GPT-2 124M: 12 layers, 12 heads, width 768, vocab 50257, seq 1024",
        "ctrain": ct, "pytorch_eager": eager, "pytorch_compile": comp, "ctrain_extra_batch": extra,
        "ctrain_over_eager": ratio(ct, eager), "ctrain_over_compile": ratio(ct, comp),
        "mfu": ct.get("mfu") if ct else None,
        "mem_peak_mib": {"ctrain": mem("pre_ctrain"), "pytorch_eager": mem("pre_eager"),
                         "pytorch_compile": mem("pre_compile"), "ctrain_extra_batch": mem("pre_ctrain_extra")},
        "targets": {"mfu": 0.45, "ctrain_over_eager": 1.3, "ctrain_over_compile": 1.0},
    }
    best_peft = max((x for x in (lpf, lpb) if x), key=lambda x: x["tokens_per_s"], default=None)
    best_name = None if best_peft is None else ("lora_peft" if best_peft is lpf else "lora_peft_bf16")
    lora = {
        "model": "GPT-2 medium: 24 layers, 16 heads, width 1024, vocab 50257, seq 1024; LoRA r=16 alpha=32 "
                 "dropout=0.05 on c_attn, c_proj, c_fc",
        "ctrain": lct, "peft_fp32_base": lpf, "peft_bf16_base": lpb,
        "ctrain_trainable_params": lora_ct_trainable, "ctrain_memory_line": lora_ct_mem_line,
        "ctrain_over_peft_fp32": ratio(lct, lpf), "ctrain_over_peft_bf16": ratio(lct, lpb),
        "ctrain_over_fastest_peft": ratio(lct, best_peft), "fastest_peft": best_name,
        "mem_peak_mib": {"ctrain": mem("lora_ctrain"), "peft_fp32_base": mem("lora_peft"),
                         "peft_bf16_base": mem("lora_peft_bf16")},
        "targets": {"ctrain_over_peft": 2.0, "lower_peak_memory": True},
    }
    llct, llpf, lfct, lfeg = res("llama_lora_ctrain"), res("llama_lora_peft"), res("llama_full_ctrain"), \
        res("llama_full_eager")

    def lower_mem(a_name, b_name):
        ma, mb = mem(a_name), mem(b_name)
        return None if ma is None or mb is None else ma < mb

    llama = {
        "model": f"{a.llama_config}: Llama-3.2-1B's shape (16 layers, width 2048, 32 heads, 8 kv heads, MLP 8192, "
                 f"vocab 128256, tied), random weights; micro-batch {a.llama_batch} x {a.llama_seq}",
        "lora": {"ctrain": llct, "peft_bf16_base": llpf, "ctrain_over_peft": ratio(llct, llpf),
                 "mem_peak_mib": {"ctrain": mem("llama_lora_ctrain"), "peft_bf16_base": mem("llama_lora_peft")},
                 "lower_peak_memory": lower_mem("llama_lora_ctrain", "llama_lora_peft")},
        "full": {"ctrain": lfct, "pytorch_eager": lfeg, "mfu": lfct.get("mfu") if lfct else None,
                 "ctrain_over_eager": ratio(lfct, lfeg),
                 "mem_peak_mib": {"ctrain": mem("llama_full_ctrain"), "pytorch_eager": mem("llama_full_eager")}},
    }
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = {
        "date": date, "smoke": a.smoke == "1", "elapsed_s": a.elapsed, "invocation": a.invocation,
        "device": {"gpu": a.gpu, "memory_mib": a.gpu_mem, "driver": a.driver, "cuda": a.cuda,
                   "peak_bf16_dense_tflops": a.peak},
        "memory_note": "mem_peak_mib: nvidia-smi memory.used sampled every 100 ms during the run, less the idle "
                       "reading just before it (the whole device: CUDA context, library workspaces, allocator "
                       "caches included)",
        "pretrain": pre, "lora": lora, "llama": llama, "phases": phases,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_gpu.json"), "w") as f:
        json.dump(summary, f, indent=1)

    def verdict(x, target):
        return "-" if x is None else ("met" if x >= target else "NOT met")

    def cmd(name):
        c = (phases.get(name) or {}).get("command", "")
        return re.sub(r"\S*/(build-device|build)/", r"\1/", c)

    L = []
    L.append("## GPU: GPT-2 124M pretraining, GPT-2 medium LoRA, Llama-3.2-1B-shaped LoRA and full fine-tuning "
             "(CUDA backend)")
    L.append("")
    if a.smoke == "1":
        L.append("**SMOKE RUN (tiny sizes on the CPU): these figures mean nothing.**")
        L.append("")
    L.append(f"Device: {a.gpu} ({a.gpu_mem} MiB), driver {a.driver}, CUDA {a.cuda}; MFU against "
             f"{a.peak:g} TFLOP/s (dense bf16, datasheet). Date: {date}. "
             f"Whole pass {a.elapsed:.0f} s.")
    L.append("")
    L.append("```")
    L.append(a.invocation)
    L.append("```")
    L.append("")
    L.append("Peak memory: nvidia-smi's memory.used sampled every 100 ms during each run, less the idle reading "
             "before it (CUDA context, library workspaces and allocator caches included, for every "
             "implementation alike); PyTorch's allocator peaks (allocated / reserved) beside it.")
    L.append("")
    B, T = a.pre_batch, a.seq
    L.append(f"### Pretraining: GPT-2 124M, bf16, micro-batch {B} x {T} tokens")
    L.append("")
    L.append("One training step (forward, backward, AdamW with clipping at 1.0); ctrain: `bench_step --device cuda` "
             "(CUDA backend, the trainer's ZeRO-1 AdamW on one rank); PyTorch: `bench/bench_torch.py` (the same "
             "model, fp32 parameters under bf16 autocast, SDPA attention, fused AdamW). Model FLOPs: "
             "`ct_model_step_flops` for both.")
    L.append("")
    L.append("| implementation | ms/step | tokens/s | TFLOP/s | MFU | peak memory | allocator peak |")
    L.append("|---|---|---|---|---|---|---|")

    def row(label, r, name, with_flops):
        """One run's table row; a run without results shows its phase's status instead."""
        ncols = 7 if with_flops else 5
        if not r:
            st = (phases.get(name) or {}).get("status", "not run")
            L.append(f"| {label} | {st} |" + " |" * (ncols - 2))
            return
        alloc = (f"{fmt(r.get('peak_mem_allocated_mib'))} / {fmt(r.get('peak_mem_reserved_mib'))} MiB"
                 if (r.get("peak_mem_allocated_mib") or -1) >= 0 else "-")
        cols = [fmt(r.get("ms_per_step"), ".1f"), fmt(r.get("tokens_per_s"))]
        if with_flops:
            cols += [fmt(r.get("tflops"), ".1f"), fmt(r.get("mfu"), ".1%")]
        cols += [mib(mem(name)), alloc]
        L.append(f"| {label} | " + " | ".join(cols) + " |")

    def pre_row(label, r, name):
        row(label, r, name, True)

    pre_row("ctrain", ct, "pre_ctrain")
    pre_row("PyTorch eager", eager, "pre_eager")
    comp_label = "PyTorch torch.compile"
    if comp:
        comp_label += f" (compile + warm-up {comp.get('warmup_s', 0):.0f} s)"
    pre_row(comp_label, comp, "pre_compile")
    if extra or "pre_ctrain_extra" in phases:
        pre_row(f"ctrain, micro-batch {(extra or {}).get('batch', '?')}", extra, "pre_ctrain_extra")
    L.append("")
    L.append(f"- MFU: **{fmt(pre['mfu'], '.1%')}** (target >= 45%: {verdict(pre['mfu'], 0.45)})")
    L.append(f"- ctrain / PyTorch eager tokens/s: **{fmt(pre['ctrain_over_eager'], '.2f')}x** "
             f"(target >= 1.3x: {verdict(pre['ctrain_over_eager'], 1.3)})")
    L.append(f"- ctrain / torch.compile tokens/s: **{fmt(pre['ctrain_over_compile'], '.2f')}x** "
             f"(target >= 1.0x: {verdict(pre['ctrain_over_compile'], 1.0)})")
    L.append("")
    L.append(f"### LoRA: GPT-2 medium (355M), r=16 on every linear layer, micro-batch {a.lora_batch} x {T} tokens")
    L.append("")
    L.append("The same random base for both (a Hugging Face folder written by `bench/bench_lora_peft.py "
             "--save-base`, loaded by ctrain as `model.init_from`); adapters r=16, alpha 32, dropout 0.05 on "
             "c_attn, c_proj (attention and MLP) and c_fc; AdamW on the adapters, clipping at 1.0. ctrain: "
             "`ctrain train` (bf16 base; tokens/s from metrics.jsonl, the mean after the first "
             f"{(lct or {}).get('warmup', '?')} steps); peft: transformers `GPT2LMHeadModel` (SDPA) + "
             "`peft.get_peft_model`, bf16 autocast, fp32 or bf16 base.")
    if lora_ct_trainable:
        L.append(f"Trainable parameters (ctrain): {lora_ct_trainable:,}; peft: "
                 f"{fmt((lpf or lpb or {}).get('trainable_params'), ',')}.")
    L.append("")
    L.append("| implementation | ms/step | tokens/s | peak memory | allocator peak |")
    L.append("|---|---|---|---|---|")

    def lora_row(label, r, name):
        row(label, r, name, False)

    lora_row("ctrain", lct, "lora_ctrain")
    lora_row("transformers + peft, fp32 base, bf16 autocast", lpf, "lora_peft")
    lora_row("transformers + peft, bf16 base, bf16 autocast", lpb, "lora_peft_bf16")
    L.append("")
    if lora_ct_mem_line:
        L.append(f"- ctrain's own count: {lora_ct_mem_line}")
    for key, label, name in (("ctrain_over_peft_fp32", "fp32 base", "lora_peft"),
                             ("ctrain_over_peft_bf16", "bf16 base", "lora_peft_bf16")):
        x = lora[key]
        mc, mp = mem("lora_ctrain"), mem(name)
        lower = None if mc is None or mp is None else mc < mp
        L.append(f"- ctrain / peft ({label}) tokens/s: **{fmt(x, '.2f')}x** (target >= 2x: {verdict(x, 2.0)}); "
                 f"peak memory {fmt(mc)} vs {fmt(mp)} MiB "
                 f"({'-' if lower is None else ('lower: met' if lower else 'NOT lower')})")
    L.append("")
    LB, LT = a.llama_batch, a.llama_seq
    L.append(f"### Llama-3.2-1B's shape, bf16, micro-batch {LB} x {LT} tokens")
    L.append("")
    L.append(f"`{a.llama_config}` (16 layers, width 2048, 32 heads, 8 kv heads, MLP 8192, vocab 128256, tied "
             "embeddings, llama3 RoPE), random weights on both sides. LoRA: r=16, alpha 32, no dropout, on every "
             "linear of the blocks (q, k, v, o, gate, up, down), AdamW on the adapters, clipping at 1.0. ctrain: "
             "`bench_step --device cuda --hf-config ... --lora 16` (bf16 base, the trainer's ZeRO-1 AdamW on one rank); "
             "peft: `bench/bench_hf.py --device cuda --lora 16` (transformers `LlamaForCausalLM`, SDPA, the base "
             "stored in bf16, bf16 autocast, `LoraConfig(target_modules=\"all-linear\")`, fused AdamW). Full "
             "fine-tuning: `bench_step --device cuda --hf-config ...` (every weight trains; MFU from "
             "`ct_model_step_flops` against the dense bf16 peak).")
    L.append("")
    L.append("| run | ms/step | tokens/s | TFLOP/s | MFU | peak memory | in use at the end | allocator peak |")
    L.append("|---|---|---|---|---|---|---|---|")

    def llama_row(label, r, name):
        if not r:
            st = (phases.get(name) or {}).get("status", "not run")
            L.append(f"| {label} | {st} |" + " |" * 6)
            return
        alloc = (f"{fmt(r.get('peak_mem_allocated_mib'))} / {fmt(r.get('peak_mem_reserved_mib'))} MiB"
                 if r.get("peak_mem_allocated_mib") is not None else "-")
        end = r.get("gpu_mem_used_mib")
        cols = [fmt(r.get("ms_per_step"), ".1f"), fmt(r.get("tokens_per_s")), fmt(r.get("tflops"), ".1f"),
                fmt(r.get("mfu"), ".1%"), mib(mem(name)), mib(end if end is not None and end >= 0 else None), alloc]
        L.append(f"| {label} | " + " | ".join(cols) + " |")

    llama_row("LoRA r=16: ctrain", llct, "llama_lora_ctrain")
    llama_row("LoRA r=16: transformers + peft, bf16 base", llpf, "llama_lora_peft")
    llama_row("full fine-tuning: ctrain", lfct, "llama_full_ctrain")
    if lfeg or "llama_full_eager" in phases:
        llama_row("full fine-tuning: PyTorch eager (fp32 parameters, bf16 autocast)", lfeg, "llama_full_eager")
    L.append("")
    x = llama["lora"]["ctrain_over_peft"]
    lower = llama["lora"]["lower_peak_memory"]
    L.append(f"- LoRA: ctrain / peft tokens/s **{fmt(x, '.2f')}x**; peak memory (nvidia-smi, less idle) "
             f"{fmt(mem('llama_lora_ctrain'))} vs {fmt(mem('llama_lora_peft'))} MiB "
             f"({'-' if lower is None else ('ctrain lower' if lower else 'ctrain NOT lower')})")
    L.append(f"- Full fine-tuning MFU (ctrain): **{fmt(llama['full']['mfu'], '.1%')}**"
             + (f"; ctrain / PyTorch eager tokens/s {fmt(llama['full']['ctrain_over_eager'], '.2f')}x" if lfeg else ""))
    L.append("- Memory columns: peak = nvidia-smi memory.used sampled every 100 ms less the idle reading; in use at "
             "the end = cudaMemGetInfo's total - free (ctrain) and torch.cuda.mem_get_info's (PyTorch), the CUDA "
             "context included; allocator peak = torch.cuda.max_memory_allocated / max_memory_reserved.")
    L.append("")
    L.append("Commands (`bench/run_gpu.sh` runs them; sizes as above):")
    L.append("")
    L.append("```")
    for name in ("pre_ctrain", "pre_eager", "pre_compile", "pre_ctrain_extra", "lora_base", "lora_ctrain",
                 "lora_peft", "lora_peft_bf16", "llama_lora_ctrain", "llama_lora_peft", "llama_full_ctrain",
                 "llama_full_eager"):
        if name in phases:
            c = cmd(name)
            if name == "lora_ctrain":
                c = "ctrain train lora.json   # written by bench/run_gpu.sh (lora_data)"
            L.append(f"{c}")
    L.append("```")
    L.append("")
    L.append("| phase | status | seconds |")
    L.append("|---|---|---|")
    for name, p in phases.items():
        L.append(f"| {name} | {p.get('status')} | {p.get('seconds', 0):.1f} |")
    md = "\n".join(L) + "\n"
    with open(os.path.join(a.out, "bench_gpu.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"written: {os.path.join(a.out, 'bench_gpu.json')}, {os.path.join(a.out, 'bench_gpu.md')}")


if __name__ == "__main__":
    main()
