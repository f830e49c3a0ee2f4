"""The Python side of bench/bench_prepare.sh: tokenizers and corpora, tokenizers' encode_batch timed,
and the ids of a prepared dataset checked against it.

  make  --out DIR [--mb 100]      GPT-2-style and Llama-3-style tokenizers (16k BPEs trained offline on
                                  the bundled corpus, as tests/reference/test_tokenizer.py trains them)
                                  in DIR/gpt2 and DIR/llama3, and DIR/corpus.jsonl: documents of 5 to 60
                                  consecutive lines of the corpus, each pass in a new order with numbers
                                  and cases varied, until --mb MB of text
  big   --out DIR --gb 3          DIR/big/: a .jsonl corpus of --gb GB in parts of about 100 MB (the
                                  documents of `make`, every part varied anew) and one text file of a
                                  tenth of that (a document many chunks long)
  encode --tokenizer DIR --corpus FILE [--train H5 --val H5 --val-fraction F]
                                  times encode_batch over the documents (RAYON_NUM_THREADS sets its
                                  threads) and prints one JSON line (MB/s of text); with --train/--val,
                                  checks that the prepared datasets hold exactly those ids (+ eos, split as
                                  data.h says) and says so in the line
"""
import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reference"))


def make(args):
    import test_tokenizer as tt
    from tokenizers import Regex, pre_tokenizers, processors
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = tt.corpus_lines()
    g = tt.byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"], vocab_size=16000)
    g.post_processor = processors.ByteLevel(trim_offsets=False)
    (out / "gpt2").mkdir(exist_ok=True)
    g.save(str(out / "gpt2" / "tokenizer.json"))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(254)]
    t = tt.byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tt.LLAMA3_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), specials, vocab_size=16000)
    t.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    t = tt.edit(t, lambda j: j["model"].update(ignore_merges=True))
    (out / "llama3").mkdir(exist_ok=True)
    t.save(str(out / "llama3" / "tokenizer.json"))
    (out / "llama3" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        write_docs(f, lines, args.mb * 1_000_000, random.Random(0))


def vary(line, rng):
    r = rng.random()
    if r < 0.1:
        return line.lower()
    if r < 0.15:
        return line.upper()
    if r < 0.3:
        return f"{rng.randint(1, 99999)} {line}"
    return line


def write_docs(f, lines, nbytes, rng):
    """Documents of 5-60 consecutive lines from a shuffled copy of lines, varied, until nbytes of text."""
    written = 0
    while written < nbytes:
        order = lines[:]
        rng.shuffle(order)
        i = 0
        while i < len(order) and written < nbytes:
            k = rng.randint(5, 60)
            text = "\n".join(vary(l, rng) for l in order[i:i + k])
            i += k
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            written += len(text.encode("utf-8"))
    return written


def big(args):
    import test_tokenizer as tt
    lines = tt.corpus_lines()
    out = Path(args.out) / "big"
    out.mkdir(parents=True, exist_ok=True)
    total = int(args.gb * 1e9)
    text_bytes = total // 10
    part, written = 0, 0
    while written < total - text_bytes:
        with open(out / f"part{part:03d}.jsonl", "w", encoding="utf-8") as f:
            written += write_docs(f, lines, min(100_000_000, total - text_bytes - written), random.Random(part + 1))
        part += 1
    rng = random.Random(12345)
    with open(out / "book.txt", "w", encoding="utf-8") as f:
        n = 0
        while n < text_bytes:
            order = lines[:]
            rng.shuffle(order)
            block = "\n".join(vary(l, rng) for l in order) + "\n"
            f.write(block)
            n += len(block.encode("utf-8"))
    print(json.dumps({"parts": part, "jsonl_bytes": written, "text_bytes": n}))


def load(path):
    """tokens and doc_offsets of a dataset file or an index of shards (numpy)."""
    import h5py
    import numpy as np
    with h5py.File(path, "r") as f:
        if "tokens" in f:
            return f["tokens"][()], f["doc_offsets"][()] if "doc_offsets" in f else np.zeros(0, np.uint64)
        toks, docs, base = [], [], 0
        for name in f["shards"][()]:
            t, d = load(Path(path).parent / (name.decode() if isinstance(name, bytes) else name))
            toks.append(t)
            docs.append(d.astype(np.uint64) + base)
            base += len(t)
        return np.concatenate(toks), np.concatenate(docs)


def encode(args):
    import numpy as np
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    with open(args.corpus, encoding="utf-8") as f:
        docs = [json.loads(l)["text"] for l in f if l.strip()]
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    t0 = time.perf_counter()
    enc = tok.encode_batch(docs)
    dt = time.perf_counter() - t0
    ntok = sum(len(e.ids) for e in enc)
    res = {"tokenizer": Path(args.tokenizer).name, "threads": os.environ.get("RAYON_NUM_THREADS", "all"),
           "docs": len(docs), "mb": nbytes / 1e6, "seconds": dt, "mb_per_s": nbytes / 1e6 / dt, "tokens": ntok}
    if args.train:
        cfg = Path(args.tokenizer) / "tokenizer_config.json"
        eos_name = json.loads(cfg.read_text())["eos_token"] if cfg.exists() else "<|endoftext|>"
        eos = tok.token_to_id(eos_name)
        ends = tok.encode("", add_special_tokens=True).ids
        add_eos = not (ends and ends[-1] == eos and tok.encode("", add_special_tokens=False).ids == [])
        n = len(docs)
        nval = min(max(int(np.floor(n * args.val_fraction + 0.5)), 1), n - 1)
        want = [[], []]
        for g, e in enumerate(enc):
            ids = np.asarray(e.ids, dtype=np.uint32)
            v = int((g + 1) * nval // n > g * nval // n)
            want[v].append(ids)
            if add_eos:
                want[v].append(np.array([eos], np.uint32))
        same = True
        for v, path in enumerate((args.train, args.val)):
            got, _ = load(path)
            w = np.concatenate(want[v])
            same &= len(got) == len(w) and bool(np.array_equal(got.astype(np.uint32), w))
        res["ids_identical"] = same
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--mb", type=int, default=100)
    b = sub.add_parser("big")
    b.add_argument("--out", required=True)
    b.add_argument("--gb", type=float, default=3)
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--corpus", required=True)
    e.add_argument("--train")
    e.add_argument("--val")
    e.add_argument("--val-fraction", type=float, default=0.05)
    args = ap.parse_args()
    {"make": make, "big": big, "encode": encode}[args.cmd](args)


if __name__ == "__main__":
    main()
