"""Reference test: chat fine-tuning end to end, against transformers.

A tiny Llama and a SmolLM2-style byte-level tokenizer (digits split, <|im_start|>/<|im_end|>, trained
offline with tokenizers on the bundled corpus) are saved as one Hugging Face folder with SmolLM2's
published chat template (tests/chat_templates/smollm2-instruct.jinja, in chat_template.jinja). Then:

1. `ctrain prepare` on a JSON Lines file of conversations (system or not, one to three exchanges):
   every document of the train and val datasets starts with exactly the ids of transformers'
   apply_chat_template(messages, tokenize=True), and its loss mask is 1 on exactly the tokens of
   each assistant reply through its <|im_end|>; the datasets name the folder's tokenizer (its
   digest) and packing "masked"; a conversation whose roles break the template's rules, or without an
   assistant turn, is an error naming the file, the line and the message.
2. `ctrain train` (full fine-tuning, a few steps) accepts them; `ctrain train` of a byte-level model
   on them is refused, naming both tokenizers.
3. `ctrain eval` of the trained run (whose folder carries the tokenizer and template) gives the
   loss transformers computes on each val conversation alone, labels -100 off the mask.
4. `ctrain chat` at temperature 0 answers a user message exactly as transformers' greedy generate
   from apply_chat_template(add_generation_prompt=True), stopping at <|im_end|>.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
import llamatools as lt  # noqa: E402
from reftools import fail, finish, run  # noqa: E402
from test_tokenizer import byte_level, corpus_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T = 256  # data.seq_len


def make_folder(work, lines):
    tok = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                     ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=400)
    folder = work / "smol"
    model = lt.tiny_model("llama", 5, vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=True,
                          bos_token_id=tok.token_to_id("<|im_start|>"), eos_token_id=tok.token_to_id("<|im_end|>"))
    with torch.no_grad():  # sharper logits: greedy picks that rounding cannot flip
        for p in model.parameters():
            p.mul_(3.0)
    lt.save(model, folder)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
           "pad_token": "<|im_end|>", "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").write_text(
        (ROOT / "tests/chat_templates/smollm2-instruct.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def conversations(rng, lines, n):
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": rng.choice(lines)[:40]}] if rng.random() < 0.4 else []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": rng.choice(lines)[:24]})
            msgs.append({"role": "assistant", "content": rng.choice(lines)[:24]})
        out.append(msgs)
    return out


def expected(hf, msgs):
    """apply_chat_template's ids, and the mask over each reply through its <|im_end|>."""
    ids = list(hf.apply_chat_template(msgs, tokenize=True, return_dict=False))
    text = hf.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            before = hf.apply_chat_template(msgs[:i], tokenize=False) if i else ""
            through = hf.apply_chat_template(msgs[:i + 1], tokenize=False)
            start = len(before) + len("<|im_start|>assistant\n")
            spans.append((start, len(through) - 1))  # less the "\n" after <|im_end|>
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != ids:
        fail("the rendered text does not tokenize to apply_chat_template's ids")
    mask = [int(any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
    return ids, mask


def read_dataset(path):
    with h5py.File(path, "r") as f:
        return (f["tokens"][()].astype(np.int64), f["loss_mask"][()].astype(np.int64), f["doc_offsets"][()],
                {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()})


def check_dataset(name, path, convs, hf, folder):
    tokens, mask, docs, attrs = read_dataset(path)
    if attrs.get("tokenizer") != folder.name or attrs.get("packing") != "masked":
        fail(f"{name}: attributes {attrs}")
    if len(docs) != len(convs):
        fail(f"{name}: {len(docs)} documents for {len(convs)} conversations")
        return
    bad = 0
    for k, (start, msgs) in enumerate(zip(docs, convs)):
        ids, m = expected(hf, msgs)
        got, gm = tokens[start:start + len(ids)].tolist(), mask[start:start + len(ids)].tolist()
        if got != ids or gm != m:
            bad += 1
            if bad <= 3:
                fail(f"{name}: conversation {k}: ids equal {got == ids}, masks equal {gm == m}\n"
                     f"  got  {got}\n  want {ids}\n  mask {gm}\n  want {m}")
    print(f"{name}: {len(convs) - bad} of {len(convs)} conversations equal apply_chat_template's ids and masks")


def reference_val_loss(run_dir, convs, hf):
    model = lt.load(run_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for msgs in convs:
            ids, mask = expected(hf, msgs)
            x = torch.tensor([ids])
            labels = torch.tensor([[t if mk else -100 for t, mk in zip(ids, mask)]])
            logits = model(x).logits[0, :-1].double()
            total += F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum").item()
            count += int((labels[0, 1:] != -100).sum())
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    args = ap.parse_args()
    rng = random.Random(11)
    lines = [l for l in corpus_lines() if l.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = make_folder(work, lines[:4000])
        hf = AutoTokenizer.from_pretrained(folder)
        convs = conversations(rng, lines, 40)
        with open(work / "chat.jsonl", "w", encoding="utf-8") as f:
            for msgs in convs:
                f.write(json.dumps({"messages": msgs}) + "\n")
        cfg = {"run": {"dir": str(work / "run"), "device": "cpu", "seed": 3},
               "model": {"init_from": str(folder)},
               "data": {"text": str(work / "chat.jsonl"), "train": str(work / "train.h5"), "val": str(work / "val.h5"),
                        "val_fraction": 0.25, "seq_len": T, "micro_batch": 2},
               "optim": {"max_steps": 4, "warmup_steps": 1, "lr": 1e-3},
               "log": {"every": 1, "eval_every": 0, "eval_batches": 0},
               "sample": {"temperature": 0, "max_tokens": 12}}
        cfg_path = work / "chat.json"
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ, OMP_NUM_THREADS="2")
        out = run([args.ctrain, "prepare", cfg_path], env)
        if "smollm2-instruct" not in out and "chatml" not in out:
            fail(f"prepare did not say which template it used: {out}")
        nval = round(0.25 * len(convs))
        check_dataset("train", work / "train.h5", convs[:-nval], hf, folder)
        check_dataset("val", work / "val.h5", convs[-nval:], hf, folder)

        # bad conversations: an error naming the file, the line and the message, nothing written
        bad = work / "bad.jsonl"
        good = json.dumps({"messages": convs[0]})
        for line, msgs, want in [
                (2, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                     {"role": "assistant", "content": "c"}],
                 "line 2: message 1 (user): Conversation roles must alternate"),
                (3, [{"role": "user", "content": "a"}], "line 3: messages: no assistant turn with text")]:
            bad.write_text("\n".join([good] * (line - 1) + [json.dumps({"messages": msgs}), good]) + "\n")
            r = subprocess.run([args.ctrain, "prepare", cfg_path, "--set", f"data.text={bad}", "--set",
                                "data.chat_template=llama2", "--set", f"data.train={work}/bad_t.h5", "--set",
                                f"data.val={work}/bad_v.h5"], capture_output=True, text=True, env=env)
            if r.returncode != 1 or f"{bad}: {want}" not in r.stderr or (work / "bad_t.h5").exists():
                fail(f"bad conversation on line {line}: rc {r.returncode}, {r.stderr[-300:]}")

        # a byte-level model refuses the data, naming both tokenizers
        r = subprocess.run([args.ctrain, "train", cfg_path, "--set", "model.init_from=", "--set", "model.vocab_size=512",
                            "--set", "model.max_seq_len=256", "--set", f"run.dir={work}/bytes"],
                           capture_output=True, text=True, env=env)
        if r.returncode != 1 or "made with tokenizer \"smol\"" not in r.stderr or "\"bytes\"" not in r.stderr:
            fail(f"a byte-level model trained on the chat data: rc {r.returncode}, {r.stderr[-400:]}")

        run([args.ctrain, "train", cfg_path], env)
        if not (work / "run" / "chat_template.jinja").exists():
            fail("the trained model's folder lacks the chat template")
        out = run([args.ctrain, "eval", cfg_path], env)
        got = float(out.strip().split("\n")[-1].split()[1])
        want = reference_val_loss(work / "run", convs[-nval:], hf)
        err = abs(got - want) / abs(want)
        print(f"eval: ctrain {got:.6f}, transformers {want:.6f} (relative error {err:.1e})")
        if not err < 1e-4:
            fail(f"eval: ctrain {got} != transformers {want}")

        # chat: greedy, against generate from the same rendered prompt
        model = lt.load(work / "run")
        asked = ["the LORD said unto Moses", "and it came to pass"]
        r = subprocess.run([args.ctrain, "chat", cfg_path], input="\n".join(asked) + "\n", capture_output=True,
                           text=True, env=env)
        replies = r.stdout.split("\n")
        msgs = []
        for k, q in enumerate(asked):
            msgs.append({"role": "user", "content": q})
            prompt = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
            with torch.no_grad():
                gen = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                     eos_token_id=hf.convert_tokens_to_ids("<|im_end|>"),
                                     pad_token_id=hf.convert_tokens_to_ids("<|im_end|>"))
            reply = hf.decode(gen[0, len(prompt):], skip_special_tokens=True)
            got = replies[k] if k < len(replies) else None
            if r.returncode or got != reply:
                fail(f"chat turn {k}: ctrain {got!r} != transformers {reply!r} (rc {r.returncode}, {r.stderr[-300:]})")
            msgs.append({"role": "assistant", "content": reply})
        print(f"chat: {len(asked)} turns equal transformers' greedy replies")
    return finish("reference_chat_finetune")


if __name__ == "__main__":
    sys.exit(main())
