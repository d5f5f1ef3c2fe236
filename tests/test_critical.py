"""Classification by measurement: NC minima, the origin on both sides of its threshold, the §4.1 direction, the MSE
saddle family, non-critical points, the certificate, and an LS census with escapes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
import ufm.report
from ufm.landscape import census, same_orbit
from ufm.critical import (Tolerances, analyze_point, mse_saddle_point, origin,
                          origin_min_eig_theory)
from ufm.methods import FirstOrder
from ufm.model import flatten
from ufm.theory import phi_prime0

SMALL = dict(K=4, d=6, n=5, lam=5e-3)


# CE and MSE in the default run (the two certificate families); LS, FL and the other bias modes in the slow tier (time)
@pytest.mark.parametrize("kw", [dict(loss="ce"), pytest.param(dict(loss="ls", alpha=0.1), marks=pytest.mark.slow),
                                pytest.param(dict(loss="fl", gamma=2.0), marks=pytest.mark.slow),
                                pytest.param(dict(loss="ce", lam_b=0.0), marks=pytest.mark.slow),
                                dict(loss="mse", kappa=2.0, lam_b=0.0),
                                pytest.param(dict(loss="mse", kappa=2.0, bias=False), marks=pytest.mark.slow)])
def test_solution_is_global_minimizer_by_both_methods(kw):
    prob = ufm.Problem.create(**{**SMALL, **kw})
    sol = ufm.solve(prob, gtol=1e-10)
    dense = analyze_point(prob, sol.params, hessian="dense")
    lanczos = analyze_point(prob, sol.params, hessian="lanczos")
    for cp in (dense, lanczos):
        assert cp.classification == "global_minimizer"
        assert cp.eig_residual < 1e-8
    # zero modes: rotations of a rank-r W, r = K − 1 for the ETF, K for the MSE orthogonal frame, + free softmax shift
    r = 4 if kw.get("bias") is False else 3
    expected = 6 * 5 // 2 - (6 - r) * (6 - r - 1) // 2 + int(kw.get("lam_b") == 0.0 and kw["loss"] != "mse")
    assert dense.expected_zero_modes == expected and dense.n_zero == expected and dense.rank_W == r
    assert lanczos.n_zero == expected                    # matrix-free: via deflation, not by counting Lanczos copies
    assert dense.min_eig_deflated == pytest.approx(lanczos.min_eig_deflated, rel=1e-7)
    assert dense.max_eig == pytest.approx(lanczos.max_eig, rel=1e-9)
    if kw["loss"] in ("ce", "ls", "mse"):
        assert dense.certificate["holds"]
        np.testing.assert_allclose(dense.certificate["singular_values_grad_Z"][:3], np.sqrt(5e-3 * 5e-3), rtol=1e-6)


# CE and FL (γ = 3: the far end) on both sides of the threshold in the default run; LS and FL γ = 1 in the slow tier
@pytest.mark.parametrize("loss, kw", [("ce", {}), pytest.param("ls", dict(alpha=0.2), marks=pytest.mark.slow),
                                      pytest.param("fl", dict(gamma=1.0), marks=pytest.mark.slow),
                                      ("fl", dict(gamma=3.0))])
@pytest.mark.parametrize("side", [0.8, 1.25])
def test_origin_eigenvalue_and_class_flip(loss, kw, side):
    # docs/theory.md §5.4: λ_min = λ − φ′(0)/√n at λ_W = λ_H = λ, a strict saddle iff √(nλ²) = nλ/√n... < φ′(0)
    K, n = 4, 5
    lam = side * phi_prime0(ufm.as_loss(loss, **kw), K) / np.sqrt(n)        # c = √n·λ = side·φ′(0)
    prob = ufm.Problem.create(K, 6, n, lam=lam, bias=False, loss=loss, **kw)
    for method in ("dense", "lanczos"):
        cp = analyze_point(prob, origin(prob), hessian=method)
        assert cp.min_eig == pytest.approx(origin_min_eig_theory(prob), rel=1e-9, abs=1e-12)
        assert cp.classification == ("strict_saddle" if side < 1 else "global_minimizer")
        # the explicit §4.1 direction at the origin has exactly this curvature
        assert cp.nc_direction["measured_curvature"] == pytest.approx(cp.nc_direction["predicted_curvature"], rel=1e-9)
        assert cp.nc_direction["predicted_curvature"] == pytest.approx(cp.min_eig, rel=1e-9)


def test_origin_at_the_threshold_is_degenerate():
    K, n = 4, 5
    prob = ufm.Problem.create(K, 6, n, lam=(1 / K) / np.sqrt(n), bias=False)   # c = φ′(0) exactly
    cp = analyze_point(prob, origin(prob))
    assert cp.classification == "degenerate" and cp.n_zero > cp.expected_zero_modes == 0


def test_mse_rank_deficient_saddles():
    prob = ufm.Problem.create(4, 6, 5, lam=0.01, loss="mse", bias=False)
    for r in range(5):
        cp = analyze_point(prob, mse_saddle_point(prob, r))
        assert cp.grad_norm < 1e-12                         # the construction is an exact critical point
        assert cp.classification == ("global_minimizer" if r == 4 else "strict_saddle")


def test_negative_curvature_direction_at_a_saddle():
    # a rank-deficient LS saddle from the census (d > K): Δ of §4.1 has curvature 2(√(λ_Wλ_H) − σ_max) < 0
    prob = ufm.Problem.create(3, 4, 2, lam=0.05, loss="ls", alpha=0.1)
    cs = census(prob, starts=4, with_escape=False)
    saddle = next(p for p in cs.points if p.classification == "strict_saddle" and p.rank_W > 0)
    d = saddle.nc_direction
    assert d["predicted_curvature"] < 0
    assert d["measured_curvature"] == pytest.approx(d["predicted_curvature"], rel=1e-8)
    assert d["measured_curvature"] >= saddle.min_eig - 1e-12        # a Rayleigh quotient cannot go below λ_min


def test_not_critical_is_never_a_minimizer_or_saddle(rng):
    prob = ufm.Problem.create(**SMALL)
    x = rng.normal(size=prob.num_params)
    for method in ("dense", "lanczos"):
        assert analyze_point(prob, x, hessian=method).classification == "not_critical"
    sol = ufm.solve(prob, max_steps=3)
    assert analyze_point(prob, sol.params).classification == "not_critical"


def test_certificate_fails_at_a_saddle():
    prob = ufm.Problem.create(**SMALL, loss="ls", alpha=0.1)
    cert = analyze_point(prob, origin(prob)).certificate
    assert not cert["holds"] and cert["sigma_max_grad_Z"] > cert["sqrt_lam_W_lam_H"]


def test_focal_has_no_convex_certificate():
    prob = ufm.Problem.create(**SMALL, loss="fl", gamma=2.0)
    assert analyze_point(prob, origin(prob)).certificate is None


def test_explicit_zero_tolerance_is_used():
    prob = ufm.Problem.create(**SMALL)
    cp = analyze_point(prob, ufm.solve(prob).params, tolerances=Tolerances(zero_tol=1.0))
    assert cp.zero_tol == 1.0 and cp.classification == "degenerate"     # every eigenvalue now counts as zero


def test_ls_census_is_benign_and_every_escape_reaches_the_optimum():
    # Thm 3.2 (docs/theory.md §5.1) for LS with d > K, checked by measurement
    prob = ufm.Problem.create(3, 4, 2, lam=0.05, loss="ls", alpha=0.1)
    cs = census(prob, starts=12)
    f_star = ufm.theory_optimum(prob).objective
    assert cs.converged == 12 and len(cs.points) >= 2
    assert {p.classification for p in cs.points} <= {"global_minimizer", "strict_saddle"}
    saddles = [p for p in cs.points if p.classification == "strict_saddle"]
    assert saddles
    for p in saddles:
        assert p.escape["classification"] == "global_minimizer"
        assert p.escape["objective"] == pytest.approx(f_star, rel=1e-9)
    # deduplication is up to rotation: a rotated copy is the same orbit
    x = cs.points[-1].x
    W, H, b = ufm.model.unflatten(x, prob.shape)
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    assert same_orbit(prob, x, flatten(ufm.Params(W @ Q, Q.T @ H, b), xp=np))


# ------------------------------------------------------------------------------------ NaN/inf never classify as critical

from ufm.critical import CLASSES, DENSE_HARD_MAX_PARAMS, classify          # noqa: E402
from ufm.errors import UFMInputError                                      # noqa: E402


def _nan_loss(z, y):
    return jnp.sum(z, axis=1) * jnp.nan


@jax.custom_jvp
def _kink(z):
    return 0.5 * z * jnp.abs(z)


@_kink.defjvp
def _kink_jvp(primals, tangents):
    # a finite first derivative |z| whose own derivative at 0 is NaN (0/0 in sqrt's): f and ∇f finite, ∇²f NaN
    return _kink(primals[0]), jnp.sqrt(primals[0] ** 2) * tangents[0]


def _kinked_ce(z, y):
    return ufm.losses.CrossEntropy()(z, y) + jnp.sum(_kink(z), axis=1)


TINY = dict(K=3, d=4, n=2, lam=0.05)


@pytest.mark.parametrize("method", ["dense", "lanczos"])
@pytest.mark.parametrize("case", ["nan_loss", "inf_entry", "nan_entry", "huge_entries", "huge_one_entry"])
def test_nonfinite_point_is_never_a_minimizer_or_saddle(method, case):
    prob = ufm.Problem.create(**TINY, loss=_nan_loss if case == "nan_loss" else "ce")
    x = np.full(prob.num_params, 0.1)
    if case in ("inf_entry", "nan_entry"):
        x[5] = np.inf if case == "inf_entry" else np.nan
    elif case == "huge_entries":
        x[:] = 1e308
    elif case == "huge_one_entry":
        x[0] = 1e308
    cp = analyze_point(prob, x, hessian=method)           # must not raise (eigh / ARPACK / svd on NaN)
    assert cp.classification == "nonfinite"
    assert cp.not_finite and set(cp.not_finite) <= {"point", "objective", "gradient", "hessian"}
    assert cp.n_negative is None and cp.n_zero is None and cp.certificate is None and cp.nc_direction is None
    rec = ufm.report.json_safe(cp.record())
    json.dumps(rec, allow_nan=False)                      # strict JSON: NaN became null
    assert rec["classification"] == "nonfinite"


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_nan_curvature_at_a_critical_point_is_nonfinite(method):
    # f and ∇f finite and ‖∇f‖ = 0 at the origin, but ∇²f is NaN: no class may be read off NaN eigenvalues
    prob = ufm.Problem.create(**TINY, loss=_kinked_ce)
    cp = analyze_point(prob, origin(prob), hessian=method)
    assert np.isfinite(cp.objective) and cp.grad_norm < 1e-12
    assert cp.classification == "nonfinite" and cp.not_finite == ["hessian"]


def test_classify_needs_finite_numbers_for_every_class():
    tol = Tolerances()
    good = dict(objective=1.0, grad_norm=0.0, min_eig=1.0, min_eig_deflated=1.0, zero_tol=1e-8, lower=1.0, upper=1.0)
    assert classify(**good, tolerances=tol) == "global_minimizer"
    for key in good:
        for bad in (np.nan, np.inf, -np.inf):
            cls = classify(**{**good, key: bad}, tolerances=tol)
            if key in ("lower", "upper"):                 # no usable bound: measured, not compared
                assert cls == "local_minimizer"
            else:
                assert cls == "nonfinite", (key, bad, cls)
    assert classify(**{**good, "grad_norm": 1.0, "min_eig": np.nan}, tolerances=tol) == "not_critical"
    assert "nonfinite" in CLASSES


@pytest.mark.parametrize("objective, lower, upper, want", [
    (1.0, 1.0, 1.0, "global_minimizer"),
    (1.0 + 1e-12, 1.0, 1.0, "global_minimizer"),              # meets a certified bracket within obj_tol
    (1.1, 1.0, 1.0, "spurious_local_minimizer"),              # above an attained value: provably not global
    (1.1, 0.9, 1.0, "spurious_local_minimizer"),              # above upper, whatever the lower bound
    (0.95, 0.9, 1.0, "local_minimizer"),                      # inside an open bracket
    (1.0, 0.9, 1.0, "local_minimizer"),                       # meets upper, but the bracket is open
    (1.0, None, 1.0, "local_minimizer"),                      # no lower bound: cannot certify
    (1.1, None, 1.0, "spurious_local_minimizer"),
    (1.0, 0.5, None, "local_minimizer"),                      # a lower bound alone never names a class
])
def test_classify_by_the_bracket(objective, lower, upper, want):
    got = classify(objective, 0.0, 1.0, 1.0, 1e-8, lower, upper, Tolerances())
    assert got == want


@pytest.mark.parametrize("field, flag", [("grad_tol", "--grad-tol"), ("zero_tol", "--zero-tol"), ("obj_tol", "obj_tol")])
@pytest.mark.parametrize("value", [0.0, -1e-8, float("nan"), float("inf")])
def test_tolerances_must_be_finite_and_positive(field, flag, value):
    with pytest.raises(UFMInputError, match=flag):
        Tolerances(**{field: value})


def test_dense_hessian_refused_before_any_work(monkeypatch):
    import ufm.critical as critical

    def boom(*a, **k):
        raise AssertionError("the Hessian was formed before the size check")

    monkeypatch.setattr(critical, "dense_hessian", boom)
    monkeypatch.setattr(critical, "value_and_grad", boom)
    big = ufm.Problem.create(10, 100, 100)                 # 101 010 parameters: ~600 GiB dense, aborted inside XLA
    with pytest.raises(UFMInputError, match=r"--hessian.*needs about .*GiB.*lanczos"):
        analyze_point(big, np.zeros(big.num_params), hessian="dense")
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "1T")          # memory fits: the O(P³) eigh is still refused
    mid = ufm.Problem.create(10, 20, 100)
    assert mid.num_params > DENSE_HARD_MAX_PARAMS
    with pytest.raises(UFMInputError, match=r"--hessian.*hours.*lanczos"):
        analyze_point(mid, np.zeros(mid.num_params), hessian="dense")
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "10K")              # below even a 39-parameter Hessian
    with pytest.raises(UFMInputError, match="--hessian"):
        analyze_point(ufm.Problem.create(**TINY), np.zeros(ufm.Problem.create(**TINY).num_params), hessian="dense")


# ------------------------------------------------------------------------------------------------------------ escapes

from ufm.landscape import escape, find_critical_point                     # noqa: E402


@pytest.fixture(scope="module")
def stalling_saddle():
    # a CE saddle (K = d = 5) found by the census's LM run from seed 11 at scale 1 (the default Newton-CG chain
    # stalled next to it at ‖∇f‖ ≈ 3e-6 until the stall rule counted falls of f as progress; it now goes through)
    prob = ufm.Problem.create(5, 5, 2, lam=0.03)
    sol = find_critical_point(prob, seed=11, scale=1.0)
    cp = analyze_point(prob, sol.params)
    assert cp.classification == "strict_saddle"
    return prob, cp


@pytest.mark.slow   # its fixture builds a strict saddle and the escape runs several solvers: ~20 s
def test_escape_keeps_going_when_the_descent_run_stalls(stalling_saddle):
    prob, cp = stalling_saddle
    # a first solver that stops short for certain (gradient descent at a step of 1e-6 crawls for its 10⁴ steps):
    # the next one must continue from where it stopped
    crawl = FirstOrder("gd", 1e-6)
    e = escape(prob, cp, solvers=(crawl, "lbfgs", "newton"))
    first = e["attempts"][0]
    assert first["solver"] is crawl and first["classification"] == "not_critical"
    assert e["classification"] == "global_minimizer" and not e["gave_up"] and e["reason"] is None
    assert e["objective"] == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-9)
    assert len(e["attempts"]) >= 2 and e["attempts"][-1]["classification"] == "global_minimizer"


def test_escape_says_when_it_gives_up(stalling_saddle):
    prob, cp = stalling_saddle
    e = escape(prob, cp, solvers=("lbfgs",), max_steps=2)
    assert e["gave_up"] is True and "stopped short" in e["reason"]
    assert e["classification"] == "not_critical"
    assert [a["step"] for a in e["attempts"]] == [pytest.approx(s * max(1.0, np.linalg.norm(cp.x))) for s in (1e-2, 1e-1)]
