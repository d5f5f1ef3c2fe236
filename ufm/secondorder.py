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

    x = flatten(params, xp=np)
    return explicit_direction_check(
        problem.lam_W, problem.lam_H, ("λ_W", "W"), bool(np.all(np.isfinite(x))),
        lambda: negative_curvature_direction(problem, x), rel_grad_norm,
        no_direction="; run `ufm landscape` for the Hessian",
        reason="explicit direction Δ with a ∈ null(W) ∩ null(Hᵀ) (docs/theory.md §5.3): "
               "curvature 2(√(λ_Wλ_H) − σ_max(∇_Z g))/‖Δ‖²")


def explicit_direction_check(lam_a: float, lam_h: float, names: tuple, finite: bool, direction, rel_grad_norm: float,
                             *, no_direction: str, reason: str) -> dict:
    """The record of an explicit-direction test at a junction (A, H) with penalties λ_A, λ_H (one layer: A = W; deep:
    A = W_1, docs/theory.md §12.5). ``names`` = (λ's name, the factor's name) for the messages, ``direction()`` gives
    (Δ, predicted Δᵀ∇²fΔ, σ_max) or None when A has full column rank."""
    lam_name, factor = names
    out = {"checked": False, "saddle": False, "curvature": None, "sigma_max_grad_Z": None,
           "sqrt_lam_W_lam_H": float(np.sqrt(lam_a) * np.sqrt(lam_h)), "reason": ""}
    if min(lam_a, lam_h) <= 0:
        out["reason"] = f"needs {lam_name} > 0 and λ_H > 0"
        return out
    if not finite:
        out["reason"] = "the point is not finite"
        return out
    nc = direction()
    if nc is None:
        out["reason"] = (f"{factor} has full column rank d: no shared null direction of {factor} and Hᵀ, so no explicit "
                         f"descent direction{no_direction}")
        return out
    return verdict(out, nc, rel_grad_norm, reason)


def verdict(out: dict, nc, rel_grad_norm: float, reason: str) -> dict:
    """Fill ``out`` from an explicit direction ``nc`` = (Δ, predicted Δᵀ∇²fΔ, σ_max): a saddle only when σ_max
    exceeds ``out["sqrt_lam_W_lam_H"]`` by more than the stationarity reached allows (also used at depth,
    deep_landscape.py)."""
    delta, predicted, smax = nc
    margin = max(1e-6, 100.0 * float(rel_grad_norm if np.isfinite(rel_grad_norm) else 1.0))
    out.update(checked=True, curvature=float(predicted / float(delta @ delta)), sigma_max_grad_Z=float(smax),
               saddle=bool(smax > out["sqrt_lam_W_lam_H"] * (1.0 + margin)), reason=reason)
    return out
