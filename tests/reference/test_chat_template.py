"""Reference test: ctrain's chat templates (data/chat_template.c, through ct_chatdump) against
transformers' apply_chat_template(messages, tokenize=True).

The templates are the published texts, stored unchanged under tests/chat_templates/ (each file is the
template string itself, as tokenizer_config.json's "chat_template" holds it once JSON-decoded):
  qwen2.5-7b-instruct.jinja        Qwen/Qwen2.5-7B-Instruct tokenizer_config.json (the same text in several
                                   public copies of that file, e.g. the Berkeley function-calling
                                   leaderboard's Qwen handler)
  smollm2-instruct.jinja           HuggingFaceTB/SmolLM2-*-Instruct (the GGUF's tokenizer.chat_template)
  chatml-openhermes-2.5.jinja      teknium/OpenHermes-2.5-Mistral-7B (as quoted by mistral.rs's tests)
  llama-3-8b-instruct.jinja        meta-llama/Meta-Llama-3-8B-Instruct
  llama-3.2-3b-instruct.jinja      meta-llama/Llama-3.2-3B-Instruct  (llama.cpp models/templates, fetched
  llama-3.3-70b-instruct.jinja     meta-llama/Llama-3.3-70B-Instruct  from the Hub by its
  mistral-nemo-instruct-2407.jinja mistralai/Mistral-Nemo-Instruct-2407 scripts/get_chat_template.py;
  gemma-2-2b-it.jinja              google/gemma-2-2b-it               the same as gemma-7b-it's)
  llama-2-13b-chat.jinja           meta-llama/Llama-2-13b-chat-hf    (mistral.rs's chat template tests,
  mistral-7b-instruct-v0.1.jinja   mistralai/Mistral-7B-Instruct-v0.1 which render them with transformers'
  mixtral-8x7b-instruct-v0.1.jinja mistralai/Mixtral-8x7B-Instruct-v0.1 expected outputs)
  mistral-7b-instruct-v0.2.jinja   mistralai/Mistral-7B-Instruct-v0.2, the revision with a system message
                                   (llama.cpp's tests/test-chat-template.cpp)

For each, a small tokenizer is trained offline with tokenizers' BpeTrainer on the bundled corpus
(test_tokenizer.py's helpers) in the family's style with its special tokens: Qwen2 and SmolLM2
byte-level, Llama-3 byte-level with its header tokens, SentencePiece-style BPE (the Llama-2 legacy
normalizer, or Metaspace) for Llama-2/Mistral/OpenHermes, byte-level with [INST] control tokens for
Nemo, and Gemma's (Replace " " -> "▁", no pre-tokenizer, byte fallback). A folder gets tokenizer.json,
tokenizer_config.json (bos/eos tokens, the template; SmolLM2's in chat_template.jinja, Llama-3's in the
list-of-templates form) and is loaded with transformers' AutoTokenizer. For many conversations (system
or not, 1-4 turns, ending with user or assistant, corpus text, unicode, whitespace-edge and
special-token contents) and add_generation_prompt false/true, ctrain's ids must equal
apply_chat_template's exactly, and an error in one must be an error in the other. The loss mask must
be 1 on exactly the tokens that overlap an assistant span [start of its content, end of its
end-of-turn token), from the tokenizers offsets of the rendered text (the rule of transformers'
return_assistant_tokens_mask; checked against it on a {% generation %} copy of SmolLM2's template);
with train_on_prompt on every token but the first.
"""
import argparse
import datetime
import json
import random
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer

from reftools import fail, finish, run
from test_tokenizer import LLAMA3_RE, QWEN2_RE, STRESS, byte_level, corpus_lines, edit, train

SENTINEL = "\ue000"
DATE = "26 Jul 2024"  # the fallback date_string of the Llama-3.2 template, ctrain's default


# ---- tokenizers in each family's style
def sp_tokenizer(lines, specials, legacy):
    """SentencePiece-style BPE with byte fallback: Llama-2's legacy normalizer, or Metaspace."""
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    train(lines, t, specials, vocab_size=700, limit_alphabet=80)

    def fix(j):
        vocab = j["model"]["vocab"]
        base = max(vocab.values()) + 1
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = base + b
        if legacy:
            j["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
            j["pre_tokenizer"] = None
    return edit(t, fix)


def gemma_tokenizer(lines):
    """Gemma's shape: normalizer Replace(" " -> "▁"), no pre-tokenizer (BPE over whole pieces)."""
    t = sp_tokenizer(lines, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], legacy=False)

    def fix(j):
        j["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        j["pre_tokenizer"] = None
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return edit(t, fix)


def build_tokenizers(lines):
    out = {}
    qwen = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                      ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    qwen.normalizer = normalizers.NFC()
    out["qwen"] = qwen
    out["smollm"] = byte_level(lines, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                              pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                               ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    out["llama3"] = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|eom_id|>", "<|python_tag|>"])
    out["sp_legacy"] = sp_tokenizer(lines, ["<unk>", "<s>", "</s>"], legacy=True)
    out["sp_meta"] = sp_tokenizer(lines, ["<unk>", "<s>", "</s>"], legacy=False)
    chatml_sp = sp_tokenizer(lines, ["<unk>", "<s>", "</s>"], legacy=False)
    chatml_sp.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    out["sp_chatml"] = chatml_sp
    tekken = byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=False),
                        ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                         "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"])
    out["tekken"] = tekken
    out["gemma"] = gemma_tokenizer(lines)
    return out


# template file, tokenizer, bos, eos, where the template goes, characters the template writes after
# the end-of-turn token, whether [INST]/Gemma role rules apply, whether a system message is allowed
CASES = [
    ("qwen2.5-7b-instruct", "qwen", None, "<|im_end|>", "config", 1, False, True),
    ("smollm2-instruct", "smollm", "<|im_start|>", "<|im_end|>", "jinja", 1, False, True),
    ("chatml-openhermes-2.5", "sp_chatml", "<s>", "<|im_end|>", "config", 1, False, True),
    ("llama-3-8b-instruct", "llama3", "<|begin_of_text|>", "<|eot_id|>", "list", 0, False, True),
    ("llama-3.2-3b-instruct", "llama3", "<|begin_of_text|>", "<|eot_id|>", "config", 0, False, True),
    ("llama-3.3-70b-instruct", "llama3", "<|begin_of_text|>", "<|eot_id|>", "config", 0, False, True),
    ("llama-2-13b-chat", "sp_legacy", "<s>", "</s>", "config", 0, True, True),
    ("mistral-7b-instruct-v0.1", "sp_legacy", "<s>", "</s>", "config", 1, True, False),
    ("mixtral-8x7b-instruct-v0.1", "sp_meta", "<s>", "</s>", "config", 0, True, False),
    ("mistral-7b-instruct-v0.2", "sp_meta", "<s>", "</s>", "config", 0, True, True),
    ("mistral-nemo-instruct-2407", "tekken", "<s>", "</s>", "config", 0, True, True),
    ("gemma-2-2b-it", "gemma", "<bos>", "<eos>", "config", 1, True, False),
]

EDGE = ["", " ", "\n", "\n\n", "  two leading", "trailing two  ", "\n\nboth sides\n\n", "\t tab \t", "\u00a0nbsp\u3000",
        "\u2028line sep", "x", "\r\nwindows\r\n", " \u1680 ogham space", "\u001cfile sep\u001f", "ends with newline\n",
        "日本語のテキスト", "emoji 👩‍👩‍👧‍👦 and ❤️", "combining e\u0301", "  multiple\n\nparagraphs\n\n  here  "]
SPECIALS = ["see <|im_end|> here", "a </s> b", "<s>", "[INST] inner [/INST]", "<end_of_turn>", "<|eot_id|>x"]


def contents(rng, lines):
    def one():
        r = rng.random()
        if r < 0.35:
            return rng.choice(lines)
        if r < 0.55:
            return rng.choice(EDGE)
        if r < 0.65:
            return rng.choice(STRESS)
        if r < 0.72:
            return rng.choice(SPECIALS)
        if r < 0.85:
            return rng.choice(EDGE) + rng.choice(lines) + rng.choice(EDGE)
        return " ".join(rng.choice(lines) for _ in range(rng.randint(2, 5)))
    return one


def conversations(rng, lines, alternate, system_ok, n=120):
    """Valid conversations (system or not, 1-4 exchanges, ending with either role), then invalid
    orders where the role rules apply."""
    c = contents(rng, lines)
    out = []
    for k in range(n):
        msgs = []
        if system_ok and rng.random() < 0.5:
            msgs.append({"role": "system", "content": c()})
        turns = rng.randint(1, 8)
        for i in range(turns):
            msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": c()})
        if not alternate and rng.random() < 0.3:  # any order where the template allows it
            rng.shuffle(msgs)
        out.append(msgs)
    out.append([{"role": "user", "content": "only a user message"}])
    if system_ok:
        out.append([{"role": "system", "content": "  only a system message  "}])
    if alternate:
        out += [[{"role": "assistant", "content": "starts with the assistant"}],
                [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "assistant", "content": "c"}],
                [{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]]
        if not system_ok:
            out.append([{"role": "system", "content": "refused"}, {"role": "user", "content": "u"}])
    return out


def write_folder(d, tok, name, template, bos, eos, where):
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "model_max_length": 1 << 20}
    if where == "config":
        cfg["chat_template"] = template
    elif where == "list":
        cfg["chat_template"] = [{"name": "default", "template": template}, {"name": "other", "template": "{{ 1 }}"}]
    else:
        (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")


def hf_render(hf, msgs, agp, **kw):
    """(ids, text) from transformers, or (None, error)."""
    try:
        ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp, return_dict=False, **kw)
        text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp, **kw)
        return list(ids), text
    except Exception as e:  # jinja2 TemplateError, ValueError
        return None, f"{type(e).__name__}: {e}"


def expected_mask(hf, msgs, agp, text, post, **kw):
    """1 on tokens overlapping an assistant span: from where the message's content starts (found by
    rendering it with a private-use sentinel in front, which trimming leaves in place) to the end
    of that turn's end-of-turn token (the rendered prefix through the message, less the `post`
    characters the template writes after the token)."""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        marked = msgs[:i] + [{"role": "assistant", "content": SENTINEL + m["content"]}]
        start = hf.apply_chat_template(marked, tokenize=False, **kw).index(SENTINEL)
        through = hf.apply_chat_template(msgs[:i + 1], tokenize=False, **kw)
        if not text.startswith(through):
            return None  # not prefix-stable for this conversation (Nemo's moving system message)
        spans.append((start, len(through) - post))
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask


def run_dump(chatdump, folder, name, reqs, work):
    inp, out = work / "req.jsonl", work / "resp.txt"
    inp.write_text("".join(json.dumps(r) + "\n" for r in reqs), encoding="utf-8")
    run([chatdump, folder, name, inp, out])
    lines = out.read_text(encoding="utf-8").split("\n")
    return lines[0], lines[1:1 + len(reqs)]


def compare_case(case, tok, chatdump, work, rng, lines, stats):
    fname, tokname, bos, eos, where, post, alternate, system_ok = case
    template = (Path(ARGS.templates) / f"{fname}.jinja").read_text(encoding="utf-8")
    folder = work / fname
    write_folder(folder, tok, fname, template, bos, eos, where)
    hf = AutoTokenizer.from_pretrained(str(folder))
    kw = {"date_string": DATE} if "3.2" in fname else {}
    convs = conversations(rng, lines, alternate, system_ok)
    reqs, meta = [], []
    for msgs in convs:
        for agp in (False, True):
            reqs.append({"messages": msgs, "add_generation_prompt": agp})
            meta.append((msgs, agp, False))
    for msgs in convs[:10]:
        reqs.append({"messages": msgs, "add_generation_prompt": False, "train_on_prompt": True})
        meta.append((msgs, False, True))
    head, got = run_dump(chatdump, folder, "", reqs, work)
    if head.startswith("ERR"):
        fail(f"{fname}: load: {head}")
        return
    bad = masks_checked = errors = 0
    for (msgs, agp, top), g in zip(meta, got):
        want, text = hf_render(hf, msgs, agp, **kw)
        where_ = f"{fname}: {json.dumps(msgs)[:300]} agp={agp}"
        if want is None:
            errors += 1
            if not g.startswith("ERR"):
                bad += 1
                fail(f"{where_}: transformers raised ({text[:120]}) but ctrain rendered")
            continue
        if g.startswith("ERR"):
            bad += 1
            fail(f"{where_}: ctrain failed: {g}")
            continue
        ids_s, mask_s, text_hex = g.split("|")
        ids = [int(x) for x in ids_s.split()] if ids_s else []
        mask = [int(x) for x in mask_s.split()] if mask_s else []
        ctext = bytes.fromhex(text_hex).decode("utf-8")
        if ids != want or ctext != text:
            bad += 1
            if bad <= 5:
                fail(f"{where_}: ids differ\n  text ctrain {ctext[:400]!r}\n  text hf     {text[:400]!r}\n"
                     f"  got  {ids[:80]}\n  want {want[:80]}")
            continue
        if top:
            exp = [0] + [1] * (len(ids) - 1)
        else:
            em = expected_mask(hf, msgs, agp, text, post, **kw)
            if em is None:
                continue
            exp = em[1]
            if em[0] != ids:
                fail(f"{where_}: encoding the rendered text does not give apply_chat_template's ids")
        masks_checked += 1
        if mask != exp:
            bad += 1
            if bad <= 5:
                diff = [i for i, (a, b) in enumerate(zip(mask, exp)) if a != b][:10]
                fail(f"{where_}: mask differs at tokens {diff}\n  text {text[:300]!r}\n  ids  {ids[:60]}\n  got  {mask[:60]}\n  want {exp[:60]}")
    stats["convs"] += len(reqs)
    stats["masks"] += masks_checked
    print(f"{fname} ({head.split('|')[0]}, {tokname}): {len(reqs)} renders, {errors} refused by both, "
          f"{masks_checked} masks checked, {bad} differ")


def check_generation_mask(tok, work, rng, lines):
    """The expected-mask rule against transformers' own return_assistant_tokens_mask on a copy of
    SmolLM2's template whose assistant content and <|im_end|> are wrapped in {% generation %}."""
    template = (Path(ARGS.templates) / "smollm2-instruct.jinja").read_text(encoding="utf-8")
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert turn in template
    gen = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>' + message['role'] + '\n'}}{% generation %}"
           "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + turn + "{% endif %}")
    folder = work / "smollm2-generation"
    write_folder(folder, tok, "smollm2", template.replace(turn, gen), "<|im_start|>", "<|im_end|>", "config")
    hf = AutoTokenizer.from_pretrained(str(folder))
    n = 0
    for msgs in conversations(rng, lines, False, True, n=60):
        out = hf.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        text = hf.apply_chat_template(msgs, tokenize=False)
        em = expected_mask(hf, msgs, False, text, 1)
        if em[1] != list(out["assistant_masks"]):
            fail(f"generation mask: {msgs}: offsets give {em[1][:80]}, transformers {list(out['assistant_masks'])[:80]}")
        n += 1
    print(f"smollm2 with {{% generation %}}: {n} masks from offsets equal transformers' assistant_masks")


def check_dates_and_names(toks, chatdump, work):
    """Llama-3.2 with a date given; forced names on a folder without a template against the
    published first forms; a folder without a template is "plain"."""
    template = (Path(ARGS.templates) / "llama-3.2-3b-instruct.jinja").read_text(encoding="utf-8")
    folder = work / "llama-3.2-3b-instruct"
    hf = AutoTokenizer.from_pretrained(str(folder))
    msgs = [{"role": "system", "content": " sys "}, {"role": "user", "content": "hi"}]
    today = datetime.date.today().strftime("%d %b %Y")
    for date, kw in (("05 Dec 2026", {"date_string": "05 Dec 2026"}), (today, {})):
        _, got = run_dump(chatdump, folder, "", [{"messages": msgs, "add_generation_prompt": True, "date": date}], work)
        want, _ = hf_render(hf, msgs, True, **kw)
        if got[0].split("|")[0] != " ".join(map(str, want)):
            fail(f"llama-3.2 date {date!r}: got {got[0][:200]}, want {want}")
    del template
    for name, fname, tokname, bos, eos in (("chatml", "chatml-openhermes-2.5", "sp_chatml", "<s>", "<|im_end|>"),
                                           ("llama3", "llama-3-8b-instruct", "llama3", "<|begin_of_text|>", "<|eot_id|>"),
                                           ("llama2", "llama-2-13b-chat", "sp_legacy", "<s>", "</s>"),
                                           ("mistral", "mixtral-8x7b-instruct-v0.1", "sp_meta", "<s>", "</s>"),
                                           ("gemma", "gemma-2-2b-it", "gemma", "<bos>", "<eos>")):
        folder = work / f"bare-{name}"
        folder.mkdir(exist_ok=True)
        toks[tokname].save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                                  "bos_token": bos, "eos_token": eos}))
        hf = AutoTokenizer.from_pretrained(str(folder))
        tmpl = (Path(ARGS.templates) / f"{fname}.jinja").read_text(encoding="utf-8")
        convs = [[{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": " General Kenobi "},
                  {"role": "user", "content": "again"}]]
        head, got = run_dump(chatdump, folder, name, [{"messages": convs[0], "add_generation_prompt": True}], work)
        want, _ = hf_render(hf, convs[0], True, chat_template=tmpl)
        if head.split("|")[0] != name or got[0].split("|")[0] != " ".join(map(str, want)):
            fail(f"forced {name} on a folder without a template: {head} / {got[0][:200]}, want {want}")
        head, _ = run_dump(chatdump, folder, "", [], work)
        if not head.startswith("plain|"):
            fail(f"a folder without a template is not plain: {head}")
    print("llama-3.2 dates, forced names on bare folders, plain: checked")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--chatdump", required=True)
    ap.add_argument("--templates", required=True)
    ARGS = ap.parse_args()
    lines = corpus_lines()
    rng = random.Random(0)
    sample = [l for l in rng.sample(lines, min(3000, len(lines))) if l.strip()]
    toks = build_tokenizers(lines[:4000])
    stats = {"convs": 0, "masks": 0}
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        for case in CASES:
            compare_case(case, toks[case[1]], ARGS.chatdump, work, rng, sample, stats)
        check_generation_mask(toks["smollm"], work, rng, sample)
        check_dates_and_names(toks, ARGS.chatdump, work)
    print(f"{len(CASES)} templates, {stats['convs']} renders compared with apply_chat_template, "
          f"{stats['masks']} masks checked")
    return finish("reference_chat_template")


if __name__ == "__main__":
    sys.exit(main())
