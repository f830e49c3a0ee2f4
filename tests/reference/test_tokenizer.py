"""Reference test: ctrain's tokenizer.json (data/tokenizer*.c, through ct_tokdump) against the
tokenizers library.

Small BPE tokenizers are trained offline with tokenizers' BpeTrainer on the bundled corpus (the
KJV text: datasets/kjv.txt, else `bible`, else a generated text) in the style of each family:
GPT-2 (ByteLevel with its regex, added tokens with lstrip/rstrip/single_word/normalized), Llama-3
(Split Isolated + ByteLevel without regex, ignore_merges, <|begin_of_text|> template), Qwen2 (NFC,
single digits), SmolLM2 (Digits then ByteLevel), SentencePiece-style BPE (byte_fallback with
<0x00>..<0xFF> in the vocabulary, Metaspace in every prepend scheme, and the legacy Prepend+Replace
normalizer), Split with every behavior and invert. On every corpus line and a stress text (CJK,
emoji ZWJ sequences, combining marks, RTL scripts, \\r\\n, tabs, runs of spaces and digits,
special tokens inside text) the ids with and without special tokens and decode(ids) with and
without skip_special_tokens must be identical; random id lists must decode identically. Invalid
UTF-8 is refused with the byte offset (data.h). A Llama folder with tokenizer_config.json
(add_eos_token) must match transformers' AutoTokenizer.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from reftools import fail, finish

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
             r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
ROOT = Path(__file__).resolve().parents[2]

STRESS = [
    "Hello, world! It's the LORD's day; we'll see, I'd say. DON'T SHOUT'S",
    "日本語のテキストと中文文本，한국어 텍스트。",
    "emoji 👩‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, ❤️ heart",
    "combining: e\u0301 a\u0300 n\u0303 café (composed) cafe\u0301 (decomposed) \u1e9b\u0323",
    "Arabic: مرحبا بالعالم، Hebrew: שלום עולם",
    "windows\r\nline\r\nbreaks\r\n\r\n and\ttabs\t\tand\n\n\nnewlines \n \n",
    "spaces:" + " " * 17 + "x" + " " * 3 + "\u00a0\u2003\u3000 wide",
    "digits 1234567890 0123 3.14159 1,000,000 ١٢٣ ⅷ ²",
    "special <|endoftext|> inside<|endoftext|>text <s> and </s> <unk> <|begin_of_text|>x",
    "mask <mask> there  <mask>  and God said, Godly men of God.",
    "  leading and trailing spaces  ",
    "",
    " ",
    "\u180e mongolian vowel separator \u001c\u001f file separators \u0085 nel \u200b zwsp",
    "ſ long s: IT'ſ and 'S 'T 'RE 'VE 'M 'LL 'D",
    "mixed 123abc abc123 a1b2c3 ....!!!??? ---___ ((( )))",
    "\u2028line sep\u2029para sep",
    "ends with spaces    ",
    "▁already▁metaspace ▁ ▁▁",
    "tabs\t\t\t\tx \t \t y",
    "a" * 300,
    "x" + "0" * 50 + " " + "9" * 7,
    "Ǆ ǅ ǆ ΐ ΰ ﬁ ﬂ ẞ ß",
]


def random_texts(rng, n):
    """Strings of code points drawn from ranges where regex engines and Unicode tables may
    disagree: controls, every White_Space character, Latin with combining marks, Greek, CJK,
    Hangul, Arabic, Devanagari, emoji with modifiers and ZWJ, digits of other scripts, specials."""
    pools = [range(0x00, 0x80), range(0x09, 0x0E), range(0x1C, 0x21), [0x85, 0xA0, 0x1680, 0x180E, 0x2028, 0x2029,
             0x202F, 0x205F, 0x3000, 0x200B, 0x200D, 0xFEFF], range(0x2000, 0x200B), range(0xC0, 0x250),
             range(0x300, 0x370), range(0x370, 0x400), range(0x4E00, 0x4E80), range(0xAC00, 0xAC40),
             range(0x600, 0x700), range(0x900, 0x980), range(0x1F300, 0x1F340), range(0x1F3FB, 0x1F400),
             range(0x660, 0x66A), range(0xFF10, 0xFF1A), range(0x2150, 0x2190), range(0xE000, 0xE010),
             range(0x10000, 0x10040), range(0x1D400, 0x1D440)]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(chr(rng.choice(rng.choice(pools))) if rng.random() < 0.7 else rng.choice(
            [" ", "  ", "\n", "'s", "'LL", "123", "a", "The", "<s>", "<|endoftext|>", "<mask>", "\u2581"]) for _ in range(k)))
    return out


def corpus_lines():
    kjv = ROOT / "datasets" / "kjv.txt"
    if kjv.exists():
        return kjv.read_text(encoding="utf-8").splitlines()
    if shutil.which("bible"):
        out = subprocess.run(["bible", "-f", "Gen1:1-Exod40:38"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout:
            return [l.split(" ", 1)[1] if " " in l else l for l in out.stdout.splitlines()]
    rng = random.Random(0)
    words = ["the", "and", "of", "to", "in", "that", "he", "shall", "unto", "for", "I", "his", "a", "LORD",
             "they", "be", "is", "him", "not", "them", "it", "with", "all", "thou", "thy", "was", "God"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 25))) + rng.choice([".", ",", ";", ":"])
            for _ in range(5000)]


def train(lines, tok, special, vocab_size=600, **kw):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False, **kw)
    tok.train_from_iterator(lines, trainer)
    return tok


def edit(tok, fn):
    """The tokenizer after fn edits its JSON (fields the Python setters do not reach)."""
    j = json.loads(tok.to_str())
    fn(j)
    return Tokenizer.from_str(json.dumps(j))


def byte_level(lines, pre, special, vocab_size=600, **model_kw):
    tok = Tokenizer(models.BPE(**model_kw))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return train(lines, tok, special, vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def build_all(lines, all_lines):
    toks = {}
    # GPT-2
    t = byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    t.add_tokens([AddedToken("God", single_word=True), AddedToken(" the LORD", normalized=True)])
    toks["gpt2"] = t
    # GPT-2 with add_prefix_space, string merges (the legacy "a b" form)
    toks["gpt2_prefix_legacy_merges"] = edit(t, lambda j: (j["pre_tokenizer"].update(add_prefix_space=True),
                                                            j["model"].update(merges=[" ".join(m) for m in j["model"]["merges"]])))
    # Llama-3
    t = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                   ["<|begin_of_text|>", "<|end_of_text|>"])
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])])
    toks["llama3"] = edit(t, lambda j: j["model"].update(ignore_merges=True))
    # Llama-3 again at a realistic depth of merges: 8000 tokens from the whole corpus, 256 reserved specials
    t = byte_level(all_lines, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                   ["<|begin_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(256)], vocab_size=8000)
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    toks["llama3_8k"] = edit(t, lambda j: j["model"].update(ignore_merges=True))
    # Qwen2
    t = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                   ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    t.normalizer = normalizers.NFC()
    t.add_tokens([AddedToken("café", normalized=True)])
    toks["qwen2"] = t
    # SmolLM2
    toks["smollm2"] = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                                pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                                 ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    # SentencePiece-style: byte_fallback with <0x00>..<0xFF> in the vocabulary, Metaspace "first"
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    train(lines, t, ["<unk>", "<s>", "</s>"], vocab_size=500, limit_alphabet=60)

    def add_bytes(j):
        vocab = j["model"]["vocab"]
        base = max(vocab.values()) + 1
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = base + b
    t = edit(t, add_bytes)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", t.token_to_id("<s>"))])
    toks["sentencepiece"] = t
    sp = json.loads(t.to_str())
    for scheme, split in (("always", False), ("never", False), ("first", True), ("always", True)):
        def meta(j, scheme=scheme, split=split):
            j["pre_tokenizer"].update(prepend_scheme=scheme, split=split)
        toks[f"sentencepiece_{scheme}_{'split' if split else 'nosplit'}"] = edit(t, meta)
    toks["sentencepiece_metaspace_decoder"] = edit(t, lambda j: j.update(decoder={
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}))

    def legacy(j):
        j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                               {"type": "Replace", "pattern": {"String": " "},
                                                                "content": "▁"}]}
        j["pre_tokenizer"] = None
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    toks["sentencepiece_legacy"] = edit(t, legacy)
    # Split with every behavior (and invert) on the GPT-2 vocabulary
    for behavior in ("removed", "merged_with_previous", "merged_with_next", "contiguous"):
        for invert in (False, True):
            t = Tokenizer.from_str(toks["gpt2"].to_str())
            t.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(r"\s+|\p{P}"), behavior=behavior, invert=invert),
                pre_tokenizers.Split(", ", behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            toks[f"split_{behavior}{'_invert' if invert else ''}"] = t
    t = Tokenizer.from_str(toks["smollm2"].to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                               pre_tokenizers.ByteLevel(add_prefix_space=True)])
    t.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\d{4,}"), "#"), normalizers.NFC()])
    toks["digits_contiguous_regex_replace"] = t
    return toks


def run_tokdump(tokdump, path, reqs, work):
    inp, out = work / "req.txt", work / "resp.txt"
    inp.write_text("".join(r + "\n" for r in reqs))
    subprocess.run([tokdump, str(path), str(inp), str(out)], check=True)
    return out.read_text().split("\n")[:len(reqs)]


def ids_str(ids):
    return " ".join(str(i) for i in ids)


def compare(name, tok, path, texts, tokdump, work, rng):
    reqs = ["E " + s.encode("utf-8").hex() for s in texts]
    V = tok.get_vocab_size(with_added_tokens=True)
    id_lists = [[rng.randrange(V) for _ in range(rng.randint(0, 30))] for _ in range(300)]
    reqs += ["D " + ids_str(ids) for ids in id_lists]
    got = run_tokdump(tokdump, path, reqs, work)
    bad = 0
    for i, s in enumerate(texts):
        a = tok.encode(s, add_special_tokens=True).ids
        b = tok.encode(s, add_special_tokens=False).ids
        want = "|".join([ids_str(a), ids_str(b), tok.decode(a, skip_special_tokens=False).encode().hex(),
                         tok.decode(a, skip_special_tokens=True).encode().hex()])
        if got[i] != want:
            bad += 1
            if bad <= 3:
                fail(f"{name}: text {i} {s[:60]!r}:\n  got  {got[i][:300]}\n  want {want[:300]}")
    for k, ids in enumerate(id_lists):
        want = tok.decode(ids, skip_special_tokens=False).encode().hex() + "|" + \
            tok.decode(ids, skip_special_tokens=True).encode().hex()
        if got[len(texts) + k] != want:
            bad += 1
            if bad <= 3:
                fail(f"{name}: decode {ids}:\n  got  {got[len(texts) + k]}\n  want {want}")
    if bad:
        fail(f"{name}: {bad} of {len(texts)} texts + {len(id_lists)} id lists differ")
    print(f"{name}: {len(texts)} texts and {len(id_lists)} id lists compared, {bad} differ")
    return len(texts)


def test_invalid_utf8(tokdump, path, work):
    cases = [(b"ok \xff bad", 3), (b"\xc3", 0), (b"ab\xe2\x82", 2), (b"\xed\xa0\x80 surrogate", 0),
             (b"fine \xf0\x9f\x98\x80 then \xc0\xaf", 15)]
    got = run_tokdump(tokdump, path, ["E " + b.hex() for b, _ in cases], work)
    for (b, off), g in zip(cases, got):
        want = f"ERR encode: invalid UTF-8 at byte {off}"
        if g != want:
            fail(f"invalid UTF-8 {b!r}: got {g!r}, want {want!r}")


def test_llama_config(tokdump, tok, work, texts):
    """A Llama folder: transformers 4.x's LlamaTokenizerFast rebuilds the post-processor from
    tokenizer_config.json (add_bos_token, default true; add_eos_token, default false); ctrain does
    too. transformers 5 keeps tokenizer.json's, so the expectation is that template built in
    tokenizers (and transformers itself where it is 4.x)."""
    try:
        import transformers
        from transformers import AutoTokenizer
        hf_v4 = int(transformers.__version__.split(".")[0]) < 5
    except ImportError:
        hf_v4 = False
    d = work / "llama_folder"
    d.mkdir(exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    for add_bos, add_eos in ((True, True), (False, True), (False, False), (None, None)):
        cfg = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": {"content": "</s>"},
               "unk_token": "<unk>", "legacy": False}
        if add_bos is not None:
            cfg.update(add_bos_token=add_bos, add_eos_token=add_eos)
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
        bos, eos = (True, False) if add_bos is None else (add_bos, add_eos)
        want_tok = Tokenizer.from_str(tok.to_str())
        want_tok.post_processor = processors.TemplateProcessing(
            single=("<s>:0 " if bos else "") + "$A:0" + (" </s>:0" if eos else ""),
            special_tokens=[(s, tok.token_to_id(s)) for s, on in (("<s>", bos), ("</s>", eos)) if on])
        hf = AutoTokenizer.from_pretrained(str(d)) if hf_v4 else None
        got = run_tokdump(tokdump, d, ["E " + s.encode().hex() for s in texts], work)
        bad = 0
        for s, g in zip(texts, got):
            want = ids_str(want_tok.encode(s).ids)
            if hf is not None and ids_str(hf(s)["input_ids"]) != want:
                fail(f"llama folder: transformers 4.x disagrees with the rebuilt template on {s[:40]!r}")
            if g.split("|")[0] != want:
                bad += 1
                if bad <= 2:
                    fail(f"llama folder bos={add_bos} eos={add_eos}: {s[:40]!r}: got {g[:200]}, want {want[:200]}")
        print(f"llama folder add_bos={add_bos} add_eos={add_eos}: {len(texts)} texts, {bad} differ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokdump", required=True)
    ap.add_argument("--lines", type=int, default=2000)
    args = ap.parse_args()
    lines = corpus_lines()
    train_lines = lines[:4000]
    rng = random.Random(0)
    eval_lines = rng.sample(lines, min(args.lines, len(lines)))
    texts = eval_lines + STRESS + ["".join(rng.sample(STRESS, 3)) for _ in range(50)] + random_texts(rng, 1000)
    total = 0
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        toks = build_all(train_lines, lines)
        for name, tok in toks.items():
            path = work / f"{name}.json"
            tok.save(str(path))
            total += compare(name, tok, path, texts, args.tokdump, work, rng)
        test_invalid_utf8(args.tokdump, work / "gpt2.json", work)
        test_llama_config(args.tokdump, toks["sentencepiece"], work, texts[:300])
    print(f"{len(toks)} tokenizers, {total} texts compared")
    return finish("reference_tokenizer")


if __name__ == "__main__":
    sys.exit(main())
