"""The baseline ufm is measured against: scipy's L-BFGS-B on objective (7) for cross-entropy, with f and ∇f written by
hand in numpy. This module imports numpy and scipy only (no JAX, no ufm), so that a fresh process running it
(benchmarks/bench_startup.py) pays what a scipy user pays and nothing more.

    python benchmarks/scipy_baseline.py DATA.npz     # prints the solve's wall time, after checking ‖∇f‖ ≤ GTOL

DATA.npz holds K, d, N, labels, lam_W, lam_H, lam_b and the start x0 (written by bench_startup.py from ufm's own
start, so that both solve the same problem from the same point).
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import numpy as np
from scipy.optimize import minimize

GTOL = 1e-9


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


def main(path: str) -> None:
    data = np.load(path)
    prob = SimpleNamespace(K=int(data["K"]), d=int(data["d"]), N=int(data["N"]), labels=data["labels"],
                           lam_W=float(data["lam_W"]), lam_H=float(data["lam_H"]), lam_b=float(data["lam_b"]))
    r = run_scipy(prob, data["x0"])
    if r["status"] != "converged":
        raise SystemExit(f"scipy did not converge: {r}")
    print(r["wall"])


if __name__ == "__main__":
    main(sys.argv[1])
