"""Sweeps: the rows are the grid, SIGKILL and resume lose and duplicate nothing, TOML = flags, exports round-trip,
bad grid input exits 2, and the Dask executor gives the local rows."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import ufm
from ufm.cli import main
from ufm.grid import build_grid, parse_values
from ufm.sweep import run_sweep

SMALL = dict(K="3,4", d="3", n="2", lam="log:1e-2:1e-1:3", loss="ce,ls", alpha="0.1,0.2")
# columns that legitimately differ between two runs of the same point
VOLATILE = ["run", "finished_at", "solve_time_s", "analyze_time_s", "census_time_s", "time_s", "steps", "grad_norm"]


def test_value_specs():
    assert parse_values("-K", "3,4,10", int) == (3, 4, 10)
    assert parse_values("-K", "range:3:7:2", int) == (3, 5, 7)
    np.testing.assert_allclose(parse_values("--lam", "log:1e-4:1e-2:3", float), [1e-4, 1e-3, 1e-2])
    np.testing.assert_allclose(parse_values("--lam", "lin:0:1:5", float), [0, 0.25, 0.5, 0.75, 1.0])
    assert parse_values("--loss", "ce,fl", str) == ("ce", "fl")
    assert parse_values("-K", [3, 4], int) == (3, 4) and parse_values("-K", 5, int) == (5,)


def test_loss_parameters_apply_to_their_loss_only():
    pts = build_grid(flag_values=dict(loss="ce,fl", gamma="1,2", K="3")).points()
    assert [(p["loss"], p["gamma"]) for p in pts] == [("ce", None), ("fl", 1.0), ("fl", 2.0)]
    pts = build_grid(flag_values=dict(bias="regularized,free,none", K="3")).points()
    assert [(p["bias"], p["lam_b"]) for p in pts] == [("regularized", 5e-4), ("free", 0.0), ("none", None)]


def test_rows_equal_the_grid(tmp_path):
    grid = build_grid(flag_values=SMALL)
    points = grid.points()
    assert len(points) == 2 * 3 * (1 + 2)
    s = run_sweep(grid, tmp_path / "s.db", workers=1)
    assert s.computed == len(points) and s.skipped == 0 and s.failures == 0 and s.not_converged == 0
    df = ufm.load_sweep(tmp_path / "s.db")
    assert len(df) == len(points) and df["key"].is_unique
    got = df[["K", "d", "n", "loss", "alpha", "lam_W", "bias"]].to_dict("records")
    want = [{k: p[k] for k in ("K", "d", "n", "loss", "alpha", "lam_W", "bias")} for p in points]
    for g, w in zip(got, want):
        assert g["K"] == w["K"] and g["loss"] == w["loss"] and g["lam_W"] == pytest.approx(w["lam_W"])
        assert (w["alpha"] is None and pd.isna(g["alpha"])) or g["alpha"] == pytest.approx(w["alpha"])
    # every converged point agrees with theory (d = K − 1 or more here)
    assert (df["theory_rel_gap"].abs() < 1e-8).all() and (df["NC2_W"] < 1e-6).all()
    again = run_sweep(grid, tmp_path / "s.db", workers=1)
    assert again.computed == 0 and again.skipped == len(points)


def test_analyze_columns(tmp_path):
    grid = build_grid(flag_values=dict(K="3", d="4", n="2", lam="0.05", loss="ls", analyze=True, census=3))
    run_sweep(grid, tmp_path / "a.db", workers=1)
    (row,) = ufm.load_sweep(tmp_path / "a.db").to_dict("records")
    assert row["classification"] == "global_minimizer" and row["n_zero"] == row["expected_zero_modes"] == 5
    assert row["origin_classification"] == "strict_saddle"
    assert row["origin_min_eig"] == pytest.approx(row["origin_min_eig_theory"], rel=1e-9)
    assert row["census_unique"] >= 1 and row["census_other"] == 0


def _sweep_cmd(store, workers):
    return [sys.executable, "-m", "ufm.cli", "sweep", "-K", "3,4", "-d", "2,3", "-n", "2",
            "--lam", "log:1e-2:1e-1:3", "--store", str(store), "--workers", str(workers), "--quiet"]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])   # 2 workers: CI's slow tier
def test_sigkill_then_resume(tmp_path, workers):
    store = tmp_path / "k.db"
    proc = subprocess.Popen(_sweep_cmd(store, workers), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            try:
                with sqlite3.connect(store, timeout=5) as db:
                    rows = db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
        if rows >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)           # the whole session: parent and workers, mid-run
    proc.communicate(timeout=60)
    assert 3 <= rows < 12, "the sweep must be killed mid-run for this test to mean anything"
    with sqlite3.connect(store) as db:
        before = dict(db.execute("SELECT key, finished_at FROM points").fetchall())
    assert len(before) < 12
    r = subprocess.run(_sweep_cmd(store, workers), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(store) as db:
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone()
        after = dict(db.execute("SELECT key, finished_at FROM points").fetchall())
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert total == distinct == 12                                      # every point exactly once
    assert all(after[k] == t for k, t in before.items())                # none that was done was recomputed
    assert set(after) == set(before) | (set(after) - set(before))


def test_toml_and_flags_give_the_same_grid(tmp_path, capsys):
    toml = tmp_path / "grid.toml"
    toml.write_text('K = [3, 4]\nd = 3\nn = 2\nlam = "log:1e-2:1e-1:3"\nloss = ["ce", "ls"]\nalpha = [0.1, 0.2]\n')
    from_file = build_grid(file_values=__import__("tomllib").loads(toml.read_text()))
    assert from_file.points() == build_grid(flag_values=SMALL).points()
    # flags override the file
    over = build_grid(__import__("tomllib").loads(toml.read_text()), dict(K="5"))
    assert {p["K"] for p in over.points()} == {5}
    assert main(["sweep", "--config", str(toml), "-K", "3", "--loss", "ce", "--store", str(tmp_path / "t.db"),
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 3 and summary["computed"] == 3


def test_exports_round_trip(tmp_path, capsys):
    db = tmp_path / "e.db"
    csv, parquet = tmp_path / "e.csv", tmp_path / "e.parquet"
    assert main(["sweep", "-K", "3", "-d", "2", "-n", "2", "--lam", "0.01,0.02", "--loss", "ce,mse", "--bias", "free,none",
                 "--store", str(db), "--export", str(csv), "--export", str(parquet)]) == 0
    out = capsys.readouterr().out
    assert "sweep: 8 points" in out and "load it" in out
    df = ufm.load_sweep(db)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), df)
    from_csv = pd.read_csv(csv)
    assert list(from_csv.columns) == list(df.columns) and len(from_csv) == 8
    np.testing.assert_allclose(from_csv["objective"], df["objective"], rtol=1e-15)


@pytest.mark.parametrize("args, flag", [(["-K", "3,,4"], "-K"), (["-K", ""], "-K"), (["--lam", "lin:-1e-3:1e-2:3"], "--lam"),
                                        (["--loss", "ce,hinge"], "--loss"), (["--lam", "log:0:1:3"], "--lam"),
                                        (["--bias", "sometimes"], "--bias"), (["-d", "range:3"], "-d"),
                                        (["--export", "x.xlsx"], "--export"), (["--config", "/no/such.toml"], "--config")])
def test_bad_grid_input(tmp_path, capsys, args, flag):
    try:
        code = main(["sweep", *args, "--store", str(tmp_path / "b.db")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flag in err, err
    assert not (tmp_path / "b.db").exists() or ufm.load_sweep(tmp_path / "b.db").empty


@pytest.mark.slow                   # the optional Dask executor: its cluster start-up is slow
def test_dask_executor_gives_the_local_rows(tmp_path):
    pytest.importorskip("dask.distributed")
    grid = build_grid(flag_values=dict(K="3,4", d="3", n="2", lam="0.01,0.05", loss="ce,fl"))
    run_sweep(grid, tmp_path / "local.db", workers=1)
    run_sweep(grid, tmp_path / "dask.db", workers=2, executor="dask")        # a LocalCluster on 127.0.0.1
    local = ufm.load_sweep(tmp_path / "local.db").drop(columns=VOLATILE)
    dask = ufm.load_sweep(tmp_path / "dask.db").drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(local, dask, check_exact=False, rtol=1e-10, atol=1e-12)


@pytest.mark.slow                   # the optional Dask executor: its cluster start-up is slow
def test_dask_executor_at_an_address(tmp_path):
    # an existing cluster on loopback, reached by its scheduler address, as `--executor dask --address` does
    distributed = pytest.importorskip("dask.distributed")
    grid = build_grid(flag_values=dict(K="3", d="2,3", n="2", lam="0.02"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        code = main(["sweep", "-K", "3", "-d", "2,3", "-n", "2", "--lam", "0.02", "--executor", "dask",
                     "--address", cluster.scheduler_address, "--store", str(tmp_path / "addr.db"), "--quiet"])
    assert code == 0
    run_sweep(grid, tmp_path / "local.db", workers=1)
    pd.testing.assert_frame_equal(ufm.load_sweep(tmp_path / "addr.db").drop(columns=VOLATILE),
                                  ufm.load_sweep(tmp_path / "local.db").drop(columns=VOLATILE),
                                  check_exact=False, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_local_workers_use_the_parents_executable_store(tmp_path):
    """Spawned workers load and store executables where the `ufm` command's store is (ufm.cache.enable), under their
    own single-threaded XLA settings: a warm sweep then skips tracing and lowering in every worker (measured 4.48 →
    3.19 s for a warm 24-point, 2-worker sweep). The parent of local workers computes nothing itself, so every
    executable in the folder is a worker's; with the store off there is none."""
    import os
    import subprocess
    import sys

    def sweep(store, **env):
        argv = [sys.executable, "-m", "ufm", "sweep", "-K", "3", "-d", "4", "-n", "2", "--lam", "1e-2,2e-2",
                "--workers", "2", "--store", str(tmp_path / store)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=280,
                           env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), **env))
        assert r.returncode == 0, r.stderr

    executables = tmp_path / "cache" / "executables"
    sweep("off.db", UFM_NO_EXECUTABLES="1")
    assert not executables.exists() or not any(executables.iterdir())
    sweep("on.db")
    assert any(name.endswith(".exe") for d in executables.iterdir() for name in os.listdir(d))
