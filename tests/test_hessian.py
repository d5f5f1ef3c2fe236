"""Curvature: HVPs against the dense Hessian and finite differences, dense against matrix-free spectra, and the
symmetry projector against the zero-mode counts of docs/theory.md §5.6."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.hessian import MatrixFree, dense_hessian, hvp, value_and_grad
from ufm.model import flatten
from ufm.symmetry import expected_zero_modes, orbit_tangent, project


def _point(prob, rng, scale=0.5):
    return jnp.asarray(rng.normal(size=prob.num_params) * scale)


@pytest.mark.parametrize("loss, kw", [("ce", {}), ("fl", dict(gamma=2.0)), ("mse", dict(kappa=2.0))])
def test_hvp_matches_dense_and_finite_differences(loss, kw, rng):
    prob = ufm.Problem.create(3, 4, 2, lam=0.03, loss=loss, **kw)
    x = _point(prob, rng)
    v = jnp.asarray(rng.normal(size=prob.num_params))
    Hd = dense_hessian(x, prob.reg, prob.shape)
    np.testing.assert_allclose(hvp(x, v, prob.reg, prob.shape), Hd @ v, rtol=1e-10, atol=1e-12)
    h = 1e-6   # central differences of the gradient: O(h²) truncation ≈ 1e-12, round-off ≈ 1e-16/h = 1e-10
    g = lambda y: value_and_grad(y, prob.reg, prob.shape)[1]
    np.testing.assert_allclose((g(x + h * v) - g(x - h * v)) / (2 * h), Hd @ v, rtol=1e-6, atol=1e-7)


def test_dense_and_matrix_free_extremes_agree(rng):
    prob = ufm.Problem.create(4, 6, 5, lam=5e-3, loss="fl", gamma=1.0)
    for x in (_point(prob, rng), flatten(ufm.solve(prob).params, xp=np)):
        theta = np.linalg.eigvalsh(np.asarray(dense_hessian(jnp.asarray(x), prob.reg, prob.shape)))
        mf = MatrixFree(prob, x)
        top = mf.largest()
        low = mf.smallest(top.value + 1.0)
        # ARPACK at tol 1e-10 on a spectrum of norm ~0.1–1: eigenvalues to ~1e-10 absolute
        assert top.value == pytest.approx(theta[-1], abs=1e-9)
        assert low.value == pytest.approx(theta[0], abs=1e-9)
        assert top.residual < 1e-8 and low.residual < 1e-8


# two cases (free shift on and off) in the default run; the larger shapes join the slow tier for time
@pytest.mark.parametrize("K, d, lam_b, expected", [(3, 4, 5e-3, 5), (3, 4, 0.0, 6), pytest.param(4, 6, 5e-3, 12, marks=pytest.mark.slow),
                                                   pytest.param(4, 3, 5e-3, 3, marks=pytest.mark.slow)])
def test_projector_and_zero_mode_counts(K, d, lam_b, expected):
    # docs/theory.md §5.6: K = 3, d = 4 → 5; K = 4, d = 6 → 12; a free softmax bias adds one (→ 6); d = K − 1 → d(d−1)/2
    prob = ufm.Problem.create(K, d, 3, lam=5e-3, lam_b=lam_b, loss="ce")
    x = flatten(ufm.solve(prob, gtol=1e-11).params, xp=np)
    t = orbit_tangent(prob, x)
    assert t.dim == expected == expected_zero_modes(d, K - 1, lam_b == 0.0)
    with jax.enable_x64(True):
        Pm = np.asarray(jax.vmap(lambda e: project(t, jnp.asarray(x), e, prob.shape))(jnp.eye(x.size))).T
        Hd = np.asarray(dense_hessian(jnp.asarray(x), prob.reg, prob.shape))
    np.testing.assert_allclose(Pm @ Pm, Pm, atol=1e-12)          # a projector
    np.testing.assert_allclose(Pm, Pm.T, atol=1e-12)             # orthogonal
    assert np.trace(Pm) == pytest.approx(expected, abs=1e-9)      # of the orbit's dimension
    assert np.abs(Hd @ Pm).max() < 1e-9                           # the orbit tangent is Hessian null space
    theta = np.linalg.eigvalsh(Hd)
    assert np.sum(np.abs(theta) < 1e-8) == expected               # and all of it (no other flat direction)


def test_expected_zero_modes_formula():
    assert expected_zero_modes(4, 2, False) == 6 - 1
    assert expected_zero_modes(6, 3, False) == 15 - 3
    assert expected_zero_modes(5, 0, True) == 1
    assert expected_zero_modes(3, 3, False) == 3


def test_arpack_stops_at_the_first_nonfinite_product(rng):
    # ARPACK does not look at its inputs: a NaN HVP would otherwise run it to maxiter or out as garbage
    from ufm.hessian import NonFiniteCurvature

    prob = ufm.Problem.create(3, 4, 2, lam=0.03)
    mf = MatrixFree(prob, _point(prob, rng))
    calls = []

    def nan_after_three(v):
        calls.append(1)
        return mf.H(v) if len(calls) < 3 else np.full(mf.P, np.nan)

    for run in (lambda: mf.largest(op=nan_after_three), lambda: mf.smallest(10.0, op=nan_after_three)):
        calls.clear()
        with pytest.raises(NonFiniteCurvature):
            run()
        assert len(calls) == 3
