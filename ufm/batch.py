"""Many solves of one shape at once: the solver loop of :mod:`ufm.methods` under ``jax.vmap``.

Points of a sweep that share a :class:`~ufm.problem.Shape` (K, d, class sizes, bias, loss) differ only in their
traced λ's (``Reg``) and their seeds, so one compiled program can advance all of them together. On an accelerator
that turns B small solves, each too small to fill the device, into one program of B-fold width; on a CPU the loop
already keeps the cores busy, and ``benchmarks/bench_batch.py`` measures which is faster there (``sweep.BATCH_AUTO``
records the choice).

:func:`solve_batch` follows :func:`ufm.solvers.solve` exactly: the same stages (``auto`` is Newton-CG, then L-BFGS on
a stall, then Newton-CG), the same stopping rules per point (a point that has stopped is frozen by the loop's own
``status`` mask while the others go on), the same second-order test at the end. Only the order of floating-point
reductions may differ from a lone solve, so results agree to round-off, not bit for bit (tests/test_batch.py).
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import UFMInputError
from .methods import MESSAGES, Chain, Status, _advance, _start, as_solver
from .model import flatten, unflatten
from .problem import Reg

#: the most points one compiled call advances: beyond it a group is split (memory grows with B, speed does not)
MAX_BATCH = 256


@functools.partial(jax.jit, static_argnames=("solver", "shape"))
def _start_many(solver, x0, reg, shape):
    return jax.vmap(lambda x, r: _start(solver, x, r, shape))(x0, reg)


@functools.partial(jax.jit, static_argnames=("solver", "shape", "length"))
def _advance_many(solver, carry, reg, shape, gtol, rtol, max_steps, n_iter, offset, length: int):
    """``methods._advance`` for B points at once: each point's λ's, rtol, step budget and step offset are its own."""
    run = lambda c, r, rt, ms, off: _advance(solver, c, r, shape, gtol, rt, ms, n_iter, off, length, 0)
    return jax.vmap(run)(carry, reg, rtol, max_steps, offset)


def _check_same_shape(problems) -> None:
    if not problems:
        raise UFMInputError("problems", "[]", "give at least one problem")
    shape = problems[0].shape
    for p in problems[1:]:
        if p.shape != shape:
            raise UFMInputError("problems", f"K={p.K} d={p.d} n={p.n} loss={p.loss.describe()}",
                                f"a batch shares one shape (here K={shape.K} d={shape.d} n={shape.n}); only λ's and "
                                "seeds may differ")


def batch_size_that_fits(problem, solver="auto", dtype="float64", max_steps=10000, have=None) -> int:
    """How many solves of ``problem`` fit in memory side by side (at least 1, at most MAX_BATCH)."""
    from .resources import available_bytes, estimate

    have = available_bytes() if have is None else have
    one = estimate(problem, solver=solver, dtype=dtype, max_steps=max_steps).total
    return int(max(1, min(MAX_BATCH, have // max(one, 1))))


def solve_batch(problems: Sequence, seeds: Sequence[int], *, solver="auto", gtol=None, rtol=None,
                max_steps: int = 10000, init_scale: float = 0.1, dtype: str = "float64"):
    """Solve every ``problems[i]`` from the seeded start ``seeds[i]``, all of one shape, in one vmapped program per
    stage; returns the list of :class:`~ufm.solvers.Solution`, in order. Each Solution's ``wall_time`` is the batch's
    wall time divided by its size (the batch cannot be split by point)."""
    from .resources import check_fits
    from .secondorder import second_order_check
    from .solvers import (CHUNK_LENGTH, CHUNK_SECONDS, Solution, _validate_run_args, default_tolerances, init_params,
                          to_np_params)

    problems, seeds = list(problems), list(seeds)
    _check_same_shape(problems)
    if len(seeds) != len(problems):
        raise UFMInputError("seeds", f"{len(seeds)} seeds", f"give one seed per problem ({len(problems)})")
    for s in seeds:
        _validate_run_args(s, init_scale, gtol, max_steps, dtype, rtol)
    gtol, rtol, source = default_tolerances(dtype, gtol, rtol)
    solver_obj = as_solver(solver, lr=None)
    solver_name = solver if isinstance(solver, str) else solver_obj.name
    B = len(problems)
    shape = problems[0].shape
    if batch_size_that_fits(problems[0], solver_obj, dtype, max_steps) < B:
        check_fits(problems[0], solver=solver_obj, dtype=dtype, max_steps=max_steps)   # one alone may not fit either
        raise UFMInputError("problems", f"{B} points", "do not fit in memory side by side; split the batch "
                            "(batch_size_that_fits)")
    stages = solver_obj.stages if isinstance(solver_obj, Chain) else (solver_obj,)
    stage_gtol = solver_obj.stage_gtol if isinstance(solver_obj, Chain) else (None,)
    scale_free = np.array([p.lam_W > 0 and p.lam_H > 0 for p in problems])

    t0 = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        X = np.stack([flatten(to_np_params(init_params(p, s, init_scale, dtype), p, dtype), xp=np)
                      for p, s in zip(problems, seeds)]).astype(dtype)
        regs = np.array([tuple(p.reg) for p in problems], dtype=dtype)
        f_tr = [[] for _ in range(B)]
        g_tr = [[] for _ in range(B)]
        stage_steps = [[] for _ in range(B)]
        steps_left = np.full(B, max_steps, dtype=np.int64)
        status = np.full(B, -1, dtype=np.int64)
        f_end, g_end, rel_end = np.full(B, np.nan), np.full(B, np.nan), np.full(B, np.nan)
        active = np.arange(B)
        for i, stage in enumerate(stages):
            if active.size == 0:
                break
            final = stage_gtol[i] is None
            tol = gtol if final else max(gtol, stage_gtol[i])
            stage_rtol = np.where(scale_free[active] & final, rtol, np.inf).astype(dtype)
            reg = Reg(*(jnp.asarray(regs[active, j]) for j in range(3)))
            carry = _start_many(stage, jnp.asarray(X[active]), reg, shape)
            n_iter, first_chunk = 1, True
            while True:
                tc = time.perf_counter()
                carry, tr = _advance_many(stage, carry, reg, shape, jnp.asarray(tol, dtype), jnp.asarray(stage_rtol),
                                          jnp.asarray(steps_left[active], jnp.int32), jnp.asarray(n_iter, jnp.int32),
                                          jnp.asarray(max_steps - steps_left[active], jnp.int32), CHUNK_LENGTH)
                counts = np.asarray(tr.count)
                dt = time.perf_counter() - tc
                trf, trg = np.asarray(tr.f), np.asarray(tr.g)
                skip = 1 if (i > 0 and first_chunk) else 0      # a stage starts where the last ended: record it once
                for j, b in enumerate(active):
                    f_tr[b].append(trf[j, skip:counts[j]])
                    g_tr[b].append(trg[j, skip:counts[j]])
                first_chunk = False
                codes = np.asarray(carry.status)
                if np.all(codes != -1):
                    break
                n_iter = int(np.clip(CHUNK_SECONDS * counts.max() / max(dt, 1e-6), 1, CHUNK_LENGTH))
            k = np.asarray(carry.k)
            xs = np.asarray(carry.x)
            fs, gs, rels = np.asarray(carry.f), np.asarray(carry.gnorm), np.asarray(carry.rel)
            still = []
            for j, b in enumerate(active):
                stage_steps[b].append(int(k[j]))
                steps_left[b] -= int(k[j])
                X[b] = xs[j]
                f_end[b], g_end[b], rel_end[b] = fs[j], gs[j], rels[j]
                code = int(codes[j])
                if code == Status.NONFINITE or (gs[j] <= gtol and (rels[j] <= rtol or not scale_free[b])):
                    status[b] = Status.NONFINITE if code == Status.NONFINITE else Status.CONVERGED
                elif steps_left[b] <= 0:
                    status[b] = Status.MAX_STEPS
                else:
                    status[b] = code
                    still.append(b)
            active = np.asarray(still, dtype=np.int64)
    wall = (time.perf_counter() - t0) / B

    out = []
    for b, p in enumerate(problems):
        params = unflatten(X[b].astype(np.float64), shape)
        st = Status(int(status[b]))
        second_order = None
        if st == Status.CONVERGED:
            second_order = second_order_check(p, params, float(rel_end[b]))
            if second_order["saddle"]:
                st = Status.SADDLE
        out.append(Solution(
            problem=p, params=params, objective=float(f_end[b]), grad_norm=float(g_end[b]),
            steps=sum(stage_steps[b]), status=st, message=MESSAGES[st], solver=solver_name, gtol=float(gtol),
            seed=int(seeds[b]), init_scale=float(init_scale), dtype=dtype, wall_time=wall,
            trace_objective=np.concatenate(f_tr[b]), trace_grad_norm=np.concatenate(g_tr[b]),
            stage_steps=tuple(stage_steps[b]), rel_grad_norm=float(rel_end[b]), rtol=float(rtol),
            second_order=second_order, tolerance_source=source))
    return out
