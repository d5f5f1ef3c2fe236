"""Differential tests of the executable store (ufm/aot.py) from the outside, as a user runs ``ufm``.

The store's danger is a silent wrong number: a later process loading an executable that does not match what it
would have compiled. So every check compares whole ``--json`` records of real commands:

- cold (empty folder) against warm (the same folder, now loading): bit for bit;
- either against ``UFM_NO_CACHE=1`` (plain jax.jit, nothing stored): bit for bit, since the same XLA program runs;
- configurations that differ in one thing a compiled program depends on (a loss parameter, the dtype, the bias
  mode, class sizes, depth, activation, solver) run one after another in ONE shared folder, so a key that missed
  the difference would load the other configuration's executable and show as a different number.

Each command runs in a child process that prints ``ufm.aot.stats()`` on exit, so a warm run is checked to have
really loaded (a store that silently stopped working would pass the comparisons trivially).

The default tier runs a few commands chosen so that every pair shares executables but differs in a static; the
generated fuzz (``@pytest.mark.slow``) draws many configurations from a seed and chains them through one folder.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: runs ``python -m ufm ARGS`` and reports the store's counters on stderr at exit (SystemExit included)
_DRIVER = ("import atexit, json, runpy, sys\n"
           "from ufm import aot\n"
           "atexit.register(lambda: sys.stderr.write('AOTSTATS ' + json.dumps(aot.stats()) + '\\n'))\n"
           "sys.argv = ['ufm'] + sys.argv[1:]\n"
           "runpy.run_module('ufm', run_name='__main__', alter_sys=True)\n")

#: record fields that measure time, not the result
_TIMING = ("seconds", "wall", "elapsed")


def _env(cache):
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "UFM_NO_CACHE", "UFM_CACHE_DIR", "XLA_FLAGS",
                        "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if cache is None:
        env["UFM_NO_CACHE"] = "1"
    else:
        env["UFM_CACHE_DIR"] = str(cache)
    return env


def run_ufm(args, cache, extra_env=None, timeout=240):
    """(exit status, record or None, stderr, aot stats or None) of ``ufm ARGS --json``; cache None = no store."""
    env = _env(cache)
    env.update(extra_env or {})
    p = subprocess.run([sys.executable, "-c", _DRIVER, *args, "--json"], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=ROOT)
    stats = None
    for line in p.stderr.splitlines():
        if line.startswith("AOTSTATS "):
            stats = json.loads(line[len("AOTSTATS "):])
    try:
        record = json.loads(p.stdout)
    except ValueError:
        record = None
    return p.returncode, record, p.stderr, stats


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not any(t in k for t in _TIMING)}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def differences(a, b, path=""):
    """Paths where two JSON records differ (NaN equals NaN; floats compared exactly)."""
    out = []
    if type(a) is not type(b):
        return [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in one")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
    elif a != b and not (isinstance(a, float) and a != a and b != b):
        out.append(f"{path}: {a!r} vs {b!r}")
    return out


def assert_same(a, b, what):
    diff = differences(strip_timing(a), strip_timing(b))
    assert not diff, f"{what}: {len(diff)} fields differ, e.g. " + "; ".join(diff[:8])


# ------------------------------------------------------------------------------------------------------------------
# generated configurations

SOLVERS = ("auto", "lbfgs", "newton", "lm", "gd", "momentum", "adam")


def random_config(rng: random.Random) -> list:
    """One small ``ufm solve``/``ufm landscape`` command line (K ≤ 4, d ≤ 6, n ≤ 6)."""
    depth = rng.choice((1, 1, 1, 2, 3))
    K = rng.randint(2, 4)
    d = rng.randint(2, 6)
    if rng.random() < 0.3:
        n = ",".join(str(rng.randint(1, 6)) for _ in range(K))
    else:
        n = str(rng.randint(1, 5))
    cmd = rng.choice(("solve", "landscape"))
    args = [cmd, "-K", str(K), "-d", str(d), "-n", n, "--seed", str(rng.randint(0, 3))]
    loss = rng.choice(("ce", "fl", "ls", "mse"))
    args += ["--loss", loss]
    if loss == "fl":
        args += ["--gamma", rng.choice(("0", "1", "2", "3.5"))]
    elif loss == "ls":
        args += ["--alpha", rng.choice(("0", "0.05", "0.1", "0.3"))]
    elif loss == "mse":
        args += ["--kappa", rng.choice(("0.5", "1", "3")), "--beta", rng.choice(("0.5", "1", "2"))]
    args += ["--lam", rng.choice(("5e-3", "1e-2", "5e-2"))]
    bias = rng.choice(("reg", "reg", "none", "free"))
    if bias == "none":
        args += ["--no-bias"]
    elif bias == "free" and loss != "mse":
        args += ["--lam-b", "0"]
    if rng.random() < 0.3:
        args += ["--dtype", "float32"]
    if depth > 1:
        args += ["--depth", str(depth), "--activation", rng.choice(("linear", "relu"))]
        if rng.random() < 0.5:
            args += ["--widths", str(rng.randint(2, 6))]
    solver = rng.choice(SOLVERS) if cmd == "solve" else rng.choice(("auto", "lbfgs", "newton"))
    args += ["--solver", solver]
    if solver in ("gd", "momentum", "adam"):
        args += ["--max-steps", str(rng.choice((50, 120))), "--lr", rng.choice(("0.1", "0.3"))]
    else:
        args += ["--max-steps", "600"]
    if cmd == "solve" and rng.random() < 0.5:
        args += ["--no-bounds"]
    if cmd == "landscape":
        at = rng.choice(("solution", "solution", "origin", "census"))
        args += ["--at", at]
        if at == "census":
            args += ["--starts", str(rng.randint(2, 4))]
        args += ["--hessian", rng.choice(("auto", "dense", "lanczos"))]
        if rng.random() < 0.3:
            args += ["--hessian-dtype", "float32"]
    return args


def check_chain(configs, tmp_path, name="shared"):
    """Run every config cold in one shared folder (in order), then warm, then without a store; all must agree.

    Returns (total loaded, total stored) over the warm pass."""
    shared = tmp_path / name
    cold, loaded_warm = [], 0
    for args in configs:
        rc, rec, err, stats = run_ufm(args, shared)
        assert "Traceback" not in err and rec is not None, (args, rc, err[-2000:])
        cold.append((rc, rec))
    for args, (rc0, rec0) in zip(configs, cold):
        rc, rec, err, stats = run_ufm(args, shared)
        assert rc == rc0 and rec is not None, (args, rc, err[-2000:])
        assert stats is not None and stats["compiled"] == 0, (args, stats)     # warm: everything loaded
        loaded_warm += stats["loaded"]
        assert_same(rec0, rec, f"cold vs warm {' '.join(args)}")
    for args, (rc0, rec0) in zip(configs, cold):
        rc, rec, err, stats = run_ufm(args, None)
        assert rc == rc0 and rec is not None, (args, rc, err[-2000:])
        assert_same(rec0, rec, f"shared store vs UFM_NO_CACHE {' '.join(args)}")
    return loaded_warm


# ------------------------------------------------------------------------------------------------------------------
# default tier: a few commands that share every executable but one static (≈ 20 s of CPU)

BASE = ["solve", "-K", "3", "-d", "4", "-n", "3,3,2", "--lam", "1e-2", "--no-bounds", "--max-steps", "400"]


def test_focal_gamma_then_another_gamma_then_float32_share_one_folder(tmp_path):
    """FL γ = 1, then γ = 2 (same shapes and functions: only the loss static differs), then γ = 2 in float32, in one
    folder: the second and third must not pick up the first's executables. The first again (warm) must load all."""
    a = BASE + ["--loss", "fl", "--gamma", "1"]
    b = BASE + ["--loss", "fl", "--gamma", "2"]
    c = BASE + ["--loss", "fl", "--gamma", "2", "--dtype", "float32"]
    shared = tmp_path / "store"
    rc_a, rec_a, err, _ = run_ufm(a, shared)
    assert rc_a == 0 and rec_a is not None, err[-2000:]
    rc_b, rec_b, err, _ = run_ufm(b, shared)
    assert rc_b == 0 and rec_b is not None, err[-2000:]
    rc_c, rec_c, err, _ = run_ufm(c, shared)
    assert rec_c is not None, err[-2000:]
    assert rec_a["objective"] != rec_b["objective"]           # the two γ's really are different problems
    rc, rec_a2, err, stats = run_ufm(a, shared)
    assert stats is not None and stats["loaded"] > 0 and stats["compiled"] == 0, stats
    assert_same(rec_a, rec_a2, "γ=1 cold vs warm after γ=2")
    rc, rec_b_ref, err, _ = run_ufm(b, None)
    assert_same(rec_b_ref, rec_b, "γ=2 after γ=1 in a shared folder vs no store")
    rc, rec_c_ref, err, _ = run_ufm(c, None)
    assert_same(rec_c_ref, rec_c, "float32 γ=2 after float64 in a shared folder vs no store")


@pytest.mark.slow
def test_generated_chains_through_one_folder(tmp_path):
    """Generated configurations (seeded) chained through one folder, plus twins that differ in one static each."""
    rng = random.Random(20261128)
    configs = [random_config(rng) for _ in range(8)]
    twins = []
    for args in configs[:4]:
        twin = list(args)
        if "--seed" in twin:
            twin[twin.index("--seed") + 1] = str(int(twin[twin.index("--seed") + 1]) + 1)
        twin = twin + ["--lam-b", "0"] if "--no-bias" not in twin and "mse" not in twin else twin + ["--dtype",
                                                                                                     "float32"]
        twins.append(twin)
    loaded = check_chain(configs + twins, tmp_path)
    assert loaded > 0
