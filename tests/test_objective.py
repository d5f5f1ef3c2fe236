"""Objective (7) against an independent numpy implementation written from docs/theory.md §1 with explicit loops."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ufm
from ufm.model import Params, flat_objective, flatten, objective, unflatten


def numpy_loss(z, k, name, p):
    """One sample's loss from eqs. (3)–(6), written out independently of ufm.losses."""
    K = z.size
    logp = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
    if name == "ce":
        return -logp[k]
    if name == "fl":
        return -((1 - np.exp(logp[k])) ** p["gamma"]) * logp[k]
    if name == "ls":
        y = np.full(K, p["alpha"] / K)
        y[k] += 1 - p["alpha"]
        return -np.sum(y * logp)
    if name == "mse":
        return p["kappa"] * (z[k] - p["beta"]) ** 2 + sum(z[j] ** 2 for j in range(K) if j != k)
    raise AssertionError(name)


def numpy_objective(W, H, b, prob, lam_b):
    K, n = prob.K, prob.n
    total = 0.0
    for k in range(K):
        for i in range(n):
            h = H[:, k * n + i]                 # class-major columns: h_{k,i}
            z = W @ h + (0 if b is None else b)
            total += numpy_loss(z, k, prob.loss.name, prob.loss.params())
    f = total / (n * K) + prob.lam_W / 2 * np.sum(W**2) + prob.lam_H / 2 * np.sum(H**2)
    if b is not None:
        f += lam_b / 2 * np.sum(b**2)
    return f


CASES = [("ce", {}), ("fl", dict(gamma=2.0)), ("fl", dict(gamma=0.5)), ("ls", dict(alpha=0.2)),
         ("mse", dict(kappa=2.0, beta=1.5))]


@pytest.mark.parametrize("loss, kw", CASES)
@pytest.mark.parametrize("bias", ["regularized", "free", "none"])
def test_objective_matches_numpy(loss, kw, bias, rng):
    prob = ufm.Problem.create(4, 3, 5, lam_W=0.03, lam_H=0.007, lam_b=(0.0 if bias == "free" else 0.011),
                              bias=bias != "none", loss=loss, **kw)
    W = rng.normal(size=(4, 3))
    H = rng.normal(size=(3, 20))
    b = rng.normal(size=4) if prob.bias else None
    expected = numpy_objective(W, H, b, prob, prob.lam_b)
    got = objective(Params(jnp.asarray(W), jnp.asarray(H), None if b is None else jnp.asarray(b)), prob.reg, prob.shape)
    # both sum ~20 O(1) terms in float64: agreement to ~1e-15 relative, 1e-13 leaves room for summation order
    np.testing.assert_allclose(float(got), expected, rtol=1e-13)
    x = flatten(Params(W, H, b), xp=np)
    assert x.size == prob.num_params
    np.testing.assert_allclose(float(flat_objective(jnp.asarray(x), prob.reg, prob.shape)), expected, rtol=1e-13)
    back = unflatten(x, prob.shape)
    np.testing.assert_array_equal(back.W, W)
    np.testing.assert_array_equal(back.H, H)


@pytest.mark.parametrize("loss, kw", CASES)
def test_objective_gradients(loss, kw, rng):
    prob = ufm.Problem.create(3, 2, 2, lam=0.05, loss=loss, **kw)
    x = jnp.asarray(rng.normal(size=prob.num_params))
    check_grads(lambda x: flat_objective(x, prob.reg, prob.shape), (x,), order=2, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_rotation_invariance(rng):
    # f(WQ, QᵀH, b) = f(W, H, b) for Q ∈ O(d): the symmetry behind the zero modes of docs/theory.md §5.6
    prob = ufm.Problem.create(4, 5, 3, lam=0.01, loss="ls", alpha=0.1)
    W, H, b = rng.normal(size=(4, 5)), rng.normal(size=(5, 12)), rng.normal(size=4)
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    f1 = objective(Params(W, H, b), prob.reg, prob.shape)
    f2 = objective(Params(W @ Q, Q.T @ H, b), prob.reg, prob.shape)
    np.testing.assert_allclose(float(f1), float(f2), rtol=1e-13)


def test_labels_are_class_major():
    prob = ufm.Problem.create(3, 2, 4)
    np.testing.assert_array_equal(prob.labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
