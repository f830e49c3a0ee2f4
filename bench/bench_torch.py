"""The same GPT-2 training step as bench_step.c, in plain PyTorch eager fp32 on the CPU.

Model: learned positions, pre-LN blocks, tanh GELU, causal scaled_dot_product_attention, tied
LM head; AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings). One JSON line
(prefix "json: ") with the same fields as bench_step.

usage: python bench_torch.py [--layers 6] [--width 384] [--heads 6] [--seq 256] [--batch 8]
                             [--vocab 50257] [--steps 5] [--warmup 1] [--threads N]
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("layers", 6), ("width", 384), ("heads", 6), ("seq", 256), ("batch", 8),
                          ("vocab", 50257), ("steps", 5), ("warmup", 1),
                          ("threads", int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))]:
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
