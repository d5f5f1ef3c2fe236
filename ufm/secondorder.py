"""A cheap second-order test at the end of a solve: is the critical point reached a minimiser?

A descent method that starts on (or stalls at) a saddle reports a tiny gradient there: the origin is a critical
point of (7) for every loss, and a zero initialisation never leaves it. Where W has a null direction shared with Hᵀ
(rank [W; Hᵀ] < d: the origin, and every point with d > rank), docs/theory.md §5.3 gives an explicit direction Δ with
curvature Δᵀ∇²fΔ = 2(√(λ_Wλ_H) − σ_max(∇_Z g)) (per unit of ‖Δ‖² after normalisation): when σ_max exceeds
√(λ_Wλ_H) the point is a strict saddle, proven by that direction. The test costs one gradient of the loss with
respect to the logits and one SVD of a K×N matrix — no Hessian. Where W has full column rank the test does not
apply and says so (``ufm landscape`` measures the Hessian).
"""

from __future__ import annotations

import numpy as np


def second_order_check(problem, params, rel_grad_norm: float) -> dict:
    """``{"checked", "saddle", "curvature", "sigma_max_grad_Z", "sqrt_lam_W_lam_H", "reason"}`` at ``params``.

    ``saddle`` is True only when σ_max(∇_Z g) exceeds √(λ_Wλ_H) by more than the stationarity reached allows
    (relative margin max(1e-6, 100·rel_grad_norm)): at a global NC minimiser the two are equal (the certificate of
    docs/theory.md §5.2), so a looser test would call optima saddles."""
    from .critical import negative_curvature_direction
    from .model import flatten

    lw, lh = problem.lam_W, problem.lam_H
    out = {"checked": False, "saddle": False, "curvature": None, "sigma_max_grad_Z": None,
           "sqrt_lam_W_lam_H": float(np.sqrt(lw) * np.sqrt(lh)), "reason": ""}
    if min(lw, lh) <= 0:
        out["reason"] = "needs λ_W > 0 and λ_H > 0"
        return out
    x = flatten(params, xp=np)
    if not np.all(np.isfinite(x)):
        out["reason"] = "the point is not finite"
        return out
    nc = negative_curvature_direction(problem, x)
    if nc is None:
        out["reason"] = ("W has full column rank d: no shared null direction of W and Hᵀ, so no explicit descent "
                         "direction; run `ufm landscape` for the Hessian")
        return out
    return verdict(out, nc, rel_grad_norm, "explicit direction Δ with a ∈ null(W) ∩ null(Hᵀ) (docs/theory.md §5.3): "
                   "curvature 2(√(λ_Wλ_H) − σ_max(∇_Z g))/‖Δ‖²")


def verdict(out: dict, nc, rel_grad_norm: float, reason: str) -> dict:
    """Fill ``out`` from an explicit direction ``nc`` = (Δ, predicted Δᵀ∇²fΔ, σ_max): a saddle only when σ_max
    exceeds ``out["sqrt_lam_W_lam_H"]`` by more than the stationarity reached allows (also used at depth,
    deep_landscape.py)."""
    delta, predicted, smax = nc
    margin = max(1e-6, 100.0 * float(rel_grad_norm if np.isfinite(rel_grad_norm) else 1.0))
    out.update(checked=True, curvature=float(predicted / float(delta @ delta)), sigma_max_grad_Z=float(smax),
               saddle=bool(smax > out["sqrt_lam_W_lam_H"] * (1.0 + margin)), reason=reason)
    return out
