"""Public API hygiene and the ``python -m ufm`` entry point.

Every name in ``ufm.__all__`` must load in a fresh interpreter and stay the documented object (a class or a
function, never a module) whatever else was touched first: importing a submodule sets an attribute of the same name
on the package, so a public name that equals a submodule's name would be silently replaced. Each check runs in its
own interpreter because the failure depends on import order, which one test process cannot reset.
"""

from __future__ import annotations

import json
import os
import pkgutil
import random
import subprocess
import sys
import textwrap

import pytest

import ufm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's ufm."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def _python_m(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", "ufm", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


#: the check every subprocess ends with: each public name is its defining module's object, a class or a function
_VERIFY = textwrap.dedent("""
    import importlib, inspect, json, sys
    import ufm
    bad = {}
    for name in ufm.__all__:
        value = getattr(ufm, name)
        home = importlib.import_module("ufm." + ufm._WHERE[name])
        if inspect.ismodule(value):
            bad[name] = "is a module: " + value.__name__
        elif value is not getattr(home, name):
            bad[name] = "is not ufm.%s.%s" % (ufm._WHERE[name], name)
        elif not (inspect.isclass(value) or inspect.isfunction(value)):
            bad[name] = "is a %s, not a class or function" % type(value).__name__
        elif vars(ufm).get(name, value) is not value:
            bad[name] = "the package dict holds another object"
    print(json.dumps(bad))
""")


def _run_check(prelude: str) -> dict:
    r = _python(prelude + "\n" + _VERIFY)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_no_public_name_is_a_submodule_name():
    submodules = {m.name for m in pkgutil.iter_modules(ufm.__path__)}
    assert not submodules & set(ufm.__all__), submodules & set(ufm.__all__)
    assert sorted(ufm.__all__) == ufm.__all__ and len(set(ufm.__all__)) == len(ufm.__all__)
    assert set(ufm.__all__) <= set(dir(ufm))


#: third-party modules a forking parent may load first (speed only: they cannot set attributes on ufm)
_PRELOAD = ("numpy", "scipy.optimize", "scipy.sparse.linalg", "jax", "jax.numpy", "optax", "pandas", "sqlite3",
            "tomllib")

_FIRST_TOUCH = textwrap.dedent("""
    import importlib, inspect, json, os, sys
    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    assert not [m for m in sys.modules if m.split(".")[0] == "ufm"], "the parent must not have imported ufm"
    results = {}
    for name in NAMES:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # the child: ufm has never been imported in this process
            os.close(r)
            try:
                import ufm
                value = getattr(ufm, name)
                home = sys.modules["ufm." + ufm._WHERE[name]]
                if inspect.ismodule(value):
                    why = "is a module: " + value.__name__
                elif value is not getattr(home, name):
                    why = "is not the object of " + home.__name__
                elif not (inspect.isclass(value) or inspect.isfunction(value)):
                    why = "is a %s, not a class or function" % type(value).__name__
                else:
                    why = ""
            except BaseException as exc:
                why = "%s: %s" % (type(exc).__name__, exc)
            os.write(w, why.encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        results[name] = b"".join(chunks).decode() if status == 0 else "child died with status %d" % status
    print(json.dumps(results))
""")


@pytest.mark.slow   # a fresh interpreter per public name: ~30 s of CPU
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_each_public_name_loads_first_in_a_fresh_interpreter():
    """``import ufm; ufm.NAME`` as the very first touch of ufm, for every NAME, each in its own process.

    One fresh interpreter loads the heavy third-party libraries (never ufm) and forks a child per name, so every
    child starts with ufm unimported, as a new interpreter would, at a fraction of the cost of 38 JAX imports."""
    code = f"PRELOAD = {_PRELOAD!r}\nNAMES = {list(ufm.__all__)!r}\n" + _FIRST_TOUCH
    r = _python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(results) == ufm.__all__
    failures = {name: why for name, why in results.items() if why}
    assert not failures, failures


def _orders():
    names = list(ufm.__all__)
    rng = random.Random(20260)
    shuffled = [rng.sample(names, len(names)) for _ in range(2)]
    return {"sorted": names, "reversed": names[::-1], "shuffle-1": shuffled[0], "shuffle-2": shuffled[1]}


# the sorted order stays in the default run; the other three orders (same check) join the slow tier for time
@pytest.mark.parametrize("order", [o if o == "sorted" else pytest.param(o, marks=pytest.mark.slow) for o in sorted(_orders())])
def test_public_names_survive_touching_the_others(order):
    """Touch every public name in some order, call a few, import every submodule, then check all names again."""
    names = _orders()[order]
    touches = "\n".join(f"ufm.{n}" for n in names)
    prelude = textwrap.dedent("""
        import importlib, pkgutil
        import numpy as np
        import ufm
        ufm.Params
        prob = ufm.Problem.create(K=3, d=3, n=2, lam=1e-2)
        p = ufm.theory_point(prob)
        ufm.objective(ufm.Params(*p), prob.reg, prob.shape)
        ufm.nc_metrics(p.W, p.H, p.b, prob.labels, prob.K)
        ufm.as_loss("ls", alpha=0.1)
    """) + touches + textwrap.dedent("""
        for m in pkgutil.iter_modules(ufm.__path__):
            if m.name != "__main__":
                importlib.import_module("ufm." + m.name)
        from ufm import *
    """)
    bad = _run_check(prelude)
    assert not bad, bad


def test_submodules_first_then_names():
    """Importing every submodule before touching any public name (the other way round from the test above)."""
    prelude = textwrap.dedent("""
        import importlib, pkgutil
        import ufm
        for m in sorted(pkgutil.iter_modules(ufm.__path__), key=lambda m: m.name, reverse=True):
            if m.name != "__main__":
                importlib.import_module("ufm." + m.name)
    """)
    bad = _run_check(prelude)
    assert not bad, bad


# ------------------------------------------------------------------------------------------ python -m ufm


def test_python_m_ufm_version():
    r = _python_m("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ufm {ufm.__version__}"


def test_python_m_ufm_bad_flag_exits_2_with_one_line():
    r = _python_m("solve", "--no-such-flag")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "--no-such-flag" in r.stderr
    r = _python_m("solve", "-K", "1")                 # a bad value: also 2, naming the flag
    assert r.returncode == 2 and "-K" in r.stderr and r.stdout == ""


def test_python_m_ufm_passes_the_exit_status_through():
    """A solve that stops at its step bound exits 3 (not converged) through ``python -m ufm`` as through ``ufm``."""
    r = _python_m("solve", "-K", "3", "-d", "2", "-n", "2", "--solver", "gd", "--max-steps", "1", "--json")
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["status"] == "max_steps"


def test_python_m_ufm_help_does_not_import_jax():
    """Top-level ``python -m ufm --help`` through the real ``__main__`` (test_cli covers ``solve --help``)."""
    code = textwrap.dedent("""
        import runpy, sys
        sys.argv = ["ufm", "--help"]
        try:
            runpy.run_module("ufm", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            status = exc.code
        else:
            status = None
        sys.stdout.write("\\nSTATUS %s JAX %s\\n" % (status, sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib"))))
    """)
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "usage: ufm" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "STATUS 0 JAX []"
