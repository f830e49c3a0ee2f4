"""Reference test: ctrain's verbs on the Llama family, against transformers and peft.

A tiny Llama (grouped-query attention, tied embeddings, 257 tokens: the byte tokenizer's) and a
tiny Mistral (sliding window) are built by transformers (nothing downloaded); a small corpus of
pseudo-random words goes through `ctrain prepare`. With model.init_from = the Llama folder:
  1. full training on 1, 2 and 3 ranks with the same global batch (12 = micro-batch 2 x grad_accum
     x ranks): losses and final weights (run.dir's model, which transformers loads) within 1e-5
     relative of 1 rank's; the weights changed;
  2. a run resumed from its step-4 checkpoint (model.init_from = the checkpoint, a new run.dir)
     repeats the uninterrupted run's losses of steps 5..8 exactly and writes a byte-identical
     model.safetensors; `ctrain export` of the last checkpoint equals that model and loads in
     transformers;
  3. `ctrain eval` of the untrained folder equals transformers' mean loss over the same windows of
     data.val;
  4. LoRA (all-linear, r 4) trained by ctrain: the adapter folder (adapter_config.json with
     fan_in_fan_out false, adapter_model.safetensors with PEFT's key for every q/k/v/o/gate/up/down
     projection) loads in peft on the transformers base with ct_refdump's logits (1e-4); `ctrain
     merge` output loads in transformers with the same logits;
  5. an adapter made by peft (random A and B, rsLoRA, targets q_proj, v_proj, o_proj, gate_proj and
     the full path model.layers.1.mlp.down_proj) loads in ctrain (lora.init_from) with peft's
     logits; ctrain continues training it and peft loads the result with ctrain's logits;
  6. `ctrain sample` at temperature 0 continues a prompt with the tokens transformers picks
     greedily (the argmax of a full forward at each step; generate(do_sample=False) agrees),
     20 tokens, on the Llama and on the Mistral whose window of 8 the sequence outgrows: this
     checks the KV cache. The models are chosen so no step's top two logits are within 1e-3.
Multi-rank runs use --mpiexec (Open MPI's mpirun) when given; without it they run on 1 rank and
the 2- and 3-rank comparisons are skipped, said so in the output.
"""
import argparse
import copy
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import llamatools as lt
from reftools import check, fail, failures, finish, mpi_env, rel_err, run, write_tokens

T = 32        # data.seq_len
STEPS = 6     # steps of the equivalence runs
BASE = dict(vocab_size=257, bos_token_id=256, eos_token_id=256, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
            rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=64)


class Env:
    def __init__(self, args, work):
        self.a, self.work, self.env = args, work, mpi_env()
        self.base = lt.save(lt.tiny_model("llama", 3, **BASE), work / "base")
        rng = np.random.default_rng(7)
        words = "the of and to in a is that for it as was with be by on not he this are or his from at".split()
        lines = (" ".join(rng.choice(words, rng.integers(5, 15))) + "." for _ in range(1500))
        (work / "text.txt").write_text("\n".join(lines) + "\n")
        self.cfg_path = self.config("prepare")
        run([args.ctrain, "prepare", self.cfg_path], self.env)

    def config(self, name, **sections):
        """A config file for run.dir = work/name: the corpus, the base folder, a short schedule;
        sections replace or extend the defaults' keys."""
        w = self.work
        cfg = {"run": {"dir": str(w / name), "seed": 5, "device": "cpu"},
               "model": {"init_from": str(self.base)},
               "data": {"text": str(w / "text.txt"), "train": str(w / "train.h5"), "val": str(w / "val.h5"),
                        "val_fraction": 0.03, "seq_len": T, "micro_batch": 2},
               "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "max_steps": STEPS},
               "log": {"every": 1, "eval_every": 0, "eval_batches": 2}}
        for k, v in sections.items():
            cfg[k] = dict(cfg.get(k, {}), **v)
        path = w / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1))
        return path

    def launch(self, ranks):
        if ranks == 1 and not self.a.mpiexec:
            return []
        return [self.a.mpiexec, "-n", str(ranks), "--oversubscribe"]

    def train(self, name, ranks=1, **sections):
        cfg = self.config(name, **sections)
        log = run(self.launch(ranks) + [self.a.ctrain, "train", cfg], self.env)
        (self.work / f"{name}.log").write_text(log)
        return cfg, log

    def refdump_logits(self, cfg, tokens):
        path = self.work / "tokens.txt"
        write_tokens(path, tokens)
        out = self.work / "refdump.safetensors"
        run([self.a.refdump, cfg, path, out], self.env)
        return load_file(out)["logits"]


def losses(run_dir):
    """{step: loss} from metrics.jsonl, as printed."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def model_tensors(run_dir):
    return load_file(Path(run_dir) / "model.safetensors")


def test_ranks(e):
    """1, 2, 3 ranks, global batch 12."""
    ranks = (1, 2, 3) if e.a.mpiexec else (1,)
    if not e.a.mpiexec:
        print("skipped: 2 and 3 ranks (no --mpiexec)")
    for n in ranks:
        # lr 1e-3: AdamW turns a gradient's last-bit differences (reduction order) into weight
        # differences in proportion to lr; at 3e-3 one element of up_proj came within 1.3x of 1e-5
        e.train(f"ranks{n}", n, parallel={"grad_accum": 12 // (2 * n)}, optim={"lr": 1e-3, "min_lr": 1e-4})
    ref_l, ref_w = losses(e.work / "ranks1"), model_tensors(e.work / "ranks1")
    if sorted(ref_l) != list(range(1, STEPS + 1)):
        fail(f"ranks1: metrics.jsonl steps {sorted(ref_l)}, want 1..{STEPS}")
    init = lt.folder_tensors(e.base)
    moved = [k for k in ref_w if k in init and not torch.equal(ref_w[k], init[k])]
    if len(moved) < len(init) // 2:
        fail(f"ranks1: training changed only {len(moved)} of {len(init)} tensors")
    lt.load(e.work / "ranks1")  # run.dir is a folder transformers loads
    for n in ranks[1:]:
        got_l, got_w = losses(e.work / f"ranks{n}"), model_tensors(e.work / f"ranks{n}")
        worst = max((abs(got_l.get(s, float("nan")) - v) / abs(v) for s, v in ref_l.items()), default=0.0)
        if not worst <= 1e-5:
            fail(f"{n} ranks vs 1: losses differ by {worst:.3g} relative (> 1e-5): {got_l} vs {ref_l}")
        if set(got_w) != set(ref_w):
            fail(f"{n} ranks vs 1: tensor names differ: {sorted(set(got_w) ^ set(ref_w))}")
        werr = max((rel_err(got_w[k], ref_w[k]) for k in set(got_w) & set(ref_w)), default=0.0)
        if not werr <= 1e-5:
            fail(f"{n} ranks vs 1: final weights differ by {werr:.3g} relative (> 1e-5)")
        print(f"{n} ranks vs 1: losses within {worst:.2e}, weights within {werr:.2e}")


def test_resume(e):
    ranks = 2 if e.a.mpiexec else 1
    accum = {"grad_accum": 4 // ranks}
    e.train("full", ranks, parallel=accum, optim={"max_steps": 8}, checkpoint={"every": 4})
    ckpt = e.work / "full" / "ckpt_00000004.h5"
    if not ckpt.exists():
        fail(f"resume: {ckpt.name} missing; run dir holds {sorted(p.name for p in (e.work / 'full').iterdir())}")
        return
    _, log = e.train("resumed", ranks, parallel=accum, optim={"max_steps": 8}, checkpoint={"every": 4},
                     model={"init_from": str(ckpt)})
    a, b = losses(e.work / "full"), losses(e.work / "resumed")
    want = {s: a.get(s) for s in range(5, 9)}
    got = {s: b.get(s) for s in range(5, 9)}
    if got != want or None in want.values():
        fail(f"resume on {ranks} rank(s): losses of steps 5..8 differ: resumed {got}, uninterrupted {want}")
    elif (e.work / "full" / "model.safetensors").read_bytes() != (e.work / "resumed" / "model.safetensors").read_bytes():
        fail("resume: model.safetensors of the resumed run differs from the uninterrupted run's")
    else:
        print(f"resume on {ranks} rank(s): steps 5..8 identical, model.safetensors byte-identical")
    # ctrain export of the last checkpoint: the run's final model, as a folder transformers loads
    latest = e.work / "full" / (e.work / "full" / "latest").read_text().strip()
    run([e.a.ctrain, "export", latest, e.work / "exported"], e.env)
    have, want = lt.folder_tensors(e.work / "exported"), model_tensors(e.work / "full")
    if set(have) != set(want) or any(not torch.equal(have[k], want[k]) for k in want):
        fail(f"export of {latest.name}: tensors differ from run.dir's model.safetensors")
    lt.load(e.work / "exported")


def test_eval(e):
    """ctrain eval on the untrained base = transformers' mean loss over data.val's windows."""
    cfg = e.config("eval_run")
    out = run([e.a.ctrain, "eval", cfg], e.env)
    line = [s for s in out.splitlines() if s.startswith("val_loss ")]
    if not line:
        fail(f"eval: no 'val_loss' line:\n{out}")
        return
    got = float(line[-1].split()[1])
    with h5py.File(e.work / "val.h5", "r") as f:
        toks = torch.from_numpy(f["tokens"][()].astype(np.int64))
        mask = f["loss_mask"][()] if "loss_mask" in f else None
    B = 2
    W = (len(toks) - 1) // T
    W -= W % B  # whole micro-batches, as the loader reads them
    win = torch.stack([toks[w * T: w * T + T + 1] for w in range(W)])
    targets = win[:, 1:].clone()
    if mask is not None:
        m = torch.stack([torch.from_numpy(mask[w * T + 1: w * T + T + 1].astype(bool)) for w in range(W)])
        targets[~m] = -1
    model = lt.load(e.base)
    with torch.no_grad():
        logits = model(win[:, :-1]).logits
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1).item()
    if not abs(got - want) <= 1e-4 * abs(want):
        fail(f"eval: val_loss {got}, transformers {want:.6f} over {W} windows")
    else:
        print(f"eval: val_loss {got}, transformers {want:.6f} ({W} windows)")


def adapter_keys(base, lora_config):
    """The tensor names peft saves for this LoraConfig on base."""
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(lora_config))
    return set(get_peft_model_state_dict(model))


def test_lora_from_ctrain(e, tokens):
    ranks = 2 if e.a.mpiexec else 1
    cfg, log = e.train("lora", ranks, lora={"targets": "all-linear", "r": 4, "alpha": 8},
                       optim={"lr": 1e-2, "max_steps": 6, "warmup_steps": 1})
    if "trainable params: " not in log:
        fail("lora: train did not print the trainable-parameter count")
    ours = e.refdump_logits(cfg, tokens)
    folder = e.work / "lora"
    ac = json.loads((folder / "adapter_config.json").read_text())
    if ac.get("fan_in_fan_out") is not False or ac.get("peft_type") != "LORA" or ac.get("r") != 4:
        fail(f"lora: adapter_config.json: {ac}")
    base = lt.load(e.base)
    stored = set(load_file(folder / "adapter_model.safetensors"))
    want = adapter_keys(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(lt.LINEARS)))
    if stored != want:
        fail(f"lora: adapter tensors: missing {sorted(want - stored)[:4]}, extra {sorted(stored - want)[:4]}")
    peft_model = PeftModel.from_pretrained(lt.load(e.base), folder).eval()
    with torch.no_grad():
        theirs = peft_model(tokens).logits
        plain = base(tokens).logits
    check("peft on ctrain's adapter vs ctrain", ours, theirs, show=True)
    if rel_err(theirs, plain) < 1e-4:
        fail("lora: the trained adapter changes nothing: B stayed zero")
    run([e.a.ctrain, "merge", cfg], e.env)
    merged = lt.load(folder / "merged")
    with torch.no_grad():
        check("transformers on ctrain's merged model vs ctrain", merged(tokens).logits, ours, show=True)


def test_lora_from_peft(e, tokens):
    targets = ["q_proj", "v_proj", "o_proj", "gate_proj", "model.layers.1.mlp.down_proj"]
    lc = LoraConfig(r=4, lora_alpha=12, target_modules=targets, lora_dropout=0.0, use_rslora=True,
                    init_lora_weights=False, task_type="CAUSAL_LM")  # A and B random, B nonzero
    made = get_peft_model(lt.load(e.base), lc).eval()
    made.save_pretrained(e.work / "peft_made")
    with torch.no_grad():
        theirs = made(tokens).logits
    cfg = e.config("peft_empty", lora={"init_from": str(e.work / "peft_made")})
    check("ctrain on peft's adapter vs peft", e.refdump_logits(cfg, tokens), theirs, show=True)

    ranks = 2 if e.a.mpiexec else 1
    cfg, _ = e.train("peft_continued", ranks, lora={"init_from": str(e.work / "peft_made")},
                     optim={"lr": 1e-2, "max_steps": 3, "warmup_steps": 1})
    before = load_file(e.work / "peft_made" / "adapter_model.safetensors")
    after = load_file(e.work / "peft_continued" / "adapter_model.safetensors")
    if sorted(before) != sorted(after):
        fail(f"continued adapter: tensor names changed: {sorted(set(before) ^ set(after))[:4]}")
    elif all(torch.equal(before[k], after[k]) for k in before):
        fail("continued adapter: training changed nothing")
    cont = PeftModel.from_pretrained(lt.load(e.base), e.work / "peft_continued").eval()
    with torch.no_grad():
        check("peft on the continued adapter vs ctrain", e.refdump_logits(cfg, tokens), cont(tokens).logits,
              show=True)


def greedy(model, prompt, n):
    """Greedy continuation by a full forward at every step (no cache); the tokens, stopping at
    end-of-text, and the smallest gap between the top two logits."""
    seq, gap = list(prompt), float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(logits, 2).values
            gap = min(gap, (top[0] - top[1]).item())
            nxt = int(logits.argmax())
            if nxt == 256:
                break
            seq.append(nxt)
    return seq[len(prompt):], gap


def sample_model(e, name, family, cfg, prompt, n):
    """The first seed whose model continues the prompt greedily for n tokens without end-of-text,
    with no near-ties and at least n / 2 distinct tokens (a run of one repeated token, what small
    random weights give, proves little: weights of std 0.4 make the continuation vary)."""
    for seed in range(40):
        model = lt.tiny_model(family, 1000 + seed, **dict(cfg, initializer_range=0.4))
        gen, gap = greedy(model, prompt, n)
        if len(gen) == n and gap > 1e-3 and len(set(gen)) >= n // 2:
            return lt.save(model, e.work / name), model, gen
    fail(f"sample {name}: test setup: no seed gives {n} clear greedy tokens")
    return None, None, None


def test_sample(e):
    prompt = b"The tiny model says "
    n = 20
    mistral = dict(BASE, tie_word_embeddings=False, num_key_value_heads=1, sliding_window=8)
    for name, family, cfg in (("sample_llama", "llama", BASE), ("sample_mistral", "mistral", mistral)):
        folder, model, gen = sample_model(e, name, family, cfg, list(prompt), n)
        if folder is None:
            continue
        out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=n, do_sample=False, eos_token_id=256,
                             pad_token_id=256)[0, len(prompt):].tolist()
        if out != gen:
            fail(f"sample {name}: test setup: transformers' generate {out} != its full-forward greedy {gen}")
        c = e.config(f"{name}_run", model={"init_from": str(folder)},
                     sample={"prompt": prompt.decode(), "temperature": 0, "top_k": 1, "max_tokens": n})
        r = subprocess.run([e.a.ctrain, "sample", c], env=e.env, capture_output=True)
        want = prompt + bytes(gen)
        if r.returncode:
            fail(f"sample {name}: exit {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
        elif r.stdout not in (want, want + b"\n"):
            got = list(r.stdout[len(prompt):].rstrip(b"\n")) if r.stdout.startswith(prompt) else r.stdout
            fail(f"sample {name}: ctrain {got}, transformers {gen}")
        else:
            print(f"sample {name}: {n} greedy tokens match transformers")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--refdump", required=True)
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--only", default="", help="comma-separated: ranks, resume, eval, lora, peft, sample")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = set(filter(None, args.only.split(",")))
    tests = [("ranks", test_ranks), ("resume", test_resume), ("eval", test_eval),
             ("lora", lambda e: test_lora_from_ctrain(e, tokens)), ("peft", lambda e: test_lora_from_peft(e, tokens)),
             ("sample", test_sample)]
    tokens = torch.randint(0, 257, (2, T), generator=torch.Generator().manual_seed(2))
    with tempfile.TemporaryDirectory() as tmp:
        e = Env(args, Path(tmp))
        for name, fn in tests:
            if only and name not in only:
                continue
            try:
                fn(e)
            except SystemExit as x:  # a ctrain command failed: record it, go on with the next test
                fail(f"{name}: {x}")
            except Exception:  # e.g. a file ctrain should have written is missing
                fail(f"{name}: {traceback.format_exc(limit=3)}")
    return finish("reference_llama_train")


if __name__ == "__main__":
    sys.exit(main())
