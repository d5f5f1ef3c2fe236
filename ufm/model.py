"""Objective (7) on parameters (W, H, b), and on one flat vector for the solvers.

    f(W, H, b) = (1/N) Σ_{k,i} L(W h_{k,i} + b, y_k) + λ_W/2 ‖W‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²      (7)

The solvers work on one flat vector x = [vec W, vec H, b] cut by static slices: docs/theory.md §9 measured
``ravel_pytree``'s unravel in the hot loop at 4–15× slower gradients.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .problem import Reg, Shape


class Params(NamedTuple):
    """A point of (7): W (K×d), H (d×N, class-major columns), b (K,) or None without a bias."""

    W: jax.Array
    H: jax.Array
    b: Optional[jax.Array]


def labels_of(shape: Shape):
    # a NumPy constant (static class sizes): jnp.repeat with per-class counts would need total_repeat_length
    return jnp.asarray(np.repeat(np.arange(shape.K), shape.counts))


def logits(params: Params):
    """Z = W H + b 1ᵀ, returned as (N, K) rows z_{k,i} = W h_{k,i} + b."""
    Z = (params.W @ params.H).T
    return Z if params.b is None else Z + params.b[None, :]


def data_term(params: Params, shape: Shape):
    """g = (1/N) Σ_{k,i} L(z_{k,i}, y_k): the loss part of (7)."""
    return jnp.mean(shape.loss(logits(params), labels_of(shape)))


def objective(params: Params, reg: Reg, shape: Shape):
    """f of eq. (7)."""
    f = data_term(params, shape) + 0.5 * reg.lam_W * jnp.sum(params.W**2) + 0.5 * reg.lam_H * jnp.sum(params.H**2)
    if params.b is not None:
        f = f + 0.5 * reg.lam_b * jnp.sum(params.b**2)
    return f


def unflatten(x, shape: Shape) -> Params:
    """Static slices of the flat vector back to (W, H, b)."""
    nW, nH, nb = shape.sizes
    W = x[:nW].reshape(shape.K, shape.d)
    H = x[nW:nW + nH].reshape(shape.d, shape.N)
    b = x[nW + nH:] if nb else None
    return Params(W, H, b)


def flatten(params: Params, xp=jnp):
    parts = [params.W.reshape(-1), params.H.reshape(-1)]
    if params.b is not None:
        parts.append(params.b.reshape(-1))
    return xp.concatenate(parts)


def flat_objective(x, reg: Reg, shape: Shape):
    """f of eq. (7) on the flat vector x = [vec W, vec H, b]."""
    return objective(unflatten(x, shape), reg, shape)
