"""The sweep store: every option in a row's key is a column, each row names the run (command line, versions) that
wrote it, the summary describes this command's grid only, two grids in one store keep their own order, an older
store is migrated, odd file names work, a clean exit leaves the ``.db`` alone holding every row, a read-only store
is readable (and writing to it is exit 2), failed points exit 1 and are computed again, and ``--verbose`` logs each
point without a terminal."""

import contextlib
import os
import shutil
import sqlite3
import subprocess

import jax
import numpy as np
import pytest

import ufm
from ufm.cli import main
from ufm.grid import build_grid
from ufm.store import COLUMNS, SweepStore, export_sweep, load_sweep
from ufm.sweep import run_sweep

TINY = dict(K="3", d="2", n="2")


def test_every_option_in_the_key_is_a_column(tmp_path):
    db = tmp_path / "o.db"
    variants = [dict(), dict(gtol=1e-8), dict(max_steps=500), dict(init_scale=0.2), dict(rtol=1e-5),
                dict(hessian="lanczos"), dict(solver="lbfgs")]
    for v in variants:
        run_sweep(build_grid(flag_values=dict(TINY, lam="0.02", **v)), db)
    df = load_sweep(db)
    option_cols = ["solver", "gtol", "rtol", "max_steps", "init_scale", "analyze", "census", "hessian"]
    assert len(df) == len(variants) and df["key"].is_unique
    assert not df.duplicated(subset=option_cols).any()          # the columns tell every row apart
    assert set(option_cols + ["rel_grad_norm"]) <= set(df.columns)
    assert list(df["max_steps"]) == [10000, 10000, 500, 10000, 10000, 10000, 10000]


def test_runs_record_the_command_and_versions(tmp_path, capsys):
    db = tmp_path / "r.db"
    assert main(["sweep", "-K", "3", "-d", "2", "-n", "2", "--lam", "0.02,0.03", "--store", str(db), "--quiet"]) == 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        (run, command, uv, jv, nv, outcome, computed), = con.execute(
            "SELECT run, command, ufm_version, jax_version, numpy_version, outcome, computed FROM runs").fetchall()
        rows = con.execute("SELECT DISTINCT run FROM points").fetchall()
    assert command.startswith("ufm sweep ") and "--lam 0.02,0.03" in command
    assert (uv, jv, nv) == (ufm.__version__, jax.__version__, np.__version__)
    assert outcome == "finished" and computed == 2 and rows == [(run,)]


def test_two_grids_in_one_store(tmp_path):
    db = tmp_path / "g.db"
    a = build_grid(flag_values=dict(TINY, lam="0.01,0.02"))
    b = build_grid(flag_values=dict(TINY, lam="0.03,0.04,0.05"))
    run_sweep(a, db)
    sb = run_sweep(b, db)
    # the summary is B's: its 3 points, not the store's 5
    assert (sb.total, sb.stored, sb.computed, sum(sb.counts.values())) == (3, 3, 3, 3)
    df = load_sweep(db)
    assert len(df) == 5 and not df.duplicated(subset=["grid", "idx"]).any()   # idx alone would collide
    np.testing.assert_allclose(df["lam_W"], [0.01, 0.02, 0.03, 0.04, 0.05])    # grid A, then grid B, each in order
    # a row of A computed again later (here: deleted) keeps A's place
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM points WHERE lam_W = 0.01")
    sa = run_sweep(a, db)
    assert (sa.total, sa.computed, sa.skipped) == (2, 1, 1)
    np.testing.assert_allclose(load_sweep(db)["lam_W"], [0.01, 0.02, 0.03, 0.04, 0.05])


OLD_COLUMNS = ["K", "d", "n", "loss", "gamma", "alpha", "kappa", "beta", "lam_W", "lam_H", "lam_b", "bias", "seed",
               "solver", "gtol", "analyze", "census", "status", "converged", "objective", "grad_norm", "steps",
               "W_fro_sq", "H_fro_sq", "theory_applies", "theory_objective", "theory_gap", "theory_rel_gap",
               "theory_geometry", "NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3", "NC4",
               "bias_residual", "classification", "min_eig", "min_eig_deflated", "max_eig", "n_negative", "n_zero",
               "expected_zero_modes", "eig_residual", "origin_classification", "origin_min_eig",
               "origin_min_eig_theory", "census_unique", "census_global", "census_saddles", "census_other",
               "census_escapes_global", "error", "solve_time_s", "analyze_time_s", "census_time_s", "time_s"]


def test_a_store_from_an_older_ufm_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db)) as con, con:   # the schema ufm wrote before this change
        cols = ", ".join(f'"{c}"' for c in OLD_COLUMNS)
        con.execute(f"CREATE TABLE points (key TEXT PRIMARY KEY, idx INTEGER, run INTEGER, finished_at REAL, {cols})")
        con.execute("CREATE TABLE runs (run INTEGER PRIMARY KEY, started_at REAL, points INTEGER)")
        con.execute("INSERT INTO runs VALUES (1, 0, 1)")
        con.execute("INSERT INTO points (key, idx, run, K, d, n, loss, status) VALUES ('old', 0, 1, 5, 4, 3, 'ce', "
                    "'converged')")
    s = run_sweep(build_grid(flag_values=dict(TINY, lam="0.02")), db)
    assert s.computed == 1 and s.total == 1
    df = load_sweep(db)
    assert list(df["key"])[0] == "old" and len(df) == 2 and list(df.columns[5:]) == COLUMNS
    assert df["rtol"].isna().iloc[0] and df["rtol"].iloc[1] == 1e-6


@pytest.mark.parametrize("name", ["x%41.db", "run#1.db", "what?.db", "with space.db", "naïve σ 点.db"])
def test_odd_file_names(tmp_path, name):
    path = tmp_path / name
    decoy = tmp_path / "xA.db"                  # what an unquoted URI reads for x%41.db
    for p, key in ((decoy, "decoy"), (path, "mine")):
        s = SweepStore(p)
        s.add(key, 0, 1, {"K": 3, "status": "converged"})
        s.close()
    assert list(load_sweep(path)["key"]) == ["mine"]
    export_sweep(path, tmp_path / f"{name}.csv")
    assert "mine" in (tmp_path / f"{name}.csv").read_text()


def test_a_clean_exit_leaves_every_row_in_the_db_file(tmp_path):
    db = tmp_path / "c.db"
    run_sweep(build_grid(flag_values=dict(TINY, lam="0.01,0.02,0.03")), db)
    assert not (tmp_path / "c.db-wal").exists() or (tmp_path / "c.db-wal").stat().st_size == 0
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(db, alone / "c.db")             # the .db without its -wal/-shm companions
    assert len(load_sweep(alone / "c.db")) == 3


@contextlib.contextmanager
def _read_only(path):
    """Make ``path`` read-only for this process. Root ignores permission bits, so as root the immutable attribute
    (chattr +i) is used, which binds root too; where it is unavailable the case is skipped."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, timeout=30) \
        if shutil.which("chattr") else None
    if r is None or r.returncode != 0:
        pytest.skip("running as root, where chmod does not make a file read-only, and chattr +i is not available on "
                    f"this file system ({r.stderr.strip() if r else 'no chattr'})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=30)


@pytest.mark.parametrize("what", ["file", "folder", "folder, store left in WAL mode"])
def test_a_read_only_store_is_readable_and_not_writable(tmp_path, capsys, what):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "s.db"
    assert main(["sweep", "-K", "3,4", "-d", "3", "-n", "2", "--lam", "0.01,0.1", "--store", str(db), "--quiet"]) == 0
    want = load_sweep(db)
    if what.endswith("WAL mode"):
        # as a killed sweep leaves it: the file says WAL, so a reader needs a -shm it cannot create here
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    assert sorted(os.listdir(folder)) == ["s.db"]
    with _read_only(db if what == "file" else folder):
        got = load_sweep(db)
        assert got.equals(want)
        out = tmp_path / "x.csv"
        export_sweep(db, out)
        assert len(out.read_text().splitlines()) == 5
        assert main(["plot", "phase", str(db), "-o", str(tmp_path / "phase.png")]) == 0
        capsys.readouterr()
        code = main(["sweep", "-K", "5", "-d", "3", "-n", "2", "--store", str(db)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--store" in err, err
        assert sorted(os.listdir(folder)) == ["s.db"]          # reading created no -wal/-shm


def test_failed_points_exit_1_and_are_computed_again(tmp_path, capsys, monkeypatch):
    import ufm.solvers

    real = ufm.solvers.solve

    def solve_failing_at_K4(problem, **kw):
        if problem.K == 4:
            raise FloatingPointError("simulated failure")
        return real(problem, **kw)

    db = tmp_path / "f.db"
    args = ["sweep", "-K", "3,4", "-d", "3", "-n", "2", "--lam", "0.05", "--store", str(db)]
    monkeypatch.setattr(ufm.solvers, "solve", solve_failing_at_K4)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "error column" in out
    df = load_sweep(db)
    assert list(df["status"]) == ["converged", "error"] and "simulated failure" in df["error"].iloc[1]
    monkeypatch.setattr(ufm.solvers, "solve", real)
    assert main([*args, "--json"]) == 0
    summary = __import__("json").loads(capsys.readouterr().out)
    assert summary["computed"] == 1 and summary["skipped"] == 1 and summary["failures"] == 0
    df = load_sweep(db)
    assert list(df["status"]) == ["converged", "converged"] and df["key"].is_unique


def test_rtol_reaches_solve_and_rel_grad_norm_is_stored(tmp_path, monkeypatch):
    import ufm.report
    import ufm.solvers

    real_solve, real_record, seen = ufm.solvers.solve, ufm.report.solution_record, []

    def solve_with_rtol(problem, *, rtol=1e-6, **kw):      # the signature solve() is gaining
        seen.append(rtol)
        return real_solve(problem, **kw)

    monkeypatch.setattr(ufm.solvers, "solve", solve_with_rtol)
    monkeypatch.setattr(ufm.report, "solution_record", lambda sol: {**real_record(sol), "rel_grad_norm": 0.25})
    run_sweep(build_grid(flag_values=dict(TINY, rtol=3e-7)), tmp_path / "t.db")
    assert seen == [3e-7]
    row = load_sweep(tmp_path / "t.db").iloc[0]
    assert row["rtol"] == 3e-7 and row["rel_grad_norm"] == 0.25


@pytest.mark.slow   # time (5 s)
def test_verbose_logs_each_point_without_a_terminal(tmp_path, capsys):
    db = tmp_path / "v.db"
    assert main(["sweep", "-K", "3", "-d", "2,3", "-n", "2", "--lam", "0.01", "--loss", "ce,fl", "--store", str(db),
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""                     # stderr is no terminal: no bar, and quiet
    db.unlink()
    assert main(["sweep", "-K", "3", "-d", "2,3", "-n", "2", "--lam", "0.01", "--loss", "ce,fl", "--store", str(db),
                 "--quiet", "--verbose"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all(line.startswith("sweep [") for line in lines), lines
    assert sorted(line.split("]")[0] for line in lines) == [f"sweep [{k}/4" for k in range(1, 5)]
    assert any("K=3 d=3 n=2 fl(γ=2) λ=0.01 seed=0: converged" in line for line in lines), lines
    assert all(line.rstrip().endswith(" s") for line in lines)
