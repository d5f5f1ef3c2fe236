"""End-to-end wall time of `ufm` commands: cold (empty compilation cache), warm (the cache the cold run filled) and
with the cache off (UFM_NO_CACHE=1), side by side in one run, plus `ufm --help` (which must not import JAX).

    python benchmarks/bench_startup.py [--repeats 3]

Each number is the median over repeats of a fresh process (`python -m ufm ...`), so it includes interpreter start,
imports, compilation (or loading it from the cache) and the work itself.
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
    "ufm solve -K 4 -d 6 -n 20,20,2,2": ["solve", "-K", "4", "-d", "6", "-n", "20,20,2,2"],
    "ufm landscape -K 4 -d 6 -n 5 --lam 5e-3": ["landscape", "-K", "4", "-d", "6", "-n", "5", "--lam", "5e-3"],
}


def _time(argv, env) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ufm", *argv], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-500:]}")
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    print(f"end-to-end seconds, median of {args.repeats} fresh processes; {os.cpu_count()} cores\n")
    print(f"{'command':44}{'cold':>8}{'warm':>8}{'no cache':>10}{'cold/warm':>11}")
    for name, argv in COMMANDS.items():
        cold, warm, off = [], [], []
        for _ in range(args.repeats):
            folder = tempfile.mkdtemp(prefix="ufm-bench-cache-")
            env = dict(base, UFM_CACHE_DIR=folder)
            cold.append(_time(argv, env))
            warm.append(_time(argv, env))
            off.append(_time(argv, dict(env, UFM_NO_CACHE="1")))
            shutil.rmtree(folder, ignore_errors=True)
        c, w, o = (statistics.median(v) for v in (cold, warm, off))
        print(f"{name:44}{c:8.2f}{w:8.2f}{o:10.2f}{c / w:10.1f}×")
    helps = [_time(["--help"], base) for _ in range(args.repeats)]
    print(f"\nufm --help: {statistics.median(helps):.2f} s")


if __name__ == "__main__":
    main()
