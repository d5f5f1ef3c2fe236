"""Closed-form and scalar-problem optima of objective (7) (docs/theory.md §3–§4).

Softmax losses (CE, LS, FL) with d ≥ K−1 (Thm 3.1): the optimum is neural collapse with scale fixed by the scalar
problem (docs/theory.md §4.2)

    t* = argmin_{t ≤ 0} φ(t) + c|t|,   c = √(n λ_W λ_H),   f* = φ(t*) + c|t*|,

where φ is the contrastive function of Definition 1 (eq. 9). Closed forms exist for CE and LS (§3.3). Rescaled
MSE (6) has closed forms with a free bias (simplex ETF, d ≥ K−1) and without a bias (orthogonal frame, d ≥ K)
(§5). A regularised bias with MSE, and user losses, have none.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .losses import CrossEntropy, FocalLoss, LabelSmoothing, RescaledMSE
from .model import Params
from .problem import Problem


def _u(t, K):
    """u(t) = log(1 + (K−1) e^{t/(K−1)}): −log p_k at equal off-target logits (docs/theory.md §3.2)."""
    return np.logaddexp(0.0, np.log(K - 1) + np.asarray(t, dtype=np.float64) / (K - 1))


def phi(t, loss, K: int):
    """φ of Definition 1 (eq. 9) at t = Σ_{j≠k}(z_j − z_k), for CE, LS and FL (docs/theory.md §3.3 table)."""
    u = _u(t, K)
    if isinstance(loss, CrossEntropy):
        return u
    if isinstance(loss, LabelSmoothing):
        return u - loss.alpha * np.asarray(t) / K
    if isinstance(loss, FocalLoss):
        return (-np.expm1(-u)) ** loss.gamma * u
    raise TypeError(f"φ is defined for CE, LS and FL, not {loss.describe()}")


def phi_prime0(loss, K: int) -> float:
    """φ′(0⁻), the origin threshold: the origin is a strict saddle iff √(nλ_Wλ_H) < φ′(0) (docs/theory.md §5.4)."""
    if isinstance(loss, CrossEntropy):
        return 1.0 / K
    if isinstance(loss, LabelSmoothing):
        return (1.0 - loss.alpha) / K
    if isinstance(loss, FocalLoss):
        g = loss.gamma
        return ((K - 1) / K) ** (g - 1) * (g * np.log(K) + K - 1) / K**2
    raise TypeError(f"φ′(0) is defined for CE, LS and FL, not {loss.describe()}")


def _t_grid(K: int, c: float) -> np.ndarray:
    """t ∈ [−span·(K−1), 0] on 200001 points, span = max(60, 2 log(1/c) + 20): beyond any optimum's margin (the CE
    margin is log((1 − (K−1)c)/c))."""
    span = max(60.0, 2.0 * np.log(1.0 / c) + 20.0) if c > 0 else 800.0
    return -np.linspace(0.0, span * (K - 1), 200001)


# ---- φ in the variable a = t/(K−1) + log(K−1) -------------------------------------------------------------------
# With a as above, u = softplus(a), 1 − p_k = σ(a) =: q and p_k = σ(−a) =: p (σ the logistic function), and
# du/da = q, dq/da = qp. Every loss's φ is ψ(a) − β t with ψ(a) = q^γ u (γ = 0 for CE and LS; β = α/K for LS, else 0),
# so one set of formulas serves all three:
#     ψ′(a) = q^γ (γ p u + q),      ψ″(a) = q^γ p B(a),      B(a) = γ² p u − γ q u + (2γ + 1) q,
# and φ′(t) = ψ′(a)/(K−1) − β, φ″(t) = ψ″(a)/(K−1)². Each factor is computed to full relative accuracy in both tails
# (σ and softplus evaluated without cancellation), so φ″ is accurate where it is tiny: the only subtraction is inside
# B, whose sign is what matters and whose absolute error is a few ulps of γu(γp + q) + (2γ+1)q.

def _a_of_t(t, K):
    return np.asarray(t, dtype=np.float64) / (K - 1) + np.log(K - 1)


def _expit(a):
    """σ(a) = 1/(1 + e^{−a}) to full relative accuracy at both ends (scipy.special.expit's formula; importing
    scipy.special costs every `ufm solve` process ~0.2 s of CPU, benchmarks/bench_startup.py)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _psi_parts(a, gamma):
    """(q, p, u, q^γ) at a: σ(a), σ(−a), softplus(a), σ(a)^γ, each to full relative accuracy."""
    a = np.asarray(a, dtype=np.float64)
    q, p = _expit(a), _expit(-a)
    u = np.logaddexp(0.0, a)
    qg = np.exp(-gamma * np.logaddexp(0.0, -a)) if gamma else np.ones_like(a)   # σ(a)^γ = e^{−γ softplus(−a)}
    return q, p, u, qg


def _psi(a, gamma):
    _, _, u, qg = _psi_parts(a, gamma)
    return qg * u


def _psi_d1(a, gamma):
    q, p, u, qg = _psi_parts(a, gamma)
    return qg * (gamma * p * u + q)


def _psi_B(a, gamma):
    """B(a): ψ″(a) = σ(a)^γ σ(−a) B(a), so sign φ″ = sign B (the prefactor is > 0 at every finite t)."""
    q, p, u, _ = _psi_parts(a, gamma)
    return gamma * u * (gamma * p - q) + (2.0 * gamma + 1.0) * q


def _psi_d2(a, gamma):
    q, p, u, qg = _psi_parts(a, gamma)
    return qg * p * (gamma * u * (gamma * p - q) + (2.0 * gamma + 1.0) * q)


def _gamma_beta(loss, K: int, what: str) -> tuple[float, float]:
    """(γ, β) with φ(t) = ψ_γ(a) − β t: CE (0, 0), LS (0, α/K), FL (γ, 0)."""
    if isinstance(loss, CrossEntropy):
        return 0.0, 0.0
    if isinstance(loss, LabelSmoothing):
        return 0.0, loss.alpha / K
    if isinstance(loss, FocalLoss):
        return float(loss.gamma), 0.0
    raise TypeError(f"{what} is defined for CE, LS and FL, not {loss.describe()}")


def phi_prime(t, loss, K: int):
    """φ′(t) (eq. 9's φ), analytic: ψ′(a)/(K−1) − β with ψ′(a) = σ(a)^γ(γ p u + q) (see the comment above).

    Vectorised; finite and accurate for t from −1e5 to 1e5 and K up to 10⁴ (it underflows to 0 only where the true
    value is below the smallest double)."""
    g, beta = _gamma_beta(loss, K, "φ′")
    return _psi_d1(_a_of_t(t, K), g) / (K - 1) - beta


def phi_second(t, loss, K: int):
    """φ″(t), analytic: σ(a)^γ σ(−a) B(a)/(K−1)², B(a) = γ²pu − γqu + (2γ+1)q (see the comment above). The sign of
    φ″ is the sign of B, which has no catastrophic cancellation where φ″ is tiny: φ_FL″(0) ≈ −3e-6 at K = 24, γ = 1
    is small because of the factor p/(K−1)² ≈ 1/K³, not because of a difference of near-equal terms."""
    g, _ = _gamma_beta(loss, K, "φ″")
    return _psi_d2(_a_of_t(t, K), g) / float(K - 1) ** 2


def _newton_root(fp, fpp, lo: float, hi: float, x0: float, it: int = 100) -> float:
    """Safeguarded Newton (Newton inside a shrinking bracket, bisection when a step leaves it) for fp(x) = 0 on
    [lo, hi] with fp(lo) ≤ 0 ≤ fp(hi); stops when the bracket or the step is at round-off."""
    x = min(max(x0, lo), hi)
    for _ in range(it):
        f = float(fp(x))
        if f == 0.0:
            return x
        if f < 0:
            lo = x
        else:
            hi = x
        d = float(fpp(x))
        xn = x - f / d if d > 0 else np.nan
        if not (lo < xn < hi):
            xn = 0.5 * (lo + hi)
        eps = np.finfo(float).eps
        if abs(xn - x) <= 2.0 * eps * max(abs(x), abs(xn)) or hi - lo <= 4.0 * eps * max(abs(lo), abs(hi)):
            return xn
        x = xn
    return x


def scalar_optimum(loss, K: int, c: float) -> tuple[float, float]:
    """(t*, f*) of min_{t≤0} φ(t) + c|t| = min_{t≤0} φ(t) − ct (docs/theory.md §4.2), to round-off.

    A dense grid (``_t_grid``) comes first because φ_FL may be non-convex (docs/theory.md §4.5): every grid local
    minimum is a candidate, and so is the boundary t = 0. Each interior candidate is polished by safeguarded Newton
    on φ′(t) = c with the analytic φ′, φ″ inside its grid bracket until the step is at round-off (|φ′(t) − c| is then
    a few ulps of c), and the best candidate wins. Relative accuracy of f* and t*: ~1e-14 (vs closed forms and
    mpmath, tests/test_theory.py)."""
    ts = _t_grid(K, c)
    g = lambda t: phi(t, loss, K) - c * t
    vals = g(ts)
    n = vals.size
    # local minima of the grid values (ts decreases with the index: ts[0] = 0 is the boundary)
    inner = np.flatnonzero((vals[1:-1] <= vals[:-2]) & (vals[1:-1] <= vals[2:])) + 1
    if inner.size > 16:      # flat stretches at round-off produce runs of ties: keep the best few
        inner = inner[np.argsort(vals[inner], kind="stable")[:16]]
    best_t, best_f = 0.0, float(vals[0])
    fp = lambda t: phi_prime(t, loss, K) - c
    fpp = lambda t: phi_second(t, loss, K)
    cand = inner.tolist() + ([n - 1] if vals[n - 1] <= vals[n - 2] else [])
    if float(fp(0.0)) > 0:   # g′(0⁻) > 0: a minimum may sit between ts[1] and the boundary t = 0
        cand.append(0)
    for i in cand:
        lo, hi = float(ts[min(i + 1, n - 1)]), float(ts[max(i - 1, 0)])
        if float(fp(lo)) > 0 or float(fp(hi)) < 0:     # no sign change: keep the grid point (cannot happen at a
            t, f = float(ts[i]), float(vals[i])         # genuine interior minimum of a smooth g)
        else:
            t = _newton_root(fp, fpp, lo, hi, float(ts[i]))
            f = float(g(t))
            if f > vals[i]:
                t, f = float(ts[i]), float(vals[i])
        if f < best_f:
            best_t, best_f = t, f
    return best_t, best_f


def ce_ls_closed_form(K: int, c: float, alpha: float = 0.0) -> tuple[float, float]:
    """(m*, f*) for CE (α = 0) and LS (docs/theory.md §4.4): with c′ = c + α/K, t* = 0 and f* = log K if c′ ≥ 1/K,
    else m* = log((1 − (K−1)c′)/c′), f* = −log(1 − (K−1)c′) + (K−1)c′m*."""
    cp = c + alpha / K
    if cp >= 1.0 / K:
        return 0.0, float(np.log(K))
    m = float(np.log((1.0 - (K - 1) * cp) / cp))
    return m, float(-np.log1p(-(K - 1) * cp) + (K - 1) * cp * m)


@dataclasses.dataclass(frozen=True)
class TheoryOptimum:
    """What theory predicts for a problem. ``applies`` is False when no closed form or theorem covers it; then
    ``reason`` says why and every number is None, except for FL with a non-convex φ, where the numbers describe
    the NC configuration and ``upper_bound_only`` is True."""

    applies: bool
    reason: str
    objective: Optional[float] = None
    W_fro_sq: Optional[float] = None
    H_fro_sq: Optional[float] = None
    margin: Optional[float] = None        # z_k − z_j (j ≠ k) for the ETF; a = z_k for the orthogonal frame
    t: Optional[float] = None             # t* of the scalar problem (softmax losses)
    b: Optional[list] = None              # b*, or None when there is no bias or it is free (see b_free)
    b_free: bool = False                  # softmax loss with λ_b = 0: b* = s·1 for any s
    geometry: Optional[str] = None        # "simplex_etf", "orthogonal_frame" or "trivial" (W* = H* = 0)
    c: Optional[float] = None             # √(n λ_W λ_H)
    origin_threshold: Optional[float] = None  # φ′(0) (softmax); the origin is a strict saddle iff c < it
    upper_bound_only: bool = False        # FL with non-convex φ: the NC value is attained, optimality unproven

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def phi_is_convex(loss, K: int, c: Optional[float] = None) -> bool:
    """Whether φ″ ≥ 0 on the whole branch t ≤ 0 of the scalar problem (analytic φ″, docs/theory.md §4.5 and §4.9).

    CE and LS: φ″ = pq/(K−1)² > 0, always convex. FL: sign φ″ = sign B(a), a = t/(K−1) + log(K−1) (see
    ``phi_second``). Since B ≥ q((2γ+1) − γu) and u = softplus(a), φ″ ≥ 0 wherever u ≤ 2 + 1/γ, i.e. for
    a ≤ a_c = log(e^{2+1/γ} − 1). So only a ∈ [a_c, log(K−1)] (t ∈ [(K−1)(a_c − log(K−1)), 0], length ≤ log K in a)
    needs checking; B is evaluated there on 20001 points and exactly at t = 0 (a = log(K−1)). φ_FL is convex on
    t ≤ 0 for every K ≤ e^{2+1/γ} (K ≤ 20 at γ = 1, K ≤ 54 at γ = 0.5). ``c`` is accepted for compatibility and unused:
    the test covers all of t ≤ 0, not just a span around the optimum.

    Convexity on t ≤ 0 is not by itself a proof that NC is globally optimal (a misclassified sample has t > 0, and
    φ_FL is concave for large t); ``ufm.envelope.envelope_bound`` is the certificate."""
    gamma, _ = _gamma_beta(loss, K, "φ″")
    if gamma == 0.0:
        return True
    L = float(np.log(K - 1))
    a_c = float(np.log(np.expm1(2.0 + 1.0 / gamma)))
    if L <= a_c:
        return True
    a = np.append(np.linspace(a_c, L, 20001), L)
    return bool(np.all(_psi_B(a, gamma) >= 0.0))


def c_of(problem: Problem) -> float:
    """c = √(n λ_W λ_H) of a balanced problem (docs/theory.md §4.2), square roots first: n·λ_W·λ_H underflows to 0
    for λ's near 1e-160 while c itself is representable."""
    return float(np.sqrt(problem.n) * np.sqrt(problem.lam_W) * np.sqrt(problem.lam_H))


def _no_theory(reason):
    return TheoryOptimum(applies=False, reason=reason)


def theory_optimum(problem: Problem) -> TheoryOptimum:
    """The global optimum of (7) predicted by docs/theory.md §4 (CE/LS/FL §4.1–§4.5, MSE §4.6), or why none applies."""
    K, d, n = problem.K, problem.d, problem.n
    lam_W, lam_H = problem.lam_W, problem.lam_H
    loss = problem.loss
    if lam_W <= 0 or lam_H <= 0:
        return _no_theory("theory needs λ_W > 0 and λ_H > 0 (without weight decay the norms blow up)")
    if not problem.balanced:
        return _no_theory(f"class sizes differ (n = {','.join(map(str, problem.counts))}): the closed forms need "
                          "balanced classes; the bounds (convex lifting, docs/theory.md) cover this case")
    c = c_of(problem)
    sc = float(np.sqrt(n) * np.sqrt(lam_H) / np.sqrt(lam_W))   # ‖W*‖_F² = sc·|t*| (docs/theory.md §4.3)
    if c == 0.0 or not np.isfinite(sc):
        return _no_theory(f"c = √(nλ_Wλ_H) underflows float64 at λ_W = {lam_W:g}, λ_H = {lam_H:g}: the optimum's "
                          "margins are beyond what float64 represents")

    if isinstance(loss, (CrossEntropy, LabelSmoothing, FocalLoss)):
        if d < K - 1:
            return _no_theory(f"d = {d} < K − 1 = {K - 1}: the simplex ETF does not fit, Thm 3.1 needs d ≥ K − 1")
        if isinstance(loss, FocalLoss):
            t, f = scalar_optimum(loss, K, c)
            m = -t / (K - 1)
        else:
            alpha = loss.alpha if isinstance(loss, LabelSmoothing) else 0.0
            m, f = ce_ls_closed_form(K, c, alpha)
            t = -(K - 1) * m
        W2 = sc * (K - 1) * m
        mode = problem.bias_mode
        if isinstance(loss, FocalLoss):
            # φ_FL is concave for large t whatever K, so Jensen's step needs its convex envelope (docs/theory.md
            # §4.9): the NC value is proven optimal exactly when the envelope bound meets it
            from .envelope import envelope_bound

            convex = envelope_bound(loss, K, c).certified
            reason = (f"Thm 3.1's chain with the convex envelope of φ_FL (docs/theory.md §4.9): the envelope bound "
                      f"meets the NC value" if convex else
                      f"for K = {K}, γ = {loss.gamma}, c = {c:.6g} the convex-envelope bound of φ_FL (docs/theory.md "
                      f"§4.9) stays below the NC value (c > 1/(K − 1) = {1 / (K - 1):.6g} with φ′(0) > 1/(K − 1)), "
                      "so the NC value below is attained but only an upper bound on the global optimum")
        else:
            convex = True
            reason = f"Thm 3.1 (d ≥ K − 1, {loss.name.upper()} satisfies Definition 1)"
        return TheoryOptimum(
            applies=convex, reason=reason, upper_bound_only=not convex,
            objective=f, W_fro_sq=W2, H_fro_sq=lam_W / lam_H * W2, margin=m, t=t,
            b=[0.0] * K if mode == "regularized" else None, b_free=mode == "free",
            geometry="trivial" if m == 0 else "simplex_etf", c=c, origin_threshold=float(phi_prime0(loss, K)),
        )

    if isinstance(loss, RescaledMSE):
        kappa, beta = loss.kappa, loss.beta
        mode = problem.bias_mode
        if mode == "regularized":
            return _no_theory("MSE with a regularised bias (λ_b > 0) has no closed form; use --lam-b 0 or --no-bias")
        if mode == "free":
            if d < K - 1:
                return _no_theory(f"d = {d} < K − 1 = {K - 1}: the simplex ETF needs d ≥ K − 1")
            m = max(beta - (kappa + K - 1) * c / (2 * kappa), 0.0)
            f = kappa * (K - 1) / (kappa + K - 1) * (beta - m) ** 2 + (K - 1) * c * m
            b0 = (kappa * (beta - m * (K - 1) / K) + (K - 1) * m / K) / (kappa + K - 1)
            W2 = sc * m * (K - 1)
            return TheoryOptimum(
                applies=True, reason="MSE with a free bias: simplex ETF (docs/theory.md §4.6)", objective=f, W_fro_sq=W2,
                H_fro_sq=lam_W / lam_H * W2, margin=m, b=[b0] * K,
                geometry="trivial" if m == 0 else "simplex_etf", c=c)
        if d < K:
            return _no_theory(f"d = {d} < K = {K}: the bias-free MSE optimum is an orthogonal frame, needs d ≥ K")
        a = max(beta - K * c / (2 * kappa), 0.0)
        W2 = sc * a * K
        return TheoryOptimum(
            applies=True, reason="MSE without a bias: orthogonal frame (docs/theory.md §4.6)",
            objective=kappa * (a - beta) ** 2 + K * c * a, W_fro_sq=W2, H_fro_sq=lam_W / lam_H * W2, margin=a,
            geometry="trivial" if a == 0 else "orthogonal_frame", c=c)

    return _no_theory(f"no closed form for the user loss {loss.describe()}")


def _simplex_frame(K: int, d: int) -> np.ndarray:
    """K×d matrix P with P Pᵀ = I_K − 11ᵀ/K (rows: a simplex ETF embedded in the first K−1 coordinates)."""
    C = np.eye(K) - np.ones((K, K)) / K
    Q, _ = np.linalg.qr(C)            # the first K−1 columns of C are independent, so Q's first K−1 span 1^⊥
    P = np.zeros((K, d))
    P[:, : K - 1] = Q[:, : K - 1]
    return P


def theory_point(problem: Problem, rotation: Optional[np.ndarray] = None) -> Params:
    """An explicit global minimiser (W*, H*, b*) built from :func:`theory_optimum` (h_{k,i} = √(λ_W/(λ_H n)) w_k,
    docs/theory.md §4.1). ``rotation`` (d×d orthogonal) maps it to W*Q, QᵀH* on the same orbit."""
    th = theory_optimum(problem)
    if not (th.applies or th.upper_bound_only):
        raise ValueError(f"no theory optimum for this problem: {th.reason}")
    K, d, n = problem.K, problem.d, problem.n
    if th.geometry == "orthogonal_frame":
        P = np.zeros((K, d))
        P[:, :K] = np.eye(K)
        W = np.sqrt(th.W_fro_sq / K) * P
    else:
        P = _simplex_frame(K, d)              # ‖P‖_F² = K − 1
        W = np.sqrt(th.W_fro_sq / (K - 1)) * P
    if rotation is not None:
        W = W @ rotation
    H = np.sqrt(problem.lam_W / (problem.lam_H * n)) * W[problem.labels].T
    b = None
    if problem.bias:
        b = np.asarray(th.b, dtype=np.float64) if th.b is not None else np.zeros(K)
    return Params(W, H, b)
