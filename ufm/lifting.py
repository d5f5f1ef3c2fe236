"""The convex lifting of objective (7): a certified global optimum for any class sizes (docs/theory.md §5.8).

For a loss convex in the logits, classes of sizes n_k (N = Σ_k n_k) and λ_W, λ_H > 0, the optimum of (7) over any d
is bounded below by, and for d ≥ the rank of the solution equal to (Hong & Ling 2023, arXiv:2309.09725),

    F(A, b) = Σ_k w_k L(A_{:k}/√n_k + b, k) + μ‖A‖_* + ρ(b),   w_k = n_k/N,   μ = √(λ_W λ_H),   A ∈ R^{K×K},   (L1)

with ρ(b) = λ_b/2‖b‖² (regularised bias), 0 (free bias) and b absent (no bias). (L1) is solved by FISTA with
singular-value thresholding, and every answer carries a *proven* lower bound: the value of a feasible point of the
Fenchel dual (L2) (or, for a user loss, of a convex minorant), so ``gap`` bounds the distance to the true optimum
whether or not the solver converged. :func:`recover` turns A into an explicit minimiser (W, H, b) of (7).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import aot, signals
from .errors import UFMInputError
from .losses import CrossEntropy, LabelSmoothing, Loss, RescaledMSE, UserLoss, as_loss
from .problem import BIAS_MODES

#: singular values ≤ RANK_RTOL · σ_max count as zero in ``Lifted.rank`` (thresholding leaves exact zeros, so the
#: survivors are far above round-off)
RANK_RTOL = 1e-8
#: the gap is relative to max(|value|, this): relative down to optima of 1e-2, then absolute (tol·1e-2), so that an
#: optimum as small as ~1e-6 (λ → 0) is still certified to 1e-8 relative, while round-off (~1e-16) stays below it
GAP_FLOOR_SCALE = 1e-2

#: at and above this K the SVD runs in numpy (LAPACK gesdd) through a callback: measured on a 2-core CPU, jnp's SVD
#: inside the compiled loop is 22 µs vs 150 µs (callback) at K = 10 and about equal at K = 100–200, but 8.4 s vs
#: 0.3 s at K = 1000
NUMPY_SVD_FROM_K = 256


@dataclasses.dataclass(frozen=True, eq=False)
class Lifted:
    """The solution of the lifted problem (L1), with a proven bracket [lower, value] on its minimum.

    ``value`` is F at ``(A, b)``, the best primal point found; ``lower`` a lower bound on min F from weak duality
    (valid at any iteration), or None where no bound is available (a user loss with a free bias); ``gap`` =
    value − lower. ``converged``: gap ≤ tol·max(|value|, GAP_FLOOR_SCALE). ``rank`` counts the singular values of A above
    ``rank_rtol``·σ_max. ``method`` names how ``lower`` was obtained and what it assumes.
    """

    value: float
    lower: Optional[float]
    gap: Optional[float]
    A: np.ndarray
    b: Optional[np.ndarray]
    rank: int
    rank_rtol: float
    singular_values: np.ndarray
    iterations: int
    converged: bool
    status: str                     # "converged", "max_iter", "max_seconds", "nonfinite", or "stalled" (no bound)
    seconds: float
    method: str
    counts: tuple
    mu: float                       # √(λ_W λ_H)
    lam_b: float
    bias_mode: str
    loss: str

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("A", "b", "singular_values"):
            d[k] = None if d[k] is None else np.asarray(d[k]).tolist()
        d["counts"] = list(self.counts)
        return d


# ----------------------------------------------------------------------------------------------- validation


def _counts(counts) -> tuple:
    try:
        arr = np.asarray(counts)
        ok = arr.ndim == 1 and arr.size >= 2 and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
    except (TypeError, ValueError):
        ok = False
    if not ok or np.any(arr < 1):
        raise UFMInputError("--counts", counts, "give the class sizes n_k: at least 2 integers ≥ 1")
    return tuple(int(c) for c in arr)


def _positive(flag, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or v <= 0:
        raise UFMInputError(flag, value, "must be a finite number > 0 (the lifting needs λ_W λ_H > 0)")
    return v


def _check_bias(bias_mode, lam_b) -> tuple[str, float]:
    if bias_mode is None and isinstance(lam_b, (int, float)) and not isinstance(lam_b, bool):
        bias_mode = "regularized" if lam_b > 0 else "free"
    if bias_mode not in BIAS_MODES:
        raise UFMInputError("--bias", bias_mode, f"use one of {', '.join(BIAS_MODES)}")
    try:
        lam_b = float(lam_b)
    except (TypeError, ValueError):
        lam_b = float("nan")
    if not math.isfinite(lam_b) or lam_b < 0:
        raise UFMInputError("--lam-b", lam_b, "must be a finite number ≥ 0")
    if bias_mode == "regularized" and lam_b == 0:
        raise UFMInputError("--lam-b", lam_b, "a regularised bias needs λ_b > 0 (λ_b = 0 is the 'free' mode)")
    if bias_mode == "free" and lam_b != 0:
        raise UFMInputError("--lam-b", lam_b, "a free bias is unpenalised: give λ_b = 0 or bias_mode 'regularized'")
    return bias_mode, (lam_b if bias_mode == "regularized" else 0.0)


def _convex_loss(loss, K: int) -> Loss:
    """The loss as a Loss object, refused unless it is convex in the logits (the lifting's premise)."""
    loss = as_loss(loss)
    if not loss.convex_in_logits:
        why = ("declare it with fn.convex = True on your function if it is convex in the logits"
               if isinstance(loss, UserLoss) else "the lifting is exact only for losses convex in the logits "
               "(CE, LS, MSE); for FL see docs/theory.md §4.5")
        raise UFMInputError("--loss", loss.describe(), f"not convex in the logits: {why}")
    if isinstance(loss, UserLoss):
        from .problem import _check_user_loss

        _check_user_loss(loss, K, K)
    return loss


def _dual_kind(loss: Loss) -> tuple:
    """How the dual bound is computed (static): ('softmax', α) for L = lse(z) − ⟨q_k, z⟩ (CE: α = 0, LS),
    ('quadratic', κ, β) for the rescaled MSE (6), ('minorant',) for a user loss (no conjugate known)."""
    if isinstance(loss, CrossEntropy):
        return ("softmax", 0.0)
    if isinstance(loss, LabelSmoothing):
        return ("softmax", float(loss.alpha))
    if isinstance(loss, RescaledMSE):
        return ("quadratic", float(loss.kappa), float(loss.beta))
    return ("minorant",)


def _lipschitz(kind: tuple) -> Optional[float]:
    """A proven bound on the curvature of the smooth part of (L1) in the scaled variables (Ã, b), A = √N·Ã.

    There z_k = Ã_{:k}/√w_k + b and Σ_k w_k‖δÃ_k/√w_k + δb‖² ≤ 2(‖δÃ‖² + ‖δb‖²), so the curvature is at most
    2·sup‖∇²L‖ (the λ_b term sits in the prox): softmax ‖diag p − ppᵀ‖₂ ≤ 1/2; MSE 2·max(κ, 1). None: unknown."""
    if kind[0] == "softmax":
        return 1.0
    if kind[0] == "quadratic":
        return 4.0 * max(kind[1], 1.0)
    return None


# ------------------------------------------------------------------------------------ the compiled pieces


class _Consts(NamedTuple):
    """Traced data of one problem: class weights w_k = n_k/N, √n_k, √N, μ, λ_b and the bias mode as two flags
    (``has_bias`` 1.0/0.0; ``free``), so that the λ's, the class sizes and the bias mode never recompile."""

    w: jax.Array
    sqrt_n: jax.Array
    sqrt_N: jax.Array
    mu: jax.Array
    lam_b: jax.Array
    has_bias: jax.Array
    free: jax.Array


class _State(NamedTuple):
    """FISTA state in the scaled variables (Ã = A/√N, b): iterate x, extrapolated y, momentum t, step 1/L, the best
    iterate so far and its F, the previous F, the iteration count."""

    xA: jax.Array
    xb: jax.Array
    yA: jax.Array
    yb: jax.Array
    t: jax.Array
    L: jax.Array
    best_F: jax.Array
    best_A: jax.Array
    best_b: jax.Array
    it: jax.Array


def _logits(At, b, c: _Consts):
    """Rows z_k = Ã_{:k}/√w_k + b = A_{:k}/√n_k + b (the logits of class k's collapsed samples)."""
    return At.T / jnp.sqrt(c.w)[:, None] + b[None, :]


def _smooth(At, b, c: _Consts, loss: Loss):
    """s(Ã, b) = Σ_k w_k L(z_k, k): the smooth part of (L1), evaluated through the Loss object itself."""
    K = At.shape[0]
    return jnp.sum(c.w * loss(_logits(At, b, c), jnp.arange(K)))


def _host_svd(raw):
    """numpy's SVD of the float64 matrix whose bytes are ``raw`` (K, K, 8), returned as bytes the same way."""
    U, s, Vt = np.linalg.svd(np.ascontiguousarray(raw).view(np.float64)[..., 0], full_matrices=False)
    return tuple(np.ascontiguousarray(a, dtype=np.float64)[..., None].view(np.uint8) for a in (U, s, Vt))


def _svd(X, impl: str):
    """Thin SVD, by jnp or (large K) by numpy in a host callback.

    The callback trades raw bytes (uint8), not float64: XLA may run it on a worker thread where the scoped
    ``jax.enable_x64`` is off, and jax then casts float64 results to float32 and refuses them (measured, K = 1000)."""
    if impl == "jnp":
        return jnp.linalg.svd(X, full_matrices=False)
    K = X.shape[0]
    u8 = lambda *shape: jax.ShapeDtypeStruct((*shape, 8), np.uint8)
    out = jax.pure_callback(_host_svd, (u8(K, K), u8(K), u8(K, K)), jax.lax.bitcast_convert_type(X, jnp.uint8))
    return tuple(jax.lax.bitcast_convert_type(a, jnp.float64) for a in out)


def _svt(X, tau, impl: str):
    """prox of τ‖·‖_*: singular-value thresholding σ ↦ (σ − τ)₊; returns the matrix and its singular values."""
    U, s, Vt = _svd(X, impl)
    s = jnp.maximum(s - tau, 0.0)
    return (U * s[None, :]) @ Vt, s


def _prox_step(yA, yb, gA, gb, L, c: _Consts, impl: str):
    """The proximal gradient step of (L1) with step 1/L: SVT with threshold μ√N/L on Ã (μ‖A‖_* = μ√N‖Ã‖_*),
    the exact prox of λ_b/2‖b‖² on b (v ↦ L v/(L + λ_b); λ_b = 0 for a free bias), b held at 0 without one."""
    xA, s = _svt(yA - gA / L, c.mu * c.sqrt_N / L, impl)
    xb = c.has_bias * (L * yb - gb) / (L + c.lam_b)
    return xA, xb, s


@aot.jit(static_argnames=("loss", "backtrack", "impl"))
def _fista(state: _State, c: _Consts, stop, *, loss, backtrack, impl):
    """FISTA with gradient restart (O'Donoghue & Candès 2015) on (L1) until ``state.it == stop``, in one compiled
    loop. With ``backtrack`` the step 1/L halves until the quadratic upper bound holds (user losses, whose
    curvature is unknown); otherwise L is the proven bound of :func:`_lipschitz` and never changes."""
    value_and_grad = jax.value_and_grad(_smooth, argnums=(0, 1))

    def step(st: _State):
        s_y, (gA, gb) = value_and_grad(st.yA, st.yb, c, loss)

        def trial(L):
            xA, xb, sv = _prox_step(st.yA, st.yb, gA, gb, L, c, impl)
            s_x = _smooth(xA, xb, c, loss)
            dA, db = xA - st.yA, xb - st.yb
            model = s_y + jnp.vdot(gA, dA) + jnp.vdot(gb, db) + 0.5 * L * (jnp.vdot(dA, dA) + jnp.vdot(db, db))
            # a round-off allowance, or the test would fail forever once steps are at machine precision
            ok = s_x <= model + 1e-13 * (1.0 + jnp.abs(s_y))
            return xA, xb, sv, s_x, ok

        xA, xb, sv, s_x, ok = trial(st.L)
        L = st.L
        if backtrack:
            def bt_cond(carry):
                return ~carry[-1] & (carry[0] < 1e12)

            def bt_body(carry):
                L = 2.0 * carry[0]
                return (L, *trial(L))

            L, xA, xb, sv, s_x, _ = jax.lax.while_loop(bt_cond, bt_body, (L, xA, xb, sv, s_x, ok))
        F = s_x + c.mu * c.sqrt_N * jnp.sum(sv) + 0.5 * c.lam_b * jnp.vdot(xb, xb)
        # gradient-based restart: drop the momentum when the step and the last move point against each other
        restart = jnp.vdot(st.yA - xA, xA - st.xA) + jnp.vdot(st.yb - xb, xb - st.xb) > 0
        t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * st.t**2)))
        beta = jnp.where(restart, 0.0, (st.t - 1.0) / t_new)
        better = F < st.best_F
        return _State(
            xA=xA, xb=xb, yA=xA + beta * (xA - st.xA), yb=xb + beta * (xb - st.xb), t=t_new, L=L,
            best_F=jnp.where(better, F, st.best_F), best_A=jnp.where(better, xA, st.best_A),
            best_b=jnp.where(better, xb, st.best_b), it=st.it + 1,
        )

    return jax.lax.while_loop(lambda st: st.it < stop, step, state)


def _xlogx(p):
    """p log p with 0 log 0 = 0."""
    return jax.scipy.special.xlogy(p, p)


def _scale_to_ball(Theta, c: _Consts, impl: str):
    """s = min(1, μ/‖M‖₂), M = [w_k θ_k/√n_k]_k: Θ ↦ sΘ meets the spectral constraint of (L2)."""
    M = (Theta * (c.w / c.sqrt_n)[:, None]).T
    norm = _svd(M, impl)[1][0]
    return jnp.where(norm > c.mu, c.mu / norm, 1.0)


def _regularized_term(v, c: _Consts):
    """ρ*(−v) = ‖v‖²/(2λ_b) for a regularised bias; 0 otherwise (free: v = 0 by construction; none: no b)."""
    reg = c.lam_b > 0
    return jnp.where(reg, jnp.sum(v**2) / (2.0 * jnp.where(reg, c.lam_b, 1.0)), 0.0)


def _dual_softmax(At, b, c: _Consts, alpha, impl: str):
    """The value of (L2) at a feasible point built from the primal one, for L(z, k) = lse(z) − ⟨q_k, z⟩.

    L*(θ) = Σ_j p_j log p_j with p = θ + q_k in the simplex (+∞ elsewhere). Start from θ_k = ∇L(z_k) = p_k − q_k,
    p_k = softmax(z_k). Free bias: Σ_k w_k θ_k = 0 is needed; subtract the residual r from every θ_k and mix with
    the feasible point p_k = q̄ = Σ_k w_k q_k (all entries > 0) just enough to stay in the simplex. Then scale
    θ ↦ sθ (p ↦ s p + (1 − s) q_k, still in the simplex; the linear constraint survives scaling)."""
    K = At.shape[0]
    Q = (1.0 - alpha) * jnp.eye(K) + alpha / K
    P = jax.nn.softmax(_logits(At, b, c), axis=-1)
    qbar = c.w @ Q
    D = P - (c.w @ (P - Q))[None, :]
    # free bias: the largest t ∈ [0, 1] with t·D + (1 − t)·q̄ ≥ 0 entrywise
    ratio = jnp.where(D < 0, qbar[None, :] / (qbar[None, :] - jnp.minimum(D, 0.0)), 1.0)
    t = jnp.minimum(1.0, jnp.min(ratio))
    P = jnp.where(c.free, jnp.maximum(t * D + (1.0 - t) * qbar[None, :], 0.0), P)
    s = _scale_to_ball(P - Q, c, impl)
    P = s * P + (1.0 - s) * Q
    return -jnp.sum(c.w * jnp.sum(_xlogx(P), axis=1)) - _regularized_term(c.w @ (P - Q), c)


def _dual_quadratic(At, b, c: _Consts, kappa, beta, impl: str):
    """The value of (L2) for the rescaled MSE (6), L(z, k) = Σ_j c_j (z_j − t_j)², c = 1 + (κ−1)e_k, t = βe_k:
    L*(θ) = ⟨θ, t⟩ + Σ_j θ_j²/(4c_j), finite everywhere, so the free-bias residual is subtracted uniformly."""
    K = At.shape[0]
    C = 1.0 + (kappa - 1.0) * jnp.eye(K)
    T = beta * jnp.eye(K)
    Theta = 2.0 * C * (_logits(At, b, c) - T)
    Theta = jnp.where(c.free, Theta - (c.w @ Theta)[None, :], Theta)
    Theta = _scale_to_ball(Theta, c, impl) * Theta
    conj = jnp.sum(Theta * T, axis=1) + jnp.sum(Theta**2 / (4.0 * C), axis=1)
    return -jnp.sum(c.w * conj) - _regularized_term(c.w @ Theta, c)


def _minorant_bound(At, b, F_best, c: _Consts, loss: Loss, impl: str):
    """A lower bound on min F for a convex loss with L ≥ 0 and no known conjugate (user losses).

    Convexity gives F(A′, b′) ≥ s + ⟨G, A′ − A⟩ + ⟨g_b, b′ − b⟩ + μ‖A′‖_* + ρ(b′) (G = ∇_A s, A = √N Ã); with
    ⟨G, A′⟩ + μ‖A′‖_* ≥ −(‖G‖₂ − μ)₊‖A′‖_* and, as L ≥ 0, ‖A′‖_* ≤ F(A′, b′)/μ ≤ F_best/μ at any minimiser. The b
    part is minimised exactly: −‖g_b‖²/(2λ_b) (regularised), 0 (none). (A free bias gives −∞: not called.)"""
    s, (gAt, gb) = jax.value_and_grad(_smooth, argnums=(0, 1))(At, b, c, loss)
    G = gAt / c.sqrt_N
    A = At * c.sqrt_N
    norm = _svd(G, impl)[1][0]
    # b = 0 without a bias, and then g_b does not enter (no b′ to minimise over)
    linear = s - jnp.vdot(G, A) - jnp.maximum(norm - c.mu, 0.0) * F_best / c.mu
    bound = linear - jnp.vdot(b, gb) - _regularized_term(gb, c)
    # F < 0 somewhere proves L ≥ 0 false, and with it the bound on ‖A′‖_*: no bound rather than a wrong one
    return jnp.where(F_best >= 0, bound, -jnp.inf)


@aot.jit(static_argnames=("loss", "kind", "impl"))
def _lower_bound(At, b, F_best, c: _Consts, *, loss, kind, impl):
    if kind[0] == "softmax":
        return _dual_softmax(At, b, c, kind[1], impl)
    if kind[0] == "quadratic":
        return _dual_quadratic(At, b, c, kind[1], kind[2], impl)
    return _minorant_bound(At, b, F_best, c, loss, impl)


# ----------------------------------------------------------------------------------------------- the driver


def _method(kind: tuple, mode: str) -> str:
    if kind[0] == "minorant":
        if mode == "free":
            return ("no lower bound: a user loss has no known conjugate and a free bias leaves the convex minorant "
                    "unbounded below (lower = None)")
        return ("convex minorant at the best point, assuming the user's loss is convex in the logits and L ≥ 0 "
                "(‖A*‖_* ≤ value/μ)")
    return f"Fenchel dual (L2) at a feasible point built from the best primal point ({kind[0]} conjugate)"


def lifted_optimum(loss, counts, lam_W, lam_H, lam_b=0.0, bias_mode=None, *, tol=1e-12,
                   max_iter=200_000, max_seconds=None, rank_rtol=RANK_RTOL) -> Lifted:
    """min F of the lifted problem (L1) with a proven bracket [lower, value] (docs/theory.md §5.8).

    F(A, b) = Σ_k (n_k/N) L(A_{:k}/√n_k + b, k) + √(λ_W λ_H)‖A‖_* + ρ(b) equals the optimum of (7) for every
    d ≥ rank A* and bounds it from below for every d. ``loss`` is anything :func:`ufm.as_loss` accepts and must be
    convex in the logits (CE, LS, MSE, or a user function declared with ``fn.convex = True``); FL is refused.
    ``counts`` are the class sizes n_k; ``bias_mode`` one of "regularized" (λ_b > 0), "free" (λ_b = 0), "none";
    None means "regularized" when λ_b > 0 and "free" when λ_b = 0 (as ``Problem.bias_mode``).

    Solved by FISTA with restart and singular-value thresholding, in float64, until the duality gap is at most
    ``tol``·max(|value|, GAP_FLOOR_SCALE), ``max_iter`` iterations or ``max_seconds`` (checked between compiled chunks).
    ``lower`` is the dual value (L2) of a feasible point, so it is a valid bound whatever the solver reached.
    """
    counts = _counts(counts)
    K = len(counts)
    lam_W, lam_H = _positive("--lam-w", lam_W), _positive("--lam-h", lam_H)
    bias_mode, lam_b = _check_bias(bias_mode, lam_b)
    loss = _convex_loss(loss, K)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise UFMInputError("tol", tol, "must be a number ≥ 0")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise UFMInputError("max_iter", max_iter, "must be an integer ≥ 1")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise UFMInputError("max_seconds", max_seconds, "must be a number > 0, or None for no time limit")
    kind = _dual_kind(loss)
    L0 = _lipschitz(kind)
    impl = "jnp" if K < NUMPY_SVD_FROM_K else "numpy"
    n = np.asarray(counts, dtype=np.float64)
    N = float(n.sum())
    mu = math.sqrt(lam_W) * math.sqrt(lam_H)
    start = time.perf_counter()
    with jax.enable_x64(True):
        # numpy inputs: building them with jnp would compile a small program per shape on the first call
        f64 = functools.partial(np.asarray, dtype=np.float64)
        c = _Consts(w=f64(n / N), sqrt_n=f64(np.sqrt(n)), sqrt_N=f64(math.sqrt(N)), mu=f64(mu), lam_b=f64(lam_b),
                    has_bias=f64(bias_mode != "none"), free=np.asarray(bias_mode == "free"))
        zA, zb = np.zeros((K, K)), np.zeros(K)
        state = _State(xA=zA, xb=zb, yA=zA, yb=zb, t=f64(1.0), L=f64(L0 or 1.0), best_F=f64(np.inf), best_A=zA,
                       best_b=zb, it=np.asarray(0, dtype=np.int64))
        run = functools.partial(_fista, loss=loss, backtrack=L0 is None, impl=impl)
        bound = functools.partial(_lower_bound, loss=loss, kind=kind, impl=impl)
        lower, it, chunk, status, previous = -np.inf, 0, 32, "max_iter", np.inf
        while True:
            # compiled chunks of doubling length: few certificate evaluations, and the time cap is honoured
            # between chunks (the next chunk is sized from the measured time per iteration)
            t0 = time.perf_counter()
            stop = min(it + chunk, max_iter)
            state = run(state, c, np.asarray(stop, dtype=np.int64))
            value = float(state.best_F)
            signals.check()
            if not (kind[0] == "minorant" and bias_mode == "free"):
                # F is flat to second order at the optimum, so the best-F point can stop moving while the current
                # iterate's gradient (hence its dual point) keeps improving: bound at both, keep the best bound
                for At, b in ((state.best_A, state.best_b), (state.xA, state.xb)):
                    candidate = float(bound(At, b, state.best_F, c))
                    lower = candidate if candidate > lower else lower        # a NaN bound is never taken
            if not np.isfinite(value):
                status = "nonfinite"        # the loss gave no finite value anywhere the solver went
                break
            per_it = (time.perf_counter() - t0) / max(stop - it, 1)
            it = stop
            gap = value - lower
            if gap <= tol * max(abs(value), GAP_FLOOR_SCALE):
                status = "converged"
                break
            if not np.isfinite(lower) and previous - value <= tol * max(abs(value), GAP_FLOOR_SCALE):
                status = "stalled"          # no bound to certify with: stop when a whole chunk no longer helps
                break
            previous = value
            if it >= max_iter:
                break
            chunk = min(2 * chunk, 4096)
            if max_seconds is not None:
                left = max_seconds - (time.perf_counter() - start)
                if left <= per_it:
                    status = "max_seconds"
                    break
                chunk = max(1, min(chunk, int(left / per_it)))
        A = np.asarray(state.best_A) * math.sqrt(N)
        b = None if bias_mode == "none" else np.asarray(state.best_b)
    sv = np.linalg.svd(A, compute_uv=False)
    rank = int(np.sum(sv > rank_rtol * sv[0])) if sv[0] > 0 else 0
    has_lower = np.isfinite(lower)
    return Lifted(
        value=value, lower=float(lower) if has_lower else None, gap=float(value - lower) if has_lower else None,
        A=A, b=b, rank=rank, rank_rtol=rank_rtol, singular_values=sv, iterations=it, converged=status == "converged",
        status=status, seconds=time.perf_counter() - start, method=_method(kind, bias_mode), counts=counts, mu=mu,
        lam_b=lam_b, bias_mode=bias_mode, loss=loss.describe(),
    )


def recover(lifted: Lifted, d: int, lam_W: float, lam_H: float, counts=None, bias=None):
    """An explicit global minimiser (W, H, b) of (7) from the lifted solution A = UΣVᵀ of rank r ≤ d.

    W = (λ_H/λ_W)^{1/4} U Σ^{1/2} Rᵀ and H = (λ_W/λ_H)^{1/4} R Σ^{1/2} Ṽᵀ with Ṽᵀ = Vᵀ D^{-1/2} E (E the K×N class
    indicator, D = diag(n_k)) and R the first r columns of I_d: then WH = A D^{-1/2} E (every sample of class k has
    logits A_{:k}/√n_k + b) and each penalty equals √(λ_Wλ_H)/2 · tr Σ, so f(W, H, b) = F(A, b) (docs/theory.md
    §5.8). H's columns are class-major (class k's n_k columns consecutive, all equal). ``counts`` and ``bias``
    (True/False or a bias mode) default to the lifted problem's and must agree with it; d < r is refused.
    """
    lam_W, lam_H = _positive("--lam-w", lam_W), _positive("--lam-h", lam_H)
    mu = math.sqrt(lam_W) * math.sqrt(lam_H)
    if not math.isclose(mu, lifted.mu, rel_tol=1e-12):
        raise UFMInputError("--lam", (lam_W, lam_H), f"√(λ_W λ_H) = {mu:g} differs from the lifted μ = {lifted.mu:g}")
    counts = lifted.counts if counts is None else _counts(counts)
    if tuple(counts) != tuple(lifted.counts):
        raise UFMInputError("--counts", counts, f"the lifted problem has class sizes {list(lifted.counts)}")
    if bias is not None:
        want = bias if isinstance(bias, str) else ("none" if not bias else lifted.bias_mode)
        if (want == "none") != (lifted.b is None):
            raise UFMInputError("--bias", bias, f"the lifted problem's bias mode is {lifted.bias_mode!r}")
    d = int(d)
    if d < max(lifted.rank, 1):
        raise UFMInputError("-d", d, f"must be ≥ the rank {lifted.rank} of the lifted solution (and ≥ 1): below it "
                            "(7) does not reach the lifted value, which is then only a lower bound")
    r = lifted.rank
    U, s, Vt = np.linalg.svd(lifted.A)
    U, s, V = U[:, :r], s[:r], Vt[:r].T
    n = np.asarray(counts, dtype=np.float64)
    R = np.eye(d)[:, :r]
    W = (lam_H / lam_W) ** 0.25 * (U * np.sqrt(s)[None, :]) @ R.T
    Vtilde_T = (V / np.sqrt(n)[:, None]).T[:, np.repeat(np.arange(len(counts)), counts)]   # Vᵀ D^{-1/2} E
    H = (lam_W / lam_H) ** 0.25 * R @ (np.sqrt(s)[:, None] * Vtilde_T)
    b = None if lifted.b is None else np.array(lifted.b, dtype=np.float64)
    return W, H, b
