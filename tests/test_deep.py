"""The deep UFM (ufm/deep.py, docs/theory.md §12): depth 1 is eq. (7) unchanged, and the deep objective and its
gradient agree with an independent numpy implementation (hand-written forward and backward passes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm.deep import DeepParams, DeepProblem, deep_objective, deep_problem, flatten, unflatten
from ufm.errors import UFMInputError
from ufm.model import Params, objective
from ufm.problem import Problem


# ---------------------------------------------------------------------------------------------------------------
# independent numpy reference: forward pass, per-sample losses and their logit gradients, backward pass


def _np_loss(z, y, name, **p):
    """Per-sample loss and ∂L/∂z for z (K×N) and labels y (N), the formulas of eqs. (3)–(6) written out."""
    K, N = z.shape
    onehot = np.eye(K)[:, y]
    if name == "mse":
        kappa, beta = p.get("kappa", 1.0), p.get("beta", 1.0)
        w = np.where(onehot > 0, kappa, 1.0)
        r = z - beta * onehot
        return (w * r**2).sum(axis=0), 2 * w * r
    zmax = z.max(axis=0)
    e = np.exp(z - zmax)
    prob = e / e.sum(axis=0)
    logp = z - zmax - np.log(e.sum(axis=0))
    if name == "ce":
        return -(onehot * logp).sum(axis=0), prob - onehot
    if name == "ls":
        a = p["alpha"]
        t = (1 - a) * onehot + a / K
        return -(t * logp).sum(axis=0), prob - t
    raise ValueError(name)


def _np_deep(Ws, H, b, y, lams, lam_H, lam_b, relu, loss, **lp):
    """f and (∇W_1, …, ∇W_L, ∇H, ∇b) of the deep UFM, by hand."""
    hs, pres = [H], []
    for W in Ws[:-1]:
        pre = W @ hs[-1]
        pres.append(pre)
        hs.append(np.maximum(pre, 0) if relu else pre)
    z = Ws[-1] @ hs[-1] + (0 if b is None else b[:, None])
    N = H.shape[1]
    per, dz = _np_loss(z, y, loss, **lp)
    f = per.mean() + sum(0.5 * l * (W**2).sum() for l, W in zip(lams, Ws)) + 0.5 * lam_H * (H**2).sum()
    if b is not None:
        f += 0.5 * lam_b * (b**2).sum()
    dz = dz / N
    grads = [None] * len(Ws)
    grads[-1] = dz @ hs[-1].T + lams[-1] * Ws[-1]
    dh = Ws[-1].T @ dz
    for l in range(len(Ws) - 2, -1, -1):
        dpre = dh * (pres[l] > 0) if relu else dh
        grads[l] = dpre @ hs[l].T + lams[l] * Ws[l]
        dh = Ws[l].T @ dpre
    gH = dh + lam_H * H
    gb = None if b is None else dz.sum(axis=1) + lam_b * b
    return f, grads, gH, gb


CASES = [  # (K, d, n, depth, widths, activation, bias, loss, loss params, λ's)
    (3, 4, 2, 2, (5,), "linear", True, "ce", {}, (0.01, 0.02)),
    (4, 3, (3, 1, 2, 2), 3, (2, 6), "relu", True, "ce", {}, (0.01, 0.03, 0.002)),
    (3, 5, 2, 2, (4,), "relu", False, "mse", {"kappa": 2.0, "beta": 1.5}, (0.05, 0.01)),
    (5, 4, 1, 4, (3, 4, 5), "linear", False, "ls", {"alpha": 0.2}, (0.01, 0.01, 0.02, 0.005)),
    (2, 3, 3, 2, (3,), "relu", True, "mse", {}, (0.0, 0.0)),
]


# the first case in the default run; the other four (ReLU, mixed widths, class sizes, bias modes) in the slow tier,
# which CI runs: each compiles its own deep program (10–20 s under load)
@pytest.mark.parametrize("case", [CASES[0]] + [pytest.param(c, marks=pytest.mark.slow) for c in CASES[1:]])
def test_objective_and_gradient_match_numpy(case, rng):
    K, d, n, L, widths, act, bias, loss, lp, lams = case
    lam_H, lam_b = 0.015, 0.007
    if lams[0] == 0:                 # MSE with every λ zero has a minimiser (docs/theory.md §7.3)
        lam_H, lam_b = 0.0, 0.0
    p = deep_problem(K, d, n, depth=L, widths=widths, activation=act, lam_layers=lams, lam_H=lam_H,
                     lam_b=lam_b, bias=bias, loss=loss, **lp)
    assert isinstance(p, DeepProblem) and p.dims == (d, *widths, K)
    x0 = p.flatten(p.init_params(seed=3, scale=0.7), xp=np)
    x = x0 + 0.01 * rng.standard_normal(x0.shape)
    params = p.unflatten(x)
    f_ref, gW, gH, gb = _np_deep([np.asarray(W) for W in params.Ws], np.asarray(params.H),
                                 None if params.b is None else np.asarray(params.b), p.labels, lams, lam_H,
                                 lam_b if bias else 0.0, act == "relu", loss, **lp)
    g_ref = flatten(DeepParams(tuple(gW), gH, gb), xp=np)
    with jax.enable_x64(True):
        reg = type(p.reg)(*(jnp.asarray(v, jnp.float64) for v in p.reg))
        f, g = jax.value_and_grad(p.shape.flat_objective)(jnp.asarray(x), reg, p.shape)
    # float64 round-off over a few hundred terms: 1e-12 relative is ~4 orders above it and far below any real error
    np.testing.assert_allclose(float(f), f_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-10, atol=1e-13)
    assert p.objective(params) == pytest.approx(f_ref, rel=1e-12)


@pytest.mark.parametrize("loss,bias", [("ce", True), ("mse", False), ("ls", True)])
def test_depth_one_objective_is_eq7(loss, bias, rng):
    """The deep objective at L = 1 runs eq. (7)'s operations in the same order: equal to the last bit."""
    p7 = Problem.create(4, 5, (3, 2, 2, 1), lam_W=0.02, lam_H=0.01, lam_b=0.003, bias=bias, loss=loss)
    W, H = rng.standard_normal((4, 5)), rng.standard_normal((5, p7.N))
    b = rng.standard_normal(4) if bias else None
    from ufm.deep import DeepReg, DeepShape

    shape = DeepShape(p7.K, p7.d, p7.n, bias, p7.loss, (), "linear")
    with jax.enable_x64(True):
        f7 = objective(Params(jnp.asarray(W), jnp.asarray(H), None if b is None else jnp.asarray(b)), p7.reg, p7.shape)
        fd = deep_objective(DeepParams((jnp.asarray(W),), jnp.asarray(H), None if b is None else jnp.asarray(b)),
                            DeepReg((p7.lam_W,), p7.lam_H, p7.reg.lam_b), shape)
    assert float(f7) == float(fd)


def test_depth_one_is_todays_problem():
    """deep_problem(depth=1, …) is Problem.create(…): equal, same hash, same config (so caches and stores match)."""
    kw = dict(K=4, d=6, n=5, lam=5e-3, loss="ls", alpha=0.1)
    p1, p0 = deep_problem(depth=1, **kw), Problem.create(**kw)
    assert type(p1) is Problem and p1 == p0 and hash(p1) == hash(p0) and p1.config() == p0.config()
    assert deep_problem(depth=1, activation="relu", **kw) == p0     # no hidden layer: σ never applies


def test_flatten_roundtrip_and_layout():
    p = deep_problem(3, 4, 2, depth=3, widths="5,6", lam=0.01)
    params = p.init_params(seed=1)
    x = p.flatten(params, xp=np)
    assert x.size == p.num_params == 5 * 4 + 6 * 5 + 3 * 6 + 4 * 6 + 3
    back = unflatten(x, p.shape)
    for a, b in zip((*back.Ws, back.H, back.b), (*params.Ws, params.H, params.b)):
        np.testing.assert_array_equal(a, b)
    assert x[:20].reshape(5, 4).tolist() == np.asarray(params.Ws[0]).tolist()   # W_1 first, row-major


@pytest.mark.parametrize("kwargs,flag", [
    (dict(depth=0), "--depth"), (dict(depth=2, widths="3,4"), "--widths"), (dict(depth=2, widths="0"), "--widths"),
    (dict(depth=3, lam_layers="0.1,0.2"), "--lam-layers"), (dict(depth=2, lam_layers="0.1,-1"), "--lam-layers"),
    (dict(depth=2, lam_layers="0,0.1"), "--lam-layers"), (dict(depth=1, widths="3"), "--widths"),
    (dict(depth=2, activation="tanh"), "--activation"), (dict(depth=2, lam_W=0.1, lam_layers="0.1"), "--lam-w"),
    (dict(depth=99), "--depth"), (dict(depth=2, loss="nope"), "--loss"),
])
def test_bad_input_names_the_flag(kwargs, flag):
    with pytest.raises(UFMInputError) as exc:
        deep_problem(3, 4, 2, **kwargs)
    assert exc.value.flag == flag
