"""The closed-form logit derivatives (ufm.losses, ufm.model) against the autodiff implementation they replaced.

``_old_*`` below is that implementation, copied from ufm/losses.py and ufm/model.py at commit 8ad2ab2 (autodiff
through masked logsumexps on (N, K) rows): values, gradients and Hessians must agree with it, and with
independent oracles (extended-precision values, finite differences).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.losses import CrossEntropy, FocalLoss, LabelSmoothing, RescaledMSE, UserLoss, has_closed_form
import ufm.model as ufm_model
from ufm.model import flat_objective, flatten, unflatten

EPS = np.finfo(np.float64).eps


# --- the replaced implementation (8ad2ab2) --------------------------------------------------------------------


def _old_gap(z, labels):
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
    z_k = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
    lse_off = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, z), axis=-1)
    return lse_off - z_k


def _old_loss(loss):
    if isinstance(loss, FocalLoss):
        return lambda z, y: jnp.exp(-loss.gamma * jax.nn.softplus(-_old_gap(z, y))) * jax.nn.softplus(_old_gap(z, y))
    if isinstance(loss, CrossEntropy):
        return lambda z, y: jax.nn.softplus(_old_gap(z, y))
    if isinstance(loss, LabelSmoothing):
        def ls(z, y):
            K = z.shape[-1]
            y_smooth = (1.0 - loss.alpha) * jax.nn.one_hot(y, K, dtype=z.dtype) + loss.alpha / K
            return -jnp.sum(y_smooth * jax.nn.log_softmax(z, axis=-1), axis=-1)
        return ls

    def mse(z, y):
        onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
        return jnp.sum((1.0 + (loss.kappa - 1.0) * onehot) * (z - loss.beta * onehot) ** 2, axis=-1)
    return mse


def _old_flat_objective(x, reg, shape):
    W, H, b = unflatten(x, shape)
    Z = (W @ H).T if b is None else (W @ H).T + b[None, :]
    labels = jnp.asarray(np.repeat(np.arange(shape.K), shape.counts))
    f = jnp.mean(_old_loss(shape.loss)(Z, labels)) + 0.5 * reg.lam_W * jnp.sum(W**2) + 0.5 * reg.lam_H * jnp.sum(H**2)
    return f if b is None else f + 0.5 * reg.lam_b * jnp.sum(b**2)


# --- inputs ---------------------------------------------------------------------------------------------------

GAP_LOSSES = [CrossEntropy()] + [FocalLoss(g) for g in (0.0, 0.5, 1.0, 2.0, 5.0)]
ALL_LOSSES = GAP_LOSSES + [LabelSmoothing(0.0), LabelSmoothing(0.1), RescaledMSE(1.0, 1.0), RescaledMSE(0.3, 2.0)]


def _logits(rng, N=600, K=7):
    """Rows of every kind: moderate, large (±30), extreme (±1e3 and saturated margins of 5–60 at ±1e3)."""
    z = rng.normal(size=(N, K)) * rng.choice([1.0, 5.0, 30.0], size=(N, 1))
    y = rng.integers(0, K, size=N)
    ext = slice(N // 2, N)
    z[ext] = rng.choice([-1e3, 0.0, 1e3], size=(N - N // 2, K)) + rng.normal(size=(N - N // 2, K))
    sat = np.arange(N // 2, N, 2)
    z[sat, y[sat]] += rng.uniform(5.0, 60.0, size=sat.size)          # p_k → 1 at large |z|
    return z, y


def _gap_ref(z, y):
    """a = logsumexp_{j≠k} z_j − z_k in extended precision (an independent oracle)."""
    z = z.astype(np.longdouble)
    off = np.where(np.arange(z.shape[1])[None, :] == y[:, None], -np.inf, z)
    m = off.max(axis=1)
    return (m - z[np.arange(len(y)), y]) + np.log(np.exp(off - m[:, None]).sum(axis=1))


@functools.lru_cache(maxsize=1)
def _per_sample_results():
    """Every loss's values (old; new on (N, K) rows as ``__call__``; new on the (K, N) layout of (7)), its logit
    gradients (new and old) and ℓ'(a), for one set of logits: one compiled program for all of them."""
    z, y = _logits(np.random.default_rng(7))

    @jax.jit
    def run(z, y):
        out = []
        for loss in ALL_LOSSES:
            old = _old_loss(loss)
            a = _old_gap(z, y)
            out.append(dict(
                old=old(z, y), rows=loss(z, y), cols=loss._value(z.T, y, 0),
                g_new=jax.grad(lambda z: jnp.sum(loss(z, y)))(z), g_old=jax.grad(lambda z: jnp.sum(old(z, y)))(z),
                ell1=jax.vmap(jax.grad(loss._ell))(a) if hasattr(loss, "_ell") else jnp.zeros_like(a)))
        return out

    res = jax.tree.map(np.asarray, run(jnp.asarray(z), jnp.asarray(y)))
    return z, y, {loss: r for loss, r in zip(ALL_LOSSES, res)}


# --- values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: l.describe())
def test_values_match_old_implementation(loss):
    z, y, res = _per_sample_results()
    r = res[loss]
    old = r["old"]
    assert np.all(np.isfinite(r["rows"])) and np.all(np.isfinite(r["cols"]))
    moderate = np.abs(z).max(axis=1) <= 200
    # LS is log Σ_j e^{z_j − max z} − (z_k − max z) (+ α terms) in both: that log carries an absolute round-off of
    # ~K ulps of 1 whatever the order of its sum, which is all of the value when p_k ≈ 1 and α = 0
    atol = 4 * z.shape[1] * EPS if isinstance(loss, LabelSmoothing) else 0.0
    for new in (r["rows"], r["cols"]):
        # same formula, same operations: only the order of the K-term sums may differ with the layout. Relative 1e-13
        # where the logits are moderate ...
        np.testing.assert_allclose(new[moderate], old[moderate], rtol=1e-13, atol=atol)
        # ... and at |z| ~ 1e3 a few ulps of the log-partition: the value is ℓ(a) with a = (log s + m) − z_k, and a
        # reordered sum s can move log s + m by one ulp of m (1.1e-13 at 1e3), i.e. |Δ| ≤ |ℓ'(a)|·ulp(m); LS's
        # log Σ e^{z−max} likewise moves by K ulps of 1 at most. 4 ulps of each leave room for both roundings.
        slack = 4 * EPS * (np.abs(z).max(axis=1) * np.abs(r["ell1"]) + z.shape[1])
        assert np.all(np.abs(new - old) <= 1e-13 * np.abs(old) + slack)


@pytest.mark.parametrize("loss", GAP_LOSSES, ids=lambda l: l.describe())
def test_gap_values_against_extended_precision(loss):
    # independent oracle: ℓ(a) with a in 80-bit long double. The float64 value cannot beat one rounding of
    # log s + m (ulp(m)); it must not be worse than that either.
    z, y, res = _per_sample_results()
    a = _gap_ref(z, y)
    sp = lambda t: np.where(t > 0, t + np.log1p(np.exp(-np.abs(t))), np.log1p(np.exp(t)))
    ref = np.exp(-np.longdouble(loss.gamma if isinstance(loss, FocalLoss) else 0.0) * sp(-a)) * sp(a)
    new = res[loss]["rows"].astype(np.longdouble)
    bound = 1e-14 * np.abs(ref) + 4 * EPS * np.abs(z).max(axis=1) * np.abs(res[loss]["ell1"])
    tiny = np.finfo(np.float64).tiny               # e^a below float64's normal range rounds (or underflows) to it
    assert np.all(np.abs(new - ref) <= bound + tiny)


# --- gradients ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: l.describe())
def test_logit_gradients_match_autodiff_of_old(loss):
    z, y, res = _per_sample_results()
    g_new, g_old = res[loss]["g_new"], res[loss]["g_old"]
    assert np.all(np.isfinite(g_new))
    # entries are O(1) (softmax probabilities, ℓ'(a) ≤ 1 + γ·O(|a|) for FL, 2κ|z − β| for MSE): per-row scale
    scale = np.abs(g_old).max(axis=1, keepdims=True) + 1.0
    assert np.all(np.abs(g_new - g_old) <= 1e-12 * scale)


def test_gradient_and_hvp_finite_at_saturation_through_the_objective():
    # p_k rounds to exactly 1 (margins of 600 and more): (1 − p)^γ with γ < 1 is 0·∞ under naive autodiff
    W = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]]) * 30
    H = np.repeat(np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]]).T * 20, 2, axis=1)
    x = flatten(ufm.Params(W, H, np.zeros(3)), xp=np)
    probs = [ufm.Problem.create(3, 2, 2, lam=1e-3, loss="fl", gamma=g) for g in (0.5, 2.5)]

    @jax.jit
    def run(x64, x32):
        out = []
        for x in (x64, x32):
            reg = ufm.Reg(*(jnp.asarray(v, x.dtype) for v in probs[0].reg))
            for p in probs:
                f, g = jax.value_and_grad(flat_objective)(x, reg, p.shape)
                out.append((f, g, jax.jvp(lambda y: jax.grad(flat_objective)(y, reg, p.shape), (x,), (x,))[1]))
        return out

    res = run(jnp.asarray(x, jnp.float64), jnp.asarray(x, jnp.float32))
    for i, (f, g, Hv) in enumerate(res):
        assert g.dtype == Hv.dtype == (jnp.float64 if i < len(probs) else jnp.float32)
        assert np.isfinite(float(f)) and np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(Hv)))


# --- the objective: value, gradient, HVP ----------------------------------------------------------------------

_slow = pytest.mark.slow           # each case compiles its own programs (~3 s of CPU): the default run keeps four
# (loss, bias mode, logit layout): "rows" forces the (N, K) layout that ufm.model takes for large N
CASES = [(dict(loss="ce"), "regularized", "rows"), (dict(loss="fl", gamma=0.5), "free", "columns"),
         (dict(loss="ls", alpha=0.2), "none", "rows"), (dict(loss="mse", kappa=2.0, beta=1.5), "regularized", "columns"),
         pytest.param(dict(loss="ce"), "free", "columns", marks=_slow),
         pytest.param(dict(loss="fl", gamma=2.0), "none", "rows", marks=_slow),
         pytest.param(dict(loss="fl", gamma=5.0), "regularized", "columns", marks=_slow),
         pytest.param(dict(loss="ls", alpha=0.0), "free", "columns", marks=_slow),
         pytest.param(dict(loss="mse", kappa=0.3, beta=2.0), "none", "rows", marks=_slow)]


def _force_layout(monkeypatch, layout):
    # the layout is chosen at trace time from N; each test traces fresh functions, so the choice takes effect
    monkeypatch.setattr(ufm_model, "COLUMNS_MAX_ROW_BYTES", 0 if layout == "rows" else 1 << 40)


@pytest.mark.parametrize("kw, bias, layout", CASES)
def test_objective_derivatives_match_old_and_finite_differences(kw, bias, layout, monkeypatch):
    _force_layout(monkeypatch, layout)
    prob = ufm.Problem.create(4, 3, (3, 5, 2, 4), lam_W=0.03, lam_H=0.007, lam_b=0.0 if bias == "free" else 0.011,
                              bias=bias != "none", **kw)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=prob.num_params))
    v = jnp.asarray(rng.normal(size=prob.num_params))
    reg, shape = prob.reg, prob.shape
    hs = jnp.array([0.0, 1e-3, -1e-3, 5e-4, -5e-4])

    @jax.jit
    def run(x, v):
        f_new, g_new = jax.vmap(lambda h: jax.value_and_grad(flat_objective)(x + h * v, reg, shape))(hs)
        grad_old = jax.grad(_old_flat_objective)
        H_old, g_old = jax.jacfwd(lambda y: (grad_old(y, reg, shape),) * 2, has_aux=True)(x)
        Hv = jax.jvp(lambda y: jax.grad(flat_objective)(y, reg, shape), (x,), (v,))[1]     # what ufm.hessian.hvp does
        return f_new[0], g_new, _old_flat_objective(x, reg, shape), g_old, Hv, H_old @ v

    f_new, g_h, f_old, g_old, Hv, Hv_old = jax.tree.map(np.asarray, run(x, v))
    # logits of order 1: the same sums up to the order of ~14 terms; 1e-13 as for the per-sample values
    np.testing.assert_allclose(f_new, f_old, rtol=1e-13)
    np.testing.assert_allclose(g_h[0], g_old, rtol=1e-12, atol=1e-13 * np.abs(g_old).max())
    assert np.all(np.isfinite(Hv))
    # oracle 1: the dense Hessian of the old (autodiff) objective; both exact up to round-off (~1e-15)
    assert np.linalg.norm(Hv - Hv_old) <= 1e-10 * np.linalg.norm(Hv)
    # oracle 2: Richardson-extrapolated central differences of the new gradient: truncation O(h⁴) ≈ 1e-12 and
    # round-off ≈ 1e-16/h ≈ 1e-13 at h = 1e-3
    fd = lambda i: (g_h[i] - g_h[i + 1]) / (2 * float(hs[i]))
    rich = (4 * fd(3) - fd(1)) / 3
    assert np.linalg.norm(Hv - rich) <= 1e-10 * np.linalg.norm(Hv)


# --- what goes through which path -----------------------------------------------------------------------------


def test_user_loss_takes_the_generic_autodiff_path(rng):
    def my_ce(z, labels):                       # a user's CE: plain jax.numpy, autodiff only
        return jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]

    loss = UserLoss(fn=my_ce, label="my_ce", shift_invariant=True)
    assert not has_closed_form(loss) and all(has_closed_form(l) for l in ALL_LOSSES)

    class DoubledCE(CrossEntropy):              # a subclass with its own values loses the built-in derivatives
        def __call__(self, z, labels):
            return 2.0 * super().__call__(z, labels)

    assert not has_closed_form(DoubledCE())
    z, y = jnp.asarray(rng.normal(size=(6, 4))), jnp.arange(6) % 4
    np.testing.assert_allclose(float(DoubledCE().mean(z, y)), 2 * float(CrossEntropy().mean(z, y)), rtol=1e-15)
    prob = ufm.Problem(K=4, d=3, n=(3, 5, 2, 4), lam_W=0.03, lam_H=0.007, lam_b=0.011, loss=loss)
    x = jnp.asarray(rng.normal(size=prob.num_params))

    def direct(x):                              # (7) with the user's function on (N, K) rows, nothing else
        W, H, b = unflatten(x, prob.shape)
        f = jnp.mean(my_ce((W @ H).T + b[None, :], jnp.asarray(prob.labels)))
        return f + 0.5 * (0.03 * jnp.sum(W**2) + 0.007 * jnp.sum(H**2) + 0.011 * jnp.sum(b**2))

    vg = jax.jit(jax.value_and_grad(flat_objective), static_argnums=2)
    f, g = vg(x, prob.reg, prob.shape)
    f_direct, g_direct = jax.jit(jax.value_and_grad(direct))(x)
    # the same operations up to the order of the products' sums
    np.testing.assert_allclose(float(f), float(f_direct), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_direct), rtol=1e-12, atol=1e-15)
    # and the user's CE agrees with the built-in CE's closed-form path
    f_ce, g_ce = vg(x, prob.reg, prob.replace(loss=CrossEntropy()).shape)
    np.testing.assert_allclose(float(f), float(f_ce), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ce), rtol=1e-11, atol=1e-14)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts XLA:CPU's matrix products")
@pytest.mark.parametrize("loss, layout", [("fl", "columns"), ("mse", "rows")])
def test_compiled_programs_do_exactly_the_needed_gemms(loss, layout, monkeypatch):
    # value-and-gradient: W H, G Hᵀ, Wᵀ G; HVP: W H, dW H, W dH, dG Hᵀ, G dHᵀ, Wᵀ dG, dWᵀ G. A recomputed forward
    # (no sharing between f, ∇f and the HVP) would show up as extra products, a dot_general transpose as a transpose.
    _force_layout(monkeypatch, layout)
    prob = ufm.Problem.create(5, 6, 7, lam=1e-2, loss=loss)
    x = jnp.zeros(prob.num_params)
    vg = jax.jit(lambda x: jax.value_and_grad(flat_objective)(x, prob.reg, prob.shape)).lower(x)
    hv = jax.jit(lambda x, v: jax.jvp(lambda y: jax.grad(flat_objective)(y, prob.reg, prob.shape), (x,), (v,))[1])
    for lowered, gemms in ((vg, 3), (hv.lower(x, x), 7)):
        text = lowered.compile().as_text()
        assert text.count(" dot(") == gemms
        assert " transpose(" not in text
        logits_type = f"[{prob.N},{prob.K}]" if layout == "rows" else f"[{prob.K},{prob.N}]"
        assert f"{logits_type}{{1,0}} dot(" in text          # the logits come out of W H in the chosen layout
