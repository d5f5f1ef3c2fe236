"""`ufm serve` (ufm/server.py) and the command line's side of it (ufm/client.py).

The oracle for everything a server runs is the same command run in its own process (UFM_SERVER=0): the same stdout
(timings aside), stderr and exit status. Whether a command really went to the server is read from the server's log,
which has a line per command it ran. Every subprocess has a timeout, so a hung server fails a test instead of CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from ufm import client, server

SMALL = ["-K", "3", "-d", "4", "-n", "2"]
#: gradient descent at a crawl: runs for minutes unless stopped (measured > 60 s on the 2-core machine)
LONG = ["solve", "-K", "20", "-d", "30", "-n", "50", "--solver", "gd", "--lr", "1e-6", "--max-steps", "1000000",
        "--no-bounds"]
TIMEOUT = 120


def _env(runtime: str, cache: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != client.SWITCH}
    env.update(XDG_RUNTIME_DIR=runtime, UFM_CACHE_DIR=cache, **extra)
    return env


def _ufm(argv, env, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ufm", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _status(env) -> dict:
    r = _ufm(["serve", "--status", "--json"], env, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _log(env) -> str:
    path = server.log_path(_status(env)["socket"])
    with open(path) as fh:
        return fh.read()


def _served(env, argv) -> int:
    """How many times the server's log says it ran exactly ``argv``."""
    text = " ".join(argv)
    return sum(1 for line in _log(env).splitlines() if re.search(r"\]: ufm " + re.escape(text) + " → ", line))


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _normalised(text: str) -> str:
    """Output with its timings (the only thing allowed to differ between two runs of a command) blanked."""
    text = re.sub(r'"(wall_time_s|seconds|elapsed)": [0-9.e+-]+', r'"\1": T', text)
    return re.sub(r"\d+(\.\d+)? s\b", "T s", text)


@pytest.fixture(scope="module")
def served():
    """A server of its own (private runtime folder and cache), stopped at the end whatever happened."""
    runtime = tempfile.mkdtemp(prefix="ufm-rt-")
    cache = tempfile.mkdtemp(prefix="ufm-srv-cache-")
    env = _env(runtime, cache)
    r = _ufm(["serve", "--background", "--json", "--idle-minutes", "10"], env)
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        yield env
    finally:
        _ufm(["serve", "--stop"], env, timeout=30)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- which commands go to a server --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["solve"], True), (["landscape", "-K", "3"], True), (["analyze", "x.npz"], True),
    (["solve", "--loss", "ls"], True), (["solve", "--loss=fl"], True),
    (["sweep", "grid.toml"], False), (["plot", "etf", "x.npz"], False), (["serve"], False), ([], False),
    (["--version"], False), (["-h"], False), (["solve", "--help"], False), (["landscape", "-h"], False),
    (["solve", "--loss", "mylosses:focal"], False), (["solve", "--loss=pkg.mod:fn"], False),
    (["analyze", "x.npz", "--loss", "a.b:c"], False),
])
def test_which_commands_a_server_runs(argv, expected):
    assert client.routable(argv) is expected


def test_routing_fuzz_a_user_loss_or_help_never_goes_to_a_server(rng):
    """Generated argument lists: a user loss (module:function, in either spelling) or a help flag anywhere keeps the
    command here; otherwise exactly the three short commands go."""
    words = ["-K", "3", "-d", "4", "--json", "--lam", "1e-3", "--loss", "ce", "--no-bounds", "--loss=ls", "-v"]
    for _ in range(400):
        command = rng.choice(["solve", "landscape", "analyze", "sweep", "plot", "serve"])
        argv = [command] + [str(w) for w in rng.choice(words, size=rng.integers(0, 6))]
        user_loss = rng.random() < 0.3
        if user_loss:
            argv += ["--loss", "mod:f"] if rng.random() < 0.5 else ["--loss=mod:f"]
        helped = rng.random() < 0.2
        if helped:
            argv.insert(int(rng.integers(1, len(argv) + 1)), rng.choice(["-h", "--help"]))
        expected = command in client.ROUTED and not user_loss and not helped
        assert client.routable(argv) is expected, argv


def test_the_server_is_named_by_what_results_depend_on(monkeypatch):
    base = client.identity()
    monkeypatch.setenv("UFM_SERVER", "1")           # the switch itself: same server
    monkeypatch.setenv("SOME_UNRELATED_VARIABLE", "x")
    assert client.identity() == base
    for name in ("UFM_MEMORY_LIMIT", "JAX_ENABLE_X64", "XLA_FLAGS", "PYTHONPATH", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, "something-else")
        assert client.identity() != base, name
        monkeypatch.undo()
        assert client.identity() == base


def test_a_folder_open_to_others_is_not_used(monkeypatch):
    runtime = tempfile.mkdtemp(prefix="ufm-rt-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    os.makedirs(os.path.join(runtime, "ufm"), mode=0o755)
    os.chmod(os.path.join(runtime, "ufm"), 0o755)
    assert client.runtime_folder() is None and client.socket_path() is None
    os.chmod(os.path.join(runtime, "ufm"), 0o700)
    assert client.socket_path().startswith(os.path.join(runtime, "ufm"))


def test_a_socket_path_too_long_for_unix_means_no_server(monkeypatch):
    runtime = tempfile.mkdtemp(prefix="ufm-rt-" + "x" * 80)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    assert client.runtime_folder() is not None
    assert client.socket_path() is None


def test_frames_round_trip_whole_and_empty():
    a, b = socket.socketpair()
    b.settimeout(30)
    with a, b:
        big = os.urandom(3 << 20)                    # larger than one recv, and than the socket's buffer

        def write():
            client.send(a, client.STDOUT, big)
            client.send(a, client.EXIT, b"")
            a.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        assert client.receive(b) == (client.STDOUT, big)
        assert client.receive(b) == (client.EXIT, b"")
        assert client.receive(b) is None
        writer.join(timeout=30)


def test_no_server_means_the_command_runs_here(tmp_path):
    env = _env(tempfile.mkdtemp(prefix="ufm-rt-"), str(tmp_path / "cache"))
    r = _ufm(["serve", "--status", "--json"], env, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["running"] is False
    r = _ufm(["solve", *SMALL, "--no-bounds", "--json"], env)
    assert r.returncode == 0 and json.loads(r.stdout)["converged"] is True


# -- a running server ---------------------------------------------------------------------------------------------------
# each case is two processes that start JAX: three in the default run, the rest in the slow tier (the suite's 5 min)
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("argv", [
    ["solve", *SMALL, "--json"],
    ["solve", *SMALL],
    pytest.param(["solve", *SMALL, "--loss", "ls", "--lam", "5e-3", "--no-bounds"], marks=_SLOW),
    pytest.param(["landscape", *SMALL, "--lam", "5e-3", "--json"], marks=_SLOW),
    pytest.param(["landscape", "-K", "3", "-d", "2", "-n", "2", "--lam", "1e-2", "--at", "origin"], marks=_SLOW),
    ["solve", "-K", "1"],                                       # bad input: one line, exit 2
    pytest.param(["solve", *SMALL, "--lam-w", "-1"], marks=_SLOW),
    pytest.param(["landscape", *SMALL, "--at", "nowhere"], marks=_SLOW),
    pytest.param(["analyze", "missing.npz"], marks=_SLOW),
])
def test_a_served_command_prints_and_exits_as_it_would_here(served, argv, tmp_path):
    local = _ufm(argv, dict(served, UFM_SERVER="0"), cwd=tmp_path)
    before = _served(served, argv)
    remote = _ufm(argv, served, cwd=tmp_path)
    assert _served(served, argv) == before + 1, "the command did not run on the server"
    assert remote.returncode == local.returncode, (remote.stderr, local.stderr)
    assert _normalised(remote.stdout) == _normalised(local.stdout)
    assert _normalised(remote.stderr) == _normalised(local.stderr)


def test_files_are_written_in_the_clients_folder(served, tmp_path):
    argv = ["solve", *SMALL, "--no-bounds", "--save", "out.npz"]
    r = _ufm(argv, served, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "saved W, H, b, labels to out.npz" in r.stdout
    assert (tmp_path / "out.npz").is_file() and _served(served, argv) >= 1


@pytest.mark.slow
def test_other_settings_mean_another_server(served, tmp_path):
    argv = ["solve", *SMALL, "--no-bounds", "--seed", "7"]
    r = _ufm(argv, dict(served, UFM_MEMORY_LIMIT="64G"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _served(served, argv) == 0


@contextlib.contextmanager
def _long_command(env, seed: int, **streams):
    """A served command that would run for minutes, once the server says it is running it; killed at the end."""
    argv = LONG + ["--seed", str(seed)]
    p = subprocess.Popen([sys.executable, "-m", "ufm", *argv], env=env, text=True, **streams)
    try:
        _wait(lambda: _status(env)["busy"], 60, "the long command to start on the server")
        yield p, argv
    finally:
        p.kill()
        p.wait(timeout=30)


def test_ctrl_c_stops_the_served_command_and_the_server_goes_on(served):
    with _long_command(served, 11, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as (p, _):
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "ufm solve: interrupted" in err, err
    _wait(lambda: not _status(served)["busy"], 30, "the server to be free")
    assert _ufm(["solve", *SMALL, "--no-bounds"], served).returncode == 0


@pytest.mark.slow
def test_sigterm_to_the_client_stops_the_served_command(served):
    with _long_command(served, 12, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as (p, _):
        p.terminate()
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "ufm solve: terminated (SIGTERM)" in err, err


@pytest.mark.slow
def test_a_killed_client_frees_the_server(served):
    with _long_command(served, 13, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as (p, argv):
        p.kill()
        p.wait(timeout=30)
        _wait(lambda: not _status(served)["busy"], 30, "the server to drop the dead client's command")
    assert re.search(re.escape(" ".join(argv)) + r" → 130 .*its client left", _log(served))


def test_a_second_command_runs_here_while_the_server_is_busy(served):
    short = ["solve", *SMALL, "--no-bounds", "--seed", "99"]
    with _long_command(served, 14, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as (p, _):
        r = _ufm(short, served)
        assert r.returncode == 0 and "converged" in r.stdout
        assert _served(served, short) == 0
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)


@pytest.mark.slow
def test_serve_start_status_stop_and_idle_end(tmp_path):
    env = _env(tempfile.mkdtemp(prefix="ufm-rt-"), str(tmp_path / "cache"))
    r = _ufm(["serve", "--background", "--idle-minutes", "0.05"], env)
    assert r.returncode == 0 and "ufm serve: started (pid" in r.stdout, r.stderr
    again = _ufm(["serve", "--background", "--json"], env, timeout=30)
    assert again.returncode == 0 and json.loads(again.stdout)["started_now"] is False
    status = _status(env)
    assert status["running"] and status["idle_minutes"] == 0.05
    # it ends by itself after 3 s without a command, and says so in its log
    _wait(lambda: not _status(env)["running"], 30, "the idle server to stop")
    assert "no command for 0.05 minutes: stopping" in open(server.log_path(status["socket"])).read()
    assert not os.path.exists(status["socket"])
    r = _ufm(["serve", "--background"], env)
    assert r.returncode == 0
    r = _ufm(["serve", "--stop"], env, timeout=30)
    assert r.returncode == 0 and "stopped" in r.stdout
    assert _status(env)["running"] is False
    r = _ufm(["serve", "--stop"], env, timeout=30)
    assert r.returncode == 0 and "no server runs" in r.stdout


@pytest.mark.parametrize("argv, flag", [
    (["serve", "--idle-minutes", "0"], "--idle-minutes"), (["serve", "--idle-minutes", "-3"], "--idle-minutes"),
    (["serve", "--idle-minutes", "nan"], "--idle-minutes"), (["serve", "--stop", "--status"], "--status"),
    (["serve", "--bogus"], "--bogus"),
])
def test_serve_bad_flags_are_one_line_and_exit_2(argv, flag):
    r = _ufm(argv, dict(os.environ), timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and flag in r.stderr, r.stderr


@pytest.mark.slow
def test_a_server_killed_before_any_output_means_the_command_runs_here(tmp_path):
    env = _env(tempfile.mkdtemp(prefix="ufm-rt-"), str(tmp_path / "cache"))
    r = _ufm(["serve", "--background", "--json"], env)
    pid = json.loads(r.stdout)["pid"]
    argv = ["solve", "-K", "20", "-d", "30", "-n", "50", "--solver", "gd", "--lr", "1e-6", "--max-steps", "3000",
            "--no-bounds", "--json"]
    p = subprocess.Popen([sys.executable, "-m", "ufm", *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _status(env)["busy"], 60, "the command to start on the server")
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
    assert "stopped before the command started; running it here" in err
    assert json.loads(out)["steps"] == 3000


@pytest.mark.parametrize("value", ["1e308", "inf", "10081"])
def test_idle_minutes_past_a_week_are_refused(value):
    r = _ufm(["serve", "--background", "--json", "--idle-minutes", value], dict(os.environ), timeout=30)
    assert r.returncode == 2 and "--idle-minutes" in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.slow
def test_a_foreground_server_says_it_listens_in_json(tmp_path):
    env = _env(tempfile.mkdtemp(prefix="ufm-rt-"), str(tmp_path / "cache"))
    p = subprocess.Popen([sys.executable, "-m", "ufm", "serve", "--json"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()                   # written once it listens
        record = json.loads(line)
        assert record["running"] and record["pid"] == p.pid
        assert _status(env)["pid"] == p.pid
        assert _ufm(["serve", "--stop"], env, timeout=30).returncode == 0
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()


@pytest.mark.slow
def test_a_server_whose_code_changed_on_disk_stops_by_itself(tmp_path):
    """An edit of ufm makes clients look for another socket; the old server, out of their reach, stops within
    CODE_CHECK_SECONDS instead of idling for half an hour."""
    import shutil

    import ufm

    copy = tmp_path / "src"
    shutil.copytree(os.path.dirname(ufm.__file__), copy / "ufm")
    env = _env(tempfile.mkdtemp(prefix="ufm-rt-"), str(tmp_path / "cache"), PYTHONPATH=str(copy))
    r = _ufm(["serve", "--background", "--json"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    with open(copy / "ufm" / "metrics.py", "a") as fh:
        fh.write("\n# an edit\n")
    try:
        _wait(lambda: "changed on disk: stopping" in open(server.log_path(status["socket"])).read(),
              server.CODE_CHECK_SECONDS + 30, "the old server to notice the edit")
        _wait(lambda: not os.path.exists(status["socket"]), 30, "the old server's socket to go")
    finally:
        try:
            os.kill(status["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
