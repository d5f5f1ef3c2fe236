"""The persistent compilation cache of the ``ufm`` command (ufm/cache.py): a second process loads what the first
compiled (counted by JAX's own cache-hit events, not timed), and ``UFM_NO_CACHE=1`` turns it off."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the cache as the CLI enables it, one small jitted program (every compile stored: min compile time 0), then the
# counters of this process on the last line
RUN = ("import sys, json; from ufm import cache; folder = cache.enable(); import jax, jax.numpy as jnp; "
       "print(jax.jit(lambda x: jnp.sin(x) * jnp.cos(x) + x ** 3)(jnp.arange(4.0)).sum()); "
       "sys.stderr.write(json.dumps(cache.stats()) + '\\n')")


def _run(tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(PYTHONPATH=ROOT, UFM_CACHE_DIR=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               **env_extra)
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stderr.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    first = _run(tmp_path)
    assert first["misses"] > 0 and os.listdir(tmp_path / "cache")
    second = _run(tmp_path)
    assert second["hits"] >= first["misses"] and second["misses"] == 0, (first, second)


def test_the_command_enables_it_before_any_work(monkeypatch, capsys):
    from ufm import cache
    from ufm.cli import main

    called = []
    monkeypatch.setattr(cache, "enable", lambda *a, **k: called.append(True))
    assert main(["solve", "--lam-w", "0", "--lam-h", "1"]) == 2           # refused in the command, after enable()
    assert called == [True] and "--lam-w" in capsys.readouterr().err


def test_it_can_be_turned_off(tmp_path):
    stats = _run(tmp_path, UFM_NO_CACHE="1")
    assert stats == {"hits": 0, "misses": 0}
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_library_import_leaves_jax_config_alone():
    code = ("import jax, ufm; ufm.Problem; ufm.solve; "
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_enable_x64)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(env, PYTHONPATH=ROOT), cwd=ROOT)
    assert r.stdout.split() == ["None", "False"], r.stdout + r.stderr
