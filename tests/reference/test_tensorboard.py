"""Reference test: ctrain's TensorBoard event files, read back by TensorBoard's own readers.

A tiny GPT-2 trains on the CPU (log.peak_tflops set, so MFU is logged too) in three run
directories under one log dir:
  1. "pointed": 30 steps with checkpoints at 10, 20, 30; `latest` is pointed back at step 20 (a
     run that died after its step-20 checkpoint) and the same command resumes to step 40. A
     TensorBoard EventAccumulator that read the directory before the resume and reloads after it
     (a live TensorBoard) ends with what metrics.jsonl holds: the SessionLog START at step 21
     purges the dropped steps 21..30 it had read;
  2. "killed": started fresh, killed with SIGKILL some steps after a checkpoint, its event file cut
     a few bytes short (a record written halfway), then resumed by the same command: the steps
     after the checkpoint and the damaged record are dropped, and the resumed run logs them again;
  3. "ranks": 2 ranks (with --mpiexec): one event file, written by rank 0;
  4. "faults": a resume whose rewrite cannot be written (its temporary file is /dev/full) stops at
     its start, exit 1, naming the event file, which keeps every record; run again, it goes on.
For every run directory:
  - every record of every event file has a valid framing (TensorBoard's reader checks the CRCs),
    each file starts with file_version "brain.Event:2", and each (tag, step) occurs once over all
    the directory's files (TensorBoard's raw loader, no purging);
  - EventAccumulator's scalars equal metrics.jsonl: train/loss, train/lr, train/grad_norm,
    train/tokens_per_s, train/mfu, train/memory_gib at every step, val/loss at every evaluation,
    each within the precision metrics.jsonl prints (and float32's); wall times rise;
  - `tensorboard --logdir` (the real server, on 127.0.0.1, with its Python loader and with its Rust
    data server where the wheel ships it) serves the same steps and values over HTTP.
"""
import argparse
import glob
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reftools import fail, finish, mpi_env, run

KEYS = {  # metrics.jsonl key -> (TensorBoard tag, absolute precision of its printed value)
    "loss": ("train/loss", 5e-9), "lr": ("train/lr", None), "grad_norm": ("train/grad_norm", 5e-7),
    "tokens_per_s": ("train/tokens_per_s", 0.05), "mfu": ("train/mfu", 5e-7),
    "memory_gib": ("train/memory_gib", 5e-5), "val_loss": ("val/loss", 5e-7),
}


def metrics(run_dir):
    """{tag: {step: value}} from metrics.jsonl (nulls left out, as ctrain leaves them out of events)."""
    want = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, (tag, _) in KEYS.items():
            if row.get(key) is not None:
                if row["step"] in want.setdefault(tag, {}):
                    fail(f"{run_dir.name}: metrics.jsonl has step {row['step']} of {key} twice")
                want[tag][row["step"]] = row[key]
    return want


def close(tag, got, want):
    prec = {t: p for t, p in KEYS.values()}[tag]
    tol = (prec if prec is not None else 5e-6 * abs(want)) + 1.2e-7 * abs(want)  # printed, then float32
    return abs(got - want) <= tol


def compare(what, got, want):
    """got, want: {tag: {step: value}}; every tag, step and value alike."""
    if set(got) != set(want):
        fail(f"{what}: tags {sorted(got)} != metrics.jsonl's {sorted(want)}")
    for tag in sorted(set(got) & set(want)):
        if sorted(got[tag]) != sorted(want[tag]):
            fail(f"{what}: {tag}: steps {sorted(got[tag])} != metrics.jsonl's {sorted(want[tag])}")
            continue
        bad = [(s, got[tag][s], want[tag][s]) for s in want[tag] if not close(tag, got[tag][s], want[tag][s])]
        if bad:
            fail(f"{what}: {tag}: {len(bad)} values differ from metrics.jsonl, first (step, got, want) {bad[0]}")


def raw_events(run_dir):
    """{tag: {step: value}} over every event file, each (tag, step) required once; checks framing,
    file_version and wall times."""
    files = sorted(glob.glob(str(run_dir / "*tfevents*")))
    got = {}
    if not files:
        fail(f"{run_dir.name}: no event file")
    for f in files:
        try:
            events = list(event_file_loader.LegacyEventFileLoader(f).Load())
        except Exception as e:  # a CRC mismatch is an error in TensorBoard's reader
            fail(f"{run_dir.name}: {os.path.basename(f)}: unreadable: {e}")
            continue
        if not events or events[0].file_version != "brain.Event:2":
            fail(f"{run_dir.name}: {os.path.basename(f)}: does not start with file_version brain.Event:2")
        walls = [e.wall_time for e in events]
        if walls != sorted(walls) or not all(1.5e9 < w < 4e9 for w in walls):
            fail(f"{run_dir.name}: {os.path.basename(f)}: wall times not rising seconds since 1970: {walls[:3]}...")
        for e in events:
            for v in e.summary.value:
                if e.step in got.setdefault(v.tag, {}):
                    fail(f"{run_dir.name}: ({v.tag}, step {e.step}) twice in the event files")
                got[v.tag][e.step] = v.simple_value
    return got


def accumulated(acc):
    acc.Reload()
    return {tag: {s.step: s.value for s in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def check_dir(run_dir):
    want = metrics(run_dir)
    compare(f"{run_dir.name}: raw event files", raw_events(run_dir), want)
    compare(f"{run_dir.name}: EventAccumulator", accumulated(EventAccumulator(str(run_dir), size_guidance={"scalars": 0})),
            want)
    return want


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(logdir, runs, want, fast):
    """`tensorboard --logdir` on 127.0.0.1: its scalars of every run and tag equal want[run]."""
    exe = Path(sys.executable).parent / "tensorboard"
    port = free_port()
    log = open(logdir / f"tensorboard_{fast}.log", "w")
    p = subprocess.Popen([str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
                          "--load_fast", fast, "--reload_interval", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?"
    got, deadline = {}, time.time() + 90
    try:
        while time.time() < deadline and p.poll() is None:
            try:
                got = {r: {tag: {step: v for _, step, v in json.load(urllib.request.urlopen(
                    base + urllib.parse.urlencode({"run": r, "tag": tag}), timeout=10))} for tag in want[r]}
                    for r in runs}
            except Exception:  # not up yet, or the run not loaded yet
                got = {}
            if got and all(len(got[r][t]) >= len(want[r][t]) for r in runs for t in want[r]):
                break
            time.sleep(1)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
    if p.returncode not in (0, -signal.SIGINT, 130, None) and not got:
        fail(f"tensorboard --load_fast {fast} exited {p.returncode}: {(logdir / f'tensorboard_{fast}.log').read_text()[-1000:]}")
    print(f"tensorboard --load_fast {fast}: served {sum(len(v) for r in got for v in got[r].values())} scalars of "
          f"runs {sorted(got)} in {time.time() - deadline + 90:.1f} s")
    for r in runs:
        if r not in got:
            fail(f"tensorboard --load_fast {fast}: run {r} not served within 90 s")
        else:
            compare(f"tensorboard --load_fast {fast}: {r}", got[r], want[r])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    ap.add_argument("--mpiexec", default="")
    a = ap.parse_args()
    env = mpi_env()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = tmp / "runs"
        runs.mkdir()
        words = "the of and to in a is that for it as was with be by on not he this are".split()
        (tmp / "text.txt").write_text("\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9))
                                                for i in range(3000)))
        cfg = {"run": {"device": "cpu", "seed": 3},
               "model": {"max_seq_len": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
               "data": {"text": str(tmp / "text.txt"), "train": str(tmp / "train.h5"), "val": str(tmp / "val.h5"),
                        "seq_len": 32, "micro_batch": 2},
               "optim": {"max_steps": 30, "warmup_steps": 3},
               "checkpoint": {"every": 10, "keep": 3},
               "log": {"eval_every": 5, "eval_batches": 2, "peak_tflops": 0.01}}
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        run([a.ctrain, "prepare", tmp / "cfg.json"], env)

        def train(name, *sets, launch=()):
            return run([*launch, a.ctrain, "train", tmp / "cfg.json", "--set", f"run.dir={runs / name}",
                        *[x for s in sets for x in ("--set", s)]], env)

        # 1. pointed back: latest at step 20 of a 30-step run, then resumed to 40, a live reader throughout
        d = runs / "pointed"
        train("pointed")
        live = EventAccumulator(str(d), size_guidance={"scalars": 0})
        first = accumulated(live)
        if sorted(first.get("train/loss", {})) != list(range(1, 31)):
            fail(f"pointed: the first run's events hold steps {sorted(first.get('train/loss', {}))}")
        (d / "latest").write_text("ckpt_00000020.h5\n")
        time.sleep(1.1)  # a new second: the new file's name must sort last even so (it is checked below)
        out = train("pointed", "optim.max_steps=40")
        if "resumed from" not in out:
            fail("pointed: the second command did not resume")
        files = sorted(os.path.basename(f) for f in glob.glob(str(d / "*tfevents*")))
        if len(files) != 2:
            fail(f"pointed: {len(files)} event files, expected 2 (one per start): {files}")
        want = check_dir(d)
        if sorted(want["train/loss"]) != list(range(1, 41)):
            fail(f"pointed: metrics.jsonl's steps {sorted(want['train/loss'])}")
        compare("pointed: a live EventAccumulator across the resume (SessionLog START purges)", accumulated(live), want)
        every = {"pointed": want}

        # 2. killed some steps after a checkpoint, the event file cut inside its last record, resumed
        d = runs / "killed"
        p = subprocess.Popen([a.ctrain, "train", str(tmp / "cfg.json"), "--set", f"run.dir={d}", "--set",
                              "optim.max_steps=3000", "--set", "checkpoint.every=100", "--set", "log.eval_every=50",
                              "--set", "log.peak_tflops=0"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            m = d / "metrics.jsonl"
            if m.exists() and m.read_text().count('"loss"') >= 230:
                break
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        logged = max(json.loads(l)["step"] for l in (d / "metrics.jsonl").read_text().splitlines())
        saved = int((d / "latest").read_text().strip()[5:13])
        print(f"killed: SIGKILL after step {logged} was logged; latest checkpoint: step {saved}")
        if not (logged > saved >= 200):
            fail(f"killed: expected steps logged after the checkpoint: logged {logged}, checkpoint {saved}")
        (ev,) = glob.glob(str(d / "*tfevents*"))
        size = os.path.getsize(ev)
        os.truncate(ev, size - 5)
        end = saved + 60
        out = train("killed", f"optim.max_steps={end}", "checkpoint.every=100", "log.eval_every=50", "log.peak_tflops=0")
        if f"resumed from {d}/ckpt_{saved:08d}.h5" not in out:
            fail(f"killed: the second command did not resume from step {saved}")
        want = check_dir(d)
        if sorted(want["train/loss"]) != list(range(1, end + 1)) or "train/mfu" in want:
            fail(f"killed: metrics.jsonl's steps {sorted(want['train/loss'])[:3]}..., tags {sorted(want)}")
        every["killed"] = want

        # 3. two ranks: rank 0 writes the one event file; memory the max over ranks
        if a.mpiexec:
            train("ranks", "data.micro_batch=1", "optim.max_steps=10", launch=(a.mpiexec, "-n", "2", "--oversubscribe"))
            d = runs / "ranks"
            files = glob.glob(str(d / "*tfevents*"))
            if len(files) != 1:
                fail(f"ranks: {len(files)} event files, expected rank 0's alone")
            want = check_dir(d)
            if not all(v > 0.001 for v in want["train/memory_gib"].values()):
                fail(f"ranks: memory_gib {want['train/memory_gib']}")
            every["ranks"] = want
        else:
            print("ranks: skipped (no --mpiexec)")

        # 4. a rewrite that cannot be written (its temporary file on a full device): the resume stops at its
        # start with an error naming the event file, which keeps every record; with room, it goes on
        d = runs / "faults"
        train("faults", "optim.max_steps=10", "checkpoint.every=5")
        (d / "latest").write_text("ckpt_00000005.h5\n")
        (ev,) = glob.glob(str(d / "*tfevents*"))
        before = Path(ev).read_bytes()
        (d / ".events-rewrite.tmp").symlink_to("/dev/full")
        r = subprocess.run([a.ctrain, "train", tmp / "cfg.json", "--set", f"run.dir={d}", "--set", "optim.max_steps=10",
                            "--set", "checkpoint.every=5"], env=env, capture_output=True, text=True)
        if r.returncode != 1 or f"ctrain: error: {ev}: cannot rewrite" not in r.stderr or "No space left" not in r.stderr:
            fail(f"faults: exit {r.returncode}, stderr {r.stderr[-500:]!r}")
        elif Path(ev).read_bytes() != before or (d / ".events-rewrite.tmp").exists():
            fail("faults: the event file changed, or the temporary file was left")
        else:
            print("faults:", r.stderr.strip().splitlines()[-1])
        train("faults", "optim.max_steps=10", "checkpoint.every=5")
        every["faults"] = check_dir(d)

        # the real server, its Python loader and its Rust data server (where the wheel ships it)
        served(runs, sorted(every), every, "false")
        try:
            import tensorboard_data_server
            has_rust = tensorboard_data_server.server_binary() is not None
        except Exception:
            has_rust = False
        if has_rust:
            served(runs, sorted(every), every, "true")
        else:
            print("tensorboard --load_fast true: skipped (this tensorboard has no Rust data server)")
        print("runs checked:", ", ".join(f"{r} ({len(w['train/loss'])} steps)" for r, w in every.items()))
    return finish("reference_tensorboard")


if __name__ == "__main__":
    sys.exit(main())
