"""Neural-collapse metrics (docs/theory.md §6), pure numpy functions of (W, H, b, labels).

Conventions (each metric names its own exactly; docs/theory.md §6.4 lists how repositories disagree):
- Σ_W = (1/N) Σ_{k,i} (h_{k,i} − μ_k)(h_{k,i} − μ_k)ᵀ, Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ (nc_loss), μ_G the mean
  of all N features. With class sizes n_k: Σ_W weights class k by n_k/N (every sample counts once), Σ_B weights the
  classes equally, and μ_G = Σ_k (n_k/N) μ_k leans towards the majority. NC2 and NC3 centre with this μ_G too.
- J = (I_K − 11ᵀ/K)/√(K−1), the unit-Frobenius simplex-ETF Gram matrix.
- A metric that divides by a zero norm (e.g. NC2 of W = 0 in the trivial-collapse regime) is NaN: undefined,
  not "perfect".
"""

from __future__ import annotations

import numpy as np


def simplex_etf_gram(K: int) -> np.ndarray:
    """J = (I_K − 11ᵀ/K)/√(K−1), ‖J‖_F = 1."""
    return (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)


def class_means(H, labels, K):
    """μ_k as the columns of a d×K matrix, and μ_G."""
    H = np.asarray(H, dtype=np.float64)
    onehot = np.eye(K)[np.asarray(labels)]              # N×K
    counts = onehot.sum(axis=0)
    M = H @ onehot / counts
    return M, H.mean(axis=1)


def _gram_distance(G, K):
    norm = np.linalg.norm(G)
    if norm == 0:
        return float("nan")
    return float(np.linalg.norm(G / norm - simplex_etf_gram(K)))


#: eigenvalues of Σ_B at or below this fraction of the largest are round-off, not between-class spread
SIGMA_B_RTOL = 1e-12


def between_class_pinv(Sigma_B, K: int):
    """The pseudo-inverse of Σ_B on its numerical range: at most K − 1 eigenvalues (its exact rank bound), each
    above SIGMA_B_RTOL times the largest. ``numpy.linalg.pinv`` keeps eigenvalues down to ~1e-15 relative and takes
    |θ|, so a round-off eigenvalue (including a negative one) outside the span of the class means can be inverted
    and blow NC1 up by many orders of magnitude (seen: 3.1e-6 instead of 9e-17 at an exact LS optimum)."""
    theta, V = np.linalg.eigh(Sigma_B)
    top = theta[-1] if theta.size else 0.0
    if not top > 0:
        return None
    keep = np.zeros(theta.shape, bool)
    keep[max(theta.size - (K - 1), 0):] = True
    keep &= theta > SIGMA_B_RTOL * top
    return (V[:, keep] / theta[keep]) @ V[:, keep].T


def nc1(H, labels, K) -> float:
    """NC1 = tr(Σ_W Σ_B^†)/K (Papyan et al.; nc_loss), Σ_B^† the pseudo-inverse on Σ_B's numerical range
    (:func:`between_class_pinv`); NaN when the class means coincide (Σ_B = 0)."""
    H = np.asarray(H, dtype=np.float64)
    M, mu_G = class_means(H, labels, K)
    centred = H - M[:, labels]
    Sigma_W = centred @ centred.T / H.shape[1]
    Mc = M - mu_G[:, None]
    Sigma_B = Mc @ Mc.T / K
    inv = between_class_pinv(Sigma_B, K)
    if inv is None:
        return float("nan")
    return float(np.trace(Sigma_W @ inv) / K)


def nc2_classifier(W, centred: bool = True) -> float:
    """NC2 of W: ‖W̃W̃ᵀ/‖W̃W̃ᵀ‖_F − J‖_F, with W̃ = W − 1 w̄ᵀ (centred, nc_loss) or W̃ = W (uncentred).

    The uncentred form tells a simplex ETF (0) from an orthogonal frame (> 0); centring maps an orthogonal frame
    to a simplex ETF, so the centred form scores both 0 (docs/theory.md §6.3)."""
    W = np.asarray(W, dtype=np.float64)
    Wt = W - W.mean(axis=0) if centred else W
    return _gram_distance(Wt @ Wt.T, W.shape[0])


def nc2_means(H, labels, K, centred: bool = True) -> float:
    """NC2 of the class means: ‖M̃ᵀM̃/‖M̃ᵀM̃‖_F − J‖_F with M̃ = [μ_k − μ_G] (centred) or [μ_k] (uncentred)."""
    M, mu_G = class_means(H, labels, K)
    Mt = M - mu_G[:, None] if centred else M
    return _gram_distance(Mt.T @ Mt, K)


def nc3(W, H, labels, K) -> float:
    """NC3 (nc_loss ``compute_W_H_relation``): ‖W̃H̄/‖W̃H̄‖_F − J‖_F, W̃ = W − 1w̄ᵀ, H̄ = [μ_k − μ_G] (d×K)."""
    W = np.asarray(W, dtype=np.float64)
    M, mu_G = class_means(H, labels, K)
    return _gram_distance((W - W.mean(axis=0)) @ (M - mu_G[:, None]), K)


#: entries of the d×chunk×K difference array nc4 holds at once (32 MB in float64)
NC4_CHUNK_ENTRIES = 1 << 22


def nc4(W, H, b, labels, K) -> float:
    """NC4 (Papyan et al.): the fraction of samples where argmax_k (W h + b)_k ≠ argmin_k ‖h − μ_k‖."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    z = W @ H + (0.0 if b is None else np.asarray(b)[:, None])
    M, _ = class_means(H, labels, K)
    # distances in chunks of samples: the d×N×K difference array of a network's features (d = 512, N = 5·10⁴,
    # K = 10) would be 2 GB; each chunk is the same formula, so the result does not depend on the chunking
    step = max(1, NC4_CHUNK_ENTRIES // (H.shape[0] * K))
    nearest = np.concatenate([((H[:, i:i + step, None] - M[:, None, :]) ** 2).sum(axis=0).argmin(axis=1)
                              for i in range(0, H.shape[1], step)])
    return float(np.mean(np.argmax(z, axis=0) != nearest))


def bias_residual(W, H, b) -> float:
    """‖W μ_G + b‖₂ (the curve nc_loss plots as "NC4"); b = 0 when the model has no bias."""
    mu_G = np.asarray(H, dtype=np.float64).mean(axis=1)
    r = np.asarray(W, dtype=np.float64) @ mu_G
    return float(np.linalg.norm(r if b is None else r + np.asarray(b)))


def equinorm(vectors) -> float:
    """std/mean of the norms of the rows of ``vectors`` (Papyan et al. NC2 equinorm); 0 for equal norms."""
    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
    return float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan")


def _cosines(vectors):
    V = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(V, axis=1)
    if np.any(norms == 0):
        return None
    C = (V @ V.T) / np.outer(norms, norms)
    return C[~np.eye(len(V), dtype=bool)]


def equiangularity(vectors) -> float:
    """std over pairs k ≠ k' of cos(v_k, v_k') (Papyan et al. NC2 equiangularity)."""
    c = _cosines(vectors)
    return float("nan") if c is None else float(c.std())


def max_angle(vectors) -> float:
    """mean over pairs k ≠ k' of |cos(v_k, v_k') + 1/(K−1)| (Papyan et al. NC2 maximal angle)."""
    c = _cosines(vectors)
    return float("nan") if c is None else float(np.mean(np.abs(c + 1.0 / (len(vectors) - 1))))


NC_KEYS = ("NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3", "NC4", "bias_residual",
           "W_equinorm", "W_equiangularity", "W_max_angle", "H_equinorm", "H_equiangularity", "H_max_angle")


def nc_metrics(W, H, b, labels, K) -> dict:
    """Every metric above, keyed as in the JSON report."""
    M, mu_G = class_means(H, labels, K)
    means = (M - mu_G[:, None]).T
    return {
        "NC1": nc1(H, labels, K),
        "NC2_W": nc2_classifier(W),
        "NC2_H": nc2_means(H, labels, K),
        "NC2_W_uncentred": nc2_classifier(W, centred=False),
        "NC2_H_uncentred": nc2_means(H, labels, K, centred=False),
        "NC3": nc3(W, H, labels, K),
        "NC4": nc4(W, H, b, labels, K),
        "bias_residual": bias_residual(W, H, b),
        "W_equinorm": equinorm(W),
        "W_equiangularity": equiangularity(W),
        "W_max_angle": max_angle(W),
        "H_equinorm": equinorm(means),
        "H_equiangularity": equiangularity(means),
        "H_max_angle": max_angle(means),
    }
