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
from scipy.optimize import minimize

import ufm

K, d, n, LAM, GTOL = 10, 64, 100, 5e-4, 1e-9


def numpy_objective_and_grad(x, prob):
    """(7) for CE and its gradient, by hand: with G = (softmax(Z) − Y)/N, ∇W = G Hᵀ + λW, ∇H = WᵀG + λH, ∇b = G1 + λb."""
    Kc, dd, N = prob.K, prob.d, prob.N
    W = x[: Kc * dd].reshape(Kc, dd)
    H = x[Kc * dd: Kc * dd + dd * N].reshape(dd, N)
    b = x[Kc * dd + dd * N:]
    Z = W @ H + b[:, None]
    Zs = Z - Z.max(axis=0)
    lse = np.log(np.exp(Zs).sum(axis=0))
    labels = prob.labels
    loss = np.mean(lse - Zs[labels, np.arange(N)])
    P = np.exp(Zs - lse)
    P[labels, np.arange(N)] -= 1.0
    G = P / N
    f = loss + 0.5 * (prob.lam_W * np.sum(W**2) + prob.lam_H * np.sum(H**2) + prob.lam_b * np.sum(b**2))
    g = np.concatenate([(G @ H.T + prob.lam_W * W).ravel(), (W.T @ G + prob.lam_H * H).ravel(), G.sum(axis=1) + prob.lam_b * b])
    return f, g


def run_scipy(prob, x0):
    state = {"g": np.inf, "steps": 0}

    def fun(x):
        f, g = numpy_objective_and_grad(x, prob)
        state["last"] = (x.copy(), np.linalg.norm(g))
        return f, g

    def callback(intermediate_result):
        state["steps"] += 1
        x_last, g_last = state["last"]          # the accepted point is normally the last one evaluated
        same = np.array_equal(x_last, intermediate_result.x)
        state["g"] = g_last if same else np.linalg.norm(numpy_objective_and_grad(intermediate_result.x, prob)[1])
        if state["g"] <= GTOL:
            raise StopIteration

    t = time.perf_counter()
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                   options=dict(maxiter=20000, maxcor=10, gtol=0.0, ftol=0.0))
    wall = time.perf_counter() - t
    f, g = numpy_objective_and_grad(res.x, prob)
    return dict(steps=state["steps"], wall=wall, grad_norm=float(np.linalg.norm(g)), objective=float(f),
                status=("converged" if np.linalg.norm(g) <= GTOL else f"stopped: {res.message}"))


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
