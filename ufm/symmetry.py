"""The symmetry orbit of (7) and its tangent space (docs/theory.md §5.6).

f(WQ, QᵀH, b) = f(W, H, b) for every Q ∈ O(d), and, for a shift-invariant (softmax) loss with a free bias,
f(W, H, b + s1) = f(W, H, b). At a critical point every orbit tangent direction is a null vector of the Hessian,
so the NC minimisers are never strict minima. This module builds the orthogonal projector onto that tangent space
without forming it: tangent vectors are L(A) = (WA, −AH, 0) for skew A, and the normal equations LᵀL A = Lᵀv read
½(MA + AM) = skew(WᵀδW − δH Hᵀ) with M = WᵀW + HHᵀ, diagonal in M's eigenbasis with entries ½(μ_i + μ_j).
So a projection costs O(Kd² + d²N + d³) and works at any parameter count.

The deep UFM (docs/theory.md §12.7) has one such O(m) per symmetric junction; its tangent is kept as an explicit
orthonormal basis (:func:`deep_orbit_tangent`), and :func:`project` uses it whenever the shape is deep.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import aot
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


def _active(mu):
    """Which eigenvalues of a junction's M count as nonzero (RANK_RTOL, RANK_ATOL above)."""
    return mu > max(RANK_RTOL * float(mu.max()), RANK_ATOL)


def orbit_tangent(problem: Problem, x) -> OrbitTangent:
    """The tangent space of the symmetry orbit through the flat point x."""
    if hasattr(problem, "widths"):
        return deep_orbit_tangent(problem, x)
    W, H, _ = unflatten(np.asarray(x, dtype=np.float64), problem.shape)
    mu, U = np.linalg.eigh(W.T @ W + H @ H.T)
    active = _active(mu)
    pair = (active[:, None] | active[None, :]) & ~np.eye(problem.d, dtype=bool)
    weights = np.where(pair, 2.0 / np.where(pair, mu[:, None] + mu[None, :], 1.0), 0.0)
    r = int(active.sum())
    free = has_free_shift(problem)
    return OrbitTangent(U, weights, free, expected_zero_modes(problem.d, r, free), r)


def project(tangent: OrbitTangent, x, v, shape):
    """Orthogonal projection of the flat direction v onto the orbit tangent space at x (jnp; traceable, with
    ``tangent.free_shift`` a Python bool)."""
    if hasattr(shape, "widths"):
        return tangent.U @ (tangent.U.T @ v)        # deep: U is an orthonormal basis of the tangent (P × dim)
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


@aot.jit(static_argnames=("free_shift", "shape"))
def projector_matrix(x, U, weights, free_shift: bool, shape):
    """The P×P matrix of :func:`project` at x, column j the projection of the j-th unit vector: one compiled program
    (a dense analysis forms it; op by op, each primitive would compile in every fresh process)."""
    tangent = OrbitTangent(U, weights, free_shift, 0, 0)
    return jax.vmap(lambda e: project(tangent, x, e, shape))(jnp.eye(x.size, dtype=x.dtype)).T


def no_tangent(shape, P: int):
    """Placeholder (U, weights) of the undeflated operator, shaped as :func:`project` expects for ``shape``."""
    if hasattr(shape, "widths"):
        return np.zeros((P, 0)), np.zeros((0, 0))
    return np.zeros((shape.d, shape.d)), np.zeros((shape.d, shape.d))


# --- the deep UFM (docs/theory.md §12.7) ------------------------------------------------------------------------
#: entries of the explicit deep tangent basis (P × dim, float64) above which a deep analysis is refused: 5·10⁷
#: entries are 400 MB, and the basis is formed and orthonormalised by an SVD on the host
DEEP_BASIS_MAX_ENTRIES = 50_000_000


def deep_junctions(problem) -> list:
    """The continuous symmetries of the deep UFM, one O(m) per junction, as (name, m, left, right): with Q ∈ O(m),
    ``left`` ↦ ``left``·Qᵀ and ``right`` ↦ Q·``right``, where ``left``/``right`` index the factor list
    (W_1, …, W_L, H) (H is index L). The input junction (W_1, H) is a symmetry for either activation, since σ acts
    after W_1H; a hidden junction (W_{l+1}, W_l) only for the deep linear model."""
    L = problem.depth
    out = [("input (W_1, H)", problem.d, 0, L)]
    if problem.activation == "linear":
        out += [(f"hidden {l} (W_{l + 1}, W_{l})", problem.widths[l - 1], l, l - 1) for l in range(1, L)]
    return out


def check_deep_basis(problem) -> None:
    """Refuse, before any work, a deep problem whose orbit basis could exceed DEEP_BASIS_MAX_ENTRIES: P × (Σ over
    the junctions of m(m−1)/2, + 1), the count at full rank."""
    dim = sum(m * (m - 1) // 2 for _, m, _, _ in deep_junctions(problem)) + int(has_free_shift(problem))
    if dim * problem.num_params > DEEP_BASIS_MAX_ENTRIES:
        from .errors import UFMInputError
        raise UFMInputError("-K/-d/-n/--widths", f"{problem.num_params:,} parameters", f"the deep orbit tangent basis could "
                            f"hold {dim:,} × {problem.num_params:,} entries (> {DEEP_BASIS_MAX_ENTRIES:,}, "
                            "docs/theory.md §12.7); use smaller sizes or widths")


def deep_expected_zero_modes(widths_ranks, free_shift: bool) -> int:
    """Σ over the junctions of m(m−1)/2 − (m−r)(m−r−1)/2 (m the width, r the rank of M at that junction), + 1 for
    b ↦ b + s1: :func:`expected_zero_modes` per junction."""
    return sum(expected_zero_modes(m, r, False) for m, r in widths_ranks) + int(free_shift)


def deep_orbit_tangent(problem, x) -> OrbitTangent:
    """The deep orbit's tangent at x as an explicit orthonormal basis U (P × dim): per junction, M = leftᵀleft +
    right·rightᵀ = VμVᵀ and the skew generators A = v_iv_jᵀ − v_jv_iᵀ over the pairs with μ_i or μ_j nonzero (the
    others move nothing) give the directions (δleft, δright) = (left·A, −A·right); the free shift adds (0, …, 0, 1).
    The columns are orthonormalised together (an SVD, cut at 1e-8 of the largest singular value of the normalised
    columns): at a critical point the junctions' directions are independent (balance makes range(leftᵀ) = range(right)
    at each junction), and ``dim`` is the SVD's rank, ``rank`` the tuple of junction ranks r. ``weights`` is unused."""
    from .deep import DeepParams, flatten, unflatten

    x = np.asarray(x, dtype=np.float64)
    p = unflatten(x, problem.shape)
    factors = [np.asarray(W) for W in p.Ws] + [np.asarray(p.H)]
    zero = [np.zeros_like(F) for F in factors]
    b0 = None if p.b is None else np.zeros_like(np.asarray(p.b))
    cols, ranks = [], []
    for _, m, left, right in deep_junctions(problem):
        A_, B_ = factors[left], factors[right]
        mu, V = np.linalg.eigh(A_.T @ A_ + B_ @ B_.T)
        active = _active(mu)
        ranks.append((m, int(active.sum())))
        for i in range(m):
            for j in range(i + 1, m):
                if not (active[i] or active[j]):
                    continue
                A = np.outer(V[:, i], V[:, j]) - np.outer(V[:, j], V[:, i])
                parts = list(zero)
                parts[left], parts[right] = A_ @ A, -(A @ B_)
                cols.append(flatten(DeepParams(tuple(parts[:-1]), parts[-1], b0), xp=np))
    free = has_free_shift(problem)
    if free:
        parts = list(zero)
        cols.append(flatten(DeepParams(tuple(parts[:-1]), parts[-1], np.ones_like(b0)), xp=np))
    check_deep_basis(problem)
    if not cols:
        return OrbitTangent(np.zeros((x.size, 0)), np.zeros((0, 0)), free, 0, tuple(r for _, r in ranks))
    G = np.stack(cols, axis=1)
    G = G / np.linalg.norm(G, axis=0)[None, :]
    Uq, sv, _ = np.linalg.svd(G, full_matrices=False)
    keep = sv > 1e-8 * sv[0]
    return OrbitTangent(Uq[:, keep], np.zeros((0, 0)), free, int(keep.sum()), tuple(r for _, r in ranks))
