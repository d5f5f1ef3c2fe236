import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ufm
from ufm.losses import CrossEntropy, FocalLoss, LabelSmoothing, RescaledMSE, as_loss

Z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
Y = np.array([0, 2])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_ce_hand_computed():
    # −log(e¹/(e¹+e²+e³)) and −log(e²/(e^0.5+e^−1+e²))
    expected = [-np.log(np.e / (np.e + np.e**2 + np.e**3)), -np.log(np.e**2 / (np.e**0.5 + np.e**-1 + np.e**2))]
    np.testing.assert_allclose(CrossEntropy()(Z, Y), expected, rtol=1e-14)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_focal_hand_computed(gamma):
    expected = [-(1 - _softmax(z)[y]) ** gamma * np.log(_softmax(z)[y]) for z, y in zip(Z, Y)]
    np.testing.assert_allclose(FocalLoss(gamma)(Z, Y), expected, rtol=1e-13)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_label_smoothing_hand_computed(alpha):
    K = Z.shape[1]
    expected = []
    for z, y in zip(Z, Y):
        smooth = np.full(K, alpha / K)
        smooth[y] = 1 - (K - 1) / K * alpha
        expected.append(-np.sum(smooth * np.log(_softmax(z))))
    np.testing.assert_allclose(LabelSmoothing(alpha)(Z, Y), expected, rtol=1e-14)


def test_ls_is_ce_plus_linear_term():
    # docs/theory.md §2.3: L_LS = L_CE − (α/K) Σ_{j≠k}(z_j − z_k)
    alpha, K = 0.3, Z.shape[1]
    lin = np.array([np.sum(z - z[y]) for z, y in zip(Z, Y)])
    np.testing.assert_allclose(LabelSmoothing(alpha)(Z, Y), CrossEntropy()(Z, Y) - alpha / K * lin, rtol=1e-13)


def test_mse_hand_computed():
    kappa, beta = 3.0, 2.0
    expected = [3 * (1 - 2) ** 2 + 2**2 + 3**2, 3 * (2 - 2) ** 2 + 0.5**2 + 1.0]
    np.testing.assert_allclose(RescaledMSE(kappa, beta)(Z, Y), expected, rtol=1e-14)


def test_fl0_and_ls0_equal_ce(rng):
    z = rng.normal(size=(50, 7)) * 5
    y = rng.integers(0, 7, size=50)
    np.testing.assert_allclose(FocalLoss(0.0)(z, y), CrossEntropy()(z, y), rtol=1e-14)
    # LS goes through log_softmax, CE through softplus: equal up to round-off of logits of size ~15 (abs ~1e-15)
    np.testing.assert_allclose(LabelSmoothing(0.0)(z, y), CrossEntropy()(z, y), rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("loss", [CrossEntropy(), FocalLoss(0.5), FocalLoss(2.0), LabelSmoothing(0.2)])
def test_large_logits_are_stable(loss):
    z = jnp.array([[1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0]])
    y = jnp.array([0, 0])
    v = loss(z, y)
    assert np.all(np.isfinite(v))
    # second row: margin −2000 against the true class, so the loss is ≈ 2000 (CE), ≥ 1000 for all
    assert v[1] > 1000
    assert v[0] < 1e-300 or isinstance(loss, LabelSmoothing)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 0.9, 1.0, 2.5])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_focal_gradient_finite_at_saturation(gamma, dtype):
    # p_k rounds to exactly 1 here; naive (1-p)**γ has a 0·∞ gradient for γ < 1 (docs/theory.md §2.6)
    z = jnp.array([[200.0, 0.0, 0.0], [5.0, 1.0, 0.0]], dtype=dtype)
    y = jnp.array([0, 0])
    g = jax.grad(lambda z: jnp.sum(FocalLoss(gamma)(z, y)))(z)
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("loss", [CrossEntropy(), FocalLoss(0.5), FocalLoss(2.0), LabelSmoothing(0.1), RescaledMSE(2.0, 1.5)])
def test_check_grads(loss, rng):
    z = jnp.asarray(rng.normal(size=(6, 4)))
    y = jnp.asarray(rng.integers(0, 4, size=6))
    check_grads(lambda z: loss(z, y), (z,), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, flag",
    [(dict(loss="fl", gamma=-0.1), "--gamma"), (dict(loss="ls", alpha=1.0), "--alpha"),
     (dict(loss="ls", alpha=-0.01), "--alpha"), (dict(loss="mse", kappa=0.0), "--kappa"),
     (dict(loss="mse", beta=-1.0), "--beta"), (dict(loss="fl", gamma=float("nan")), "--gamma"),
     (dict(loss="hinge"), "--loss"), (dict(loss="ce", gamma=2.0), "--gamma"),
     (dict(loss="no_such_module_xyz:f"), "--loss"), (dict(loss="json:no_such_function"), "--loss")],
)
def test_bad_loss_input(kwargs, flag):
    with pytest.raises(ufm.UFMInputError) as e:
        as_loss(**kwargs)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(flag + ":")
    assert "\n" not in str(e.value)


def test_losses_are_hashable_static_configuration():
    assert hash(FocalLoss(2.0)) == hash(FocalLoss(2.0))
    assert FocalLoss(2.0) != FocalLoss(3.0)
    assert as_loss("fl", gamma=2.0) == FocalLoss(2.0)
