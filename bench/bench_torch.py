"""The same GPT-2 training step as bench_step.c, in plain PyTorch.

Model: learned positions, pre-LN blocks, tanh GELU, causal scaled_dot_product_attention, tied
LM head; AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings). One JSON line
(prefix "json: ") with the same fields as bench_step.

--device cpu (default): eager fp32 on the CPU, as bench/run_cpu.sh runs it.
--device cuda: the usual mixed-precision setup of PyTorch users: fp32 parameters, the forward
and the loss under torch.autocast(bfloat16), fused AdamW, gradient clipping at 1.0 (as ctrain's
optimizer), TF32 allowed for what stays fp32; --compile wraps the model in torch.compile (its
compile time, the warm-up steps, is reported apart and not in the timed steps). Adds MFU
(ctrain's FLOP count, ct_model_step_flops, against --peak-tflops) and peak memory
(torch.cuda.max_memory_allocated / max_memory_reserved).

usage: python bench_torch.py [--layers 6] [--width 384] [--heads 6] [--seq 256] [--batch 8]
                             [--vocab 50257] [--steps 5] [--warmup 1] [--threads N]
                             [--device cpu|cuda] [--dtype fp32|bf16] [--compile]
                             [--peak-tflops 989.4]
"""
import argparse
import contextlib
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_steps import setup_device, timed_steps


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, L, NH, C):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        for name, p in self.named_parameters():  # GPT-2 initialisation, as ctrain's
            if p.dim() < 2:
                continue
            std = 0.02 / (2 * L) ** 0.5 if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def step_flops(V, L, C, B, T):
    """ct_model_step_flops (train/model/gpt2.c): matmuls and causal attention, backward twice the forward."""
    N = B * T
    matmul_fwd = 2.0 * N * (L * 12.0 * C * C + C * V)
    attn_fwd = 2.0 * 2.0 * B * L * C * (T * (T + 1) / 2.0)
    return 3.0 * (matmul_fwd + attn_fwd)


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("layers", 6), ("width", 384), ("heads", 6), ("seq", 256), ("batch", 8),
                          ("vocab", 50257), ("steps", 5), ("warmup", 1),
                          ("threads", int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: autocast to bfloat16 over fp32 parameters (mixed precision)")
    ap.add_argument("--compile", action="store_true", help="torch.compile(model)")
    ap.add_argument("--peak-tflops", type=float, default=989.4, help="the device's dense bf16 peak, for MFU")
    a = ap.parse_args()
    if a.device == "cpu" and a.dtype == "fp32" and not a.compile:
        return run_cpu(a)
    return run_mixed(a)


def run_cpu(a):
    """Eager fp32 on the CPU: bench/run_cpu.sh's reference, unchanged."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT(a.vocab, a.seq, a.layers, a.heads, a.width)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    idx = torch.randint(0, a.vocab, (a.batch, a.seq))
    targets = torch.roll(idx, -1, dims=1)
    total, losses = 0.0, []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if s >= a.warmup:
            total += dt
    step = total / a.steps
    tokens = a.batch * a.seq
    print(f"pytorch {torch.__version__} eager cpu: {a.threads} threads: step {step * 1e3:.1f} ms, "
          f"{tokens / step:.0f} tokens/s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print("json: " + json.dumps({"impl": "pytorch-eager", "torch": torch.__version__, "threads": a.threads,
                                 "ms_per_step": round(step * 1e3, 2), "tokens_per_s": round(tokens / step, 1),
                                 "loss_first": losses[0], "loss_last": losses[-1]}))


def run_mixed(a):
    """The GPU setup (also runs on the CPU, for a smoke test of this code path)."""
    cuda, dev = setup_device(a.device, a.threads)
    torch.manual_seed(0)
    t_setup = time.perf_counter()
    model = GPT(a.vocab, a.seq, a.layers, a.heads, a.width).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    step_model = torch.compile(model) if a.compile else model
    amp = (torch.autocast(device_type=a.device, dtype=torch.bfloat16) if a.dtype == "bf16"
           else contextlib.nullcontext())
    idx = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    targets = torch.roll(idx, -1, dims=1)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    setup_s = time.perf_counter() - t_setup
    step, median, warm_s, losses = timed_steps(lambda: step_model(idx, targets), list(model.parameters()), opt, amp,
                                               a.warmup, a.steps, cuda)
    tokens = a.batch * a.seq
    flops = step_flops(a.vocab, a.layers, a.width, a.batch, a.seq)
    tflops = flops / step / 1e12
    mfu = tflops / a.peak_tflops if a.peak_tflops > 0 else 0.0
    impl = "pytorch-compile" if a.compile else "pytorch-eager"
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    mem_alloc = torch.cuda.max_memory_allocated() / 2**20 if cuda else -1.0
    mem_reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else -1.0
    nparams = sum(p.numel() for p in model.parameters())
    print(f"pytorch {torch.__version__} {impl.split('-')[1]} {a.device} ({gpu}), {a.dtype}: "
          f"{a.layers} layers, width {a.width}, {a.heads} heads, vocab {a.vocab}, {a.batch} x {a.seq} tokens, "
          f"{nparams} parameters")
    print(f"  step {step * 1e3:.2f} ms (median {median * 1e3:.2f} ms, {a.steps} timed after {a.warmup} warm-up "
          f"taking {warm_s:.1f} s{', compilation included' if a.compile else ''}), {tokens / step:.0f} tokens/s, "
          f"{tflops:.1f} TFLOP/s, MFU {100 * mfu:.1f}% of {a.peak_tflops:.1f}, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if cuda:
        print(f"  peak memory: {mem_alloc:.0f} MiB allocated, {mem_reserved:.0f} MiB reserved by PyTorch's allocator "
              f"(the CUDA context not included)")
    print("json: " + json.dumps({
        "impl": impl, "torch": torch.__version__, "device": a.device, "gpu": gpu, "dtype": a.dtype,
        "compile": a.compile, "layers": a.layers, "width": a.width, "heads": a.heads, "vocab": a.vocab,
        "batch": a.batch, "seq": a.seq, "params": nparams, "steps": a.steps, "warmup": a.warmup,
        "threads": a.threads if not cuda else None, "setup_s": round(setup_s, 2), "warmup_s": round(warm_s, 2),
        "ms_per_step": round(step * 1e3, 3), "ms_median": round(median * 1e3, 3),
        "tokens_per_s": round(tokens / step, 1), "tflops": round(tflops, 2), "peak_tflops": a.peak_tflops,
        "mfu": round(mfu, 4), "peak_mem_allocated_mib": round(mem_alloc), "peak_mem_reserved_mib": round(mem_reserved),
        "loss_first": losses[0], "loss_last": losses[-1]}))


if __name__ == "__main__":
    main()
