"""Sweeps under signals: a worker killed mid-run (the OOM killer's SIGKILL) never hangs the sweep and loses nothing,
a point that kills its worker every time ends as an error row (exit 1), and Ctrl-C exits 130 with the summary,
every finished row kept and no worker left behind. Every process is waited on with a timeout."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import ufm

psutil = pytest.importorskip("psutil")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 3 shapes for 2 workers, 8 λ each: a worker is still busy when the first rows land
GRID = ["-K", "3", "-d", "2,3,4", "-n", "2", "--lam", "log:1e-2:1e-1:8"]
N_POINTS = 24


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sigint_default():
    # a shell runs a background job (`pytest … &`) with SIGINT ignored and children inherit that: the ufm process
    # under test must see Ctrl-C as a user at a terminal does
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(store, *extra):
    cmd = [sys.executable, "-m", "ufm.cli", "sweep", *GRID, "--store", str(store), *extra]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), preexec_fn=_sigint_default)


def _rows(store) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
    except sqlite3.Error:
        return 0


def _workers(pid):
    """The sweep's live worker processes: its spawned children (not the resource tracker, not reaped zombies)."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in children:
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "--multiprocessing-fork" in c.cmdline():
                out.append(c)
        except psutil.Error:
            pass
    return out


def _wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return None


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        pytest.fail(f"the sweep did not exit within {timeout} s")
    return proc.returncode, out, err


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow                   # many worker processes, each starting JAX: CI's slow tier
def test_a_killed_worker_is_retried_and_nothing_is_lost(tmp_path):
    store = tmp_path / "w.db"
    proc = _start(store, "--workers", "2", "--quiet")
    try:
        victim = _wait_for(lambda: _rows(store) >= 1 and (_workers(proc.pid) or [None])[0], proc)
        assert victim is not None, "the sweep must be running with workers for this test to mean anything"
        victim.send_signal(signal.SIGKILL)                # what the OOM killer does
        with sqlite3.connect(store, timeout=5) as db:
            before = dict(db.execute("SELECT key, finished_at FROM points").fetchall())
        code, out, err = _finish(proc)
    finally:
        _kill_group(proc)
    assert code == 0, err                                  # the lost points were retried on a fresh worker
    assert "killed by SIGKILL" in err and f"pid {victim.pid}" in err, err
    assert "Traceback" not in err
    df = ufm.load_sweep(store)
    assert len(df) == N_POINTS and df["key"].is_unique and (df["status"] == "converged").all()
    after = dict(zip(df["key"], df["finished_at"]))
    assert all(after[k] == t for k, t in before.items())  # rows finished before the death are kept, not redone
    # a rerun finds the grid complete
    r = subprocess.run([sys.executable, "-m", "ufm.cli", "sweep", *GRID, "--store", str(store), "--json"],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0 and '"computed": 0' in r.stdout and f'"skipped": {N_POINTS}' in r.stdout, r.stderr


KILLER = '''
import multiprocessing, os, signal
import jax.numpy as jnp

if multiprocessing.parent_process() is not None:
    # imported by a sweep worker (the parent imports it too, to validate the grid): die there, like an OOM kill
    os.kill(os.getpid(), signal.SIGKILL)


def loss(logits, labels):
    return jnp.sum(logits, axis=1)
'''


def _run_killer_sweep(tmp_path, losses, lams):
    (tmp_path / "killer_loss.py").write_text(KILLER)
    env = _env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    store = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-m", "ufm.cli", "sweep", "-K", "3", "-d", "2", "-n", "2", "--lam", lams,
                             "--loss", losses, "--workers", "2", "--store", str(store)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        code, out, err = _finish(proc)
    finally:
        _kill_group(proc)
    assert "Traceback" not in err, err
    return code, out, err, ufm.load_sweep(store)


@pytest.mark.slow                   # many worker processes, each starting JAX: CI's slow tier
def test_a_point_that_kills_its_worker_twice_is_an_error_row(tmp_path):
    code, out, err, df = _run_killer_sweep(tmp_path, "ce,killer_loss:loss", "0.01,0.02")
    assert code == 1, (code, out, err)                     # the run ends, and says that points failed
    assert "retrying" in err and "second time" in err, err
    assert "2 failed" in out and "error column" in out, out
    bad = df[df["loss"] == "killer_loss:loss"]
    assert len(df) == 4 and len(bad) == 2
    assert (bad["status"] == "error").all() and bad["error"].str.contains("died twice").all()
    assert (df[df["loss"] == "ce"]["status"] == "converged").all()


def test_workers_that_keep_dying_stop_the_run(tmp_path):
    # one shape, so one worker: after 2·1 + 2 deaths with no row between them the run stops instead of restarting
    # workers for every remaining point
    code, out, err, df = _run_killer_sweep(tmp_path, "killer_loss:loss", "0.01,0.02,0.03,0.04")
    assert code == 1, (code, out, err)
    assert "stopping: 4 worker processes died in a row" in err, err
    assert "2 points were not computed" in out and "2 failed" in out, out
    assert len(df) == 2 and (df["status"] == "error").all()


def _interrupt(tmp_path, workers, to_group):
    store = tmp_path / f"i{workers}.db"
    proc = _start(store, "--workers", str(workers))
    try:
        seen = _wait_for(lambda: _rows(store) >= 2 and (workers == 1 or _workers(proc.pid)), proc)
        assert seen, "the sweep must be running for this test to mean anything"
        children = _workers(proc.pid)
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)              # Ctrl-C in a terminal: the whole process group
        else:
            proc.send_signal(signal.SIGINT)
        code, out, err = _finish(proc, timeout=60)
    finally:
        _kill_group(proc)
    assert code == 130, (code, out, err)                    # not -11 (SIGSEGV) or a traceback
    assert "Traceback" not in err and "Process " not in err, err
    stored = _rows(store)
    assert 2 <= stored < N_POINTS
    assert f"interrupted: {stored} of {N_POINTS} points are stored" in out, out
    for c in children:                                      # no worker outlives the sweep
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT outcome FROM runs").fetchone()[0] == "interrupted"
    assert not os.path.exists(f"{store}-wal") or os.path.getsize(f"{store}-wal") == 0


# one worker in the default run; two workers with the signal sent to the whole group in the slow tier (time)
@pytest.mark.parametrize("workers, to_group", [(1, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_ctrl_c_exits_130_with_the_rows_kept(tmp_path, workers, to_group):
    _interrupt(tmp_path, workers, to_group)
