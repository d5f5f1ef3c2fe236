"""Critical points beyond the minimum: a census from random starts, deduplicated up to symmetry, and escapes.

Minimisers are what every descent method finds; saddles need a method that converges to any critical point: the
census runs Levenberg–Marquardt on ∇f = 0 (``solvers.LevenbergMarquardt``) from seeded starts at several scales.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .critical import CriticalPoint, Tolerances, analyze_point, check_eigensolver, check_hessian
from .hessian import objective_of, reg_of
from .model import flatten, unflatten
from .problem import Problem
from .solvers import Status, solve


CENSUS_SCALES = (0.03, 0.1, 0.3, 1.0)
#: the descent solvers an escape tries in turn, each from where the last one stopped, and the step sizes (relative
#: to max(1, ‖x‖)) it restarts from the saddle with when all of them stop short of a critical point
ESCAPE_SOLVERS = ("auto", "lbfgs", "newton")
ESCAPE_STEPS = (1e-2, 1e-1)
#: the most census starts: each is a full solve (≥ 0.05 s even at toy sizes), so 10⁵ starts is already days of work;
#: a larger count is a typo, refused before any work rather than left running
MAX_STARTS = 100_000
#: census stages reported to ``progress``
STAGES = ("starts", "classifying", "escaping")


def find_critical_point(problem: Problem, seed: int, scale: float, gtol: float = 1e-10, max_steps: int = 500,
                        solver="lm", lr=None, dtype: str = "float64", rtol: float = 1e-6):
    """One run (LM by default) from a seeded N(0, scale²) start; returns the solve's Solution (status says if it
    converged)."""
    return solve(problem, solver=solver, gtol=gtol, rtol=rtol, max_steps=max_steps, seed=seed, init_scale=scale, lr=lr,
                 dtype=dtype)


def _deep(problem) -> bool:
    return hasattr(problem, "widths")


def params_of(problem, x):
    """The flat vector x as the problem's parameters (Params, or DeepParams at depth ≥ 2)."""
    return problem.unflatten(x) if _deep(problem) else unflatten(x, problem.shape)


def flat_of(problem, params) -> np.ndarray:
    return problem.flatten(params, xp=np) if _deep(problem) else flatten(params, xp=np)


def _invariants(problem, x) -> tuple:
    """(the orbit invariants compared as matrices, b): Z = WH for eq. (7); at depth ≥ 2 the logits and the Gram
    matrix h⁽ˡ⁾ᵀh⁽ˡ⁾ of every layer's features (each junction rotation acts on one h⁽ˡ⁾ from the left)."""
    p = params_of(problem, np.asarray(x))
    if not _deep(problem):
        W, H, b = p
        return [W @ H], b
    from .deep import features

    hs = features(p, problem.activation, xp=np)
    return [p.Ws[-1] @ hs[-1]] + [h.T @ h for h in hs], p.b


def same_orbit(problem: Problem, x1, x2, rtol: float = 1e-6) -> bool:
    """Whether two points lie on one symmetry orbit: Z = WH and b are invariant under (W, H) ↦ (WQ, QᵀH), and a
    balanced factorisation is fixed by Z up to that rotation; a free softmax bias is compared up to b + s1. At depth
    ≥ 2 the logits and every layer's feature Gram matrix are compared (docs/theory.md §12.7)."""
    inv1, b1 = _invariants(problem, x1)
    inv2, b2 = _invariants(problem, x2)
    for Z1, Z2 in zip(inv1, inv2):
        if np.linalg.norm(Z1 - Z2) > rtol * max(1.0, np.linalg.norm(Z1)):
            return False
    if b1 is None:
        return True
    if problem.bias_mode == "free" and problem.loss.shift_invariant:
        b1, b2 = b1 - b1.mean(), b2 - b2.mean()
    return bool(np.linalg.norm(b1 - b2) <= rtol * max(1.0, np.linalg.norm(b1)))


def _stopped_short(classification: str) -> bool:
    return classification in ("not_critical", "nonfinite")


def escape(problem: Problem, point: CriticalPoint, *, hessian="auto", tolerances=Tolerances(), gtol=1e-9,
           max_hops: int = 5, max_steps: int = 10000, solvers=ESCAPE_SOLVERS, steps=ESCAPE_STEPS,
           eigensolver: str = "auto", hessian_dtype: str = "float64") -> dict:
    """Step from a strict saddle along its negative-curvature eigenvector (the sign that lowers f), minimise, and
    classify where it lands.

    A descent run can stop short of any critical point (stalled in a flat region next to the saddle, out of steps):
    then the next solver of ``solvers`` continues from where it stopped (Newton-CG chain, L-BFGS, Newton-CG), and if
    all of them stop short the escape restarts from the saddle with the next, larger step of ``steps``. A run can
    also converge to a lower saddle (‖∇f‖ ≤ gtol there too): then escape again from that one, up to ``max_hops``
    times. When nothing reaches a critical point below a saddle the record says so: ``gave_up`` and ``reason``;
    ``attempts`` lists every run."""
    landed = {"objective": point.objective, "classification": point.classification, "grad_norm": point.grad_norm}
    hops, total_steps, status, attempts = 0, 0, "converged", []
    gave_up, reason = False, None
    saddle = point
    while saddle is not None and saddle.classification == "strict_saddle":
        if hops >= max_hops:
            gave_up, reason = True, f"still at a strict saddle after {max_hops} hops"
            break
        x = saddle.x
        v = saddle.min_eigvec / np.linalg.norm(saddle.min_eigvec)
        next_saddle = None
        for rel in steps:
            step = rel * max(1.0, float(np.linalg.norm(x)))
            with jax.enable_x64(True):
                reg = reg_of(problem)
                f = lambda y: float(objective_of(problem.shape)(jnp.asarray(y), reg, problem.shape))
                y = min((x + step * v, x - step * v), key=f)
            for name in solvers:
                sol = solve(problem, solver=name, init=params_of(problem, y), gtol=gtol, max_steps=max_steps)
                total_steps += sol.steps
                status = sol.status.name.lower()
                # ‖∇f‖ decides first (as in classify): a run that stopped short is not worth a Hessian
                finite = math.isfinite(sol.objective) and math.isfinite(sol.grad_norm)
                if not finite or sol.grad_norm > tolerances.grad_tol:
                    landed = {"objective": sol.objective, "classification": "not_critical" if finite else "nonfinite",
                              "grad_norm": sol.grad_norm}
                else:
                    cp = analyze_point(problem, sol.params, hessian=hessian, tolerances=tolerances,
                                       eigensolver=eigensolver, hessian_dtype=hessian_dtype)
                    landed = {"objective": cp.objective, "classification": cp.classification,
                              "grad_norm": cp.grad_norm}
                attempts.append({"hop": hops + 1, "step": step, "solver": name, "status": status, "steps": sol.steps,
                                 **landed})
                if not _stopped_short(landed["classification"]):
                    next_saddle = cp
                    break
                if landed["classification"] == "nonfinite":
                    break                      # nothing to continue from: try a larger step from the saddle
                y = flat_of(problem, sol.params)
            if next_saddle is not None:
                break
        hops += 1
        if next_saddle is None:
            gave_up = True
            reason = (f"no run reached a critical point: solvers {' → '.join(solvers)} from steps "
                      f"{', '.join(f'{s:g}' for s in steps)}·max(1, ‖x‖) all stopped short (last: {status}, "
                      f"‖∇f‖ = {landed['grad_norm']:.1e} > grad_tol {tolerances.grad_tol:g})")
        saddle = next_saddle
    return {**landed, "steps": total_steps, "status": status, "hops": hops, "gave_up": gave_up, "reason": reason,
            "attempts": attempts}


def _judge_against_found(points: list, tolerances: Tolerances, deep: bool = False) -> None:
    """Every point a census found (and every escape's landing) is an explicit point: the lowest objective among
    them is one more upper bound on the optimum, so a second-order minimum above it is provably not global. At
    depth ≥ 2 (``deep``) "global" is only "reaches the best value known" (docs/theory.md §12.7), so it is demoted
    too."""
    from .bounds import certified

    demote = ("local_minimizer", "global_minimizer") if deep else ("local_minimizer",)
    found = [v for cp in points for v in (cp.objective, (cp.escape or {}).get("objective"))
             if v is not None and math.isfinite(v)]
    if not found:
        return
    best = min(found)
    above = lambda f: f > best + tolerances.obj_tol * max(1.0, abs(best))
    for cp in points:
        if cp.classification in demote and above(cp.objective):
            cp.classification = "spurious_local_minimizer"
        if cp.bounds is not None and (cp.bounds.get("upper") is None or best < cp.bounds["upper"]):
            cp.bounds = dict(cp.bounds, upper=best, upper_from="census",
                             certified=certified(cp.bounds.get("lower"), best))
        esc = cp.escape
        if esc and esc.get("classification") in demote and above(esc["objective"]):
            esc["classification"] = "spurious_local_minimizer"


@dataclasses.dataclass
class Census:
    points: list                 # unique CriticalPoint's, in order of discovery
    starts: int
    converged: int               # starts whose run reached gtol
    wall_time: float
    solver: str = "lm"
    seeds: tuple = ()            # (first, last): start i uses seed + i
    scales: tuple = CENSUS_SCALES    # start i uses scales[i % len(scales)]
    statuses: dict = dataclasses.field(default_factory=dict)    # how the starts' runs ended, counted


def _stage_progress(progress):
    """``progress(done, total, stage)``; a two-argument callable (the old API) gets the starts only."""
    if progress is None:
        return lambda done, total, stage: None
    try:
        inspect.signature(progress).bind(0, 0, "starts")
    except TypeError:
        return lambda done, total, stage: progress(done, total) if stage == "starts" and done else None
    except ValueError:                 # no signature to inspect (a builtin): assume the current API
        pass
    return progress


def census(problem: Problem, starts: int = 20, *, scales=CENSUS_SCALES, hessian: str = "auto",
           tolerances: Tolerances = Tolerances(), gtol: float = 1e-10, with_escape: bool = True,
           progress: Optional[Callable] = None, solver="lm", seed: int = 0, max_steps: int = 500,
           init_scale: Optional[float] = None, lr=None, dtype: str = "float64", rtol: float = 1e-6,
           eigensolver: str = "auto", hessian_dtype: str = "float64") -> Census:
    """Runs of ``solver`` (Levenberg–Marquardt: it converges to saddles too) from ``starts`` seeded random starts,
    start i with seed ``seed + i`` and scale ``init_scale`` or else ``scales[i % len(scales)]``; dedupe up to
    symmetry; classify each unique point; escape from each strict saddle.

    ``progress(done, total, stage)`` is called as each stage advances, ``stage`` one of STAGES ("starts",
    "classifying", "escaping"); a two-argument ``progress(done, total)`` still gets the starts."""
    from .errors import UFMInputError
    from .solvers import MAX_SEED, as_solver

    if isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or not 1 <= starts <= MAX_STARTS:
        raise UFMInputError("--starts", starts, f"must be an integer in [1, {MAX_STARTS}] (each start is a full solve)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED - (starts - 1):
        raise UFMInputError("--seed", seed, f"start i uses seed + i: must be an integer in [0, {MAX_SEED - (starts - 1)}]"
                            f" for {starts} starts")
    run_scales = (init_scale,) if init_scale is not None else tuple(scales)
    if not run_scales or not all(isinstance(s, (int, float, np.floating)) and np.isfinite(s) and s >= 0
                                 for s in run_scales):
        raise UFMInputError("--init-scale", init_scale if init_scale is not None else scales,
                            "must be finite numbers ≥ 0")
    as_solver(solver, lr=lr)
    check_eigensolver(problem, check_hessian(problem, hessian, solver=solver, eigensolver=eigensolver,
                                             hessian_dtype=hessian_dtype), eigensolver, hessian_dtype)
    report = _stage_progress(progress)
    t0 = time.perf_counter()
    unique, xs, statuses = [], [], {}
    converged = 0
    for i in range(starts):
        sol = find_critical_point(problem, seed=seed + i, scale=run_scales[i % len(run_scales)], gtol=gtol,
                                  max_steps=max_steps, solver=solver, lr=lr, dtype=dtype, rtol=rtol)
        name = sol.status.name.lower()
        statuses[name] = statuses.get(name, 0) + 1
        report(i + 1, starts, "starts")
        if sol.status not in (Status.CONVERGED, Status.SADDLE):     # LM looks for critical points of any kind
            continue
        converged += 1
        x = flat_of(problem, sol.params).astype(np.float64)
        for j, y in enumerate(xs):
            if same_orbit(problem, x, y):
                unique[j][1] += 1
                break
        else:
            xs.append(x)
            unique.append([i, 1])
    points = []
    for k, ((i, found), x) in enumerate(zip(unique, xs)):
        report(k, len(xs), "classifying")
        cp = analyze_point(problem, x, hessian=hessian, tolerances=tolerances, label=f"start {i}",
                           eigensolver=eigensolver, hessian_dtype=hessian_dtype)
        cp.found = found
        points.append(cp)
    report(len(xs), len(xs), "classifying")
    if with_escape:
        saddles = [cp for cp in points if cp.classification == "strict_saddle"]
        for j, cp in enumerate(saddles):
            report(j, len(saddles), "escaping")
            cp.escape = escape(problem, cp, hessian=hessian, tolerances=tolerances, eigensolver=eigensolver,
                               hessian_dtype=hessian_dtype)
        report(len(saddles), len(saddles), "escaping")
    _judge_against_found(points, tolerances, deep=_deep(problem))
    return Census(points, starts, converged, time.perf_counter() - t0, solver=solver if isinstance(solver, str)
                  else getattr(solver, "name", str(solver)), seeds=(seed, seed + starts - 1), scales=run_scales,
                  statuses=statuses)


def slices(problem: Problem, point: CriticalPoint, *, num: int = 61, num2d: int = 41, seed: int = 0) -> dict:
    """f along the point's lowest-curvature eigenvector v and a random unit direction r (seeded), in 1-D
    (f(x + tv), f(x + tr)) and on the 2-D grid f(x + tv + sr), with t, s ∈ [−T, T], T = max(1, ‖x‖/2)."""
    x = point.x
    v = point.min_eigvec / np.linalg.norm(point.min_eigvec)
    r = np.random.default_rng(seed).standard_normal(x.size)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    T = max(1.0, 0.5 * float(np.linalg.norm(x)))
    t = np.linspace(-T, T, num)
    s2 = np.linspace(-T, T, num2d)
    with jax.enable_x64(True):
        reg = reg_of(problem)
        f = jax.jit(jax.vmap(lambda y: objective_of(problem.shape)(y, reg, problem.shape)))
        along = lambda a, dirn: np.asarray(f(jnp.asarray(x[None, :] + a[:, None] * dirn[None, :])))
        A, B = np.meshgrid(s2, s2, indexing="ij")
        grid = np.asarray(f(jnp.asarray(x[None, :] + A.reshape(-1, 1) * v[None, :] + B.reshape(-1, 1) * r[None, :])))
        return {"t": t, "f_eig": along(t, v), "f_rand": along(t, r), "s2": s2, "f_grid": grid.reshape(num2d, num2d)}


def save_landscape(problem: Problem, points: list, record: dict, path) -> None:
    """An .npz for ``ufm plot spectrum`` and ``ufm plot slice``: the JSON record, and per point i ``eigs_i`` (dense
    path) and the slices ``slice_i_*`` through it."""
    import os

    from .report import to_json

    arrays = {"record": np.asarray(to_json(record)), "kind": np.asarray("landscape")}
    for i, cp in enumerate(points):
        if cp.eigenvalues is not None:
            arrays[f"eigs_{i}"] = cp.eigenvalues
        if cp.not_finite:
            continue                     # no direction to slice along, and f is not finite there anyway
        for k, val in slices(problem, cp).items():
            arrays[f"slice_{i}_{k}"] = val
    path = os.fspath(path)
    tmp = f"{path}.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
