"""One solve → one result record: the numbers, the NC metrics, the theory prediction and the gap, as JSON-able
values (NaN becomes null), and the arrays as ``.npz``."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .metrics import NC_KEYS, nc_metrics
from .solvers import Solution
from .theory import theory_optimum


def json_safe(x):
    """JSON-safe copy: NaN/inf → None, numpy scalars/arrays → Python."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fro_sq(A) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sum(np.square(A)))


def _nc_or_nan(W, H, b, p) -> dict:
    """NC metrics, or all NaN (null in JSON) where a diverged solve left parameters they cannot be computed on."""
    with np.errstate(all="ignore"):
        try:
            if all(np.all(np.isfinite(a)) for a in (W, H) + (() if b is None else (b,))):
                return nc_metrics(W, H, b, p.labels, p.K)
        except np.linalg.LinAlgError:
            pass
    return dict.fromkeys(NC_KEYS, float("nan"))


def solution_bounds(problem, objective: float, params=None) -> dict:
    """``bounds`` of a solve record: the proven bracket on the global optimum (bounds.py) with the solution as one
    more explicit point, and where the solution stands in it (``solution_gap`` = f − lower). The bracket is float64:
    given ``params`` (a float32 solve's), the solution's f is re-evaluated in float64, since its own f can sit below
    the float64 optimum by its round-off."""
    from .bounds import objective_f64, problem_bounds

    if params is not None and objective is not None and math.isfinite(objective):
        with np.errstate(all="ignore"):
            objective = objective_f64(problem, *params)
    b = problem_bounds(problem).with_point(objective)
    rec = b.record()
    finite = objective is not None and math.isfinite(objective)
    rec["solution_objective_f64"] = objective if finite else None
    rec["solution_gap"] = objective - b.lower if finite and b.lower is not None else None
    rec["solution_rel_gap"] = (rec["solution_gap"] / max(abs(b.lower), np.finfo(float).tiny)
                               if rec["solution_gap"] is not None else None)
    return rec


def solution_record(sol: Solution, bounds: bool = True) -> dict:
    """The result record of ``ufm solve --json``: status, f, ‖∇f‖, steps, norms, b, NC metrics, theory, config."""
    p = sol.problem
    W, H, b = sol.params
    th = theory_optimum(p)
    theory = th.as_dict()
    if th.objective is not None:
        gap = sol.objective - th.objective
        theory["gap"] = gap
        theory["rel_gap"] = gap / max(abs(th.objective), np.finfo(float).tiny)
    else:
        theory["gap"] = theory["rel_gap"] = None
    record = {
        "bounds": (solution_bounds(p, sol.objective, None if sol.dtype == "float64" else sol.params)
                   if bounds else None),
        "status": sol.status.name.lower(),
        "message": sol.message,
        "converged": sol.converged,
        "objective": sol.objective,
        "grad_norm": sol.grad_norm,
        "rel_grad_norm": sol.rel_grad_norm,
        "gtol": sol.gtol,
        "rtol": sol.rtol,
        "tolerance_source": sol.tolerance_source,
        "second_order": sol.second_order,
        "steps": sol.steps,
        "stage_steps": list(sol.stage_steps),
        "wall_time_s": sol.wall_time,
        "W_fro_sq": _fro_sq(W),
        "H_fro_sq": _fro_sq(H),
        "b": None if b is None else list(map(float, b)),
        "nc": _nc_or_nan(W, H, b, p),
        "theory": theory,
        "config": {**p.config(), "solver": sol.solver, "gtol": sol.gtol, "rtol": sol.rtol, "seed": sol.seed,
                   "init_scale": sol.init_scale, "dtype": sol.dtype},
    }
    return json_safe(record)


def to_json(record: dict) -> str:
    return json.dumps(json_safe(record), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)


def trace_metrics(sol: Solution) -> dict:
    """NC metrics of every snapshot of a traced solve, as arrays ``trace_NC1``, … aligned with ``trace_steps``."""
    from .model import unflatten

    p = sol.problem
    rows = [_nc_or_nan(*unflatten(x, p.shape), p) for x in sol.trace_params]
    return {f"trace_{k}": np.array([r[k] for r in rows]) for k in ("NC1", "NC2_W", "NC2_H", "NC3", "NC4")}


def save_npz(sol: Solution, path, record: dict | None = None) -> None:
    """``W`` (K×d), ``H`` (d×N), ``b`` (K; absent without a bias), ``labels`` (N), the record as JSON text, the
    f / ‖∇f‖ traces and, for a traced solve, ``trace_steps`` with the NC metrics of each snapshot."""
    W, H, b = sol.params
    arrays = dict(W=np.asarray(W), H=np.asarray(H), labels=sol.problem.labels,
                  trace_objective=sol.trace_objective, trace_grad_norm=sol.trace_grad_norm,
                  record=np.asarray(to_json(record if record is not None else solution_record(sol))))
    if b is not None:
        arrays["b"] = np.asarray(b)
    if sol.trace_params is not None:
        arrays.update(trace_steps=sol.trace_steps, **trace_metrics(sol))
    path = os.fspath(path)
    tmp = f"{path}.partial.npz"           # write then rename: an interrupted save never leaves a truncated file
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
