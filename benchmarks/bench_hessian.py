"""Curvature at the NC minimum: the dense path's cost at the sizes it handles, and the matrix-free smallest
eigenvalue at ≥ 1e6 parameters, side by side with the dense path and the unshifted ``eigsh(which='SA')`` baseline.

    python benchmarks/bench_hessian.py [--big-n 1000] [--skip-dense-max]

The point is the exact global minimiser of docs/theory.md §4 (ufm.theory_point, randomly rotated), so the smallest
eigenvalue of ∇²f is exactly 0 with multiplicity d(d−1)/2 − (d−K+1)(d−K)/2 and the deflated one is positive.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm.critical import analyze_point
from ufm.hessian import MatrixFree, dense_hessian
from ufm.model import flatten
from ufm.symmetry import orbit_tangent


def nc_minimum(prob, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(prob.d, prob.d)))
    return flatten(ufm.theory_point(prob, rotation=Q), xp=np)


def dense_row(K, d, n):
    prob = ufm.Problem.create(K, d, n, lam=5e-3)
    x = jnp.asarray(nc_minimum(prob))
    t = time.perf_counter()
    Hd = np.asarray(dense_hessian(x, prob.reg, prob.shape))
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    theta = np.linalg.eigvalsh(Hd)
    t_eigh = time.perf_counter() - t
    t = time.perf_counter()
    mf = MatrixFree(prob, np.asarray(x))
    top = mf.largest()
    low = mf.smallest(top.value + 1.0)
    t_mf = time.perf_counter() - t
    print(f"{prob.num_params:>9} {K:>4} {d:>4} {n:>5} {t_build:>9.2f} {t_eigh:>8.2f} {theta[0]:>11.2e} "
          f"{t_mf:>11.2f} {low.value:>11.2e} {low.residual:>9.1e} {(t_build + t_eigh) / t_mf:>8.1f}×")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-n", type=int, default=1000, help="samples per class of the big problem (K=10, d=100)")
    ap.add_argument("--skip-dense-max", action="store_true", help="skip the ~8k-parameter dense run")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)

    print("dense path (jax.hessian + numpy eigh) vs matrix-free (shifted ARPACK) at the NC minimum, CE, λ = 5e-3")
    print(f"{'params':>9} {'K':>4} {'d':>4} {'n':>5} {'hessian s':>9} {'eigh s':>8} {'dense λmin':>11} "
          f"{'matfree s':>11} {'mf λmin':>11} {'residual':>9} {'dense/mf':>9}")
    sizes = [(4, 8, 25), (10, 16, 24), (10, 20, 38)]
    for K, d, n in sizes[:-1] if args.skip_dense_max else sizes:
        dense_row(K, d, n)

    K, d, n = 10, 100, args.big_n
    prob = ufm.Problem.create(K, d, n, lam=5e-4)
    x = nc_minimum(prob)
    print(f"\nmatrix-free at {prob.num_params:,} parameters (K={K}, d={d}, n={n}, CE, λ = 5e-4), NC minimum")
    mf = MatrixFree(prob, x)
    mf.H(np.zeros(x.size))                                   # compile the HVP outside the timings
    t = time.perf_counter(); mf.H(np.ones(x.size)); t_hvp = time.perf_counter() - t
    t0 = time.perf_counter()
    top = mf.largest()
    sigma = top.value + max(1.0, 0.01 * abs(top.value))
    low = mf.smallest(sigma)
    t_low = time.perf_counter() - t0
    tangent = orbit_tangent(prob, x)
    t1 = time.perf_counter()
    perp = mf.smallest(sigma, op=mf.H_deflated(tangent, sigma))
    t_perp = time.perf_counter() - t1
    print(f"one HVP {t_hvp * 1e3:.1f} ms")
    print(f"λ_max = {top.value:.6e} (residual {top.residual:.1e}, {top.matvecs} HVPs)")
    print(f"λ_min = {low.value:.3e} (residual {low.residual:.1e}, {low.matvecs} HVPs); with λ_max: {t_low:.1f} s "
          f"[theory: 0 with multiplicity {tangent.dim}]")
    print(f"λ_min on the complement of the {tangent.dim} symmetry modes = {perp.value:.6e} "
          f"(residual {perp.residual:.1e}, {perp.matvecs} deflated HVPs, {t_perp:.1f} s)")
    budget = max(3 * (top.matvecs + low.matvecs), 100)
    t2 = time.perf_counter()
    base = mf.smallest_unshifted(maxiter=budget)
    t_base = time.perf_counter() - t2
    if base is None:
        print(f"baseline eigsh(which='SA') unshifted: no convergence within maxiter={budget} restarts, {t_base:.1f} s")
    else:
        print(f"baseline eigsh(which='SA') unshifted: λ = {base.value:.3e} (residual {base.residual:.1e}, "
              f"{base.matvecs} HVPs, {t_base:.1f} s) — shifted/unshifted time {t_low / t_base:.2f}")
    t3 = time.perf_counter()
    cp = analyze_point(prob, x, hessian="lanczos")
    print(f"full analyze_point (lanczos): {cp.classification}, n_zero {cp.n_zero}/{cp.expected_zero_modes}, "
          f"max residual {cp.eig_residual:.1e}, {time.perf_counter() - t3:.1f} s")


if __name__ == "__main__":
    main()
