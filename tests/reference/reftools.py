"""Helpers the reference tests share: relative errors, the failure list, token files, subprocesses.

A test imports this module, records problems with fail() or check() as it goes (it does not stop
at the first), and ends with `return finish("reference_NAME")`.
"""
import os
import subprocess
import sys

RTOL = 1e-4
failures = []


def fail(msg):
    failures.append(msg)


def rel_err(got, want):
    """max |got - want| / max |want| over the tensor, in double precision."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check(name, got, want, rtol=RTOL, show=False):
    """Records a failure unless got and want have one shape and rel_err(got, want) <= rtol (NaN fails).
    Returns the error (None on a shape mismatch); show prints it."""
    if tuple(got.shape) != tuple(want.shape):
        fail(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        return None
    err = rel_err(got, want)
    if show:
        print(f"{name}: relative error {err:.2e}")
    if not err <= rtol:  # also catches NaN
        fail(f"{name}: relative error {err:.3g} > {rtol:g}")
    return err


def write_tokens(path, tokens, targets=None):
    """The token file ct_refdump reads: "B T", the B*T inputs, the B*T targets (-1: not counted;
    None: the inputs again)."""
    if targets is None:
        targets = tokens
    B, T = tokens.shape
    with open(path, "w") as f:
        f.write(f"{B} {T}\n")
        f.write(" ".join(str(int(t)) for t in tokens.flatten()) + "\n")
        f.write(" ".join(str(int(t)) for t in targets.flatten()) + "\n")


def mpi_env(threads=1):
    """The environment for ctrain under mpirun as root, one OpenMP thread per rank by default."""
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMP_NUM_THREADS=str(threads))


def run(cmd, env=None):
    """Runs cmd; on a non-zero exit stops the test with the command and the tails of its output."""
    r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def finish(test_name):
    """Prints every failure and the verdict; the exit code."""
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    print(f"{test_name}:", "FAILED" if failures else "all checks passed")
    return 1 if failures else 0
