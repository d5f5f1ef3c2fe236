"""Class sizes n_1, …, n_K (imbalanced classes): parsing, objective (7) against an independent numpy objective, the
origin's curvature against the dense Hessian, NC metrics on constructed features with known answers, the CLI and
the sweep's imbalance axes."""

import json

import numpy as np
import pytest
from scipy.special import logsumexp

import ufm
from ufm.critical import analyze_point, origin, origin_min_eig_theory
from ufm.errors import UFMInputError
from ufm.grid import build_grid, class_sizes, point_key
from ufm.metrics import nc1, nc2_means
from ufm.model import Params, objective


@pytest.mark.parametrize("given, stored, counts", [
    (5, 5, (5,) * 3), ([5, 5, 5], 5, (5,) * 3), ("5,5,5", 5, (5,) * 3), ("7", 7, (7,) * 3),
    ([4, 2, 1], (4, 2, 1), (4, 2, 1)), ("4, 2,1", (4, 2, 1), (4, 2, 1)), (np.array([3, 1, 1]), (3, 1, 1), (3, 1, 1)),
])
def test_sizes_are_one_int_when_balanced_else_k_sizes(given, stored, counts):
    p = ufm.Problem.create(3, 2, given, lam=1e-2)
    assert p.n == stored and p.counts == counts and p.N == sum(counts) and p.balanced == (len(set(counts)) == 1)
    assert np.array_equal(p.labels, np.repeat(np.arange(3), counts))
    assert p.shape.N == p.N and p.num_params == 3 * 2 + 2 * p.N + 3


@pytest.mark.parametrize("given", [[4, 2], [1, 1, 1, 1], [3, 0, 1], [3, -1, 1], "3,x,1", [2.5, 1, 1], "", [True, 1, 1]])
def test_bad_sizes_name_the_flag(given):
    with pytest.raises(UFMInputError, match="^-n: "):
        ufm.Problem.create(3, 2, given, lam=1e-2)


def _numpy_objective(W, H, b, counts, lam_W, lam_H, lam_b):
    """(7) written out with class sizes, independently of ufm.model: CE, loss averaged over N = Σ n_k."""
    labels = np.repeat(np.arange(len(counts)), counts)
    Z = W @ H + b[:, None]
    loss = logsumexp(Z, axis=0) - Z[labels, np.arange(Z.shape[1])]
    return loss.mean() + lam_W / 2 * np.sum(W**2) + lam_H / 2 * np.sum(H**2) + lam_b / 2 * np.sum(b**2)


def test_objective_with_class_sizes_matches_numpy(rng):
    counts = (6, 3, 1, 2)
    p = ufm.Problem.create(4, 3, counts, lam_W=2e-3, lam_H=7e-3, lam_b=1e-3)
    W, H, b = rng.standard_normal((4, 3)), rng.standard_normal((3, p.N)), rng.standard_normal(4)
    got = float(objective(Params(W, H, b), p.reg, p.shape))
    want = _numpy_objective(W, H, b, counts, 2e-3, 7e-3, 1e-3)
    assert got == pytest.approx(want, rel=1e-14)          # float64 summation order only


@pytest.mark.parametrize("loss, counts", [("ce", (5, 5, 1)), pytest.param("ls", (2, 7, 3, 1), marks=pytest.mark.slow),
                                          pytest.param("fl", (4, 1, 1), marks=pytest.mark.slow)])
def test_origin_curvature_with_class_sizes_matches_the_dense_hessian(loss, counts):
    # below the threshold, so the origin is a strict saddle and λ_min is the (W, H) block's
    p = ufm.Problem.create(len(counts), 3, counts, lam=1e-3, loss=loss)
    cp = analyze_point(p, origin(p), hessian="dense")
    assert cp.min_eig < 0
    assert origin_min_eig_theory(p) == pytest.approx(cp.min_eig, rel=1e-10, abs=1e-14)


def test_nc1_weights_samples_in_sigma_w_and_classes_in_sigma_b():
    # d = 2, K = 3, sizes (4, 2, 2); each class's features are its mean ± δ e_1 (half each): Σ_W = δ² e_1e_1ᵀ
    # exactly, μ_G = Σ (n_k/N) μ_k, Σ_B = (1/K) Σ (μ_k − μ_G)(μ_k − μ_G)ᵀ, full rank: NC1 = tr(Σ_W Σ_B⁻¹)/K
    counts, delta = (4, 2, 2), 0.3
    M = np.array([[1.0, -0.5, -0.5], [0.0, 0.9, -0.8]])              # columns μ_k
    labels = np.repeat(np.arange(3), counts)
    signs = np.concatenate([np.tile([1.0, -1.0], c // 2) for c in counts])
    H = M[:, labels] + delta * np.outer([1.0, 0.0], signs)
    mu_G = M @ np.array(counts) / sum(counts)
    Sigma_B = sum(np.outer(M[:, k] - mu_G, M[:, k] - mu_G) for k in range(3)) / 3
    want = np.trace(np.diag([delta**2, 0.0]) @ np.linalg.inv(Sigma_B)) / 3
    assert nc1(H, labels, 3) == pytest.approx(want, rel=1e-12)
    assert nc1(M[:, labels], labels, 3) == pytest.approx(0.0, abs=1e-20)   # collapsed features


def test_an_exact_etf_of_means_is_scored_uncentred_whatever_the_sizes():
    # the means of a simplex ETF sum to 0; with unequal sizes μ_G ≠ 0, so the centred NC2 sees a distortion that
    # the uncentred one does not (why both are reported)
    K, counts = 4, (10, 10, 1, 1)
    P = np.eye(K) - 1 / K                                              # d = K, columns a simplex ETF
    labels = np.repeat(np.arange(K), counts)
    H = P[:, labels]
    assert nc2_means(H, labels, K, centred=False) == pytest.approx(0.0, abs=1e-12)
    assert nc2_means(H, labels, K, centred=True) > 1e-2


def test_cli_solve_and_save_with_class_sizes(tmp_path, capsys):
    from ufm.cli import main

    out = tmp_path / "r.npz"
    code = main(["solve", "-K", "3", "-d", "3", "-n", "4,2,1", "--lam", "1e-2", "--json", "--save", str(out)])
    rec = json.loads(capsys.readouterr().out)
    assert code == 0 and rec["config"]["n"] == [4, 2, 1] and rec["config"]["N"] == 7
    assert rec["theory"]["applies"] is False and "balanced" in rec["theory"]["reason"]
    data = np.load(out)
    assert data["H"].shape == (3, 7) and list(data["labels"]) == [0, 0, 0, 0, 1, 1, 2]
    code = main(["solve", "-K", "3", "-d", "3", "-n", "4,2,1", "--lam", "1e-2"])
    assert code == 0 and "n=4,2,1" in capsys.readouterr().out
    assert main(["plot", "etf", str(out), "-o", str(tmp_path / "e.png")]) == 0


def test_sweep_imbalance_axes_give_class_sizes_and_keep_balanced_keys():
    grid = build_grid(flag_values=dict(K="4", n="20", minority="1,2", ratio="1,4,20"))
    grid.validate()
    sizes = sorted({class_sizes(p) if not isinstance(class_sizes(p), int) else (class_sizes(p),) * 4
                    for p in grid.points()})
    assert (20, 20, 20, 1) in sizes and (20, 20, 5, 5) in sizes and (20,) * 4 in sizes
    balanced = build_grid(flag_values=dict(K="4", n="20")).points()[0]
    assert balanced["minority"] == 0
    legacy = {k: v for k, v in balanced.items() if k not in ("minority", "ratio")}
    assert point_key(balanced, grid.options) == point_key(legacy, grid.options)
