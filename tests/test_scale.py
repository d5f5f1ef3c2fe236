"""Solving at scale: Newton-CG's forcing rules, the work counters (Solution.work) and the phase-wise memory model."""

import jax
import numpy as np
import pytest

import ufm
from ufm.methods import NewtonCG
from ufm.resources import RUNTIME_BYTES, estimate, peak_rss

SMALL = dict(K=4, d=6, n=5, lam=5e-3)


def _counted_ce():
    """CE through a user loss that counts its own evaluations: every value-and-gradient and every Hessian-vector
    product runs the loss's forward pass exactly once (an independent count of the solver's work)."""
    calls = [0]

    def loss(z, y):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return ufm.losses.CrossEntropy()(z, y)

    return loss, calls


@pytest.mark.parametrize("max_steps", [200])
def test_the_work_counters_count_every_evaluation(max_steps):
    from ufm.secondorder import second_order_check

    loss, calls = _counted_ce()
    prob = ufm.Problem.create(**SMALL, loss=loss)
    calls[0] = 0                                          # Problem.create evaluates the loss to check it
    sol = ufm.solve(prob, solver="newton", max_steps=max_steps)
    in_solve = calls[0]
    if sol.second_order is not None:      # a stationary end point is tested for descent after: not the solver's work
        calls[0] = 0
        second_order_check(prob, sol.params, sol.rel_grad_norm)
        in_solve -= calls[0]
    assert sol.converged == (max_steps == 200)
    w = sol.work
    assert in_solve == w["value_grad"] + w["hvp"]         # nothing evaluated that the counters miss, nothing thrown away
    assert w["newton_steps"] == sol.steps and w["hvp"] >= sol.steps
    assert w["value_grad"] >= sol.steps + 1 and 1 <= w["cg_max"] <= NewtonCG.cg_max


def test_lbfgs_evaluations_are_counted():
    loss, calls = _counted_ce()
    prob = ufm.Problem.create(**SMALL, loss=loss)
    calls[0] = 0
    sol = ufm.solve(prob, solver="lbfgs", max_steps=20, gtol=1e-30)
    assert sol.work["hvp"] == 0 and calls[0] == sol.work["value_grad"] >= sol.steps


@pytest.mark.parametrize("loss, kw", [("mse", dict(kappa=2.0, lam_b=0.0))])    # CE: the test below
def test_both_forcing_rules_reach_the_same_point(loss, kw):
    prob = ufm.Problem.create(**SMALL, loss=loss, **kw)
    a, b = (ufm.solve(prob, solver=NewtonCG(forcing=rule)) for rule in ("sqrt", "ew"))
    assert a.converged and b.converged and max(a.grad_norm, b.grad_norm) <= 1e-9
    # ‖∇f‖ ≤ 1e-9 at a minimum of f with curvature ≥ λ_min⊥ puts both within ‖∇f‖/λ_min⊥ of it, and f within
    # ‖∇f‖²/λ_min⊥; at this λ that is round-off in f and ≲ 1e-8 in the orbit invariant WH
    assert a.objective == pytest.approx(b.objective, rel=1e-14, abs=1e-15)
    assert a.objective == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-12)
    np.testing.assert_allclose(a.params.W @ a.params.H, b.params.W @ b.params.H, atol=1e-8)


def test_eisenstat_walker_forcing_saves_hessian_products():
    # a measured instance (seed 0): the sqrt rule solves the early, far-from-quadratic Newton systems to η ≈ 0.1–0.3
    # of ‖∇f‖, Eisenstat–Walker to what the observed decrease warrants
    prob = ufm.Problem.create(K=10, d=20, n=10, lam=1e-4)
    a, b = (ufm.solve(prob, solver=NewtonCG(forcing=rule)) for rule in ("sqrt", "ew"))
    assert a.converged and b.converged and max(a.grad_norm, b.grad_norm) <= 1e-9
    assert b.work["hvp"] < 0.5 * a.work["hvp"]           # measured 65 against 243
    assert a.objective == pytest.approx(b.objective, rel=1e-14)
    assert a.objective == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-12)


def test_an_unknown_forcing_rule_is_refused():
    with pytest.raises(ufm.UFMInputError, match="^forcing: "):
        ufm.solve(ufm.Problem.create(**SMALL), solver=NewtonCG(forcing="exact"))


def test_the_memory_model_takes_the_larger_phase():
    prob = ufm.Problem.create(K=100, d=100, n=1000, lam=1e-4)        # 10⁷ parameters; nothing is allocated here
    P, NK = prob.num_params, prob.N * prob.K
    from ufm.eigensolvers import vectors_kept

    solve_only = estimate(prob, solver="newton")
    jax_est = estimate(prob, solver="newton", hessian="lanczos", eigensolver="jax")
    arpack = estimate(prob, solver="newton", hessian="lanczos", eigensolver="arpack")
    assert jax_est.phases["analysis"]["eigensolver vectors"] == vectors_kept(P) * P * 8
    assert arpack.phases["analysis"]["Lanczos vectors"] > jax_est.phases["analysis"]["eigensolver vectors"]
    # the solve and the analysis do not overlap: the peak is the larger of the two, not their sum
    phase = {k: sum(v.values()) for k, v in jax_est.phases.items()}
    assert jax_est.total == max(phase.values()) + sum(jax_est.parts.values())
    assert solve_only.total < jax_est.total < sum(phase.values())
    f32 = estimate(prob, solver="newton", hessian="lanczos", eigensolver="jax", hessian_dtype="float32")
    assert f32.phases["analysis"]["eigensolver vectors"] * 2 == jax_est.phases["analysis"]["eigensolver vectors"]
    assert peak_rss(prob, solver="newton") == solve_only.total + RUNTIME_BYTES
    assert "solve: parameters and solver state" in jax_est.describe() and "analysis: eigensolver vectors" in \
        jax_est.describe()
    assert NK * 8 * 10 == jax_est.phases["solve"]["logits and their derivatives"]


@pytest.mark.slow            # compiles the landscape analysis (~13 s under load)
def test_landscape_json_reports_the_solve_work(capsys):
    from ufm.cli import main

    code = main(["landscape", "-K", "3", "-d", "4", "-n", "2", "--lam", "5e-3", "--at", "solution", "--json"])
    import json
    rec = json.loads(capsys.readouterr().out)
    assert code == 0 and rec["solve"]["status"] == "converged"
    w = rec["solve"]["work"]
    assert w["newton_steps"] == rec["solve"]["steps"] and w["hvp"] >= w["newton_steps"] and w["value_grad"] > 0
    assert rec["solve"]["wall_time_s"] > 0
