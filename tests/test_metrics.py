"""NC metrics on constructed features with known answers (docs/theory.md §6)."""

import numpy as np
import pytest

import ufm
from ufm.metrics import (bias_residual, equiangularity, equinorm, max_angle, nc1, nc2_classifier, nc2_means, nc4,
                         nc_metrics, simplex_etf_gram)
from ufm.theory import theory_point


def etf_problem(K=4, d=6, n=5, **kw):
    prob = ufm.Problem.create(K, d, n, lam=0.01, **kw)
    return prob, theory_point(prob)


def test_exact_simplex_etf_scores_zero():
    prob, (W, H, b) = etf_problem()
    m = nc_metrics(W, H, b, prob.labels, prob.K)
    for key in ["NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3", "NC4", "bias_residual",
                "W_equinorm", "W_equiangularity", "W_max_angle", "H_equinorm", "H_equiangularity", "H_max_angle"]:
        assert m[key] == pytest.approx(0.0, abs=1e-12), key


def test_orthogonal_frame_centred_zero_uncentred_positive():
    # docs/theory.md §6.3: centring maps an orthogonal frame to a simplex ETF (0.0), uncentred it scores 0.518 at K = 4
    K = 4
    W = np.eye(K, 6) * 1.7
    assert nc2_classifier(W) == pytest.approx(0.0, abs=1e-14)
    # ‖I/√K − J‖_F by hand: diagonal 1/2 − (3/4)/√3, off-diagonal (1/4)/√3
    expected = np.sqrt(4 * (0.5 - 0.75 / np.sqrt(3)) ** 2 + 12 * (0.25 / np.sqrt(3)) ** 2)
    assert nc2_classifier(W, centred=False) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.5176, abs=1e-4)
    H = np.repeat(W.T, 3, axis=1)          # collapsed features on the frame
    labels = np.repeat(np.arange(K), 3)
    assert nc2_means(H, labels, K, centred=False) == pytest.approx(expected, rel=1e-12)
    assert max_angle(W) == pytest.approx(1 / 3)


def test_random_features_are_not_collapsed(rng):
    K, d, n = 5, 8, 20
    W = rng.normal(size=(K, d))
    H = rng.normal(size=(d, K * n))
    labels = np.repeat(np.arange(K), n)
    m = nc_metrics(W, H, None, labels, K)
    assert m["NC1"] > 0.1 and m["NC2_W"] > 0.05 and m["NC3"] > 0.1 and m["NC4"] > 0.1


def test_nc1_by_hand():
    # K = 2, d = 1: means ±1, within-class deviations ±0.1 → Σ_W = 0.01, Σ_B = 1, NC1 = 0.01/2
    H = np.array([[0.9, 1.1, -0.9, -1.1]])
    assert nc1(H, np.array([0, 0, 1, 1]), 2) == pytest.approx(0.005, rel=1e-12)


def test_nc4_known_mismatch():
    # class means at ±e1; sample 0 of class 0 sits nearer the class-0 mean but the classifier puts it in class 1
    H = np.array([[1.0, 1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    H[0, 0] = 0.2
    W = np.array([[1.0, 0.0], [-1.0, 0.0]])
    b = np.array([-0.5, 0.5])
    labels = np.array([0, 0, 1, 1])
    assert nc4(W, H, b, labels, 2) == pytest.approx(0.25)
    assert bias_residual(W, H, b) == pytest.approx(np.linalg.norm(W @ H.mean(axis=1) + b))


def test_invariances(rng):
    K, d, n = 4, 6, 7
    W = rng.normal(size=(K, d))
    H = rng.normal(size=(d, K * n))
    labels = np.repeat(np.arange(K), n)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    base = nc_metrics(W, H, None, labels, K)
    rotated = nc_metrics(W @ Q, Q.T @ H, None, labels, K)          # W → WQ, H → QᵀH
    scaled = nc_metrics(3.0 * W, 0.2 * H, None, labels, K)          # NC2/NC3 scale-free, NC1 ratio-based
    perm = rng.permutation(K)                                       # relabel classes: row k of W ↔ class k
    inv = np.argsort(perm)
    relabelled = nc_metrics(W[perm], H, None, inv[labels], K)
    for key in ["NC1", "NC2_W", "NC2_H", "NC3", "NC4", "W_equinorm", "H_equiangularity"]:
        assert rotated[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key
        assert scaled[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key
        assert relabelled[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


def test_zero_classifier_is_undefined_not_perfect():
    K = 3
    W = np.zeros((K, 4))
    H = np.zeros((4, 6))
    m = nc_metrics(W, H, None, np.repeat(np.arange(K), 2), K)
    assert np.isnan(m["NC2_W"]) and np.isnan(m["NC3"]) and np.isnan(m["W_equinorm"])


def test_etf_gram_is_unit():
    J = simplex_etf_gram(5)
    assert np.linalg.norm(J) == pytest.approx(1.0)
    assert equinorm(np.eye(3)) == 0 and equiangularity(np.eye(3)) == 0


def test_metric_keys_are_the_reported_keys():
    from ufm.metrics import NC_KEYS

    prob, (W, H, b) = etf_problem()
    assert tuple(nc_metrics(W, H, b, prob.labels, prob.K)) == NC_KEYS


def test_nc1_ignores_round_off_outside_the_span_of_the_means():
    # Σ_B of rank K − 1 = 2 plus round-off eigenvalues (one negative, one tiny positive) in the other directions,
    # where the features still vary within their classes: only the between-class span may be inverted
    from ufm.metrics import between_class_pinv

    V, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    theta = np.array([-3e-18, 4e-17, 0.0, 0.5, 2.0])
    inv = between_class_pinv(V @ np.diag(theta) @ V.T, K=3)
    np.testing.assert_allclose(inv, V[:, 3:] @ np.diag([2.0, 0.5]) @ V[:, 3:].T, atol=1e-12)
    # at most K − 1 directions even when more eigenvalues are large (K = 2: one)
    inv2 = between_class_pinv(V @ np.diag([0, 0, 0, 0.5, 2.0]) @ V.T, K=2)
    np.testing.assert_allclose(inv2, np.outer(V[:, 4], V[:, 4]) / 2.0, atol=1e-12)


def test_nc1_is_undefined_when_the_class_means_coincide():
    H = np.zeros((3, 6))
    assert np.isnan(nc1(H, np.repeat(np.arange(3), 2), 3))


def test_nc1_at_an_exact_ls_optimum_is_round_off():
    # the case that exposed the round-off inversion: NC1 was 3.1e-6 at ‖∇f‖ = 3.9e-10 with numpy's pinv
    import ufm

    prob = ufm.Problem.create(10, 64, 100, lam=5e-4, loss="ls", alpha=0.1)
    sol = ufm.solve(prob)
    assert sol.converged and ufm.nc_metrics(*sol.params, prob.labels, prob.K)["NC1"] < 1e-12
