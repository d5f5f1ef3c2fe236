import os
import tempfile

# Subprocess tests (the CLI, sweep workers, experiments) each start a fresh JAX: a persistent compilation cache shared
# by the session lets the second process that compiles a program load it instead (measured: a small `ufm solve`
# 10.8 s cold, 4.8 s from the cache). It lives in a temporary folder, so every test run starts clean.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ufm-tests-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# no test's `ufm` process hands its command to a `ufm serve` the developer may have running (tests/test_server.py
# starts its own, with this variable removed)
os.environ.setdefault("UFM_SERVER", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# Certification runs in float64; strict rank promotion turns silent broadcasting bugs into errors.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
