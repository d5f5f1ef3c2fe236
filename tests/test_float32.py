"""A float32 solve is judged by float32 tolerances, says so, and float64 keeps its own."""

import json

import numpy as np
import pytest

import ufm
from ufm.cli import main
from ufm.solvers import DEFAULT_TOLERANCES, default_tolerances


def test_default_tolerances_by_dtype():
    assert default_tolerances("float64") == (1e-9, 1e-6, "float64 defaults")
    assert default_tolerances("float32") == (1e-4, 1e-3, "float32 defaults")
    assert default_tolerances("float32", gtol=1e-6) == (1e-6, 1e-3, "rtol float32 default")
    assert default_tolerances("float32", 1e-6, 1e-5) == (1e-6, 1e-5, "given")
    # float32's defaults are looser than float64's by at least the ratio of the floors bench_float32.py measures
    assert all(a > b for a, b in zip(DEFAULT_TOLERANCES["float32"], DEFAULT_TOLERANCES["float64"]))


@pytest.mark.parametrize("loss", ["mse", pytest.param("ce", marks=pytest.mark.slow)])
def test_float32_solve_converges_at_float32_scale(loss):
    p = ufm.Problem.create(K=4, d=6, n=5, lam=5e-3, loss=loss)
    s32 = ufm.solve(p, dtype="float32")
    assert (s32.gtol, s32.rtol, s32.tolerance_source) == (1e-4, 1e-3, "float32 defaults")
    assert s32.converged, s32.message
    assert s32.grad_norm <= 1e-4 and s32.rel_grad_norm <= 1e-3
    s64 = ufm.solve(p)
    assert (s64.gtol, s64.rtol, s64.tolerance_source) == (1e-9, 1e-6, "float64 defaults")
    # a float32-stationary point is near the float64 optimum at float32's resolution: f is quadratic in the error,
    # so the objectives agree to ~rtol² ≪ 1e-5 relative
    assert abs(s32.objective - s64.objective) <= 1e-5 * abs(s64.objective)


def test_float32_cli_reports_its_tolerances(capsys):
    argv = ["solve", "-K", "4", "-d", "6", "-n", "5", "--lam", "5e-3", "--dtype", "float32", "--no-bounds"]
    assert main(argv + ["--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["gtol"], rec["rtol"], rec["tolerance_source"]) == (1e-4, 1e-3, "float32 defaults")
    assert rec["config"]["dtype"] == "float32"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "gtol 0.0001" in out and "rtol 0.001" in out and "float32 tolerances" in out
    # a tolerance the user gives is used as given, and the human output does not claim the defaults
    assert main(argv + ["--gtol", "1e-3", "--rtol", "1e-2"]) == 0
    out = capsys.readouterr().out
    assert "gtol 0.001" in out and "float32 tolerances" not in out


def test_grad_Z_is_float64_outside_an_x64_scope():
    """The second-order test compares σ_max(∇_Z g) with √(λ_Wλ_H) to 1e-6 relative: ∇_Z g must be float64 even when
    called outside the solver's x64 scope (it was float32 there, and TF32 on a GPU made optima look like saddles)."""
    from ufm.critical import _data_grad_Z

    p = ufm.Problem.create(K=5, d=6, n=4, lam=1e-3)
    rng = np.random.default_rng(1)
    W, H, b = rng.standard_normal((5, 6)), rng.standard_normal((6, 20)), rng.standard_normal(5)
    G = _data_grad_Z(p, W, H, b)
    assert G.dtype == np.float64
    Z = W @ H + b[:, None]
    P = np.exp(Z - Z.max(axis=0))
    P /= P.sum(axis=0)
    Y = np.eye(5)[:, p.labels]
    # CE: ∇_Z (1/N) Σ L = (softmax − one-hot)/N; float64 agreement to round-off
    assert np.max(np.abs(G - (P - Y) / p.N)) <= 1e-15
