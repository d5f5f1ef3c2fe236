"""Loop against vmapped batch (ufm.batch.solve_batch) for the solves of one shape, warm, on this backend: the
measurement behind ``sweep.BATCH_AUTO``.

    python benchmarks/bench_batch.py [--points 100] [-K 10 -d 64 -n 100]

Both paths are compiled first (a 2-point run each), then timed over the same λ's and seeds; the results are checked
to agree (same status, f to 1e-12 relative; the step counts are reported: round-off can change a path).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ufm
from ufm.batch import solve_batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("-K", type=int, default=10)
    ap.add_argument("-d", type=int, default=64)
    ap.add_argument("-n", type=int, default=100)
    args = ap.parse_args()
    import jax

    lams = np.geomspace(1e-4, 1e-2, 10)
    pts = [(float(lams[i % 10]), i // 10) for i in range(args.points)]
    probs = [ufm.Problem.create(K=args.K, d=args.d, n=args.n, lam=lam) for lam, _ in pts]
    seeds = [s for _, s in pts]
    ufm.solve(probs[0], seed=0), solve_batch(probs[:2], seeds[:2])          # compile both
    t0 = time.perf_counter()
    loop = [ufm.solve(p, seed=s) for p, s in zip(probs, seeds)]
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = solve_batch(probs, seeds)
    t_batch = time.perf_counter() - t0
    agree = all(a.status == b.status and abs(a.objective - b.objective) <= 1e-12 * abs(b.objective)
                for a, b in zip(batch, loop))
    same_steps = sum(a.steps == b.steps for a, b in zip(batch, loop))
    print(f"backend {jax.default_backend()}, {args.points} solves at K={args.K} d={args.d} n={args.n} "
          f"(P = {probs[0].num_params:,}), λ in [1e-4, 1e-2]")
    print(f"loop {t_loop:.2f} s, batch {t_batch:.2f} s: batch/loop = {t_batch / t_loop:.2f}; same status and f to 1e-12: "
          f"{agree}; same step count: {same_steps} of {len(loop)}")


if __name__ == "__main__":
    main()
