"""Hessian-vector products in the solve and the eigensolve: the one-product Lanczos operator (hessian.deflated_hvp
with a traced ``deflate``) against the plain product and the dense deflated operator; and, counted in the compiled
programs, that no product loop recomputes the primal half (W H, the softmax, G)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.hessian import deflated_hvp, dense_hessian, hvp, reg_of
from ufm.methods import NewtonCG
from ufm.model import flatten
from ufm.symmetry import orbit_tangent, project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_scale import loop_ops  # noqa: E402

#: rank W = K − 1 < d, a free softmax bias: a nontrivial orbit tangent
PROB = ufm.Problem.create(4, 8, 3, lam=5e-3, lam_b=0.0)


def _point(prob, seed=0, scale=0.3):
    return np.random.default_rng(seed).normal(scale=scale, size=prob.num_params)


def test_one_product_operator_is_the_plain_and_the_deflated_hessian():
    prob = PROB
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(prob.d, prob.d)))
    x_np = flatten(ufm.theory_point(prob, rotation=Q), xp=np) + 1e-3 * _point(prob, 2)
    with jax.enable_x64(True):
        reg, x = reg_of(prob), jnp.asarray(x_np)
        t = orbit_tangent(prob, x_np)
        U, w = jnp.asarray(t.U), jnp.asarray(t.weights)
        op = jax.jit(lambda v, sigma, deflate: deflated_hvp(x, v, reg, prob.shape, U, w, t.free_shift, sigma, deflate))
        Hd = np.asarray(dense_hessian(x, reg, prob.shape))
        Pm = np.asarray(jax.jit(jax.vmap(lambda e: project(t, x, e, prob.shape)))(jnp.eye(x.size))).T
        Qc = np.eye(x.size) - Pm
        sigma = 0.7
        for seed in range(3):
            v = jnp.asarray(np.random.default_rng(seed + 10).normal(size=x.size))
            # deflate=False (traced): the plain product, P v = 0 exactly (another compiled program: XLA may order
            # the sums differently, so to round-off of ‖H‖‖v‖), whatever σ
            h = np.asarray(hvp(x, v, reg, prob.shape))
            scale = np.linalg.norm(Hd, 2) * np.linalg.norm(v)
            assert np.linalg.norm(np.asarray(op(v, sigma, False)) - h) <= 1e-13 * scale
            # deflate=True: the dense (I − P)H(I − P) + σP, to round-off of (‖H‖ + σ)‖v‖
            dense = (Qc @ Hd @ Qc + sigma * Pm) @ np.asarray(v)
            scale = (np.linalg.norm(Hd, 2) + sigma) * np.linalg.norm(v)
            assert np.linalg.norm(np.asarray(op(v, sigma, True)) - dense) <= 1e-12 * scale


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts XLA:CPU's compiled loops")
def test_no_product_loop_recomputes_the_primal_half():
    # a product at a fixed x inside a loop: XLA's loop-invariant code motion takes W H, the softmax and G out of the
    # loop, leaving the six tangent GEMMs dW H + W dH, dG Hᵀ + G dHᵀ, Wᵀ dG + dWᵀ G and no exponential. Before, the
    # Lanczos loop's product sat inside a lax.cond branch, where it was not hoisted: 7 GEMMs and the exponentials.
    from ufm.eigensolvers import _device_solve
    from ufm.methods import _advance, _start
    from ufm.solvers import CHUNK_LENGTH
    from ufm.symmetry import no_tangent

    prob = PROB
    shape = prob.shape
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):      # the context ufm.solve compiles in
        reg = reg_of(prob)
        x = jax.ShapeDtypeStruct((prob.num_params,), jnp.float64)
        f64, i32 = (lambda a: jnp.asarray(a, jnp.float64)), (lambda a: jnp.asarray(a, jnp.int32))
        U, w = (jnp.asarray(a) for a in no_tangent(shape, prob.num_params))
        eig = _device_solve.lower(x, reg, x, U, w, f64(0), f64(1e-10), f64(0), f64(0), jnp.asarray(False),
                                  jnp.asarray(2), jnp.asarray(0), shape=shape, free_shift=True, basis=20, keep=6,
                                  max_cycles=500, n_out=1).compile().as_text()
        loops = loop_ops(eig)
        assert loops and all(c["exponential"] == 0 for c in loops)
        s = NewtonCG()
        carry = jax.eval_shape(lambda y: _start(s, y, reg, shape), x)
        solve = loop_ops(_advance.lower(s, carry, reg, shape, f64(1), f64(1), i32(1), i32(1), i32(0), CHUNK_LENGTH,
                                        0).compile().as_text())
        # the CG loop: six GEMMs, no exponential; the line search evaluates f, ∇f at new points (three GEMMs and the
        # exponentials), the outer loop f, ∇f at the iterate
        assert [(c["dot"], c["exponential"]) for c in solve if c["exponential"] == 0] == [(6, 0)]
