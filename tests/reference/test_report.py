"""Reference test: `ctrain report`, its HTML parsed back (Python's html.parser) against the runs' files.

Runs: two tiny GPT-2 runs trained by ctrain (another optim.lr; MFU logged in one), and three made
here: 5,000 steps (more than CT_REPORT_MAX_POINTS: decimated), one with a non-finite step (loss and
grad_norm null) and a last line cut short, and one whose directory name holds &, <, > and ".
  - every plot the report documents is there (loss_step, loss_tokens, lr, tokens_per_s, grad_norm,
    mfu, memory_gib); for every run and series, the polylines' points are metrics.jsonl's values
    after the documented scaling (report.h), to the two printed decimals: rows 0, k, 2k, ... and the
    last of a long series, a polyline ending at a null and the next starting after it, val points at
    the tokens of their step's line; the cut last line is left out;
  - every run is named (its directory, escaped) in the legend, the config table and its lines;
  - the config table's highlighted rows are exactly the keys whose values differ (ctrain.json read
    here), listed before the others;
  - the file is self-contained: no script, no src or href;
  - bad input is an error naming the file (and line), exit 1, no output written: no metrics.jsonl,
    no ctrain.json, malformed JSON, a value of another type, a duplicate key, a line without step,
    a missing or unwritable output folder, no run at all, an unknown option.
"""
import argparse
import json
import math
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from reftools import fail, finish, mpi_env, run

MAX_POINTS = 2000  # CT_REPORT_MAX_POINTS
PLOTS = {"loss_step": ("loss", "step"), "loss_tokens": ("loss", "tokens"), "lr": ("lr", "step"),
         "tokens_per_s": ("tokens_per_s", "step"), "grad_norm": ("grad_norm", "step"), "mfu": ("mfu", "step"),
         "memory_gib": ("memory_gib", "step")}


class Report(HTMLParser):
    """The plots (svg data-* attributes and polylines), the text of every table cell, and the config rows."""

    def __init__(self):
        super().__init__()
        self.plots, self.svg, self.cells, self.rows, self.row = {}, None, [], [], None
        self.text, self.scripts, self.refs = "", 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        self.refs += [v for k, v in attrs if k in ("src", "href")]
        if tag == "svg" and a.get("class") == "plot":
            self.svg = a["id"]
            self.plots[self.svg] = {"attrs": {k[5:]: float(v) for k, v in a.items() if k.startswith("data-")},
                                    "lines": []}
        elif tag == "polyline" and self.svg:
            pts = [tuple(map(float, p.split(","))) for p in a["points"].split()]
            self.plots[self.svg]["lines"].append((a["data-run"], a["data-series"], pts))
        elif tag == "tr":
            self.row = {"diff": a.get("class") == "diff", "cells": []}
        elif tag in ("td", "th"):
            self.text = ""

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None
        elif tag in ("td", "th") and self.row is not None:
            self.row["cells"].append(self.text.strip())
            self.cells.append(self.text.strip())
        elif tag == "tr":
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        self.text += data


def metrics_rows(run_dir):
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().split("\n")[:-1]:  # a last line without \n is left out
        rows.append(json.loads(line))
    return rows


def series(rows, key, x):
    """The documented points of one series: [(x, y) or None], decimated, None where not finite."""
    train = [r for r in rows if "loss" in r]
    if key == "val_loss":
        pts = []
        for r in (r for r in rows if "val_loss" in r):
            tokens = next((t["tokens"] for t in train if t["step"] == r["step"]), None)
            pts.append((r["step"] if x == "step" else tokens, r["val_loss"]))
    else:
        pts = [(r["step"] if x == "step" else r["tokens"], r.get(key)) for r in train]
    n = len(pts)
    k = -(-n // MAX_POINTS) if n > MAX_POINTS else 1
    pts = [p for i, p in enumerate(pts) if i % k == 0 or i == n - 1]
    return [p if p[0] is not None and p[1] is not None and math.isfinite(p[1]) else None for p in pts]


def segments(points):
    """Points split where one is None, as the report's polylines are."""
    out, cur = [], []
    for p in points + [None]:
        if p is None:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(p)
    return out


def check_plot(pid, plot, runs):
    key, x = PLOTS[pid]
    A = plot["attrs"]
    for k in ("left", "top", "width", "height", "xmin", "xmax", "ymin", "ymax"):
        if k not in A:
            fail(f"{pid}: no data-{k}")
            return
    sx = lambda v: A["left"] + (v - A["xmin"]) / (A["xmax"] - A["xmin"]) * A["width"]
    sy = lambda v: A["top"] + A["height"] - (v - A["ymin"]) / (A["ymax"] - A["ymin"]) * A["height"]
    for name, rows in runs.items():
        for s in ([key, "val_loss"] if key == "loss" else [key]):
            want = segments(series(rows, s, x))
            got = [pts for r, ser, pts in plot["lines"] if r == name and ser == s]
            if [len(g) for g in got] != [len(w) for w in want]:
                fail(f"{pid}: {name}: {s}: polylines of {[len(g) for g in got]} points, expected {[len(w) for w in want]}")
                continue
            worst = max([max(abs(gx - sx(wx)), abs(gy - sy(wy))) for g, w in zip(got, want)
                         for (gx, gy), (wx, wy) in zip(g, w)], default=0)
            if worst > 0.0051:
                fail(f"{pid}: {name}: {s}: a point {worst:.4f} units from its documented place")
            inside = all(A["left"] - 0.01 <= gx <= A["left"] + A["width"] + 0.01 and
                         A["top"] - 0.01 <= gy <= A["top"] + A["height"] + 0.01 for g in got for gx, gy in g)
            if not inside:
                fail(f"{pid}: {name}: {s}: points outside the plot area")


def flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat(v, name))
        else:
            out[name] = v if isinstance(v, str) else json.dumps(v)
    return out


def synthetic(root, name, steps, null_at=(), cut=False, lr=1e-3, extra=None):
    d = root / name
    d.mkdir()
    cfg = {"run": {"dir": str(d), "seed": 1}, "optim": {"lr": lr, "max_steps": steps}, "model": {"n_layer": 2}}
    if extra:
        cfg.update(extra)
    (d / "ctrain.json").write_text(json.dumps(cfg, indent=2) + "\n")
    lines = []
    for s in range(1, steps + 1):
        loss = None if s in null_at else 5.0 * math.exp(-s / steps) + 0.01 * math.sin(s)
        lines.append(json.dumps({"step": s, "loss": loss, "lr": lr * min(1, s / 10), "grad_norm": None if s in null_at
                                 else 1 + 1 / s, "ms": 3.0, "tokens_per_s": 1000.0 + s % 7, "tokens": 64 * s,
                                 "mfu": 0.3 + 0.001 * (s % 5), "memory_gib": 0.5 + 0.0001 * min(s, 50)}))
        if s % 10 == 0:
            lines.append(json.dumps({"step": s, "val_loss": 5.1 * math.exp(-s / steps)}))
    text = "\n".join(lines) + "\n"
    if cut:
        text += '{"step": ' + str(steps + 1) + ', "loss": 1.0, "lr"'  # a run still writing
    (d / "metrics.jsonl").write_text(text)
    return d


def report(ctrain, *args):
    return subprocess.run([str(ctrain), "report", *map(str, args)], capture_output=True, text=True)


def bad(ctrain, root, what, dirs, expect, out=None):
    out = out or root / "bad.html"
    r = report(ctrain, *dirs, "-o", out)
    msg = r.stderr.strip()
    if r.returncode != 1 or not msg.startswith("ctrain: error: ") or expect not in msg:
        fail(f"bad input: {what}: exit {r.returncode}, stderr {msg!r} (expected exit 1 and {expect!r})")
    elif Path(out).exists() or Path(str(out) + ".tmp").exists():
        fail(f"bad input: {what}: {out} written anyway")
    else:
        print(f"bad input: {what}: {msg}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrain", required=True)
    a = ap.parse_args()
    env = mpi_env()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        words = "and the of to in a is that for it as was with be by on not he this are".split()
        (tmp / "text.txt").write_text("\n".join(" ".join(words[(i * 5 + j) % len(words)] for j in range(9))
                                                for i in range(2000)))
        cfg = {"run": {"device": "cpu"}, "model": {"max_seq_len": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
               "data": {"text": str(tmp / "text.txt"), "train": str(tmp / "train.h5"), "val": str(tmp / "val.h5"),
                        "seq_len": 32, "micro_batch": 2},
               "optim": {"max_steps": 40, "warmup_steps": 4}, "log": {"eval_every": 10, "eval_batches": 2}}
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        run([a.ctrain, "prepare", tmp / "cfg.json"], env)
        real = [tmp / "lr1e-3", tmp / "lr3e-3"]
        run([a.ctrain, "train", tmp / "cfg.json", "--set", f"run.dir={real[0]}"], env)
        run([a.ctrain, "train", tmp / "cfg.json", "--set", f"run.dir={real[1]}", "--set", "optim.lr=3e-3",
             "--set", "log.peak_tflops=0.02"], env)
        long = synthetic(tmp, "long", 5000, lr=3e-4)
        gaps = synthetic(tmp, "gaps", 60, null_at=(20, 21, 45), cut=True, extra={"lora": {"r": 4}})
        odd = synthetic(tmp, 'odd & <name> "q"', 30)
        dirs = real + [long, gaps, odd]
        out = tmp / "report.html"
        r = report(a.ctrain, *[f"{d}/" if d == long else d for d in dirs], "-o", out)  # a trailing / is dropped
        if r.returncode != 0 or not out.exists():
            fail(f"ctrain report exited {r.returncode}: {r.stderr}")
            return finish("reference_report")
        print(r.stdout.strip(), f"({out.stat().st_size} bytes)")
        html = out.read_text()
        p = Report()
        p.feed(html)
        runs = {str(d): metrics_rows(d) for d in dirs}

        if sorted(p.plots) != sorted(PLOTS):
            fail(f"plots {sorted(p.plots)}, expected {sorted(PLOTS)}")
        for pid, plot in p.plots.items():
            if pid in PLOTS:
                check_plot(pid, plot, runs)
        n_long = max(len(pts) for r, s, pts in p.plots["loss_step"]["lines"] if r == str(long))
        if n_long != 1668:  # 5000 rows, k = 3: rows 0, 3, ..., 4998 (1667) and 4999
            fail(f"long: {n_long} points in its loss line, expected 1668")
        n_gaps = sum(1 for r, s, _ in p.plots["loss_step"]["lines"] if r == str(gaps) and s == "loss")
        if n_gaps != 3:
            fail(f"gaps: {n_gaps} loss polylines, expected 3 (nulls at steps 20-21 and 45)")

        # every run named: legend, config header, lines
        for d in dirs:
            if p.cells.count(str(d)) < 2:
                fail(f"{d.name}: named {p.cells.count(str(d))} times in the tables (legend and config header)")
            if not any(r == str(d) for plot in p.plots.values() for r, _, _ in plot["lines"]):
                fail(f"{d.name}: no line of it in any plot")
        if '"q"' in html.replace("&quot;", "") and "odd &amp; &lt;name&gt; &quot;q&quot;" not in html:
            fail("the name with &, <, > and \" is not escaped")

        # the config table: highlighted rows = the keys that differ, first
        cfgs = [flat(json.loads((d / "ctrain.json").read_text())) for d in dirs]
        keys = list(dict.fromkeys(k for c in cfgs for k in c))
        differ = {k for k in keys if len({c.get(k) for c in cfgs}) > 1}
        rows = [r for r in p.rows if r and len(r["cells"]) == len(dirs) + 1 and r["cells"][0] in keys]
        got_diff = [r["cells"][0] for r in rows if r["diff"]]
        if set(got_diff) != differ or len(rows) != len(keys):
            fail(f"config rows: {len(rows)} of {len(keys)} keys; highlighted {sorted(got_diff)}, differing {sorted(differ)}")
        if [r["diff"] for r in rows] != sorted((r["diff"] for r in rows), reverse=True):
            fail("config rows: the differing keys do not come first")
        for r in rows:
            for c, cell in zip(cfgs, r["cells"][1:]):
                want = c.get(r["cells"][0])
                if (want if want is not None else "\u2014") != cell and not (want == "" and cell == '""'):
                    fail(f"config {r['cells'][0]}: cell {cell!r}, ctrain.json {want!r}")
                    break
        if p.scripts or p.refs:
            fail(f"not self-contained: {p.scripts} scripts, references {p.refs[:3]}")
        print(f"checked {sum(len(pl['lines']) for pl in p.plots.values())} polylines in {len(p.plots)} plots, "
              f"{len(rows)} config rows ({len(differ)} differing)")

        # bad input
        nometrics = tmp / "nometrics"
        nometrics.mkdir()
        (nometrics / "ctrain.json").write_text("{}\n")
        bad(a.ctrain, tmp, "no metrics.jsonl", [real[0], nometrics], f"{nometrics}/metrics.jsonl: cannot open")
        bad(a.ctrain, tmp, "no ctrain.json", [tmp / "nowhere"], f"{tmp}/nowhere/ctrain.json: cannot open")
        for what, line, expect in [("malformed JSON", '{"step": 3, "loss": 1.0', "line 4: malformed JSON"),
                                   ("a string value", '{"step": 3, "loss": "1.0"}', 'line 4: "loss": expected a number or null'),
                                   ("a duplicate key", '{"step": 3, "loss": 1.0, "loss": 2.0}', "line 4: loss: key given twice"),
                                   ("no step", '{"loss": 1.0}', 'line 4: no "step"'),
                                   ("a fractional step", '{"step": 2.5, "loss": 1.0}', 'line 4: "step": expected a whole number'),
                                   ("neither loss nor val_loss", '{"step": 3}', 'line 4: neither "loss" nor "val_loss"'),
                                   ("not an object", '[1, 2]', "line 4: not a JSON object"),
                                   ("an empty line", '', "line 4: malformed JSON")]:
            d = tmp / "damaged"
            d.mkdir(exist_ok=True)
            (d / "ctrain.json").write_text("{}\n")
            (d / "metrics.jsonl").write_text("\n".join(['{"step": 1, "loss": 2.0}', '{"step": 1, "val_loss": 2.0}',
                                                        '{"step": 2, "loss": 1.5}', line, '{"step": 5, "loss": 1.0}']) + "\n")
            bad(a.ctrain, tmp, what, [real[0], d], f"{d}/metrics.jsonl: {expect}")
        bad(a.ctrain, tmp, "an output folder that is not there", [real[0]], f"{tmp}/none/r.html.tmp: cannot create",
            out=tmp / "none" / "r.html")
        r = report(a.ctrain)
        if r.returncode != 1 or "missing RUN_DIR" not in r.stderr:
            fail(f"no run: exit {r.returncode}, {r.stderr!r}")
        r = report(a.ctrain, real[0], "--bogus")
        if r.returncode != 1 or "unknown option '--bogus'" not in r.stderr:
            fail(f"an unknown option: exit {r.returncode}, {r.stderr!r}")
        r = report(a.ctrain, real[0], "-o")
        if r.returncode != 1 or "-o needs a file name" not in r.stderr:
            fail(f"-o without a file: exit {r.returncode}, {r.stderr!r}")
    return finish("reference_report")


if __name__ == "__main__":
    sys.exit(main())
