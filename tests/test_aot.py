"""Executables kept across processes (ufm/aot.py): a second process runs what the first compiled without tracing or
lowering (counted, not timed), with the same numbers; the key separates every input that changes the program; a
torn file, an unstable static argument or a call under a trace falls back to compiling; UFM_NO_CACHE turns it off."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the command in-process (so this process's counters can be printed), its stdout kept, the counters on stderr
RUN = ("import sys, json, io, contextlib; from ufm.cli import main; from ufm import aot; out = io.StringIO()\n"
       "with contextlib.redirect_stdout(out): code = main(sys.argv[1:])\n"
       "print(out.getvalue()); sys.stderr.write(json.dumps(dict(aot.stats(), code=code)) + '\\n')")
# the default solve with its certified bounds: the solver's chunks, the end-of-solve second-order test and the convex
# lifting (whose SVDs call LAPACK: the case that crashed a fresh process before its handlers were set up)
ARGS = ["solve", "-K", "4", "-d", "6", "-n", "5", "--lam", "5e-3", "--json"]


def _run(folder, *args, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "UFM_"))}
    env.update(PYTHONPATH=ROOT, UFM_CACHE_DIR=str(folder), **env_extra)
    r = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=240, env=env,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout), json.loads(r.stderr.strip().splitlines()[-1])


def _without_times(record):
    if isinstance(record, dict):
        return {k: _without_times(v) for k, v in record.items() if k not in ("wall_time_s", "seconds", "elapsed")}
    if isinstance(record, list):
        return [_without_times(v) for v in record]
    return record


def test_a_second_process_runs_what_the_first_compiled(tmp_path):
    first, s1 = _run(tmp_path / "cache", *ARGS)
    assert s1["code"] == 0 and s1["compiled"] > 0 and s1["stored"] == s1["compiled"] and s1["loaded"] == 0, s1
    second, s2 = _run(tmp_path / "cache", *ARGS)
    assert s2["loaded"] == s1["stored"] and s2["compiled"] == s2["stored"] == s2["rejected"] == 0, (s1, s2)
    assert first["status"] == "converged" and first["bounds"]["certified"]
    # the same executables: the same numbers to the last bit
    assert _without_times(second) == _without_times(first)


@pytest.mark.parametrize("switch", ["UFM_NO_CACHE", pytest.param("UFM_NO_EXECUTABLES", marks=pytest.mark.slow)])
def test_off_with_no_cache(tmp_path, switch):
    _, stats = _run(tmp_path / "cache", *ARGS, "--no-bounds", **{switch: "1"})      # the solve alone: a cold one
    assert stats == {"loaded": 0, "stored": 0, "compiled": 0, "rejected": 0, "code": 0}
    assert not (tmp_path / "cache" / "executables").exists()


@pytest.fixture
def store(tmp_path):
    assert aot.enable(str(tmp_path / "exe")) == str(tmp_path / "exe")
    yield tmp_path / "exe"
    aot.disable()


def _files(store):
    return sorted(p for p in store.rglob("*.exe"))


def _scale(x, k, *, mode):
    return x * k if mode == "times" else x + k


def _fresh():
    """A new wrapper of the same function: an empty in-memory table, as in a new process."""
    return aot.jit(_scale, static_argnames=("k", "mode"))


def test_the_key_separates_statics_shapes_dtypes_and_settings(store):
    x3, x4 = np.arange(3.0), np.arange(4.0)
    cases = [((x3, 2), "times"), ((x3, 3), "times"), ((x3, 3), "plus"), ((x4, 2), "times"),
             ((x3.astype(np.int32), 2), "times"), ((x3[0], 2), "times")]
    with jax.enable_x64(True):
        expected = [np.asarray(_scale(jnp.asarray(x), k, mode=m)) for (x, k), m in cases]
        for (x, k), m in cases:
            _fresh()(x, k, mode=m)
    files = _files(store)
    assert len(files) == len(cases)
    before = aot.stats()
    with jax.enable_x64(True):
        got = [np.asarray(_fresh()(x, k, mode=m)) for (x, k), m in cases]
    assert aot.stats()["loaded"] - before["loaded"] == len(cases)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and np.array_equal(g, e)
    # x64 off is another program (float32 result), never the float64 one
    before = aot.stats()
    with jax.enable_x64(False):
        y = _fresh()(x3, 2, mode="times")
    assert y.dtype == jnp.float32 and aot.stats()["compiled"] == before["compiled"] + 1
    assert len(_files(store)) == len(cases) + 1


def test_a_torn_file_is_compiled_again_and_replaced(store):
    with jax.enable_x64(True):
        want = np.asarray(_fresh()(np.arange(5.0), 7, mode="times"))
        (path,) = _files(store)
        path.write_bytes(path.read_bytes()[:100])
        before = aot.stats()
        got = np.asarray(_fresh()(np.arange(5.0), 7, mode="times"))
        assert np.array_equal(got, want) and aot.stats()["compiled"] == before["compiled"] + 1
        assert path.stat().st_size > 100
        assert np.array_equal(np.asarray(_fresh()(np.arange(5.0), 7, mode="times")), want)


def test_a_flipped_bit_is_caught_by_the_checksum(store):
    # machine code with one bit flipped ran and crashed the process, or gave other numbers (wt2): never run it
    with jax.enable_x64(True):
        want = np.asarray(_fresh()(np.arange(4.0), 3, mode="times"))
        (path,) = _files(store)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        before = aot.stats()
        got = np.asarray(_fresh()(np.arange(4.0), 3, mode="times"))
    assert np.array_equal(got, want)
    assert aot.stats()["compiled"] == before["compiled"] + 1 and aot.stats()["loaded"] == before["loaded"]


def test_a_stored_executable_that_fails_to_run_is_compiled_again(store, monkeypatch):
    with jax.enable_x64(True):
        want = np.asarray(_fresh()(np.arange(3.0), 2, mode="plus"))

        class Broken:
            def __call__(self, *a, **k):
                raise RuntimeError("NOT_FOUND: Function wrapped_minimum not found")

        real = aot._load
        monkeypatch.setattr(aot, "_load", lambda path: Broken() if real(path) is not None else None)
        before = aot.stats()
        got = np.asarray(_fresh()(np.arange(3.0), 2, mode="plus"))
    after = aot.stats()
    assert np.array_equal(got, want)
    assert after["rejected"] == before["rejected"] + 1 and after["compiled"] == before["compiled"] + 1
    assert len(_files(store)) == 1                # the bad copy removed, the fresh one stored in its place


def _double(x):
    return 2.0 * x


def test_donated_arguments_and_a_failing_copy(store, monkeypatch):
    donating = lambda: aot.jit(_double, donate_argnames="x")          # noqa: E731
    with jax.enable_x64(True):
        first = np.asarray(donating()(jnp.arange(3.0)))
        before = aot.stats()
        again = np.asarray(donating()(jnp.arange(3.0)))
        assert aot.stats()["loaded"] == before["loaded"] + 1 and np.array_equal(first, again)

        class Broken:
            def __call__(self, *a, **k):
                raise RuntimeError("NOT_FOUND: Function wrapped_minimum not found")

        real = aot._load
        monkeypatch.setattr(aot, "_load", lambda path: Broken() if real(path) is not None else None)
        # the donated input may be gone: no silent retry, but the copy is dropped so that the next process compiles
        with pytest.raises(RuntimeError, match="NOT_FOUND"):
            donating()(jnp.arange(3.0))
    assert _files(store) == []


def test_a_killed_store_leaves_no_temporary_file_for_long(store):
    with jax.enable_x64(True):
        _fresh()(np.arange(2.0), 5, mode="plus")
        (path,) = _files(store)
        old, new = path.parent / ".tmp-killed.exe", path.parent / ".tmp-writing.exe"
        for p in (old, new):
            p.write_bytes(b"half a file")
        os.utime(old, (0, 0))
        aot._tidied.discard(str(path.parent))                  # as in a new process
        _fresh()(np.arange(2.0), 5, mode="plus")
    assert not old.exists() and new.exists()                   # another process may be writing the recent one


def test_an_edit_to_ufm_is_a_new_key_and_stale_folders_go(store, monkeypatch):
    stale = store / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "old.exe").write_bytes(b"from another ufm")
    os.utime(stale, (0, 0))                                    # untouched since 1970: long past STALE_SECONDS
    with jax.enable_x64(True):
        _fresh()(np.arange(2.0), 1, mode="plus")
        assert not stale.exists()
        monkeypatch.setattr(aot, "_environment", "another version of the sources")
        before = aot.stats()
        _fresh()(np.arange(2.0), 1, mode="plus")
    assert aot.stats()["compiled"] == before["compiled"] + 1 and len(_files(store)) == 2
    assert len(os.listdir(store)) == 2                         # one folder per environment, the recent one kept


def test_unstable_statics_compile_and_are_never_stored(store):
    f = aot.jit(lambda x, g: g(x), static_argnames="g")
    local = lambda v: v * 3.0                                   # noqa: E731: a function with no stable name
    assert float(f(jnp.asarray(2.0), local)) == 6.0
    assert float(f(jnp.asarray(2.0), jnp.negative)) == -2.0     # not ufm's: its code is not in the key
    assert _files(store) == []


def test_under_a_trace_it_is_an_ordinary_jit(store):
    g = _fresh()
    assert float(jax.jit(lambda x: g(x, 2, mode="times"))(jnp.asarray(1.5))) == 3.0
    assert float(jax.grad(lambda x: g(x, 2, mode="times"))(1.5)) == 2.0
    assert _files(store) == []


@pytest.mark.parametrize("value", [1, 2.5, "a", None, (1, (2, "b")), frozenset({1, 2}), {"k": 1}, np.float32(1)])
def test_plain_statics_have_a_stable_description(value):
    assert aot._stable(value) == aot._stable(value)
    assert "0x" not in repr(aot._stable(value))        # no object address: the same in every process


def test_ufm_statics_are_described_by_value():
    import ufm
    from ufm.methods import Chain, NewtonCG

    shape = ufm.Problem.create(4, 5, 3, loss="fl", gamma=2.0).shape
    assert aot._stable(shape) == aot._stable(ufm.Problem.create(4, 5, 3, loss="fl", gamma=2.0).shape)
    assert aot._stable(shape) != aot._stable(ufm.Problem.create(4, 5, 3, loss="fl", gamma=3.0).shape)
    assert aot._stable(NewtonCG()) != aot._stable(NewtonCG(forcing="sqrt"))
    assert "0x" not in repr(aot._stable(Chain()))
