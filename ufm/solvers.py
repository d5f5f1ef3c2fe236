"""``solve``: minimise objective (7) for a problem and return a :class:`Solution`.

The methods themselves live in :mod:`ufm.methods`; this module seeds the start, drives the chosen method (or chain
of methods) chunk by chunk in a scoped float64 context, and turns the device result into a host-side Solution with
its status, message and traces. Stationarity means ‖∇f‖ ≤ gtol *and* ‖∇f‖ ≤ rtol·(‖∇ data term‖ + ‖∇ penalty‖),
both reported with every result; a stationary point with a proven descent direction is a SADDLE, not CONVERGED. The
wrapper raises only if asked (``throw=True``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import signals
from .errors import NotConvergedError, UFMInputError
from .methods import (LBFGS, MESSAGES, SOLVER_NAMES, Chain, FirstOrder, LevenbergMarquardt, NewtonCG, NewtonStats,
                      Status, _advance, _start, as_solver)
from .model import Params, flatten, unflatten
from .problem import Problem, Reg

__all__ = ["LBFGS", "Chain", "FirstOrder", "LevenbergMarquardt", "MESSAGES", "NewtonCG", "SOLVER_NAMES", "Solution",
           "Status", "_advance", "as_solver", "DEFAULT_TOLERANCES", "default_tolerances", "init_params",
           "solve"]

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
    rel_grad_norm: float = float("nan")            # ‖∇f‖ / (‖∇ data term‖ + ‖∇ penalty‖), docs/theory.md §7.2
    rtol: float = 1e-6
    second_order: Optional[dict] = None            # secondorder.second_order_check at a stationary end point
    trace_stride: int = 0                          # steps between kept snapshots: trace_every, doubled when thinned
    tolerance_source: str = "given"                # whether gtol/rtol were given or are the dtype's defaults
    #: timing-free work counts: value-and-gradient evaluations (one per iterate, plus the line searches'), and for
    #: the Newton-CG stages the
    #: Hessian-vector products, Newton steps and the most CG iterations of one step
    work: Optional[dict] = None

    @property
    def converged(self) -> bool:
        return self.status == Status.CONVERGED


def init_params(problem: Problem, seed: int = 0, scale: float = 0.1, dtype="float64") -> Params:
    """Seeded i.i.d. N(0, scale²) entries for W, H and b (numpy's PCG64: reproducible across JAX versions)."""
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):          # a huge scale overflows to inf: the solve then reports NONFINITE
        W = scale * rng.standard_normal((problem.K, problem.d))
        H = scale * rng.standard_normal((problem.d, problem.N))
        b = scale * rng.standard_normal(problem.K) if problem.bias else None
    cast = lambda a: None if a is None else a.astype(dtype)
    return Params(cast(W), cast(H), cast(b))


#: the largest seed a store row can hold (SQLite INTEGER) and the largest step budget an int32 loop counter can count
MAX_SEED = 2**63 - 1
MAX_STEPS = 2**31 - 1


#: the stationarity tolerances (gtol, rtol) a solve uses when none are given, per dtype. float64 certifies. float32
#: cannot reach those: its floor, measured on 8 problems (K = 4…100, four losses, λ = 1e-5…1e-2, `python3
#: benchmarks/bench_float32.py`), was ‖∇f‖ ≤ 6.1e-6 and a scale-free ratio ≤ 8.4e-5, so its defaults sit ~10× above
#: the worst floor seen: stationary at float32's scale, said as such in every record
DEFAULT_TOLERANCES = {"float64": (1e-9, 1e-6), "float32": (1e-4, 1e-3)}


def default_tolerances(dtype: str, gtol=None, rtol=None) -> tuple[float, float, str]:
    """(gtol, rtol, source): the given values, the dtype's defaults (DEFAULT_TOLERANCES) where None; ``source`` says
    which ("given", "float32 defaults", "float64 defaults", or mixed)."""
    g0, r0 = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["float64"])
    if gtol is not None and rtol is not None:
        source = "given"
    elif gtol is None and rtol is None:
        source = f"{dtype} defaults"
    else:
        source = f"{'rtol' if gtol is not None else 'gtol'} {dtype} default"
    return (g0 if gtol is None else gtol), (r0 if rtol is None else rtol), source


def _validate_run_args(seed, init_scale, gtol, max_steps, dtype, rtol=None):
    """Check the run options (not the problem) before any work; each failure names its flag. A gtol or rtol of None
    means the dtype's default (DEFAULT_TOLERANCES)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise UFMInputError("--seed", seed, f"must be an integer in [0, {MAX_SEED}]")
    if isinstance(init_scale, bool) or not (isinstance(init_scale, (int, float, np.floating))
                                            and np.isfinite(init_scale) and init_scale >= 0):
        raise UFMInputError("--init-scale", init_scale, "must be a finite number ≥ 0")
    for flag, value in (("--gtol", gtol), ("--rtol", rtol)):
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating)) and np.isfinite(value)
                                           and value > 0):
            raise UFMInputError(flag, value, "must be a finite number > 0")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or not 1 <= max_steps <= MAX_STEPS:
        raise UFMInputError("--max-steps", max_steps, f"must be an integer in [1, {MAX_STEPS}]")
    if dtype not in ("float64", "float32"):
        raise UFMInputError("--dtype", dtype, "use float64 (certification) or float32")


#: static length of one chunk's trace buffers, and the wall time a chunk aims at (Ctrl-C and progress latency)
CHUNK_LENGTH = 256
CHUNK_SECONDS = 0.25


def solve(problem: Problem = None, *, solver="auto", gtol: Optional[float] = None, rtol: Optional[float] = None,
          max_steps: int = 10000,
          seed: int = 0, init_scale: float = 0.1, init: Optional[Params] = None, dtype: str = "float64", lr=None,
          trace_every: int = 0, throw: bool = False, progress: Optional[Callable] = None,
          **problem_kwargs) -> Solution:
    """Minimise objective (7) for ``problem`` (or ``Problem.create(**problem_kwargs)``) to a stationary point.

    Stationary means both ‖∇f‖ ≤ ``gtol`` and ‖∇f‖ ≤ ``rtol``·(‖∇ data term‖ + ‖∇ penalty‖) (docs/theory.md §7.2): the
    absolute test alone says little when the whole gradient is tiny (λ → 0). Left as None they are the dtype's
    defaults (DEFAULT_TOLERANCES: 1e-9 and 1e-6 in float64, 1e-4 and 1e-3 in float32, whose floor is far higher);
    ``Solution.tolerance_source`` says which. A stationary point is then tested for
    an explicit descent direction (:mod:`ufm.secondorder`): a proven saddle ends with status SADDLE, not CONVERGED.

    ``solver``: ``auto`` (Newton-CG; on a stall L-BFGS then Newton-CG again), ``lbfgs``, ``newton``, ``lm``, ``gd``,
    ``momentum``, ``adam`` or a solver object. ``max_steps`` bounds the total updates over all stages. Runs in
    float64 by default inside a scoped ``jax.enable_x64`` (the global JAX config is left alone). ``throw=True``
    raises :class:`NotConvergedError` unless the status is CONVERGED. ``trace_every = k > 0`` also keeps every k-th
    iterate (``Solution.trace_params``, for NC dynamics; thinned to every 2ʲ·k-th when they would pass a quarter of the
    memory available, ``Solution.trace_stride``). ``progress(event)`` is called after every chunk of steps
    (a fraction of a second) with a dict: stage, step, f, grad_norm, rel_grad_norm, elapsed, done. The loop runs in
    such chunks, so Ctrl-C (KeyboardInterrupt) stops a solve within about a chunk. Sizes that cannot fit in memory
    are refused before any work (:func:`ufm.resources.check_fits`).

    >>> sol = solve(K=4, d=4, n=5, lam=5e-3)            # doctest: +SKIP
    >>> sol.status.name, sol.grad_norm < 1e-9           # doctest: +SKIP
    ('CONVERGED', True)
    """
    from .resources import available_bytes, check_fits
    from .secondorder import second_order_check

    if problem is None:
        problem = Problem.create(**problem_kwargs)
    elif problem_kwargs:
        raise UFMInputError("problem", sorted(problem_kwargs), "pass either a Problem or its keyword arguments, not both")
    _validate_run_args(seed, init_scale, gtol, max_steps, dtype, rtol)
    gtol, rtol, tolerance_source = default_tolerances(dtype, gtol, rtol)
    if isinstance(trace_every, bool) or not isinstance(trace_every, (int, np.integer)) or trace_every < 0:
        raise UFMInputError("--trace-every", trace_every, "must be an integer ≥ 0 (0: no snapshots)")
    solver_obj = as_solver(solver, lr=lr)
    solver_name = solver if isinstance(solver, str) else solver_obj.name
    have = available_bytes()
    check_fits(problem, solver=solver_obj, dtype=dtype, max_steps=max_steps, trace_every=trace_every, have=have)
    shape = problem.shape
    deep = hasattr(problem, "depth")       # a DeepProblem (ufm/deep.py) brings its own points; eq. (7) otherwise
    stages = solver_obj.stages if isinstance(solver_obj, Chain) else (solver_obj,)
    stage_gtol = solver_obj.stage_gtol if isinstance(solver_obj, Chain) else (None,)
    every = int(trace_every)
    # NC snapshots live on the host and grow with the steps taken; past a quarter of the memory available they are
    # thinned (the stride doubles), so a long traced run never runs out of memory
    stride = every
    snapshot_budget = have // 4
    # without both penalties the data and total gradients coincide and the ratio is 1 everywhere: not a test
    scale_free = problem.all_penalised if deep else problem.lam_W > 0 and problem.lam_H > 0

    t0 = time.perf_counter()
    # "highest": float32 matmuls in full float32 (a GPU would otherwise use TF32, whose ~1e-3 relative error sits
    # above the float32 tolerances); no effect on float64
    with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
        if deep:
            init = problem.init_params(seed, init_scale, dtype) if init is None else init
            x = jnp.asarray(problem.flatten(problem.to_np_params(init, dtype), xp=np), dtype=dtype)
        else:
            if init is None:
                init = init_params(problem, seed, init_scale, dtype)
            x = jnp.asarray(flatten(to_np_params(init, problem, dtype), xp=np), dtype=dtype)
        # numpy scalars, not jnp: each jnp.asarray would compile a tiny conversion program in every fresh process
        reg = type(problem.reg)(*(np.asarray(v, dtype) for v in problem.reg))
        f_tr, g_tr, stage_steps, snaps, snap_steps = [], [], [], [], []
        work = {"value_grad": 0, "hvp": 0, "newton_steps": 0, "cg_max": 0}     # Solution.work
        steps_left = max_steps
        for i, stage in enumerate(stages):
            final = stage_gtol[i] is None
            # an intermediate stage is a warm start: its own looser gtol, no scale-free test
            tol = gtol if final else max(gtol, stage_gtol[i])
            stage_rtol = rtol if final and scale_free else np.inf
            carry = _start(stage, x, reg, shape)
            n_iter, first_chunk = 1, True
            while True:
                tc = time.perf_counter()
                carry, tr = _advance(stage, carry, reg, shape, np.asarray(tol, dtype),
                                     np.asarray(stage_rtol, dtype), np.asarray(steps_left, np.int32),
                                     np.asarray(n_iter, np.int32), np.asarray(max_steps - steps_left, np.int32),
                                     CHUNK_LENGTH, every)
                count = int(tr.count)                           # waits for the chunk: Ctrl-C lands here
                signals.check()                                 # or here, if its raise was swallowed
                dt = time.perf_counter() - tc
                skip = 1 if (i > 0 and first_chunk) else 0      # a stage starts where the last ended: record it once
                # sliced on the host: a device slice compiles a program per process
                f_tr.append(np.asarray(tr.f)[skip:count])
                g_tr.append(np.asarray(tr.g)[skip:count])
                if every:
                    ns = int(tr.n_snaps)
                    steps_np = np.asarray(tr.snap_steps)[:ns]
                    keep = steps_np % stride == 0
                    if skip:
                        keep &= steps_np != (max_steps - steps_left)
                    snap_steps.append(steps_np[keep])
                    snaps.append(np.asarray(tr.snaps)[:ns][keep])
                    kept = sum(a.shape[0] for a in snaps)
                    if kept * x.size * 8 > snapshot_budget:
                        # over budget: keep every other snapshot from now on (and of those kept), instead of
                        # running out of memory on a long traced run
                        stride *= 2
                        allsteps, allsnaps = np.concatenate(snap_steps), np.concatenate(snaps)
                        sel = allsteps % stride == 0
                        snap_steps, snaps = [allsteps[sel]], [allsnaps[sel]]
                first_chunk = False
                status_code = int(carry.status)
                if progress is not None:
                    progress({"stage": stage.name, "step": max_steps - steps_left + int(carry.k),
                              "f": float(carry.f), "grad_norm": float(carry.gnorm), "rel_grad_norm": float(carry.rel),
                              "elapsed": time.perf_counter() - t0, "done": False})
                if status_code != -1:
                    break
                # size the next chunk to about CHUNK_SECONDS of work (traced: no recompilation)
                n_iter = int(np.clip(CHUNK_SECONDS * count / max(dt, 1e-6), 1, CHUNK_LENGTH))
            steps = int(carry.k)
            status = Status(status_code)
            _count_work(work, stage, carry, steps)
            stage_steps.append(steps)
            steps_left -= steps
            x = carry.x
            gnorm_now, rel_now = float(carry.gnorm), float(carry.rel)
            if status == Status.NONFINITE or (gnorm_now <= gtol and (rel_now <= rtol or not scale_free)):
                status = Status.NONFINITE if status == Status.NONFINITE else Status.CONVERGED
                break
            if steps_left <= 0:
                status = Status.MAX_STEPS
                break
        params = (problem.unflatten if deep else lambda y: unflatten(y, shape))(np.asarray(x, dtype=np.float64))
        objective, grad_norm, rel_grad_norm = float(carry.f), gnorm_now, rel_now
    second_order = None
    if status == Status.CONVERGED:
        if deep:
            from .deep_landscape import deep_second_order_check as second_order_check
        second_order = second_order_check(problem, params, rel_grad_norm)
        if second_order["saddle"]:
            status = Status.SADDLE
    wall = time.perf_counter() - t0
    if progress is not None:
        progress({"stage": "done", "step": sum(stage_steps), "f": objective, "grad_norm": grad_norm,
                  "rel_grad_norm": rel_grad_norm, "elapsed": wall, "done": True, "status": status.name.lower()})

    sol = Solution(
        problem=problem, params=params, objective=objective, grad_norm=grad_norm, steps=sum(stage_steps),
        status=status, message=MESSAGES[status], solver=solver_name, gtol=float(gtol), seed=int(seed),
        init_scale=float(init_scale), dtype=dtype, wall_time=wall,
        trace_objective=np.concatenate(f_tr), trace_grad_norm=np.concatenate(g_tr), stage_steps=tuple(stage_steps),
        trace_steps=np.concatenate(snap_steps) if every else None,
        trace_params=np.concatenate(snaps).astype(np.float64) if every else None,
        rel_grad_norm=rel_grad_norm, rtol=float(rtol), second_order=second_order, trace_stride=stride,
        tolerance_source=tolerance_source, work=work,
    )
    if throw and not sol.converged:
        raise NotConvergedError(sol)
    return sol


def _count_work(work: dict, stage, carry, steps: int) -> None:
    """Add a finished stage's work to ``work`` (Solution.work)."""
    add = lambda key, value: work.__setitem__(key, work[key] + value)
    if isinstance(stage, LBFGS):
        # optax's L-BFGS reuses its line search's last value and gradient at the next iterate: one evaluation at
        # the start, then those of the line searches
        add("value_grad", 1 + int(carry.state[1]))
    else:
        add("value_grad", steps + 1)      # one per iterate of the loop (the last one too)
    if isinstance(carry.state, NewtonStats):
        add("value_grad", int(carry.state.evals))          # the line searches'
        add("hvp", int(carry.state.hvps))
        add("newton_steps", int(carry.state.steps))
        work["cg_max"] = max(work["cg_max"], int(carry.state.cg_max))


def to_np_params(params: Params, problem: Problem, dtype="float64") -> Params:
    """Validate user-given initial parameters against the problem's shapes and cast them to numpy."""
    want = {"W": (problem.K, problem.d), "H": (problem.d, problem.N), "b": (problem.K,) if problem.bias else None}
    out = {}
    for name, shape in want.items():
        value = getattr(params, name, None)
        if shape is None:
            if value is not None:
                raise UFMInputError("init", f"b of shape {np.shape(value)}", "this problem has no bias (b must be None)")
            out[name] = None
            continue
        if value is None or np.shape(value) != shape:
            raise UFMInputError("init", f"{name} of shape {None if value is None else np.shape(value)}",
                                f"{name} must have shape {shape} (K={problem.K}, d={problem.d}, N={problem.N})")
        out[name] = np.asarray(value, dtype=dtype)
    return Params(**out)
