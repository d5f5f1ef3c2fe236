"""`ufm solve`: the acceptance runs against theory, the JSON schema, --save, exit codes and bad input."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ufm.cli import main

SMALL = ["-K", "4", "-d", "6", "-n", "5"]


def run_json(capsys, *args):
    code = main(["solve", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)        # exactly one JSON document on stdout


# The "Done when" runs: ‖∇f‖ ≤ 1e-9, objective within 1e-8 (relative) of theory, NC1/NC2/NC3 ≤ 1e-6.
ACCEPTANCE = [
    ["--loss", "ce", "--lam", "5e-3"],
    ["--loss", "ls", "--alpha", "0.1", "--lam", "5e-3"],
    # each loss and bias mode once in the default run; the repeats of a loss at other parameters in the slow tier
    pytest.param(["--loss", "ls", "--alpha", "0.3", "--lam", "5e-3"], marks=pytest.mark.slow),
    pytest.param(["--loss", "fl", "--gamma", "1", "--lam", "5e-3"], marks=pytest.mark.slow),
    ["--loss", "fl", "--gamma", "2", "--lam", "5e-3"],
    pytest.param(["--loss", "fl", "--gamma", "3", "--lam", "5e-3"], marks=pytest.mark.slow),
    ["--loss", "mse", "--kappa", "3", "--beta", "2", "--lam", "0.02", "--lam-b", "0"],
    ["--loss", "mse", "--kappa", "3", "--beta", "2", "--lam", "0.02", "--no-bias"],
    ["--loss", "ce", "--lam", "5e-3", "-d", "3"],                       # d = K − 1, the sharp case
    ["--loss", "ls", "--alpha", "0.1", "--lam-w", "1e-2", "--lam-h", "2e-3", "--lam-b", "0"],  # unequal λ, free bias
]


@pytest.mark.parametrize("args", ACCEPTANCE, ids=lambda a: " ".join(a))
def test_solve_matches_theory(capsys, args):
    code, rec = run_json(capsys, *SMALL, *args)
    assert code == 0 and rec["status"] == "converged"
    assert rec["grad_norm"] <= 1e-9
    th = rec["theory"]
    assert th["applies"]
    assert abs(rec["objective"] - th["objective"]) <= 1e-8 * abs(th["objective"])
    assert rec["W_fro_sq"] == pytest.approx(th["W_fro_sq"], rel=1e-6)
    assert rec["H_fro_sq"] == pytest.approx(th["H_fro_sq"], rel=1e-6)
    for key in ("NC1", "NC2_W", "NC2_H", "NC3"):
        assert rec["nc"][key] <= 1e-6, key
    if "--no-bias" in args:
        assert rec["b"] is None and rec["nc"]["NC2_W_uncentred"] > 0.5       # orthogonal frame, not a simplex ETF
    else:
        assert rec["nc"]["NC2_W_uncentred"] <= 1e-6


def test_json_schema(capsys):
    code, rec = run_json(capsys, *SMALL, "--lam", "5e-3", "--loss", "fl", "--gamma", "2")
    for key in ("status", "objective", "grad_norm", "steps", "W_fro_sq", "H_fro_sq", "b", "nc", "theory", "config"):
        assert key in rec, key
    assert set(rec["nc"]) >= {"NC1", "NC2_W", "NC2_H", "NC3", "NC4", "bias_residual"}
    assert set(rec["theory"]) >= {"applies", "objective", "W_fro_sq", "H_fro_sq", "margin"}
    cfg = rec["config"]
    assert cfg["K"] == 4 and cfg["d"] == 6 and cfg["n"] == 5 and cfg["loss"] == "fl"
    assert cfg["loss_params"] == {"gamma": 2.0}
    assert cfg["lam_W"] == cfg["lam_H"] == cfg["lam_b"] == 5e-3 and cfg["bias"] == "regularized"
    assert cfg["solver"] == "auto" and cfg["gtol"] == 1e-9 and cfg["seed"] == 0
    assert isinstance(rec["b"], list) and len(rec["b"]) == 4
    assert isinstance(rec["steps"], int)


def test_human_summary(capsys):
    assert main(["solve", *SMALL, "--lam", "5e-3"]) == 0
    out = capsys.readouterr().out
    assert "converged" in out and "objective f" in out and "theory" in out and "NC1=" in out


def test_save_npz(capsys, tmp_path):
    path = tmp_path / "sol.npz"
    code, rec = run_json(capsys, *SMALL, "--lam", "5e-3", "--save", str(path))
    assert code == 0
    z = np.load(path)
    assert z["W"].shape == (4, 6) and z["H"].shape == (6, 20) and z["b"].shape == (4,) and z["labels"].shape == (20,)
    assert np.sum(z["W"] ** 2) == pytest.approx(rec["W_fro_sq"])
    assert json.loads(str(z["record"]))["objective"] == rec["objective"]
    path2 = tmp_path / "nobias.npz"
    main(["solve", *SMALL, "--loss", "mse", "--no-bias", "--save", str(path2), "--json"])
    capsys.readouterr()
    assert "b" not in np.load(path2).files


def test_not_converged_exits_3(capsys):
    code, rec = run_json(capsys, *SMALL, "--max-steps", "2")
    assert code == 3 and rec["status"] == "max_steps" and rec["converged"] is False


def test_nonfinite_exits_3_never_converged(capsys):
    code, rec = run_json(capsys, *SMALL, "--solver", "gd", "--lr", "1e4")
    assert code == 3 and rec["status"] == "nonfinite"


def test_user_loss_module_function(capsys, tmp_path, monkeypatch):
    (tmp_path / "myloss.py").write_text(textwrap.dedent("""
        import jax, jax.numpy as jnp
        def ce(z, y):
            return -jnp.take_along_axis(jax.nn.log_softmax(z, axis=1), y[:, None], axis=1)[:, 0]
        def scalar(z, y):
            return jnp.sum(z)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, rec = run_json(capsys, *SMALL, "--lam", "5e-3", "--loss", "myloss:ce")
    assert code == 0 and rec["theory"]["applies"] is False
    # the user's CE must land on the built-in CE's theory value
    _, ref = run_json(capsys, *SMALL, "--lam", "5e-3")
    assert rec["objective"] == pytest.approx(ref["theory"]["objective"], rel=1e-10)
    assert main(["solve", *SMALL, "--loss", "myloss:scalar"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--loss" in err and "shape" in err


BAD = [
    (["-K", "1"], "-K"), (["-d", "0"], "-d"), (["-n", "0"], "-n"), (["-K", "x"], "-K"),
    (["--lam", "-1e-3"], "--lam"), (["--lam", "nan"], "--lam"), (["--lam-w", "-1"], "--lam-w"),
    (["--lam-h", "inf"], "--lam-h"), (["--lam-b", "-0.5"], "--lam-b"),
    (["--loss", "fl", "--gamma", "-1"], "--gamma"), (["--loss", "ls", "--alpha", "1"], "--alpha"),
    (["--loss", "ls", "--alpha", "-0.2"], "--alpha"), (["--loss", "mse", "--kappa", "0"], "--kappa"),
    (["--loss", "mse", "--beta", "-2"], "--beta"), (["--loss", "hinge"], "--loss"),
    (["--loss", "not_a_module_q:f"], "--loss"), (["--solver", "bfgs"], "--solver"),
    (["--loss", "ce", "--gamma", "2"], "--gamma"), (["--gtol", "0"], "--gtol"), (["--max-steps", "0"], "--max-steps"),
    (["--no-bias", "--lam-b", "0"], "--lam-b"), (["--save", "/no/such/folder/x.npz"], "--save"),
]


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:              # argparse type errors exit from inside parse_args
        return e.code


@pytest.mark.parametrize("args, flag", BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_bad_input_exits_2_with_one_line(capsys, args, flag):
    code = _exit_code(["solve", *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert flag in captured.err and "Traceback" not in captured.err


def test_bad_input_in_a_real_process_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "ufm.cli", "solve", "--loss", "ls", "--alpha", "1.5"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--alpha" in r.stderr and "[0, 1)" in r.stderr


def test_help_and_version_are_fast():
    r = subprocess.run([sys.executable, "-c", "import sys, ufm.cli; ufm.cli.main(['--version'])"],
                       capture_output=True, text=True)
    assert "ufm" in r.stdout
    assert "jax" not in subprocess.run(
        [sys.executable, "-c", "import sys, ufm.cli\ntry: ufm.cli.main(['solve','--help'])\nexcept SystemExit: pass\n"
         "print(' '.join(m for m in sys.modules if m.startswith('jax')))"], capture_output=True, text=True).stdout.split("\n")[-2]


# ---------------------------------------------------------------------------------------------------- landscape


def landscape_json(capsys, *args):
    code = main(["landscape", *args, "--json"])
    out = capsys.readouterr()
    assert out.out.strip(), f"exit {code}, no record; stderr: {out.err[-2000:]}"
    return code, json.loads(out.out)


def test_landscape_solution_json_schema(capsys):
    code, rec = landscape_json(capsys, *SMALL, "--lam", "5e-3", "--loss", "ls")
    assert code == 0
    assert set(rec) >= {"critical_points", "hessian_method", "tolerances", "config"}
    (p,) = rec["critical_points"]
    for key in ("objective", "grad_norm", "min_eig", "max_eig", "n_negative", "n_zero", "expected_zero_modes",
                "classification", "eig_residual", "escape"):
        assert key in p, key
    assert p["classification"] == "global_minimizer" and p["n_zero"] == p["expected_zero_modes"] == 12
    assert p["escape"] is None and rec["hessian_method"] == "dense"
    assert rec["config"]["loss"] == "ls" and rec["tolerances"]["grad_tol"] == 1e-8


@pytest.mark.slow   # ARPACK at the origin, then an escape: ~35 s of CPU; the dense path is in the default run
def test_landscape_origin_lanczos_with_escape(capsys):
    code, rec = landscape_json(capsys, *SMALL, "--lam", "5e-3", "--at", "origin", "--hessian", "lanczos")
    (p,) = rec["critical_points"]
    assert code == 0 and rec["hessian_method"] == "lanczos"
    assert p["classification"] == "strict_saddle" and p["min_eig"] == pytest.approx(rec["origin_min_eig_theory"], rel=1e-8)
    assert p["escape"]["classification"] == "global_minimizer"


def test_landscape_census_table(capsys):
    assert main(["landscape", "-K", "3", "-d", "4", "-n", "2", "--lam", "0.05", "--loss", "ls", "--at", "census",
                 "--starts", "4"]) == 0
    out = capsys.readouterr().out
    assert "census: 4 starts" in out and "strict_saddle" in out and "escape" in out and "summary:" in out


@pytest.mark.parametrize("args, flag", [(["--hessian", "exact"], "--hessian"), (["--at", "everywhere"], "--at"),
                                        (["--starts", "0"], "--starts"), (["--grad-tol", "-1"], "--grad-tol"),
                                        (["-K", "1"], "-K"), (["--loss", "ls", "--alpha", "2"], "--alpha")])
def test_landscape_bad_input(capsys, args, flag):
    code = _exit_code(["landscape", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flag in err


def test_closed_pipe_is_not_a_traceback(monkeypatch):
    # `ufm solve | head -1`: the reader has gone; writing raises BrokenPipeError, which must end quietly with 0
    import os

    r, w = os.pipe()
    os.close(r)
    closed = os.fdopen(w, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["solve", *SMALL, "--lam", "5e-3"]) == 0
    monkeypatch.undo()
    closed.close()
