"""The optimisation methods for objective (7), each a frozen, hashable object holding its hyperparameters and
running as one jit-compiled ``lax.while_loop`` over the flat parameter vector: L-BFGS and first-order methods
(optax), Newton-CG and Levenberg–Marquardt on Hessian-vector products, and chains of them. Inside jit nothing
raises: every run ends with a :class:`Status`. ``solvers.solve`` is the host-side entry point.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import UFMInputError
from .model import flat_objective

class Status(enum.IntEnum):
    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2
    STALLED = 3


_RUNNING = -1

MESSAGES = {
    Status.CONVERGED: "converged: ‖∇f‖ ≤ gtol",
    Status.MAX_STEPS: "stopped at max steps before ‖∇f‖ ≤ gtol; raise --max-steps or use a faster --solver",
    Status.NONFINITE: "objective or gradient became NaN/inf; lower the step size (--lr) or --init-scale, or check a user loss",
    Status.STALLED: "stalled: ‖∇f‖ stopped decreasing before gtol (likely the floating-point floor; use float64 or a looser --gtol)",
}


class RunResult(NamedTuple):
    x: jax.Array
    f: jax.Array
    grad_norm: jax.Array
    steps: jax.Array
    status: jax.Array
    f_trace: jax.Array
    g_trace: jax.Array
    snapshots: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# The one loop every solver shares: evaluate, record, test the stopping rules, update.


def _loop(init, value_grad, update, x0, gtol, max_steps, patience: int, trace: tuple):
    """Iterate ``update`` from x0 until ‖∇f‖ ≤ gtol, a non-finite value, ``max_steps`` updates (traced, ≤
    ``trace[0]``), or no new best gradient norm (by 0.1%) in ``patience`` consecutive steps. Records f and ‖∇f‖
    at every evaluated iterate in buffers of static length ``trace[0] + 1``, and, when ``trace[1] > 0``, the
    iterate itself every ``trace[1]`` steps (for NC dynamics)."""
    trace_len, every = trace
    dtype = x0.dtype
    nan = jnp.full((trace_len + 1,), jnp.nan, dtype)
    snaps0 = jnp.full((trace_len // every + 1 if every else 0, x0.size), jnp.nan, dtype)

    def cond(c):
        return c["status"] == _RUNNING

    def body(c):
        x, state, k = c["x"], c["state"], c["k"]
        f, g = value_grad(x, state)
        gnorm = jnp.linalg.norm(g)
        improved = gnorm < c["best"] * (1.0 - 1e-3)
        since = jnp.where(improved, 0, c["since"] + 1)
        status = jnp.select(
            [~(jnp.isfinite(f) & jnp.isfinite(gnorm)), gnorm <= gtol, k >= max_steps, since >= patience],
            [Status.NONFINITE, Status.CONVERGED, Status.MAX_STEPS, Status.STALLED],
            _RUNNING,
        ).astype(jnp.int32)
        x_new, state_new = update(x, state, f, g)
        keep = status != _RUNNING
        x_next = jnp.where(keep, x, x_new)
        state_next = jax.tree.map(lambda a, b: jnp.where(keep, a, b), state, state_new)
        return dict(
            x=x_next, state=state_next, k=jnp.where(keep, k, k + 1), status=status, f=f, gnorm=gnorm,
            best=jnp.minimum(c["best"], gnorm), since=since,
            f_trace=c["f_trace"].at[k].set(f), g_trace=c["g_trace"].at[k].set(gnorm),
            snaps=c["snaps"] if not every else c["snaps"].at[k // every].set(
                jnp.where(k % every == 0, x, c["snaps"][k // every])),
        )

    c0 = dict(
        x=x0, state=init(x0), k=jnp.asarray(0, jnp.int32), status=jnp.asarray(_RUNNING, jnp.int32),
        f=jnp.asarray(jnp.nan, dtype), gnorm=jnp.asarray(jnp.nan, dtype), best=jnp.asarray(jnp.inf, dtype),
        since=jnp.asarray(0, jnp.int32), f_trace=nan, g_trace=nan, snaps=snaps0,
    )
    c = jax.lax.while_loop(cond, body, c0)
    return RunResult(c["x"], c["f"], c["gnorm"], c["k"], c["status"], c["f_trace"], c["g_trace"], c["snaps"])


# ----------------------------------------------------------------------------------------------------------------
# Solvers


def _derivatives(reg, shape):
    """f, (f, ∇f) and x ↦ (v ↦ ∇²f(x)v) (forward-over-reverse) for objective (7) at fixed λ's and shape."""
    f = functools.partial(flat_objective, reg=reg, shape=shape)
    grad = jax.grad(f)
    hvp_at = lambda x: (lambda v: jax.jvp(grad, (x,), (v,))[1])
    return f, jax.value_and_grad(f), hvp_at


@dataclasses.dataclass(frozen=True)
class LBFGS:
    """optax L-BFGS with a zoom line search (strong Wolfe, approximate-decrease safeguard)."""

    memory: int = 10
    patience: int = 200
    name = "lbfgs"

    def run(self, x0, reg, shape, gtol, max_steps, trace):
        f, _, _ = _derivatives(reg, shape)
        opt = optax.lbfgs(memory_size=self.memory,
                          linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
        vg = optax.value_and_grad_from_state(f)

        def update(x, state, v, g):
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
            return x + u, state

        return _loop(opt.init, lambda x, s: vg(x, state=s), update, x0, gtol, max_steps, self.patience, trace)


@dataclasses.dataclass(frozen=True)
class FirstOrder:
    """Fixed-step first-order methods from optax: ``gd``, ``momentum`` (Nesterov, 0.9) or ``adam``."""

    method: str = "gd"
    lr: float = 0.5
    patience: int = 10**9  # first-order methods make slow monotone progress; only max_steps stops them
    name = "first-order"

    def run(self, x0, reg, shape, gtol, max_steps, trace):
        f, vg, _ = _derivatives(reg, shape)
        opt = {
            "gd": lambda: optax.sgd(self.lr),
            "momentum": lambda: optax.sgd(self.lr, momentum=0.9, nesterov=True),
            "adam": lambda: optax.adam(self.lr),
        }[self.method]()

        def update(x, state, v, g):
            u, state = opt.update(g, state, x)
            return x + u, state

        return _loop(opt.init, lambda x, s: vg(x), update, x0, gtol, max_steps, self.patience, trace)


@dataclasses.dataclass(frozen=True)
class NewtonCG:
    """Truncated Newton: CG on Hessian-vector products (forward-over-reverse) with negative-curvature exit,
    then a backtracking line search that accepts a step decreasing f (Armijo) or, once f is at round-off,
    decreasing ‖∇f‖. Converges quadratically near a nondegenerate-up-to-symmetry minimum."""

    cg_max: int = 250
    patience: int = 25
    name = "newton-cg"

    def run(self, x0, reg, shape, gtol, max_steps, trace):
        f, vg, hvp_at = _derivatives(reg, shape)
        cg_max = self.cg_max

        def direction(x, g):
            hvp = hvp_at(x)
            gnorm = jnp.linalg.norm(g)
            tol = jnp.minimum(0.5, jnp.sqrt(gnorm)) * gnorm

            def cond(c):
                return (c["i"] < cg_max) & ~c["done"]

            def body(c):
                p, r, d = c["p"], c["r"], c["d"]
                Hd = hvp(d)
                curv = d @ Hd
                negative = curv <= 1e-14 * (d @ d)
                alpha = (r @ r) / jnp.where(negative, 1.0, curv)
                p_new = p + alpha * d
                r_new = r + alpha * Hd
                beta = (r_new @ r_new) / (r @ r)
                done_now = negative | (jnp.linalg.norm(r_new) <= tol)
                # On negative curvature keep the last p (or −g if none yet): a descent direction either way.
                p_out = jnp.where(negative, jnp.where(c["i"] == 0, -g, p), p_new)
                return dict(p=p_out, r=jnp.where(negative, r, r_new), d=-r_new + beta * d,
                            i=c["i"] + 1, done=done_now)

            c = jax.lax.while_loop(cond, body, dict(p=jnp.zeros_like(g), r=g, d=-g, i=0, done=gnorm == 0))
            return c["p"]

        def update(x, state, v, g):
            p = direction(x, g)
            slope = g @ p
            gnorm = jnp.linalg.norm(g)

            def ls_cond(c):
                return (c["j"] < 40) & ~c["ok"]

            def ls_body(c):
                t = c["t"] * jnp.where(c["j"] == 0, 1.0, 0.5)
                v_new, g_new = vg(x + t * p)
                ok = (v_new <= v + 1e-4 * t * slope) | (
                    (v_new <= v + 1e-12 * jnp.abs(v)) & (jnp.linalg.norm(g_new) < gnorm))
                return dict(t=t, j=c["j"] + 1, ok=ok & jnp.isfinite(v_new))

            c = jax.lax.while_loop(ls_cond, ls_body, dict(t=jnp.asarray(1.0, x.dtype), j=0, ok=False))
            return jnp.where(c["ok"], x + c["t"] * p, x), state

        return _loop(lambda x: (), lambda x, s: vg(x), update, x0, gtol, max_steps, self.patience, trace)


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
    """Levenberg–Marquardt on the system ∇f = 0, whose Jacobian is the symmetric Hessian: each step solves
    (H² + μI) p = −H∇f by CG on Hessian-vector products, μ = c‖∇f‖, and is taken when it lowers ‖∇f‖ (c shrinks
    on success, grows on failure). Near any critical point, of any index, μ → 0 and the step becomes the
    minimum-norm Newton step: quadratic convergence to saddles as well as minima. The symmetry null space makes H
    singular; μ > 0 handles it. Used by the census; ``--solver lm`` to find the critical point nearest a start."""

    cg_max: int = 200
    patience: int = 60
    name = "lm"

    def run(self, x0, reg, shape, gtol, max_steps, trace):
        f, vg, hvp_at = _derivatives(reg, shape)

        def update(x, c, v, g):
            hvp = hvp_at(x)
            gnorm = jnp.linalg.norm(g)
            mu = c * gnorm
            rhs = -hvp(g)
            p, _ = jax.scipy.sparse.linalg.cg(lambda u: hvp(hvp(u)) + mu * u, rhs, tol=1e-3 * jnp.minimum(1.0, gnorm),
                                              maxiter=self.cg_max)
            ok = jnp.linalg.norm(vg(x + p)[1]) < gnorm
            return jnp.where(ok, x + p, x), jnp.where(ok, jnp.maximum(c / 4.0, 1e-12), jnp.minimum(c * 4.0, 1e12))

        return _loop(lambda x: jnp.asarray(1.0, x.dtype), lambda x, s: vg(x), update, x0, gtol, max_steps,
                     self.patience, trace)


@dataclasses.dataclass(frozen=True)
class Chain:
    """Run stages in turn, each from where the last stopped, until one reaches gtol. ``stage_gtol[i]`` is a
    looser target for stage i (None: the final gtol). The default tries Newton-CG first (measured 2–7× faster than
    L-BFGS at (10, 64, 100) on every built-in loss, benchmarks/bench_solvers.py); if it stalls or runs out of
    steps, L-BFGS takes over to 1e-6 and Newton-CG finishes (the quadratic endgame L-BFGS lacks)."""

    stages: tuple = (NewtonCG(), LBFGS(), NewtonCG())
    stage_gtol: tuple = (None, 1e-6, None)
    name = "auto"


SOLVER_NAMES = ("auto", "lbfgs", "newton", "lm", "gd", "momentum", "adam")


def as_solver(solver="auto", *, lr: Optional[float] = None):
    """Normalise a solver spec: a solver object or one of ``auto lbfgs newton lm gd momentum adam``."""
    if hasattr(solver, "run") or isinstance(solver, Chain):
        return solver
    if not isinstance(solver, str) or solver not in SOLVER_NAMES:
        raise UFMInputError("--solver", solver, f"use one of {', '.join(SOLVER_NAMES)}")
    if lr is not None:
        if solver not in ("gd", "momentum", "adam"):
            raise UFMInputError("--lr", lr, "only the first-order solvers gd, momentum, adam take a step size")
        if not (np.isfinite(lr) and lr > 0):
            raise UFMInputError("--lr", lr, "must be a finite number > 0")
    if solver == "auto":
        return Chain()
    if solver == "lbfgs":
        return LBFGS()
    if solver == "newton":
        return NewtonCG()
    if solver == "lm":
        return LevenbergMarquardt()
    default_lr = {"gd": 0.5, "momentum": 0.1, "adam": 1e-3}[solver]
    return FirstOrder(solver, default_lr if lr is None else float(lr))


@functools.partial(jax.jit, static_argnames=("solver", "shape", "trace"))
def _run_jit(solver, x0, reg, shape, gtol, max_steps, trace):
    # The step budget is traced and only the trace length is static, so every stage of every solve with the same
    # --max-steps reuses one compilation.
    return solver.run(x0, reg, shape, gtol, max_steps, trace)
