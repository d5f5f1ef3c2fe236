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


@pytest.mark.parametrize("loss", ["ce", "mse"])
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
