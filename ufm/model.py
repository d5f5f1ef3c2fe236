"""Objective (7) on parameters (W, H, b), and on one flat vector for the solvers.

    f(W, H, b) = (1/N) Σ_{k,i} L(W h_{k,i} + b, y_k) + λ_W/2 ‖W‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²      (7)

The solvers work on one flat vector x = [vec W, vec H, b] cut by static slices: docs/theory.md §9 measured
``ravel_pytree``'s unravel in the hot loop at 4–15× slower gradients. For the built-in losses the data term goes
through their closed-form logit derivatives (ufm.losses) inside one custom JVP rule: a gradient costs the three
GEMMs W H, G Hᵀ, Wᵀ G plus a few fused passes over the logits (benchmarks/bench_gradient.py measures the ratio).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import aot
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


#: The closed-form data term keeps the logits as (K, N) columns W H, as XLA's dot writes them, while one row of N
#: entries takes at most this many bytes, and as (N, K) rows (W H)ᵀ beyond. Measured on XLA:CPU (2 cores, jax 0.10.2,
#: docs/theory.md §9): a reduction over the K rows of a (K, N) array slowed ~6–16× once a row passed 64 KiB (f64:
#: N > 8192; f32: N > 16384), while over the classes of (N, K) rows it did not; below that the (K, N) products W H
#: and G Hᵀ ran ~15–20% faster than their (N, K) forms (K = 100). Both layouts give the same numbers up to the order
#: of sums.
COLUMNS_MAX_ROW_BYTES = 64 * 1024


def data_term(params: Params, shape: Shape):
    """g = (1/N) Σ_{k,i} L(z_{k,i}, y_k): the loss part of (7)."""
    if has_closed_form(shape.loss):
        return _closed_form_data(shape, params.W, params.H, params.b)
    return jnp.mean(shape.loss(logits(params), labels_of(shape)))


def _class_axis(shape: Shape, dtype) -> int:
    return 0 if shape.N * jnp.dtype(dtype).itemsize <= COLUMNS_MAX_ROW_BYTES else -1


def _logits_along(W, H, b, axis):
    if axis == 0:
        return W @ H if b is None else W @ H + b[:, None]
    # Hᵀ Wᵀ as one dot_general with (N, K) output: its JVP's products dH·W, H·dW are then (N, K) too ((W H)ᵀ had
    # XLA form them as (K, N) and add a strided transposing copy in the HVP)
    Z = jax.lax.dot_general(H, W, (((0,), (1,)), ((), ())))
    return Z if b is None else Z + b[None, :]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _closed_form_data(shape: Shape, W, H, b):
    axis = _class_axis(shape, W.dtype)
    return mean_and_grad(shape.loss, _logits_along(W, H, b, axis), labels_of(shape), axis)[0]


@_closed_form_data.defjvp
def _closed_form_data_jvp(shape, primals, tangents):
    """dg = ⟨G Hᵀ, dW⟩ + ⟨Wᵀ G, dH⟩ + ⟨G 1, db⟩ with G = ∂g/∂(W H) (K × N; its transpose in the rows layout). Written
    with the gradient blocks themselves, reverse mode transposes only these inner products (no dot_general
    transposes, which XLA left as a strided copy of ∂f/∂H in the HVP), and the HVP (forward over reverse) is seven
    forward-mode GEMMs: W H, dW H + W dH, dG Hᵀ + G dHᵀ, Wᵀ dG + dWᵀ G."""
    W, H, b = primals
    dW, dH, db = tangents
    axis = _class_axis(shape, W.dtype)
    g, G = mean_and_grad(shape.loss, _logits_along(W, H, b, axis), labels_of(shape), axis)
    if axis == 0:
        gW, gH, gb = G @ H.T, W.T @ G, jnp.sum(G, axis=1)
    else:
        gW, gH, gb = G.T @ H.T, W.T @ G.T, jnp.sum(G, axis=0)
    dg = jnp.vdot(gW, dW) + jnp.vdot(gH, dH)
    return g, dg if b is None else dg + jnp.vdot(gb, db)


def objective(params: Params, reg: Reg, shape: Shape):
    """f of eq. (7)."""
    f = data_term(params, shape) + 0.5 * reg.lam_W * jnp.sum(params.W**2) + 0.5 * reg.lam_H * jnp.sum(params.H**2)
    if params.b is not None:
        f = f + 0.5 * reg.lam_b * jnp.sum(params.b**2)
    return f


#: eq. (7) as one compiled program: a host-side evaluation (bounds.objective_f64) then costs one cache lookup per
#: process instead of an op-by-op dispatch of every primitive
objective_compiled = aot.jit(objective, static_argnames="shape")


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
