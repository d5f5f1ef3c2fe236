"""JAX's persistent compilation cache for the ``ufm`` command: a repeated call loads its compiled programs instead of
compiling them again (on this 2-core machine compilation is most of a small command's time).

Where: ``$UFM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ufm/jax`` (``~/.cache/ufm/jax``). Off: ``UFM_NO_CACHE=1``.
A ``JAX_COMPILATION_CACHE_DIR`` the user set already wins (JAX reads it itself). JAX writes each
entry to a temporary file and renames it, so concurrent processes (sweep workers, parallel tests) share one folder
safely. JAX's size-bounded (LRU) mode is NOT used: its access-time bookkeeping races between processes (measured:
"Error writing persistent compilation cache entry … FileNotFoundError … -atime" warnings under a parallel test run),
so the folder grows with the shapes you run (a few hundred KB a command); delete it whenever you like. A failed cache
read or write only means compiling again, so JAX's warnings about it are silenced: stderr stays for ufm's own lines.

Beside it, in ``executables/``, whole compiled executables (:mod:`ufm.aot`): JAX's cache spares a warm process the
compiling, that store the tracing and lowering too. ``UFM_NO_CACHE`` turns both off, ``UFM_NO_EXECUTABLES`` the
second alone.

Library users keep control: nothing here runs on ``import ufm``; call :func:`enable` to opt in.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

#: programs that compile faster than this are not worth a file (JAX's default is 1 s; ufm's solver chunks, Hessian
#: products and lifting loops compile in 0.1–2 s each and a command runs several)
MIN_COMPILE_SECONDS = 0.05

_counts = {"hits": 0, "misses": 0}
_listening = False


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ufm", "jax")


def _env_flag(name: str) -> bool:
    """Whether an on/off variable is set to anything but empty, 0, false or no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def disabled_by_env() -> bool:
    return _env_flag("UFM_NO_CACHE")


def _count(event: str, **_kw) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _counts["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        _counts["misses"] += 1


def stats() -> dict:
    """Persistent-cache hits and misses seen by this process since :func:`enable` (JAX's monitoring events)."""
    return dict(_counts)


def enable(path: Optional[str] = None) -> Optional[str]:
    """Turn the persistent compilation cache on (module docstring); returns the folder used, or None when it is
    off (``UFM_NO_CACHE``) or the folder cannot be created or written (the command then simply compiles)."""
    global _listening
    import jax

    from . import aot

    if disabled_by_env():
        jax.config.update("jax_enable_compilation_cache", False)
        aot.disable()
        return None
    path = path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("UFM_CACHE_DIR") or default_dir()
    if not aot.writable_folder(path):
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    min_seconds = float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECONDS))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    warnings.filterwarnings("ignore", message=r"Error (reading|writing) persistent compilation cache")
    # spawned sweep workers start a fresh JAX: they read these at import
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECONDS))
    # whole executables beside it (ufm.aot): a warm process then skips tracing and lowering as well
    # (UFM_NO_EXECUTABLES=1 keeps JAX's cache alone: benchmarks/bench_startup.py compares the two)
    if _env_flag("UFM_NO_EXECUTABLES"):
        aot.disable()
    else:
        aot.enable(os.path.join(path, "executables"))
    if not _listening:
        from jax import monitoring

        monitoring.register_event_listener(_count)
        _listening = True
    return path


def disable() -> None:
    import jax

    from . import aot

    jax.config.update("jax_enable_compilation_cache", False)
    aot.disable()
