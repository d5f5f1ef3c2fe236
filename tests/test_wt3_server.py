"""Adversarial checks of `ufm serve` (ufm/server.py, ufm/client.py): what the first tests (tests/test_server.py) left
open. The oracle is the same as there: a served command behaves as the same command run here with UFM_SERVER=0.

The fast tests drive one side of the protocol in this process against a socket pair (a fake client or a fake
server); those that need a real server process are marked slow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from ufm import client, server

SMALL = ["-K", "3", "-d", "4", "-n", "2"]


def _frames(sock: socket.socket) -> list:
    sock.settimeout(30)
    out = []
    while True:
        frame = client.receive(sock)
        if frame is None:
            return out
        out.append(frame)


@pytest.fixture
def in_process(tmp_path):
    """A Server whose `_handle` runs here, in the main thread, as `serve` would run it (its SIGUSR1 handler on)."""
    log = io.StringIO()
    srv = server.Server(str(tmp_path / "s.sock"), 60, log=log)
    srv._main = threading.main_thread().ident
    previous = signal.signal(signal.SIGUSR1, srv._on_signal)
    try:
        yield srv
    finally:
        signal.signal(signal.SIGUSR1, previous)


# -- which commands a server may run ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["analyze", "/dev/stdin"], ["analyze", "/dev/fd/63"], ["analyze", "x.npz", "--W=/dev/fd/3"],
    ["analyze", "/proc/self/cwd/x.npz"], ["solve", "--save", "/dev/stdout"], ["solve", "--save=/dev/tty"],
])
def test_a_path_of_the_clients_own_process_keeps_the_command_here(argv):
    """`ufm analyze /dev/stdin < x.npz` reads the piped file here (exit 0); served, the server opened its own stdin
    (/dev/null) and said "No data left in file", exit 2. The same holds for `<(…)` (/dev/fd/N) and /proc/self."""
    assert not client.routable(argv)


def test_a_link_in_the_folder_to_the_clients_stdin_keeps_the_command_here(tmp_path, monkeypatch):
    os.symlink("/dev/stdin", tmp_path / "in.npz")
    monkeypatch.chdir(tmp_path)
    assert not client.routable(["analyze", "in.npz"])
    assert client.routable(["analyze", "other.npz", "--lam-w", "5e-4", "-K", "3"])


# -- output that the client cannot write -------------------------------------------------------------------------------
def test_a_full_stdout_is_one_line_and_exit_4_as_here(monkeypatch, capsys):
    """`ufm solve … > /dev/full` here: "could not write standard output (No space left on device)", exit 4. Served it
    was a traceback from the client and exit 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    a, b = socket.socketpair()
    with a, b:
        client.send(b, client.STDOUT, b"f = 1.0\n")
        client.send(b, client.EXIT, json.dumps({"status": 0}).encode())
        with open("/dev/full", "w") as full:
            monkeypatch.setattr(sys, "stdout", full)
            status = client._relay(a, 1234, "solve")
    assert status == 4
    err = capsys.readouterr().err
    assert err == "ufm solve: error: could not write standard output (No space left on device)\n", err


def test_sigterm_to_a_client_whose_server_does_not_answer_says_terminated(monkeypatch, capsys):
    """A server stopped (SIGSTOP) mid-command: the client waits for it, and a SIGTERM ends the wait after
    CANCEL_SECONDS (measured 10.5 s) with exit 130, worded as the command words a SIGTERM ("terminated (SIGTERM)"),
    not "interrupted"."""
    monkeypatch.setattr(client, "CANCEL_SECONDS", 0.3)
    a, b = socket.socketpair()
    with a, b:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        status = client._relay(a, 1234, "solve")
        assert client.receive(b) == (client.SIGNAL, b"TERM")
    assert status == 130
    assert capsys.readouterr().err.startswith("ufm solve: terminated (SIGTERM) (the ufm server, pid 1234, did not stop")


# -- frames stay whole -------------------------------------------------------------------------------------------------
def test_a_signal_during_a_large_write_leaves_every_frame_whole():
    """The command's Ctrl-C (a KeyboardInterrupt in the server's main thread) can arrive while a frame is half written
    to a slow client. The frames after it (the "interrupted" line, the exit status) must still be read as frames:
    before, the client read none, took the server for dead before any output, and ran the command again here."""
    a, b = socket.socketpair()
    received = []

    def slow_client():
        time.sleep(0.5)                          # lets the server's socket buffer fill, so the write blocks midway
        received.extend(_frames(b))

    reader = threading.Thread(target=slow_client, daemon=True)
    reader.start()
    session = server._Session(a)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    big = os.urandom(2 << 20)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            session.send(client.STDOUT, big)
        except KeyboardInterrupt:
            pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        session.send(client.STDERR, b"ufm solve: interrupted\n")
        session.send(client.EXIT, b'{"status": 130}')
        close = getattr(session, "close", None)
        if close is not None:
            close(30)
        a.shutdown(socket.SHUT_RDWR)
        reader.join(30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        a.close()
        b.close()
    assert [k for k, _ in received] == [client.STDOUT, client.STDERR, client.EXIT]
    assert received[0][1] == big and received[2][1] == b'{"status": 130}'


# -- a client's word before its command started ------------------------------------------------------------------------
@pytest.fixture
def slow_start(monkeypatch):
    """The server's main thread slowed between taking a request and starting its command, as a loaded machine slows
    it: what the client sends at once is then read before the command starts."""
    real_text = server._text

    def slow_text(*args, **kwargs):
        time.sleep(0.3)
        return real_text(*args, **kwargs)

    monkeypatch.setattr(server, "_text", slow_text)


def test_a_client_gone_before_its_command_started_does_not_have_it_run(in_process, slow_start, tmp_path):
    """A client that leaves (killed, Ctrl-C before the server's answer, its ACCEPT_SECONDS over) while its request
    waits: its command must not run for nobody. Measured before: a departed client's 1e6-step solve kept the server
    busy for 435 s, every other command meanwhile running without it. The main thread is slowed here as a loaded
    machine slows it (slow_start)."""
    a, b = socket.socketpair()
    b.close()
    request = client.request_for(["solve", *SMALL, "--no-bounds", "--save", "out.npz"])
    request["cwd"] = str(tmp_path)
    in_process._handle(a, request)
    assert not (tmp_path / "out.npz").exists(), "the command ran for a client that had left"
    assert "→ 130" in in_process.log.getvalue()


def test_ctrl_c_before_the_command_started_stops_it(in_process, slow_start, tmp_path):
    a, b = socket.socketpair()
    with b:
        client.send(b, client.SIGNAL, b"INT")     # Ctrl-C at once: it waits in the socket before the command starts
        request = client.request_for(["solve", *SMALL, "--no-bounds", "--save", "out.npz"])
        request["cwd"] = str(tmp_path)
        in_process._handle(a, request)
        frames = _frames(b)
    assert not (tmp_path / "out.npz").exists(), "Ctrl-C was lost: the command ran"
    assert frames[-1] == (client.EXIT, b'{"status": 130}')
    assert (client.STDERR, b"ufm solve: interrupted\n") in frames


# -- the files a served command writes -----------------------------------------------------------------------------------
def test_a_served_save_has_the_clients_permissions(in_process, tmp_path):
    """`(umask 077; ufm solve --save r.npz)` makes r.npz private here (0600); served it was 0644, the server's umask."""
    a, b = socket.socketpair()
    previous = os.umask(0o077)
    try:
        request = client.request_for(["solve", *SMALL, "--no-bounds", "--save", "r.npz"])
    finally:
        os.umask(previous)
    request["cwd"] = str(tmp_path)
    with b:
        reader = threading.Thread(target=_frames, args=(b,), daemon=True)
        reader.start()
        in_process._handle(a, request)
        reader.join(30)
    assert stat.S_IMODE(os.stat(tmp_path / "r.npz").st_mode) == 0o600
    assert os.umask(previous) == previous, "the server's own umask was not restored"


# -- who listens ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root, to run a listener as another user")
def test_a_listener_of_another_user_is_not_trusted(tmp_path, monkeypatch):
    """The runtime folder is checked before connecting; its name can be swapped in between in a shared /tmp (a link
    to the other user's folder). The client must check who answers (SO_PEERCRED), or another user's process could
    print forged results and exit statuses for our commands."""
    folder = tempfile.mkdtemp(prefix="ufm-other-")
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "s.sock")
    # the other user's fake server: the frame format written out, so that it needs nothing of ours
    fake = ("import socket, struct, sys, os\n"
            "h = struct.Struct('!cI')\n"
            "def send(c, k, p): c.sendall(h.pack(k, len(p)) + p)\n"
            "l = socket.socket(socket.AF_UNIX); l.bind(sys.argv[1]); l.listen(1); print('ready', flush=True)\n"
            "l.settimeout(20); c, _ = l.accept(); c.recv(1 << 16)\n"
            "send(c, b'A', b'{\"pid\": 1}'); send(c, b'O', b'forged result\\n'); send(c, b'X', b'{\"status\": 0}')\n")
    for python in (sys.executable, "/usr/bin/python3"):          # one the other user may run (not one in /root)
        try:
            p = subprocess.Popen([python, "-c", fake, path], user=65534, group=65534, stdout=subprocess.PIPE,
                                 text=True, cwd="/")
            break
        except PermissionError:
            continue
    else:
        pytest.skip("no Python that another user may run")
    try:
        assert p.stdout.readline() == "ready\n"
        monkeypatch.setattr(client, "socket_path", lambda: path)
        monkeypatch.delenv(client.SWITCH, raising=False)
        raw = io.BytesIO()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw))
        status = client.run(["solve", *SMALL])
        assert status is None and b"forged" not in raw.getvalue()
    finally:
        p.kill()
        p.wait(10)


# -- a real server -------------------------------------------------------------------------------------------------------
def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != client.SWITCH}
    env.update(XDG_RUNTIME_DIR=tempfile.mkdtemp(prefix="ufm-rt-"), UFM_CACHE_DIR=tempfile.mkdtemp(prefix="ufm-c-"),
               **extra)
    return env


def _ufm(argv, env, **kw):
    return subprocess.run([sys.executable, "-m", "ufm", *argv], env=env, capture_output=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def real_server():
    env = _env()
    r = _ufm(["serve", "--background", "--json", "--idle-minutes", "5"], env)
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        yield env
    finally:
        _ufm(["serve", "--stop"], env)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_served_umask_and_full_disk_end_to_end(real_server, tmp_path):
    for mode in ("0", "1"):
        env = dict(real_server, UFM_SERVER=mode)
        folder = tmp_path / mode
        folder.mkdir()
        r = subprocess.run(f"umask 077; {sys.executable} -m ufm solve {' '.join(SMALL)} --no-bounds --save r.npz",
                           shell=True, env=env, cwd=folder, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(folder / "r.npz").st_mode) == 0o600, mode
        if os.path.exists("/dev/full"):
            with open("/dev/full", "w") as full:
                r = subprocess.run([sys.executable, "-m", "ufm", "solve", *SMALL, "--no-bounds"], env=env, stdout=full,
                                   stderr=subprocess.PIPE, text=True, timeout=120)
            assert r.returncode == 4 and r.stderr.endswith("could not write standard output (No space left on device)\n"), (
                mode, r.stderr)


@pytest.mark.slow
def test_a_request_whose_client_left_at_once_does_not_keep_the_server_busy(real_server):
    """The raw protocol: a request, then the client gone before the server's answer, ten times. Each must leave the
    server free within seconds (a 1e6-step gradient descent otherwise runs for minutes with nobody waiting)."""
    env = real_server
    long = ["solve", "-K", "20", "-d", "30", "-n", "50", "--solver", "gd", "--lr", "1e-6", "--max-steps", "1000000",
            "--no-bounds"]
    code = ("import json, sys, time\nfrom ufm import client\n"
            "for i in range(10):\n"
            "    s = client.connect(client.socket_path())\n"
            "    client.send(s, client.REQUEST, json.dumps(client.request_for(%r + ['--seed', str(i)])).encode())\n"
            "    s.close()\n"
            "    t0 = time.monotonic()\n"
            "    while client.ask(client.STATUS)['busy']:\n"
            "        if time.monotonic() - t0 > 20: sys.exit(f'request {i}: the server still runs it after 20 s')\n"
            "        time.sleep(0.1)\n" % long)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
