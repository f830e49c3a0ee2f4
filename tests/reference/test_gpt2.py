"""Reference test: ctrain's GPT-2 against Hugging Face transformers (PyTorch, fp32).

A tiny GPT2LMHeadModel is built from a GPT2Config with a fixed seed (nothing downloaded),
every parameter perturbed so no LayerNorm weight is exactly 1 and no bias exactly 0, and
saved with save_pretrained. ctrain loads it and must reproduce, within 1e-4 relative error
(max |a - b| / max |b| per tensor):
  - the logits and the mean cross-entropy loss (some targets ignored);
  - the gradient of every parameter.
Round trip: ctrain initialises a model itself and exports it; transformers loads the folder and
its logits equal ctrain's; the initialisation has GPT-2's statistics.
"""
import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from reftools import check, failures, finish, write_tokens


def tiny_model(seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=97, bos_token_id=96, eos_token_id=96, n_positions=24, n_embd=48, n_layer=3, n_head=4,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_against_transformers(refdump, work):
    model = tiny_model(0)
    model_dir = work / "hf_tiny"
    model.save_pretrained(model_dir, safe_serialization=True)

    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 17, model.config.vocab_size  # T below n_positions: positions are sliced
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :4] = -1   # ignored: a prompt that is not trained on
    targets[2, -1] = -1
    write_tokens(work / "tokens.txt", tokens, targets)

    out = work / "ctrain_out.safetensors"
    subprocess.run([refdump, str(model_dir), str(work / "tokens.txt"), str(out)], check=True)
    got = load_file(out)

    logits = model(tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    model.zero_grad()
    loss.backward()

    e = check("logits", got["logits"], logits.detach())
    print(f"logits: relative error {e:.2e}")
    e = check("loss", got["loss"], loss.detach().reshape(1))
    print(f"loss: ctrain {got['loss'].item():.7f}, transformers {loss.item():.7f}, relative error {e:.2e}")
    worst = 0.0
    params = dict(model.named_parameters())
    grad_names = [k for k in got if k.startswith("grad.")]
    # lm_head.weight is the same tensor as transformer.wte.weight (tied): one gradient
    expected = {n for n in params if n != "lm_head.weight"}
    if {k[len("grad."):] for k in grad_names} != expected:
        failures.append(f"gradient names differ: {sorted(expected ^ {k[5:] for k in grad_names})}")
    for k in grad_names:
        name = k[len("grad."):]
        if name in params:
            err = check(k, got[k], params[name].grad)
            worst = max(worst, err or 0.0)
    print(f"gradients: {len(grad_names)} tensors, worst relative error {worst:.2e}")


def test_export_round_trip(refdump, work):
    model = tiny_model(0)
    model_dir = work / "hf_shape_only"
    model.save_pretrained(model_dir, safe_serialization=True)
    g = torch.Generator().manual_seed(2)
    B, T, V = 2, 24, model.config.vocab_size
    tokens = torch.randint(0, V, (B, T), generator=g)
    write_tokens(work / "tokens2.txt", tokens, tokens)

    export = work / "ctrain_export"
    out = work / "ctrain_out2.safetensors"
    subprocess.run([refdump, str(model_dir), str(work / "tokens2.txt"), str(out), "--reinit", "1234",
                    "--export", str(export)], check=True)
    got = load_file(out)
    loaded = GPT2LMHeadModel.from_pretrained(export).eval()
    with torch.no_grad():
        logits = loaded(tokens).logits
    e = check("round-trip logits", got["logits"], logits)
    print(f"round trip: transformers loads ctrain's export, logits relative error {e:.2e}")

    # GPT-2 initialisation: normal(0, 0.02), residual projections 0.02/sqrt(2L), biases 0, LN 1
    L = loaded.config.n_layer
    for name, p in loaded.named_parameters():
        if name == "lm_head.weight":
            if p.data_ptr() != loaded.transformer.wte.weight.data_ptr():
                failures.append("exported model's lm_head is not tied to wte")
            continue
        if "ln_" in name:
            want = 1.0 if name.endswith("weight") else 0.0
            if not torch.all(p == want):
                failures.append(f"init {name}: not all {want}")
        elif name.endswith(".bias"):
            if not torch.all(p == 0):
                failures.append(f"init {name}: bias not zero")
        else:
            std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
            s, m = p.std().item(), p.mean().item()
            if abs(s - std) > 0.1 * std or abs(m) > 0.2 * std:
                failures.append(f"init {name}: mean {m:.4g} std {s:.4g}, want 0 and {std:.4g}")


def test_ctrain_info(ctrain, work):
    model = tiny_model(0)
    model_dir = work / "hf_info"
    model.save_pretrained(model_dir, safe_serialization=True)
    out = subprocess.run([ctrain, "info", str(model_dir)], check=True, capture_output=True, text=True).stdout
    want = sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    if f"parameters {want}" not in out:
        failures.append(f"ctrain info: parameter count, want {want}, got:\n{out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refdump", required=True)
    ap.add_argument("--ctrain", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test_against_transformers(args.refdump, work)
        test_export_round_trip(args.refdump, work)
        test_ctrain_info(args.ctrain, work)
    return finish("reference_gpt2")


if __name__ == "__main__":
    sys.exit(main())
