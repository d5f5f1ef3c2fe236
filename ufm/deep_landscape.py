"""Curvature of the deep UFM (docs/theory.md §12.5): an explicit descent direction at the input junction, the
symmetry orbit of a deep point and its zero-mode count.

At the input junction (H, W_1) the deep objective is f = g(W_1 H) + λ_1/2‖W_1‖² + λ_H/2‖H‖² + (the rest), g the
data term as a function of the first pre-activation M = W_1 H: the rest of the network, ReLU included, acts after
the product. So docs/theory.md §5.3's direction carries over with W → W_1, Z → M, for either activation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .deep import DeepParams, DeepProblem, flatten, labels_of
from .secondorder import verdict
from .symmetry import RANK_ATOL, RANK_RTOL


def _data_grad_M(problem: DeepProblem, params: DeepParams):
    """∇_M g at M = W_1 H, g(M) = (1/N) Σ L(W_L σ(⋯σ(M)) + b, y)."""
    shape = problem.shape
    sigma = (lambda a: a) if problem.activation == "linear" else (lambda a: jnp.maximum(a, 0.0))

    def g(M):
        h = sigma(M)
        for W in params.Ws[1:-1]:
            h = sigma(W @ h)
        Z = (params.Ws[-1] @ h).T if problem.depth > 1 else M.T
        if params.b is not None:
            Z = Z + params.b[None, :]
        return jnp.mean(shape.loss(Z, labels_of(shape)))

    with jax.enable_x64(True):
        params = DeepParams(tuple(jnp.asarray(W) for W in params.Ws), jnp.asarray(params.H),
                            None if params.b is None else jnp.asarray(params.b))
        return np.asarray(jax.grad(g)(params.Ws[0] @ params.H))


def input_junction_direction(problem: DeepProblem, params: DeepParams):
    """(flat Δ, predicted Δᵀ∇²fΔ, σ_max(∇_M g)) with a ∈ null(W_1) ∩ null(Hᵀ), (u, v) the top singular pair of
    ∇_M g, Δ_{W_1} = (λ_H/λ_1)^{1/4} u aᵀ, Δ_H = −(λ_1/λ_H)^{1/4} a vᵀ, every other block 0; None when W_1 has full
    column rank d (no such a) or a λ is zero. Since W_1Δ_H = 0 and Δ_{W_1}H = 0, f(x + tΔ) = f(x) +
    t²(√(λ_1λ_H) − σ_max) + o(t²) whenever g is differentiable at M (for ReLU: no pre-activation exactly 0)."""
    l1, lh = problem.lams[0], problem.lam_H
    if min(l1, lh) <= 0:
        return None
    W1, H = np.asarray(params.Ws[0]), np.asarray(params.H)
    mu, V = np.linalg.eigh(W1.T @ W1 + H @ H.T)
    if mu[0] > max(RANK_RTOL * mu[-1], RANK_ATOL):
        return None
    a = V[:, 0]
    G = _data_grad_M(problem, params)
    if not np.all(np.isfinite(G)):
        return None
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    dWs = [(lh / l1) ** 0.25 * np.outer(U[:, 0], a)] + [np.zeros_like(np.asarray(W)) for W in params.Ws[1:]]
    dH = -((l1 / lh) ** 0.25) * np.outer(a, Vt[0])
    db = None if params.b is None else np.zeros_like(np.asarray(params.b))
    return flatten(DeepParams(tuple(dWs), dH, db), xp=np), 2.0 * (np.sqrt(l1 * lh) - s[0]), float(s[0])


def deep_second_order_check(problem: DeepProblem, params: DeepParams, rel_grad_norm: float) -> dict:
    """secondorder.second_order_check's record for a deep point, with the input-junction direction above (the
    margin rule is the same: σ_max must exceed √(λ_1λ_H) by more than the stationarity reached allows)."""
    l1, lh = problem.lams[0], problem.lam_H
    out = {"checked": False, "saddle": False, "curvature": None, "sigma_max_grad_Z": None,
           "sqrt_lam_W_lam_H": float(np.sqrt(l1) * np.sqrt(lh)), "reason": ""}
    if min(l1, lh) <= 0:
        out["reason"] = "needs λ_1 > 0 and λ_H > 0"
        return out
    if not all(np.all(np.isfinite(a)) for a in (*params.Ws, params.H)):
        out["reason"] = "the point is not finite"
        return out
    nc = input_junction_direction(problem, params)
    if nc is None:
        out["reason"] = ("W_1 has full column rank d: no shared null direction of W_1 and Hᵀ, so no explicit descent "
                         "direction at the input junction")
        return out
    return verdict(out, nc, rel_grad_norm, "explicit direction at the input junction, a ∈ null(W_1) ∩ null(Hᵀ) "
                   "(docs/theory.md §12.5): curvature 2(√(λ_1λ_H) − σ_max(∇_M g))/‖Δ‖², M = W_1H")
