"""Reference test: a ctrain checkpoint read by h5py, against the safetensors `ctrain export` writes.

ctrain trains a tiny GPT-2 for a few steps (2 ranks when mpiexec is given), then:
  - the checkpoint's root attributes are the documented ones (format, version, step, world, ...);
  - /model holds every tensor of the exported model.safetensors under the same Hugging Face
    name, with the same values (transposed where hf_transposed = 1) and shapes;
  - /optimizer/{master,exp_avg,exp_avg_sq} hold the same names and shapes, master == /model;
  - every dataset's checksum attribute equals the documented checksum recomputed with numpy;
  - transformers loads the export.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import load_file

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def checksum(values):
    """Sum over elements of mix64(((index << 32) ^ bits) + golden) mod 2^64 (train/checkpoint.c)."""
    bits = values.astype("<f4").reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(bits.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = ((idx << np.uint64(32)) ^ bits) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--mpiexec", default="")
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        (tmp / "text.txt").write_text("\n".join(" ".join(str(x) for x in rng.integers(0, 999, 9)) for _ in range(2000)))
        cfg = {"run": {"dir": str(tmp / "run"), "device": "cpu"},  # fp32: the oracle's precision
               "model": {"max_seq_len": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
               "data": {"text": str(tmp / "text.txt"), "train": str(tmp / "train.h5"), "val": str(tmp / "val.h5"),
                        "seq_len": 32, "micro_batch": 2},
               "optim": {"max_steps": 6, "warmup_steps": 2}, "checkpoint": {"every": 3, "keep": 2},
               "log": {"eval_every": 0, "eval_batches": 1}}
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        subprocess.run([a.ctrain, "prepare", str(tmp / "cfg.json")], check=True, env=env, capture_output=True)
        launch = [a.mpiexec, "-n", "2", "--oversubscribe"] if a.mpiexec else []
        world = 2 if a.mpiexec else 1
        subprocess.run(launch + [a.ctrain, "train", str(tmp / "cfg.json")], check=True, env=env, capture_output=True)
        ckpt = tmp / "run" / (tmp / "run" / "latest").read_text().strip()
        subprocess.run([a.ctrain, "export", str(ckpt), str(tmp / "export")], check=True, env=env, capture_output=True)
        exported = load_file(str(tmp / "export" / "model.safetensors"))

        with h5py.File(ckpt, "r") as f:
            attrs = dict(f.attrs)
            check(attrs.get("format") in ("ctrain-checkpoint", b"ctrain-checkpoint"), f"format attribute: {attrs.get('format')}")
            check(int(attrs["version"]) == 1, "version attribute")
            check(int(attrs["step"]) == 6 and int(attrs["world"]) == world, f"step/world: {attrs['step']} {attrs['world']}")
            check(int(attrs["tokens"]) == 6 * 2 * 32 * world, f"tokens attribute {attrs['tokens']}")
            config = attrs["config"]
            config = json.loads(config.decode() if isinstance(config, bytes) else config)
            check(config["optim"]["max_steps"] == 6, "config attribute holds the resolved config")
            for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "layer_norm_epsilon", "rng",
                        "cursor_epoch", "cursor_step", "cursor_micro", "zero_stage", "optim_steps"):
                check(key in attrs, f"attribute {key} missing")
            names = sorted(f["model"].keys())
            check(names == sorted(exported), f"/model names differ from the export: {set(names) ^ set(exported)}")
            for name in names:
                d = f["model"][name]
                value = d[()]
                if d.attrs["hf_transposed"]:
                    value = value.T
                want = exported.get(name)
                if want is None:
                    continue
                check(value.shape == want.shape, f"/model/{name}: shape {value.shape} vs export {want.shape}")
                check(value.shape == want.shape and np.array_equal(value, want), f"/model/{name}: values differ")
                check(int(d.attrs["checksum"]) == checksum(d[()]), f"/model/{name}: checksum attribute")
                for g in ("master", "exp_avg", "exp_avg_sq"):
                    o = f["optimizer"][g][name]
                    check(o.shape == d.shape, f"/optimizer/{g}/{name}: shape")
                    check(int(o.attrs["checksum"]) == checksum(o[()]), f"/optimizer/{g}/{name}: checksum attribute")
                check(np.array_equal(f["optimizer"]["master"][name][()], d[()]), f"master != model for {name}")
                check(np.abs(f["optimizer"]["exp_avg_sq"][name][()]).sum() > 0, f"exp_avg_sq of {name} is all zero")
        print(f"checkpoint {ckpt.name}: {len(names)} tensors match the export; checksums recomputed")

        from transformers import GPT2LMHeadModel
        GPT2LMHeadModel.from_pretrained(str(tmp / "export"))
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    print("reference_checkpoint:", "FAILED" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
