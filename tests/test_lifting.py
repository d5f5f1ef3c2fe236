"""The convex lifting (ufm.lifting, docs/theory.md §5.8): closed forms, the full UFM, the dual bound, recovery.

The full-UFM references use an objective and gradient written here in numpy, independently of ufm's code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import ufm
from ufm.errors import UFMInputError
from ufm.lifting import Lifted, lifted_optimum, recover
from ufm.losses import CrossEntropy, FocalLoss, LabelSmoothing, RescaledMSE, as_loss
from ufm.model import Params, objective
from ufm.problem import Problem, Reg, Shape
from ufm.theory import ce_ls_closed_form, theory_optimum

REL = 1e-10


def _lam_b(mode, lam):
    return lam if mode == "regularized" else 0.0


def _assert_bracket(r: Lifted, f_star, rel=REL):
    """value and lower both equal f_star (relative), and lower ≤ value up to round-off."""
    assert r.converged and r.status == "converged", r
    assert abs(r.value - f_star) <= rel * abs(f_star), (r.value, f_star)
    assert abs(r.lower - f_star) <= rel * abs(f_star), (r.lower, f_star)
    assert r.lower <= r.value * (1 + 1e-14) + 1e-15


# ------------------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("mode", ["regularized", "free", "none"])
def test_balanced_ce_ls_closed_form(mode):
    """docs/theory.md §4.4: f* = −log(1 − (K−1)c′) + (K−1)c′m*, or log K when c′ ≥ 1/K; in every bias mode."""
    cases = [  # (K, n, λ, α); the last of each loss is trivial (c′ ≥ 1/K)
        (4, 5, 5e-3, 0.0), (4, 2, 1e-4, 0.0), (4, 7, 3e-2, 0.0), (4, 3, 0.2, 0.0), (10, 10, 1e-3, 0.0),
        (10, 1, 2e-3, 0.0), (4, 20, 1e-3, 0.1), (4, 2, 2e-2, 0.1), (4, 4, 0.15, 0.1),
    ]
    for K, n, lam, alpha in cases:
        loss = LabelSmoothing(alpha) if alpha else CrossEntropy()
        m, f = ce_ls_closed_form(K, np.sqrt(n) * lam, alpha)
        r = lifted_optimum(loss, [n] * K, lam, lam, _lam_b(mode, lam), mode)
        _assert_bracket(r, f)
        assert r.rank == (0 if m == 0 else K - 1)
        assert (m == 0) == (lam in (0.2, 0.15))


#: (κ, β), free-bias f*, bias-free f* at K = 4, n = 5, λ = 0.02 (docs/theory.md §4.6 reference values)
MSE_REFERENCE = [((1.0, 1.0), 0.12816408, 0.17088544), ((3.0, 2.0), 0.26532816, 0.35510421)]


@pytest.mark.parametrize("mode", ["free", "none"])
@pytest.mark.parametrize("kappa, beta", [(1.0, 1.0), (3.0, 2.0)])
def test_balanced_mse_closed_form(kappa, beta, mode):
    """docs/theory.md §4.6, through ufm.theory: ETF with a free bias, orthogonal frame without one."""
    K = 4
    for lam, n in [(0.02, 5), (1e-3, 10), (2.0, 3)]:                 # the last is trivial
        prob = Problem.create(K=K, d=K, n=n, lam=lam, lam_b=0.0, bias=mode == "free", loss=RescaledMSE(kappa, beta))
        th = theory_optimum(prob)
        r = lifted_optimum(RescaledMSE(kappa, beta), [n] * K, lam, lam, 0.0, mode)
        _assert_bracket(r, th.objective)
        assert (th.geometry == "trivial") == (lam == 2.0) and (r.rank == 0) == (lam == 2.0)
        if mode == "free":
            np.testing.assert_allclose(r.b, th.b, rtol=1e-6)   # b is only ~√gap accurate
        if (lam, n) == (0.02, 5):
            free, none = next(ref[1:] for ref in MSE_REFERENCE if ref[0] == (kappa, beta))
            assert r.value == pytest.approx(free if mode == "free" else none, abs=1e-8)


# ------------------------------------------------------------------ the full UFM, written independently in numpy


def _loss_and_grad(Z, labels, loss):
    """Mean over columns of L(z_i, y_i) and its gradient in Z (K×N), in numpy: CE/LS as lse(z) − ⟨q_k, z⟩ with
    q_k = (1 − α)e_k + α/K, MSE (6) as Σ_j c_j (z_j − t_j)², c = 1 + (κ − 1)e_k, t = βe_k."""
    K, N = Z.shape
    onehot = np.eye(K)[:, labels]
    if isinstance(loss, RescaledMSE):
        C = 1 + (loss.kappa - 1) * onehot
        D = Z - loss.beta * onehot
        return np.sum(C * D**2) / N, 2 * C * D / N
    alpha = loss.alpha if isinstance(loss, LabelSmoothing) else 0.0
    Q = (1 - alpha) * onehot + alpha / K
    m = Z.max(axis=0)
    E = np.exp(Z - m)
    S = E.sum(axis=0)
    return np.mean(m + np.log(S) - np.sum(Q * Z, axis=0)), (E / S - Q) / N


def _full_f_and_grad(x, counts, d, lam_W, lam_H, lam_b, mode, loss):
    """f of (7) for class sizes ``counts`` on x = [vec W, vec H, b] (b absent without a bias), and its gradient."""
    counts = np.asarray(counts)
    K, N = len(counts), int(counts.sum())
    W = x[:K * d].reshape(K, d)
    H = x[K * d:K * d + d * N].reshape(d, N)
    b = x[K * d + d * N:] if mode != "none" else np.zeros(K)
    g, GZ = _loss_and_grad(W @ H + b[:, None], np.repeat(np.arange(K), counts), loss)
    f = g + lam_W / 2 * np.sum(W**2) + lam_H / 2 * np.sum(H**2) + lam_b / 2 * np.sum(b**2)
    parts = [(GZ @ H.T + lam_W * W).ravel(), (W.T @ GZ + lam_H * H).ravel()]
    if mode != "none":
        parts.append(GZ.sum(axis=1) + lam_b * b)
    return f, np.concatenate(parts)


def _best_full_ufm(counts, d, lam, mode, loss, starts=3, seed=0):
    """Every L-BFGS-B value from random starts on the full UFM (7), and the smallest."""
    counts = np.asarray(counts)
    K, N = len(counts), int(counts.sum())
    size = K * d + d * N + (K if mode != "none" else 0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(starts):
        x0 = rng.normal(scale=0.5, size=size)
        res = minimize(_full_f_and_grad, x0, args=(counts, d, lam, lam, _lam_b(mode, lam), mode, loss), jac=True,
                       method="L-BFGS-B", options=dict(maxiter=20000, maxcor=30, ftol=1e-16, gtol=1e-12))
        values.append(float(res.fun))
    return min(values), values


def test_numpy_reference_gradient_is_right():
    """The independent objective's gradient against central differences (it is the yardstick below)."""
    rng = np.random.default_rng(3)
    counts, d = (3, 2, 1), 2
    x = rng.normal(size=3 * d + d * 6 + 3)
    for loss in (LabelSmoothing(0.2), RescaledMSE(3.0, 2.0)):
        f, g = _full_f_and_grad(x, counts, d, 0.1, 0.2, 0.3, "regularized", loss)
        h = 1e-6
        fd = [(_full_f_and_grad(x + h * e, counts, d, 0.1, 0.2, 0.3, "regularized", loss)[0]
               - _full_f_and_grad(x - h * e, counts, d, 0.1, 0.2, 0.3, "regularized", loss)[0]) / (2 * h)
              for e in np.eye(x.size)]
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
        # and the value is ufm's loss averaged over N plus the penalties (same objective, two codes)
        W, H, b = x[:6].reshape(3, 2), x[6:18].reshape(2, 6), x[18:]
        with jax.enable_x64(True):
            data = float(jnp.mean(loss((W @ H).T + b[None, :], np.repeat(np.arange(3), counts))))
        assert f == pytest.approx(data + 0.05 * np.sum(W**2) + 0.1 * np.sum(H**2) + 0.15 * np.sum(b**2), rel=1e-13)


@pytest.mark.parametrize("counts, d, lam, alpha, mode, expected", [
    ((30, 10, 3), 4, 1e-2, 0.0, "regularized", 0.2662682160),
    ((8, 8, 8, 1, 1), 7, 2e-3, 0.0, "regularized", 0.1037114627),
    ((5, 5, 5, 5), 6, 5e-3, 0.0, "regularized", 0.183691995718),
    ((6, 3, 1), 3, 1e-2, 0.2, "free", None),
    ((7, 2, 2, 1), 4, 5e-3, 0.1, "none", None),
])
def test_imbalanced_equals_full_ufm(counts, d, lam, alpha, mode, expected):
    """With d ≥ rank, the lifted optimum is the UFM's (docs/theory.md §5.8 table and new cases)."""
    loss = LabelSmoothing(alpha) if alpha else CrossEntropy()
    r = lifted_optimum(loss, counts, lam, lam, _lam_b(mode, lam), mode)
    assert r.converged and r.rank <= d
    if expected is not None:
        assert r.value == pytest.approx(expected, abs=1e-10)
    best, _ = _best_full_ufm(counts, d, lam, mode, loss)
    assert abs(best - r.value) <= 1e-9 * r.value, (best, r.value)
    assert r.lower <= best * (1 + 1e-14)


def test_below_rank_the_lifting_is_a_strict_lower_bound():
    """K = 6, d = 3 < K − 1, balanced CE, c = 0.01 (docs/theory.md §3.1: f = 0.3104 against the bound 0.2790)."""
    r = lifted_optimum("ce", [4] * 6, 5e-3, 5e-3, 5e-3, "regularized")
    assert r.rank == 5 and r.value == pytest.approx(0.2790, abs=1e-4)
    best, values = _best_full_ufm([4] * 6, 3, 5e-3, "regularized", CrossEntropy(), starts=2)
    assert all(r.lower <= v for v in values)
    assert best == pytest.approx(0.3104, abs=2e-4) and best - r.lower > 0.03
    with pytest.raises(UFMInputError, match="rank"):
        recover(r, 3, 5e-3, 5e-3)


# --------------------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("loss, counts, lam_W, lam_H, mode", [
    (CrossEntropy(), (30, 10, 3), 1e-2, 2e-2, "regularized"),
    (LabelSmoothing(0.2), (6, 3, 1), 2e-3, 1e-3, "free"),
    (RescaledMSE(3.0, 2.0), (5, 5, 5, 5), 5e-3, 5e-3, "none"),
    (RescaledMSE(1.0, 1.0), (9, 4, 2, 1), 1e-2, 3e-3, "free"),
])
def test_recovery_is_a_global_minimiser(loss, counts, lam_W, lam_H, mode):
    """(W, H, b) from recover() has f = value and ∇f ≈ 0 (numpy objective above), balanced factors, class-major
    collapsed columns; for balanced classes ufm.model.objective agrees."""
    lam_b = _lam_b(mode, lam_W)
    r = lifted_optimum(loss, counts, lam_W, lam_H, lam_b, mode)
    assert r.converged
    K, N = len(counts), sum(counts)
    for d in (max(r.rank, 1), r.rank + 3):
        W, H, b = recover(r, d, lam_W, lam_H, counts, mode)
        assert W.shape == (K, d) and H.shape == (d, N) and (b is None) == (mode == "none")
        start = 0
        for n_k in counts:                              # class-major, each class's columns equal
            np.testing.assert_allclose(H[:, start:start + n_k], H[:, [start] * n_k], atol=1e-15)
            start += n_k
        x = np.concatenate([W.ravel(), H.ravel()] + ([] if b is None else [b]))
        value, grad = _full_f_and_grad(x, counts, d, lam_W, lam_H, lam_b, mode, loss)
        assert abs(value - r.value) <= REL * r.value, (value, r.value)
        assert np.linalg.norm(grad) < 1e-7, np.linalg.norm(grad)    # an ε-optimal point: ‖∇f‖ = O(√ε)
        np.testing.assert_allclose(lam_W * W.T @ W, lam_H * H @ H.T, atol=1e-12)
        if len(set(counts)) == 1:
            with jax.enable_x64(True):
                f = objective(Params(W, H, b), Reg(lam_W, lam_H, lam_b), Shape(K, d, counts[0], b is not None, loss))
            assert float(f) == pytest.approx(r.value, rel=REL)


def test_recover_refuses_mismatches():
    r = lifted_optimum("ce", (30, 10, 3), 1e-2, 1e-2, 1e-2, "regularized")
    with pytest.raises(UFMInputError):
        recover(r, 3, 1e-2, 2e-2)                       # another μ
    with pytest.raises(UFMInputError):
        recover(r, 3, 1e-2, 1e-2, counts=(3, 2, 2))
    with pytest.raises(UFMInputError):
        recover(r, 3, 1e-2, 1e-2, bias=False)
    with pytest.raises(UFMInputError):
        recover(r, 3, 0.0, 1e-2)


# ------------------------------------------------------------------------------------- the bound is proven


@pytest.mark.parametrize("loss, mode", [(CrossEntropy(), "free"), (LabelSmoothing(0.1), "regularized"),
                                        (RescaledMSE(3.0, 2.0), "free"), (CrossEntropy(), "none")])
@pytest.mark.parametrize("max_iter", [1, 3, 10, 40])
def test_truncated_runs_still_give_a_valid_bound(loss, mode, max_iter):
    """lower is the value of a dual-feasible point: below the true optimum however early the solver stops."""
    counts, lam = (9, 4, 2, 1), 3e-3
    full = lifted_optimum(loss, counts, lam, lam, _lam_b(mode, lam), mode)
    r = lifted_optimum(loss, counts, lam, lam, _lam_b(mode, lam), mode, max_iter=max_iter)
    assert r.iterations == max_iter and not r.converged and r.status == "max_iter"
    assert r.lower <= full.lower + 1e-15 and r.lower <= r.value
    assert r.value >= full.value - 1e-15
    assert r.gap == pytest.approx(r.value - r.lower)


def test_time_cap_is_honest():
    r = lifted_optimum("ce", [3] * 10, 1e-4, 1e-4, 0.0, "free", tol=0.0, max_seconds=0.05)
    assert r.status in ("max_seconds", "max_iter") and not r.converged
    assert r.lower <= r.value


# ------------------------------------------------------------------------------------------ losses and input


def test_focal_loss_is_refused():
    with pytest.raises(UFMInputError, match="convex"):
        lifted_optimum(FocalLoss(2.0), (3, 3), 1e-2, 1e-2, 1e-2, "regularized")
    with pytest.raises(ValueError):
        lifted_optimum("fl", (3, 3), 1e-2, 1e-2, 1e-2, "regularized")


def _user_ce(z, y):
    return jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]


def test_undeclared_user_loss_is_refused():
    with pytest.raises(UFMInputError, match="fn.convex = True"):
        lifted_optimum(_user_ce, (3, 3), 1e-2, 1e-2, 1e-2, "regularized")


def test_convexity_declarations():
    assert CrossEntropy().convex_in_logits and LabelSmoothing(0.1).convex_in_logits
    assert RescaledMSE().convex_in_logits and not FocalLoss(1.0).convex_in_logits

    def declared(z, y):
        return _user_ce(z, y)

    declared.convex = True
    assert as_loss(declared).convex and as_loss(declared).convex_in_logits
    assert not as_loss(_user_ce).convex_in_logits

    def truthy(z, y):
        return _user_ce(z, y)

    truthy.convex = "yes"                               # only the literal True declares
    assert not as_loss(truthy).convex_in_logits


def test_load_user_loss_reads_the_declaration(tmp_path, monkeypatch):
    (tmp_path / "lifting_user_loss_mod.py").write_text(
        "import jax\nimport jax.numpy as jnp\n"
        "def ce(z, y):\n    return jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]\n"
        "ce.convex = True\n"
        "def plain(z, y):\n    return ce(z, y)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert as_loss("lifting_user_loss_mod:ce").convex_in_logits
    assert not as_loss("lifting_user_loss_mod:plain").convex_in_logits


@pytest.mark.parametrize("mode", ["regularized", "free"])
def test_declared_user_loss_matches_ce(mode):
    def user(z, y):
        return _user_ce(z, y)

    user.convex = True
    counts, lam = (30, 10, 3), 1e-2
    ce = lifted_optimum("ce", counts, lam, lam, _lam_b(mode, lam), mode)
    r = lifted_optimum(user, counts, lam, lam, _lam_b(mode, lam), mode)
    assert abs(r.value - ce.value) <= REL * ce.value
    assert "L ≥ 0" in r.method or mode == "free"
    if mode == "free":                                  # no conjugate and an unbounded b: no bound, honestly
        assert r.lower is None and r.gap is None and not r.converged and r.status == "stalled"
    else:
        assert r.converged and r.lower <= ce.value * (1 + 1e-14)
        early = lifted_optimum(user, counts, lam, lam, _lam_b(mode, lam), mode, max_iter=5)
        assert early.lower <= ce.value


@pytest.mark.parametrize("kwargs, flag", [
    (dict(counts=(3,)), "--counts"), (dict(counts=(3, 0)), "--counts"), (dict(counts=(3, 1.5)), "--counts"),
    (dict(lam_W=0.0), "--lam-w"), (dict(lam_H=-1.0), "--lam-h"),
    (dict(bias_mode="regularized", lam_b=0.0), "--lam-b"), (dict(bias_mode="free", lam_b=1e-2), "--lam-b"),
    (dict(bias_mode="fixed"), "--bias"),
])
def test_bad_input_is_refused(kwargs, flag):
    args = dict(loss="ce", counts=(3, 2), lam_W=1e-2, lam_H=1e-2, lam_b=1e-2, bias_mode="regularized")
    args.update(kwargs)
    with pytest.raises(UFMInputError) as exc:
        lifted_optimum(**args)
    assert exc.value.flag == flag


def test_bias_mode_defaults_from_lam_b():
    assert lifted_optimum("ce", (3, 2), 1e-2, 1e-2, 1e-2).bias_mode == "regularized"
    assert lifted_optimum("ce", (3, 2), 1e-2, 1e-2).bias_mode == "free"


def test_public_names():
    assert ufm.lifted_optimum is lifted_optimum and ufm.Lifted is Lifted
    r = lifted_optimum("ce", (2, 2, 2, 2), 1e-2, 1e-2, 0.0, "free")
    assert isinstance(r.as_dict()["A"], list) and r.as_dict()["counts"] == [2, 2, 2, 2]
