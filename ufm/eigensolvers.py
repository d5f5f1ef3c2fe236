"""Extreme eigenpairs of ∇²f without leaving the device: a thick-restart Lanczos that runs inside one jit.

The host path (hessian.py) hands every Hessian-vector product to scipy's ARPACK, so on an accelerator each product
crosses the bus twice. Here the whole eigensolve is one jit-compiled ``lax.while_loop``: the HVPs, the Krylov basis
and the restarts stay where the point x lives, and only two Ritz pairs come back.

Algorithm: thick-restart Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22(2), 2000), mathematically the implicit
restart with exact shifts that ARPACK runs. A cycle extends the orthonormal basis V = [Y; q; …] by Lanczos steps with
full reorthogonalisation (classical Gram–Schmidt twice); the projected matrix VᵀAV comes from the Gram–Schmidt
coefficients (Θ on the kept Ritz pairs Y, their couplings s in the first new column, tridiagonal below), and a restart
keeps the ``keep`` Ritz vectors at the wanted end(s). Ritz pair j has the residual ‖A yⱼ − θⱼ yⱼ‖ = |β Sₘⱼ|; the
wanted pairs are converged when that is ≤ max(rtol·‖A‖, atol), ‖A‖ estimated by the largest |Ritz value| seen, tested
after every step (at an NC optimum the Krylov space closes after ~11 products, long before a basis is full). ufm asks
for 1% of the zero tolerance the point is classified with (RESIDUAL_FRACTION): scale-free, so a Hessian of norm 1e-3
is held to the same relative accuracy as one of norm 1e3. A Krylov breakdown (β at round-off level: an invariant
subspace, common at an NC optimum whose spectrum is a few clusters) continues from a rotation of the random start
vector, orthogonalised against the basis, with coupling 0.

Why not a library: benchmarks/bench_eigs.py measured the alternatives. ``jax.experimental.sparse.linalg.
lobpcg_standard`` applies the operator to its whole [X, P, R] block every iteration (four products per iteration for
one eigenpair) and needed 5× ARPACK's products (25× ours at an NC optimum); matfree's Lanczos/Arnoldi decompositions start from one vector and
orthogonalise only against their own basis, so a thick restart around them loses orthogonality to the kept Ritz
vectors at exactly those breakdowns and returned wrong eigenvalues (measured: λ_min⊥ = 0 where it is λ, residual 1e-4).

The operators are those of hessian.py: ∇²f itself (both ends of its spectrum come from one run, so λ_min and λ_max
need no separate solves; no shift is needed, because the criterion is relative to ‖∇²f‖ rather than to the eigenvalue,
which is 0 at an NC minimum, docs/theory.md §9), and the orbit-deflated (I − P)∇²f(I − P) + σP of symmetry.py.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: Krylov basis size (P-vectors per cycle, kept Ritz vectors included) and Ritz vectors kept across a restart. At an
#: NC optimum every size from 12 up converges within the first cycle (10–11 products at 2·10³–10⁷ parameters); at
#: random points (a spread spectrum) 20/6 took 200–480 products, like ARPACK's 20-vector basis, 16/6 1.15–1.3× that,
#: 14/6 1.4–1.5× (P = 2210 and 16 820). Each vector is 80 MB at 10⁷ parameters, so from LARGE_PARAMS on the basis is
#: BASIS_LARGE: at 10⁷ that took the classification's peak from 3.66 to 3.07 GB in float64 (benchmarks/results/
#: eigs_cpu.md).
BASIS = 20
KEEP = 6
BASIS_LARGE = 14
LARGE_PARAMS = 2_000_000
#: restart cycles before giving up (each costs basis − KEEP products: 4000–7000 in all; the spread spectra measured
#: here needed at most ~500)
MAX_CYCLES = 500
#: P-vectors alive at the peak of one solve beside the basis, in the solver's dtype: XLA's buffer assignment
#: (compiled.memory_analysis() at K = d = 100, n = 1000, float64) gives temporaries of basis + 3 vectors plus one
#: HVP's temporaries (7 vectors there: they scale with N·K, not P), and arguments and results of 3 in float64 (x, the
#: start vector, the one returned Ritz vector; float32 returns two). The kept Ritz vectors cost no more.
EXTRA_VECTORS = 6
#: convergence: a Ritz pair's residual ≤ RESIDUAL_FRACTION × the zero tolerance the point is classified with
#: (critical.Tolerances: max(1e-8·‖∇²f‖, 1e2·‖∇f‖) in float64). An eigenvalue lies within its residual of the spectrum,
#: so a reported θ is off by at most 1% of zero_tol and can change a comparison θ ≶ ±zero_tol only inside that 1% band
#: (ARPACK's tol = 1e-10 on σI − H with σ ≥ 1 allows an error of 1e-10 absolute, above zero_tol whenever ‖∇²f‖ < 1e-2).
RESIDUAL_FRACTION = 0.01
#: the relative residual a Lanczos run in each dtype can reach on its own operator (round-off floors near ε·‖A‖·√m):
#: float32's 1e-5 is 1% of its 1e-3 zero tolerance (the float32 product's own error, larger at large N, is what the
#: float64 residuals measure; critical.ZERO_RTOL).
RTOL_FLOOR = {"float64": 1e-12, "float32": 1e-5}


def residual_tolerance(zero_rel: float, zero_abs: float, dtype: str = "float64") -> tuple[float, float]:
    """(rtol, atol) of a run whose pairs are classified with zero_tol = max(zero_rel·‖∇²f‖, zero_abs)."""
    return max(RESIDUAL_FRACTION * zero_rel, RTOL_FLOOR[dtype]), RESIDUAL_FRACTION * zero_abs


def basis_size(num_params: int) -> int:
    """The Krylov basis used at this many parameters."""
    return BASIS if num_params < LARGE_PARAMS else BASIS_LARGE


def vectors_kept(num_params: int) -> int:
    """P-vectors (in the Hessian dtype) one JAX-native eigensolve keeps alive at its peak, for resources.py; one
    Hessian-vector product's temporaries (N×K arrays) come on top."""
    return basis_size(num_params) + EXTRA_VECTORS


class LanczosResult(NamedTuple):
    """The lowest and the highest kept Ritz pair of the last cycle (for ``which="min"`` both are low-end pairs, for
    "max" both high-end), their residual estimates |β sⱼ|, the ‖A‖ estimate the tolerance was relative to, the
    number of operator products and cycles, and whether the wanted end(s) met the tolerance."""

    values: jax.Array          # (2,)
    vectors: jax.Array         # (2, P) unit Ritz vectors (one row when _device_solve is asked for one)
    estimates: jax.Array       # (2,)
    scale: jax.Array
    matvecs: jax.Array
    cycles: jax.Array
    converged: jax.Array


WHICH = {"min": 0, "max": 1, "both": 2}


def _select(m, which, keep: int):
    """Indices (into the m lowest, ascending, Ritz values) kept across a restart: the ``keep`` lowest, highest, or
    half from each end; ``which`` is a code of WHICH, possibly traced (one compiled solver serves every end)."""
    lo = keep // 2
    k = jnp.arange(keep)
    both = jnp.where(k < lo, k, m - keep + k)
    return jnp.where(which == 0, k, jnp.where(which == 1, m - keep + k, both))


def _wanted_error(low, high, which):
    """The residual estimate that decides convergence: the wanted end's (both ends: the larger)."""
    return jnp.where(which == 0, low, jnp.where(which == 1, high, jnp.maximum(low, high)))


def _ritz(Hc, m):
    """Eigen-decomposition of the projected matrix on the first m basis rows (m traced): the upper triangle of the
    Gram–Schmidt coefficients Hc mirrored, the rows past m decoupled and lifted above the spectrum (2‖·‖_F + 1 bounds
    every eigenvalue of the active block), so the m active Ritz values come first, ascending."""
    n = Hc.shape[0]
    act = jnp.arange(n) < m
    A = jnp.triu(Hc) + jnp.triu(Hc, 1).T
    A = jnp.where(act[:, None] & act[None, :], A, 0.0)
    lift = 2.0 * jnp.sqrt(jnp.sum(A * A)) + 1.0
    return jnp.linalg.eigh(A + jnp.diag(jnp.where(act, 0.0, lift)))


def thick_restart_lanczos(matvec, v0, *, which: str = "both", rtol=1e-10, atol=0.0, scale=0.0, basis: int = BASIS,
                          keep: int = KEEP, max_cycles: int = MAX_CYCLES) -> LanczosResult:
    """Extreme eigenpairs of the symmetric operator ``matvec`` (traceable; call it inside jit).

    ``which``: "min", "max" or "both" (the end(s) that must converge), or its WHICH code (may be traced). A wanted
    pair is converged when its residual estimate is ≤ max(rtol·‖A‖, atol), ‖A‖ the largest of ``scale`` and every
    |Ritz value| seen; it is tested after every step, so a run stops as soon as it may (at an NC optimum a Krylov
    space closes after ~10 products). ``basis`` ≤ len(v0) P-vectors per cycle, ``keep`` < basis Ritz vectors carried
    across a restart. ``v0`` should be random (its rotations replace a Krylov breakdown)."""
    P = v0.shape[0]
    dtype = v0.dtype
    basis = min(basis, P)
    keep = max(2, min(keep, basis - 2))
    which = jnp.asarray(WHICH[which] if isinstance(which, str) else which)
    rtol, atol = jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype)
    eps = jnp.finfo(dtype).eps
    rows = jnp.arange(basis)
    tol = lambda sc: jnp.maximum(rtol * sc, atol)

    def orthogonalize(V, w, mask):
        """w minus its projection on the rows of V where mask (classical Gram–Schmidt, twice: twice is enough)."""
        h = mask * (V @ w)
        w = w - h @ V
        h2 = mask * (V @ w)
        return w - h2 @ V, h + h2

    def step(carry):
        """One Lanczos step from row j of V: column j of the projected matrix, row j + 1 of V (after the last row,
        the residual direction r instead), and the end pairs' residual estimates on the rows so far."""
        j, V, Hc, _, beta, sc, _, cycles = carry
        w = matvec(V[j])
        mask = (rows <= j).astype(dtype)
        w, h = orthogonalize(V, w, mask)
        beta = jnp.linalg.norm(w)

        def fresh(_):
            # an invariant subspace (β at round-off level): continue from a generic direction ⊥ the basis, coupling
            # 0. The direction is the Gaussian start vector rotated by an offset that differs at every breakdown (a
            # PRNG in the loop doubled the compile time)
            z, _ = orthogonalize(V, jnp.roll(v0, 7919 * (cycles * basis + j + 1) % P), mask)
            return z / jnp.linalg.norm(z), jnp.zeros((), dtype)

        q, beta = jax.lax.cond(beta > eps * sc, lambda _: (w / beta, beta), fresh, None)
        Hc = Hc.at[:, j].set(h)
        # V has exactly `basis` rows (a (basis + 1)-row V sliced to V[:basis] for the restart cost XLA 40 more
        # P-vectors of temporaries, measured with memory_analysis); the last step leaves q in r only
        nxt = jnp.minimum(j + 1, basis - 1)
        V = V.at[nxt].set(jnp.where(j + 1 < basis, q, V[nxt]))
        theta, S = _ritz(Hc, j + 1)
        sc = jnp.maximum(sc, jnp.max(jnp.where(rows <= j, jnp.abs(theta), 0.0)))
        # the lowest and highest Ritz pairs on rows 0..j have residuals |β S[j, 0]| and |β S[j, j]|
        err = jnp.where(j + 1 >= keep, _wanted_error(jnp.abs(beta * S[j, 0]), jnp.abs(beta * S[j, j]), which),
                        jnp.inf)
        return j + 1, V, Hc, q, beta, sc, err, cycles

    def cycle(carry):
        """Lanczos steps from row `start` until the wanted end(s) converge or the basis is full, then Rayleigh–Ritz
        and the restart (after convergence the kept pairs are only what is returned)."""
        V, r, th, _, beta, sc, cycles, matvecs = carry
        start = jnp.where(cycles == 0, 0, keep)
        # the kept Ritz pairs are exact in the projected matrix: Θ on the diagonal, and their couplings to row
        # `keep` come out of the first step's Gram–Schmidt coefficients (YᵀA q = s)
        Hc = jnp.zeros((basis, basis), dtype).at[:keep, :keep].set(jnp.diag(th))
        m, V, Hc, r, beta, sc, _, _ = jax.lax.while_loop(
            lambda c: (c[0] < basis) & (c[6] > tol(c[5])), step,
            (start, V, Hc, r, beta, sc, jnp.asarray(jnp.inf, dtype), cycles))
        theta, S = _ritz(Hc, m)
        sel = _select(m, which, keep)
        Y = S[:, sel].T @ V                                  # (keep, P): the new Ritz vectors
        V = V.at[:keep].set(Y).at[keep].set(r)               # and the residual direction continues the basis
        # kept pair i: ‖A yᵢ − θᵢ yᵢ‖ = |β S[m − 1, i]| (exact up to round-off with full reorthogonalisation)
        return V, r, theta[sel], jnp.abs(beta * S[m - 1, sel]), beta, sc, cycles + 1, matvecs + m - start

    V = jnp.zeros((basis, P), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    carry = (V, jnp.zeros(P, dtype), jnp.zeros(keep, dtype), jnp.full(keep, jnp.inf, dtype), jnp.zeros((), dtype),
             jnp.asarray(scale, dtype), jnp.asarray(0), jnp.asarray(0))
    error = lambda est: _wanted_error(est[0], est[-1], which)
    V, _, th, est, _, sc, cycles, matvecs = jax.lax.while_loop(
        lambda c: (c[6] == 0) | ((c[6] < max_cycles) & (error(c[3]) > tol(c[5]))), cycle, carry)
    ends = jnp.array([0, keep - 1])
    return LanczosResult(th[ends], V[ends], est[ends], sc, matvecs, cycles, error(est) <= tol(sc))


# --- the operators of hessian.py, on the device -------------------------------------------------------------------

EIGENSOLVERS = ("auto", "arpack", "jax")
HESSIAN_DTYPES = ("float64", "float32")


#: parameter count from which ``auto`` takes the JAX-native solver on a CPU (on a GPU or TPU it always does: there
#: every ARPACK product would cross the bus). Measured by benchmarks/bench_eigs.py at the NC optimum (benchmarks/
#: results/eigs_cpu.md): a repeated call at one shape takes 0.16–0.30× ARPACK's time at every size from 2·10⁴ to 10⁶,
#: but the first call pays the solver's compilation: 1.3–1.7× ARPACK at 2·10⁴ parameters, 0.9–2.1× at 1.1·10⁵, 0.4–0.5×
#: at 10⁶ (two runs on the shared machine). The first call breaks even where 40 fewer products pay for ~2 s of
#: compilation, an HVP of ~50 ms: about 3·10⁵ parameters here.
JAX_MIN_PARAMS_CPU = 300_000


def choose_eigensolver(num_params: int, dtype: str = "float64", backend: str | None = None) -> str:
    """``auto``: "jax" on an accelerator, for float32 (ARPACK runs in float64) and on a CPU from JAX_MIN_PARAMS_CPU
    parameters; "arpack" below that."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or dtype != "float64" or num_params >= JAX_MIN_PARAMS_CPU:
        return "jax"
    return "arpack"


class EigensolverNoConvergence(ArithmeticError):
    """The JAX-native Lanczos ran MAX_CYCLES restarts without the wanted residual (as ARPACK raises its own)."""


@functools.partial(jax.jit, static_argnames=("shape", "free_shift", "basis", "keep", "max_cycles", "n_out"))
def _device_solve(x, reg, v0, U, weights, sigma, rtol, atol, scale, deflate, which, out_row, *, shape, free_shift: bool,
                  basis: int, keep: int, max_cycles: int, n_out: int):
    """One compiled program per shape and dtype serves ∇²f (deflate False) and the deflated operator, at any end:
    ``deflate`` and ``which`` are traced, and lax.cond runs one operator per product. Returns the LanczosResult and
    the measured residuals ‖Av − θv‖ of its two pairs from fresh products (NaN for a pair that is not wanted). With
    ``n_out`` = 1 the result holds one vector, pair ``out_row``'s (0: the low end, 1: the high end): 80 MB less at
    10⁷ parameters, at the peak."""
    from .hessian import deflated_hvp

    def op(v):
        # one product whichever operator `deflate` picks, outside any branch: XLA hoists its primal half out of the
        # Lanczos loop (hessian.deflated_hvp)
        return deflated_hvp(x, v, reg, shape, U, weights, free_shift, sigma, deflate)

    res = thick_restart_lanczos(op, v0, which=which, rtol=rtol, atol=atol, scale=scale, basis=basis, keep=keep,
                                max_cycles=max_cycles)
    # pairs lo..hi−1 are wanted: one loop, so that the operator is compiled once more, not once per pair
    lo = jnp.where(which == WHICH["max"], 1, 0)
    hi = jnp.where(which == WHICH["min"], 1, 2)

    def measure(i, out):
        v, theta = res.vectors[i], res.values[i]
        return out.at[i].set(jnp.linalg.norm(op(v) - theta * v))

    measured = jax.lax.fori_loop(lo, hi, measure, jnp.full(2, jnp.nan, v0.dtype))
    if n_out == 1:
        res = res._replace(vectors=res.vectors[out_row][None])
    return res, measured


class DeviceCurvature:
    """JAX-native extreme eigenpairs of ∇²f at one point (the counterpart of hessian.MatrixFree): the Lanczos runs in
    ``dtype`` on the default device. Every returned pair's residual ‖Av − θv‖ is measured from a fresh float64
    product (inside the same program in float64; by the host path's float64 operators after a float32 run), so what
    is reported rests neither on the solver's own estimate nor on float32 round-off."""

    def __init__(self, problem, x, dtype: str = "float64", *, tolerance: tuple[float, float] | None = None,
                 basis: int | None = None, keep: int = KEEP, max_cycles: int = MAX_CYCLES, seed: int = 0):
        from .hessian import reg_of

        self.problem = problem
        self.shape = problem.shape
        self.dtype = dtype
        # (rtol, atol): residual ≤ max(rtol·‖A‖, atol); by default 1% of the default float64 zero tolerance's
        # relative part, or the dtype's floor
        self.rtol, self.atol = tolerance or residual_tolerance(1e-8, 0.0, dtype)
        self.x64 = x                                      # kept as given: the float32 path's residuals use it
        self.x = jnp.asarray(x, dtype)                    # no copy when x is already a device array of this dtype
        self.reg = reg_of(problem, dtype)
        self.P = int(self.x.size)
        self.basis = basis_size(self.P) if basis is None else basis
        self.keep, self.max_cycles = keep, max_cycles
        self.rng = np.random.default_rng(seed)
        self.matvecs = 0

    def _run(self, which: str, *, tangent=None, sigma=0.0, scale=0.0, vectors=(0,)):
        # free_shift is the problem's, not the tangent's (the same by construction), so that the plain and the
        # deflated run share one compiled program (at depth ≥ 2 the tangent basis's shape differs between the two,
        # so they compile separately)
        from .hessian import Eig, MatrixFree, NonFiniteCurvature
        from .symmetry import has_free_shift, no_tangent

        wanted = {"min": (0,), "max": (1,), "both": (0, 1)}[which]
        # float32 brings every wanted vector home (its residuals are measured there, in float64); float64 only the
        # one vector the caller asked for (one compiled program either way)
        if self.dtype == "float64" and len(vectors) > 1:
            raise ValueError("float64 returns one eigenvector a run: ask for vectors=(0,) or (1,)")
        own = vectors[0] if vectors else wanted[0]
        n_out = 1 if self.dtype == "float64" else 2
        v0 = jnp.asarray(self.rng.standard_normal(self.P), self.dtype)
        if tangent is None:
            U, w = (jnp.asarray(a, self.dtype) for a in no_tangent(self.shape, self.P))
        else:
            U, w = jnp.asarray(tangent.U, self.dtype), jnp.asarray(tangent.weights, self.dtype)
        # "highest": on a GPU, float32 products would otherwise run as TF32 (a 10-bit mantissa), far below the
        # 1e-5 relative residual float32 is asked for; on a CPU it changes nothing
        with jax.default_matmul_precision("highest"):
            res, measured = _device_solve(self.x, self.reg, v0, U, w, jnp.asarray(sigma, self.dtype),
                                          jnp.asarray(self.rtol, self.dtype), jnp.asarray(self.atol, self.dtype),
                                          jnp.asarray(scale, self.dtype),
                                          jnp.asarray(tangent is not None), jnp.asarray(WHICH[which]),
                                          jnp.asarray(own), shape=self.shape,
                                          free_shift=has_free_shift(self.problem), basis=self.basis,
                                          keep=self.keep, max_cycles=self.max_cycles, n_out=n_out)
        del v0
        n = int(res.matvecs)
        self.matvecs += n + len(wanted)
        values = np.asarray(res.values, np.float64)
        rows = {own: 0} if n_out == 1 else {0: 0, 1: 1}
        need = (set(wanted) if self.dtype != "float64" else set()) | set(vectors)
        vecs = {i: np.asarray(res.vectors[rows[i]], np.float64) for i in need}
        if not (np.all(np.isfinite(values[list(wanted)])) and all(np.all(np.isfinite(v)) for v in vecs.values())):
            raise NonFiniteCurvature("Hessian-vector product (JAX-native Lanczos)")
        if not bool(res.converged):
            raise EigensolverNoConvergence(
                f"{which} end: residual estimate {float(np.max(np.asarray(res.estimates))):.2e} > max({self.rtol:g}·‖A‖, "
                f"{self.atol:.2e}) (‖A‖ ≈ {float(res.scale):.2e}) after {n} products")
        del res
        if self.dtype == "float64":
            residuals = np.asarray(measured, np.float64)
        else:
            exact = MatrixFree(self.problem, np.asarray(self.x64, np.float64))
            op = None if tangent is None else exact.H_deflated(tangent, sigma)
            residuals = [exact.residual(values[i], vecs[i], op) if i in wanted else np.nan for i in (0, 1)]
        return [Eig(float(values[i]), vecs[i] if i in vectors else None, float(residuals[i]), n) for i in (0, 1)]

    def extremes(self, vectors=(0,)):
        """(λ_min pair, λ_max pair) of ∇²f from one run that converges both ends; ``vectors``: which of the two
        eigenvectors to return (0: λ_min's, 1: λ_max's; the other is None; float64 returns at most one)."""
        low, high = self._run("both", vectors=vectors)
        return low, high

    def smallest_deflated(self, tangent, sigma: float, scale: float, vector: bool = True):
        """λ_min⊥: the smallest eigenpair of (I − P)∇²f(I − P) + σP (P: the orbit tangent projector); its vector is
        None unless ``vector``."""
        return self._run("min", tangent=tangent, sigma=sigma, scale=scale, vectors=(0,) if vector else ())[0]
