"""Points per second of a 100-point (K, d, λ) grid of solves: a naive loop that recompiles every point, against
`ufm sweep` with 1 and 2 worker processes, in the same run.

    python benchmarks/bench_sweep.py [--n 10]

Grid: K ∈ {3, 4, 5, 6, 8} × d ∈ {4, 8, 16, 32} × λ ∈ log:1e-3:1e-1:5 (100 points), CE, n per class, seed 0.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

import ufm
from ufm.grid import build_grid, problem_of
from ufm.sweep import run_sweep


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--dask", action="store_true", help="also time --executor dask (a local cluster, 2 workers)")
    args = ap.parse_args()
    grid = build_grid(flag_values=dict(K="3,4,5,6,8", d="4,8,16,32", lam="log:1e-3:1e-1:5", n=args.n))
    points = grid.points()
    print(f"{len(points)} points (K × d × λ), CE, n = {args.n}; this machine: {os.cpu_count()} cores, "
          f"jax {jax.__version__}")

    rows = []
    if not args.skip_naive:
        t = time.perf_counter()
        for p in points:
            jax.clear_caches()                 # the naive loop: every point pays its own compilation
            ufm.solve(problem_of(p), seed=p["seed"])
        rows.append(("naive loop, recompiling per point", time.perf_counter() - t))
    naive = rows[0][1] if rows else float("nan")

    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            s = run_sweep(grid, os.path.join(tmp, "b.db"), workers=workers)
            wall = time.perf_counter() - t
            assert s.computed == len(points)
            rows.append((f"ufm sweep --workers {workers}", wall))

    if args.dask:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            s = run_sweep(grid, os.path.join(tmp, "d.db"), workers=2, executor="dask")
            rows.append(("ufm sweep --executor dask (2 workers)", time.perf_counter() - t))
            assert s.computed == len(points)

    print(f"\n{'run':40}{'wall s':>9}{'points/s':>10}{'vs naive':>10}")
    for name, wall in rows:
        print(f"{name:40}{wall:>9.1f}{len(points) / wall:>10.2f}{naive / wall:>9.2f}×")
    local = {name: wall for name, wall in rows}
    print(f"\nscaling 1 → 2 workers: {local['ufm sweep --workers 1'] / local['ufm sweep --workers 2']:.2f}×")


if __name__ == "__main__":
    main()
