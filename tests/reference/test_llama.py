"""Reference test: ctrain's Llama family (model_type llama, mistral, qwen2) against Hugging Face
transformers (PyTorch, fp32, eager attention).

Tiny random models are built by transformers from LlamaConfig, MistralConfig and Qwen2Config with
fixed seeds (nothing downloaded), every norm weight moved off 1 and every bias off 0, and saved
with save_pretrained. Together the cases cover grouped-query attention with groups of 1, 2, 3, 4
and all heads (kv heads = heads, heads/2, heads/3, heads/4, 1); untied embeddings, tied ones saved
without lm_head.weight and tied ones whose file also holds lm_head.weight; rope_scaling llama3
with original_max_position_embeddings below the sequence length; head_dim != hidden / heads;
Qwen2's q/k/v biases; Llama's attention_bias and mlp_bias; a Mistral sliding window shorter than
the sequence; Qwen2's use_sliding_window on the layers from max_window_layers on; a Qwen2 file as
transformers 4 wrote it (rope_theta, torch_dtype, a sliding_window that use_sliding_window false
turns off); rms_norm_eps 1e-6 and 1e-5; several rope_theta. Before ctrain is asked, the test checks
on transformers alone that each feature changes the logits (so a ctrain that ignored it would
fail), and that the transformers-4 file reads as the same model.

ct_refdump loads each folder and must reproduce, within 1e-4 relative (max |a - b| / max |b| per
tensor): the logits, the mean cross-entropy loss (some targets ignored), the gradient of every
parameter under its Hugging Face name and [out, in] layout (a tied model: one gradient, under
model.embed_tokens.weight), and (--adamw LR WD) the weights after one AdamW step, against
torch.optim.AdamW with decay on tensors of 2+ dimensions only. `ctrain info` loads every case and
counts its parameters.

Also: bf16 weights saved in several shards, and f16 in one file, load and match transformers' own
fp32 upcast; export round trips (--reinit SEED --export DIR: transformers loads DIR with ctrain's
logits, config.json carried over; a bf16 folder exported without --reinit is the same bf16 tensors
bit for bit, with dtype bfloat16); and bad folders (unknown model_type or rope type, hidden_act
other than silu, a missing shard, a tensor named twice in the index, a shard tensor the index does
not list, a shape config.json disagrees with, a tied lm_head.weight that differs from the
embedding): `ctrain info` exits non-zero, no crash, with stderr "ctrain: error:" naming the file
and the tensor or key.
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import llamatools as lt
from reftools import RTOL, check, fail, failures, finish, rel_err, write_tokens

LR, WD = 1e-3, 0.1  # the AdamW step: lr, decoupled weight decay on matrices and embeddings


def llama3_rope(orig):
    return {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": orig}


# name, family, config, T, how the file is written, edits that must change transformers' logits
CASES = [
    # multi-head attention (kv heads = heads), untied, eps 1e-6, the default rope_theta
    dict(name="llama_mha", family="llama", T=24,
         cfg=dict(vocab_size=263, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=64)),
    # kv heads = heads / 2, attention_bias (q, k, v, o) and mlp_bias, tied (no lm_head.weight in the file)
    dict(name="llama_bias_tied", family="llama", T=20,
         cfg=dict(vocab_size=270, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                  rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=64),
         matters={"rope_theta": lambda c: c.rope_parameters.update(rope_theta=10000.0)}),
    # kv heads = heads / 4, head_dim 16 != 64 / 8, llama3 rope scaling with original_max_position_embeddings
    # 32 < T = 40 (one frequency kept, one smoothed, the rest divided by the factor), tied with
    # lm_head.weight in the file
    dict(name="llama3_rope", family="llama", T=40, tied_head_in_file=True,
         cfg=dict(vocab_size=280, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rms_norm_eps=1e-5,
                  rope_parameters=dict(llama3_rope(32), rope_theta=10000.0), max_position_embeddings=128),
         matters={"llama3 scaling": lambda c: c.__setattr__("rope_parameters", {"rope_type": "default",
                                                                                 "rope_theta": 10000.0})}),
    # Mistral: one kv head, a sliding window of 8 over 24 positions, 3 layers, rope_theta 1e6, untied
    dict(name="mistral_swa", family="mistral", T=24,
         cfg=dict(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=1, sliding_window=8, rms_norm_eps=1e-5, rope_theta=1e6,
                  tie_word_embeddings=False, max_position_embeddings=64),
         matters={"sliding_window": lambda c: c.__setattr__("sliding_window", None)}),
    # Qwen2: q/k/v biases, kv heads = heads / 2, head_dim 12, sliding window 6 on layers 1 and 2
    # (max_window_layers 1), tied, eps 1e-6
    dict(name="qwen2_swa", family="qwen2", T=20,
         cfg=dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, use_sliding_window=True, sliding_window=6, max_window_layers=1,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=64),
         matters={"the window on layers >= max_window_layers":
                  lambda c: c.__setattr__("layer_types", ["full_attention"] * 3),
                  "no window below max_window_layers":
                  lambda c: c.__setattr__("layer_types", ["sliding_attention"] * 3)}),
    # Qwen2 as transformers 4 wrote it: kv heads = heads / 3, untied; sliding_window 4 in the file but
    # use_sliding_window false: no window
    dict(name="qwen2_tf4_nowindow", family="qwen2", T=16, transformers4=True,
         tf4_extra=dict(sliding_window=4, use_sliding_window=False, max_window_layers=1),
         cfg=dict(vocab_size=257, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=20000.0,
                  max_position_embeddings=32),
         matters={"a window of 4 if it were on": lambda c: (c.__setattr__("sliding_window", 4),
                                                           c.__setattr__("layer_types", ["sliding_attention"] * 2))}),
]
# the llama3 case again with its config.json as transformers 4 wrote it (rope_theta, rope_scaling, torch_dtype)
CASES.insert(3, dict(CASES[2], name="llama3_rope_tf4", transformers4=True, same_as="llama3_rope", matters={}))


def make_case(case, work, seed):
    """Builds, perturbs and saves a case's model; returns its folder."""
    model = lt.tiny_model(case["family"], seed, **copy.deepcopy(case["cfg"]))
    folder = lt.save(model, work / case["name"])
    if case.get("tied_head_in_file"):
        lt.add_tied_lm_head(folder)
    if case.get("transformers4"):
        lt.as_transformers4_config(folder, **case.get("tf4_extra", {}))
    return folder


def refdump(args, what, folder, tokens_path, out, *options):
    """Runs ct_refdump; its dump, or None with the failure recorded (ctrain not ready for this case)."""
    cmd = [args.refdump, str(folder), str(tokens_path), str(out), *map(str, options)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tail = "\n    ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        fail(f"{what}: {' '.join(['ct_refdump', *map(str, options)])} exited {r.returncode}:\n    {tail}")
        return None
    return load_file(out)


def check_named(what, prefix, got, want, rtol=RTOL):
    """Every tensor of want under prefix + name in got, no more and no fewer; the worst error."""
    names = {k[len(prefix):] for k in got if k.startswith(prefix)}
    if names != set(want):
        fail(f"{what}: {prefix}* names differ: missing {sorted(set(want) - names)}, extra {sorted(names - set(want))}")
    worst = 0.0
    for name in sorted(names & set(want)):
        err = check(f"{what}: {prefix}{name}", got[prefix + name], want[name], rtol)
        worst = max(worst, err if err is not None else float("inf"))
    return worst


def features_matter(case, folder, tokens, logits):
    """Setup check on transformers alone: each edit of the case's config changes the logits by far
    more than the tolerance, so ctrain could not pass while ignoring that feature."""
    for label, edit in case.get("matters", {}).items():
        cfg = AutoConfig.from_pretrained(folder)
        edit(cfg)
        other = lt.load(folder, config=cfg)
        with torch.no_grad():
            d = rel_err(other(tokens).logits, logits)
        if not d > 30 * RTOL:
            fail(f"{case['name']}: test setup: {label} changes transformers' logits by only {d:.2g}")
        else:
            print(f"{case['name']}: {label} matters (logits change {d:.2g})")


def test_case(args, case, work, seed, done):
    name = case["name"]
    folder = make_case(case, work, seed)
    model = lt.load(folder)
    V, T = model.config.vocab_size, case["T"]
    tokens, targets = lt.random_batch(seed + 100, 2, T, V)
    write_tokens(work / f"{name}.tokens", tokens, targets)
    logits, loss, grads = lt.forward_backward(model, tokens, targets)
    features_matter(case, folder, tokens, logits)
    if "same_as" in case:  # the transformers-4 config reads as the same model
        d = rel_err(logits, done[case["same_as"]])
        if d != 0:
            fail(f"{name}: test setup: transformers reads the transformers-4 config differently ({d:.2g})")
    done[name] = logits
    tied = model.config.tie_word_embeddings
    if tied != ("lm_head.weight" not in grads):
        fail(f"{name}: test setup: tie_word_embeddings {tied} but gradients {sorted(grads)[:3]}...")

    got = refdump(args, name, folder, work / f"{name}.tokens", work / f"{name}.out")
    if got is not None:
        e1 = check(f"{name}: logits", got.get("logits", torch.zeros(0)), logits)
        e2 = check(f"{name}: loss", got.get("loss", torch.zeros(0)), loss)
        worst = check_named(name, "grad.", got, grads)
        print(f"{name}: logits {e1:.2e}, loss {e2:.2e} (ctrain {got['loss'].item():.6f}, transformers "
              f"{loss.item():.6f}), {len(grads)} gradients, worst {worst:.2e}" if None not in (e1, e2)
              else f"{name}: shapes differ")

    got = refdump(args, f"{name} --adamw", folder, work / f"{name}.tokens", work / f"{name}.adamw", "--adamw", LR, WD)
    if got is not None:
        weights = dict(model.named_parameters())
        # tight: torch's AdamW on ctrain's own gradients (the optimizer alone)
        theirs = {n: got["grad." + n] for n in weights if "grad." + n in got}
        if len(theirs) == len(weights):
            worst = check_named(f"{name} AdamW on ctrain's gradients", "after.", got, lt.adamw_step(weights, theirs, LR, WD))
            print(f"{name}: AdamW step, worst {worst:.2e}")
        else:
            fail(f"{name} --adamw: the dump lacks gradients")
        # end to end: on transformers' gradients, leaving out the elements whose gradient is within
        # the gradient tolerance of 0 (there the step's sign, +-lr, is not determined by the oracle)
        want = lt.adamw_step(weights, grads, LR, WD)
        for n, w in want.items():
            if "after." + n in got and got["after." + n].shape == w.shape:
                g = grads[n].abs()
                sure = g > 10 * RTOL * g.max()
                d = ((got["after." + n].double() - w.double()).abs() * sure).max() / w.abs().max()
                if not d <= RTOL:
                    fail(f"{name} AdamW on transformers' gradients: after.{n}: relative error {d:.3g} > {RTOL:g}")

    r = subprocess.run([args.ctrain, "info", str(folder)], capture_output=True, text=True)
    want = sum(p.numel() for p in model.parameters())  # a tied lm_head counted once
    if r.returncode or f"parameters {want}" not in r.stdout:
        fail(f"{name}: ctrain info: exit {r.returncode}, want 'parameters {want}':\n{r.stdout}{r.stderr}")


def test_low_precision(args, work):
    """bf16 in several shards and f16 in one file: ctrain's fp32 computation on the stored values
    equals transformers' (upcast to fp32 on load)."""
    base = dict(vocab_size=290, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=100000.0,
                max_position_embeddings=64)
    for name, dtype, kw in (("bf16_sharded", torch.bfloat16, {"max_shard_size": "50KB"}),
                            ("f16", torch.float16, {})):
        folder = lt.save(lt.tiny_model("llama", 11, dtype=dtype, **base), work / name, **kw)
        shards = sorted(folder.glob("*.safetensors"))
        if "max_shard_size" in kw and (len(shards) < 3 or not (folder / "model.safetensors.index.json").exists()):
            fail(f"{name}: test setup: want 3+ shards and an index, got {[s.name for s in shards]}")
        stored = set(lt.folder_dtypes(folder).values())
        if stored != {"BF16" if dtype == torch.bfloat16 else "F16"}:
            fail(f"{name}: test setup: stored dtypes {stored}")
        model = lt.load(folder)
        tokens, targets = lt.random_batch(12, 2, 24, model.config.vocab_size)
        write_tokens(work / f"{name}.tokens", tokens, targets)
        logits, loss, grads = lt.forward_backward(model, tokens, targets)
        got = refdump(args, name, folder, work / f"{name}.tokens", work / f"{name}.out")
        if got is not None:
            e = check(f"{name}: logits", got["logits"], logits)
            check(f"{name}: loss", got["loss"], loss)
            worst = check_named(name, "grad.", got, grads)
            print(f"{name}: {len(shards)} file(s), logits {e:.2e}, gradients worst {worst:.2e}")


def test_export(args, work):
    # 1. fp32 Qwen2 (biases, tied, sliding layers): ctrain's own init, exported; transformers loads it
    case = next(c for c in CASES if c["name"] == "qwen2_swa")
    src = make_case(dict(case, name="export_src"), work, 21)
    tokens, _ = lt.random_batch(22, 2, case["T"], case["cfg"]["vocab_size"], ignore=False)
    write_tokens(work / "export.tokens", tokens)
    out = work / "export_reinit"
    got = refdump(args, "export --reinit", src, work / "export.tokens", work / "export.out", "--reinit", 1234,
                  "--export", out)
    if got is not None:
        loaded = lt.load(out)
        with torch.no_grad():
            e = check("export --reinit: transformers on ctrain's export vs ctrain's logits", loaded(tokens).logits,
                      got["logits"])
        print(f"export --reinit: transformers loads it, logits relative error {e:.2e}")
        a, b = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "vocab_size", "tie_word_embeddings", "sliding_window",
                  "use_sliding_window", "max_window_layers", "max_position_embeddings"):
            if a.get(k) != b.get(k):
                fail(f"export --reinit: config.json {k}: {b.get(k)!r}, source {a.get(k)!r}")
        if loaded.config.rope_parameters.get("rope_theta") != 1e6 or loaded.config.layer_types != lt.load(src).config.layer_types:
            fail(f"export --reinit: transformers reads rope {loaded.config.rope_parameters}, layers "
                 f"{loaded.config.layer_types}")
        dts = set(lt.folder_dtypes(out).values())
        if dts != {"F32"}:
            fail(f"export --reinit of an fp32 folder: stored dtypes {dts}")
        before = lt.folder_tensors(src)["model.layers.0.self_attn.q_proj.weight"]
        after = lt.folder_tensors(out).get("model.layers.0.self_attn.q_proj.weight")
        if after is None or torch.equal(before, after):
            fail("export --reinit: q_proj of layer 0 missing or unchanged: the weights were not reinitialised")

    # 2. a bf16 sharded folder exported as loaded: the same bf16 values, bit for bit, dtype bfloat16
    base = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=64)
    src = lt.save(lt.tiny_model("llama", 23, dtype=torch.bfloat16, **base), work / "export_bf16_src",
                  max_shard_size="30KB")
    tokens, _ = lt.random_batch(24, 2, 16, 260, ignore=False)
    write_tokens(work / "export_bf16.tokens", tokens)
    for what, opts in (("as loaded", []), ("--reinit", ["--reinit", 99])):
        out = work / f"export_bf16_{len(opts)}"
        got = refdump(args, f"bf16 export {what}", src, work / "export_bf16.tokens", work / "export_bf16.out",
                      *opts, "--export", out)
        if got is None:
            continue
        dts = set(lt.folder_dtypes(out).values())
        if dts != {"BF16"} or lt.config_dtype(out) != "bfloat16":
            fail(f"bf16 export {what}: stored dtypes {dts}, config.json dtype {lt.config_dtype(out)!r}; want BF16, bfloat16")
        if not opts:
            have, want = lt.folder_tensors(out), lt.folder_tensors(src)
            have.pop("lm_head.weight", None)  # tied: allowed, not required
            if set(have) != set(want):
                fail(f"bf16 export as loaded: tensor names differ: {sorted(set(have) ^ set(want))}")
            bad = [k for k in set(have) & set(want) if not torch.equal(have[k], want[k])]
            if bad:
                fail(f"bf16 export as loaded: {len(bad)} tensors differ from the source, e.g. {bad[0]}")
        loaded = lt.load(out)
        with torch.no_grad():
            # as loaded: ctrain computed on exactly these values; reinit: ctrain may have computed on
            # its fp32 init before rounding to bf16 for the file
            e = check(f"bf16 export {what}: transformers on the export vs ctrain's logits", loaded(tokens).logits,
                      got["logits"], RTOL if not opts else 5e-2)
        print(f"bf16 export {what}: dtypes {dts}, logits relative error {e:.2e}")


def expect_error(args, what, folder, files, keys):
    """`ctrain info folder` must exit non-zero without crashing, stderr "ctrain: error:" naming one
    of files and one of keys (a tensor or config key)."""
    r = subprocess.run([args.ctrain, "info", str(folder)], capture_output=True, text=True)
    err = r.stderr.strip()
    if r.returncode == 0:
        fail(f"bad input, {what}: ctrain info exited 0")
    elif r.returncode < 0 or r.returncode > 125:
        fail(f"bad input, {what}: ctrain info crashed (exit {r.returncode}): {err[-500:]}")
    elif "ctrain: error:" not in err or not any(f in err for f in files) or not any(k in err for k in keys):
        fail(f"bad input, {what}: stderr should name one of {files} and one of {keys}: {err[-500:]}")
    else:
        print(f"ok: bad input, {what}: {err.splitlines()[-1]}")


def test_bad_input(args, work):
    base = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=64)
    model = lt.tiny_model("llama", 31, **base)
    good = lt.save(model, work / "bad_good")
    sharded = lt.save(model, work / "bad_good_sharded", max_shard_size="40KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    if len(shard_files) < 3:
        fail(f"bad input: test setup: want 3+ shards, got {shard_files}")
        return
    for folder in (good, sharded):  # a bad case must fail for its own reason, not because llama is unknown
        r = subprocess.run([args.ctrain, "info", str(folder)], capture_output=True, text=True)
        if r.returncode:
            fail(f"bad input: ctrain info rejects the good folder {folder.name}, so the bad cases prove nothing: "
                 f"{r.stderr.strip()[-300:]}")
            return

    def variant(name, src=good):
        d = work / f"bad_{name}"
        shutil.copytree(src, d)
        return d

    d = variant("model_type")
    lt.edit_json(d / "config.json", lambda c: c.update(model_type="not_a_model"))
    expect_error(args, "unknown model_type", d, ["config.json"], ["model_type"])

    d = variant("rope_type")
    lt.edit_json(d / "config.json", lambda c: c.update(rope_parameters={"rope_type": "frobnicated", "rope_theta": 1e4}))
    expect_error(args, "unknown rope type", d, ["config.json"], ["rope_type", "rope_parameters", "rope_scaling"])

    d = variant("rope_type_tf4")
    lt.as_transformers4_config(d)
    lt.edit_json(d / "config.json", lambda c: c.update(rope_scaling={"rope_type": "frobnicated", "factor": 2.0}))
    expect_error(args, "unknown rope type (rope_scaling)", d, ["config.json"], ["rope_type", "rope_scaling"])

    d = variant("hidden_act")
    lt.edit_json(d / "config.json", lambda c: c.update(hidden_act="gelu"))
    expect_error(args, "hidden_act gelu", d, ["config.json"], ["hidden_act"])

    d = variant("missing_shard", sharded)
    gone = shard_files[1]
    (d / gone).unlink()
    expect_error(args, "index names a missing shard", d, [gone],
                 [k for k, v in index["weight_map"].items() if v == gone] + ["weight_map"])

    d = variant("twice", sharded)
    name = next(k for k, v in index["weight_map"].items() if v == shard_files[0])
    other = shard_files[-1]
    text = json.dumps(index, indent=2)
    # the same key again, mapped to another shard (JSON parsers keep both or the last: either way wrong)
    text = text.replace('"weight_map": {', f'"weight_map": {{\n    "{name}": "{other}",', 1)
    (d / "model.safetensors.index.json").write_text(text)
    expect_error(args, "a tensor named twice in the index", d, ["model.safetensors.index.json"], [name])

    d = variant("unlisted", sharded)
    name = next(k for k, v in index["weight_map"].items() if v == shard_files[1])
    lt.edit_json(d / "model.safetensors.index.json", lambda c: c["weight_map"].pop(name))
    expect_error(args, "a shard tensor the index does not list", d, [shard_files[1], "model.safetensors.index.json"],
                 [name])

    d = variant("shape")
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors = load_file(d / "model.safetensors")
    tensors[name] = tensors[name][:-8].clone()  # one kv head's rows fewer than num_key_value_heads implies
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    expect_error(args, "a tensor shape config.json disagrees with", d, ["model.safetensors"], [name])

    d = variant("tied_differs")
    lt.edit_json(d / "config.json", lambda c: c.update(tie_word_embeddings=True))  # lm_head.weight stays, != embedding
    expect_error(args, "tied lm_head.weight differs from the embedding", d, ["model.safetensors"], ["lm_head.weight"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refdump", required=True)
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--only", default="", help="comma-separated: cases, low_precision, export, bad_input")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    only = set(filter(None, args.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not only or "cases" in only:
            done = {}
            names = [c["name"] for c in CASES]
            for case in CASES:  # a case's seed: its place in CASES (same_as: the other case's)
                test_case(args, case, work, names.index(case.get("same_as", case["name"])), done)
        if not only or "low_precision" in only:
            test_low_precision(args, work)
        if not only or "export" in only:
            test_export(args, work)
        if not only or "bad_input" in only:
            test_bad_input(args, work)
    return finish("reference_llama")


if __name__ == "__main__":
    sys.exit(main())
