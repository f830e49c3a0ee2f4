"""The PyTorch side of bench_step --hf-config: the same model, built by transformers from the same
config.json (any family ctrain runs: llama, mistral, qwen2, gpt2; SmolLM2 is llama), random
weights (transformers' own initialisation, seed 0; nothing downloaded), and the same step or
the same sampling.

Training (default): one step is the forward to the logits, cross-entropy over every position
against the next token of the flattened batch (as bench_step: B*T targets, the last 0), backward,
torch.optim.AdamW (lr 3e-4, betas 0.9/0.95, eps 1e-8; weight decay 0.1 on matrices and
embeddings for full training, 0 for adapters). --lora R wraps the model with peft
LoraConfig(r=R, lora_alpha=--lora-alpha (2R), lora_dropout=0, target_modules="all-linear")
first, so only the adapters train (the base frozen, as ctrain's --lora).
  --device cpu (default): fp32, eager (no torch.compile), --threads threads
  (torch.set_num_threads), no gradient clipping (as bench_step on the CPU).
  --device cuda: bf16 as PyTorch users run it: full training keeps fp32 parameters under
  torch.autocast(bfloat16) with fused AdamW; LoRA stores the frozen base in bf16 (peft keeps the
  adapters fp32) under the same autocast; gradient clipping at 1.0 (as ctrain's optimizer).
  Adds MFU for full training (ctrain's FLOP count, ct_model_step_flops, against --peak-tflops).

--decode N: transformers generate, greedy (do_sample=False), use_cache=True, exactly N new
tokens (min_new_tokens = max_new_tokens = N) after a prompt of --seq random tokens for each of
--batch sequences; --warmup untimed calls, then --steps timed. New tokens/s = B*N / the call's
time (the prefill included), and the prefill alone (one forward of the prompt with the cache,
timed apart) to give the per-token decode rate. fp32 on the CPU, bf16 weights on cuda.

Attention: --attn sdpa (default: torch's scaled_dot_product_attention, the faster of the two
for training on this CPU: see bench/RESULTS.md) or eager (transformers' matmul-softmax-matmul).

Memory: peak resident memory of the process (resource.getrusage ru_maxrss: the interpreter and
libraries included, as bench_step's includes its own); on cuda also
torch.cuda.max_memory_allocated / max_memory_reserved and the device's memory in use at the end
(torch.cuda.mem_get_info: total - free, the CUDA context included: bench_step's measure).

usage: python bench_hf.py (--hf-config FILE [--layers N] [--vocab V] [--save DIR [--save-only]]
                           | --init-from DIR) [--seq 256] [--batch 4]
                          [--steps 5] [--warmup 1] [--threads N] [--device cpu|cuda]
                          [--lora R] [--lora-alpha A] [--attn sdpa|eager] [--decode N]
                          [--peak-tflops 989.4] [--dry-run]
Weights: --hf-config builds a random model (--save DIR writes it as a Hugging Face folder,
fp32, which bench_step --init-from DIR loads: then both sides run the same weights, and with the
same tokens, drawn here as bench_step draws them (ctrain's xoshiro256** seeded 7), the first
step's loss and the greedy tokens agree); --init-from DIR loads such a folder.

--dry-run: build the model and run one step (or one generate) with no timing claims: a check
that this script works here. Prints a summary and one JSON line (prefix "json: ").
"""
import argparse
import json
import os
import resource
import statistics
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


M64 = (1 << 64) - 1


def ct_tokens(n, V, seed=7):
    """bench_step's make_batch: ctrain's ct_rng (xoshiro256** seeded through splitmix64), token =
    u64 % V, so both sides train on and prompt with the same tokens."""
    x, s = seed, []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        s.append(z ^ (z >> 31))
    rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64
    out = []
    for _ in range(n):
        out.append((rotl((s[1] * 5) & M64, 7) * 9 & M64) % V)
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out


def load_config(path, layers, vocab):
    from transformers import AutoConfig
    with open(path) as f:
        d = json.load(f)
    if layers:
        d["num_hidden_layers" if "num_hidden_layers" in d else "n_layer"] = layers
    if vocab:
        d["vocab_size"] = vocab
    model_type = d.pop("model_type")
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        d.pop(k, None)
    return AutoConfig.for_model(model_type, **d), model_type


def step_flops(cfg, B, T):
    """ct_model_step_flops (train/model/llama.c, gpt2.c): matmuls and causal attention (a sliding
    window caps it), 2 FLOPs per multiply-add, backward twice the forward."""
    N = B * T
    V, L = cfg.vocab_size, cfg.num_hidden_layers
    if cfg.model_type == "gpt2":
        C = cfg.n_embd
        matmul_fwd = 2.0 * N * (L * 12.0 * C * C + C * V)
        attn_fwd = 2.0 * 2.0 * B * L * C * (T * (T + 1) / 2.0)
        return 3.0 * (matmul_fwd + attn_fwd)
    C, I, NH = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    NKV = getattr(cfg, "num_key_value_heads", None) or NH
    D = getattr(cfg, "head_dim", None) or C // NH
    Q, KV = NH * D, NKV * D
    matmul_fwd = 2.0 * N * (L * (2.0 * C * Q + 2.0 * C * KV + 3.0 * C * I) + C * V)
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    window_from = getattr(cfg, "max_window_layers", 0) if cfg.model_type == "qwen2" else 0
    attn_fwd = 0.0
    for layer in range(L):
        w = window if window and layer >= window_from and window < T else 0
        attn_fwd += 2.0 * 2.0 * B * Q * (w * T - w * (w - 1) / 2.0 if w else T * (T + 1) / 2.0)
    return 3.0 * (matmul_fwd + attn_fwd)


def build(a, torch, dev):
    from transformers import AutoModelForCausalLM
    if a.init_from:
        model = AutoModelForCausalLM.from_pretrained(a.init_from, dtype=torch.float32, attn_implementation=a.attn,
                                                     device_map=str(dev) if dev.type == "cuda" else None)
        config = model.config
        config.use_cache = bool(a.decode)
        return model, config, config.model_type
    config, model_type = load_config(a.hf_config, a.layers, a.vocab)
    config.use_cache = bool(a.decode)
    torch.manual_seed(0)
    with dev:  # initialise where it runs (a 1B model's init on the CPU takes long)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=a.attn)
    if a.save:
        t0 = time.perf_counter()
        model.save_pretrained(a.save)
        print(f"saved the random model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, fp32) "
              f"to {a.save} in {time.perf_counter() - t0:.1f} s: {sorted(os.listdir(a.save))}", flush=True)
    return model, config, model_type


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-config", help="a config.json (tests/hf_configs/): random weights")
    src.add_argument("--init-from", metavar="DIR", help="a Hugging Face folder: its config and weights")
    ap.add_argument("--save", metavar="DIR", help="with --hf-config: save the random model there (fp32), for "
                    "bench_step --init-from DIR")
    ap.add_argument("--save-only", action="store_true", help="with --save: stop after saving")
    for name, default in [("layers", 0), ("vocab", 0), ("seq", 256), ("batch", 4), ("steps", 5), ("warmup", 1),
                          ("lora", 0), ("decode", 0),
                          ("threads", int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--lora-alpha", type=float, default=None, help="default 2 * r")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--peak-tflops", type=float, default=989.4, help="the device's dense bf16 peak, for MFU")
    ap.add_argument("--dry-run", action="store_true", help="one step, no warm-up: checks the script runs")
    a = ap.parse_args()
    if a.lora and a.decode:
        ap.error("--decode samples from the base model: leave out --lora")
    if a.init_from and (a.layers or a.vocab or a.save):
        ap.error("--init-from DIR: the folder fixes the model: leave out --layers, --vocab and --save")
    if a.save_only and not a.save:
        ap.error("--save-only needs --save DIR")
    if a.dry_run:
        a.steps, a.warmup = 1, 0
    if a.lora_alpha is None:
        a.lora_alpha = 2.0 * a.lora

    import torch
    import transformers
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    t_setup = time.perf_counter()
    model, config, model_type = build(a, torch, dev)
    if a.save_only:
        return
    src = a.init_from or a.hf_config
    info = {"impl": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
            "device": a.device, "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "attn": a.attn,
            "model": (src if a.init_from else os.path.basename(src)) + (f" --layers {a.layers}" if a.layers else "") +
            (f" --vocab {a.vocab}" if a.vocab else ""), "model_type": model_type,
            "layers": config.num_hidden_layers, "vocab": config.vocab_size, "batch": a.batch, "seq": a.seq,
            "params": sum(p.numel() for p in model.parameters()), "steps": a.steps, "warmup": a.warmup,
            "threads": None if cuda else a.threads, "dry_run": a.dry_run}
    if a.decode:
        return run_decode(a, torch, model, config, info, cuda, dev, t_setup)
    return run_train(a, torch, model, config, info, cuda, dev, t_setup)


def run_train(a, torch, model, config, info, cuda, dev, t_setup):
    import contextlib
    import torch.nn.functional as F
    lora_desc = ""
    if a.lora:
        import peft
        from peft import LoraConfig, get_peft_model
        if cuda:
            model = model.to(torch.bfloat16)  # the frozen base in bf16, as ctrain's CUDA backend stores it
        lcfg = LoraConfig(r=a.lora, lora_alpha=a.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
        trainable, total = model.get_nb_trainable_parameters()
        lora_desc = (f"; peft {peft.__version__} LoRA r={a.lora} alpha={a.lora_alpha:g} all-linear: trainable params: "
                     f"{trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")
        info.update(impl="transformers+peft", peft=peft.__version__, lora_r=a.lora, lora_alpha=a.lora_alpha,
                    trainable_params=trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": 0.0}]
    else:
        params = list(model.parameters())
        info.update(lora_r=0, trainable_params=sum(p.numel() for p in params))
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    model.train()
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    V = config.vocab_size
    idx = torch.tensor(ct_tokens(a.batch * a.seq, V), dtype=torch.long).view(a.batch, a.seq)
    targets = torch.cat([idx.view(-1)[1:], torch.zeros(1, dtype=idx.dtype)]).view(a.batch, a.seq)
    idx, targets = idx.to(dev), targets.to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    setup_s = time.perf_counter() - t_setup

    times, losses, warm_s = [], [], 0.0
    for s in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        with amp:
            logits = model(input_ids=idx, use_cache=False).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cuda:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        del logits, loss
        if s >= a.warmup:
            times.append(dt)
        else:
            warm_s += dt
    step, median = sum(times) / len(times), statistics.median(times)
    rss = peak_rss_mib()
    tokens = a.batch * a.seq
    flops = 0.0 if a.lora else step_flops(config, a.batch, a.seq)
    tflops = flops / step / 1e12
    mfu = tflops / a.peak_tflops if cuda and flops and a.peak_tflops > 0 else None
    mem = {}
    if cuda:
        free_b, total_b = torch.cuda.mem_get_info()
        mem = {"peak_mem_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
               "peak_mem_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
               "gpu_mem_used_mib": round((total_b - free_b) / 2**20), "gpu_mem_total_mib": round(total_b / 2**20)}
    prec = "bf16 autocast, " + ("bf16 base" if a.lora else "fp32 parameters") if cuda else "fp32"
    print(f"transformers {transformers_version(info)} {info['model_type']} ({a.attn} attention), torch {torch.__version__}, "
          f"{a.device} ({info['gpu']}), {prec}: {info['model']}: {info['layers']} layers, vocab {info['vocab']}, "
          f"{info['params'] / 1e6:.1f}M parameters{lora_desc}; {'LoRA' if a.lora else 'full'} step, "
          f"{a.batch} x {a.seq} tokens" + ("" if cuda else f", {a.threads} threads"))
    line = (f"  step {step * 1e3:.1f} ms (median {median * 1e3:.1f}, {a.steps} timed after {a.warmup} warm-up), "
            f"{tokens / step:.0f} tokens/s")
    if flops:
        line += f", {tflops * 1e3:.1f} GFLOP/s (model FLOPs)"
        if mfu is not None:
            line += f", MFU {100 * mfu:.1f}% of {a.peak_tflops:g} TFLOP/s"
    print(line + f", loss {losses[0]:.4f} -> {losses[-1]:.4f}, peak RSS {rss:.0f} MiB")
    if cuda:
        print(f"  GPU memory: {mem['peak_mem_allocated_mib']} MiB allocated, {mem['peak_mem_reserved_mib']} MiB "
              f"reserved at peak (PyTorch's allocator); in use at the end {mem['gpu_mem_used_mib']} MiB of "
              f"{mem['gpu_mem_total_mib']} (total - free, the CUDA context included)")
    info.update(dtype="bf16" if cuda else "fp32", setup_s=round(setup_s, 2), warmup_s=round(warm_s, 2),
                ms_per_step=round(step * 1e3, 3), ms_median=round(median * 1e3, 3),
                tokens_per_s=round(tokens / step, 1), gflops=round(tflops * 1e3, 2) if flops else None,
                tflops=round(tflops, 3) if flops else None, peak_tflops=a.peak_tflops if cuda else None,
                mfu=round(mfu, 4) if mfu is not None else None, peak_rss_mib=round(rss, 1), **mem,
                loss_first=losses[0], loss_last=losses[-1])
    print("json: " + json.dumps(info))


def transformers_version(info):
    return info["transformers"] + (f" + peft {info['peft']}" if "peft" in info else "")


def run_decode(a, torch, model, config, info, cuda, dev, t_setup):
    from transformers import GenerationConfig
    if cuda:
        model = model.to(torch.bfloat16)
    model.eval()
    V, B, P, N = config.vocab_size, a.batch, a.seq, a.decode
    prompt = torch.tensor(ct_tokens(B * P, V), dtype=torch.long).view(B, P).to(dev)
    mask = torch.ones_like(prompt)
    gen = GenerationConfig(do_sample=False, max_new_tokens=N, min_new_tokens=N, use_cache=True, num_beams=1,
                           pad_token_id=0, eos_token_id=None, bos_token_id=None)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    setup_s = time.perf_counter() - t_setup
    times, prefills, out = [], [], None
    with torch.inference_mode():
        for s in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=gen)
            sync()
            t1 = time.perf_counter()
            # the prefill alone: the prompt's forward with a cache, and the first token's argmax
            model(input_ids=prompt, attention_mask=mask, use_cache=True).logits[:, -1].argmax(-1).tolist()
            sync()
            t2 = time.perf_counter()
            if s >= a.warmup:
                times.append(t1 - t0)
                prefills.append(t2 - t1)
    new = out.shape[1] - P
    assert new == N, f"generate made {new} new tokens, not {N}"
    gen_s, prefill_s = sum(times) / len(times), sum(prefills) / len(prefills)
    per_tok = (gen_s - prefill_s) / (N - 1) if N > 1 else 0.0
    rss = peak_rss_mib()
    mem = {}
    if cuda:
        free_b, total_b = torch.cuda.mem_get_info()
        mem = {"peak_mem_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
               "gpu_mem_used_mib": round((total_b - free_b) / 2**20)}
    print(f"transformers {info['transformers']} generate, {info['model_type']} ({a.attn} attention), torch "
          f"{torch.__version__}, {a.device} ({info['gpu']}), {'bf16' if cuda else 'fp32'}: {info['model']}: "
          f"{info['layers']} layers, vocab {V}, {info['params'] / 1e6:.1f}M parameters; {B} x {P} prompt tokens, "
          f"{N} new tokens each (greedy, use_cache=True)" + ("" if cuda else f", {a.threads} threads"))
    print(f"  generation {gen_s * 1e3:.1f} ms (median {statistics.median(times) * 1e3:.1f}): prefill "
          f"{prefill_s * 1e3:.1f} ms, then {per_tok * 1e3:.2f} ms per token; {B * N / gen_s:.1f} new tokens/s "
          f"(prefill included), {B / per_tok if per_tok > 0 else 0:.1f} tokens/s decoding; "
          f"first ids {out[0, P:P + 4].tolist()}; peak RSS {rss:.0f} MiB")
    info.update(mode="decode", lora_r=0, dtype="bf16" if cuda else "fp32", new_tokens=N, setup_s=round(setup_s, 2),
                ms_generate=round(gen_s * 1e3, 3), ms_median=round(statistics.median(times) * 1e3, 3),
                ms_prefill=round(prefill_s * 1e3, 3), ms_per_token=round(per_tok * 1e3, 4),
                tokens_per_s=round(B * N / gen_s, 2), decode_tokens_per_s=round(B / per_tok, 2) if per_tok > 0 else 0,
                peak_rss_mib=round(rss, 1), **mem, ids=out[0, P:].tolist())
    print("json: " + json.dumps(info))


if __name__ == "__main__":
    main()
