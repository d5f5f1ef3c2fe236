"""Critical points beyond the minimum: a census from random starts, deduplicated up to symmetry, and escapes.

Minimisers are what every descent method finds; saddles need a method that converges to any critical point: the
census runs Levenberg–Marquardt on ∇f = 0 (``solvers.LevenbergMarquardt``) from seeded starts at several scales.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .critical import CriticalPoint, Tolerances, analyze_point
from .model import flat_objective, flatten, unflatten
from .problem import Problem, Reg
from .solvers import LevenbergMarquardt, Status, solve


CENSUS_SCALES = (0.03, 0.1, 0.3, 1.0)


def find_critical_point(problem: Problem, seed: int, scale: float, gtol: float = 1e-10, max_steps: int = 500):
    """One LM run from a seeded N(0, scale²) start; returns the solve's Solution (status says if it converged)."""
    return solve(problem, solver=LevenbergMarquardt(), gtol=gtol, max_steps=max_steps, seed=seed, init_scale=scale)


def same_orbit(problem: Problem, x1, x2, rtol: float = 1e-6) -> bool:
    """Whether two points lie on one symmetry orbit: Z = WH and b are invariant under (W, H) ↦ (WQ, QᵀH), and a
    balanced factorisation is fixed by Z up to that rotation; a free softmax bias is compared up to b + s1."""
    W1, H1, b1 = unflatten(np.asarray(x1), problem.shape)
    W2, H2, b2 = unflatten(np.asarray(x2), problem.shape)
    Z1, Z2 = W1 @ H1, W2 @ H2
    if np.linalg.norm(Z1 - Z2) > rtol * max(1.0, np.linalg.norm(Z1)):
        return False
    if b1 is None:
        return True
    if problem.bias_mode == "free" and problem.loss.shift_invariant:
        b1, b2 = b1 - b1.mean(), b2 - b2.mean()
    return bool(np.linalg.norm(b1 - b2) <= rtol * max(1.0, np.linalg.norm(b1)))


def escape(problem: Problem, point: CriticalPoint, *, hessian="auto", tolerances=Tolerances(), gtol=1e-9,
           max_hops: int = 5) -> dict:
    """Step from a strict saddle along its negative-curvature eigenvector (the sign that lowers f), minimise with
    the default solver, and classify where it lands. A descent solver can stall on a lower saddle (‖∇f‖ ≤ gtol
    there too); then escape again from that one, up to ``max_hops`` times, and report the hops."""
    landed, hops, steps, status = point, 0, 0, "converged"
    while landed.classification == "strict_saddle" and hops < max_hops:
        x = landed.x
        v = landed.min_eigvec / np.linalg.norm(landed.min_eigvec)
        step = 1e-2 * max(1.0, float(np.linalg.norm(x)))
        with jax.enable_x64(True):
            reg = Reg(*(jnp.asarray(val, jnp.float64) for val in problem.reg))
            f = lambda y: float(flat_objective(jnp.asarray(y), reg, problem.shape))
            start = min((x + step * v, x - step * v), key=f)
        sol = solve(problem, init=unflatten(start, problem.shape), gtol=gtol)
        landed = analyze_point(problem, sol.params, hessian=hessian, tolerances=tolerances)
        hops, steps, status = hops + 1, steps + sol.steps, sol.status.name.lower()
    return {"objective": landed.objective, "classification": landed.classification, "grad_norm": landed.grad_norm,
            "steps": steps, "status": status, "hops": hops}


@dataclasses.dataclass
class Census:
    points: list                 # unique CriticalPoint's, in order of discovery
    starts: int
    converged: int               # starts whose LM run reached gtol
    wall_time: float


def census(problem: Problem, starts: int = 20, *, scales=CENSUS_SCALES, hessian: str = "auto",
           tolerances: Tolerances = Tolerances(), gtol: float = 1e-10, with_escape: bool = True,
           progress: Optional[Callable[[int, int], None]] = None) -> Census:
    """LM from ``starts`` seeded random starts cycling through ``scales``; dedupe up to symmetry; classify each
    unique point; escape from each strict saddle."""
    t0 = time.perf_counter()
    unique, xs = [], []
    converged = 0
    for i in range(starts):
        sol = find_critical_point(problem, seed=i, scale=scales[i % len(scales)], gtol=gtol)
        if progress:
            progress(i + 1, starts)
        if sol.status not in (Status.CONVERGED, Status.SADDLE):     # LM looks for critical points of any kind
            continue
        converged += 1
        x = flatten(sol.params, xp=np)
        for j, y in enumerate(xs):
            if same_orbit(problem, x, y):
                unique[j].found += 1
                break
        else:
            xs.append(x)
            unique.append(analyze_point(problem, x, hessian=hessian, tolerances=tolerances, label=f"start {i}"))
    if with_escape:
        for cp in unique:
            if cp.classification == "strict_saddle":
                cp.escape = escape(problem, cp, hessian=hessian, tolerances=tolerances)
    return Census(unique, starts, converged, time.perf_counter() - t0)


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
        reg = Reg(*(jnp.asarray(val, jnp.float64) for val in problem.reg))
        f = jax.jit(jax.vmap(lambda y: flat_objective(y, reg, problem.shape)))
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
        for k, val in slices(problem, cp).items():
            arrays[f"slice_{i}_{k}"] = val
    path = os.fspath(path)
    tmp = f"{path}.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
