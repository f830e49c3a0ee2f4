"""Reference test: `ctrain prepare` against the tokenizers library.

The prepared train and val datasets, read with h5py (an index file followed to its shards), must
hold exactly tokenizers' encode_batch of the same documents, each followed by the tokenizer's eos
(unless its template ends with it), split as data.h says (round(N * val_fraction) documents, spread
evenly), with doc_offsets at each document's first token.

Tokenizers come from test_tokenizer.py's builders (small BPEs trained offline on the bundled
corpus): GPT-2 and Llama-3 style (the two a model most often has), and those whose encoding of a
text's start differs from its middle (ByteLevel add_prefix_space, Metaspace prepend_scheme
"first"/"always", the Prepend normalizer, Digits + ByteLevel with a prefix, Split behaviors), so
that documents longer than a chunk, which are encoded in parts (ct_tokenizer_encode_more), are
checked against the whole document's ids. Corpora: a folder of .jsonl and .txt files (some far
longer than the chunk, nested folders, a file that is neither); the bundled corpus as one text file
(cut into train and val at a line break); the same with 2 threads and with 2 MPI ranks.
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

from reftools import fail, finish, mpi_env
import test_tokenizer as tt

CHUNK_KB = 64


def load(path):
    """tokens and doc_offsets of a dataset file or an index of shards."""
    with h5py.File(path, "r") as f:
        if "tokens" in f:
            docs = f["doc_offsets"][()] if "doc_offsets" in f else np.zeros(0, np.uint64)
            return f["tokens"][()].astype(np.int64), docs.astype(np.int64), dict(f.attrs)
        toks, docs, base = [], [], 0
        names = [n.decode() if isinstance(n, bytes) else n for n in f["shards"][()]]
        for name, nt, nd in zip(names, f["shard_tokens"][()], f["shard_docs"][()]):
            t, d, _ = load(Path(path).parent / name)
            if len(t) != nt or len(d) != nd:
                fail(f"{path}: shard {name}: {len(t)} tokens, {len(d)} documents; the index says {nt}, {nd}")
            toks.append(t)
            docs.append(d + base)
            base += len(t)
        return np.concatenate(toks), np.concatenate(docs), dict(f.attrs)


def corpus_folder(root, lines, rng):
    """A folder of documents; returns them in the order prepare reads them."""
    root.mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "README.md").write_text("not an input\n")
    (root / ".hidden.txt").write_text("skipped\n")
    stress = [s.replace("\x00", "") for s in tt.STRESS + tt.random_texts(rng, 40)]  # \u0000 is refused

    def doc():
        k = rng.randint(1, 12)
        start = rng.randrange(len(lines) - k)
        return "\n".join(lines[start:start + k]) + ("\n" if rng.random() < 0.5 else "")

    files = {}
    for i in range(4):  # .jsonl of documents: blank lines, other keys, a BOM, unicode, empty texts
        docs = [doc() for _ in range(rng.randint(30, 120))]
        docs += [rng.choice(stress) for _ in range(5)] + [""]
        rng.shuffle(docs)
        out = []
        for d in docs:
            out.append(json.dumps({"id": len(out), "text": d}, ensure_ascii=rng.random() < 0.5))
            if rng.random() < 0.05:
                out.append("   ")
        text = ("\ufeff" if i == 1 else "") + "\n".join(out) + ("\n" if i % 2 else "")
        files[f"part{i}.jsonl" if i < 2 else f"sub/part{i}.jsonl"] = (text, docs)
    for i in range(3):  # text files, two of them many chunks long
        n = [40, 9000, 5000][i]
        start = rng.randrange(len(lines) - n)
        body = "\n".join(lines[start:start + n]) + "\n"
        if i == 2:
            body = "Numbers 1234 and 56789\n" + body.replace("LORD", "LORD 1999\n2000") + "  trailing spaces  \n"
        files[["a.txt", "sub/deeper/b.txt", "sub/c.txt"][i]] = (body, [body])
    ordered = []
    for name in sorted(files, key=lambda n: str(root / n)):
        text, docs = files[name]
        (root / name).write_text(text, encoding="utf-8")
        ordered += docs
    return ordered


def expected(tok, eos, docs, val_fraction):
    """train/val token streams and doc offsets as data.h defines them."""
    enc = tok.encode_batch(docs)
    n = len(docs)
    nval = min(max(int(np.floor(n * val_fraction + 0.5)), 1), n - 1)
    parts = ([], []), ([], [])
    sizes = [0, 0]
    add_eos = not ends_with_eos(tok, eos)
    for g, e in enumerate(enc):
        ids = list(e.ids) + ([eos] if add_eos else [])
        v = int((g + 1) * nval // n > g * nval // n)
        parts[v][1].append(sizes[v])
        parts[v][0].extend(ids)
        sizes[v] += len(ids)
    return [(np.array(t, np.int64), np.array(d, np.int64)) for t, d in parts]


def ends_with_eos(tok, eos):
    ids = tok.encode("", add_special_tokens=True).ids
    return bool(ids) and ids[-1] == eos and tok.encode("", add_special_tokens=False).ids == []


def one_file_docs(text, val_fraction):
    """The one-file corpus cut: just after the line break nearest (1 - f) * len (bytes)."""
    b = text.encode("utf-8")
    n = len(b)
    target = (1.0 - val_fraction) * n
    mid = 1 if target < 1 else n - 1 if target > n - 1 else int(target)
    i = b.rfind(b"\n", 0, mid)
    left = i + 1 if i >= 0 else 0
    j = b.find(b"\n", mid, n - 1)
    right = j + 1 if j >= 0 else 0
    cut = left if left and (not right or target - left <= right - target) else right
    return [b[:cut].decode("utf-8"), b[cut:].decode("utf-8")]


class Case:
    def __init__(self, args, work):
        self.a, self.work, self.n = args, work, 0

    def prepare(self, tok_dir, text, frac, threads=1, ranks=1, chunk_kb=CHUNK_KB):
        self.n += 1
        out = self.work / f"out{self.n}"
        out.mkdir()
        cfg = {"data": {"text": str(text), "train": str(out / "train.h5"), "val": str(out / "val.h5"),
                        "tokenizer": str(tok_dir), "val_fraction": frac, "prepare_threads": threads,
                        "prepare_chunk_kb": chunk_kb}}
        path = out / "cfg.json"
        path.write_text(json.dumps(cfg))
        cmd = [self.a.ctrain, "prepare", str(path)]
        if ranks > 1:
            cmd = [self.a.mpiexec, "-n", str(ranks), "--oversubscribe"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env())
        if r.returncode:
            fail(f"prepare {text} with {tok_dir.name}: exit {r.returncode}: {r.stderr[-1500:]}")
            return None
        return out / "train.h5", out / "val.h5"

    def compare(self, label, tok, eos, docs, frac, paths):
        if paths is None:
            return
        want = expected(tok, eos, docs, frac)
        for which, path, (wt, wd) in zip(("train", "val"), paths, want):
            got_t, got_d, attrs = load(path)
            if attrs.get("vocab_size") != tok.get_vocab_size(with_added_tokens=True):
                fail(f"{label} {which}: vocab_size {attrs.get('vocab_size')}")
            if len(got_t) != len(wt) or not np.array_equal(got_t, wt):
                k = next((i for i in range(min(len(got_t), len(wt))) if got_t[i] != wt[i]), min(len(got_t), len(wt)))
                fail(f"{label} {which}: {len(got_t)} tokens, want {len(wt)}; first difference at {k}: "
                     f"got {got_t[k:k + 8].tolist()}, want {wt[k:k + 8].tolist()}")
            elif not np.array_equal(got_d, wd):
                fail(f"{label} {which}: doc_offsets differ ({len(got_d)} against {len(wd)})")
        print(f"{label}: {len(docs)} documents, {sum(len(w[0]) for w in want)} tokens compared")


CUT_TEXTS = [
    "Numbers 1234 and\n5678 then\nx9\n1\n22\n333 4444\n55555 words\nLORD 1999\n2000\n",
    "日本語のテキスト。\n中文文本\nΑλφα βήτα.\nемоджи 👍\nabc\n١٢٣ digits\nⅷ roman\n²\nend",
    "the LORD said\nGod <mask> there\n<|endoftext|>\nafter\nmask <mask>\nfin <s>\n</s>x\ny<|begin_of_text|>\nz",
    "spaces   \nafter\ttab\t\nnext.\nA\n\nB\r\nC\n \nD ▁\nE▁\n▁F\n's\nIt's\nDON'T\ncafe\u0301\ne\u0301",
]


def check_cuts(tokdump, work, name, path, texts):
    """Every cut ct_tokenizer_cut_ok allows in texts, encoded as two parts, gives the whole text's ids."""
    req, resp = work / "cuts_req.txt", work / "cuts_resp.txt"
    req.write_text("".join("C " + t.encode("utf-8").hex() + "\n" for t in texts))
    subprocess.run([tokdump, str(path), str(req), str(resp)], check=True)
    total = 0
    for t, line in zip(texts, resp.read_text().splitlines()):
        if line.startswith("ERR"):
            fail(f"cuts/{name}: {line}")
            continue
        ncut, nbad, first = map(int, line.split())
        total += ncut
        if nbad:
            b = t.encode("utf-8")
            fail(f"cuts/{name}: {nbad} of {ncut} cuts change the ids, the first at byte {first}: "
                 f"{b[max(0, first - 20):first]!r} | {b[first:first + 20]!r}")
    if total == 0:
        fail(f"cuts/{name}: no place to cut (the tokenizer or ct_tokenizer_cut_ok refuses every one)")
    print(f"cuts/{name}: {total} cuts, each the same ids as the whole text")


def tokenizer_folder(work, name, tok):
    """A folder with tokenizer.json and, where the template names no eos, tokenizer_config.json's."""
    d = work / f"tok_{name}"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    eos = next(t for t in ("<|endoftext|>", "<|end_of_text|>", "</s>", "<|reserved_special_token_1|>") if t in vocab)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                         "eos_token": eos}))
    return d, vocab[eos]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--tokdump", required=True)
    args = ap.parse_args()
    lines = tt.corpus_lines()
    rng = random.Random(1)
    toks = tt.build_all(lines[:4000], lines)
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        case = Case(args, work)
        cut_texts = CUT_TEXTS + ["\n".join(lines[i:i + 30]) for i in (0, 5000, 20000)]
        cut_texts += ["\n".join(t.replace("\x00", "") for t in tt.random_texts(rng, 30)) for _ in range(5)]
        cut_texts.append("\n".join(tt.STRESS))
        for name, tok in toks.items():
            path = work / f"{name}.json"
            tok.save(str(path))
            check_cuts(args.tokdump, work, name, path, cut_texts)
        docs = corpus_folder(work / "corpus", lines, rng)
        names = ["gpt2", "llama3", "llama3_8k", "gpt2_prefix_legacy_merges", "qwen2", "smollm2", "sentencepiece",
                 "sentencepiece_always_split", "sentencepiece_first_split", "sentencepiece_legacy",
                 "split_merged_with_next", "split_removed_invert", "digits_contiguous_regex_replace"]
        folders = {}
        for name in names:
            folders[name] = tokenizer_folder(work, name, toks[name])
            d, eos = folders[name]
            case.compare(f"folder/{name}", toks[name], eos, docs, 0.1,
                         case.prepare(d, work / "corpus", 0.1, threads=2))
        # a glob of the .jsonl files only
        jsonl_docs = []
        for p in sorted((work / "corpus").glob("*.jsonl"), key=str):
            for line in p.read_text(encoding="utf-8-sig").split("\n"):
                if line.strip(" \t\r"):
                    jsonl_docs.append(json.loads(line)["text"])
        d, eos = folders["gpt2"]
        case.compare("glob/gpt2", toks["gpt2"], eos, jsonl_docs, 0.2,
                     case.prepare(d, work / "corpus" / "*.jsonl", 0.2))
        # the bundled corpus as one text file: one document cut at a line break, encoded in parts
        kjv = tt.ROOT / "datasets" / "kjv.txt"
        if not kjv.exists():
            kjv = work / "kjv.txt"
            kjv.write_text("\n".join(lines) + "\n")
        text = kjv.read_text(encoding="utf-8")
        for name, kb in (("gpt2", 256), ("llama3_8k", 3000), ("sentencepiece", 256)):  # chunks of 64 KiB pieces
            d, eos = folders[name]
            case.compare(f"one file/{name}", toks[name], eos, one_file_docs(text, 0.05), 0.05,
                         case.prepare(d, kjv, 0.05, threads=2, chunk_kb=kb))
        if args.mpiexec:
            for name in ("llama3", "sentencepiece_legacy"):
                d, eos = folders[name]
                case.compare(f"folder, 2 ranks/{name}", toks[name], eos, docs, 0.1,
                             case.prepare(d, work / "corpus", 0.1, ranks=2))
    return finish("reference_prepare")


if __name__ == "__main__":
    sys.exit(main())
