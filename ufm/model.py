"""Objective (7) on parameters (W, H, b), and on one flat vector for the solvers.

    f(W, H, b) = (1/N) Σ_{k,i} L(W h_{k,i} + b, y_k) + λ_W/2 ‖W‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²      (7)

The solvers work on one flat vector x = [vec W, vec H, b] cut by static slices: docs/theory.md §9 measured
``ravel_pytree``'s unravel in the hot loop at 4–15× slower gradients. The data term is evaluated on Z = W H + b 1ᵀ in
its natural (K, N) layout, through the loss's closed-form logit derivatives (ufm.losses): a gradient costs the three
GEMMs W H, G Hᵀ, Wᵀ G plus a few fused passes over Z (benchmarks/bench_gradient.py measures the ratio).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .losses import has_closed_form, mean_and_grad
from .problem import Reg, Shape


class Params(NamedTuple):
    """A point of (7): W (K×d), H (d×N, class-major columns), b (K,) or None without a bias."""

    W: jax.Array
    H: jax.Array
    b: Optional[jax.Array]


def labels_of(shape: Shape):
    # a NumPy constant (static class sizes): jnp.repeat with per-class counts would need total_repeat_length. int32
    # in both precisions (K < 2³¹): the same program under a scoped float32 solve, and half the bytes of int64 indices.
    # Built afresh at each trace: one cached array object, traced first under x64, came back as an int64 constant in
    # a later scoped-float32 trace (observed: tests/test_solvers.py::test_stalled_status_in_float32 warned).
    return jnp.asarray(np.repeat(np.arange(shape.K, dtype=np.int32), shape.counts))


def logits(params: Params):
    """Z = W H + b 1ᵀ, returned as (N, K) rows z_{k,i} = W h_{k,i} + b."""
    Z = (params.W @ params.H).T
    return Z if params.b is None else Z + params.b[None, :]


def data_term(params: Params, shape: Shape):
    """g = (1/N) Σ_{k,i} L(z_{k,i}, y_k): the loss part of (7), on the (K, N) logits Z = W H + b 1ᵀ."""
    if has_closed_form(shape.loss):
        return _closed_form_data(shape, params.W, params.H, params.b)
    return shape.loss.mean(_logits_kn(params.W, params.H, params.b), labels_of(shape), axis=0)


def _logits_kn(W, H, b):
    Z = W @ H
    return Z if b is None else Z + b[:, None]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _closed_form_data(shape: Shape, W, H, b):
    return mean_and_grad(shape.loss, _logits_kn(W, H, b), labels_of(shape), 0)[0]


@_closed_form_data.defjvp
def _closed_form_data_jvp(shape, primals, tangents):
    """dg = ⟨G Hᵀ, dW⟩ + ⟨Wᵀ G, dH⟩ + ⟨G 1, db⟩ with G = ∂g/∂Z. Written with the gradient blocks themselves, reverse
    mode transposes only these inner products (no dot_general transposes), and the HVP (forward over reverse) is
    forward-mode GEMMs in the natural layouts: W H, dW H + W dH, dG Hᵀ + G dHᵀ, Wᵀ dG + dWᵀ G."""
    W, H, b = primals
    dW, dH, db = tangents
    g, G = mean_and_grad(shape.loss, _logits_kn(W, H, b), labels_of(shape), 0)
    dg = jnp.vdot(G @ H.T, dW) + jnp.vdot(W.T @ G, dH)
    if b is not None:
        dg = dg + jnp.vdot(jnp.sum(G, axis=1), db)
    return g, dg


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
