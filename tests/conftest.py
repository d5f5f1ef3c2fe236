import jax
import pytest

# Certification runs in float64; strict rank promotion turns silent broadcasting bugs into errors.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
