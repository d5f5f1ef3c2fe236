"""Hessian-vector products in the solve and the eigensolve: the float32 products of Newton-CG's loose systems
(NewtonCG.hvp_dtype) against the float64 product and the dense Hessian, the solve they drive against the float64
one; the one-product Lanczos operator (hessian.deflated_hvp with a traced ``deflate``) against the dense deflated
operator; and, counted in the compiled programs, that no product loop recomputes the primal half (W H, the
softmax, G)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.hessian import deflated_hvp, dense_hessian, hvp, reg_of
from ufm.methods import LOW_PRECISION_MIN_PARAMS, NewtonCG, _derivatives
from ufm.model import flatten
from ufm.symmetry import orbit_tangent, project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_scale import loop_ops  # noqa: E402

F32_EPS = float(np.finfo(np.float32).eps)


#: one shape for every test here (one compiled dense Hessian, and the loop count below finds the float32 solve's
#: program compiled): rank W = K − 1 < d, a free softmax bias
PROB = ufm.Problem.create(4, 8, 3, lam=5e-3, lam_b=0.0)


def _point(prob, seed=0, scale=0.3):
    return np.random.default_rng(seed).normal(scale=scale, size=prob.num_params)


def test_float32_products_match_the_dense_hessian():
    prob = PROB
    with jax.enable_x64(True):
        reg = reg_of(prob)
        x = jnp.asarray(_point(prob))
        Hd = np.asarray(dense_hessian(x, reg, prob.shape))
        _, _, hvp_at = _derivatives(reg, prob.shape)
        V = jnp.asarray(np.random.default_rng(1).normal(size=(3, prob.num_params)))
        H64, H32 = jax.jit(lambda V: (jax.vmap(hvp_at(x))(V), jax.vmap(hvp_at(x, "float32"))(V)))(V)
        assert H32.dtype == jnp.float64                     # cast back: CG's recurrences stay in float64
        for v, h64, h32 in zip(np.asarray(V), np.asarray(H64), np.asarray(H32)):
            exact = Hd @ v
            scale = np.linalg.norm(Hd, 2) * np.linalg.norm(v)
            # float64: the same product as the dense Hessian's column sums, to round-off
            assert np.linalg.norm(h64 - exact) <= 1e-13 * scale
            # float32: inputs rounded to 2⁻²⁴ relative, and the products' sums over at most N·K terms accumulate
            # ≲ √(NK)·ε₃₂; 50 ε₃₂ bounds both here (P = 76) with room, and a real float32 evaluation is not exact
            err = np.linalg.norm(h32 - exact)
            assert 0 < err <= 50 * F32_EPS * scale


def test_float32_products_reach_the_float64_solution():
    prob = PROB
    a, b = (ufm.solve(prob, solver=NewtonCG(hvp_dtype=dt)) for dt in (None, "float32"))
    assert a.converged and b.converged
    # the stopping test is float64's in both: ‖∇f‖ of the float64 gradient
    assert max(a.grad_norm, b.grad_norm) <= 1e-9
    # both within ‖∇f‖/λ_min⊥ of one minimiser orbit: f to round-off, W H (orbit-invariant) to ≲ 1e-6 at this λ
    assert b.objective == pytest.approx(a.objective, rel=1e-13)
    assert b.objective == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-12)
    np.testing.assert_allclose(b.params.W @ b.params.H, a.params.W @ a.params.H, atol=1e-6)
    # the float32 products were used (a different sequence of iterates), and cost no more than ~25% more steps
    assert not np.array_equal(a.trace_grad_norm, b.trace_grad_norm)
    assert b.steps <= 1.25 * a.steps + 2


def test_auto_takes_float32_products_only_for_large_float64_iterates():
    big, small = LOW_PRECISION_MIN_PARAMS, LOW_PRECISION_MIN_PARAMS - 1
    spec = lambda n, dt: jax.ShapeDtypeStruct((n,), dt)
    with jax.enable_x64(True):
        auto = NewtonCG()
        assert auto.low_precision(spec(big, jnp.float64)) == "float32"
        assert auto.low_precision(spec(small, jnp.float64)) is None
        assert auto.low_precision(spec(big, jnp.float32)) is None        # already float32: nothing lower
        assert NewtonCG(hvp_dtype=None).low_precision(spec(big, jnp.float64)) is None
        assert NewtonCG(hvp_dtype="float32").low_precision(spec(10, jnp.float64)) == "float32"


def test_an_unknown_hvp_dtype_is_refused():
    with pytest.raises(ufm.UFMInputError, match="^hvp_dtype: "):
        ufm.solve(ufm.Problem.create(4, 6, 5, lam=5e-3), solver=NewtonCG(hvp_dtype="float16"))


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
    # the context ufm.solve compiles in, so that the float32 solve's program above is found compiled
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        reg = reg_of(prob)
        x = jax.ShapeDtypeStruct((prob.num_params,), jnp.float64)
        f64, i32 = (lambda a: jnp.asarray(a, jnp.float64)), (lambda a: jnp.asarray(a, jnp.int32))
        U, w = (jnp.asarray(a) for a in no_tangent(shape, prob.num_params))
        eig = _device_solve.lower(x, reg, x, U, w, f64(0), f64(1e-10), f64(0), f64(0), jnp.asarray(False),
                                  jnp.asarray(2), jnp.asarray(0), shape=shape, free_shift=True, basis=20, keep=6,
                                  max_cycles=500, n_out=1).compile().as_text()
        loops = loop_ops(eig)
        assert loops and all(c["exponential"] == 0 for c in loops)
        s = NewtonCG(hvp_dtype="float32")
        carry = jax.eval_shape(lambda y: _start(s, y, reg, shape), x)
        solve = loop_ops(_advance.lower(s, carry, reg, shape, f64(1), f64(1), i32(1), i32(1), i32(0), CHUNK_LENGTH,
                                        0).compile().as_text())
        # the two CG loops (float32 and float64 products): six GEMMs, no exponential; the line search evaluates
        # f, ∇f at new points (three GEMMs and the exponentials), the outer loop f, ∇f at the iterate
        assert sorted((c["dot"], c["exponential"]) for c in solve if c["exponential"] == 0) == [(6, 0)] * 2
