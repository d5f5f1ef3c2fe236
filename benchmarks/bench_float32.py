"""The float32 stationarity floor: how far ‖∇f‖ and the scale-free ratio fall in float32 before a solve stalls, on
problems of several sizes, losses and λ's. The float32 default tolerances (ufm.solvers.DEFAULT_TOLERANCES) are set
about 10× above the worst floor this prints.

    python benchmarks/bench_float32.py
"""

from __future__ import annotations

import ufm
from ufm.solvers import DEFAULT_TOLERANCES

CASES = [(10, 64, 100, 5e-4, "ce"), (4, 6, 5, 5e-3, "ls"), (10, 64, 100, 5e-4, "fl"), (10, 64, 100, 5e-4, "mse"),
         (20, 32, 50, 1e-3, "ce"), (100, 100, 10, 1e-4, "ce"), (4, 6, 20, 1e-2, "ce"), (10, 20, 10, 1e-5, "ce")]


def main():
    print(f"{'K':>4}{'d':>5}{'n':>5}{'λ':>8}{'loss':>6}  {'status':10}{'steps':>6}{'‖∇f‖':>10}{'scale-free':>12}")
    worst_g = worst_r = 0.0
    for K, d, n, lam, loss in CASES:
        p = ufm.Problem.create(K=K, d=d, n=n, lam=lam, loss=loss)
        # unreachable tolerances: the run stops where float32 stops making progress (stalled), i.e. at its floor
        s = ufm.solve(p, dtype="float32", gtol=1e-12, rtol=1e-12, max_steps=3000)
        worst_g, worst_r = max(worst_g, s.grad_norm), max(worst_r, s.rel_grad_norm)
        print(f"{K:4d}{d:5d}{n:5d}{lam:8.0e}{loss:>6}  {s.status.name.lower():10}{s.steps:6d}{s.grad_norm:10.2e}"
              f"{s.rel_grad_norm:12.2e}")
    g, r = DEFAULT_TOLERANCES["float32"]
    print(f"\nworst floor: ‖∇f‖ {worst_g:.2e}, scale-free {worst_r:.2e}; float32 defaults gtol {g:g} "
          f"({g / worst_g:.0f}× the worst), rtol {r:g} ({r / worst_r:.0f}×)")


if __name__ == "__main__":
    main()
