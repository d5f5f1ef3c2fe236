"""Curvature of (7) and of the deep UFM (whose shape carries its own flat objective, deep.py): Hessian-vector
products, the dense Hessian, and matrix-free extreme eigenpairs.

- HVPs are forward-over-reverse (``jvp`` of ``grad``): one HVP costs a few gradients, at any size.
- The dense path forms ∇²f with ``jax.hessian`` and takes every eigenvalue with ``numpy.linalg.eigh``
  (docs/theory.md §9: fine up to ~8k parameters).
- The matrix-free path is scipy's ARPACK (implicitly restarted Lanczos) on a *shifted* operator: smallest
  algebraic eigenvalues of H are the largest of σI − H. Plain smallest-algebraic ``eigsh`` fails to converge on the
  hundreds of exact zeros at an NC minimum (docs/theory.md §9); the shift fixes it. Every eigenpair comes with its residual
  ‖Hv − θv‖ from a fresh HVP. Lanczos can miss copies of a repeated eigenvalue, so multiplicities are never counted
  from it: the symmetry zero modes are handled by deflation instead (symmetry.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import aot
from .model import flat_objective
from .problem import Problem, Reg, Shape
from .symmetry import OrbitTangent, project

#: parameter count up to which ``auto`` takes the dense path (a 4k×4k eigh takes a few seconds here)
DENSE_MAX_PARAMS = 4000


def objective_of(shape):
    """The flat objective of ``shape``: a deep shape (deep.py) carries its own, eq. (7)'s otherwise (as in
    methods._derivatives), so every curvature routine below serves both."""
    return getattr(shape, "flat_objective", flat_objective)


def reg_of(problem, dtype=jnp.float64):
    """``problem.reg`` (Reg, or the deep DeepReg) with every λ as a ``dtype`` array: traced, not compiled in (numpy
    scalars: jnp.asarray would compile a small conversion program in every fresh process)."""
    reg = problem.reg
    return type(reg)(*(np.asarray(v, dtype) for v in reg))


@aot.jit(static_argnames=("shape",))
def hvp(x, v, reg: Reg, shape: Shape):
    """∇²f(x) v, forward-over-reverse."""
    grad = jax.grad(objective_of(shape))
    return jax.jvp(lambda y: grad(y, reg, shape), (x,), (v,))[1]


@aot.jit(static_argnames=("shape",))
def value_and_grad(x, reg: Reg, shape: Shape):
    return jax.value_and_grad(objective_of(shape))(x, reg, shape)


@aot.jit(static_argnames=("shape",))
def dense_hessian(x, reg: Reg, shape: Shape):
    """∇²f(x) as a P×P matrix, symmetrised (autodiff round-off is not exactly symmetric)."""
    Hm = jax.hessian(objective_of(shape))(x, reg, shape)
    return 0.5 * (Hm + Hm.T)


def deflated_hvp(x, v, reg: Reg, shape: Shape, U, weights, free_shift: bool, sigma, deflate=True):
    """(I − P) H (I − P) v + σ P v: H on the complement of the orbit tangent, the tangent lifted to σ (traceable;
    the host path jits it below, the device path inside its Lanczos loop, eigensolvers.py).

    ``deflate`` False (may be traced): H v itself (P v = 0 exactly). Only the projections sit in a ``lax.cond``, so
    one product serves both operators, outside any branch, where XLA's loop-invariant code motion takes its primal
    half (W H, the softmax, G) out of a Lanczos loop: counted in the compiled program at 10⁷ parameters, a product
    inside a branch recomputed it at every step (7 GEMMs and the exponentials; now 6 and none: tests/test_hvp.py), and
    the program's temporaries fell from 1762 to 1695 MiB (benchmarks/bench_scale.py --counts-only)."""
    tangent = OrbitTangent(U, weights, free_shift, 0, 0)
    proj = lambda u: jax.lax.cond(deflate, lambda a: project(tangent, x, a, shape), jnp.zeros_like, u)
    pv = proj(v)
    Hw = hvp(x, v - pv, reg, shape)
    return Hw - proj(Hw) + sigma * pv


_deflated_hvp = aot.jit(deflated_hvp, static_argnames=("shape", "free_shift"))


class Eig(NamedTuple):
    """An eigenpair with its residual ‖Hv − θv‖ (v unit) and the number of operator products it cost."""

    value: float
    vector: np.ndarray
    residual: float
    matvecs: int


class NonFiniteCurvature(ArithmeticError):
    """An HVP or Hessian came out NaN/inf: the curvature at this point cannot be measured."""


def _arpack_largest(matvec, P, tol, maxiter, v0):
    count = [0]

    def mv(v):
        count[0] += 1
        out = matvec(v)
        # ARPACK neither detects NaN nor stops on it: it would iterate to maxiter (or raise its own error) on garbage
        if not np.all(np.isfinite(out)):
            raise NonFiniteCurvature("Hessian-vector product")
        return out

    from scipy.sparse.linalg import LinearOperator, eigsh   # here, not at import: a plain solve never needs ARPACK

    op = LinearOperator((P, P), matvec=mv, dtype=np.float64)
    vals, vecs = eigsh(op, k=1, which="LA", tol=tol, maxiter=maxiter, v0=v0)
    return float(vals[0]), vecs[:, 0], count[0]


class MatrixFree:
    """HVP-based operators at one point x of one problem, as numpy-in/numpy-out callables for scipy."""

    def __init__(self, problem: Problem, x):
        self.problem = problem
        self.shape = problem.shape
        self.reg = reg_of(problem)
        self.x = jnp.asarray(x, jnp.float64)
        self.P = int(self.x.size)
        self.rng = np.random.default_rng(0)

    def H(self, v):
        return np.asarray(hvp(self.x, jnp.asarray(v), self.reg, self.shape))

    def H_deflated(self, tangent: OrbitTangent, sigma: float):
        U, w = jnp.asarray(tangent.U), jnp.asarray(tangent.weights)
        return lambda v: np.asarray(_deflated_hvp(self.x, jnp.asarray(v), self.reg, self.shape, U, w,
                                                  bool(tangent.free_shift), sigma))

    def residual(self, theta, v, op=None):
        op = op or self.H
        v = v / np.linalg.norm(v)
        return float(np.linalg.norm(op(v) - theta * v))

    def largest(self, op=None, tol=1e-10, maxiter=5000) -> Eig:
        op = op or self.H
        theta, v, n = _arpack_largest(op, self.P, tol, maxiter, self.rng.standard_normal(self.P))
        return Eig(theta, v, self.residual(theta, v, op), n + 1)

    def smallest(self, sigma: float, op=None, tol=1e-10, maxiter=5000) -> Eig:
        """Smallest algebraic eigenpair of ``op`` through the largest of σI − op (σ ≥ λ_max(op))."""
        op = op or self.H
        mu, v, n = _arpack_largest(lambda u: sigma * u - op(u), self.P, tol, maxiter, self.rng.standard_normal(self.P))
        theta = sigma - mu
        return Eig(theta, v, self.residual(theta, v, op), n + 1)

    def smallest_unshifted(self, tol=1e-10, maxiter=None) -> Optional[Eig]:
        """Plain ``eigsh(which='SA')``: the baseline the shift replaces. None when ARPACK does not converge."""
        count = [0]

        def mv(v):
            count[0] += 1
            return self.H(v)

        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        op = LinearOperator((self.P, self.P), matvec=mv, dtype=np.float64)
        try:
            vals, vecs = eigsh(op, k=1, which="SA", tol=tol, maxiter=maxiter, v0=self.rng.standard_normal(self.P))
        except ArpackNoConvergence:
            return None
        return Eig(float(vals[0]), vecs[:, 0], self.residual(float(vals[0]), vecs[:, 0]), count[0])
