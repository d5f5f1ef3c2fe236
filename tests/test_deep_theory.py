"""Reference values of the deep UFM (ufm/deep_theory.py, docs/theory.md §12.2–§12.4) against independent oracles:
a brute-force minimisation of independently written formulas, explicit points evaluated by the objective, and
stationarity of the DNC point where the objective is smooth there."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm.deep import deep_problem
from ufm.deep_theory import balanced_factors, dnc_point, dnc_value, low_rank_search, reduced_point


def _brute_ce(K, n, L, lams, lam_H, relu):
    """min over s of log(1 + (K−1)e^{−s}) + penalty(s), by a fine grid then a finer grid around its best."""
    lams = np.asarray(lams, dtype=np.float64)
    lb = np.prod(np.append(lams, lam_H)) ** (1 / (L + 1))
    p = 2 / (L + 1)

    def f(s):
        loss = np.log1p((K - 1) * np.exp(-s))
        if relu:       # written from the chain: √(nλ_1λ_H)K a_1 + Σ λ_l K/2 (a_l/a_{l−1})² + λ_L (K−1)s²/(2a²)
            return loss + (L + 1) / 2 * (s * math.sqrt(n * lam_H * lams.prod()) * K ** (L / 2) * math.sqrt(K - 1)) ** p
        return loss + (L + 1) / 2 * lb * (K - 1) * (s * math.sqrt(n)) ** p

    s = np.linspace(0, 60, 60001)
    i = int(np.argmin(f(s)))
    fine = np.linspace(s[max(i - 1, 0)], s[i + 1], 200001)
    return float(f(fine).min())


def _relu_chain_brute(K, n, L, lams, lam_H):
    """The ReLU DNC value with the hidden scale a minimised numerically (not through the Lagrange closed form):
    for L = 2, min over s of [log(1 + (K−1)e^{−s}) + min_a √(nλ_1λ_H)·K·a + λ_2(K−1)s²/(2a²)], nested scalar
    searches."""
    from scipy.optimize import minimize_scalar

    assert L == 2
    c1 = math.sqrt(n * lams[0] * lam_H) * K

    def pen(s):
        r = minimize_scalar(lambda la: c1 * math.exp(la) + lams[1] * (K - 1) * s**2 / (2 * math.exp(2 * la)),
                            bounds=(-20, 20), method="bounded", options={"xatol": 1e-12})
        return r.fun

    r = minimize_scalar(lambda s: math.log1p((K - 1) * math.exp(-s)) + pen(s), bounds=(1e-6, 40), method="bounded",
                        options={"xatol": 1e-12})
    return float(r.fun)


@pytest.mark.parametrize("K,n,L,lams,lam_H,act", [
    (10, 1, 2, (3e-3, 3e-3), 3e-3, "linear"),       # docs/theory.md §12.6's first rows
    (4, 3, 3, (3e-3,) * 3, 3e-3, "linear"),
    (5, 2, 3, (1e-3, 4e-3, 2e-3), 5e-3, "linear"),  # unequal λ's: only λ̄ enters
    (4, 3, 2, (3e-3, 1e-2), 2e-3, "relu"),
    (6, 2, 4, (1e-3, 2e-3, 3e-3, 1e-3), 2e-3, "relu"),
])
def test_dnc_value_matches_brute_force(K, n, L, lams, lam_H, act):
    p = deep_problem(K, K + 1, n, depth=L, activation=act, lam_layers=lams, lam_H=lam_H, bias=False)
    v = dnc_value(p)
    # the grid's spacing (1e-9 after refinement) puts its minimum within ~1e-12 of the true one
    assert v.objective == pytest.approx(_brute_ce(K, n, L, lams, lam_H, act == "relu"), rel=1e-10, abs=1e-12)
    assert v.geometry == "simplex_etf" and v.b0 == 0.0


def test_relu_closed_form_against_hidden_scale_search():
    p = deep_problem(4, 5, 3, depth=2, activation="relu", lam_layers=(3e-3, 1e-2), lam_H=2e-3, bias=False)
    # nested bounded searches to xatol 1e-12 in s and log a: the minimum to ~1e-12
    assert dnc_value(p).objective == pytest.approx(_relu_chain_brute(4, 3, 2, (3e-3, 1e-2), 2e-3), rel=1e-10)


def _grad(p, params):
    x = p.flatten(params, xp=np)
    with jax.enable_x64(True):
        reg = type(p.reg)(*(jnp.asarray(v, jnp.float64) for v in p.reg))
        f, g = jax.value_and_grad(p.shape.flat_objective)(jnp.asarray(x), reg, p.shape)
    return float(f), float(jnp.linalg.norm(g))


CASES = [  # (depth, widths, activation, loss, bias mode, loss params)
    (2, "6", "linear", "ce", "regularized", {}), (3, "6,5", "linear", "ls", "free", {"alpha": 0.1}),
    (2, "6", "linear", "mse", "none", {}), (3, "6,4", "linear", "mse", "regularized", {"beta": 2.0}),
    (2, "5", "linear", "mse", "free", {"kappa": 2.0}), (2, "6", "relu", "ce", "regularized", {}),
    (2, "6", "relu", "mse", "regularized", {"beta": 2.0}), (2, "4", "relu", "mse", "none", {}),
    (3, "6,4", "relu", "ce", "none", {}), (3, "5,6", "relu", "fl", "free", {"gamma": 2.0}),
]


# three cases (linear CE, linear MSE, ReLU CE) in the default run; the other seven in the slow tier, which CI runs
@pytest.mark.parametrize("L,widths,act,loss,bias,lp", [c if i in (0, 2, 5) else pytest.param(*c, marks=pytest.mark.slow)
                                                       for i, c in enumerate(CASES)])
def test_dnc_point_realises_the_value(L, widths, act, loss, bias, lp):
    """The explicit DNC point's objective is the DNC value; where the objective is smooth at it (deep linear, and
    ReLU at L = 2, whose only ReLU layer has strictly negative off-target pre-activations) it is a critical point:
    the value minimises the family, and the family's optimum is stationary in the full space."""
    p = deep_problem(4, 5, 3, depth=L, widths=widths, activation=act, lam_layers=(3e-3, 1e-2, 2e-3)[:L],
                     lam_H=4e-3, lam_b=0.0 if bias == "free" else 2e-3, bias=bias != "none", loss=loss, **lp)
    v = dnc_value(p)
    f, g = _grad(p, dnc_point(p, v))
    assert f == pytest.approx(v.objective, rel=1e-13, abs=1e-15)        # float64 round-off of one evaluation
    if act == "linear" or L == 2:
        # ‖∇f‖ at the refined scale: the 1-D search stops at |Δs| ~ 1e-13·s, the 2-D one (MSE) at ~1e-8
        assert g <= 1e-7


def test_dnc_value_refusals():
    assert dnc_value(deep_problem(4, 5, (3, 2, 2, 2), depth=2)).objective is None        # imbalanced
    assert "width" in dnc_value(deep_problem(4, 5, 3, depth=2, widths=2)).reason
    assert "width" in dnc_value(deep_problem(4, 3, 3, depth=2, activation="relu")).reason  # ReLU needs K


@pytest.mark.slow     # one compile of the batched L-BFGS (~10 s here)
def test_reduced_points_realise_the_search():
    """Every low-rank value is realised by an explicit deep point (balanced_factors) with the same objective."""
    p = deep_problem(4, 4, 3, depth=3, lam=3e-3, bias=False)
    ls = low_rank_search(p, starts=2)
    assert p.objective(reduced_point(p, ls)) == pytest.approx(ls.best_objective, rel=1e-12)
    # docs/theory.md §12.6: at (K, n, L) = (4, 3, 3) a rank-2 structure beats DNC (0.05964264 < 0.06489345)
    assert ls.best_rank == 2 and ls.best_objective == pytest.approx(0.05964264, abs=1e-8)
    assert dnc_value(p).objective == pytest.approx(0.06489345, abs=1e-8)
    assert low_rank_search(deep_problem(4, 5, 3, depth=2, activation="relu")) is None


def test_balanced_factors_penalty():
    """A rank-r matrix A gives a deep point whose penalty is the Schatten value (L+1)/2·λ̄·Σσ^{2/(L+1)}."""
    p = deep_problem(4, 4, 3, depth=3, lam=3e-3, bias=False)
    A = np.diag([3.0, 1.0, 0.0, 0.0])
    pt = balanced_factors(p, A)
    lb = 3e-3
    pen = sum(0.5 * lb * np.sum(np.asarray(W) ** 2) for W in (*pt.Ws, pt.H))
    assert pen == pytest.approx(2 * lb * (3.0 ** 0.5 + 1.0), rel=1e-13)
    Z = np.asarray(pt.Ws[2]) @ np.asarray(pt.Ws[1]) @ np.asarray(pt.Ws[0]) @ np.asarray(pt.H)
    np.testing.assert_allclose(Z, np.repeat(A / math.sqrt(3), 3, axis=1), atol=1e-13)   # M = A D^{-1/2}
