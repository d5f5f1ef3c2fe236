"""Compiled executables that persist across processes: a warm ``ufm`` command skips tracing and lowering too.

JAX's persistent compilation cache (:mod:`ufm.cache`) saves only the XLA compilation: every fresh process still traces
each jitted function to a jaxpr and lowers it to MLIR before it can look the program up, and on this 2-core machine
that was most of a warm command's JAX time (benchmarks/bench_startup.py: 0.36 s tracing and 0.55 s lowering against
0.09 s loading, README). :func:`jit` is ``jax.jit`` plus a second, per-executable store: on a call it looks for the
program already compiled for these static arguments and argument types, loads it with
``jax.experimental.serialize_executable`` and runs it, and on a miss lowers, compiles (past JAX's cache: see
:func:`_past_jax_cache`), runs and saves it.

The key of a saved executable holds everything the program depends on: the function's name, a digest of every source
file of the ufm package (an edit invalidates every entry), the JAX and jaxlib versions, the backend, its devices and
the host's CPU features (XLA:CPU compiles for the host), ``XLA_FLAGS``, JAX's trace-affecting settings (x64, matmul
precision, promotion rules, …), the static arguments and the shapes, dtypes and weak types of the others. Static
arguments enter by value and only when they are built of plain data (numbers, strings, tuples, enums, frozen
dataclasses and NamedTuples of those, ufm's own module-level functions); anything else, such as a user-supplied loss
function, is simply compiled as ``jax.jit`` would, never stored. JAX's compile-time settings and the versions and
locations of the libraries traced code runs (optax, matfree, numpy) are in the key as well; an edit made in place to
an installed library is not seen (delete the folder then). Each file carries a checksum, and only fresh compilations
are stored. A failed load or store, a damaged file, or a loaded executable that fails its first run only means
compiling again.

On when :func:`ufm.cache.enable` turned the compilation cache on (the ``ufm`` command), in its folder's
``executables/`` subfolder; off otherwise, and with ``UFM_NO_CACHE=1``. Loading an executable runs
native code from that folder: keep it private to you (it is, under ``~/.cache``), as for any compiled cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import inspect
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import types
import weakref
from typing import Optional

import jax
import numpy as np

_folder: Optional[str] = None
_counts = {"loaded": 0, "stored": 0, "compiled": 0, "rejected": 0}
_environment: Optional[str] = None
_prepared = False
_instances: "weakref.WeakSet" = weakref.WeakSet()


class _Unstable(Exception):
    """A static argument with no process-independent value: compile it, never store it."""


def enable(folder: str) -> Optional[str]:
    """Keep executables in ``folder`` (created if need be); returns it, or None when it cannot be written."""
    global _folder
    if jax.default_backend() != "cpu":
        # accelerator backends set up more foreign-function handlers while lowering (GPU solvers); their start-up
        # is not this store's concern: JAX's compilation cache alone serves them
        return None
    if not writable_folder(folder):
        return None
    _folder = folder
    return folder


def writable_folder(path: str) -> bool:
    """Create ``path`` if need be; whether this process can write in it (a cache that cannot is simply not used)."""
    try:
        os.makedirs(path, exist_ok=True)
        return os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def disable() -> None:
    global _folder
    _folder = None


def clear_memory() -> None:
    """Forget the executables this process loaded or compiled (the files stay): a long-lived server's memory bound."""
    for instance in list(_instances):
        instance._loaded.clear()


def stats() -> dict:
    """This process's executables loaded from the folder, stored to it, compiled for lack of one, and loaded but
    rejected (they failed their first run here and were compiled again)."""
    return dict(_counts)


def jit(fun=None, *, static_argnames=(), donate_argnames=()):
    """``jax.jit(fun, static_argnames=..., donate_argnames=...)`` whose executables persist across processes (module
    docstring)."""
    if fun is None:
        return functools.partial(jit, static_argnames=static_argnames, donate_argnames=donate_argnames)
    as_tuple = lambda names: (names,) if isinstance(names, str) else tuple(names)
    return _PersistentJit(fun, as_tuple(static_argnames), as_tuple(donate_argnames))


class _PersistentJit:
    def __init__(self, fun, static_argnames: tuple, donate_argnames: tuple = ()):
        self._jitted = jax.jit(fun, static_argnames=static_argnames, donate_argnames=donate_argnames)
        params = list(inspect.signature(fun).parameters)
        self._static_names = frozenset(static_argnames)
        self._static_nums = frozenset(i for i, name in enumerate(params) if name in self._static_names)
        self._donated_names = frozenset(donate_argnames)
        self._name = f"{fun.__module__}.{fun.__qualname__}"
        self._loaded: dict = {}
        functools.update_wrapper(self, fun)
        _instances.add(self)

    def lower(self, *args, **kwargs):
        return self._jitted.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        """Programs this process holds for the function: jit's compiled ones and the executables it loaded."""
        return self._jitted._cache_size() + len(self._loaded)

    def __call__(self, *args, **kwargs):
        if _folder is None:
            return self._jitted(*args, **kwargs)
        statics = tuple(a for i, a in enumerate(args) if i in self._static_nums) + tuple(
            (k, v) for k, v in sorted(kwargs.items()) if k in self._static_names)
        dynamic = (tuple(a for i, a in enumerate(args) if i not in self._static_nums),
                   {k: v for k, v in kwargs.items() if k not in self._static_names})
        leaves, tree = jax.tree.flatten(dynamic)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return self._jitted(*args, **kwargs)          # called inside another trace: an ordinary jit call
        avals = tuple(_aval(leaf) for leaf in leaves)
        key = (statics, tree, avals, _trace_context())
        compiled = self._loaded.get(key)
        if compiled is None:
            try:
                path = os.path.join(_environment_folder(), _digest(self._name, key) + ".exe")
            except _Unstable:
                return self._jitted(*args, **kwargs)
            compiled = _load(path)
            if compiled is not None:
                # the first run of a loaded executable is waited for here: one that cannot run in this process (an
                # executable missing a kernel failed so: "NOT_FOUND: Function … not found") is dropped and compiled
                # afresh instead of failing the command. With donated arguments the failed run may have consumed
                # them (a spare copy of a solver's state would double its memory): the file is dropped, the error
                # stands, and the next process compiles.
                try:
                    out = jax.block_until_ready(compiled(*dynamic[0], **dynamic[1]))
                except Exception as exc:
                    _counts["rejected"] += 1
                    _remove(path)
                    # a TypeError is a program for other arguments, refused before anything ran (nothing donated)
                    if self._donated_names and not isinstance(exc, TypeError):
                        raise
                else:
                    self._loaded[key] = compiled
                    return out
            with _past_jax_cache() as fresh:
                compiled = self._jitted.lower(*args, **kwargs).compile()
            _counts["compiled"] += 1
            targets = _custom_calls(compiled)
            # only a fresh compilation is stored: an executable JAX served from its own cache, serialised again,
            # lacked kernels in a later process ("NOT_FOUND: Function compare_convert_fusion not found", wt2)
            if fresh and all(t.startswith("lapack_") for t in targets):
                _store(path, compiled, lapack=bool(targets))
            self._loaded[key] = compiled
        return compiled(*dynamic[0], **dynamic[1])


def _load(path: str):
    """The executable stored at ``path``, or None (absent; a torn or foreign file is removed)."""
    try:
        with open(path, "rb") as fh:
            checksum, blob = pickle.load(fh)
        # a damaged file (a flipped bit in its machine code ran and crashed, or gave other numbers: wt2) is not run
        if hashlib.sha256(blob).digest() != checksum:
            raise ValueError("checksum")
        payload, in_tree, out_tree, lapack = pickle.loads(blob)
        if lapack:
            _prepare_backend()
        from jax.experimental.serialize_executable import deserialize_and_load

        compiled = deserialize_and_load(payload, in_tree, out_tree)
    except FileNotFoundError:
        return None
    except Exception:
        _remove(path)
        return None
    _counts["loaded"] += 1
    return compiled


#: a folder of executables for another ufm/JAX/host that gained no entry for this long is removed when a new one is
#: made: an upgrade leaves the old entries unreachable, and they would otherwise pile up
STALE_SECONDS = 7 * 24 * 3600
#: a temporary file older than this belongs to no running store (writing one takes well under a second)
TEMPORARY_SECONDS = 3600
_tidied: set = set()


def _environment_folder() -> str:
    """This environment's subfolder of the store (named by :func:`_environment_digest`), made on first use."""
    path = os.path.join(_folder, _environment_digest()[:16])
    if not os.path.isdir(path):
        try:
            os.makedirs(path, exist_ok=True)
            now = time.time()
            for name in os.listdir(_folder):
                other = os.path.join(_folder, name)
                # only the store's own folders (16 hex digits): anything else in there is somebody else's
                if (re.fullmatch(r"[0-9a-f]{16}", name) and other != path and os.path.isdir(other)
                        and now - os.path.getmtime(other) > STALE_SECONDS):
                    shutil.rmtree(other, ignore_errors=True)
        except OSError:
            pass                        # unwritable: loads miss and stores fail quietly, the run goes on
    elif path not in _tidied:
        # once a process: a store killed between writing its temporary file and renaming it left the file behind
        _tidied.add(path)
        try:
            now = time.time()
            for name in os.listdir(path):
                if name.startswith(".tmp-") and now - os.path.getmtime(os.path.join(path, name)) > TEMPORARY_SECONDS:
                    _remove(os.path.join(path, name))
        except OSError:
            pass
    return path


@contextlib.contextmanager
def _past_jax_cache():
    """Compile without JAX's persistent cache (neither read nor written); yields whether that could be arranged.
    JAX decides once per process whether its cache is in use (``compilation_cache.is_cache_used``), so turning the
    setting off would not do: the check itself is answered "no" for the duration."""
    try:
        from jax._src import compilation_cache

        original = compilation_cache.is_cache_used
    except (ImportError, AttributeError):           # another JAX: compile as usual, store nothing
        yield False
        return
    compilation_cache.is_cache_used = lambda backend: False
    try:
        yield True
    finally:
        compilation_cache.is_cache_used = original


def _custom_calls(compiled) -> set:
    """The foreign-function calls of an executable. A fresh process can run one without the lowering that made it
    only if their handlers are set up: XLA:CPU's LAPACK kernels (eigh, svd) are set up by JAX while lowering, not at
    import, and a loaded executable calling them before that crashed the process (measured: SIGSEGV in the convex
    lifting's FISTA). :func:`_prepare_backend` sets up LAPACK; an executable with any other custom call is never
    stored."""
    return set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text() or ""))


def _prepare_backend() -> None:
    """Set up the LAPACK handlers, as JAX does before running a deserialized exported program (its export module;
    it imports scipy.linalg, whose LAPACK it binds: ~0.4 s, paid only by a process that loads such a program)."""
    global _prepared
    if not _prepared:
        from jax._src.lax import linalg

        linalg.initialize_lapack()
        _prepared = True


def _aval(leaf):
    """Shape, dtype and weak type as given (JAX's canonical dtype then follows from the x64 setting in the key); the
    common cases without building an abstract value: this runs on every call, HVPs inside ARPACK's loop included."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return leaf.shape, leaf.dtype.name, False
    if type(leaf) in (bool, int, float, complex):
        return (), type(leaf).__name__, True
    aval = getattr(leaf, "aval", None) or jax.api_util.shaped_abstractify(leaf)
    return aval.shape, str(aval.dtype), bool(getattr(aval, "weak_type", False))


def _store(path: str, compiled, lapack: bool) -> None:
    from jax.experimental.serialize_executable import serialize

    try:
        inner = pickle.dumps((*serialize(compiled), lapack), protocol=pickle.HIGHEST_PROTOCOL)
        blob = pickle.dumps((hashlib.sha256(inner).digest(), inner), protocol=pickle.HIGHEST_PROTOCOL)
        # a temporary file renamed into place: a concurrent reader sees the whole file or none
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".exe")
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
        _counts["stored"] += 1
    except Exception:               # not serialisable on this backend, or the disk is full: the run goes on
        if "tmp" in locals():
            _remove(tmp)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _trace_context():
    """Every JAX setting that changes what a trace produces (x64, matmul precision, dtype and rank promotion, debug
    modes, …): the tuple jax.jit itself keys its compiled programs on."""
    try:
        from jax._src.config import trace_context

        return trace_context()
    except ImportError:                # a JAX without it: the settings ufm changes, at least
        c = jax.config
        return (c.jax_enable_x64, str(c.jax_default_matmul_precision), str(c.jax_numpy_rank_promotion),
                str(c.jax_numpy_dtype_promotion), c.jax_debug_nans, c.jax_debug_infs)


def _stable_context(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, tuple):
        return tuple(_stable_context(v) for v in value)
    # objects such as the axis environment, which is the empty one outside vmap and the like (a call under a trace
    # never reaches the store)
    return type(value).__qualname__


def _compile_settings() -> tuple:
    """JAX's settings, read at the miss: some change the compilation but not the trace (optimisation level,
    JAX_DISABLE_MOST_OPTIMIZATIONS, …: wt2 loaded an unoptimised run's executables in a default run). All enter the
    key but the cache and logging ones, which differ between processes and change no program."""
    return tuple(sorted((k, repr(v)) for k, v in jax.config.values.items() if "cache" not in k and "log" not in k))


def _digest(name: str, key) -> str:
    statics, tree, avals, context = key
    text = repr((_environment_digest(), name, _stable(statics), str(tree), avals, _stable_context(context),
                 _compile_settings()))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _stable(value):
    """A process-independent description of a static argument, or _Unstable."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__module__}.{type(value).__qualname__}.{value.name}"
    if isinstance(value, np.generic):
        return f"{value.dtype}:{value!r}"
    if isinstance(value, np.dtype):
        return f"dtype:{value}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return (_qualified(type(value)), tuple((f, _stable(getattr(value, f))) for f in value._fields))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_stable(v) for v in value))
    if isinstance(value, (frozenset, set)):
        return ("set", tuple(sorted(repr(_stable(v)) for v in value)))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(_stable(k)), _stable(v)) for k, v in value.items())))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (_qualified(type(value)),
                tuple((f.name, _stable(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, (types.FunctionType, type)):
        return "fn:" + _qualified(value)
    raise _Unstable(type(value).__name__)


def _qualified(obj) -> str:
    """module.qualname of a ufm class or function defined at module level (its source is in the digest)."""
    module, qualname = getattr(obj, "__module__", "") or "", getattr(obj, "__qualname__", "")
    if not (module == "ufm" or module.startswith("ufm.")) or "<locals>" in qualname or "<lambda>" in qualname:
        raise _Unstable(f"{module}.{qualname}")
    return f"{module}.{qualname}"


def _environment_digest() -> str:
    """What every executable depends on besides its own key: ufm's sources, JAX, the backend and the host."""
    global _environment
    if _environment is None:
        import jaxlib

        from .fingerprint import sources_digest

        h = hashlib.sha256(sources_digest())
        devices = jax.devices()
        h.update(repr(_libraries()).encode())
        h.update(repr((jax.__version__, jaxlib.__version__, sys.version_info[:2], devices[0].platform,
                       devices[0].client.platform_version, tuple(d.device_kind for d in devices),
                       _cpu_features(), os.environ.get("XLA_FLAGS", ""))).encode())
        _environment = h.hexdigest()
    return _environment


#: libraries whose code ufm's traced functions run (optax's optimisers, matfree's Krylov loops) or whose numbers they
#: take in (numpy, ml_dtypes): their versions and locations enter the key, found without importing them
TRACED_LIBRARIES = ("optax", "matfree", "numpy", "ml_dtypes")


def _libraries() -> tuple:
    import importlib.metadata
    import importlib.util

    out = []
    for name in TRACED_LIBRARIES:
        try:
            spec = importlib.util.find_spec(name)
            version = importlib.metadata.version(name)
        except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
            spec, version = None, None
        out.append((name, version, spec.origin if spec else None))
    return tuple(out)


def _cpu_features() -> str:
    """The host CPU's feature flags (XLA:CPU code may use any of them), or the machine name where unreadable."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()
