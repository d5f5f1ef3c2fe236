"""The bracket on the global optimum in every solve record, sweep row and landscape point (ufm/bounds.py): the three
kinds of answer, agreement with the closed forms, and classification against it (a spurious FL minimum, a global
minimiser with imbalanced classes)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.bounds import CERTIFY_RTOL, certified, problem_bounds
from ufm.critical import analyze_point, origin
from ufm.report import solution_record
from ufm.theory import theory_optimum


@pytest.mark.parametrize("kw", [
    dict(K=4, d=3, n=5, lam=5e-3, loss="ce"),
    dict(K=4, d=6, n=5, lam=5e-3, loss="ls", alpha=0.2, lam_b=0.0),
    dict(K=3, d=4, n=5, lam=0.2, loss="ce"),                              # trivial collapse: f* = log K
    dict(K=4, d=6, n=5, lam=1e-2, loss="mse", kappa=2.0, beta=1.5, lam_b=0.0),
    dict(K=4, d=6, n=5, lam=1e-2, loss="mse", bias=False),
    dict(K=4, d=4, n=3, lam=5e-3, loss="fl", gamma=2.0),                 # convex φ: the envelope meets the NC value
])
def test_balanced_bounds_meet_the_closed_form(kw):
    p = ufm.Problem.create(**kw)
    b, th = problem_bounds(p), theory_optimum(p)
    assert th.applies and b.certified, (b, th.reason)
    assert b.lower == pytest.approx(th.objective, rel=1e-10) and b.upper == pytest.approx(th.objective, rel=1e-10)


def test_imbalanced_solve_is_certified_and_the_record_says_so():
    p = ufm.Problem.create(4, 6, (20, 20, 2, 2), lam=5e-3)
    rec = solution_record(ufm.solve(p))
    b = rec["bounds"]
    assert b["method"] == "convex_lifting" and b["certified"] is True and b["rank"] == 3
    # a proven bound, up to float64 round-off in two different summations (seen: lower above f by 1 ulp)
    assert b["lower"] <= rec["objective"] * (1 + 1e-14) and abs(b["solution_rel_gap"]) <= 1e-9
    assert b["detail"]["lifted_point_objective"] == pytest.approx(rec["objective"], rel=1e-9)
    json.dumps(rec, allow_nan=False)


def test_below_the_lifted_rank_a_bracket_whose_upper_is_the_solution():
    p = ufm.Problem.create(6, 3, 4, lam=5e-3)
    rec = solution_record(ufm.solve(p))
    b = rec["bounds"]
    assert b["rank"] > p.d and b["certified"] is False
    assert b["upper_from"] == "solution" and b["upper"] == rec["objective"]
    assert b["lower"] < rec["objective"] - 1e-3                       # 0.2790 against 0.3104 (docs/theory.md)


def test_no_bound_for_undeclared_user_losses_and_imbalanced_fl():
    def my_ce(z, y):
        return jax_ce(z, y)

    p = ufm.Problem.create(3, 3, 4, lam=1e-2, loss=my_ce)
    b = problem_bounds(p)
    assert b.method == "none" and b.lower is None and "convex" in b.reason
    my_ce.convex = True                                                 # declared: the lifting applies
    p2 = ufm.Problem.create(3, 3, 4, lam=1e-2, loss=ufm.as_loss(my_ce))
    b2 = problem_bounds(p2)
    ce = problem_bounds(ufm.Problem.create(3, 3, 4, lam=1e-2))
    assert b2.method == "convex_lifting" and b2.lower <= ce.upper * (1 + 1e-9)
    fl = problem_bounds(ufm.Problem.create(3, 3, (4, 2, 1), lam=1e-2, loss="fl"))
    assert fl.method == "none" and fl.lower is None


def jax_ce(z, y):
    return -jnp.take_along_axis(z - jax_logsumexp(z), y[:, None], axis=1)[:, 0]


def jax_logsumexp(z):
    import jax

    return jax.nn.logsumexp(z, axis=1, keepdims=True)


def test_a_spurious_focal_loss_minimum_is_named():
    # K = 100, γ = 3, n = 1, λ = 0.0113 (docs/theory.md §4.5): the origin is a second-order minimum (c > φ′(0)) with
    # f = 4.468, above the NC point's 4.357: provably not global. d = K − 1 so that the NC point exists
    p = ufm.Problem.create(100, 99, 1, lam=0.0113, loss="fl", gamma=3.0)
    cp = analyze_point(p, origin(p), hessian="lanczos")
    assert cp.min_eig_deflated > 0 and cp.classification == "spurious_local_minimizer"
    assert cp.bounds["upper"] == pytest.approx(4.35652631, rel=1e-8) and cp.bounds["certified"] is False
    assert cp.bounds["lower"] == pytest.approx(4.02257915, rel=1e-8)


@pytest.mark.slow   # time (7 s); the imbalanced certificate stays in the default run
def test_an_imbalanced_optimum_is_a_global_minimizer_by_its_hessian():
    p = ufm.Problem.create(3, 4, (5, 2, 1), lam=1e-2, loss="ls")
    sol = ufm.solve(p)
    cp = analyze_point(p, sol.params, hessian="dense")
    assert cp.classification == "global_minimizer" and cp.bounds["method"] == "convex_lifting"


def test_certified_is_relative_and_needs_both_numbers():
    assert certified(1.0, 1.0 + 0.5 * CERTIFY_RTOL) and not certified(1.0, 1.0 + 2 * CERTIFY_RTOL)
    assert not certified(None, 1.0) and not certified(1.0, None) and not certified(np.nan, np.nan)


def test_human_output_names_each_kind_of_answer(capsys):
    from ufm.cli import main
    from ufm.render import render_bounds

    assert main(["solve", "-K", "3", "-d", "3", "-n", "4,2,1", "--lam", "1e-2"]) == 0        # through the command
    assert "certified optimum; the solution is at it" in capsys.readouterr().out
    bracket = problem_bounds(ufm.Problem.create(4, 2, 3, lam=5e-3)).record()
    text = "\n".join(render_bounds(bracket))
    assert "a lower bound only, since d = 2 < rank" in text and bracket["upper"] is None
    text = "\n".join(render_bounds(dict(bracket, upper=bracket["lower"] + 0.1, gap=0.1, certified=False)))
    assert "open bracket, width 1.000e-01" in text
    none = problem_bounds(ufm.Problem.create(3, 3, (4, 2, 1), lam=1e-2, loss="fl")).record()
    assert render_bounds(none)[0].startswith("bounds: no lower bound — focal loss with unequal class sizes")


def test_sweep_rows_carry_the_bracket():
    from ufm.grid import SweepOptions
    from ufm.sweep import evaluate_point

    point = dict(K=3, d=3, n=4, minority=1, ratio=4.0, loss="ce", gamma=None, alpha=None, kappa=None, beta=None,
                 lam_W=1e-2, lam_H=1e-2, lam_b=1e-2, bias="regularized", seed=0)
    row = evaluate_point(point, SweepOptions())
    assert row["status"] == "converged" and row["certified"] is True and row["bound_method"] == "convex_lifting"
    assert row["lower_bound"] <= row["objective"] <= row["upper_bound"] * (1 + 1e-12)
    assert abs(row["bound_rel_gap"]) <= 1e-9


def test_a_capped_lifting_still_gives_a_proven_bound(monkeypatch):
    import ufm.bounds as bounds

    p = ufm.Problem.create(4, 6, (20, 20, 2, 2), lam=5e-3)
    full = bounds.problem_bounds(p)
    monkeypatch.setattr(bounds, "LIFTING_MAX_SECONDS", 1e-9)
    bounds._problem_bounds.cache_clear()
    try:
        capped = bounds.problem_bounds(p)
    finally:
        bounds._problem_bounds.cache_clear()
    assert "cap" in capped.reason and not capped.certified
    assert capped.lower is None or capped.lower <= full.upper * (1 + 1e-14)


def test_no_bounds_flag(capsys):
    from ufm.cli import main

    assert main(["solve", "-K", "3", "-d", "3", "-n", "2", "--lam", "1e-2", "--no-bounds", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bounds"] is None


def test_mse_with_a_regularised_bias_has_no_closed_form_but_a_certified_optimum():
    # theory gives nothing here (docs/theory.md §4.6); the lifting certifies the solve's value
    p = ufm.Problem.create(4, 6, (6, 3, 1, 2), lam=1e-2, loss="mse", kappa=2.0, beta=1.5)
    rec = solution_record(ufm.solve(p))
    assert rec["theory"]["applies"] is False and rec["bounds"]["certified"] is True
    assert abs(rec["bounds"]["solution_rel_gap"]) <= 1e-9
