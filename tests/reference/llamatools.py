"""The Llama family's tiny models for the reference tests: built by transformers from its config
classes with a fixed seed (nothing downloaded), perturbed, saved as Hugging Face folders; and the
oracle's side of each comparison (transformers in fp32, eager attention)."""
import json
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_model(family, seed, dtype=torch.float32, **cfg):
    """A random model of the family: weights normal(0, initializer_range) as transformers draws
    them, then every norm weight moved off 1 and every bias off 0 (0.1 * normal), so a kernel that
    drops one shows."""
    config_cls, model_cls = FAMILIES[family]
    cfg.setdefault("initializer_range", 0.08)  # large enough that attention is far from uniform
    cfg.setdefault("attention_dropout", 0.0)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def save(model, folder, **kw):
    model.save_pretrained(folder, safe_serialization=True, **kw)
    return Path(folder)


def load(folder, **kw):
    """The oracle: transformers' own reading of the folder, fp32 (bf16/f16 files upcast), eager attention."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager", **kw).eval()


def edit_json(path, fn):
    """Rewrites a JSON file after fn(obj) changed obj in place (fn's result is ignored)."""
    path = Path(path)
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj, indent=2))


def as_transformers4_config(folder, **extra):
    """Rewrites config.json as transformers 4 wrote it: rope_theta and rope_scaling at the top
    level instead of rope_parameters, torch_dtype instead of dtype, no layer_types."""
    def fn(c):
        rope = c.pop("rope_parameters", None) or {}
        c["rope_theta"] = rope.pop("rope_theta", 10000.0)
        rope_type = rope.pop("rope_type", "default")
        c["rope_scaling"] = dict(rope, rope_type=rope_type) if rope_type != "default" else None
        c["torch_dtype"] = c.pop("dtype", "float32")
        c.pop("layer_types", None)
        c.update(extra)
    edit_json(Path(folder) / "config.json", fn)


def add_tied_lm_head(folder):
    """A tied model's file that also holds lm_head.weight (equal to the embedding), as some
    checkpoints do."""
    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, path, metadata={"format": "pt"})


def st_header(path):
    """A safetensors file's JSON header (name -> {dtype, shape, data_offsets}, __metadata__)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def folder_tensors(folder):
    """Every tensor of a folder, single file or sharded, as stored (dtype kept)."""
    folder = Path(folder)
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def folder_dtypes(folder):
    """{tensor name: safetensors dtype string} over every .safetensors file of the folder."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update({k: v["dtype"] for k, v in st_header(f).items() if k != "__metadata__"})
    return out


def config_dtype(folder):
    c = json.loads((Path(folder) / "config.json").read_text())
    return c.get("dtype", c.get("torch_dtype"))


def random_batch(seed, B, T, V, ignore=True):
    """Tokens and targets in [0, V); some targets -1 (not counted) when ignore."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    if ignore:
        targets[0, :3] = -1
        targets[-1, -1] = -1
    return tokens, targets


def forward_backward(model, tokens, targets):
    """logits [B, T, V], the mean cross-entropy over targets != -1 [1], and {name: gradient} of
    every parameter (a tied lm_head is the embedding: one entry, model.embed_tokens.weight)."""
    model.zero_grad()
    logits = model(tokens).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), loss.detach().reshape(1), grads


def adamw_step(weights, grads, lr, wd):
    """One torch.optim.AdamW step (betas 0.9/0.999, eps 1e-8) from fresh state: decay wd on every
    tensor of 2 or more dimensions, none on 1-D ones. Returns {name: weights after}."""
    params = {n: torch.nn.Parameter(w.detach().clone().float()) for n, w in weights.items()}
    for n, p in params.items():
        p.grad = grads[n].detach().clone().float()
    groups = [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8).step()
    return {n: p.detach() for n, p in params.items()}
