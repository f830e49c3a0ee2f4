"""Reference test: packing without cross-talk. Examples packed into ctrain's windows with packing
"masked" must give, on GPT-2 (learned positions), a Llama (RoPE, grouped-query heads) and a
Mistral (RoPE and a sliding window shorter than some examples), exactly what transformers gives
for each example computed alone.

Tiny models are built by transformers from their config classes (nothing downloaded) and saved as
folders. A dataset is written with h5py: /tokens, /loss_mask (each example's first tokens 0, as a
prompt), /doc_offsets (each example's first token), attributes tokenizer and tokenizer_digest
"bytes" (the models' folders have no tokenizer.json: they speak bytes, ids below their vocabulary),
vocab_size and packing "masked". Examples of 1 to 14 tokens follow one
another, some followed by padding of mask 0 (part of their document), so windows hold several
whole examples and cut others (a document begun before a window starts at position 0 in it), and
examples begin at window starts and at a window's last target.

The oracle, from the arrays alone: each window's T + 1 tokens are cut at the document starts
inside it; each piece is run through transformers alone (positions 0.., no other token visible),
its targets the next tokens of the piece with mask 1 (the one that begins the next document is
not a target: nothing of that document is seen). Then:
  1. `ctrain eval` (model.init_from = the folder, data.val = the dataset) prints val_loss = the
     oracle's summed loss over every window / its count of targets (1e-4 relative);
  2. ct_refdump on the first micro-batch of the dataset (--batch B T: ctrain's loader, its
     positions) gives the positions the documents imply exactly, the logits of every piece, the
     mean loss and the gradient of every parameter of the sum over pieces (1e-4 relative);
  3. `ctrain train`, one step on a dataset of exactly one global batch, logs the oracle's mean
     loss over those windows as the step's loss (whatever the order it reads them in);
  4. the same dataset with packing "plain" gives transformers' loss of whole windows (one causal
     sequence each, every masked-in target counted), more than 10x the tolerance away from the
     masked one.
The models' weights are drawn large (initializer_range 0.3) so that context matters: on the
transformers side the test shows that a ctrain which ignored the masks (whole windows, positions
restarting), or on GPT-2 the positions (each piece alone at the window's positions), would move
the eval loss by more than 10x the tolerance and the logits by more than 100x, so 1-3 would fail.
(With correct masks RoPE's scores depend only on distances: where a Llama's positions start is
moot there.)
"""
import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

import llamatools as lt
from reftools import RTOL, check, fail, failures, finish, rel_err, run

V = 97       # vocabulary of every model and the dataset
T = 32       # data.seq_len
B = 4        # data.micro_batch
NW = 12      # windows in the eval dataset (3 micro-batches)


def gpt2_model(seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, bos_token_id=V - 1, eos_token_id=V - 1, n_positions=40, n_embd=32, n_layer=2,
                     n_head=4, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5, initializer_range=0.3)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def models(work):
    """name -> saved folder: GPT-2, a Llama with kv heads = heads / 2 and an untied head, a Mistral
    with a window of 5 (shorter than the longest examples) and one kv head."""
    small = dict(vocab_size=V, bos_token_id=V - 1, eos_token_id=V - 1, hidden_size=32, intermediate_size=48,
                 num_hidden_layers=2, num_attention_heads=4, rms_norm_eps=1e-5, max_position_embeddings=64,
                 initializer_range=0.3)
    out = {}
    m = gpt2_model(1)
    m.save_pretrained(work / "gpt2", safe_serialization=True)
    out["gpt2"] = work / "gpt2"
    out["llama"] = lt.save(lt.tiny_model("llama", 2, num_key_value_heads=2, tie_word_embeddings=False,
                                         rope_theta=1000.0, **small), work / "llama")
    out["mistral"] = lt.save(lt.tiny_model("mistral", 3, num_key_value_heads=1, sliding_window=5,
                                           tie_word_embeddings=True, rope_theta=10000.0, **small), work / "mistral")
    return out


def oracle_model(name, folder):
    if name == "gpt2":
        return GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return lt.load(folder)


def make_stream(nwin, seed):
    """tokens, loss_mask, doc_offsets of nwin windows (nwin * T + 1 tokens)."""
    rng = np.random.default_rng(seed)
    n = nwin * T + 1
    tok, mask, docs = [], [], []
    while len(tok) < n:
        length = int(rng.integers(1, 15))
        prompt = int(rng.integers(0, length // 2 + 1))
        docs.append(len(tok))
        tok += rng.integers(0, V, length).tolist()
        mask += [0] * prompt + [1] * (length - prompt)
        if rng.random() < 0.3:  # padding, mask 0, belonging to this document
            pad = int(rng.integers(1, 6))
            tok += [V - 1] * pad
            mask += [0] * pad
    tok, mask = np.array(tok[:n], dtype=np.uint32), np.array(mask[:n], dtype=np.uint8)
    docs = np.array([d for d in docs if d < n], dtype=np.uint64)
    return tok, mask, docs


def write_dataset(path, tok, mask, docs, packing):
    with h5py.File(path, "w") as f:
        f["tokens"] = tok
        f["loss_mask"] = mask
        f["doc_offsets"] = docs
        f.attrs["tokenizer"] = "bytes"
        f.attrs["tokenizer_digest"] = "bytes"
        f.attrs["vocab_size"] = V
        f.attrs["packing"] = packing


def pieces(tok, mask, docs, w):
    """Window w cut at its document starts: [(a, b, inputs, targets)] with positions a..b-1 of the
    window; targets -1 where not counted. Also the window's positions as the documents imply."""
    s = w * T
    starts = {int(d) - s for d in docs if s < int(d) <= s + T}
    cuts = [0] + sorted(r for r in starts if r < T) + [T]
    out, pos = [], np.zeros(T, dtype=np.int64)
    for a, b in zip(cuts[:-1], cuts[1:]):
        inputs = torch.from_numpy(tok[s + a: s + b].astype(np.int64))
        tg = [int(tok[s + j + 1]) if mask[s + j + 1] and (j + 1) not in starts else -1 for j in range(a, b)]
        out.append((a, b, inputs, torch.tensor(tg)))
        pos[a:b] = np.arange(b - a)
    return out, pos


def oracle(model, tok, mask, docs, windows, grads=False, ignore=None):
    """Summed loss and target count over the windows, each piece alone; the logits [W, T, V]; with
    grads, the gradient of the mean loss (every parameter, by name). ignore: what a ctrain that
    got packing wrong would compute instead, with the same targets: "mask" (the whole window as
    one causal sequence, positions still restarting) or "positions" (each piece alone, but at the
    window's positions a..b-1)."""
    model.zero_grad()
    total, count, logits = 0.0, 0, torch.zeros(len(windows), T, V)
    losses = []
    for i, w in enumerate(windows):
        cut, pos = pieces(tok, mask, docs, w)
        if ignore == "mask":
            inputs = torch.from_numpy(tok[w * T: w * T + T].astype(np.int64))
            with torch.no_grad():
                lg = model(inputs[None], position_ids=torch.from_numpy(pos)[None]).logits[0]
            cut = [(a, b, None, tg) for a, b, _, tg in cut]
        for a, b, inputs, tg in cut:
            with torch.set_grad_enabled(grads):
                if ignore == "mask":
                    lp = lg[a:b]
                else:
                    at = torch.arange(a, b)[None] if ignore == "positions" else None
                    lp = model(inputs[None], position_ids=at).logits[0]
            logits[i, a:b] = lp.detach()
            losses.append(F.cross_entropy(lp, tg, ignore_index=-1, reduction="sum"))
            count += int((tg >= 0).sum())
    total = torch.stack(losses).sum()
    if grads:
        (total / count).backward()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None} if grads else {}
    return total.item(), count, logits, g


def oracle_plain(model, tok, mask, windows):
    """transformers' loss over whole windows, one causal sequence each: (summed loss, count)."""
    total, count = 0.0, 0
    for w in windows:
        s = w * T
        inputs = torch.from_numpy(tok[s: s + T].astype(np.int64))
        tg = torch.tensor([int(tok[s + j + 1]) if mask[s + j + 1] else -1 for j in range(T)])
        with torch.no_grad():
            lg = model(inputs[None]).logits[0]
        total += F.cross_entropy(lg, tg, ignore_index=-1, reduction="sum").item()
        count += int((tg >= 0).sum())
    return total, count


def eval_config(work, name, folder, val, **data):
    cfg = {"run": {"dir": str(work / f"run_{name}"), "device": "cpu", "seed": 3},
           "model": {"init_from": str(folder)},
           "data": dict({"val": str(val), "seq_len": T, "micro_batch": B}, **data)}
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def val_loss(out):
    lines = [s for s in out.splitlines() if s.startswith("val_loss ")]
    return float(lines[-1].split()[1]) if lines else None


def close(what, got, want, rtol=RTOL):
    ok = got is not None and abs(got - want) <= rtol * abs(want)
    (print if ok else fail)(f"{what}: ctrain {got}, transformers {want:.6f}")
    return ok


def test_model(a, work, name, folder, data):
    tok, mask, docs = data["stream"]
    model = oracle_model(name, folder)
    windows = list(range(NW))

    # 1. ctrain eval over every window
    total, count, _, _ = oracle(model, tok, mask, docs, windows)
    want = total / count
    got = val_loss(run([a.ctrain, "eval", eval_config(work, name, folder, data["masked"])]))
    close(f"{name}: eval, masked packing", got, want)
    # ... which a ctrain that ignored the masks, or GPT-2's positions, would miss by far (RoPE's
    # scores depend only on distances: within correct masks, where positions start is moot)
    _, _, logits, _ = oracle(model, tok, mask, docs, windows)
    for ignore in ("mask", "positions") if name == "gpt2" else ("mask",):
        wrong, n, wlogits, _ = oracle(model, tok, mask, docs, windows, ignore=ignore)
        err = rel_err(wlogits, logits)
        print(f"{name}: with the {ignore} ignored: loss {wrong / n:.6f}, logits' relative error {err:.2e}")
        if not (abs(wrong / n - want) > 10 * RTOL * want and err > 100 * RTOL):
            fail(f"{name}: ignoring the {ignore} moves the loss by less than 10x the tolerance or the logits by "
                 "less than 100x")

    # 4. plain packing: whole windows, and not the masked loss
    ptotal, pcount = oracle_plain(model, tok, mask, windows)
    got_plain = val_loss(run([a.ctrain, "eval", eval_config(work, name + "_plain", folder, data["plain"])]))
    close(f"{name}: eval, plain packing (whole windows)", got_plain, ptotal / pcount)
    if got is not None and got_plain is not None and not abs(got_plain - got) > 10 * RTOL * got:
        fail(f"{name}: plain packing's loss {got_plain} is within 10x the tolerance of masked packing's {got}")

    # 2. the first micro-batch through ct_refdump: positions, logits, loss, every gradient
    out = work / f"refdump_{name}.safetensors"
    run([a.refdump, folder, data["masked"], out, "--batch", B, T])
    d = load_file(out)
    want_pos = np.stack([pieces(tok, mask, docs, w)[1] for w in range(B)])
    if not np.array_equal(d["pos"].numpy().astype(np.int64), want_pos):
        fail(f"{name}: the loader's positions differ from the documents'")
    total, count, logits, grads = oracle(model, tok, mask, docs, list(range(B)), grads=True)
    check(f"{name}: logits of the first micro-batch", d["logits"], logits, show=True)
    check(f"{name}: mean loss of the first micro-batch", d["loss"], torch.tensor([total / count]), show=True)
    names = {k[len("grad."):] for k in d if k.startswith("grad.")}
    if names != set(grads) - {"lm_head.weight"} and names != set(grads):
        fail(f"{name}: gradient names differ: {sorted(names ^ set(grads))}")
    worst = 0.0
    for n in sorted(names & set(grads)):
        worst = max(worst, check(f"{name}: gradient {n}", d["grad." + n], grads[n]) or 0.0)
    print(f"{name}: {len(names)} gradients, worst relative error {worst:.2e}")


def test_train(a, work, folders, data):
    """3. one training step over a dataset of exactly one global batch (B windows): its logged loss
    is the mean over those windows whatever the order the loader took them in."""
    tok, mask, docs = data["stream1"]
    for name in ("gpt2", "llama"):
        cfg = eval_config(work, name + "_train", folders[name], data["masked"], train=str(data["masked1"]))
        c = json.loads(cfg.read_text())
        c["optim"] = {"max_steps": 1, "warmup_steps": 0, "lr": 1e-3}
        c["log"] = {"every": 1, "eval_every": 0}
        cfg.write_text(json.dumps(c, indent=1))
        run([a.ctrain, "train", cfg])
        rec = [json.loads(s) for s in (Path(c["run"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
        got = [r["loss"] for r in rec if "loss" in r]
        total, count, _, _ = oracle(oracle_model(name, folders[name]), tok, mask, docs, list(range(B)))
        close(f"{name}: train step 1 loss, masked packing", got[0] if got else None, total / count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--refdump", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = models(work)
        tok, mask, docs = make_stream(NW, 12)
        tok1, mask1, docs1 = make_stream(B, 13)
        data = {"stream": (tok, mask, docs), "stream1": (tok1, mask1, docs1),
                "masked": work / "masked.h5", "plain": work / "plain.h5", "masked1": work / "masked1.h5"}
        write_dataset(data["masked"], tok, mask, docs, "masked")
        write_dataset(data["plain"], tok, mask, docs, "plain")
        write_dataset(data["masked1"], tok1, mask1, docs1, "masked")
        # the stream has what the test claims: documents cut by windows and starting inside them
        if not (any(d > 0 and d % T == 0 for d in docs) and any(d % T for d in docs)):
            fail("the packed stream has no document starting at a window start, or none inside one")
        for name, folder in folders.items():
            try:
                test_model(args, work, name, folder, data)
            except SystemExit as x:
                fail(f"{name}: {x}")
            except Exception:
                fail(f"{name}: {traceback.format_exc(limit=3)}")
        try:
            test_train(args, work, folders, data)
        except SystemExit as x:
            fail(f"train: {x}")
    return finish("reference_packing")


if __name__ == "__main__":
    sys.exit(main())
