"""Curvature of the deep UFM (docs/theory.md §12.5–§12.6): an explicit descent direction at the input junction, and
the classification of a deep point by its Hessian spectrum deflated by the symmetry orbit (symmetry.py).

At the input junction (H, W_1) the deep objective is f = g(W_1 H) + λ_1/2‖W_1‖² + λ_H/2‖H‖² + (the rest), g the
data term as a function of the first pre-activation M = W_1 H: the rest of the network, ReLU included, acts after
the product. So docs/theory.md §5.3's direction carries over with W → W_1, Z → M, for either activation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .critical import (CriticalPoint, Tolerances, classify, curvature_plan, direction_record, first_order,
                       measure_spectrum)
from .deep import DeepParams, DeepProblem, flatten, labels_of
from .secondorder import verdict
from .symmetry import RANK_ATOL, RANK_RTOL, deep_expected_zero_modes, deep_junctions


def _data_grad_M(problem: DeepProblem, params: DeepParams):
    """∇_M g at M = W_1 H, g(M) = (1/N) Σ L(W_L σ(⋯σ(M)) + b, y)."""
    shape = problem.shape
    sigma = (lambda a: a) if problem.activation == "linear" else (lambda a: jnp.maximum(a, 0.0))

    def g(M, Ws, b):
        h = sigma(M)
        for W in Ws[1:-1]:
            h = sigma(W @ h)
        Z = (Ws[-1] @ h).T if problem.depth > 1 else M.T
        if b is not None:
            Z = Z + b[None, :]
        return jnp.mean(shape.loss(Z, labels_of(shape)))

    with jax.enable_x64(True):
        params = DeepParams(tuple(jnp.asarray(W) for W in params.Ws), jnp.asarray(params.H),
                            None if params.b is None else jnp.asarray(params.b))
        # one compiled program, not one per primitive (eager autodiff compiles each op: seconds at small sizes)
        return np.asarray(jax.jit(jax.grad(g))(params.Ws[0] @ params.H, params.Ws, params.b))


def input_junction_direction(problem: DeepProblem, params: DeepParams):
    """(flat Δ, predicted Δᵀ∇²fΔ, σ_max(∇_M g)) with a ∈ null(W_1) ∩ null(Hᵀ), (u, v) the top singular pair of
    ∇_M g, Δ_{W_1} = (λ_H/λ_1)^{1/4} u aᵀ, Δ_H = −(λ_1/λ_H)^{1/4} a vᵀ, every other block 0; None when W_1 has full
    column rank d (no such a) or a λ is zero. Since W_1Δ_H = 0 and Δ_{W_1}H = 0, f(x + tΔ) = f(x) +
    t²(√(λ_1λ_H) − σ_max) + o(t²) whenever g is differentiable at M (for ReLU: no pre-activation exactly 0)."""
    l1, lh = problem.lams[0], problem.lam_H
    if min(l1, lh) <= 0:
        return None
    W1, H = np.asarray(params.Ws[0]), np.asarray(params.H)
    mu, V = np.linalg.eigh(W1.T @ W1 + H @ H.T)
    if mu[0] > max(RANK_RTOL * mu[-1], RANK_ATOL):
        return None
    a = V[:, 0]
    G = _data_grad_M(problem, params)
    if not np.all(np.isfinite(G)):
        return None
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    dWs = [(lh / l1) ** 0.25 * np.outer(U[:, 0], a)] + [np.zeros_like(np.asarray(W)) for W in params.Ws[1:]]
    dH = -((l1 / lh) ** 0.25) * np.outer(a, Vt[0])
    db = None if params.b is None else np.zeros_like(np.asarray(params.b))
    return flatten(DeepParams(tuple(dWs), dH, db), xp=np), 2.0 * (np.sqrt(l1 * lh) - s[0]), float(s[0])


def deep_second_order_check(problem: DeepProblem, params: DeepParams, rel_grad_norm: float) -> dict:
    """secondorder.second_order_check's record for a deep point, with the input-junction direction above (the
    margin rule is the same: σ_max must exceed √(λ_1λ_H) by more than the stationarity reached allows)."""
    l1, lh = problem.lams[0], problem.lam_H
    out = {"checked": False, "saddle": False, "curvature": None, "sigma_max_grad_Z": None,
           "sqrt_lam_W_lam_H": float(np.sqrt(l1) * np.sqrt(lh)), "reason": ""}
    if min(l1, lh) <= 0:
        out["reason"] = "needs λ_1 > 0 and λ_H > 0"
        return out
    if not all(np.all(np.isfinite(a)) for a in (*params.Ws, params.H)):
        out["reason"] = "the point is not finite"
        return out
    nc = input_junction_direction(problem, params)
    if nc is None:
        out["reason"] = ("W_1 has full column rank d: no shared null direction of W_1 and Hᵀ, so no explicit descent "
                         "direction at the input junction")
        return out
    return verdict(out, nc, rel_grad_norm, "explicit direction at the input junction, a ∈ null(W_1) ∩ null(Hᵀ) "
                   "(docs/theory.md §12.5): curvature 2(√(λ_1λ_H) − σ_max(∇_M g))/‖Δ‖², M = W_1H")


# --- classification of deep points (docs/theory.md §12.6) ---------------------------------------------------------

@dataclasses.dataclass
class DeepCriticalPoint(CriticalPoint):
    """A :class:`ufm.critical.CriticalPoint` of the deep UFM. ``rank_W`` is the rank r at the input junction;
    ``junction_ranks`` lists (m, r) per junction of the orbit (symmetry.deep_junctions), ``n_zero_deflated`` the
    eigenvalues |θ| ≤ zero_tol of the deflated Hessian (dense path; 0 when the orbit accounts for every zero mode),
    ``best_known`` the reference a second-order minimum is judged against (never a certificate)."""

    junction_ranks: Optional[list] = None
    n_zero_deflated: Optional[int] = None
    best_known: Optional[dict] = None
    depth: int = 2

    def record(self) -> dict:
        return {**super().record(), "depth": self.depth, "junction_ranks": self.junction_ranks,
                "n_zero_deflated": self.n_zero_deflated, "best_known": self.best_known}


@functools.lru_cache(maxsize=16)
def _best_known_cached(problem: DeepProblem) -> dict:
    from .deep_report import deep_theory_record

    return deep_theory_record(problem, None, search=True)


def best_known(problem: DeepProblem) -> dict:
    """The lowest objective ufm knows for ``problem`` without a solve: the DNC value and (deep linear) the K×K
    low-rank search (deep_report.deep_theory_record), as {objective, from, dnc_objective, low_rank_objective,
    certified: False, rule}. Cached per problem (the search compiles once per K and L)."""
    from .deep_report import NO_CERTIFICATE

    rec = _best_known_cached(problem)
    lr = rec.get("low_rank")
    return {"objective": rec["best_upper_bound"], "from": rec["best_upper_from"],
            "dnc_objective": rec["dnc_objective"], "low_rank_objective": None if lr is None else lr["best_objective"],
            "low_rank_best_rank": None if lr is None else lr["best_rank"], "certified": False,
            "rule": GLOBAL_RULE, "note": NO_CERTIFICATE}


#: what "global_minimizer" means at depth ≥ 2 (docs/theory.md §12.6), written into every deep record
GLOBAL_RULE = ("depth ≥ 2: global_minimizer = a second-order minimum whose objective reaches the lowest value ufm "
               "knows (the DNC value, the low-rank search, any point found in the same run) within obj_tol relative, "
               "or goes below it; spurious_local_minimizer = a second-order minimum above a known value; neither is "
               "certified")


def analyze_deep_point(problem: DeepProblem, point, *, hessian: str = "auto", tolerances: Tolerances = Tolerances(),
                       label: str = "", eigensolver: str = "auto", hessian_dtype: str = "float64",
                       reference: Optional[float] = None) -> DeepCriticalPoint:
    """Measure ‖∇f‖ and the Hessian spectrum of the deep objective at ``point`` (DeepParams or flat vector) over all
    factors (W_1, …, W_L, H, b), deflate the symmetry orbit of docs/theory.md §12.6, and classify it with the
    meanings of :func:`ufm.critical.classify`. ``global_minimizer`` is judged against ``reference`` (default: the
    lowest value ufm knows, :func:`best_known`) and is not certified (GLOBAL_RULE). Never raises on NaN/inf."""
    from .errors import UFMInputError

    method, solver, dtype, curvature = curvature_plan(problem, tolerances, hessian, eigensolver, hessian_dtype)
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (int, float, np.floating))
                                  or not np.isfinite(reference)):
        raise UFMInputError("reference", reference, "must be a finite objective value (or None: ufm's best known)")
    with jax.enable_x64(True), np.errstate(all="ignore"):
        x = np.asarray(flatten(point, xp=np) if isinstance(point, DeepParams) else point, dtype=np.float64)
        mf, f, gnorm, not_finite, tangent = first_order(problem, x)
        sp = measure_spectrum(problem, mf, x, tangent, method, solver, dtype, tolerances, gnorm, curvature, not_finite)
        cls = classify(f, gnorm, sp.min_eig, sp.min_perp, sp.ztol, None, None, tolerances)
        known, bounds = None, None
        if cls == "local_minimizer":
            known = best_known(problem) if reference is None else {
                "objective": float(reference), "from": "given", "certified": False, "rule": GLOBAL_RULE}
            bounds = {"lower": None, "upper": known["objective"], "method": "best_known_deep",
                      "upper_from": known["from"], "certified": False}
            cls = classify(f, gnorm, sp.min_eig, sp.min_perp, sp.ztol, None, known["objective"], tolerances,
                           best_known=True)
        nc = None
        if tangent is not None and not not_finite:
            nc = input_junction_direction(problem, problem.unflatten(x))
        direction = direction_record(mf, nc, sp.min_eig, sp.min_space)
        ranks = None if tangent is None else [[m, r] for (_, m, _, _), r in zip(deep_junctions(problem), tangent.rank)]
        n_zero_perp = None if sp.theta_perp is None else int(np.sum(np.abs(sp.theta_perp) <= sp.ztol))
        return DeepCriticalPoint(
            objective=f, grad_norm=gnorm, min_eig=sp.min_eig, max_eig=sp.max_eig, min_eig_deflated=sp.min_perp,
            n_negative=sp.n_neg, n_zero=sp.n_zero,
            expected_zero_modes=None if tangent is None else deep_expected_zero_modes(ranks, tangent.free_shift),
            rank_W=None if tangent is None else tangent.rank[0], classification=cls,
            eig_residual=float(sp.residual), hessian_method=method, zero_tol=sp.ztol, theory_objective=None,
            bounds=bounds, certificate=None, nc_direction=direction, x=x, min_eigvec=np.asarray(sp.vmin),
            label=label, eigenvalues=sp.theta if method == "dense" else None, not_finite=not_finite or None,
            curvature=curvature, junction_ranks=ranks, n_zero_deflated=n_zero_perp, best_known=known,
            depth=problem.depth)


def deep_origin(problem: DeepProblem) -> DeepParams:
    """Every factor and b zero: a critical point for the softmax losses and bias-free MSE (every factor's gradient
    carries a product of the other, zero, factors; ∇_b is that of eq. (7) at the origin)."""
    Ws = tuple(np.zeros((problem.dims[l], problem.dims[l - 1])) for l in range(1, problem.depth + 1))
    return DeepParams(Ws, np.zeros((problem.d, problem.N)), np.zeros(problem.K) if problem.bias else None)


def deep_origin_min_eig_theory(problem: DeepProblem) -> float:
    """λ_min of the (W_1, …, W_L, H) block of ∇²f at the origin, depth ≥ 2: min(λ_1, …, λ_L, λ_H). The logits are a
    product of L + 1 ≥ 3 factors (σ positively homogeneous), so the data term has no second-order part there and
    the block is the penalty's diag(λ) (docs/theory.md §12.6): unlike depth 1 (§5.4) the origin is never a strict
    saddle at depth ≥ 2."""
    return float(min(*problem.lams, problem.lam_H))
