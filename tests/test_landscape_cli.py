"""`ufm landscape` at its edges: flags that would be ignored, sizes and paths refused before any work, a result that is
printed even when --save fails, NaN points and missing numbers in the table, progress, and the census's run options."""

import errno
import json
import sys
import textwrap

import numpy as np
import pytest

import ufm
import ufm.landscape
from ufm.cli import main
from ufm.render import render_landscape

TINY = ["-K", "3", "-d", "4", "-n", "2", "--lam", "0.05"]


def run(capsys, *args):
    try:
        code = main(["landscape", *args])
    except SystemExit as exc:              # argparse's own refusals (a non-finite number) exit 2 from the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a solve or a Hessian starts: the refusals must come first."""
    import ufm.critical
    import ufm.solvers

    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    for mod, name in [(ufm.solvers, "solve"), (ufm.landscape, "solve"), (ufm.critical, "value_and_grad"),
                      (ufm.critical, "dense_hessian")]:
        monkeypatch.setattr(mod, name, boom)


@pytest.mark.parametrize("args, flag", [
    (["--starts", "5"], "--starts"),
    (["--at", "origin", "--starts", "5"], "--starts"),
    (["--at", "origin", "--seed", "1"], "--seed"),
    (["--at", "origin", "--solver", "lm"], "--solver"),
    (["--at", "origin", "--gtol", "1e-6"], "--gtol"),
    (["--at", "origin", "--max-steps", "9"], "--max-steps"),
    (["--at", "origin", "--init-scale", "0.2"], "--init-scale"),
    (["--grad-tol", "nan"], "--grad-tol"), (["--grad-tol", "inf"], "--grad-tol"), (["--grad-tol", "0"], "--grad-tol"),
    (["--zero-tol", "nan"], "--zero-tol"), (["--zero-tol", "-inf"], "--zero-tol"), (["--zero-tol", "-1"], "--zero-tol"),
    (["--at", "census", "--solver", "bfgs"], "--solver"),
    (["--at", "census", "--seed", str(2**63 - 1), "--starts", "2"], "--seed"),
    (["--save", "/no/such/folder/x.npz"], "--save"),
    (["--save", "result.txt"], "--save"),
    (["--save", "."], "--save"),
])
def test_ignored_or_bad_flags_exit_2_before_work(capsys, no_work, args, flag):
    code, out, err = run(capsys, *TINY, *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and flag in err, err


@pytest.mark.parametrize("at", ["solution", "origin", "census"])
def test_dense_hessian_at_1e5_parameters_is_refused_with_the_estimate(capsys, no_work, at):
    # 101 010 parameters: without the check XLA aborts the process (SIGABRT) forming the 600 GiB Hessian
    code, out, err = run(capsys, "-K", "10", "-d", "100", "-n", "100", "--hessian", "dense", "--at", at)
    assert code == 2 and err.count("\n") == 1
    assert "--hessian" in err and "101,010 parameters" in err and "needs about" in err and "lanczos" in err


def test_dense_hessian_above_the_hard_size_is_refused_even_when_memory_fits(capsys, no_work, monkeypatch):
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "1T")
    code, out, err = run(capsys, "-K", "10", "-d", "20", "-n", "100", "--hessian", "dense")
    assert code == 2 and "--hessian" in err and "hours" in err and "--hessian lanczos" in err


def test_census_flags_reach_the_census_and_the_json(capsys, monkeypatch):
    seen = []

    def fake_census(problem, starts, **kw):
        seen.append(dict(kw, starts=starts))
        return ufm.landscape.Census([], starts, 0, 0.0)

    monkeypatch.setattr(ufm.landscape, "census", fake_census)
    code, out, _ = run(capsys, *TINY, "--at", "census", "--json")
    rec = json.loads(out)
    assert seen[-1]["solver"] == "lm" and seen[-1]["seed"] == 0 and seen[-1]["init_scale"] is None
    assert seen[-1]["gtol"] == 1e-10 and seen[-1]["max_steps"] == 500 and seen[-1]["starts"] == 20
    assert rec["config"]["solver"] == "lm" and rec["config"]["init_scales"] == [0.03, 0.1, 0.3, 1.0]
    assert code == 3                                        # no start converged: nothing was found
    code, out, _ = run(capsys, *TINY, "--at", "census", "--starts", "3", "--solver", "lbfgs", "--seed", "7",
                       "--gtol", "1e-7", "--max-steps", "40", "--init-scale", "0.2", "--json")
    rec = json.loads(out)
    assert {k: seen[-1][k] for k in ("solver", "seed", "gtol", "max_steps", "init_scale", "starts")} == dict(
        solver="lbfgs", seed=7, gtol=1e-7, max_steps=40, init_scale=0.2, starts=3)
    c = rec["config"]
    assert (c["solver"], c["seed"], c["seeds"], c["gtol"], c["max_steps"], c["init_scale"], c["init_scales"],
            c["starts"]) == ("lbfgs", 7, [7, 9], 1e-7, 40, 0.2, [0.2], 3)


def test_census_runs_seed_plus_i_with_the_given_solver_and_scale(monkeypatch):
    calls = []
    real = ufm.landscape.solve

    def spy(problem, **kw):
        calls.append(kw)
        return real(problem, **kw)

    monkeypatch.setattr(ufm.landscape, "solve", spy)
    stages = []
    prob = ufm.Problem.create(3, 4, 2, lam=0.05, loss="ls")
    cs = ufm.census(prob, 3, seed=4, init_scale=0.2, solver="lm", max_steps=300, with_escape=False,
                    progress=lambda done, total, stage: stages.append((stage, done, total)))
    assert [c["seed"] for c in calls] == [4, 5, 6] and {c["init_scale"] for c in calls} == {0.2}
    assert {c["solver"] for c in calls} == {"lm"} and {c["max_steps"] for c in calls} == {300}
    assert cs.seeds == (4, 6) and cs.scales == (0.2,)
    m = len(cs.points)
    assert stages[:3] == [("starts", 1, 3), ("starts", 2, 3), ("starts", 3, 3)]
    assert stages[3:] == [("classifying", k, m) for k in range(m + 1)]
    legacy = []                                            # the old two-argument callback still gets the starts
    ufm.census(prob, 2, with_escape=False, progress=lambda done, total: legacy.append((done, total)))
    assert legacy == [(1, 2), (2, 2)]


CENSUS = [*TINY, "--loss", "ls", "--at", "census", "--starts", "2"]


def test_progress_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, *CENSUS)
    assert code == 0 and "strict_saddle" in out
    for text in ("census: 1/2 starts", "census: 2/2 starts", "census: classifying 1/", "census: escaping from saddle 1/"):
        assert text in err, text
    code, out, err = run(capsys, *TINY, "--at", "origin", "--no-escape")
    assert "landscape: analysing the Hessian" in err


def test_progress_log_lines_only_with_verbose(capsys, monkeypatch):
    census = CENSUS
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    code, out, err = run(capsys, *census)
    assert err == ""                                       # a log file stays clean without --verbose
    code, out, err = run(capsys, *census, "--verbose")
    lines = err.splitlines()
    assert lines[:2] == ["ufm census: 1/2 starts", "ufm census: 2/2 starts"]
    assert lines[2] == "ufm census: classifying 1/1" and lines[3] == "ufm census: escaping from saddle 1/1"
    assert len(lines) == 4 and "\r" not in err                   # one line a point, no terminal rewrites


def test_a_failed_save_after_the_work_still_prints_the_result(capsys, monkeypatch, tmp_path):
    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ufm.landscape, "save_landscape", disk_full)
    path = str(tmp_path / "land.npz")
    code, out, err = run(capsys, *TINY, "--at", "origin", "--no-escape", "--save", path, "--json")
    assert json.loads(out)["critical_points"][0]["classification"] == "strict_saddle"
    assert code == 4 and err.count("\n") == 1 and path in err and "No space left" in err
    code, out, err = run(capsys, *TINY, "--at", "origin", "--no-escape", "--save", path)
    assert "strict_saddle" in out and "saved" not in out and code == 4


@pytest.fixture
def nan_loss_module(tmp_path, monkeypatch):
    (tmp_path / "ufm_test_nanloss.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp

        def nan_loss(z, y):
            return jnp.sum(z, axis=1) * jnp.nan
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ufm_test_nanloss:nan_loss"


def test_nonfinite_point_in_the_table_and_the_json(capsys, nan_loss_module):
    code, out, err = run(capsys, *TINY, "--loss", nan_loss_module)
    assert code == 3 and err == ""
    row = next(line for line in out.splitlines() if line.startswith("solution"))
    assert "nonfinite" in row and "—" in row and "minimizer" not in row
    assert "not finite: objective, gradient" in out and "summary: 1 nonfinite" in out
    code, out, _ = run(capsys, *TINY, "--loss", nan_loss_module, "--json")
    (p,) = json.loads(out)["critical_points"]
    assert p["classification"] == "nonfinite" and p["objective"] is None and p["min_eig"] is None
    assert p["not_finite"] == ["objective", "gradient"]


def test_render_an_inf_point_and_the_mse_origin(capsys):
    prob = ufm.Problem.create(3, 4, 2, lam=0.05)
    x = np.full(prob.num_params, 0.1)
    x[2] = np.inf
    cp = ufm.analyze_point(prob, x, label="inf")
    rec = {"at": "point", "config": prob.config(), "hessian_method": "dense",
           "tolerances": {"grad_tol": 1e-8, "obj_tol": 1e-8, "zero_tol": [None], "zero_tol_rule": "given"},
           "critical_points": [ufm.report.json_safe(cp.record())]}
    text = render_landscape(rec)
    assert "nonfinite" in text and "?/—" in text and "not finite: point, objective, gradient" in text
    # MSE has no φ′(0): the origin's theory eigenvalue is missing and shows as a dash
    code, out, err = run(capsys, *TINY, "--loss", "mse", "--no-bias", "--at", "origin", "--no-escape")
    assert code == 0 and "theory λ_min at the origin (docs/theory.md §5.4): —" in out


def test_render_with_every_number_missing():
    # a record whose numbers are all null (NaN in JSON) must still render: format specs on None raise TypeError
    p = {k: None for k in ("objective", "grad_norm", "min_eig", "max_eig", "min_eig_deflated", "n_negative", "n_zero",
                           "expected_zero_modes", "rank_W", "eig_residual", "theory_objective", "certificate",
                           "nc_direction", "not_finite")}
    p.update(label="x", classification="nonfinite", found=1, hessian_method="dense",
             escape={"objective": None, "classification": "nonfinite", "grad_norm": None, "gave_up": True,
                     "reason": "no run reached a critical point", "attempts": []})
    q = dict(p, classification="strict_saddle", theory_objective=0.5,
             escape={"objective": None, "classification": "not_critical", "grad_norm": None})
    rec = {"at": "census", "hessian_method": "dense",
           "config": {"K": 3, "d": 4, "n": 2, "loss": "ce", "lam_W": 0.05, "lam_H": 0.05, "bias": "regularized",
                      "solver": "lm", "gtol": None, "max_steps": 500, "seeds": [0, 1], "init_scales": [None]},
           "tolerances": {"grad_tol": 1e-8, "obj_tol": 1e-8, "zero_tol": [None, None], "zero_tol_rule": "given"},
           "census": {"starts": 2, "converged": 2, "unique": 2, "found": [1, 1], "wall_time_s": None},
           "critical_points": [p, q]}
    text = render_landscape(rec)
    assert text.count("—") >= 10 and "escape GAVE UP: no run reached a critical point" in text
    assert "theory optimum f* = 0.50000000; gap —" in text


def test_census_with_no_converged_start(capsys):
    code, out, err = run(capsys, *TINY, "--at", "census", "--starts", "2", "--max-steps", "1")
    assert code == 3
    assert "census: 2 starts, 0 reached a critical point" in out and "no start converged (2 max_steps)" in out
    assert "summary: no critical points" in out


@pytest.mark.slow   # four escape solvers run to their step limits: ~50 s of CPU
def test_escape_that_gives_up_is_plain_in_the_table(capsys, monkeypatch):
    real = ufm.landscape.escape
    monkeypatch.setattr(ufm.landscape, "escape", lambda *a, **k: real(*a, **{**k, "solvers": ("lbfgs",),
                                                                             "max_steps": 1}))
    code, out, err = run(capsys, *TINY, "--at", "origin")
    assert "escape GAVE UP: no run reached a critical point" in out
    code, out, err = run(capsys, *TINY, "--at", "origin", "--json")
    e = json.loads(out)["critical_points"][0]["escape"]
    assert e["gave_up"] is True and e["reason"] and e["classification"] == "not_critical"


@pytest.mark.parametrize("starts", ["100001", "100000000", "10000000000000"])
def test_a_census_of_absurdly_many_starts_is_refused_before_any_work(capsys, starts):
    # each start is a full solve: 10⁸ of them would run for years with nothing to show, which reads as a hang
    for extra in ([], ["--json"]):
        with pytest.raises(SystemExit) as exit_:               # argparse's own check: it exits 2 itself
            main(["landscape", "-K", "3", "-d", "3", "-n", "1", "--lam", "3e-2", "--at", "census", "--starts", starts,
                  *extra])
        code = exit_.value.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--starts" in err and "100000" in err, err
    with pytest.raises(ufm.UFMInputError, match="--starts"):
        ufm.census(ufm.Problem.create(3, 3, 1, lam=3e-2), starts=int(starts))
