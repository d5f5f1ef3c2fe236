"""What a ufm process's results depend on besides its arguments, found without importing JAX.

Two long-lived things are reused across ``ufm`` commands and must be dropped the moment that changes: the stored
executables (:mod:`ufm.aot`) and a running server (:mod:`ufm.server`). Both are keyed by the digests here: every
source file of the package, and the installed libraries the package runs, identified by where they are and when their
files were written (an upgrade rewrites them), which :func:`importlib.util.find_spec` tells without importing them
(``ufm solve`` through a server must not pay for ``import jax`` on the client side).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

_sources: bytes | None = None

#: the libraries a ufm command's numbers come from (directly or through the code JAX traces)
LIBRARIES = ("jax", "jaxlib", "optax", "matfree", "numpy", "scipy", "ml_dtypes", "matplotlib", "pandas")


def sources_digest(fresh: bool = False) -> bytes:
    """SHA-256 over every ``.py`` file of the ufm package, names and contents: as they were when this process first
    asked (~1 ms), or as they are now on disk with ``fresh``."""
    global _sources
    if _sources is None or fresh:
        h = hashlib.sha256()
        package = os.path.dirname(os.path.abspath(__file__))
        for name in sorted(os.listdir(package)):
            if name.endswith(".py"):
                with open(os.path.join(package, name), "rb") as fh:
                    h.update(name.encode() + b"\0" + fh.read() + b"\0")
        digest = h.digest()
        if _sources is None:
            _sources = digest
        return digest
    return _sources


def code_digest(fresh: bool = False) -> bytes:
    """The sources, the libraries and the interpreter together: what a long-lived process runs."""
    return hashlib.sha256(sources_digest(fresh) + repr((libraries(), interpreter())).encode()).digest()


def libraries() -> tuple:
    """For each of :data:`LIBRARIES`: its name, where it is installed, and the size and modification time of its
    ``__init__.py`` (None where it is not installed)."""
    out = []
    for name in LIBRARIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        try:
            st = os.stat(origin) if origin else None
        except OSError:
            st = None
        out.append((name, origin, (st.st_size, st.st_mtime_ns) if st else None))
    return tuple(out)


def interpreter() -> tuple:
    """The Python running this process, and where ufm itself was imported from."""
    return os.path.realpath(sys.executable), sys.version, os.path.dirname(os.path.abspath(__file__))
