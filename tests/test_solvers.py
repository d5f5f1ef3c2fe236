"""Solvers: every status produced, refinement to 1e-10, reproducibility, compile-once over λ, trivial collapse."""

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.solvers import LBFGS, Chain, NewtonCG, Status, _advance

SMALL = dict(K=4, d=6, n=5, lam=5e-3)


@pytest.mark.parametrize("loss, kw", [("ce", {}), ("fl", dict(gamma=0.5)), ("mse", dict(kappa=2.0, lam_b=0.0))])
def test_default_converges_below_1e_10(loss, kw):
    sol = ufm.solve(ufm.Problem.create(**SMALL, loss=loss, **kw), gtol=1e-10)
    assert sol.status == Status.CONVERGED and sol.converged
    assert sol.grad_norm <= 1e-10
    assert sol.trace_grad_norm[-1] == pytest.approx(sol.grad_norm)
    assert len(sol.trace_objective) == sol.steps + 1


def test_lbfgs_then_newton_refinement():
    chain = Chain(stages=(LBFGS(), NewtonCG()), stage_gtol=(1e-6, None))
    sol = ufm.solve(ufm.Problem.create(**SMALL), solver=chain, gtol=1e-10)
    assert sol.converged and sol.grad_norm <= 1e-10
    assert len(sol.stage_steps) == 2 and min(sol.stage_steps) >= 1      # L-BFGS got to 1e-6, Newton-CG finished
    assert sol.trace_grad_norm[sol.stage_steps[0]] <= 1e-6 < sol.trace_grad_norm[sol.stage_steps[0] - 1]
    assert len(sol.trace_objective) == sol.steps + 1                    # the hand-over point is recorded once


def test_max_steps_status():
    sol = ufm.solve(ufm.Problem.create(**SMALL), max_steps=3)
    assert sol.status == Status.MAX_STEPS and sol.steps == 3 and not sol.converged
    assert "max steps" in sol.message


def test_nonfinite_status_from_divergent_step_size():
    sol = ufm.solve(ufm.Problem.create(**SMALL), solver="gd", lr=1e4)
    assert sol.status == Status.NONFINITE and "NaN" in sol.message


def test_nonfinite_status_from_user_loss():
    prob = ufm.Problem.create(**SMALL, loss=lambda z, y: jnp.log(z[:, 0] - 1.0))
    sol = ufm.solve(prob)
    assert sol.status == Status.NONFINITE


@pytest.mark.slow   # time (6 s); tests/test_float32.py keeps float32 statuses in the default run
def test_stalled_status_in_float32():
    # float32 cannot reach ‖∇f‖ ≤ 1e-12 (docs/theory.md §9: it floors near 1e-7); the solve says so instead of looping
    sol = ufm.solve(ufm.Problem.create(**SMALL), dtype="float32", gtol=1e-12, solver="lbfgs")
    assert sol.status == Status.STALLED and sol.grad_norm > 1e-12


def test_throw_raises_not_converged():
    with pytest.raises(ufm.NotConvergedError, match="MAX_STEPS"):
        ufm.solve(ufm.Problem.create(**SMALL), max_steps=2, throw=True)


@pytest.mark.parametrize("solver, lr", [("gd", None), ("momentum", None), ("adam", 1e-2), ("lbfgs", None), ("newton", None)])
def test_every_solver_reaches_the_theory_optimum(solver, lr):
    prob = ufm.Problem.create(**SMALL)
    sol = ufm.solve(prob, solver=solver, lr=lr, gtol=1e-7, max_steps=20000)
    assert sol.converged, sol.message
    assert sol.objective == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-9)


def test_seeded_initialisation_is_reproducible():
    prob = ufm.Problem.create(**SMALL)
    a, b, c = (ufm.init_params(prob, seed=s, scale=0.3) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.allclose(a.W, c.W)
    assert np.std(a.H) == pytest.approx(0.3, rel=0.2)
    s1, s2 = ufm.solve(prob, seed=3), ufm.solve(prob, seed=3)
    np.testing.assert_array_equal(s1.params.W, s2.params.W)


def test_lambda_grid_compiles_once():
    prob = ufm.Problem.create(**SMALL, loss="ls", alpha=0.2)
    ufm.solve(prob)
    before = _advance._cache_size()
    for lam in (1e-3, 2e-3, 7e-3):
        ufm.solve(prob.replace(lam_W=lam, lam_H=lam, lam_b=lam))
    assert _advance._cache_size() == before


def test_trivial_collapse_is_found_and_predicted():
    # K√(nλ²) = 4·√5·0.2 > 1: the origin is the global minimiser (docs/theory.md §4.7)
    prob = ufm.Problem.create(4, 6, 5, lam=0.2)
    sol = ufm.solve(prob)
    th = ufm.theory_optimum(prob)
    assert sol.converged and th.geometry == "trivial"
    assert sol.objective == pytest.approx(np.log(4), rel=1e-12)
    assert np.sum(sol.params.W**2) < 1e-16


def test_explicit_init_and_float64_result_without_global_x64(monkeypatch):
    prob = ufm.Problem.create(**SMALL)
    init = ufm.theory_point(prob)
    sol = ufm.solve(prob, init=init)
    assert sol.steps <= 2 and sol.converged            # starting at the optimum
    assert sol.params.W.dtype == np.float64


def test_bad_run_arguments():
    prob = ufm.Problem.create(**SMALL)
    for kwargs, flag in [(dict(solver="bfgs"), "--solver"), (dict(gtol=0.0), "--gtol"), (dict(max_steps=0), "--max-steps"),
                         (dict(seed=-1), "--seed"), (dict(init_scale=float("nan")), "--init-scale"),
                         (dict(solver="lbfgs", lr=0.1), "--lr"), (dict(dtype="float16"), "--dtype")]:
        with pytest.raises(ufm.UFMInputError, match="^" + flag):
            ufm.solve(prob, **kwargs)


@pytest.mark.parametrize("kwargs, flag", [(dict(K=1), "-K"), (dict(d=0), "-d"), (dict(n=0), "-n"),
                                          (dict(lam=-1e-3), "--lam"), (dict(lam_W=float("inf")), "--lam-w"),
                                          (dict(lam_H=-1.0), "--lam-h"), (dict(lam_b=float("nan")), "--lam-b"),
                                          (dict(K=2.5), "-K")])
def test_bad_problem_input(kwargs, flag):
    with pytest.raises(ufm.UFMInputError, match="^" + flag):
        ufm.Problem.create(**{**dict(K=4, d=4, n=2), **kwargs})


def test_user_loss_of_wrong_shape():
    with pytest.raises(ufm.UFMInputError, match="^--loss.*shape"):
        ufm.Problem.create(3, 3, 2, loss=lambda z, y: jnp.sum(z))


# CE and MSE in the default run, LS and FL (CE's close relatives here) in the slow tier (time)
@pytest.mark.parametrize("loss, kw", [("ce", {}), pytest.param("ls", dict(alpha=0.1), marks=pytest.mark.slow),
                                      pytest.param("fl", dict(gamma=2.0), marks=pytest.mark.slow),
                                      ("mse", dict(kappa=2.0, lam_b=0.0))])
def test_default_reaches_1e_9_at_the_benchmark_size(loss, kw):
    # the contract: (K, d, n) = (10, 64, 100), λ = 5e-4, default solver, ‖∇f‖ ≤ 1e-9, at the theory optimum
    prob = ufm.Problem.create(10, 64, 100, lam=5e-4, loss=loss, **kw)
    sol = ufm.solve(prob)
    assert sol.converged and sol.grad_norm <= 1e-9
    assert sol.objective == pytest.approx(ufm.theory_optimum(prob).objective, rel=1e-10)


def test_init_of_the_wrong_shape_is_a_clear_error():
    prob = ufm.Problem.create(**SMALL)
    good = ufm.init_params(prob)
    with pytest.raises(ufm.UFMInputError, match="^init: .*H must have shape \\(6, 20\\)"):
        ufm.solve(prob, init=ufm.Params(good.W, good.H[:, :5], good.b))
    with pytest.raises(ufm.UFMInputError, match="no bias"):
        ufm.solve(prob.replace(bias=False), init=good)
