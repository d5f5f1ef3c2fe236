"""Time to ‖∇f‖ ≤ 1e-9 for each ufm solver at (K, d, n) = (10, 64, 100), CE, λ = 5e-4, side by side with scipy's
L-BFGS-B on a hand-written numpy objective and gradient, in the same run (this machine is shared: read the ratios).

    python benchmarks/bench_solvers.py [--repeats 3] [--first-order-steps 20000]

Each ufm solver runs once to compile, then ``--repeats`` times; the median wall time is reported (compile excluded,
shown separately). scipy stops through its callback as soon as the same 2-norm test ‖∇f‖ ≤ 1e-9 holds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

import ufm
from scipy_baseline import GTOL, run_scipy

K, d, n, LAM = 10, 64, 100, 5e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--first-order-steps", type=int, default=20000)
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)

    prob = ufm.Problem.create(K, d, n, lam=LAM)
    theory = ufm.theory_optimum(prob).objective
    x0 = np.concatenate([a.ravel() for a in ufm.init_params(prob, seed=0, scale=0.1)])
    print(f"UFM (K, d, n) = ({K}, {d}, {n}), CE, λ = {LAM}, {prob.num_params} parameters, target ‖∇f‖ ≤ {GTOL:g}, "
          f"float64, jax {jax.__version__} on {jax.devices()[0].platform}")

    sp = [run_scipy(prob, x0) for _ in range(args.repeats)]
    sp_wall = statistics.median(r["wall"] for r in sp)
    rows = [("scipy L-BFGS-B (numpy f, ∇f)", sp[0]["status"], sp[0]["steps"], sp[0]["grad_norm"],
             sp[0]["objective"] - theory, float("nan"), sp_wall)]

    for solver, lr in [("auto", None), ("lbfgs", None), ("newton", None), ("gd", None), ("momentum", None), ("adam", 1e-3)]:
        max_steps = args.first_order_steps if solver in ("gd", "momentum", "adam") else 10000
        t = time.perf_counter()
        ufm.solve(prob, solver=solver, lr=lr, gtol=GTOL, max_steps=max_steps)
        first = time.perf_counter() - t
        walls, sol = [], None
        for _ in range(args.repeats):
            sol = ufm.solve(prob, solver=solver, lr=lr, gtol=GTOL, max_steps=max_steps)
            walls.append(sol.wall_time)
        wall = statistics.median(walls)
        rows.append((f"ufm {solver}", sol.status.name.lower(), sol.steps, sol.grad_norm, sol.objective - theory,
                     first - wall, wall))

    print(f"\n{'solver':32}{'status':>12}{'steps':>8}{'‖∇f‖':>11}{'f − f*':>11}{'compile s':>11}{'solve s':>10}"
          f"{'scipy/this':>12}")
    for name, status, steps, g, gap, comp, wall in rows:
        ratio = sp_wall / wall
        print(f"{name:32}{status[:12]:>12}{steps:>8}{g:>11.2e}{gap:>11.1e}{comp:>11.2f}{wall:>10.3f}{ratio:>11.2f}×")


if __name__ == "__main__":
    main()
