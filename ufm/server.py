"""``ufm serve``: one warm process that runs ``ufm solve``, ``landscape`` and ``analyze`` commands for the ``ufm``
command line (:mod:`ufm.client`), so that a command pays neither the interpreter's start, ``import jax`` nor loading
compiled programs.

The server listens on a Unix socket in a folder only its user can enter, named by the digest of everything a result
depends on (:func:`ufm.client.identity`): after an edit of ufm, an upgrade of a library or a change of a relevant
environment variable, clients look for another socket and this server simply idles out. It runs one command at a time
in its main thread, exactly as ``ufm`` would (:func:`ufm.cli.main`), in the client's working folder, with stdout and
stderr sent back as they are written; a second client meanwhile is told it is busy and runs its command itself.

Stopping: Ctrl-C or SIGTERM to the server ends it (a command in progress is interrupted, exit 130 for its client);
``ufm serve --stop`` asks it to end after the command in progress; it ends by itself after ``--idle-minutes`` without a
command. A client that disappears (killed, its terminal closed) has its command interrupted. A lock file held for the
server's life keeps a second server of the same installation from starting.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Optional

from . import client, fingerprint
from .client import ACCEPTED, BUSY, EXIT, QUIT, REPLY, REQUEST, SIGNAL, STATUS, STDERR, STDOUT

#: seconds between checks, while idle, that the code on disk is still the code this server runs
CODE_CHECK_SECONDS = 10.0
#: a server's memory is left to itself up to this resident size; past it, after a command, every compiled program it
#: holds is dropped (the store on disk still has them): a long session over many shapes does not grow without bound
MEMORY_LIMIT_BYTES = 4 << 30


class AlreadyRunning(RuntimeError):
    """A server of this installation holds the lock."""


class _Relay(io.RawIOBase):
    """One of the client's streams: what the command writes goes to the client as frames. Its ``isatty`` is the
    client's (progress lines are drawn as they would be there). After the client left, output is dropped."""

    def __init__(self, session: "_Session", kind: bytes, tty: bool):
        self._session, self._kind, self._tty = session, kind, tty

    def writable(self):
        return True

    def isatty(self):
        return self._tty

    def write(self, data):
        self._session.send(self._kind, bytes(data))
        return len(data)


class _Session:
    """One client's connection while its command runs.

    Frames are written by a thread of their own, and the command waits until each is out (a slow reader slows it, as
    a slow terminal would). A Ctrl-C raised in the command's thread then interrupts only the wait: raised inside
    ``sendall`` it would leave half a frame on the wire, and the client would read the next frames' bytes as the rest
    of it (measured: a 2 MiB frame cut by a signal, then the client saw no frame at all and ran the command again)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.gone = False
        self.cancel: Optional[str] = None      # "INT" or "TERM" asked for by the client (or its departure)
        self._frames: "queue.Queue" = queue.Queue()
        self._sender = threading.Thread(target=self._send_frames, name="ufm-server-send", daemon=True)
        self._sender.start()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        if self.gone:
            return
        done = threading.Event()
        self._frames.put((kind, payload, done))
        done.wait()

    def _send_frames(self) -> None:
        while True:
            item = self._frames.get()
            if item is None:
                return
            kind, payload, done = item
            if not self.gone:
                try:
                    client.send(self.conn, kind, payload)
                except OSError:
                    self.gone = True
            done.set()

    def close(self, seconds: float) -> None:
        """Let the frames queued go out (for at most ``seconds``: a client that stopped reading is cut off)."""
        self._frames.put(None)
        self._sender.join(seconds)


class Server:
    def __init__(self, path: str, idle_seconds: float, log=None):
        self.path = path
        self.idle_seconds = idle_seconds
        self.log = log if log is not None else sys.stderr
        self.requests: "queue.Queue" = queue.Queue()
        self.state = threading.Lock()
        self.busy = False
        self.stopping = False
        self.current: Optional[_Session] = None   # the session whose command runs in the main thread
        self.served = 0
        self.started = time.time()
        self.last_active = time.monotonic()
        self._lock_fd: Optional[int] = None
        self.code = fingerprint.code_digest()
        self._listener: Optional[socket.socket] = None

    # -- life cycle ---------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take this installation's server lock; raises AlreadyRunning where another server holds it."""
        fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AlreadyRunning(self.path) from None
        self._lock_fd = fd

    def listen(self) -> None:
        # the lock is ours, so a socket file left here is a dead server's
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        self._listener = listener

    def close(self) -> None:
        if self._listener is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def serve(self) -> None:
        """Run commands until stopped (module docstring)."""
        main_thread = threading.main_thread().ident
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
        threading.Thread(target=self._accept, name="ufm-server-accept", daemon=True).start()
        self._main = main_thread
        try:
            while not self.stopping:
                left = self.idle_seconds - (time.monotonic() - self.last_active)
                if left <= 0:
                    self._say(f"no command for {self.idle_seconds / 60:g} minutes: stopping")
                    break
                try:
                    item = self.requests.get(timeout=min(left, CODE_CHECK_SECONDS))
                except queue.Empty:
                    if fingerprint.code_digest(fresh=True) != self.code:
                        # ufm or a library changed on disk: clients now look for another socket, so this server would
                        # only idle out, unseen by `ufm serve --status` and out of reach of `--stop`
                        self._say("ufm, a library or Python changed on disk: stopping")
                        break
                    continue
                if item is None:
                    break
                self._handle(*item)
        except KeyboardInterrupt:
            self._say("stopped by a signal")
        finally:
            self.stopping = True
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.close()

    # -- signals ------------------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        from . import signals

        session = self.current
        active = session is not None
        if signum == signal.SIGUSR1:
            # a client's Ctrl-C or SIGTERM, passed on by its connection's thread
            if not active or session.cancel is None:
                return
            exc = signals.Terminated if session.cancel == "TERM" else KeyboardInterrupt
        else:
            self.stopping = True
            exc = signals.Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if active:
            # recorded as well as raised: a raise swallowed inside a JAX callback is raised again (ufm.signals)
            signals._pending = exc
        raise exc()

    def _forward(self, session: "_Session", what: str) -> None:
        with self.state:
            # kept by the session: one that comes before its command started stops it at the start (a client that
            # left, or was Ctrl-C'd, while its request waited must not have its command run for nobody)
            session.cancel = what
            # only into this client's own command: a late word from a finished one must not stop the next
            if self.current is not session:
                return
        signal.pthread_kill(self._main, signal.SIGUSR1)

    # -- connections --------------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopping:
            listener = self._listener
            if listener is None:
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                self._take(conn)
            except Exception:
                conn.close()

    def _take(self, conn: socket.socket) -> None:
        if not client.same_user(conn):
            conn.close()
            return
        conn.settimeout(5.0)
        frame = client.receive(conn)
        if frame is None:
            conn.close()
            return
        kind, payload = frame
        if kind == STATUS:
            client.send(conn, REPLY, json.dumps(self.status()).encode())
            conn.close()
        elif kind == QUIT:
            with self.state:
                self.stopping = True
            client.send(conn, REPLY, json.dumps(self.status()).encode())
            conn.close()
            self.requests.put(None)
        elif kind == REQUEST:
            with self.state:
                take = not (self.busy or self.stopping)
                self.busy = self.busy or take
            if not take:
                client.send(conn, BUSY)
                conn.close()
                return
            conn.settimeout(None)
            self.requests.put((conn, json.loads(payload)))
        else:
            conn.close()

    def status(self) -> dict:
        return {"pid": os.getpid(), "socket": self.path, "started": self.started, "commands": self.served,
                "busy": self.busy, "stopping": self.stopping, "idle_minutes": self.idle_seconds / 60,
                "python": sys.executable}

    def _watch(self, session: _Session) -> None:
        """The client's side of the connection while its command runs: its signals, or its departure."""
        while True:
            try:
                frame = client.receive(session.conn)
            except OSError:
                frame = None
            if frame is None:
                session.gone = True
                self._forward(session, "TERM")
                return
            if frame[0] == SIGNAL:
                self._forward(session, "TERM" if frame[1] == b"TERM" else "INT")

    # -- one command --------------------------------------------------------------------------------------------------
    def _handle(self, conn: socket.socket, request: dict) -> None:
        session = _Session(conn)
        t0 = time.monotonic()
        home = os.getcwd()
        status, left = None, False
        try:
            try:
                os.chdir(request["cwd"])
            except OSError:
                client.send(conn, BUSY)          # the client's folder is gone or closed to us: it runs the command
                return
            session.send(ACCEPTED, json.dumps({"pid": os.getpid()}).encode())
            threading.Thread(target=self._watch, args=(session,), name="ufm-server-client", daemon=True).start()
            status = self._run(session, request)
            left = session.gone
            session.send(EXIT, json.dumps({"status": status}).encode())
        finally:
            session.close(client.CANCEL_SECONDS)
            try:
                conn.shutdown(socket.SHUT_RDWR)      # wakes the connection's thread (a close alone may not)
            except OSError:
                pass
            conn.close()
            try:
                os.chdir(home)
            except OSError:
                pass
            with self.state:
                self.busy = False
            self.last_active = time.monotonic()
            if status is not None:
                self.served += 1
                argv = " ".join(request.get("argv", []))
                self._say(f"ufm {argv} → {status} in {time.monotonic() - t0:.2f} s"
                          + (" (its client left)" if left else ""))
            self._trim_memory()

    def _run(self, session: _Session, request: dict) -> int:
        from . import cli

        out, err = request.get("stdout", {}), request.get("stderr", {})
        streams = (sys.stdout, sys.stderr)
        saved_env = {k: os.environ.get(k) for k in request.get("env", {})}
        sys.stdout = _text(session, STDOUT, out)
        sys.stderr = _text(session, STDERR, err)
        os.environ.update(request.get("env", {}))
        # the files it writes get the client's permissions
        saved_umask = os.umask(request["umask"]) if isinstance(request.get("umask"), int) else None
        command = client.command_of(request["argv"]) or ""
        from . import signals

        # each command shows its warnings as a process of its own would: Python shows a warning once per place and
        # process, and forgets which it showed when its filters change
        if hasattr(warnings, "_filters_mutated"):
            warnings._filters_mutated()
        try:
            try:
                signals._pending = None
                with self.state:
                    if session.gone and session.cancel is None:
                        session.cancel = "TERM"
                    early = session.cancel
                    self.current = session
                try:
                    if early is not None:            # asked for before the command started (_forward)
                        raise signals.Terminated() if early == "TERM" else KeyboardInterrupt()
                    return cli.main(request["argv"], handle_signals=False)
                finally:
                    with self.state:
                        self.current = None
            except KeyboardInterrupt as exc:         # arrived before or after the command's own handling
                sys.stderr.write(f"ufm {command}: {signals.describe(exc)}\n")
                return 130
            except SystemExit as exc:                # argparse: --help, bad flags
                code = exc.code
                return code if isinstance(code, int) else (0 if code is None else 2)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            sys.stdout, sys.stderr = streams
            if saved_umask is not None:
                os.umask(saved_umask)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _trim_memory(self) -> None:
        if _resident_bytes() > MEMORY_LIMIT_BYTES:
            import gc

            import jax

            from . import aot

            aot.clear_memory()
            jax.clear_caches()
            gc.collect()
            self._say(f"resident memory over {MEMORY_LIMIT_BYTES >> 30} GiB: compiled programs dropped")

    def _say(self, text: str) -> None:
        try:
            self.log.write(f"ufm serve [{time.strftime('%H:%M:%S')}]: {text}\n")
            self.log.flush()
        except (OSError, ValueError):
            pass


def _text(session: _Session, kind: bytes, terminal: dict) -> io.TextIOWrapper:
    return io.TextIOWrapper(_Relay(session, kind, bool(terminal.get("tty"))), encoding=terminal.get("encoding") or "utf-8",
                            errors=terminal.get("errors") or "strict", line_buffering=True, write_through=True)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def warm_up() -> None:
    """What every command would do first: JAX with float64 and the caches on, and the modules the commands use."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import analysis, cache, commands, critical, landscape, report, solvers  # noqa: F401

    cache.enable()


def log_path(socket: str) -> str:
    return socket[: -len(".sock")] + ".log"


def run_foreground(path: str, idle_minutes: float, announce=None) -> None:
    """``ufm serve``: warm up, listen and run commands until stopped; raises AlreadyRunning first if one runs."""
    server = Server(path, idle_minutes * 60)
    server.lock()
    try:
        warm_up()
        server.listen()
        if announce is not None:
            announce(server)
        server.serve()
    finally:
        server.close()


def start_background(path: str, idle_minutes: float, wait_seconds: float = 120.0) -> dict:
    """``ufm serve --background``: start a detached server and wait until it answers; returns its status. Raises
    RuntimeError (with the end of its log) when it exits or stays silent instead."""
    import subprocess

    log = log_path(path)
    with open(log, "ab") as fh:
        # its own session: the terminal's Ctrl-C and hang-up that end the shell's jobs do not reach it. Started in the
        # private runtime folder, so that `python -m` puts nothing of the caller's folder on its module path
        child = subprocess.Popen([sys.executable, "-m", "ufm", "serve", "--idle-minutes", repr(idle_minutes)],
                                 stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, cwd=os.path.dirname(path),
                                 start_new_session=True)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        reply = client.ask(client.STATUS, path)
        if reply is not None:
            return reply
        if child.poll() is not None:
            reply = client.ask(client.STATUS, path)        # it lost the race to a server started at the same time
            if reply is not None:
                return reply
            break
        time.sleep(0.1)
    else:
        child.terminate()
    with open(log, "rb") as fh:
        tail = fh.read()[-2000:].decode(errors="replace").strip().splitlines()
    raise RuntimeError(f"the server did not start (log {log}: {tail[-1] if tail else 'empty'})")
