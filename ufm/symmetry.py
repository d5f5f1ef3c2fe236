"""The symmetry orbit of (7) and its tangent space (docs/theory.md §5.6).

f(WQ, QᵀH, b) = f(W, H, b) for every Q ∈ O(d), and, for a shift-invariant (softmax) loss with a free bias,
f(W, H, b + s1) = f(W, H, b). At a critical point every orbit tangent direction is a null vector of the Hessian,
so the NC minimisers are never strict minima. This module builds the orthogonal projector onto that tangent space
without forming it: tangent vectors are L(A) = (WA, −AH, 0) for skew A, and the normal equations LᵀL A = Lᵀv read
½(MA + AM) = skew(WᵀδW − δH Hᵀ) with M = WᵀW + HHᵀ, diagonal in M's eigenbasis with entries ½(μ_i + μ_j).
So a projection costs O(Kd² + d²N + d³) and works at any parameter count.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .model import unflatten
from .problem import Problem

#: eigenvalues μ_i of M = WᵀW + HHᵀ below RANK_RTOL·μ_max, or below RANK_ATOL, count as zero (rank of W). μ is a
#: squared singular value: a 1e-5 relative and 1e-10 absolute singular-value cut, far above float64 round-off and
#: far below any genuine direction of a converged point (an LM run that lands on the origin leaves ~1e-15).
RANK_RTOL = 1e-10
RANK_ATOL = 1e-20


def expected_zero_modes(d: int, r: int, free_shift: bool) -> int:
    """dim of the orbit: d(d−1)/2 − (d−r)(d−r−1)/2 rotations (r = rank W), + 1 for b ↦ b + s1 (docs/theory.md §5.6)."""
    return d * (d - 1) // 2 - (d - r) * (d - r - 1) // 2 + int(free_shift)


class OrbitTangent(NamedTuple):
    """What the projector needs: M's eigenbasis U, the pseudo-inverse weights 2/(μ_i + μ_j) (0 on the inactive
    pairs), whether b ↦ b + s1 is a symmetry, and the tangent dimension and rank r of W."""

    U: np.ndarray
    weights: np.ndarray
    free_shift: bool
    dim: int
    rank: int


def has_free_shift(problem: Problem) -> bool:
    return problem.bias_mode == "free" and problem.loss.shift_invariant


def orbit_tangent(problem: Problem, x) -> OrbitTangent:
    """The tangent space of the symmetry orbit through the flat point x."""
    W, H, _ = unflatten(np.asarray(x, dtype=np.float64), problem.shape)
    mu, U = np.linalg.eigh(W.T @ W + H @ H.T)
    active = mu > max(RANK_RTOL * float(mu.max()), RANK_ATOL)
    pair = (active[:, None] | active[None, :]) & ~np.eye(problem.d, dtype=bool)
    weights = np.where(pair, 2.0 / np.where(pair, mu[:, None] + mu[None, :], 1.0), 0.0)
    r = int(active.sum())
    free = has_free_shift(problem)
    return OrbitTangent(U, weights, free, expected_zero_modes(problem.d, r, free), r)


def project(tangent: OrbitTangent, x, v, shape):
    """Orthogonal projection of the flat direction v onto the orbit tangent space at x (jnp; traceable, with
    ``tangent.free_shift`` a Python bool)."""
    W, H, _ = unflatten(x, shape)
    dW, dH, db = unflatten(v, shape)
    X = W.T @ dW - dH @ H.T
    B = 0.5 * (X - X.T)
    U = tangent.U
    A = U @ ((U.T @ B @ U) * tangent.weights) @ U.T
    parts = [(W @ A).reshape(-1), (-(A @ H)).reshape(-1)]
    if db is not None:
        parts.append(jnp.full_like(db, jnp.mean(db)) if tangent.free_shift else jnp.zeros_like(db))
    return jnp.concatenate(parts)
