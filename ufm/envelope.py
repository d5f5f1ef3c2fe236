"""A proven lower bound on the balanced-class UFM optimum for a non-convex φ (docs/theory.md §4.9).

The chain that proves Thm 3.1 of Zhou et al. 2022 (docs/theory.md §4.2: the contrastive bound (9) per sample, Jensen
over the samples, Cauchy–Schwarz on the penalties) uses convexity of φ only at the Jensen step. Jensen holds for the
convex envelope φ** of φ over the whole real line (a misclassified sample has t_i > 0), so for every (W, H, b) with
balanced classes, in any feature dimension d,

    f(W, H, b) ≥ min_{t ∈ ℝ} φ**(t) + c|t| = min_{t ≤ 0} φ**(t) − ct =: bound,        c = √(n λ_W λ_H).

(φ** is non-decreasing for CE and FL, so the branch t > 0 never wins; for LS see ``envelope_bound``.) The NC point
attains nc_value = min_{t ≤ 0} φ(t) − ct (``ufm.theory.scalar_optimum``) ≥ bound; when the two agree the NC point is
certified globally optimal, otherwise the optimum lies in [bound, nc_value].

Dual form. With m(s) = inf_{t ∈ ℝ} φ(t) − st (= −φ*(s)), conjugate duality gives bound = max_{s ≤ c} m(s). The
inequality that matters needs no duality theory: for |s| ≤ c and any t_1..t_N, (1/N)Σφ(t_i) ≥ m(s) + s·t̄ and
s·t̄ + c|t̄| ≥ 0, so f ≥ m(s). Every single s is a proof, provided m(s) is evaluated as a guaranteed lower value
(``_Curve.m``). m is concave, m(s) = −∞ for s > 1/(K−1) (φ grows like t/(K−1)) and, for CE and FL, for s < 0 (φ → 0
as t → −∞). Note φ′(0) can exceed 1/(K−1) (FL at K = 100, γ = 3): then no tangent at t ≤ 0 is a global minorant.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .losses import FocalLoss
from .theory import _gamma_beta, _psi, _psi_d1, _psi_d2, scalar_optimum

_EPS = float(np.finfo(np.float64).eps)
_A_HI = 40.0          # right tail a ≥ 40 is bounded analytically (error ≤ Γ·40·e^{−40} ≈ 2e-16·Γ)
_A_MID_LO = -40.0     # fine grid on [−40, 40]; a coarse extension further left when the minimum can sit there
_H = 0.01             # fine grid step in a
_W_MIN = 1e-8         # subdivision stops here; the Taylor remainder is then ≤ ~F̄·1e-16
_CAP = 200_000        # at most this many undecided intervals per level (else the Taylor bound is used at once)


@dataclasses.dataclass(frozen=True)
class EnvelopeBound:
    """``lower`` ≤ the balanced-class UFM optimum (any d); ``nc_value`` (attained by NC at t = ``t_nc``) ≥ it.
    ``certified``: the two agree to 1e-8 relative, so NC is globally optimal. ``slope``: the dual s with
    lower = m(s) (in t units). ``method``: how the dual maximum was found ("tangent": the end s = min(c, s_max)
    already has a supergradient ≥ 0; "dual-search": bracketing search on the concave m)."""

    lower: float
    nc_value: float
    t_nc: float
    certified: bool
    slope: float
    method: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _f_bar(x0, x1, gamma):
    """Upper bound on |ψ″| over [x0, x1]. |ψ″| = q^γ p |γ²pu − γqu + (2γ+1)q| ≤ q^γ p (γ²pu + γqu + (2γ+1)q), and
    every factor is monotone in a (q, q^γ, u increasing; p decreasing), so evaluating each at the end where it is
    largest bounds the supremum. The factor (1 + 1e-12) absorbs the rounding of this evaluation."""
    q1 = 1.0 / (1.0 + np.exp(-x1))
    p0 = 1.0 / (1.0 + np.exp(x0))
    u1 = np.logaddexp(0.0, x1)
    qg1 = np.exp(-gamma * np.logaddexp(0.0, -x1)) if gamma else 1.0
    return (1.0 + 1e-12) * qg1 * p0 * (gamma * gamma * p0 * u1 + gamma * q1 * u1 + (2.0 * gamma + 1.0) * q1)


class _Curve:
    """ψ(a) = σ(a)^γ softplus(a) on a fixed grid, for guaranteed lower values of m̃(σ) = inf_a ψ(a) − σ(a − log(K−1)),
    0 ≤ σ ≤ 1 (σ = (s + β)(K−1) in the variables of ``ufm.theory``: m(s) = m̃(σ)). Grid data do not depend on σ, so
    one curve serves every c (``fl_band``)."""

    def __init__(self, K: int, gamma: float):
        self.K, self.gamma, self.L = K, float(gamma), float(np.log(K - 1))
        self.a = np.linspace(_A_MID_LO, _A_HI, round((_A_HI - _A_MID_LO) / _H) + 1)
        self.psi, self.dpsi = _psi(self.a, self.gamma), _psi_d1(self.a, self.gamma)
        self.fbar = _f_bar(self.a[:-1], self.a[1:], self.gamma)
        self.big_gamma = max(self.gamma, 1.0)

    def _grid(self, sig: float):
        if sig <= 0.0:
            return self.a, self.psi, self.dpsi, self.fbar
        # for small σ the minimiser sits where ψ′ ≈ (γ+1)e^{(γ+1)a} = σ; keep 40 units of a to its left
        a_lo = min(_A_MID_LO, np.log(sig / (self.gamma + 1.0)) / (self.gamma + 1.0) - 40.0)
        if a_lo >= _A_MID_LO:
            return self.a, self.psi, self.dpsi, self.fbar
        ext = np.arange(a_lo, _A_MID_LO, 0.5)
        ext = np.append(ext, _A_MID_LO)[:-1]
        a = np.concatenate([ext, self.a])
        psi = np.concatenate([_psi(ext, self.gamma), self.psi])
        dpsi = np.concatenate([_psi_d1(ext, self.gamma), self.dpsi])
        fb = np.concatenate([_f_bar(ext, np.append(ext[1:], _A_MID_LO), self.gamma), self.fbar])
        return a, psi, dpsi, fb

    def m(self, sig: float) -> tuple[float, float, float]:
        """(lower, upper, a*) for m̃(σ) = inf_{a∈ℝ} g(a), g(a) = ψ(a) − σ(a − L): lower ≤ m̃(σ) ≤ upper = g(a*).

        Why no minimum is missed (the proof behind ``lower``):
        * a ≥ A_hi = 40: σ(a)^γ ≥ 1 − Γp with Γ = max(γ, 1) (Bernoulli for γ ≥ 1; (1−p)^γ ≥ 1 − p for γ < 1),
          softplus(a) ≥ a and p ≤ e^{−a}, so ψ(a) ≥ a − Γ a e^{−a} and, for σ ≤ 1 and a ≥ A_hi ≥ 1,
          g(a) ≥ (1 − σ)A_hi + σL − Γ A_hi e^{−A_hi}.
        * a ≤ A_lo: ψ ≥ 0, so g(a) ≥ σ(L − A_lo) (σ ≥ 0). A_lo lies 40 units left of where the left-tail
          minimiser can sit, so this bound is never the active one for σ > 0, and is exact (0) for σ = 0.
        * [A_lo, A_hi] is cut into intervals. With |g″| = |ψ″| ≤ F̄ on an interval of width w (``_f_bar``) and
          endpoint slopes d0, d1 of one sign, g′(x) ≥ d0 − F̄(x − x0) and g′(x) ≥ d1 − F̄(x1 − x) (for positive
          slopes; mirrored for negative), whose maximum is ≥ (|d0| + |d1| − F̄w)/2. So if |d0| + |d1| > F̄w (plus a
          rounding allowance) g′ has no zero inside, g is monotone there and its minimum is an endpoint value.
          Every other interval (a sign change, or slopes too small to decide) gets the Taylor bound
          g ≥ g(x0) − max(0, −d0)w − F̄w²/2 (and its mirror from x1); it is dropped when that bound is ≥ a value of
          g already evaluated (it cannot hold the minimum: branch and bound), and otherwise halved, breadth-first
          and vectorised, until it is decided, dropped, or narrower than 1e-8, where its Taylor bound is used
          (an error ≤ ~F̄·1e-16).
        Hence min(tail bounds, every evaluated value, every Taylor bound) ≤ m̃(σ) up to floating-point rounding,
        for which a few ulps of the terms are subtracted. The minima inside sign-change intervals are also
        polished by vectorised Newton steps on g′ = 0 (analytic ψ′, ψ″), which sharpens ``upper`` and ``a*``."""
        g_, L = self.gamma, self.L
        a, psi, dpsi, fb = self._grid(sig)
        g = psi - sig * (a - L)
        d = dpsi - sig
        lows = [
            (1.0 - sig) * _A_HI + sig * L - self.big_gamma * _A_HI * np.exp(-_A_HI),
            sig * (L - a[0]),
        ]
        pts_a, pts_g = [a], [g]

        def undecided(d0, d1, fbar, w, dp0, dp1):
            slack = 8.0 * _EPS * (np.abs(dp0) + np.abs(dp1) + 2.0 * sig)
            return ~((d0 * d1 > 0) & (np.abs(d0) + np.abs(d1) > fbar * w * (1.0 + 1e-9) + slack))

        x0, x1 = a[:-1], a[1:]
        u = undecided(d[:-1], d[1:], fb, x1 - x0, dpsi[:-1], dpsi[1:])
        x0, x1, g0, g1, d0, d1 = x0[u], x1[u], g[:-1][u], g[1:][u], d[:-1][u], d[1:][u]
        # Newton polish of the brackets (d0 < 0 < d1) of local minima
        br = (d0 < 0) & (d1 > 0)
        if np.any(br):
            lo, hi = x0[br].copy(), x1[br].copy()
            x = 0.5 * (lo + hi)
            for _ in range(12):
                dx = _psi_d1(x, g_) - sig
                lo = np.where(dx < 0, x, lo)
                hi = np.where(dx > 0, x, hi)
                h2 = _psi_d2(x, g_)
                xn = np.where(h2 > 0, x - dx / np.where(h2 > 0, h2, 1.0), 0.5 * (lo + hi))
                x = np.where((xn > lo) & (xn < hi), xn, 0.5 * (lo + hi))
            pts_a.append(x)
            pts_g.append(_psi(x, g_) - sig * (x - L))
        incumbent = min(float(np.min(p)) for p in pts_g)
        while x0.size:
            w = x1 - x0
            fbar = _f_bar(x0, x1, g_)
            lb = np.maximum(g0 - np.maximum(0.0, -d0) * w - 0.5 * fbar * w * w,
                            g1 - np.maximum(0.0, d1) * w - 0.5 * fbar * w * w)
            keep = lb < incumbent          # branch and bound: an interval whose Taylor bound is ≥ a value already
            x0, x1, g0, g1, d0, d1, lb = (v[keep] for v in (x0, x1, g0, g1, d0, d1, lb))   # attained cannot matter
            if not x0.size:
                break
            if (x1 - x0).max() <= _W_MIN or x0.size > _CAP:
                lows.append(float(lb.min()))
                break
            xm = 0.5 * (x0 + x1)
            pm, dpm = _psi(xm, g_), _psi_d1(xm, g_)
            gm, dm = pm - sig * (xm - L), dpm - sig
            pts_a.append(xm)
            pts_g.append(gm)
            incumbent = min(incumbent, float(gm.min()))
            X0, X1 = np.concatenate([x0, xm]), np.concatenate([xm, x1])
            G0, G1 = np.concatenate([g0, gm]), np.concatenate([gm, g1])
            D0, D1 = np.concatenate([d0, dm]), np.concatenate([dm, d1])
            u = undecided(D0, D1, _f_bar(X0, X1, g_), X1 - X0, D0 + sig, D1 + sig)
            x0, x1, g0, g1, d0, d1 = X0[u], X1[u], G0[u], G1[u], D0[u], D1[u]
        A, G = np.concatenate(pts_a), np.concatenate(pts_g)
        i = int(np.argmin(G))
        upper, a_star = float(G[i]), float(A[i])
        lower = min(min(lows), upper)
        lower -= 8.0 * _EPS * (abs(upper) + sig * (abs(a_star) + L) + 1e-300)   # rounding of the evaluated terms
        return lower, upper, a_star


@functools.lru_cache(maxsize=64)
def _curve(K: int, gamma: float) -> _Curve:
    return _Curve(K, gamma)


def _dual_max(curve: _Curve, s_min: float, s_max: float, tol: float = 1e-13):
    """max over σ ∈ [s_min, s_max] of the concave m̃, as (lower, σ, method). A supergradient of m̃ at σ is
    −(a*(σ) − L), so the maximiser is where a* crosses L. Each evaluation gives a guaranteed lower value and an
    upper line upper(σ′) − (a* − L)(σ′ − σ) ≥ m̃(σ′) (it is g_σ′(a*)); the search keeps a bracket whose left end
    has a* ≤ L and right end a* > L, steps to the intersection of the two lines (bisecting when that stalls), and
    stops when the lines' intersection is within tol (relative) of the best lower value."""
    L = curve.L
    lo_v, up_v, a_s = curve.m(s_max)
    best = (lo_v, s_max)
    if a_s <= L:
        return lo_v, s_max, "tangent"
    right = (s_max, up_v, a_s)
    left = None
    if s_min > 0.0:
        lv, uv, av = curve.m(s_min)
        if lv > best[0]:
            best = (lv, s_min)
        if av > L:
            return best[0], best[1], "tangent"
        left = (s_min, uv, av)
    # first guess: the slope of φ at t = 0 (the maximiser when t = 0 lies on the envelope)
    s0 = float(_psi_d1(np.array(L), curve.gamma))
    trial = s0 if s_min < s0 < s_max else 0.5 * (s_min + s_max)
    it = 0
    while left is None and it < 200:       # walk left until a* ≤ L (a* → −∞ as σ → 0⁺)
        it += 1
        lv, uv, av = curve.m(trial)
        if lv > best[0]:
            best = (lv, trial)
        if av <= L:
            left = (trial, uv, av)
        else:
            right = (trial, uv, av)
            trial = max(s_min, 0.5 * trial) if trial > 1e-300 else 0.0
            if trial == 0.0:
                left = (0.0, 0.0, -np.inf)    # m̃(0) = inf ψ = 0, approached as a → −∞
    last_w = right[0] - left[0]
    for k in range(100):
        (sl, ul, al), (sr, ur, ar) = left, right
        w = sr - sl
        if np.isfinite(al):
            sx = (ur - ul + (ar - L) * sr - (al - L) * sl) / (ar - al)
            U = ul - (al - L) * (sx - sl)
        else:
            sx, U = sl + 0.5 * w, np.inf
        if U - best[0] <= tol * max(1.0, abs(U)) or w <= 4 * _EPS * sr:
            break
        if not np.isfinite(sx) or k % 4 == 3 and w > 0.5 * last_w:
            sx = sl + 0.5 * w              # Kelley steps stalled: bisect
        sx = min(max(sx, sl + 1e-3 * w), sr - 1e-3 * w)
        if k % 4 == 3:
            last_w = w
        lv, uv, av = curve.m(sx)
        if lv > best[0]:
            best = (lv, sx)
        if av <= L:
            left = (sx, uv, av)
        else:
            right = (sx, uv, av)
    return best[0], best[1], "dual-search"


def envelope_bound(loss, K: int, c: float) -> EnvelopeBound:
    """Lower bound min_{t≤0} φ**(t) − ct = max_{s≤c} m(s) on the UFM optimum with balanced classes (module docstring,
    docs/theory.md §4.9), with the NC value for comparison. Valid for every feature dimension d (the chain never uses
    d; only attaining NC needs d ≥ K − 1) and any bias mode (the bias cancels from the class-balanced mean t̄, and its
    penalty is ≥ 0).

    CE, LS and FL: φ = ψ_γ(a) − βt (``ufm.theory``), so m(s) = m̃((s + β)(K−1)) and the search runs over
    σ ∈ [max(0, (β − c)(K−1)), min(1, (c + β)(K−1))] (for LS, s ∈ [−c, c] is what the UFM chain needs; its maximiser
    min(c, φ′(0)) is ≥ 0 anyway). For the convex CE and LS the bound equals the NC value to round-off. Cost:
    ~1–30 ms per call."""
    gamma, beta = _gamma_beta(loss, K, "the envelope bound")
    if not (c > 0 and np.isfinite(c)):
        raise ValueError(f"c = √(nλ_Wλ_H) must be positive and finite, not {c}")
    t_nc, nc = scalar_optimum(loss, K, c)
    curve = _curve(int(K), gamma)
    s_lo = max(0.0, (beta - c) * (K - 1))
    s_hi = min(1.0, (c + beta) * (K - 1))
    lower, sig, method = _dual_max(curve, s_lo, s_hi)
    lower = min(lower, nc)            # the NC value is attained, so the optimum (and the bound) is ≤ it
    return EnvelopeBound(lower=float(lower), nc_value=float(nc), t_nc=float(t_nc),
                         certified=bool(abs(nc - lower) <= 1e-8 * abs(nc)), slope=float(sig / (K - 1) - beta),
                         method=method)


def fl_band(K: int, gamma: float, cs) -> dict:
    """For each c in ``cs``: whether the FL NC point is certified global, the envelope lower bound and the NC value
    (arrays, keys "certified", "lower", "nc_value", "t_nc"). One ψ-grid serves all c; ~5–15 ms per c."""
    loss = FocalLoss(gamma)
    cs = np.atleast_1d(np.asarray(cs, dtype=np.float64))
    out = [envelope_bound(loss, K, float(c)) for c in cs]
    return dict(certified=np.array([b.certified for b in out]), lower=np.array([b.lower for b in out]),
                nc_value=np.array([b.nc_value for b in out]), t_nc=np.array([b.t_nc for b in out]))


__all__ = ["EnvelopeBound", "envelope_bound", "fl_band"]
