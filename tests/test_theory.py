"""Theory optimum (docs/theory.md §4) against reference values, the independent scalar solver and explicit points."""

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.losses import CrossEntropy, FocalLoss, LabelSmoothing
from ufm.model import Params, objective
from ufm.theory import ce_ls_closed_form, phi, phi_prime0, scalar_optimum, theory_optimum, theory_point


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
    # φ_FL is not convex near t = 0 for large K (docs/theory.md §4.5): report an upper bound, not a proven optimum
    th = theory_optimum(ufm.Problem.create(100, 128, 5, loss="fl", gamma=2.0))
    assert not th.applies and th.upper_bound_only and th.objective is not None
    assert theory_optimum(ufm.Problem.create(10, 16, 5, loss="fl", gamma=2.0)).applies
