"""End-to-end wall time of `ufm` commands: cold (empty caches), warm (the compiled programs and executables the cold
run stored, ufm/cache.py and ufm/aot.py), warm with JAX's compilation cache alone (UFM_NO_EXECUTABLES=1), with the
caches off (UFM_NO_CACHE=1), and through a running `ufm serve` (ufm/server.py: the same command again, and with a new λ
each time so that nothing of the previous command's result is reused), side by side in one run, plus `ufm --help`
(which must not import JAX) and the floor of any JAX process (interpreter, `import jax`, one operation), against the
baseline of scipy's L-BFGS-B on a hand-written numpy objective (scipy_baseline.py, which imports numpy and scipy only)
at (K, d, n) = (10, 64, 100), from the same start.

    python benchmarks/bench_startup.py [--repeats 3]

Each number is the median over repeats of a fresh process (`python -m ufm ...`, or `python scipy_baseline.py`), so it
includes interpreter start, imports, compilation (or loading it from the cache) and the work itself. The in-process
rows time the solve alone, as a library user inside one session sees it: ``ufm.solve`` once compiled (warm) against
``scipy.optimize.minimize``, both to ‖∇f‖ ≤ 1e-9 from the same start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "ufm solve (defaults: K=10 d=64 n=100)": ["solve"],
    "ufm solve --no-bounds": ["solve", "--no-bounds"],
    "ufm solve -K 4 -d 6 -n 20,20,2,2": ["solve", "-K", "4", "-d", "6", "-n", "20,20,2,2"],
    "ufm landscape -K 4 -d 6 -n 5 --lam 5e-3": ["landscape", "-K", "4", "-d", "6", "-n", "5", "--lam", "5e-3"],
}
DEFAULT_SOLVE = "ufm solve (defaults: K=10 d=64 n=100)"
HERE = os.path.dirname(os.path.abspath(__file__))


def _time(argv, env) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ufm", *argv], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-500:]}")
    return elapsed


def _new_lam(argv, i: int) -> list:
    """``argv`` with a λ not used before in this run (the server then solves and bounds a new problem)."""
    lam = f"{5e-4 * (1 + 0.01 * (i + 1)):.6g}" if "--lam" not in argv else f"{5e-3 * (1 + 0.01 * (i + 1)):.6g}"
    out = list(argv)
    if "--lam" in out:
        out[out.index("--lam") + 1] = lam
    else:
        out += ["--lam", lam]
    return out


def _serve(action: str, env) -> None:
    subprocess.run([sys.executable, "-m", "ufm", "serve", action, "--idle-minutes", "10"], check=True,
                   capture_output=True, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "UFM_SERVER"))}
    print(f"end-to-end seconds, median of {args.repeats} fresh processes; {os.cpu_count()} cores\n")
    print(f"{'command':44}{'cold':>7}{'warm':>7}{'JAX cache only':>15}{'no cache':>9}{'server':>8}"
          f"{'server, new λ':>14}")
    warm_of, served_of, fresh_of = {}, {}, {}
    for name, argv in COMMANDS.items():
        cold, warm, programs, off, served, fresh = [], [], [], [], [], []
        for r in range(args.repeats):
            folder = tempfile.mkdtemp(prefix="ufm-bench-cache-")
            env = dict(base, UFM_CACHE_DIR=folder)
            local = dict(env, UFM_SERVER="0")
            cold.append(_time(argv, local))
            warm.append(_time(argv, local))
            # JAX's compilation cache without the executable store (ufm/aot.py): what tracing and lowering cost. The
            # store compiles past JAX's cache, so the first such run fills it and the second is the warm one
            _time(argv, dict(local, UFM_NO_EXECUTABLES="1"))
            programs.append(_time(argv, dict(local, UFM_NO_EXECUTABLES="1")))
            off.append(_time(argv, dict(local, UFM_NO_CACHE="1")))
            # a server on the warm cache; its first command loads the programs, as a warm process would
            _serve("--background", env)
            try:
                _time(argv, env)
                served.append(_time(argv, env))
                fresh.append(_time(_new_lam(argv, r), env))
            finally:
                _serve("--stop", env)
            shutil.rmtree(folder, ignore_errors=True)
        c, w, p, o, s, f = (statistics.median(v) for v in (cold, warm, programs, off, served, fresh))
        warm_of[name], served_of[name], fresh_of[name] = w, s, f
        print(f"{name:44}{c:7.2f}{w:7.2f}{p:15.2f}{o:9.2f}{s:8.2f}{f:14.2f}")
    helps = [_time(["--help"], base) for _ in range(args.repeats)]
    print(f"\nufm --help: {statistics.median(helps):.2f} s")
    data = os.path.join(tempfile.mkdtemp(prefix="ufm-bench-scipy-"), "problem.npz")
    _write_problem(data)
    sp_proc, sp_solve = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, os.path.join(HERE, "scipy_baseline.py"), data], capture_output=True,
                           text=True, env=base)
        sp_proc.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"scipy baseline failed: {r.stderr[-500:]}")
        sp_solve.append(float(r.stdout.split()[-1]))
    proc = statistics.median(sp_proc)
    print(f"scipy L-BFGS-B, numpy f and ∇f, fresh process (numpy and scipy only): {proc:.2f} s (its solve alone "
          f"{statistics.median(sp_solve):.2f} s)")
    # the floor of any fresh process that uses JAX: the interpreter, `import jax` and one executed operation
    floor = statistics.median(_time_python("import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()", base)
                              for _ in range(args.repeats))
    print(f"python + import jax + one operation: {floor:.2f} s = {floor / proc:.2f}× scipy's process")
    for name in (DEFAULT_SOLVE, "ufm solve --no-bounds"):
        print(f"{name}: warm fresh process {warm_of[name] / proc:.2f}×, through `ufm serve` "
              f"{served_of[name] / proc:.2f}× (new λ: {fresh_of[name] / proc:.2f}×) scipy's process")
    _in_process(args.repeats, statistics.median(sp_solve), proc)


def _write_problem(path: str) -> None:
    """The default `ufm solve` problem and start, for the scipy baseline's process."""
    import numpy as np

    import ufm

    p = ufm.Problem.create(10, 64, 100, lam=5e-4)
    x0 = np.concatenate([np.asarray(a).ravel() for a in ufm.init_params(p, seed=0, scale=0.1)])
    np.savez(path, K=p.K, d=p.d, N=p.N, labels=np.asarray(p.labels), lam_W=p.lam_W, lam_H=p.lam_H, lam_b=p.lam_b,
             x0=x0)


def _time_python(code, env) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def _in_process(repeats, scipy_solve, scipy_process):
    """ufm.solve in this process, warm (compiled once before timing), against scipy's solve alone."""
    import ufm

    p = ufm.Problem.create(10, 64, 100, lam=5e-4)
    ufm.solve(p)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sol = ufm.solve(p)
        ts.append(time.perf_counter() - t0)
    assert sol.converged and sol.grad_norm <= 1e-9
    warm = statistics.median(ts)
    print(f"\nin-process, warm ufm.solve (10, 64, 100): {warm:.3f} s = {warm / scipy_solve:.3f}× scipy's solve "
          f"({scipy_solve:.2f} s) and {warm / scipy_process:.3f}× scipy's whole process")


if __name__ == "__main__":
    main()
