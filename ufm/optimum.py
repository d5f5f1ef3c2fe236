"""The UFM optimum of a problem as Gram matrices and norms, and the gaps of a given point to it (docs/theory.md §11.3).

The optimum of (7) is unique only up to a rotation (W, H) ↦ (WQ, QᵀH), so a given point is compared with it through
rotation-invariant quantities: the objective, ‖W‖²_F, ‖H‖²_F, and the normalised K×K Gram matrices of the
classifier rows (WWᵀ) and of the class means (MᵀM, M = [μ_1 … μ_K]), centred (as the NC metrics) and uncentred.

Where the optimum comes from, best first: the closed forms where a theorem applies (theory.py: balanced classes;
exact), the convex lifting's certified point (bounds.py: any class sizes; its norms and Grams are accurate to about
1e-9 relative, the square root of the lifting's tolerance, its objective to round-off), an uncertified explicit
point (an open bracket's upper end), or nothing.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def _centred(G, w):
    """The Gram matrix of the columns v_k − Σ_j w_j v_j, given the Gram matrix G of the columns v_k (weights w)."""
    T = np.eye(len(w)) - np.outer(w, np.ones(len(w)))
    return T.T @ G @ T


def gram_distance(G, G_star) -> float:
    """‖G/‖G‖_F − G*/‖G*‖_F‖_F: 0 when the two geometries agree up to scale, NaN when either is 0 (undefined)."""
    a, c = float(np.linalg.norm(G)), float(np.linalg.norm(G_star))
    if not (a > 0 and c > 0 and math.isfinite(a) and math.isfinite(c)):
        return math.nan
    return float(np.linalg.norm(G / a - G_star / c))


def _lifted_optimum(problem, bounds, certified: bool) -> dict:
    """Norms and Grams of the point recovered from the lifted solution A = UΣVᵀ of rank r (lifting.recover):
    W = (λ_H/λ_W)^{1/4} UΣ^{1/2}, class means M = (λ_W/λ_H)^{1/4} Σ^{1/2}VᵀD^{-1/2}, so
    WWᵀ = (λ_H/λ_W)^{1/2} UΣUᵀ, MᵀM = (λ_W/λ_H)^{1/2} D^{-1/2}VΣVᵀD^{-1/2}, ‖W‖² = (λ_H/λ_W)^{1/2} tr Σ and
    ‖H‖² = (λ_W/λ_H)^{1/2} tr Σ (every sample of class k sits at μ_k)."""
    lifted = bounds.lifted
    r = lifted.rank
    U, s, Vt = np.linalg.svd(lifted.A)
    U, s, V = U[:, :r], s[:r], Vt[:r].T / np.sqrt(np.asarray(problem.counts, np.float64))[:, None]
    to_W = math.sqrt(problem.lam_H) / math.sqrt(problem.lam_W)
    return {"objective": bounds.upper, "W_fro_sq": to_W * float(s.sum()), "H_fro_sq": float(s.sum()) / to_W,
            "b": None if lifted.b is None or problem.bias_mode == "free" else [float(v) for v in lifted.b],
            "source": "convex_lifting", "certified": certified,
            "reason": bounds.reason if certified else f"{bounds.reason}; not certified: the bracket is open",
            "W_gram": to_W * (U * s) @ U.T, "mean_gram": (V * s) @ V.T / to_W}


def _closed_form_optimum(problem, th) -> dict:
    """Norms and Grams of the closed-form optimum (theory.theory_point): rows of W a simplex ETF (‖W‖²/(K−1))·
    (I − 11ᵀ/K) or an orthogonal frame (‖W‖²/K)·I, and h_{k,i} = s w_k with s² = λ_W/(λ_H n)."""
    K = problem.K
    if th.geometry == "simplex_etf":
        G = th.W_fro_sq / (K - 1) * (np.eye(K) - np.ones((K, K)) / K)
    elif th.geometry == "orthogonal_frame":
        G = th.W_fro_sq / K * np.eye(K)
    else:
        G = np.zeros((K, K))                       # trivial collapse: W = H = 0, every Gram distance undefined
    return {"objective": th.objective, "W_fro_sq": th.W_fro_sq, "H_fro_sq": th.H_fro_sq, "b": th.b,
            "source": "closed_form", "certified": bool(th.applies), "reason": th.reason,
            "W_gram": G, "mean_gram": problem.lam_W / (problem.lam_H * problem.n) * G}


def optimum_of(problem, use_bounds: bool = True) -> dict:
    """The UFM optimum of ``problem`` (module docstring): objective, ‖W‖², ‖H‖², b, source, certified, reason, and
    the K×K Grams ``W_gram`` and ``mean_gram`` (None where no optimum is known)."""
    from .theory import theory_optimum

    th = theory_optimum(problem)
    bnd = None
    if use_bounds:
        from .bounds import problem_bounds

        bnd = problem_bounds(problem)
    lifted = bnd is not None and bnd.upper_from == "lifted_point" and bnd.lifted is not None
    if th.applies:
        # exact where a theorem applies; the lifted point agrees in f to round-off but its A, hence its norms and
        # Grams, only to about the square root of the lifting's duality-gap tolerance (~1e-9 relative measured)
        opt = _closed_form_optimum(problem, th)
        if lifted and bnd.certified:
            opt["reason"] += "; the convex lifting certifies the same optimum"
        return opt
    if lifted:
        return _lifted_optimum(problem, bnd, certified=bnd.certified)
    if th.upper_bound_only:
        return {**_closed_form_optimum(problem, th), "certified": False}
    reason = th.reason if bnd is None else f"{bnd.reason}; closed forms: {th.reason}"
    return {"objective": None, "W_fro_sq": None, "H_fro_sq": None, "b": None, "source": None, "certified": False,
            "reason": reason, "W_gram": None, "mean_gram": None}


def compare_with_optimum(problem, layer, objective: float, W_fro_sq: float, H_fro_sq: float,
                         bounds: bool = True) -> tuple[dict, dict, Optional[dict]]:
    """(optimum, gap, bounds record) for the given point ``layer`` (lastlayer.LastLayer) of ``problem``."""
    from .metrics import class_means
    from .report import solution_bounds

    opt = optimum_of(problem, bounds)
    Wg, Mg = opt.pop("W_gram"), opt.pop("mean_gram")
    gap = dict.fromkeys(("objective", "rel_objective", "W_fro_sq", "H_fro_sq", "W_gram_distance",
                         "W_gram_distance_uncentred", "mean_gram_distance", "mean_gram_distance_uncentred"))
    if opt["objective"] is not None:
        gap["objective"] = objective - opt["objective"]
        gap["rel_objective"] = gap["objective"] / max(abs(opt["objective"]), np.finfo(float).tiny)
        gap["W_fro_sq"] = W_fro_sq - opt["W_fro_sq"]
        gap["H_fro_sq"] = H_fro_sq - opt["H_fro_sq"]
        M, _ = class_means(layer.H, layer.labels, layer.K)
        counts = np.asarray(problem.counts, np.float64)
        uniform, weights = np.full(layer.K, 1.0 / layer.K), counts / counts.sum()
        G_W, G_M = layer.W @ layer.W.T, M.T @ M
        gap["W_gram_distance"] = gram_distance(_centred(G_W, uniform), _centred(Wg, uniform))
        gap["W_gram_distance_uncentred"] = gram_distance(G_W, Wg)
        gap["mean_gram_distance"] = gram_distance(_centred(G_M, weights), _centred(Mg, weights))
        gap["mean_gram_distance_uncentred"] = gram_distance(G_M, Mg)
    return opt, gap, (solution_bounds(problem, objective) if bounds else None)
