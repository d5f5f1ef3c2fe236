"""Ctrl-C and SIGTERM that are never lost.

A Python signal handler raises where the interpreter next runs Python code, and that can be a garbage-collector
callback (JAX registers one), whose exceptions Python prints and drops: measured, a SIGTERM to ``ufm solve`` landed in
``_xla_gc_callback`` ("Exception ignored in …"), and the solve ran on. So the handlers also record the signal, and the
long loops (the solver's chunks, the convex lifting's, a sweep's) call :func:`check` between steps, which raises it
again. The ``ufm`` command installs the handlers; library users keep Python's own.
"""

from __future__ import annotations

import signal
from typing import Optional

_pending: Optional[type] = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python next runs: every clean-up path for Ctrl-C runs for it too."""


def on_sigterm(signum, frame):
    global _pending
    _pending = Terminated
    raise Terminated()


def on_sigint(signum, frame):
    global _pending
    _pending = KeyboardInterrupt
    raise KeyboardInterrupt()


def describe(kind) -> str:
    """How the ``ufm`` command words a stop by ``kind`` (an interrupt class or instance): its one line on stderr."""
    if not isinstance(kind, type):
        kind = type(kind)
    return "terminated (SIGTERM)" if issubclass(kind, Terminated) else "interrupted"


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so that Python's flush at exit has nowhere to fail after a
    broken pipe or a full disk (a stream without a descriptor, a served command's relay, needs nothing)."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def check() -> None:
    """Raise the interrupt a handler recorded, in case its own raise was swallowed (module docstring)."""
    if _pending is not None:
        raise _pending()


def install() -> tuple:
    """Install the handlers (main thread only) and forget any earlier signal; returns what to hand to :func:`restore`.
    SIGINT is left alone where it is ignored (a background job started with ``&``)."""
    global _pending
    _pending = None
    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    return previous_term, previous_int


def restore(previous: tuple) -> None:
    global _pending
    _pending = None
    previous_term, previous_int = previous
    signal.signal(signal.SIGTERM, previous_term)
    if signal.getsignal(signal.SIGINT) is on_sigint:
        signal.signal(signal.SIGINT, previous_int)
