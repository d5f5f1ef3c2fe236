"""The ``ufm`` command's side of ``ufm serve``: hand a command to a running server of this installation.

A fresh process pays the interpreter, ``import jax`` and JAX's set-up before any work (0.87 s on the 2-core
development machine, README), which is most of a small command's time even when every compiled program comes from
the cache. A server (:mod:`ufm.server`, started with ``ufm serve``) keeps one warm process; the ``ufm`` command then
sends it the argument list and relays what it prints, and never imports JAX itself.

A command goes to a server only when all of these hold, and otherwise runs here as it always did:

- it is ``solve``, ``landscape`` or ``analyze`` without ``--help`` and without a user loss (``--loss
  package.module:function``: the user's module, once imported by a server, would not see later edits);
- ``UFM_SERVER`` is not set to 0 (or false, no, off);
- a server answers on the socket of this installation: the socket's name is a digest of the Python, every ufm source
  file, the installed libraries (:mod:`ufm.fingerprint`) and every environment variable that can change a result, so a
  server started before an edit, an upgrade or with other settings is never used;
- it is free (one command at a time; a second concurrent command runs here instead of waiting).

The server then runs the command in the client's working folder with its terminal's properties (whether stdout and
stderr are terminals, their width, their encoding), and the exit status is the command's. Ctrl-C and SIGTERM are passed
on and stop the command as they would here (exit 130). If the server dies before the command printed anything, it runs
here instead; after output, the command fails with one line and exit 1 (its output would otherwise be doubled).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from typing import Optional

from . import fingerprint, signals

#: commands a server runs; the others (sweep: worker processes and a store; plot: matplotlib's global state) run here
ROUTED = ("solve", "landscape", "analyze")
#: the variable that keeps commands off a server
SWITCH = "UFM_SERVER"
#: environment variables that can change what a command computes or where it keeps things (by prefix)
RELEVANT_PREFIXES = ("UFM_", "JAX_", "XLA_", "TF_", "CUDA", "NVIDIA_", "TPU_", "OMP_", "MKL_", "OPENBLAS_",
                     "PYTHON", "LD_", "XDG_CACHE_HOME", "HOME")
#: seconds to wait for a server to take a command before running it here instead
ACCEPT_SECONDS = 5.0
#: seconds a server may take to stop a command after Ctrl-C or SIGTERM before the client gives up on it
CANCEL_SECONDS = 10.0

_HEADER = struct.Struct("!cI")
#: frame kinds. Client to server: request, signal, status, quit. Server to client: accepted, busy (declined), stdout,
#: stderr, exit status, reply (to status and quit)
REQUEST, SIGNAL, STATUS, QUIT = b"R", b"S", b"T", b"Q"
ACCEPTED, BUSY, STDOUT, STDERR, EXIT, REPLY = b"A", b"B", b"O", b"E", b"X", b"Y"


def send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def receive(sock: socket.socket) -> Optional[tuple]:
    """The next frame ``(kind, payload)``, or None when the other side closed the connection."""
    header = _exactly(sock, _HEADER.size)
    if header is None:
        return None
    kind, size = _HEADER.unpack(header)
    payload = _exactly(sock, size) if size else b""
    return None if payload is None else (kind, payload)


def _exactly(sock, size: int) -> Optional[bytes]:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def switched_off() -> bool:
    return os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def relevant_environment(env=None) -> dict:
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith(RELEVANT_PREFIXES) and k != SWITCH}


def identity() -> str:
    """The digest that names this installation's server (module docstring)."""
    h = hashlib.sha256(fingerprint.sources_digest())
    h.update(repr((fingerprint.interpreter(), fingerprint.libraries(), sorted(relevant_environment().items()),
                   os.getuid() if hasattr(os, "getuid") else None)).encode())
    return h.hexdigest()


def runtime_folder() -> Optional[str]:
    """A folder only this user can enter, for the sockets (``$XDG_RUNTIME_DIR/ufm``, else ``<tmp>/ufm-<uid>``), or
    None when it cannot be made or belongs to someone else (a server is then never used)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(base, "ufm") if base and os.path.isdir(base) else os.path.join(tempfile.gettempdir(), f"ufm-{uid}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    # another user could have made the folder first, to listen in: only a private folder of ours is trusted
    if st.st_uid != uid or st.st_mode & 0o077:
        return None
    return path


#: the longest socket path every Unix takes (Linux 107 bytes, macOS 103)
MAX_SOCKET_PATH = 100


def socket_path() -> Optional[str]:
    """Where this installation's server listens, or None where no private folder has room for it."""
    folder = runtime_folder()
    path = None if folder is None else os.path.join(folder, identity()[:24] + ".sock")
    return path if path is not None and len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def command_of(argv: list) -> Optional[str]:
    """The command named in ``argv`` (its first word that is not an option), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word
        if word in ("-h", "--help", "--version"):
            return None
    return None


def routable(argv: list) -> bool:
    if command_of(argv) not in ROUTED or any(a in ("-h", "--help") for a in argv):
        return False
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--loss=") else (argv[i + 1] if a == "--loss" and i + 1 < len(argv)
                                                                       else None)
        if value is not None and ":" in value:
            return False
    return not any(_of_this_process(a.split("=", 1)[-1]) for a in argv)


#: where a path means something else in every process: its own standard streams and descriptors (``/dev/stdin``,
#: ``<(…)`` in a shell is ``/dev/fd/63``), its terminal, its ``/proc/self``
_PER_PROCESS = ("/dev/", "/proc/")


def _of_this_process(word: str) -> bool:
    """Whether ``word``, read as a path in this folder, names something only this process has: the server would open
    its own (``ufm analyze /dev/stdin < x.npz`` read the server's empty stdin)."""
    try:
        return any(p.startswith(_PER_PROCESS) for p in (os.path.abspath(word), os.path.realpath(word)))
    except (OSError, ValueError):
        return True


def connect(path: str, timeout: float = 1.0) -> Optional[socket.socket]:
    """A connection to the server listening at ``path``, or None (no server, a stale socket, a full queue, or a
    listener run by another user)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        ours = same_user(sock)
    except OSError:
        sock.close()
        return None
    if not ours:
        # the folder's checks happen before the connection, and in a shared temporary folder its name can be swapped
        # in between (a link to another user's folder): whoever listens must be us, or it could forge results
        sock.close()
        return None
    return sock


def same_user(sock: socket.socket) -> bool:
    """Whether the other end of a Unix socket runs as this user (Linux tells; elsewhere the private folder is the
    guard)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def ask(kind: bytes, path: Optional[str] = None) -> Optional[dict]:
    """Send a status or quit frame to this installation's server (listening at ``path``, :func:`socket_path` when
    None); its reply, or None when none runs."""
    path = path or socket_path()
    sock = connect(path) if path else None
    if sock is None:
        return None
    try:
        send(sock, kind)
        frame = receive(sock)
    except OSError:
        return None
    finally:
        sock.close()
    return json.loads(frame[1]) if frame and frame[0] == REPLY else None


def _terminal(stream) -> dict:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return {"tty": tty, "encoding": getattr(stream, "encoding", None) or "utf-8",
            "errors": getattr(stream, "errors", None) or "strict"}


def request_for(argv: list) -> dict:
    size = None
    for fd in (2, 1):
        try:
            size = os.get_terminal_size(fd)
            break
        except OSError:
            continue
    env = {k: os.environ[k] for k in ("COLUMNS", "LINES", "TERM", "NO_COLOR") if k in os.environ}
    if size is not None:
        env.setdefault("COLUMNS", str(size.columns))
        env.setdefault("LINES", str(size.lines))
    return {"argv": list(argv), "cwd": os.getcwd(), "env": env, "stdout": _terminal(sys.stdout),
            "stderr": _terminal(sys.stderr), "pid": os.getpid(), "umask": _umask()}


def _umask() -> int:
    """This process's file creation mask: the files a served command writes get the permissions they would get here
    (a user's ``umask 077`` keeps a result private)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def run(argv: list) -> Optional[int]:
    """Run ``argv`` on this installation's server; its exit status, or None when the command should run in this
    process (not routable, no server, busy, or the server died before printing anything)."""
    if switched_off() or not routable(argv):
        return None
    path = socket_path()
    sock = connect(path) if path else None
    if sock is None:
        return None
    try:
        send(sock, REQUEST, json.dumps(request_for(argv)).encode())
        sock.settimeout(ACCEPT_SECONDS)
        frame = receive(sock)
    except (OSError, ValueError):
        sock.close()
        return None
    if frame is None or frame[0] != ACCEPTED:
        sock.close()
        return None
    return _relay(sock, json.loads(frame[1]).get("pid"), command_of(argv))


def _relay(sock: socket.socket, pid, command: str) -> Optional[int]:
    """Copy the server's output to ours until its exit status arrives; pass Ctrl-C and SIGTERM on."""
    cancelled = {"at": None, "what": signals.describe(KeyboardInterrupt)}

    def on_signal(signum, frame):
        if cancelled["at"] is None:
            cancelled["at"] = time.monotonic()
        if signum == signal.SIGTERM:             # worded as the command words it (ufm.cli.main)
            cancelled["what"] = signals.describe(signals.Terminated)
        try:
            send(sock, SIGNAL, b"TERM" if signum == signal.SIGTERM else b"INT")
        except OSError:
            pass

    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, on_signal) for s in handled}
    printed = False
    try:
        sock.settimeout(0.5)
        while True:
            try:
                frame = receive(sock)
            except socket.timeout:
                if cancelled["at"] is not None and time.monotonic() - cancelled["at"] > CANCEL_SECONDS:
                    sys.stderr.write(f"ufm {command}: {cancelled['what']} (the ufm server, pid {pid}, did not stop the "
                                     f"command within {CANCEL_SECONDS:.0f} s)\n")
                    return 130
                continue
            except OSError:
                frame = None
            if frame is None:
                if printed:
                    sys.stderr.write(f"ufm {command}: error: the ufm server (pid {pid}) stopped during the command; run "
                                     f"it again ({SWITCH}=0 runs it without a server)\n")
                    return 1
                sys.stderr.write(f"ufm {command}: the ufm server (pid {pid}) stopped before the command started; "
                                 "running it here\n")
                return None
            kind, payload = frame
            if kind == EXIT:
                return int(json.loads(payload)["status"])
            if kind in (STDOUT, STDERR):
                stream = sys.stdout if kind == STDOUT else sys.stderr
                try:
                    stream.buffer.write(payload)
                    stream.flush()
                except BrokenPipeError:
                    # the reader (`| head`) left: stop quietly as the command itself would, and let the server stop
                    signals.silence(stream)
                    return 0
                except OSError as exc:
                    # a full disk or a file system gone read-only: what the command itself does (ufm.cli.main), one
                    # line and exit 4 for stdout, exit 1 for stderr (its message has nowhere to go); leaving stops it
                    # on the server. Python's own flush at exit must not fail again on what is still buffered
                    signals.silence(stream)
                    if kind == STDERR:
                        return 1
                    try:
                        sys.stderr.write(f"ufm {command}: error: could not write standard output "
                                         f"({exc.strerror or exc})\n")
                        sys.stderr.flush()
                    except OSError:
                        pass
                    return 4
                printed = printed or kind == STDOUT
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
