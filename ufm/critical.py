"""Classification of critical points of (7) by measured curvature (docs/theory.md §5).

Every class below comes from computed numbers (‖∇f‖, Hessian eigenvalues with residuals, the theory optimum),
never from what a theorem says should happen:

- ``nonfinite``: f, ∇f or the curvature is NaN/inf (overflow, a user loss returning NaN): nothing about the point
  can be measured, so it is never called critical, a minimiser or a saddle;
- ``not_critical``: ‖∇f‖ > grad_tol (never called a minimiser or a saddle);
- ``strict_saddle``: λ_min(∇²f) < −zero_tol;
- on the complement of the symmetry orbit's tangent space (symmetry.py) the Hessian is then either positive
  (λ_min^⊥ > zero_tol: a second-order minimum whose only flat directions are the symmetry) or not (``degenerate``:
  flat directions beyond the symmetry, second order cannot decide);
- a second-order minimum is judged against the proven bracket [lower, upper] on the global optimum (bounds.py; the
  theory optimum where a closed form applies): ``global_minimizer`` when the bracket is certified (lower = upper to
  1e-8 relative) and its objective meets it (relative obj_tol), ``spurious_local_minimizer`` when its objective is
  above ``upper`` (an explicit point is lower, so it is provably not global), ``local_minimizer`` otherwise (the
  bracket is reported with it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import aot
from .eigensolvers import EIGENSOLVERS, HESSIAN_DTYPES, DeviceCurvature, choose_eigensolver, residual_tolerance
from .hessian import DENSE_MAX_PARAMS, MatrixFree, NonFiniteCurvature, dense_hessian, value_and_grad
from .losses import CrossEntropy, LabelSmoothing, RescaledMSE
from .model import Params, data_term, flatten, unflatten
from .problem import Problem
from .symmetry import RANK_ATOL, RANK_RTOL, orbit_tangent, projector_matrix
from .theory import phi_prime0, theory_optimum

CLASSES = ("global_minimizer", "spurious_local_minimizer", "local_minimizer", "strict_saddle", "degenerate",
           "not_critical", "nonfinite")
HESSIAN_METHODS = ("auto", "dense", "lanczos")
#: above this many parameters ``--hessian dense`` is refused even when memory fits: eigh is O(P³), measured here at
#: ~50 s for P = 3000 on 2 cores, so P = 20 000 is ~300× that (hours), and the deflated spectrum needs a second one
DENSE_HARD_MAX_PARAMS = 20_000
#: the relative part of the default zero tolerance, by the dtype the curvature is computed in. float64: 1e-8 (see
#: Tolerances). float32: 1e-3. A float32 Hessian-vector product sums N terms in float32 and is evaluated at x rounded
#: to float32: at the NC optimum with 10⁷ parameters (N = 10⁵) its eigenpairs, measured again in float64, had residuals
#: of 6e-5·‖∇²f‖ (benchmarks/results/eigs_cpu.md), and that error grows with N. 1e-3 keeps a margin of ~16× there;
#: 1e-4 would keep 1.6×. The floor (for ‖∇²f‖ = ‖∇f‖ = 0) scales with it: 1e-5 × the relative part, 1e-13 in float64.
ZERO_RTOL = {"float64": 1e-8, "float32": 1e-3}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """grad_tol: ‖∇f‖ at or below it is critical. zero_tol: |θ| at or below it is a zero eigenvalue; by default
    max(1e-8·‖∇²f‖₂, 1e2·‖∇f‖), because off an exact critical point by δ the symmetry eigenvalues move by O(δ)
    and round-off in float64 is ~1e-16·‖∇²f‖·√P. obj_tol: relative objective agreement with theory."""

    grad_tol: float = 1e-8
    zero_tol: Optional[float] = None
    obj_tol: float = 1e-8
    # in float32 curvature (analyze_point's hessian_dtype) the relative part is ZERO_RTOL["float32"] = 1e-3

    def __post_init__(self):
        # a NaN tolerance would make every comparison False and silently change the class; refuse it up front
        from .errors import UFMInputError
        for flag, value in (("--grad-tol", self.grad_tol), ("--zero-tol", self.zero_tol), ("obj_tol", self.obj_tol)):
            if value is None and flag == "--zero-tol":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(value) or value <= 0:
                raise UFMInputError(flag, value, "must be a finite number > 0")

    def zero(self, hess_norm: float, grad_norm: float, dtype: str = "float64") -> float:
        rel, absolute = self.zero_parts(grad_norm, dtype)
        return max(rel * hess_norm, absolute)

    def zero_parts(self, grad_norm: float, dtype: str = "float64") -> tuple[float, float]:
        """(rel, abs) with zero_tol = max(rel·‖∇²f‖₂, abs): what an eigensolver must resolve before ‖∇²f‖ is known."""
        if self.zero_tol is not None:
            return 0.0, self.zero_tol
        rel = ZERO_RTOL[dtype]
        return rel, max(1e2 * grad_norm, 1e-5 * rel)

    def zero_rule(self, dtype: str = "float64") -> str:
        """The zero tolerance's rule in words, for the record."""
        rel = f"1e{round(math.log10(ZERO_RTOL[dtype]))}"
        return "given" if self.zero_tol is not None else f"max({rel}·‖∇²f‖₂, 1e2·‖∇f‖)"


@dataclasses.dataclass
class CriticalPoint:
    """One analysed point; ``record()`` gives the JSON of ``ufm landscape``."""

    objective: float
    grad_norm: float
    min_eig: float
    max_eig: float
    min_eig_deflated: float
    n_negative: Optional[int]            # counted on the dense path; matrix-free: ≥ 1 known, exact count unknown
    n_zero: Optional[int]                # dense: counted; matrix-free: = expected when λ_min^⊥ > zero_tol, else None
    expected_zero_modes: Optional[int]   # None where the point itself is not finite (no orbit to speak of)
    rank_W: Optional[int]
    classification: str
    eig_residual: float                  # max residual ‖Hv − θv‖ over the reported eigenpairs
    hessian_method: str
    zero_tol: float
    theory_objective: Optional[float]
    bounds: Optional[dict]               # second-order minima: the bracket they were judged against (bounds.py)
    certificate: Optional[dict]
    nc_direction: Optional[dict]
    x: np.ndarray = dataclasses.field(repr=False)
    min_eigvec: np.ndarray = dataclasses.field(repr=False)
    escape: Optional[dict] = None
    label: str = ""
    found: int = 1
    eigenvalues: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)   # dense path: all of them
    not_finite: Optional[list] = None    # which measured quantities were NaN/inf: point, objective, gradient, hessian
    curvature: Optional[dict] = None     # how the spectrum was computed: eigensolver, dtype, products, convergence

    def record(self) -> dict:
        keys = ["label", "objective", "grad_norm", "min_eig", "max_eig", "min_eig_deflated", "n_negative", "n_zero",
                "expected_zero_modes", "rank_W", "classification", "eig_residual", "hessian_method",
                "theory_objective", "bounds", "certificate", "nc_direction", "escape", "found", "not_finite",
                "curvature"]
        return {k: getattr(self, k) for k in keys}


@aot.jit(static_argnames="shape")
def _grad_Z_compiled(Z, b, shape):
    K = Z.shape[0]

    def g(Z):
        # W = I_K and H = Z make W H = Z: reuse the one objective code path for the data term
        return data_term(Params(jnp.eye(K, dtype=Z.dtype), Z, b), dataclasses.replace(shape, d=K))

    return jax.grad(g)(Z)


def _data_grad_Z(problem: Problem, W, H, b):
    """G = ∇_Z g at Z = WH, with g(Z) = (1/N) Σ L(z_{k,i} + b, y_k) (docs/theory.md §5.2), as a K×N matrix.

    One compiled program (not op-by-op): the persistent compilation cache then serves it to every later process, which
    the end-of-solve second-order test (secondorder.py) calls."""
    # float64 whoever calls: a float32 G (JAX's default outside an x64 scope; TF32 matmuls on a GPU) is off by 1e-7 to
    # 1e-3 relative, more than the margin by which σ_max(G) is compared with √(λ_Wλ_H) at an optimum
    with jax.enable_x64(True):
        # numpy arguments: jnp.asarray would compile a tiny transfer program in every fresh process
        Z = np.asarray(W, np.float64) @ np.asarray(H, np.float64)
        bb = None if b is None else np.asarray(b, np.float64)
        return np.asarray(_grad_Z_compiled(Z, bb, problem.shape))


def certificate(problem: Problem, W, H, b) -> Optional[dict]:
    """docs/theory.md §5.2 for the convex losses (CE, LS, MSE): globally optimal iff balanced
    (λ_W WᵀW = λ_H HHᵀ) and ‖∇_Z g‖₂ ≤ √(λ_W λ_H). None for other losses or λ = 0."""
    if not isinstance(problem.loss, (CrossEntropy, LabelSmoothing, RescaledMSE)) or min(problem.lam_W, problem.lam_H) <= 0:
        return None
    lw, lh = problem.lam_W, problem.lam_H
    G = _data_grad_Z(problem, W, H, b)
    if not np.all(np.isfinite(G)):
        return None                                   # svd of NaN raises; there is nothing to certify
    sig = np.linalg.svd(G, compute_uv=False)
    bal = np.linalg.norm(lw * W.T @ W - lh * H @ H.T)
    scale = lw * np.sum(W**2) + lh * np.sum(H**2)
    balance_rel = float(bal / scale) if scale > 0 else float(bal)
    bound = float(np.sqrt(lw * lh))
    return {"sigma_max_grad_Z": float(sig[0]), "sqrt_lam_W_lam_H": bound, "balance_residual": balance_rel,
            "singular_values_grad_Z": [float(s) for s in sig[: problem.K]],
            "holds": bool(balance_rel <= 1e-6 and sig[0] <= bound * (1 + 1e-6))}


def negative_curvature_direction(problem: Problem, x):
    """The explicit direction of docs/theory.md §5.3 at x, when rank W < d: with a ∈ null(W) ∩ null(Hᵀ) and (u, v) the
    top singular pair of G = ∇_Z g, Δ_W = (λ_H/λ_W)^{1/4} u aᵀ, Δ_H = −(λ_W/λ_H)^{1/4} a vᵀ, Δ_b = 0, with
    predicted curvature Δᵀ∇²fΔ = 2(√(λ_Wλ_H) − σ_max(G)). Returns (flat Δ, prediction) or None."""
    lw, lh = problem.lam_W, problem.lam_H
    if min(lw, lh) <= 0:
        return None
    W, H, b = unflatten(np.asarray(x), problem.shape)
    mu, V = np.linalg.eigh(W.T @ W + H @ H.T)
    if mu[0] > max(RANK_RTOL * mu[-1], RANK_ATOL):
        return None                                   # W has full column rank d: no a exists
    a = V[:, 0]
    G = _data_grad_Z(problem, W, H, b)
    if not np.all(np.isfinite(G)):
        return None
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    dW = (lh / lw) ** 0.25 * np.outer(U[:, 0], a)
    dH = -((lw / lh) ** 0.25) * np.outer(a, Vt[0])
    db = None if b is None else np.zeros_like(b)
    return flatten(Params(dW, dH, db), xp=np), 2.0 * (np.sqrt(lw * lh) - s[0]), float(s[0])


def origin_min_eig_theory(problem: Problem) -> float:
    """docs/theory.md §5.4: λ_min of the (W, H) block of ∇²f at the origin,
    (λ_W+λ_H)/2 − √(((λ_W−λ_H)/2)² + σ²), σ = σ_max(∇_Z g(0)); σ² = φ′(0)²/n for n balanced classes. With class
    sizes n_k, ∇_Z g(0) has the columns (p₀ − e_k)/N, so σ is computed (K×N SVD, N ≤ the problem's own size)."""
    lw, lh = problem.lam_W, problem.lam_H
    p0 = phi_prime0(problem.loss, problem.K)        # TypeError outside the softmax losses, as for balanced classes
    if problem.balanced:
        sigma2 = p0**2 / problem.n
    else:
        K, d = problem.K, problem.d
        G = _data_grad_Z(problem, np.zeros((K, d)), np.zeros((d, problem.N)), np.zeros(K) if problem.bias else None)
        sigma2 = float(np.linalg.svd(G, compute_uv=False)[0]) ** 2
    return float((lw + lh) / 2 - np.sqrt(((lw - lh) / 2) ** 2 + sigma2))


def _choose_method(problem: Problem, method: str) -> str:
    if method not in HESSIAN_METHODS:
        from .errors import UFMInputError
        raise UFMInputError("--hessian", method, f"use one of {', '.join(HESSIAN_METHODS)}")
    if method == "auto":
        return "dense" if problem.num_params <= DENSE_MAX_PARAMS else "lanczos"
    return method


def check_hessian(problem: Problem, hessian: str = "auto", *, solver="auto", eigensolver: str = "auto",
                  hessian_dtype: str = "float64") -> str:
    """Resolve ``auto`` and refuse, before any work, a Hessian method that cannot finish here: one whose memory
    estimate (resources.py; with ``solver`` for the solves around it, ``eigensolver`` and ``hessian_dtype`` for the
    matrix-free path's vectors) exceeds what is available, or ``dense`` above DENSE_HARD_MAX_PARAMS. Without it a
    dense Hessian at 10⁵ parameters aborts inside XLA (SIGABRT)."""
    from .errors import UFMInputError
    from .resources import check_fits

    method = _choose_method(problem, hessian)
    check_fits(problem, solver=solver, hessian=method, flag="--hessian", eigensolver=eigensolver,
               hessian_dtype=hessian_dtype)
    P = problem.num_params
    if method == "dense" and P > DENSE_HARD_MAX_PARAMS:
        raise UFMInputError("--hessian", "dense", f"K={problem.K} d={problem.d} n={problem.n} has {P:,} parameters; a "
                            f"dense eigh above {DENSE_HARD_MAX_PARAMS:,} would take hours even where memory fits: use "
                            "--hessian lanczos (matrix-free)")
    return method


def check_eigensolver(problem: Problem, method: str, eigensolver: str = "auto", hessian_dtype: str = "float64"):
    """The eigensolver of the matrix-free path (``method`` = "lanczos"), ``auto`` resolved (eigensolvers.
    choose_eigensolver: by backend and size); None on the dense path. Refuses, before any work, an unknown name and a
    choice the resolved method would ignore."""
    from .errors import UFMInputError

    if eigensolver not in EIGENSOLVERS:
        raise UFMInputError("--eigensolver", eigensolver, f"use one of {', '.join(EIGENSOLVERS)}")
    if hessian_dtype not in HESSIAN_DTYPES:
        raise UFMInputError("--hessian-dtype", hessian_dtype, f"use one of {', '.join(HESSIAN_DTYPES)}")
    if method == "dense":
        for flag, value, default in (("--eigensolver", eigensolver, "auto"), ("--hessian-dtype", hessian_dtype,
                                                                            "float64")):
            if value != default:
                raise UFMInputError(flag, value, f"applies to the matrix-free path; this problem's "
                                    f"{problem.num_params:,} parameters take the dense float64 eigh (--hessian auto "
                                    f"does up to {DENSE_MAX_PARAMS:,}): add --hessian lanczos")
        return None
    if eigensolver == "arpack" and hessian_dtype != "float64":
        raise UFMInputError("--hessian-dtype", hessian_dtype, "ARPACK runs in float64: use --eigensolver jax (or auto)")
    if eigensolver == "auto":
        return choose_eigensolver(problem.num_params, hessian_dtype)
    return eigensolver


def classify(objective: float, grad_norm: float, min_eig: float, min_eig_deflated: float, zero_tol: float,
             lower: Optional[float], upper: Optional[float], tolerances: Tolerances, *,
             best_known: bool = False) -> str:
    """The class from measured numbers (see the module docstring); [lower, upper] is the proven bracket on the
    global optimum (either may be None). Every class needs an affirmative comparison on finite numbers: NaN compares
    False both ways, so a chain of fall-throughs would call a NaN point a minimiser.

    ``best_known`` (the deep UFM, where nothing proves a lower bound; docs/theory.md §12.7): ``upper`` is the lowest
    objective ufm knows, and a second-order minimum that reaches it (relative obj_tol) is ``global_minimizer`` in that
    uncertified sense; the record says so."""
    from .bounds import certified
    finite = lambda *vals: all(v is not None and math.isfinite(v) for v in vals)
    if not finite(objective, grad_norm):
        return "nonfinite"
    if grad_norm > tolerances.grad_tol:
        return "not_critical"
    if not finite(min_eig, min_eig_deflated, zero_tol):
        return "nonfinite"
    if min_eig < -zero_tol:
        return "strict_saddle"
    if min_eig_deflated <= zero_tol:
        return "degenerate"
    if not finite(upper):
        return "local_minimizer"
    meets = abs(objective - upper) <= tolerances.obj_tol * max(1.0, abs(upper))
    if best_known and (meets or objective < upper):
        return "global_minimizer"
    if meets and finite(lower) and certified(lower, upper):
        return "global_minimizer"
    if objective > upper and not meets:
        return "spurious_local_minimizer"
    return "local_minimizer"         # inside the bracket, or (a contradiction, reported as measured) below it


def judged_against(problem: Problem, th=None) -> tuple[Optional[float], Optional[float], dict]:
    """The bracket a critical point of ``problem`` is classified with: the proven bounds (bounds.py), narrowed to the
    closed-form optimum where a theorem gives one (it is both a proven lower bound and attained by the NC point), so
    an unconverged lifting never demotes a point that theory certifies. Returns (lower, upper, record)."""
    from .bounds import certified, problem_bounds

    b = problem_bounds(problem)
    lower, upper = b.lower, b.upper
    th = theory_optimum(problem) if th is None else th
    rec = {"lower": lower, "upper": upper, "method": b.method}
    if th.applies and th.objective is not None and not certified(lower, upper):
        lower, upper = th.objective, th.objective
        rec.update(lower=lower, upper=upper, method="closed_form")
    rec["certified"] = certified(lower, upper)
    return lower, upper, rec


def _finite_tangent(problem: Problem, x):
    """The orbit tangent, or None where x (or WᵀW + HHᵀ, which overflows first) is not finite: eigh raises there."""
    if not np.all(np.isfinite(x)):
        return None
    if hasattr(problem, "widths"):
        # deep: every factor's Gram (each junction's M is a sum of two of them) must be finite
        p = problem.unflatten(x)
        with np.errstate(all="ignore"):
            grams = [np.asarray(F).T @ np.asarray(F) for F in (*p.Ws, p.H.T)]
        if not all(np.all(np.isfinite(G)) for G in grams):
            return None
    else:
        W, H, _ = unflatten(x, problem.shape)
        with np.errstate(all="ignore"):
            M = W.T @ W + H @ H.T
        if not np.all(np.isfinite(M)):
            return None
    try:
        return orbit_tangent(problem, x)
    except np.linalg.LinAlgError:
        return None


class Spectrum(NamedTuple):
    """What :func:`measure_spectrum` measured: the extreme eigenvalues of ∇²f and of the deflated operator, the zero
    tolerance they were judged with, the counts (dense: counted; matrix-free: see CriticalPoint), the largest
    residual, the λ_min eigenvector and eigenspace (dense), and the full spectra (dense; None otherwise)."""

    min_eig: float
    max_eig: float
    min_perp: float
    residual: float
    ztol: float
    n_neg: Optional[int]
    n_zero: Optional[int]
    min_space: Optional[np.ndarray]
    theta: Optional[np.ndarray]
    theta_perp: Optional[np.ndarray]
    vmin: np.ndarray


def measure_spectrum(problem, mf: MatrixFree, x, tangent, method: str, solver, dtype: str, tolerances: Tolerances,
                     gnorm: float, curvature: dict, not_finite: list) -> Spectrum:
    """The Hessian spectrum at x (dense eigh, ARPACK or the JAX Lanczos by ``method``/``solver``) and the spectrum
    deflated by the orbit ``tangent`` (symmetry.py: one layer's or the deep one's), for any problem whose shape
    carries its flat objective. Appends "point"/"hessian" to ``not_finite`` where those are not finite, and fills
    ``curvature`` with what ran."""
    nan = float("nan")
    theta_perp = None
    min_eig = max_eig = min_perp = residual = ztol = nan
    n_neg = n_zero = min_space = theta = None
    vmin = np.zeros_like(x)
    if not not_finite and tangent is None:
        not_finite.append("point")           # W, H finite but WᵀW + HHᵀ overflows: no orbit to deflate
    if not not_finite:
        started = time.perf_counter()
        try:
            if method == "dense":
                Hd = np.asarray(dense_hessian(mf.x, mf.reg, problem.shape))
                if not np.all(np.isfinite(Hd)):
                    raise NonFiniteCurvature("dense Hessian")
                theta, vecs = np.linalg.eigh(Hd)
                hess_norm = float(np.max(np.abs(theta)))
                ztol = tolerances.zero(hess_norm, gnorm)
                Pm = np.asarray(projector_matrix(mf.x, tangent.U, tangent.weights, bool(tangent.free_shift),
                                                 problem.shape))
                Q = np.eye(x.size) - Pm
                theta_perp = np.linalg.eigvalsh(Q @ Hd @ Q + (hess_norm + 1.0) * Pm)
                min_eig, max_eig, vmin = float(theta[0]), float(theta[-1]), vecs[:, 0]
                min_perp = float(theta_perp[0])
                n_neg, n_zero = int(np.sum(theta < -ztol)), int(np.sum(np.abs(theta) <= ztol))
                residual = max(mf.residual(theta[0], vecs[:, 0]), mf.residual(theta[-1], vecs[:, -1]))
                min_space = vecs[:, theta <= theta[0] + ztol]
            elif solver == "arpack":
                top = mf.largest()
                hess_norm = abs(top.value)
                sigma = top.value + max(1.0, 0.01 * abs(top.value))
                low = mf.smallest(sigma)
                ztol = tolerances.zero(max(hess_norm, abs(low.value)), gnorm)
                perp = mf.smallest(sigma, op=mf.H_deflated(tangent, sigma))
                curvature["matvecs"] = top.matvecs + low.matvecs + perp.matvecs
            else:
                # both ends of the spectrum from one run; the deflated operator lifts the orbit tangent just
                # above λ_max (a shift on ‖∇²f‖'s scale keeps the deflated run's tolerance on that scale too)
                rtol, atol = residual_tolerance(*tolerances.zero_parts(gnorm, dtype), dtype)
                curvature["convergence"] = (f"residual ≤ max({rtol:g}·‖∇²f‖, {atol:.2g}) per Ritz pair (1% of "
                                            "the zero tolerance)")
                dev = DeviceCurvature(problem, mf.x, dtype, tolerance=(rtol, atol))
                low, top = dev.extremes()
                hess_norm = max(abs(top.value), abs(low.value))
                sigma = top.value + 0.01 * hess_norm if hess_norm > 0 else 1.0
                ztol = tolerances.zero(hess_norm, gnorm, dtype)
                perp = dev.smallest_deflated(tangent, sigma, hess_norm, vector=False)
                curvature["matvecs"] = dev.matvecs
            if method == "lanczos":
                min_eig, max_eig, vmin = low.value, top.value, low.vector
                min_perp = perp.value
                n_neg = None if min_eig < -ztol else 0
                n_zero = tangent.dim if min_perp > ztol else None
                residual = max(top.residual, low.residual, perp.residual)
                min_space = None                 # Lanczos returns one vector of a possibly repeated eigenvalue
            curvature["seconds"] = time.perf_counter() - started     # the spectrum alone, compilation included
            if not all(math.isfinite(v) for v in (min_eig, max_eig, min_perp)):
                raise NonFiniteCurvature("eigenvalues")
        except (NonFiniteCurvature, np.linalg.LinAlgError):
            # eigh fails to converge on NaN; ARPACK is stopped at the first non-finite HVP (hessian.py)
            not_finite.append("hessian")
            min_eig = max_eig = min_perp = residual = nan
            n_neg = n_zero = min_space = theta = None
            vmin = np.zeros_like(x)

    return Spectrum(min_eig, max_eig, min_perp, residual, ztol, n_neg, n_zero, min_space, theta,
                    theta_perp if method == "dense" and theta is not None else None, vmin)


def direction_record(mf: MatrixFree, nc, min_eig: float, min_space) -> Optional[dict]:
    """The record of an explicit direction ``nc`` = (Δ, predicted Δᵀ∇²fΔ, σ_max) (§5.3's; the deep input junction's):
    its predicted and measured curvature per unit ‖Δ‖², against λ_min. None when there is no such direction."""
    if nc is None:
        return None
    delta, predicted, smax = nc
    norm2 = float(delta @ delta)
    measured = float(delta @ mf.H(delta))
    # Δ is a λ_min eigenvector iff its Rayleigh quotient equals λ_min; on the dense path also report how
    # much of Δ lies in the (often repeated) λ_min eigenspace
    overlap = None if min_space is None else float(np.linalg.norm(min_space.T @ delta) / np.sqrt(norm2))
    return {"predicted_curvature": float(predicted / norm2), "measured_curvature": measured / norm2,
            "min_eig": min_eig, "sigma_max_grad_Z": smax, "overlap_with_min_eigenspace": overlap}


def curvature_plan(problem, tolerances, hessian: str, eigensolver: str, hessian_dtype: str):
    """(method, eigensolver, dtype, the record's ``curvature``) of an analysis, every choice checked before any work."""
    from .errors import UFMInputError

    if not isinstance(tolerances, Tolerances):
        raise UFMInputError("tolerances", tolerances, "pass a ufm.critical.Tolerances")
    method = check_hessian(problem, hessian, eigensolver=eigensolver, hessian_dtype=hessian_dtype)
    solver = check_eigensolver(problem, method, eigensolver, hessian_dtype)
    dtype = hessian_dtype if method == "lanczos" else "float64"
    curvature = {"eigensolver": solver or "dense eigh", "dtype": dtype, "matvecs": None, "seconds": None,
                 "convergence": "all eigenvalues (numpy eigh)" if method == "dense" else
                 "ARPACK tol 1e-10 relative to σ − θ (shifted operator)"}
    return method, solver, dtype, curvature


def first_order(problem, x):
    """(MatrixFree at x, f, ‖∇f‖, what is not finite, the orbit tangent or None) at the flat float64 point x; call
    inside an x64 scope."""
    from .errors import UFMInputError

    if x.shape != (problem.num_params,):
        raise UFMInputError("point", f"shape {x.shape}", f"a flat vector of {problem.num_params} entries or Params")
    mf = MatrixFree(problem, x)
    f, g = value_and_grad(mf.x, mf.reg, problem.shape)
    f, gnorm = float(f), float(np.linalg.norm(np.asarray(g)))
    not_finite = [name for name, ok in (("point", np.all(np.isfinite(x))), ("objective", math.isfinite(f)),
                                        ("gradient", math.isfinite(gnorm))) if not ok]
    return mf, f, gnorm, not_finite, _finite_tangent(problem, x)


def analyze_point(problem: Problem, point, *, hessian: str = "auto", tolerances: Tolerances = Tolerances(),
                  label: str = "", eigensolver: str = "auto", hessian_dtype: str = "float64") -> CriticalPoint:
    """Measure ‖∇f‖ and the Hessian spectrum at ``point`` (Params or flat vector) and classify it. Never raises on
    NaN/inf: such a point is ``nonfinite`` and ``not_finite`` names what was.

    On the matrix-free path ``eigensolver`` picks scipy's ARPACK on the host or the JAX-native Lanczos
    (eigensolvers.py; ``auto``: by backend and size), and ``hessian_dtype`` = "float32" runs the latter in float32
    (half the memory; the zero tolerance's relative part becomes ZERO_RTOL["float32"], residuals are measured in
    float64). ``curvature`` in the record says what ran."""
    from .errors import UFMInputError

    if hasattr(problem, "widths"):                  # the deep UFM (docs/theory.md §12.7)
        from .deep_landscape import analyze_deep_point
        return analyze_deep_point(problem, point, hessian=hessian, tolerances=tolerances, label=label,
                                  eigensolver=eigensolver, hessian_dtype=hessian_dtype)
    method, solver, dtype, curvature = curvature_plan(problem, tolerances, hessian, eigensolver, hessian_dtype)
    with jax.enable_x64(True), np.errstate(all="ignore"):
        x = np.asarray(flatten(point, xp=np) if isinstance(point, Params) else point, dtype=np.float64)
        mf, f, gnorm, not_finite, tangent = first_order(problem, x)
        shape = problem.shape
        th = theory_optimum(problem)
        f_star = th.objective if th.applies else None

        sp = measure_spectrum(problem, mf, x, tangent, method, solver, dtype, tolerances, gnorm, curvature,
                              not_finite)
        min_eig, max_eig, min_perp, residual, ztol = sp.min_eig, sp.max_eig, sp.min_perp, sp.residual, sp.ztol
        n_neg, n_zero, min_space, theta, vmin = sp.n_neg, sp.n_zero, sp.min_space, sp.theta, sp.vmin

        # the bracket decides only between the kinds of second-order minimum: computed for those alone (the convex
        # lifting compiles per loss and K, which a census of saddles need not pay)
        bounds = None
        lower = upper = None
        if classify(f, gnorm, min_eig, min_perp, ztol, None, None, tolerances) == "local_minimizer":
            lower, upper, bounds = judged_against(problem, th)
        cls = classify(f, gnorm, min_eig, min_perp, ztol, lower, upper, tolerances)

        nc = negative_curvature_direction(problem, x) if tangent is not None and not not_finite else None
        direction = direction_record(mf, nc, min_eig, min_space)

        W, H, b = unflatten(x, shape)
        return CriticalPoint(
            objective=f, grad_norm=gnorm, min_eig=min_eig, max_eig=max_eig, min_eig_deflated=min_perp,
            n_negative=n_neg, n_zero=n_zero, expected_zero_modes=None if tangent is None else tangent.dim,
            rank_W=None if tangent is None else tangent.rank, classification=cls, eig_residual=float(residual),
            hessian_method=method, zero_tol=ztol, theory_objective=f_star, bounds=bounds,
            certificate=None if not_finite else certificate(problem, W, H, b), nc_direction=direction,
            x=x, min_eigvec=np.asarray(vmin), label=label, eigenvalues=theta if method == "dense" else None,
            not_finite=not_finite or None, curvature=curvature,
        )


def origin(problem: Problem) -> Params:
    """(W, H, b) = (0, 0, 0): a critical point for the softmax losses (CE, FL, LS) and for bias-free MSE; with MSE and
    a bias, ∇_b ≠ 0 there (the targets pull b), so it is not critical (docs/theory.md §5.4)."""
    K, d, N = problem.K, problem.d, problem.N
    return Params(np.zeros((K, d)), np.zeros((d, N)), np.zeros(K) if problem.bias else None)


def mse_saddle_point(problem: Problem, r: int) -> Params:
    """The rank-r critical point of bias-free vanilla MSE (κ = 1; docs/theory.md §5.5): Z = a U_r U_rᵀ Y with
    a = (β − Kc/2)_+, balanced W W ᵀ = s_c a U_r U_rᵀ. A strict saddle for every r < K."""
    loss = problem.loss
    if not isinstance(loss, RescaledMSE) or problem.bias or loss.kappa != 1.0 or not 0 <= r <= min(problem.K, problem.d):
        from .errors import UFMInputError
        raise UFMInputError("r", r, "needs bias-free MSE with κ = 1 and 0 ≤ r ≤ min(K, d)")
    if not problem.balanced:
        from .errors import UFMInputError
        raise UFMInputError("-n", ",".join(map(str, problem.counts)), "the rank-r MSE critical points are built for "
                            "balanced classes")
    K, d, n = problem.K, problem.d, problem.n
    c = np.sqrt(n * problem.lam_W * problem.lam_H)
    a = max(loss.beta - K * c / 2.0, 0.0)
    sc = np.sqrt(n * problem.lam_H / problem.lam_W)
    W = np.zeros((K, d))
    W[:r, :r] = np.sqrt(sc * a) * np.eye(r)          # U_r = first r standard basis vectors
    H = np.sqrt(problem.lam_W / (problem.lam_H * n)) * W[problem.labels].T
    return Params(W, H, None)
