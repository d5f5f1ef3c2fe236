"""Solvers for objective (7): L-BFGS (optax), first-order methods (optax) and Newton-CG on Hessian-vector products.

Each solver is a frozen, hashable object holding its hyperparameters; ``solve`` runs one or more of them, each as
a single jit-compiled ``lax.while_loop`` over the flat parameter vector. Inside jit nothing raises: every run ends
with a :class:`Status` and a message, and the host-side wrapper raises only if asked (``throw=True``).
Stationarity means ‖∇f‖ ≤ gtol, reported with every result.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import NotConvergedError, UFMInputError
from .objective import Params, flat_objective, flatten, unflatten
from .problem import Problem, Reg, Shape


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


# ----------------------------------------------------------------------------------------------------------------
# Public entry point


@dataclasses.dataclass(frozen=True)
class Solution:
    """The end of a solve: parameters (numpy), f, ‖∇f‖, steps, status and message, plus the trace.

    ``trace_objective[k]`` and ``trace_grad_norm[k]`` are f and ‖∇f‖ at iterate k (stages concatenated).
    """

    problem: Problem
    params: Params
    objective: float
    grad_norm: float
    steps: int
    status: Status
    message: str
    solver: str
    gtol: float
    seed: int
    init_scale: float
    dtype: str
    wall_time: float
    trace_objective: np.ndarray
    trace_grad_norm: np.ndarray
    stage_steps: tuple = ()
    trace_steps: Optional[np.ndarray] = None       # iterate numbers of the snapshots in trace_params
    trace_params: Optional[np.ndarray] = None      # (snapshots, #params) flat iterates, with trace_every > 0

    @property
    def converged(self) -> bool:
        return self.status == Status.CONVERGED


def init_params(problem: Problem, seed: int = 0, scale: float = 0.1, dtype="float64") -> Params:
    """Seeded i.i.d. N(0, scale²) entries for W, H and b (numpy's PCG64: reproducible across JAX versions)."""
    rng = np.random.default_rng(seed)
    W = scale * rng.standard_normal((problem.K, problem.d))
    H = scale * rng.standard_normal((problem.d, problem.N))
    b = scale * rng.standard_normal(problem.K) if problem.bias else None
    cast = lambda a: None if a is None else a.astype(dtype)
    return Params(cast(W), cast(H), cast(b))


def _validate_run_args(seed, init_scale, gtol, max_steps, dtype):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UFMInputError("--seed", seed, "must be an integer ≥ 0")
    if not (isinstance(init_scale, (int, float)) and np.isfinite(init_scale) and init_scale >= 0):
        raise UFMInputError("--init-scale", init_scale, "must be a finite number ≥ 0")
    if not (isinstance(gtol, (int, float)) and np.isfinite(gtol) and gtol > 0):
        raise UFMInputError("--gtol", gtol, "must be a finite number > 0")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise UFMInputError("--max-steps", max_steps, "must be an integer ≥ 1")
    if dtype not in ("float64", "float32"):
        raise UFMInputError("--dtype", dtype, "use float64 (certification) or float32")


def solve(problem: Problem = None, *, solver="auto", gtol: float = 1e-9, max_steps: int = 10000, seed: int = 0,
          init_scale: float = 0.1, init: Optional[Params] = None, dtype: str = "float64", lr=None,
          trace_every: int = 0, throw: bool = False, **problem_kwargs) -> Solution:
    """Minimise objective (7) for ``problem`` (or ``Problem.create(**problem_kwargs)``) until ‖∇f‖ ≤ gtol.

    ``solver``: ``auto`` (Newton-CG; on a stall L-BFGS then Newton-CG again), ``lbfgs``, ``newton``, ``gd``, ``momentum``, ``adam``
    or a solver object. ``max_steps`` bounds the total updates over all stages. Runs in float64 by default inside a
    scoped ``jax.enable_x64`` (the global JAX config is left alone). ``throw=True`` raises
    :class:`NotConvergedError` unless the status is CONVERGED. ``trace_every = k > 0`` also keeps every k-th iterate
    (``Solution.trace_params``, for NC dynamics; memory ~ max_steps/k × #params).

    >>> sol = solve(K=4, d=4, n=5, lam=5e-3)            # doctest: +SKIP
    >>> sol.status.name, sol.grad_norm < 1e-9           # doctest: +SKIP
    ('CONVERGED', True)
    """
    if problem is None:
        problem = Problem.create(**problem_kwargs)
    elif problem_kwargs:
        raise UFMInputError("problem", sorted(problem_kwargs), "pass either a Problem or its keyword arguments, not both")
    _validate_run_args(seed, init_scale, gtol, max_steps, dtype)
    if isinstance(trace_every, bool) or not isinstance(trace_every, (int, np.integer)) or trace_every < 0:
        raise UFMInputError("--trace-every", trace_every, "must be an integer ≥ 0 (0: no snapshots)")
    solver_obj = as_solver(solver, lr=lr)
    solver_name = solver if isinstance(solver, str) else solver_obj.name
    shape = problem.shape
    stages = solver_obj.stages if isinstance(solver_obj, Chain) else (solver_obj,)
    stage_gtol = solver_obj.stage_gtol if isinstance(solver_obj, Chain) else (None,)

    t0 = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        if init is None:
            init = init_params(problem, seed, init_scale, dtype)
        x = jnp.asarray(flatten(to_np_params(init, dtype), xp=np), dtype=dtype)
        reg = Reg(*(jnp.asarray(v, dtype) for v in problem.reg))
        f_tr, g_tr, stage_steps, snaps, snap_steps = [], [], [], [], []
        steps_left = max_steps
        for i, stage in enumerate(stages):
            tol = gtol if stage_gtol[i] is None else max(gtol, stage_gtol[i])
            r = _run_jit(stage, x, reg, shape, jnp.asarray(tol, dtype), jnp.asarray(steps_left, jnp.int32),
                         (max_steps, trace_every))
            steps = int(r.steps)
            status = Status(int(r.status))
            first = 0 if i == 0 else 1         # a stage starts where the last one ended: record that point once
            f_tr.append(np.asarray(r.f_trace[first: steps + 1]))
            g_tr.append(np.asarray(r.g_trace[first: steps + 1]))
            if trace_every:
                local = np.arange(first, steps + 1)
                local = local[local % trace_every == 0]
                snap_steps.append(local + (max_steps - steps_left))
                snaps.append(np.asarray(r.snapshots)[local // trace_every])
            stage_steps.append(steps)
            steps_left -= steps
            x = r.x
            if status == Status.NONFINITE or float(r.grad_norm) <= gtol:
                status = Status.NONFINITE if status == Status.NONFINITE else Status.CONVERGED
                break
            if steps_left <= 0:
                status = Status.MAX_STEPS
                break
        params = unflatten(np.asarray(x, dtype=np.float64), shape)
        objective, grad_norm = float(r.f), float(r.grad_norm)
    wall = time.perf_counter() - t0

    sol = Solution(
        problem=problem, params=params, objective=objective, grad_norm=grad_norm, steps=sum(stage_steps),
        status=status, message=MESSAGES[status], solver=solver_name, gtol=float(gtol), seed=int(seed),
        init_scale=float(init_scale), dtype=dtype, wall_time=wall,
        trace_objective=np.concatenate(f_tr), trace_grad_norm=np.concatenate(g_tr), stage_steps=tuple(stage_steps),
        trace_steps=np.concatenate(snap_steps) if trace_every else None,
        trace_params=np.concatenate(snaps).astype(np.float64) if trace_every else None,
    )
    if throw and not sol.converged:
        raise NotConvergedError(sol)
    return sol


def to_np_params(params: Params, dtype="float64") -> Params:
    """Validate user-given initial parameters and cast them to numpy."""
    W = np.asarray(params.W, dtype=dtype)
    H = np.asarray(params.H, dtype=dtype)
    b = None if params.b is None else np.asarray(params.b, dtype=dtype)
    return Params(W, H, b)
