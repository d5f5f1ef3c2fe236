"""The persistent compilation cache of the ``ufm`` command (ufm/cache.py): a second process loads what the first
compiled (counted by JAX's own cache-hit events, not timed), and ``UFM_NO_CACHE=1`` turns it off."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one small solve through the CLI's own entry point, then the cache counters of this process on the last line
RUN = ("import sys, json; from ufm.cli import main; from ufm import cache; "
       "code = main(['solve', '-K', '3', '-d', '3', '-n', '2', '--lam', '0.01', '--json']); "
       "sys.stderr.write(json.dumps(cache.stats()) + '\\n'); sys.exit(code)")


def _run(tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(PYTHONPATH=ROOT, UFM_CACHE_DIR=str(tmp_path / "cache"), **env_extra)
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    json.loads(r.stdout)
    return json.loads(r.stderr.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    first = _run(tmp_path)
    assert first["misses"] > 0 and os.listdir(tmp_path / "cache")
    second = _run(tmp_path)
    # programs that compile in under MIN_COMPILE_SECONDS are not stored, so they miss again: count, don't demand 0
    assert second["hits"] > first["hits"] and second["misses"] < first["misses"], (first, second)


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
