"""Per-layer neural-collapse metrics of a deep UFM point (docs/theory.md §12.3), pure numpy.

Layer l = 0, …, L−1 is the feature h⁽ˡ⁾ entering W_{l+1} (h⁽⁰⁾ = H, h⁽ˡ⁾ = σ(W_l h⁽ˡ⁻¹⁾)); M_l = [μ_1 ⋯ μ_K] its
uncentred class means (d_l × K) and M̃_l the means minus the global mean μ_G (weighted as in metrics.py).

- DNC1_l: tr(Σ_W Σ_B^†)/K of h⁽ˡ⁾ (metrics.nc1).
- DNC2_ETF_l: ‖M̃ᵀM̃/‖M̃ᵀM̃‖ − J‖ (centred means vs the simplex ETF; metrics.nc2_means).
- DNC2_OF_l: ‖MᵀM/‖MᵀM‖ − I_K/√K‖ (uncentred means vs an orthogonal frame).
- DNC3_l: 1 − ‖W_{l+1} P_l‖²/‖W_{l+1}‖², P_l the orthogonal projector onto the span of M_l: the fraction of the
  next layer's row energy outside the class means' span (0 when every row of W_{l+1} lies in it).
- rank_l: the numerical rank of M_l (singular values above RANK_RTOL of the largest).
The logits Z = W_L h⁽ᴸ⁻¹⁾ (no bias) get their class-mean rank too, and the last layer also gets NC3 of metrics.py.
"""

from __future__ import annotations

import numpy as np

from .deep import features
from .metrics import class_means, nc1, nc2_means, nc3

#: a singular value of a class-mean matrix at or below this fraction of the largest counts as zero. Solves stop at
#: ‖∇f‖ ≤ 1e-9; a genuine direction of a converged point is many orders above 1e-6 relative, round-off far below.
RANK_RTOL = 1e-6


def numerical_rank(A, rtol: float = RANK_RTOL) -> int:
    s = np.linalg.svd(np.asarray(A, dtype=np.float64), compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def _of_distance(M, K) -> float:
    G = M.T @ M
    norm = np.linalg.norm(G)
    return float("nan") if norm == 0 else float(np.linalg.norm(G / norm - np.eye(K) / np.sqrt(K)))


def _outside_span(W_next, M) -> float:
    total = float(np.sum(W_next**2))
    if total == 0 or not np.any(M):
        return float("nan")
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    U = U[:, s > RANK_RTOL * s[0]]
    inside = float(np.sum((W_next @ U) ** 2))
    return max(0.0, 1.0 - inside / total)


def layer_metrics(params, labels, K: int, activation: str) -> dict:
    """``{"layers": [per-layer dicts], "logit_rank", "logit_singular_values"}`` for a deep point (numpy arrays)."""
    Ws = [np.asarray(W, dtype=np.float64) for W in params.Ws]
    H = np.asarray(params.H, dtype=np.float64)
    hs = features(type(params)(tuple(Ws), H, params.b), activation, xp=np)
    layers = []
    with np.errstate(all="ignore"):
        for l, h in enumerate(hs):
            M, _ = class_means(h, labels, K)
            row = {"layer": l, "width": int(h.shape[0]), "DNC1": nc1(h, labels, K),
                   "DNC2_ETF": nc2_means(h, labels, K), "DNC2_OF": _of_distance(M, K),
                   "DNC3": _outside_span(Ws[l], M), "rank": numerical_rank(M)}
            if l == len(hs) - 1:
                row["NC3"] = nc3(Ws[-1], h, labels, K)
            layers.append(row)
        Mz, _ = class_means(Ws[-1] @ hs[-1], labels, K)
        sv = np.linalg.svd(Mz, compute_uv=False)
    return {"layers": layers, "logit_rank": numerical_rank(Mz),
            "logit_singular_values": (sv / sv[0]).tolist() if sv[0] > 0 else sv.tolist()}


def deep_metrics_or_nan(problem, params) -> dict:
    """:func:`layer_metrics`, or the same keys with NaN/None where a diverged solve left non-finite parameters."""
    arrays = (*params.Ws, params.H) + (() if params.b is None else (params.b,))
    if all(np.all(np.isfinite(np.asarray(a))) for a in arrays):
        try:
            return layer_metrics(params, problem.labels, problem.K, problem.activation)
        except np.linalg.LinAlgError:
            pass
    nan = float("nan")
    return {"layers": [{"layer": l, "width": w, "DNC1": nan, "DNC2_ETF": nan, "DNC2_OF": nan, "DNC3": nan,
                        "rank": None} for l, w in enumerate(problem.dims[:-1])],
            "logit_rank": None, "logit_singular_values": None}
