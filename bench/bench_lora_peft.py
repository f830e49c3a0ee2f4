"""LoRA fine-tuning step of a GPT-2 with transformers + peft: the reference ctrain's LoRA is
measured against (bench/run_gpu.sh).

The model is transformers' GPT2LMHeadModel built from a GPT2Config (GPT-2 medium by default:
24 layers, 16 heads, width 1024, vocab 50257, 1024 positions; random init, nothing downloaded;
no dropout in the base, as ctrain's GPT-2 has none; SDPA attention). Adapters:
peft LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules c_attn, c_proj, c_fc,
fan_in_fan_out=True), so every linear layer of every block. Training is the usual
mixed-precision setup: forward and loss under torch.autocast(bfloat16), AdamW (fused on cuda)
on the adapters only, the loss from labels (transformers shifts them), use_cache=False.
--base-dtype bf16 instead stores the frozen base in bfloat16 (peft keeps the adapters fp32).
Random tokens; warm-up steps, then timed steps (synchronised).

--save-base DIR first writes the random base as a Hugging Face folder (config.json +
model.safetensors, fp32), so ctrain can start from the same weights (model.init_from = DIR);
--save-only stops there.

Prints a summary and one JSON line (prefix "json: "): tokens/s, ms/step, and peak memory as
PyTorch's allocator counts it (max_memory_allocated, max_memory_reserved; the CUDA context
not included).
"""
import argparse
import contextlib
import inspect
import json
import os
import time

import torch
from torch_steps import setup_device, timed_steps


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("layers", 24), ("heads", 16), ("width", 1024), ("vocab", 50257), ("positions", 1024),
                          ("seq", 1024), ("batch", 8), ("steps", 10), ("warmup", 3), ("r", 16), ("seed", 0),
                          ("threads", int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--base-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="fp32: fp32 base under bf16 autocast (default); bf16: the frozen base stored in bf16")
    ap.add_argument("--save-base", metavar="DIR", help="write the random base model here first (HF folder)")
    ap.add_argument("--save-only", action="store_true", help="with --save-base: stop after saving")
    a = ap.parse_args()

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    cuda, dev = setup_device(a.device, a.threads)
    torch.manual_seed(a.seed)
    t_setup = time.perf_counter()
    config = GPT2Config(vocab_size=a.vocab, n_positions=a.positions, n_embd=a.width, n_layer=a.layers,
                        n_head=a.heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, use_cache=False)
    with dev:  # initialise where it runs: a 355M model's init on the CPU takes long
        try:
            model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
        except (TypeError, ValueError):
            model = GPT2LMHeadModel(config)
    if a.save_base:
        t0 = time.perf_counter()
        kw = {"safe_serialization": True} if "safe_serialization" in inspect.signature(
            model.save_pretrained).parameters else {}
        model.save_pretrained(a.save_base, **kw)
        print(f"saved the random base ({sum(p.numel() for p in model.parameters())} parameters) to {a.save_base} "
              f"in {time.perf_counter() - t0:.1f} s: {sorted(os.listdir(a.save_base))}", flush=True)
        if a.save_only:
            return

    import peft
    from peft import LoraConfig, get_peft_model

    if a.base_dtype == "bf16":
        model = model.to(torch.bfloat16)
    lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    trainable, total = model.get_nb_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            **({"fused": True} if cuda else {}))
    amp = torch.autocast(device_type=a.device, dtype=torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    idx = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    setup_s = time.perf_counter() - t_setup

    step, median, warm_s, losses = timed_steps(
        lambda: model(input_ids=idx, labels=idx, use_cache=False).loss, params, opt, amp, a.warmup, a.steps, cuda)
    tokens = a.batch * a.seq
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    mem_alloc = torch.cuda.max_memory_allocated() / 2**20 if cuda else -1.0
    mem_reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else -1.0
    print(f"transformers {transformers.__version__} + peft {peft.__version__}, torch {torch.__version__}, "
          f"{a.device} ({gpu}): GPT-2 {a.layers} layers, width {a.width}, {a.heads} heads, vocab {a.vocab}; "
          f"LoRA r={a.r} alpha={a.alpha:g} dropout={a.dropout:g} on c_attn, c_proj, c_fc; base {a.base_dtype}, "
          f"bf16 autocast; {a.batch} x {a.seq} tokens")
    print(f"  trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")
    print(f"  step {step * 1e3:.2f} ms (median {median * 1e3:.2f} ms, {a.steps} timed after {a.warmup} warm-up), "
          f"{tokens / step:.0f} tokens/s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if cuda:
        print(f"  peak memory: {mem_alloc:.0f} MiB allocated, {mem_reserved:.0f} MiB reserved by PyTorch's allocator "
              f"(the CUDA context not included)")
    print("json: " + json.dumps({
        "impl": "peft", "transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__,
        "device": a.device, "gpu": gpu, "base_dtype": a.base_dtype, "autocast": "bf16", "layers": a.layers,
        "width": a.width, "heads": a.heads, "vocab": a.vocab, "batch": a.batch, "seq": a.seq, "r": a.r,
        "alpha": a.alpha, "dropout": a.dropout, "trainable_params": trainable, "all_params": total,
        "steps": a.steps, "warmup": a.warmup, "setup_s": round(setup_s, 2), "warmup_s": round(warm_s, 2),
        "ms_per_step": round(step * 1e3, 3), "ms_median": round(median * 1e3, 3),
        "tokens_per_s": round(tokens / step, 1), "peak_mem_allocated_mib": round(mem_alloc),
        "peak_mem_reserved_mib": round(mem_reserved), "loss_first": losses[0], "loss_last": losses[-1]}))


if __name__ == "__main__":
    main()
