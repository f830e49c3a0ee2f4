"""Reference test: ctrain's LoRA against Hugging Face peft and transformers.

A tiny random GPT-2 from transformers (every parameter perturbed) is the base.
  1. ctrain trains LoRA adapters (all-linear, r=4) for a few steps on 2 ranks (when mpiexec is
     given) and exports them in PEFT's format; peft loads them onto the same base, and its logits
     equal ctrain's within 1e-4 (max |a - b| / max |b|);
  2. `ctrain merge` folds the adapters into the base; transformers loads the merged model and its
     logits equal ctrain's too;
  3. an adapter made by peft (random A and B, targets c_attn and c_proj, rsLoRA) is loaded by ctrain
     (lora.init_from), whose logits equal PEFT's;
  4. ctrain continues training that adapter on 2 ranks, and peft loads the result.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from reftools import check, failures, finish, mpi_env, run, write_tokens


def ctrain_logits(refdump, config, tokens_path, work, env):
    out = work / "refdump.safetensors"
    run([refdump, str(config), str(tokens_path), str(out)], env)
    return load_file(out)["logits"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--refdump", required=True)
    ap.add_argument("--mpiexec", default="")
    a = ap.parse_args()
    env = mpi_env()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the byte tokenizer needs 257 tokens: the base's vocabulary covers them
        cfg = GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=256,
                         eos_token_id=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        base = GPT2LMHeadModel(cfg).eval()
        with torch.no_grad():
            for _, p in base.named_parameters():
                p.add_(0.05 * torch.randn_like(p))
        base.save_pretrained(work / "base", safe_serialization=True)
        rng = np.random.default_rng(1)
        (work / "text.txt").write_text("\n".join(" ".join(str(x) for x in rng.integers(0, 99, 9)) for _ in range(1500)))
        config = {"run": {"dir": str(work / "run"), "device": "cpu"}, "model": {"init_from": str(work / "base")},
                  "data": {"text": str(work / "text.txt"), "train": str(work / "train.h5"), "val": str(work / "val.h5"),
                           "seq_len": 32, "micro_batch": 2},
                  "optim": {"lr": 1e-2, "max_steps": 8, "warmup_steps": 1},
                  "lora": {"targets": "all-linear", "r": 4, "alpha": 8},
                  "log": {"eval_every": 0, "eval_batches": 1}}
        cfg_path = work / "lora.json"
        cfg_path.write_text(json.dumps(config))
        run([a.ctrain, "prepare", str(cfg_path)], env)
        launch = [a.mpiexec, "-n", "2", "--oversubscribe"] if a.mpiexec else []
        log = run(launch + [a.ctrain, "train", str(cfg_path)], env)
        if "trainable params: " not in log:
            failures.append("train did not print the trainable-parameter count")

        tokens = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(2))
        write_tokens(work / "tokens.txt", tokens)
        ours = ctrain_logits(a.refdump, cfg_path, work / "tokens.txt", work, env)

        # 1. peft loads ctrain's adapters
        adapter = json.loads((work / "run" / "adapter_config.json").read_text())
        if not adapter.get("fan_in_fan_out") or adapter.get("peft_type") != "LORA":
            failures.append(f"adapter_config.json: {adapter}")
        peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(work / "base"), work / "run").eval()
        with torch.no_grad():
            theirs = peft_model(tokens).logits
        check("peft on ctrain's adapters vs ctrain", ours, theirs, show=True)
        base_only = base(tokens).logits.detach()
        if ((theirs - base_only).abs().max() < 1e-6):
            failures.append("the trained adapters change nothing: B stayed zero")

        # 2. merged by ctrain, loaded by transformers
        run([a.ctrain, "merge", str(cfg_path)], env)
        merged = GPT2LMHeadModel.from_pretrained(work / "run" / "merged").eval()
        with torch.no_grad():
            check("transformers on ctrain's merged model vs ctrain", merged(tokens).logits, ours, show=True)

        # 3. a peft-made adapter, loaded by ctrain
        lc = LoraConfig(r=4, lora_alpha=12, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                        lora_dropout=0.0, use_rslora=True, init_lora_weights=False, task_type="CAUSAL_LM")
        made = get_peft_model(GPT2LMHeadModel.from_pretrained(work / "base"), lc).eval()
        made.save_pretrained(work / "peft_made")
        with torch.no_grad():
            theirs = made(tokens).logits
        cfg2 = dict(config, run={"dir": str(work / "empty_run")},
                    lora={"init_from": str(work / "peft_made")})
        cfg2_path = work / "peft_made.json"
        cfg2_path.write_text(json.dumps(cfg2))
        check("ctrain on peft's adapter vs peft", ctrain_logits(a.refdump, cfg2_path, work / "tokens.txt", work, env),
              theirs, show=True)

        # 4. ctrain continues training peft's adapter; peft loads the result
        cfg3 = dict(cfg2, run={"dir": str(work / "continued")}, optim={"lr": 1e-2, "max_steps": 3, "warmup_steps": 1})
        cfg3_path = work / "continued.json"
        cfg3_path.write_text(json.dumps(cfg3))
        run(launch + [a.ctrain, "train", str(cfg3_path)], env)
        before = load_file(work / "peft_made" / "adapter_model.safetensors")
        after = load_file(work / "continued" / "adapter_model.safetensors")
        if sorted(before) != sorted(after):
            failures.append("continued adapter: tensor names changed")
        elif all(torch.equal(before[k], after[k]) for k in before):
            failures.append("continued adapter: training changed nothing")
        cont = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(work / "base"), work / "continued").eval()
        with torch.no_grad():
            check("peft on the continued adapter vs ctrain",
                  ctrain_logits(a.refdump, cfg3_path, work / "tokens.txt", work, env), cont(tokens).logits,
                  show=True)
    return finish("reference_lora")


if __name__ == "__main__":
    sys.exit(main())
