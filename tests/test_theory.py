"""Theory optimum (docs/theory.md §4) against reference values, the independent scalar solver and explicit points."""

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.losses import CrossEntropy, FocalLoss, LabelSmoothing
from ufm.model import Params, objective
from ufm.theory import (ce_ls_closed_form, phi, phi_is_convex, phi_prime, phi_prime0, phi_second, scalar_optimum,
                        theory_optimum, theory_point)

try:
    import mpmath
except ImportError:        # a sympy dependency, usually present; only the high-precision references need it
    mpmath = None
needs_mpmath = pytest.mark.skipif(mpmath is None, reason="mpmath is not installed")


def test_mse_reference_values():
    # docs/theory.md §4.6 reference values, K = 4, d = 6, n = 5, λ = 0.02
    free = theory_optimum(ufm.Problem.create(4, 6, 5, lam=0.02, lam_b=0.0, loss="mse", kappa=1.0, beta=1.0))
    assert free.objective == pytest.approx(0.12816408, abs=5e-9)
    assert free.b == pytest.approx([0.25] * 4)
    none = theory_optimum(ufm.Problem.create(4, 6, 5, lam=0.02, bias=False, loss="mse", kappa=1.0, beta=1.0))
    assert none.objective == pytest.approx(0.17088544, abs=5e-9)
    assert none.W_fro_sq / 4 == pytest.approx(2.03607, abs=5e-6)          # W Wᵀ = 2.03607 I
    free3 = theory_optimum(ufm.Problem.create(4, 6, 5, lam=0.02, lam_b=0.0, loss="mse", kappa=3.0, beta=2.0))
    assert free3.objective == pytest.approx(0.26532816, abs=5e-9)
    assert free3.b[0] == pytest.approx(0.51118, abs=5e-6)
    none3 = theory_optimum(ufm.Problem.create(4, 6, 5, lam=0.02, bias=False, loss="mse", kappa=3.0, beta=2.0))
    assert none3.objective == pytest.approx(0.35510421, abs=5e-9)
    assert none3.geometry == "orthogonal_frame"


@pytest.mark.parametrize("K, c, alpha", [(4, 5e-3 * np.sqrt(5), 0.0), (10, 0.005, 0.0), (4, 0.01, 0.1), (7, 0.003, 0.3),
                                          (3, 0.4, 0.0), (5, 0.1, 0.5)])
def test_closed_form_matches_scalar_problem(K, c, alpha):
    loss = LabelSmoothing(alpha) if alpha else CrossEntropy()
    m, f = ce_ls_closed_form(K, c, alpha)
    t, f_num = scalar_optimum(loss, K, c)
    assert f_num == pytest.approx(f, rel=1e-12)
    assert -t / (K - 1) == pytest.approx(m, rel=1e-6, abs=1e-9)


def test_trivial_collapse_threshold():
    # docs/theory.md §4.4: t* = 0 and f* = log K iff K√(nλ_Wλ_H) ≥ 1 − α
    K, n = 10, 100
    lam_edge = 1.0 / (K * np.sqrt(n))       # K·c = 1
    above = theory_optimum(ufm.Problem.create(K, 16, n, lam=lam_edge * 1.01))
    below = theory_optimum(ufm.Problem.create(K, 16, n, lam=lam_edge * 0.99))
    assert above.geometry == "trivial" and above.objective == pytest.approx(np.log(K)) and above.W_fro_sq == 0
    assert below.geometry == "simplex_etf" and below.margin > 0 and below.objective < np.log(K)


@pytest.mark.parametrize("loss", [CrossEntropy(), LabelSmoothing(0.2), FocalLoss(1.0), FocalLoss(2.0), FocalLoss(3.0)])
@pytest.mark.parametrize("K", [3, 10])
def test_phi_prime0_matches_numeric_derivative(loss, K):
    h = 1e-6
    numeric = (phi(0.0, loss, K) - phi(-h, loss, K)) / h
    assert phi_prime0(loss, K) == pytest.approx(float(numeric), rel=1e-5)


def test_phi_is_a_lower_bound_of_the_loss(rng):
    # eq. (9): L(z, y_k) ≥ φ(Σ_{j≠k}(z_j − z_k)), equality at equal off-target logits
    K = 5
    for loss in [CrossEntropy(), LabelSmoothing(0.3), FocalLoss(2.0)]:
        z = rng.normal(size=(200, K)) * 3
        y = np.zeros(200, dtype=int)
        t = z.sum(axis=1) - K * z[:, 0]
        assert np.all(np.asarray(loss(jnp.asarray(z), jnp.asarray(y))) >= phi(t, loss, K) - 1e-12)
        z_eq = np.zeros((1, K)); z_eq[0, 0] = 2.0
        assert float(loss(jnp.asarray(z_eq), jnp.asarray([0]))[0]) == pytest.approx(float(phi(-2.0 * (K - 1), loss, K)), rel=1e-13)


@pytest.mark.parametrize("kw", [dict(loss="ce"), dict(loss="ls", alpha=0.3), dict(loss="fl", gamma=2.0),
                                dict(loss="mse", kappa=3.0, beta=2.0, lam_b=0.0),
                                dict(loss="mse", kappa=0.5, beta=1.0, bias=False), dict(loss="ce", lam_b=0.0)])
def test_theory_point_attains_theory_objective(kw, rng):
    # the explicit NC point, evaluated by the independent objective code, has exactly the predicted value and norms
    prob = ufm.Problem.create(4, 6, 5, lam=0.01, **kw)
    th = theory_optimum(prob)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    W, H, b = theory_point(prob, rotation=Q)
    f = objective(Params(jnp.asarray(W), jnp.asarray(H), None if b is None else jnp.asarray(b)), prob.reg, prob.shape)
    assert float(f) == pytest.approx(th.objective, rel=1e-13)
    assert np.sum(W**2) == pytest.approx(th.W_fro_sq, rel=1e-12)
    assert np.sum(H**2) == pytest.approx(th.H_fro_sq, rel=1e-12)
    # regularisers balance at the optimum: λ_W‖W‖² = λ_H‖H‖² (docs/theory.md §4.3)
    assert prob.lam_W * np.sum(W**2) == pytest.approx(prob.lam_H * np.sum(H**2), rel=1e-12)


def test_where_theory_does_not_apply():
    assert not theory_optimum(ufm.Problem.create(6, 3, 5)).applies                       # d < K − 1
    assert theory_optimum(ufm.Problem.create(6, 5, 5)).applies                           # d = K − 1
    assert not theory_optimum(ufm.Problem.create(4, 3, 5, loss="mse", bias=False)).applies  # orthogonal frame needs d ≥ K
    assert theory_optimum(ufm.Problem.create(4, 3, 5, loss="mse", lam_b=0.0)).applies
    reg = theory_optimum(ufm.Problem.create(4, 6, 5, loss="mse"))                        # regularised bias: no closed form
    assert not reg.applies and "no closed form" in reg.reason and reg.objective is None
    user = theory_optimum(ufm.Problem(K=3, d=3, n=2, loss=lambda z, y: jnp.sum(z**2, axis=1)))
    assert not user.applies and user.objective is None


def test_focal_with_many_classes_is_flagged():
    # inside the band (c > 1/(K − 1) < φ′(0), docs/theory.md §4.9) the envelope bound stays below the NC value:
    # report an upper bound, not a proven optimum; the NC point still exists and attains it
    p = ufm.Problem.create(100, 128, 1, lam=0.0113, loss="fl", gamma=3.0)
    th = theory_optimum(p)
    assert not th.applies and th.upper_bound_only and th.objective == pytest.approx(4.35652631, rel=1e-8)
    W, H, b = theory_point(p)
    assert float(ufm.objective(ufm.Params(W, H, b), p.reg, p.shape)) == pytest.approx(th.objective, rel=1e-12)
    # outside it the envelope proves NC optimal even where φ_FL is not convex on t ≤ 0 (K = 100, γ = 2)
    assert theory_optimum(ufm.Problem.create(100, 128, 5, loss="fl", gamma=2.0)).applies
    assert theory_optimum(ufm.Problem.create(10, 16, 5, loss="fl", gamma=2.0)).applies


# ---- analytic φ′, φ″, the convexity test and the polished scalar optimum (docs/theory.md §4.9) ----------------------


_LOSSES = [CrossEntropy(), LabelSmoothing(0.3), FocalLoss(0.0), FocalLoss(0.5), FocalLoss(1.0), FocalLoss(2.0),
           FocalLoss(5.0)]


def _phi_mp(t, loss, K):
    """φ at mpmath precision, straight from the definition (no shared code with ufm.theory)."""
    mp = mpmath.mp
    u = mp.log(1 + (K - 1) * mp.exp(mp.mpf(t) / (K - 1)))
    if isinstance(loss, CrossEntropy):
        return u
    if isinstance(loss, LabelSmoothing):
        return u - mp.mpf(loss.alpha) * t / K
    return (1 - mp.exp(-u)) ** mp.mpf(loss.gamma) * u


def _phi2_mp_fl(t, K, gamma):
    """φ_FL″ at mpmath precision by the chain rule in u (an independent derivation from the a-form in ufm.theory):
    F(u) = E^γ u with E = 1 − e^{−u}, φ″ = F″(u) u′² + F′(u) u″, u′ = x/((1+x)(K−1)), u″ = x/((1+x)²(K−1)²)."""
    mp = mpmath.mp
    g = mp.mpf(gamma)
    x = (K - 1) * mp.exp(mp.mpf(t) / (K - 1))
    u = mp.log(1 + x)
    e = mp.exp(-u)
    E = 1 - e
    F1 = g * E ** (g - 1) * e * u + E**g
    F2 = g * (g - 1) * E ** (g - 2) * e**2 * u - g * E ** (g - 1) * e * u + 2 * g * E ** (g - 1) * e
    u1 = x / ((1 + x) * (K - 1))
    u2 = x / ((1 + x) ** 2 * (K - 1) ** 2)
    return F2 * u1**2 + F1 * u2


@needs_mpmath
@pytest.mark.parametrize("loss", _LOSSES, ids=lambda l: l.describe())
@pytest.mark.parametrize("K", [2, 3, 10, 100, 10_000])
def test_phi_derivatives_match_mpmath(loss, K):
    # analytic φ′, φ″ against 50-digit numerical differentiation of φ's definition
    mp = mpmath.mp
    beta = loss.alpha / K if isinstance(loss, LabelSmoothing) else 0.0
    ts = [t for t in (-1e5, -3e3, -200.0, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 200.0, 3e3, 1e5)
          if abs(t / (K - 1)) <= 60]
    with mp.workdps(50):
        for t in ts:
            d1 = float(mp.diff(lambda x: _phi_mp(x, loss, K), mp.mpf(t), 1))
            d2 = float(mp.diff(lambda x: _phi_mp(x, loss, K), mp.mpf(t), 2))
            assert float(phi_prime(t, loss, K)) == pytest.approx(d1, rel=1e-12, abs=1e-13 * (abs(d1) + beta))
            assert float(phi_second(t, loss, K)) == pytest.approx(d2, rel=1e-11, abs=1e-300)


@pytest.mark.parametrize("loss", _LOSSES, ids=lambda l: l.describe())
@pytest.mark.parametrize("K", [2, 10_000])
def test_phi_derivatives_are_stable_at_extreme_t(loss, K):
    beta = loss.alpha / K if isinstance(loss, LabelSmoothing) else 0.0
    t = np.array([-1e5, -1e4, 1e4, 1e5])
    d1, d2 = phi_prime(t, loss, K), phi_second(t, loss, K)
    assert np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))
    # φ′ → 1/(K−1) − β as t → ∞ and → −β as t → −∞ (up to e^{−a} terms); φ″ → 0
    if K == 2:
        assert d1[-1] == pytest.approx(1.0 / (K - 1) - beta, rel=1e-12) and d1[0] == pytest.approx(-beta, abs=1e-300)
        assert abs(d2[0]) < 1e-300 and abs(d2[-1]) < 1e-300
    # the vectorised result equals the scalar one
    assert [float(phi_prime(x, loss, K)) for x in t] == list(d1)


def test_focal_gamma_zero_is_cross_entropy():
    t = np.linspace(-500, 50, 1001)
    for K in (2, 7, 1000):
        np.testing.assert_array_equal(phi(t, FocalLoss(0.0), K), phi(t, CrossEntropy(), K))
        np.testing.assert_allclose(phi_prime(t, FocalLoss(0.0), K), phi_prime(t, CrossEntropy(), K), rtol=1e-15)
        np.testing.assert_allclose(phi_second(t, FocalLoss(0.0), K), phi_second(t, CrossEntropy(), K), rtol=1e-15)


@needs_mpmath
@pytest.mark.parametrize("K, gamma, value", [(24, 1.0, -2.9e-6), (20, 5.0, -3.8e-6), (57, 0.5, -1.9e-8)])
def test_mild_nonconvexity_is_detected(K, gamma, value):
    # docs/theory.md §4.5: second differences with a tolerance passed these as convex
    mp = mpmath.mp
    with mp.workdps(40):
        ref = _phi2_mp_fl(0, K, gamma)
        ref_diff = mp.diff(lambda x: _phi_mp(x, FocalLoss(gamma), K), mp.mpf(0), 2)
        assert abs(ref - ref_diff) < mp.mpf(10) ** -30 * abs(ref)        # the two mpmath routes agree
    assert float(ref) == pytest.approx(value, rel=0.05)
    assert float(phi_second(0.0, FocalLoss(gamma), K)) == pytest.approx(float(ref), rel=1e-12)
    assert not phi_is_convex(FocalLoss(gamma), K, 0.01)


@needs_mpmath
def test_convex_cases():
    for K in (2, 3, 10, 100, 10_000):
        assert phi_is_convex(CrossEntropy(), K, 0.01) and phi_is_convex(LabelSmoothing(0.5), K, 0.01)
        assert phi_is_convex(FocalLoss(0.0), K, 0.01)
    # FL γ = 2, K = 10: φ″ > 0 on all of t ≤ 0 at 30 digits (min over a grid reaching t = 0)
    mp = mpmath.mp
    with mp.workdps(30):
        vals = [_phi2_mp_fl(mp.mpf(t), 10, 2.0) for t in np.linspace(-9 * 40, 0, 401)]
    assert min(vals) > 0
    assert phi_is_convex(FocalLoss(2.0), 10, 0.01)


@needs_mpmath
def test_convexity_family_matches_mpmath():
    # K ∈ [2, 200], γ ∈ {0.5, 1, 2, 3, 5}: phi_is_convex against the sign of a 30-digit φ″ on t ≤ 0
    mp = mpmath.mp
    flips = 0
    with mp.workdps(30):
        for gamma in (0.5, 1.0, 2.0, 3.0, 5.0):
            prev = True
            for K in range(2, 201):
                L = np.log(K - 1)
                ts = [0] + [(K - 1) * (a - L) for a in np.linspace(L - 20, L, 21)[:-1]]
                ref = all(_phi2_mp_fl(mp.mpf(t), K, gamma) >= 0 for t in ts)
                assert phi_is_convex(FocalLoss(gamma), K, 0.01) == ref, (K, gamma)
                flips += ref != prev
                prev = ref
    assert flips == 5        # each γ turns non-convex once, at K ≈ e^{2+1/γ} or above, and stays so


@pytest.mark.parametrize("K", [2, 3, 5, 10, 50, 100, 1000])
def test_scalar_optimum_matches_closed_form_to_round_off(K):
    # Newton-polished scalar problem vs §4.4's closed form; FL with γ = 0 runs the FL code path on CE's φ
    for r in (1e-6, 1e-3, 0.1, 0.5, 0.9, 0.99, 1.5):
        c = r / K
        for loss, alpha in ((CrossEntropy(), 0.0), (FocalLoss(0.0), 0.0), (LabelSmoothing(0.2), 0.2)):
            m, f = ce_ls_closed_form(K, c, alpha)
            t, f_num = scalar_optimum(loss, K, c)
            assert f_num == pytest.approx(f, rel=1e-13), (loss, K, r)
            assert -t / (K - 1) == pytest.approx(m, rel=1e-11 if r < 0.99 else 1e-9, abs=0), (loss, K, r)


@needs_mpmath
@pytest.mark.parametrize("K, gamma, c", [(4, 3.0, 5e-3 * np.sqrt(5)), (20, 2.0, 0.003), (100, 3.0, 0.0113),
                                         (50, 3.0, 0.0238), (1000, 0.5, 1e-5), (24, 1.0, 0.04)])
def test_scalar_optimum_focal_matches_mpmath(K, gamma, c):
    # 30-digit reference: root of the high-precision derivative of φ(t) − ct, started at our t*
    mp = mpmath.mp
    loss = FocalLoss(gamma)
    t, f = scalar_optimum(loss, K, c)
    assert t < 0
    with mp.workdps(30):
        g = lambda x: _phi_mp(x, loss, K) - c * x
        t_ref = mp.findroot(lambda x: mp.diff(g, x), mp.mpf(t))
        f_ref = g(t_ref)
    assert f == pytest.approx(float(f_ref), rel=1e-13)
    assert t == pytest.approx(float(t_ref), rel=1e-12)
