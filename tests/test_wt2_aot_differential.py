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

import glob
import json
import math
import os
import pathlib
import pickle
import random
import shutil
import subprocess
import sys
import time

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
                       timeout=timeout, cwd=ROOT, check=False)
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
    elif a != b and not (isinstance(a, float) and math.isnan(a) and math.isnan(b)):
        out.append(f"{path}: {a!r} vs {b!r}")
    return out


def assert_same(a, b, what):
    assert a is not None and b is not None, f"{what}: a command printed no record"
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
    at = rng.choice(("solution", "solution", "origin", "census")) if cmd == "landscape" else None
    args = [cmd, "-K", str(K), "-d", str(d), "-n", n]
    if at != "origin":                      # the origin is a critical point by construction: no start, no solver
        args += ["--seed", str(rng.randint(0, 3))]
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
    if at != "origin" and rng.random() < 0.3:
        args += ["--dtype", "float32"]
    if depth > 1:
        args += ["--depth", str(depth), "--activation", rng.choice(("linear", "relu"))]
        if rng.random() < 0.5:
            args += ["--widths", str(rng.randint(2, 6))]
    if at != "origin":
        solver = rng.choice(SOLVERS) if cmd == "solve" else rng.choice(("auto", "lbfgs", "newton"))
        args += ["--solver", solver]
        if solver in ("gd", "momentum", "adam"):
            args += ["--max-steps", str(rng.choice((50, 120))), "--lr", rng.choice(("0.1", "0.3"))]
        else:
            args += ["--max-steps", "600"]
    if cmd == "solve" and rng.random() < 0.5:
        args += ["--no-bounds"]
    if cmd == "landscape":
        args += ["--at", at]
        if at == "census":
            args += ["--starts", str(rng.randint(2, 4))]
        hessian = rng.choice(("auto", "dense", "lanczos"))
        args += ["--hessian", hessian]
        if hessian == "lanczos" and rng.random() < 0.5:      # the float32 Hessian is the matrix-free path's
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
# a few commands that share every executable but one static (≈ 20 s of CPU: in the slow tier with the rest of this
# file, as the default run must stay under 5 minutes; tests/test_aot.py keeps in-process checks of the same key there)

BASE = ["solve", "-K", "3", "-d", "4", "-n", "3,3,2", "--lam", "1e-2", "--no-bounds", "--max-steps", "400"]


@pytest.mark.slow
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
    _, rec_c, err, _ = run_ufm(c, shared)
    assert rec_c is not None, err[-2000:]
    assert rec_a["objective"] != rec_b["objective"]           # the two γ's really are different problems
    rc_a2, rec_a2, err, stats = run_ufm(a, shared)
    assert rc_a2 == rc_a and stats is not None and stats["loaded"] > 0 and stats["compiled"] == 0, stats
    assert_same(rec_a, rec_a2, "γ=1 cold vs warm after γ=2")
    _, rec_b_ref, _, _ = run_ufm(b, None)
    assert_same(rec_b_ref, rec_b, "γ=2 after γ=1 in a shared folder vs no store")
    _, rec_c_ref, _, _ = run_ufm(c, None)
    assert_same(rec_c_ref, rec_c, "float32 γ=2 after float64 in a shared folder vs no store")


@pytest.mark.slow
def test_generated_chains_through_one_folder(tmp_path):
    """Generated configurations (seeded) chained through one folder, plus twins that differ in one static each."""
    rng = random.Random(20261128)
    configs = [random_config(rng) for _ in range(5)]
    twins = []
    for args in configs[:2]:
        twin = list(args)
        if "--seed" in twin:
            twin[twin.index("--seed") + 1] = str(int(twin[twin.index("--seed") + 1]) + 1)
        # a free bias (λ_b = 0) where it has a minimiser and the Hessian is float64; else the solve's precision
        free_bias_applies = "--no-bias" not in twin and "mse" not in twin and "--hessian-dtype" not in twin
        if not free_bias_applies and "origin" in twin:
            continue                        # --at origin takes neither --dtype nor a solver
        twins.append(_twin(twin, ["--lam-b", "0"] if free_bias_applies else ["--dtype", "float32"]))
    loaded = check_chain(configs + twins, tmp_path)
    assert loaded > 0


#: pairs that differ in exactly one thing a compiled program depends on and share every function and shape: six of
#: wt2's thirteen, one per kind (a loss parameter, the bias mode, a traced step size, a deep shape's activation, the
#: Hessian dtype), as each costs three processes and the slow tier has to fit CI
_BASE2 = ["-K", "3", "-d", "4", "-n", "5,5,2", "--lam", "1e-2", "--max-steps", "400"]
TWINS = [
    (["solve", *_BASE2, "--loss", "fl", "--gamma", "1", "--no-bounds"], ["--gamma", "2"]),
    (["solve", *_BASE2, "--loss", "mse", "--kappa", "1", "--beta", "1"], ["--kappa", "2"]),
    (["solve", *_BASE2, "--loss", "ce"], ["--lam-b", "0"]),
    (["solve", *_BASE2, "--loss", "ce", "--solver", "gd", "--lr", "0.1", "--no-bounds"], ["--lr", "0.2"]),
    (["solve", *_BASE2, "--loss", "ce", "--depth", "2", "--activation", "linear", "--no-bounds"],
     ["--activation", "relu"]),
    (["landscape", *_BASE2, "--loss", "ls", "--hessian", "lanczos"], ["--hessian-dtype", "float32"]),
]


def _twin(base, change):
    """``base`` with the flags of ``change`` replaced (or appended)."""
    out = list(base)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("base,change", TWINS, ids=[" ".join(c) for _, c in TWINS])
def test_a_twin_that_differs_in_one_static_loads_nothing_of_the_other(base, change, tmp_path):
    """The base, then its twin, in one folder: the twin must equal its own no-store run, bit for bit."""
    twin = _twin(base, change)
    _, rec_a, err, _ = run_ufm(base, tmp_path / "store")
    assert rec_a is not None, err[-2000:]
    rc_b, rec_b, err, _ = run_ufm(twin, tmp_path / "store")
    assert rec_b is not None and "Traceback" not in err, err[-2000:]
    rc_ref, rec_ref, err, _ = run_ufm(twin, None)
    assert rc_b == rc_ref
    assert differences(strip_timing(rec_a), strip_timing(rec_b)), "the twin is not a different problem"
    assert_same(rec_ref, rec_b, f"{' '.join(twin)} after {' '.join(base)} in one folder vs no store")


# ------------------------------------------------------------------------------------------------------------------
# robustness: what a user's disk, permissions and parallel runs can do to the folder (slow: several cold processes)

SMALL = ["solve", "-K", "3", "-d", "4", "-n", "2", "--lam", "1e-2", "--loss", "ls", "--alpha", "0.1"]


def _executables(folder):
    return sorted(glob.glob(os.path.join(str(folder), "executables", "*", "*.exe")))


@pytest.fixture(scope="module")
def warm_store(tmp_path_factory):
    """A folder warmed by SMALL (its lifting bounds load LAPACK-calling executables), and SMALL's no-store record."""
    folder = tmp_path_factory.mktemp("warm") / "store"
    rc, _, err, stats = run_ufm(SMALL, folder)
    assert rc == 0 and stats["stored"] > 0, err[-2000:]
    rc, ref, err, _ = run_ufm(SMALL, None)
    assert rc == 0, err[-2000:]
    return folder, ref


def _copy(warm_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(warm_store[0], dst)
    return dst


def _truncate(path):
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])


def _junk_pickle(path):
    pathlib.Path(path).write_bytes(pickle.dumps((b"junk", None, None, True)))


def _empty(path):
    open(path, "wb").close()


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncate, _junk_pickle, _empty], ids=lambda f: f.__name__)
def test_damaged_files_are_compiled_again(damage, warm_store, tmp_path):
    folder = _copy(warm_store, tmp_path)
    files = _executables(folder)
    for path in files:
        damage(path)
    rc, rec, err, stats = run_ufm(SMALL, folder)
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert stats["loaded"] == 0 and stats["compiled"] == len(files), stats
    assert_same(warm_store[1], rec, f"after {damage.__name__}")


@pytest.mark.slow
def test_foreign_executables_under_a_key_are_rejected(warm_store, tmp_path):
    """Every file holds another key's executable (other arguments): each fails its first run and is compiled."""
    folder = _copy(warm_store, tmp_path)
    files = _executables(folder)
    blobs = [pathlib.Path(f).read_bytes() for f in files]
    for path, blob in zip(files, blobs[1:] + blobs[:1]):
        pathlib.Path(path).write_bytes(blob)
    rc, rec, err, stats = run_ufm(SMALL, folder)
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert stats["rejected"] == len(files), stats
    assert_same(warm_store[1], rec, "after swapping executables")


def _without_dac_override():
    """A prefix that runs a command as root without CAP_DAC_OVERRIDE, so file modes apply; None when unavailable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        return None
    return prefix


@pytest.mark.slow
@pytest.mark.parametrize("where", ["files", "environment folder", "root"])
def test_unreadable_or_unwritable_folders_only_mean_compiling(where, warm_store, tmp_path):
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE (a non-root user is covered by mode bits)")
    folder = _copy(warm_store, tmp_path)
    if where == "files":
        for path in _executables(folder):
            os.chmod(path, 0)
    elif where == "environment folder":
        for path in glob.glob(str(folder / "executables" / "*")):
            os.chmod(path, 0)
    else:
        folder = tmp_path / "readonly"
        folder.mkdir()
        os.chmod(folder, 0o555)
    env = _env(folder)
    p = subprocess.run([*prefix, sys.executable, "-c", _DRIVER, *SMALL, "--json"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=240, check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert_same(warm_store[1], json.loads(p.stdout), f"unreadable {where}")


@pytest.mark.slow
def test_concurrent_processes_on_one_cold_folder(tmp_path):
    """Three processes, two configurations, one empty folder at once; then all three again, warm."""
    other = _twin(SMALL, ["--alpha", "0.2"])
    refs = [run_ufm(args, None)[1] for args in (SMALL, other)]
    folder = tmp_path / "store"
    for _ in range(2):
        procs = [(i, subprocess.Popen([sys.executable, "-c", _DRIVER, *args, "--json"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=_env(folder), cwd=ROOT))
                 for i, args in ((0, SMALL), (0, SMALL), (1, other))]
        for i, p in procs:
            out, err = p.communicate(timeout=400)
            assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
            assert_same(refs[i], json.loads(out), "concurrent run")


@pytest.mark.slow
def test_in_process_enable_then_solve_matches_a_plain_process(tmp_path):
    """``ufm.cache.enable()`` from Python, then ``ufm.solve`` in float64 and float32 and with two γ's, twice (the
    second process loads): both equal a process that never enabled the store."""
    script = ("import json, sys, ufm, ufm.aot, ufm.cache\n"
              "if sys.argv[1] != '-': ufm.cache.enable(sys.argv[1])\n"
              "out = []\n"
              "for loss in ('ce', ufm.FocalLoss(gamma=1.0), ufm.FocalLoss(gamma=2)):\n"
              "    for dtype in ('float64', 'float32'):\n"
              "        s = ufm.solve(K=3, d=4, n=(2, 3, 1), lam=1e-2, loss=loss, dtype=dtype, max_steps=300)\n"
              "        out.append([repr(loss), dtype, s.objective, s.grad_norm, s.steps, s.status.name])\n"
              "print(json.dumps([out, ufm.aot.stats()]))\n")
    env = _env(None)
    env.pop("UFM_NO_CACHE")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, where], capture_output=True, text=True,
                                      env=env, cwd=ROOT, timeout=400, check=True).stdout)
            for where in (str(tmp_path / "store"), str(tmp_path / "store"), "-")]
    assert runs[0][1]["stored"] > 0 and runs[1][1]["loaded"] > 0 and runs[1][1]["compiled"] == 0
    assert runs[0][0] == runs[1][0] == runs[2][0]


# ------------------------------------------------------------------------------------------------------------------
# found by this file (wt2, 2026-11-28) and fixed the same day (ufm/aot.py): each stays as a regression test

MSE = ["solve", "-K", "3", "-d", "4", "-n", "2", "--lam", "1e-2", "--loss", "mse", "--kappa", "2"]


@pytest.mark.slow
def test_a_program_served_by_jax_cache_is_stored_runnable(tmp_path):
    folder = tmp_path / "store"
    rc, ref, err, _ = run_ufm(MSE, folder)
    assert rc == 0, err[-2000:]
    shutil.rmtree(folder / "executables")        # as after any edit of ufm: new store keys, JAX's cache still warm
    run_ufm(MSE, folder)
    rc, rec, err, stats = run_ufm(MSE, folder)
    assert_same(ref, rec, "after a re-store")     # the rejected copies are compiled again: the numbers hold
    assert stats["rejected"] == 0 and stats["compiled"] == 0, stats


def _stored_under_then_loaded(args, folder, first_env, later_env):
    """``args`` run in ``folder`` under ``first_env``, then under ``later_env``: (the later environment's no-store
    record, its record from the folder the first one filled)."""
    run_ufm(args, folder, extra_env=first_env)
    ref = run_ufm(args, None, extra_env=later_env)[1]
    return ref, run_ufm(args, folder, extra_env=later_env)[1]


@pytest.mark.slow
def test_compile_options_are_part_of_the_key(tmp_path):
    args = ["solve", "-K", "3", "-d", "4", "-n", "3,3,2", "--lam", "1e-2", "--loss", "fl", "--gamma", "2",
            "--no-bounds"]
    ref, rec = _stored_under_then_loaded(args, tmp_path / "store", {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}, None)
    assert_same(ref, rec, "a default run after an unoptimised one in the same folder")


@pytest.mark.slow
def test_a_changed_optax_is_a_new_key(tmp_path):
    import optax

    shadow = tmp_path / "shadow"
    # without __pycache__: the installed bytecode may be unchecked-hash .pyc files that would hide the edit
    shutil.copytree(os.path.dirname(optax.__file__), shadow / "optax", ignore=shutil.ignore_patterns("__pycache__"))
    alias = shadow / "optax" / "_src" / "alias.py"
    head, sep, adam = alias.read_text().partition("\ndef adam(")
    assert sep and "b1: jax.typing.ArrayLike = 0.9," in adam
    # adam's default β₁ (FirstOrder('adam') takes optax's defaults): a new optax release in miniature
    alias.write_text(head + sep + adam.replace("b1: jax.typing.ArrayLike = 0.9,", "b1: jax.typing.ArrayLike = 0.5,", 1))
    args = ["solve", "-K", "3", "-d", "4", "-n", "2", "--lam", "1e-2", "--solver", "adam", "--lr", "0.1",
            "--max-steps", "50", "--no-bounds"]
    # the installed optax stores, the changed one loads
    ref, rec = _stored_under_then_loaded(args, tmp_path / "store", None,
                                         {"PYTHONPATH": ROOT + os.pathsep + str(shadow)})
    assert_same(ref, rec, "a changed optax, warm")


@pytest.mark.slow
def test_the_stale_sweep_removes_only_the_stores_folders(tmp_path):
    folder = tmp_path / "jaxcache"
    mine = folder / "executables" / "my_project_binaries"
    mine.mkdir(parents=True)
    (mine / "a.out").write_text("precious")
    old = time.time() - 10 * 24 * 3600
    os.utime(mine, (old, old))
    rc, _, err, _ = run_ufm(["solve", "-K", "2", "-d", "2", "-n", "1", "--no-bounds"], None,
                              extra_env={"UFM_NO_CACHE": "", "JAX_COMPILATION_CACHE_DIR": str(folder)})
    assert rc == 0, err[-2000:]
    assert (mine / "a.out").exists()


@pytest.mark.slow
def test_a_flipped_bit_in_machine_code_is_detected(warm_store, tmp_path):
    folder = _copy(warm_store, tmp_path)
    path = max(_executables(folder), key=os.path.getsize)
    checksum, inner = pickle.loads(pathlib.Path(path).read_bytes())
    payload, in_tree, out_tree, lapack = pickle.loads(inner)
    start = payload.index(b"\x7fELF")              # an object file of the executable; its code follows the header
    data = bytearray(payload)
    data[start + 64 + 40] ^= 0x10
    # the flipped bit under the old checksum: a damaged file, as on a failing disk
    pathlib.Path(path).write_bytes(pickle.dumps((checksum, pickle.dumps((bytes(data), in_tree, out_tree, lapack)))))
    rc, rec, err, stats = run_ufm(SMALL, folder)
    assert rc == 0 and stats is not None and stats["compiled"] >= 1, (rc, stats, err[-1000:])
    assert_same(warm_store[1], rec, "after a flipped bit")
