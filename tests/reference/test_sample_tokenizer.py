"""Reference test: `ctrain sample` speaks the model's own tokenizer.

A tiny Mistral (a sliding window shorter than the text) and a byte-level BPE tokenizer trained
offline with `tokenizers` are saved as one Hugging Face folder. `ctrain sample` at temperature 0
encodes the prompt with the folder's tokenizer.json (in C), decodes over the KV cache, and must
print exactly the prompt followed by tokenizers' decode of transformers' greedy `generate`; a
tokenizer with a BOS post-processor puts it in front of the prompt as transformers does; a
broken tokenizer.json is an error naming the file.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from reftools import fail, finish  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there had").split()


def corpus(n=3000, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(5, 15, (1,), generator=g)),),
                                                     generator=g).tolist()) + "." for _ in range(n)]


def make_folder(work, bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"])
    tok.train_from_iterator(corpus(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    torch.manual_seed(3)
    cfg = MistralConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=8,
                        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits: greedy picks that rounding cannot flip
        for p in model.parameters():
            p.mul_(4.0)
    folder = work / ("bos" if bos else "plain")
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder, tok, model


def ctrain_sample(ctrain, cfg_path, folder, prompt, n):
    return subprocess.run([ctrain, "sample", str(cfg_path), "--set", f"model.init_from={folder}",
                           "--set", f"run.dir={folder}/no_run", "--set", f"sample.prompt={prompt}",
                           "--set", f"sample.max_tokens={n}", "--set", "sample.temperature=0",
                           "--set", "run.device=cpu"], capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg_path = work / "cfg.json"
        cfg_path.write_text(json.dumps({"run": {"device": "cpu"}}))
        prompt = "the of and to in a is"
        for bos in (False, True):
            folder, tok, model = make_folder(work, bos)
            ids = tok.encode(prompt).ids
            if bos and ids[0] != 0:
                fail("the BOS post-processor did not apply in tokenizers")
            x = torch.tensor([ids])  # an explicit mask: generate would take BOS (id 0) for padding otherwise
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                 eos_token_id=None, pad_token_id=1)
            want = prompt + tok.decode(out[0, len(ids):].tolist())
            r = ctrain_sample(args.ctrain, cfg_path, folder, prompt, 24)
            got = r.stdout.rstrip("\n")
            what = "with a BOS post-processor" if bos else "plain"
            if r.returncode != 0 or got != want:
                fail(f"sample ({what}): ctrain {got!r} (exit {r.returncode}: {r.stderr[-300:]}), transformers {want!r}")
            else:
                print(f"sample ({what}): identical text, {len(out[0]) - len(ids)} tokens: {got[:60]!r}")
        (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
        r = ctrain_sample(args.ctrain, cfg_path, folder, prompt, 4)
        if r.returncode == 0 or "tokenizer.json" not in r.stderr or "ctrain: error:" not in r.stderr:
            fail(f"a broken tokenizer.json: exit {r.returncode}, stderr {r.stderr[-300:]!r}")
        else:
            print("broken tokenizer.json:", r.stderr.strip().splitlines()[-1][:160])
    return finish("reference_sample_tokenizer")


if __name__ == "__main__":
    sys.exit(main())
