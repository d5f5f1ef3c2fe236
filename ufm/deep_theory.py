"""Reference values for the deep UFM (docs/theory.md §12.2–§12.4): the best deep-neural-collapse (DNC) point, and
for deep linear models the K×K reduction with a Schatten quasi-norm, searched rank by rank.

Nothing here certifies a global optimum at depth ≥ 2: the reduced problem is non-convex (the quasi-norm rewards
low rank), so every value below is an *upper bound* on the optimum, realised by an explicit point.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import minimize, minimize_scalar

from .deep import DeepParams, DeepProblem

#: the margins searched for the DNC scale s: a grid on [0, S_MAX] refined by a bounded scalar search. CE's optimal
#: margin is log(1/c)-sized (c ≥ 1e-12 gives s < 30); MSE's is below β·K.
S_GRID = 4001


def lam_bar(problem: DeepProblem) -> float:
    """λ̄ = (λ_H Π_l λ_l)^{1/(L+1)}: the deep penalty's only λ (docs/theory.md §12.2)."""
    logs = [math.log(v) for v in (*problem.lams, problem.lam_H)]
    return math.exp(sum(logs) / len(logs))


def schatten_penalty(problem: DeepProblem, singular_values) -> float:
    """min Σ λ_l/2‖W_l‖² + λ_H/2‖H‖² over deep linear factors with product Z: (L+1)/2 · λ̄ · Σ σ_i(Z)^{2/(L+1)}."""
    L = problem.depth
    sv = np.asarray(singular_values, dtype=np.float64)
    return (L + 1) / 2 * lam_bar(problem) * float(np.sum(sv ** (2.0 / (L + 1))))


def _dnc_logits(K: int, s, m=0.0):
    """Class-mean logits of the DNC family (K×K, column k = class k): s(I − 11ᵀ/K) + m·11ᵀ/K, vectorised over s, m
    (m = 0: a simplex ETF; m = s: the orthogonal frame s·I)."""
    s, m = np.broadcast_arrays(np.atleast_1d(np.asarray(s, dtype=np.float64)), np.asarray(m, dtype=np.float64))
    J = np.ones((K, K)) / K
    return np.multiply.outer(s, np.eye(K) - J) + np.multiply.outer(m, J)


def dnc_penalty(problem: DeepProblem, s, m=0.0):
    """The least penalty of a DNC point with class-mean logits ``_dnc_logits(s, m)`` (docs/theory.md §12.2), whose
    singular values are s (K − 1 times) and |m|: linear, (L+1)/2·λ̄·((K−1)(s√n)^p + (|m|√n)^p), p = 2/(L+1);
    ReLU, (L+1)/2·(√(nλ_HΠλ_l)·K^{L/2}·√((K−1)s² + m²))^p."""
    L, K, n = problem.depth, problem.K, problem.n
    s, m = np.asarray(s, dtype=np.float64), np.abs(np.asarray(m, dtype=np.float64))
    p = 2.0 / (L + 1)
    if problem.activation == "linear":
        return (L + 1) / 2 * lam_bar(problem) * ((K - 1) * (s * math.sqrt(n)) ** p + (m * math.sqrt(n)) ** p)
    root = math.sqrt(n * problem.lam_H * math.prod(problem.lams)) * K ** (L / 2)
    return (L + 1) / 2 * (root * np.sqrt((K - 1) * s**2 + m**2)) ** p


def _best_b0(problem: DeepProblem, s, m=0.0):
    """The bias b = b0·1 minimising the DNC point's loss + λ_b/2‖b‖²: 0 for a shift-invariant loss or no bias; MSE's
    loss is quadratic in b0 (docs/theory.md §12.2)."""
    s, m = np.broadcast_arrays(np.asarray(s, dtype=np.float64), np.asarray(m, dtype=np.float64))
    if not problem.bias or problem.loss.name != "mse":
        return np.zeros_like(s)
    K, kappa, beta = problem.K, problem.loss.kappa, problem.loss.beta
    on, off = s * (1 - 1 / K) + m / K, (m - s) / K          # the target and the off-target logit of a class
    return (kappa * (beta - on) - (K - 1) * off) / (kappa + K - 1 + problem.reg.lam_b * K / 2)


@functools.partial(jax.jit, static_argnums=0)
def _loss_values(loss, z, labels):
    # jitted: the scalar searches call it hundreds of times on one shape (eager dispatch would dominate)
    return loss(z, labels)


def _dnc_loss(problem: DeepProblem, s, m=0.0):
    """Mean loss + bias penalty of the DNC points (s, m) (vectorised), through ufm's own loss."""
    K = problem.K
    b0 = _best_b0(problem, s, m)
    Z = _dnc_logits(K, s, m) + np.asarray(b0).reshape(-1)[:, None, None]            # (S, K logits, K classes)
    rows = np.swapaxes(Z, 1, 2).reshape(-1, K)                                         # one row per (point, class)
    labels = np.tile(np.arange(K), Z.shape[0])
    with jax.enable_x64(True):
        per = np.asarray(_loss_values(problem.loss, jnp.asarray(rows), jnp.asarray(labels))).reshape(Z.shape[0], K)
    return per.mean(axis=1) + 0.5 * problem.reg.lam_b * K * np.asarray(b0).reshape(-1) ** 2


@dataclasses.dataclass(frozen=True)
class DNCValue:
    """The best DNC point: f, its logit scale s (the margin z_k − z_j), the mean logit m, geometry, bias b0·1, and
    why (not) given."""

    objective: Optional[float]
    scale: Optional[float]
    mean: Optional[float]
    geometry: Optional[str]
    b0: Optional[float]
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _geometry(s: float, m: float) -> str:
    if abs(m) <= 1e-9 * max(s, 1e-300):
        return "simplex_etf"
    return "orthogonal_frame" if abs(m - s) <= 1e-9 * max(s, 1e-300) else "etf_plus_mean"


def _refine_1d(g, grid, vals):
    i = int(np.argmin(vals))
    if i == 0:
        return float(grid[0]), float(vals[0])
    lo, hi = grid[i - 1], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(lambda t: float(g(t)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-13})
    return (float(res.x), float(res.fun)) if res.fun <= vals[i] else (float(grid[i]), float(vals[i]))


def dnc_value(problem: DeepProblem) -> DNCValue:
    """min over the DNC family of docs/theory.md §12.2. A softmax loss ignores the mean logit m, which only costs
    penalty: a one-dimensional problem in s (m = 0). MSE sees m: the simplex ETF (m = 0), the orthogonal frame
    (m = s) and the best (s, m) on a grid refined by Nelder–Mead are compared."""
    none = lambda why: DNCValue(None, None, None, None, None, why)
    if not problem.balanced:
        return none("balanced classes only (the DNC family is derived for n_k = n)")
    if problem.loss.name not in ("ce", "ls", "fl", "mse"):
        return none(f"no DNC value for loss {problem.loss.name}")
    relu = problem.activation == "relu"
    need = problem.K if relu else problem.K - 1
    if min(problem.dims[:-1]) < need:
        return none(f"needs d and every width ≥ {need} (the DNC class means span {need} dimensions"
                    f"{', orthogonal frames after ReLU' if relu else ''})")
    if min(*problem.lams, problem.lam_H) <= 0:
        return none("needs every λ_l > 0 and λ_H > 0")
    mse = problem.loss.name == "mse"
    s_max = 60.0 if not mse else 4.0 * problem.loss.beta * problem.K + 10.0
    grid = np.linspace(0.0, s_max, S_GRID)
    g = lambda s, m: _dnc_loss(problem, s, m) + dnc_penalty(problem, s, m)
    cands = [(*_refine_1d(lambda t: g(t, 0.0)[0], grid, g(grid, 0.0)), 0.0)]          # (s, f, m)
    if mse and (relu or min(problem.dims[:-1]) >= problem.K):      # a nonzero m needs K dimensions
        s_of, f_of = _refine_1d(lambda t: g(t, t)[0], grid, g(grid, grid))
        cands.append((s_of, f_of, s_of))
        S, M = np.meshgrid(np.linspace(0, s_max, 401), np.linspace(-s_max, s_max, 801), indexing="ij")
        vals = g(S.ravel(), M.ravel())
        i = int(np.argmin(vals))
        res = minimize(lambda v: float(g(abs(v[0]), v[1])[0]), [S.ravel()[i], M.ravel()[i]], method="Nelder-Mead",
                       options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 20000})
        cands.append((abs(float(res.x[0])), float(res.fun), float(res.x[1])))
    # the special geometries first: the free (s, m) search wins only by more than its own round-off
    f_min = min(c[1] for c in cands)
    s_star, f_star, m_star = next(c for c in cands if c[1] <= f_min + 1e-12 * max(1.0, abs(f_min)))
    b0 = float(_best_b0(problem, s_star, m_star))
    geometry = _geometry(s_star, m_star)
    where = ("every layer's class means collapsed onto the logits' geometry (deep linear)" if not relu else
             "every hidden layer's class means an orthogonal frame (ReLU)")
    return DNCValue(f_star, s_star, m_star, geometry, b0, f"best point with collapsed classes, {where}, logits "
                    f"s(I − 11ᵀ/K) + m·11ᵀ/K, here a {geometry.replace('_', ' ')} (docs/theory.md §12.2)")


# ----------------------------------------------------------------------------------------------------------------
# Explicit points


def _embed(rows: int, cols: int, block):
    out = np.zeros((rows, cols))
    r, c = block.shape
    out[:r, :c] = block
    return out


def balanced_factors(problem: DeepProblem, A) -> DeepParams:
    """A deep linear point realising the K×K reduced matrix A = M D^{1/2} (M the class-mean logits) with the least
    penalty (L+1)/2·λ̄·Σσ_i(A)^{2/(L+1)}: A = UΣVᵀ, H = c_H R_0 Σ^p Ṽᵀ, W_l = c_l R_l Σ^p R_{l−1}ᵀ, W_L = c_L U Σ^p
    R_{L−1}ᵀ, p = 1/(L+1), c = √(λ̄/λ), Ṽᵀ = Vᵀ D^{−1/2} E, R_l the first r unit vectors of R^{d_l}
    (docs/theory.md §12.4). Needs every width ≥ rank A; b = 0."""
    L, K, dims = problem.depth, problem.K, problem.dims
    U, sig, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64))
    r = int(np.sum(sig > 1e-14 * max(sig[0], 1e-300)))
    U, sig, Vt = U[:, :r], sig[:r], Vt[:r]
    counts = np.asarray(problem.counts, dtype=np.float64)
    Vtil = np.repeat(Vt / np.sqrt(counts)[None, :], problem.counts, axis=1)        # r × N, orthonormal rows
    lb = lam_bar(problem)
    S = np.diag(sig ** (1.0 / (L + 1)))
    c = [math.sqrt(lb / v) for v in problem.lams]
    H = math.sqrt(lb / problem.lam_H) * _embed(dims[0], r, np.eye(r)) @ S @ Vtil
    Ws = [c[l - 1] * _embed(dims[l], dims[l - 1], S) for l in range(1, L)]
    Ws.append(c[-1] * (U @ S @ _embed(r, dims[L - 1], np.eye(r))))
    return DeepParams(tuple(Ws), H, np.zeros(K) if problem.bias else None)


def dnc_point(problem: DeepProblem, value: Optional[DNCValue] = None) -> DeepParams:
    """The explicit DNC point of :func:`dnc_value` (its objective equals the value: tests/test_deep_theory.py)."""
    value = value or dnc_value(problem)
    if value.objective is None:
        raise ValueError(value.reason)
    K, L, n, dims, s = problem.K, problem.depth, problem.n, problem.dims, value.scale
    Zbar = _dnc_logits(K, s, value.mean)[0]
    b = np.full(K, value.b0) if problem.bias else None
    if problem.activation == "linear":
        return balanced_factors(problem, Zbar * math.sqrt(n))._replace(b=b)
    # ReLU: hidden class means a_l·I_K (orthogonal frames), scales from the Lagrange conditions of §12.2
    mu = 2.0 / (L + 1) * float(dnc_penalty(problem, s, value.mean))
    alpha1 = math.sqrt(problem.lams[0] * problem.lam_H * n) * K
    two_beta = [problem.lams[l] * K for l in range(1, L - 1)]
    a = [mu / alpha1]
    for tb in two_beta:
        a.append(a[-1] * math.sqrt(mu / tb))
    lw, lh = problem.lams[0], problem.lam_H
    # (W_1, H): the nuclear-norm split (§5.2's variational form, n samples a class) of the first pre-activation
    # P_1 = (a_1 + c)I − c11ᵀ with c = a_1/(2(K−1)): ReLU(P_1) = a_1·I, ‖P_1‖_* = K·a_1 as for a_1·I (§12.2), and
    # the off-target pre-activations are strictly negative, away from ReLU's kink
    c = a[0] / (2 * (K - 1))
    theta, V = np.linalg.eigh((a[0] + c) * np.eye(K) - c * np.ones((K, K)))
    root = V * np.sqrt(theta)[None, :]
    W1 = (lh * n / lw) ** 0.25 * _embed(dims[1], dims[0], root)
    Hbar = (lw / (lh * n)) ** 0.25 * _embed(dims[0], K, root.T)
    H = np.repeat(Hbar, n, axis=1)
    Ws = [W1] + [a[l] / a[l - 1] * _embed(dims[l + 1], dims[l], np.eye(K)) for l in range(1, L - 1)]
    Ws.append(_embed(K, dims[L - 1], Zbar / a[-1]))
    return DeepParams(tuple(Ws), H, b)


# ----------------------------------------------------------------------------------------------------------------
# The K×K reduction of the deep linear UFM, searched rank by rank


def _split(x, K: int, L: int):
    """The flat search vector → (G_1, …, G_{L+1}) (K×K each) and b."""
    Gs = [x[i * K * K:(i + 1) * K * K].reshape(K, K) for i in range(L + 1)]
    return Gs, x[(L + 1) * K * K:]


def _reduced_F(x, mask, weights, inv_sqrt_n, lam, lam_b, K: int, L: int, loss, has_bias: bool):
    """F(A) = Σ_k w_k L(A_{:k}/√n_k + b, k) + λ_b/2‖b‖² + λ̄/2 Σ_i ‖G_i‖², A = G_{L+1} D ⋯ D G_1 with D = diag(mask):
    the variational form of the Schatten term (docs/theory.md §12.4) with inner width r = Σ mask, so minimising over
    the G's searches the rank-≤ r matrices A. Masks keep one compiled program for every r."""
    Gs, b = _split(x, K, L)
    A = Gs[0] * mask[:, None]
    for G in Gs[1:-1]:
        A = (G * mask[:, None] * mask[None, :]) @ A
    A = (Gs[-1] * mask[None, :]) @ A
    b = b if has_bias else jnp.zeros(K, x.dtype)
    Z = (A * inv_sqrt_n[None, :]).T + b[None, :]
    data = jnp.sum(weights * loss(Z, jnp.arange(K)))
    pen = 0.5 * lam * sum(jnp.sum(G**2) for G in Gs)
    return data + pen + 0.5 * lam_b * jnp.sum(b**2), A


#: L-BFGS iterations per start of the reduced search, and its stopping gradient norm
SEARCH_ITERS = 4000
SEARCH_GTOL = 1e-10


@functools.partial(jax.jit, static_argnames=("K", "L", "loss", "has_bias"))
def _search_batch(X0, masks, weights, inv_sqrt_n, lam, lam_b, K: int, L: int, loss, has_bias: bool):
    """optax L-BFGS on every (start, mask) pair at once (vmap: the problems are tiny, so a batch costs about what
    one does), each to ‖∇F‖ ≤ SEARCH_GTOL or SEARCH_ITERS iterations. Returns the end points, F and A of each."""

    def run(x0, mask):
        f = lambda x: _reduced_F(x, mask, weights, inv_sqrt_n, lam, lam_b, K, L, loss, has_bias)[0]
        opt = optax.lbfgs(memory_size=20, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
        vg = optax.value_and_grad_from_state(f)

        def cond(c):
            return (c[2] < SEARCH_ITERS) & (c[3] > SEARCH_GTOL)

        def body(c):
            x, state, k, _ = c
            v, g = vg(x, state=state)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
            return x + u, state, k + 1, jnp.linalg.norm(g)

        x, _, _, _ = jax.lax.while_loop(cond, body, (x0, opt.init(x0), 0, jnp.asarray(jnp.inf, x0.dtype)))
        F, A = _reduced_F(x, mask, weights, inv_sqrt_n, lam, lam_b, K, L, loss, has_bias)
        return x, F, A

    return jax.vmap(run)(X0, masks)


@dataclasses.dataclass(frozen=True)
class LowRankSearch:
    """Best reduced value per rank r (``by_rank[r]`` = (f, rank reached)), the best overall and its matrix A."""

    by_rank: dict
    best_objective: float
    best_rank: int
    A: np.ndarray
    b: Optional[np.ndarray]
    starts: int

    def record(self) -> dict:
        return {"by_rank": {str(r): v[0] for r, v in sorted(self.by_rank.items())}, "best_objective":
                self.best_objective, "best_rank": self.best_rank, "starts_per_rank": self.starts,
                "method": "K×K reduction, Schatten-2/(L+1) penalty in variational form, L-BFGS per inner width r "
                          "(docs/theory.md §12.4)", "rank_reached": {str(r): v[1] for r, v in sorted(self.by_rank.items())}}


def low_rank_search(problem: DeepProblem, starts: int = 4, seed: int = 0) -> Optional[LowRankSearch]:
    """Search the deep linear UFM's K×K reduction over every inner width r ≤ min(K, d, widths): ``starts`` random
    starts per r (scales 0.3, 1, 3 in turn), all run at once. Every value is realised by an explicit deep point
    (:func:`balanced_factors`), so the best is an upper bound on the optimum, not a certificate; None for ReLU (no
    reduction) or a zero λ."""
    if problem.activation != "linear" or min(*problem.lams, problem.lam_H) <= 0:
        return None
    K, L = problem.K, problem.depth
    rmax = min(K, *problem.dims[:-1])
    counts = np.asarray(problem.counts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ranks = np.repeat(np.arange(1, rmax + 1), starts)
    masks = (np.arange(K)[None, :] < ranks[:, None]).astype(np.float64)
    scales = np.resize([0.3, 1.0, 3.0], ranks.size)[:, None]
    X0 = scales * rng.standard_normal((ranks.size, (L + 1) * K * K + K))
    with jax.enable_x64(True):
        X, F, A = _search_batch(jnp.asarray(X0), jnp.asarray(masks), jnp.asarray(counts / counts.sum()),
                                jnp.asarray(1.0 / np.sqrt(counts)), jnp.asarray(lam_bar(problem)),
                                jnp.asarray(problem.reg.lam_b), K=K, L=L, loss=problem.loss, has_bias=problem.bias)
        X, F, A = np.asarray(X), np.asarray(F), np.asarray(A)
    by_rank = {}
    for i, r in enumerate(ranks):
        if np.isfinite(F[i]) and (int(r) not in by_rank or F[i] < by_rank[int(r)][0]):
            sv = np.linalg.svd(A[i], compute_uv=False)
            by_rank[int(r)] = (float(F[i]), int(np.sum(sv > 1e-6 * max(sv[0], 1e-300))))
    i = int(np.nanargmin(np.where(np.isfinite(F), F, np.inf)))
    sv = np.linalg.svd(A[i], compute_uv=False)
    b = X[i, (L + 1) * K * K:] if problem.bias else None
    return LowRankSearch(by_rank, float(F[i]), int(np.sum(sv > 1e-6 * max(sv[0], 1e-300))), A[i], b, starts)


def reduced_point(problem: DeepProblem, search: LowRankSearch) -> DeepParams:
    """The explicit deep point of the search's best reduced matrix."""
    p = balanced_factors(problem, search.A)
    return p._replace(b=None if not problem.bias else np.asarray(search.b))
