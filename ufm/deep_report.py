"""One deep solve → one result record (JSON-able), its human summary, and its ``.npz`` (docs/theory.md §12)."""

from __future__ import annotations

import os

import numpy as np

from .deep_metrics import deep_metrics_or_nan
from .deep_theory import LowRankSearch, dnc_value, low_rank_search
from .render import _num, sizes_text
from .report import _fro_sq, _nc_or_nan, json_safe, run_fields, to_json

NO_CERTIFICATE = ("nothing certifies a global optimum at depth ≥ 2: the deep penalty is a Schatten quasi-norm "
                  "(non-convex, docs/theory.md §12.2), so every value here is an upper bound realised by a point")


def deep_theory_record(problem, objective=None, search=True, dnc=None) -> dict:
    """``theory`` of a deep record: the DNC value (and the gap to ``objective``), the low-rank search of the K×K
    reduction (deep linear only; ``search=False`` skips it; a :class:`~ufm.deep_theory.LowRankSearch` already run
    for this problem is used as it is), and the best upper bound ufm knows. ``dnc``: :func:`dnc_value` of this
    problem, when already computed (a sweep reuses it over seeds)."""
    v = dnc_value(problem) if dnc is None else dnc
    rec = {"dnc_objective": v.objective, "dnc_scale": v.scale, "dnc_geometry": v.geometry, "dnc_b0": v.b0,
           "reason": v.reason, "certified": False, "note": NO_CERTIFICATE}
    finite = objective is not None and np.isfinite(objective)
    rec["gap"] = objective - v.objective if finite and v.objective is not None else None
    rec["rel_gap"] = rec["gap"] / max(abs(v.objective), np.finfo(float).tiny) if rec["gap"] is not None else None
    ls = search if isinstance(search, LowRankSearch) else low_rank_search(problem) if search else None
    rec["low_rank"] = ls.record() if ls is not None else None
    candidates = [(v.objective, "dnc"), (ls.best_objective if ls else None, "low_rank_search"),
                  (objective if finite else None, "solution")]
    candidates = [(f, name) for f, name in candidates if f is not None]
    best = min(candidates) if candidates else (None, None)
    rec["best_upper_bound"], rec["best_upper_from"] = best
    rec["dnc_optimal_so_far"] = (None if v.objective is None or best[0] is None
                                 else bool(v.objective <= best[0] + 1e-9 * max(1.0, abs(v.objective))))
    return rec


def deep_record(sol, search=True, dnc=None) -> dict:
    """The result record of ``ufm solve --depth L --json`` (``search``, ``dnc``: as for :func:`deep_theory_record`)."""
    p = sol.problem
    Ws, H, b = sol.params
    record = {
        "bounds": None,
        **run_fields(sol),
        "W_fro_sq": [_fro_sq(W) for W in Ws],
        "H_fro_sq": _fro_sq(H),
        "b": None if b is None else list(map(float, b)),
        # the classifier layer's NC metrics, as for eq. (7): W = W_L and the features entering it
        "nc": _nc_or_nan(np.asarray(Ws[-1]), _last_features(p, sol.params), b, p),
        "deep_nc": deep_metrics_or_nan(p, sol.params),
        "theory": deep_theory_record(p, sol.objective, search, dnc),
        "config": {**p.config(), "solver": sol.solver, "gtol": sol.gtol, "rtol": sol.rtol, "seed": sol.seed,
                   "init_scale": sol.init_scale, "dtype": sol.dtype},
    }
    return json_safe(record)


def _last_features(problem, params):
    from .deep import features

    with np.errstate(all="ignore"):
        return features(params, problem.activation, xp=np)[-1]


def render_deep(rec: dict) -> str:
    """A readable summary of a deep solve record; "—" for any missing number."""
    c, th, dn = rec["config"], rec["theory"], rec["deep_nc"]
    widths = ",".join(map(str, c["widths"]))
    lams = ",".join(_num(v, "g") for v in c["lam_layers"])
    lines = [
        f"deep UFM (docs/theory.md §12): L={c['depth']} {c['activation']} K={c['K']} d={c['d']} widths={widths} "
        f"n={sizes_text(c['n'])} loss={c['loss']} λ_1..λ_L={lams} λ_H={_num(c['lam_H'], 'g')} bias={c['bias']}"
        + (f" λ_b={_num(c['lam_b'], 'g')}" if c["bias"] == "regularized" else ""),
        f"solver {c['solver']} ({c['dtype']}): {rec['status']} after {rec['steps']} steps in "
        f"{_num(rec['wall_time_s'], '.2f')} s — ‖∇f‖ = {_num(rec['grad_norm'], '.3e')} (gtol {_num(c['gtol'], 'g')}), "
        f"scale-free {_num(rec.get('rel_grad_norm'), '.1e')} (rtol {_num(c.get('rtol'), 'g')})",
    ]
    if rec["status"] != "converged":
        lines.append(f"  {rec['message']}")
    so = rec.get("second_order")
    if so and so.get("checked"):
        verdict = "a strict saddle" if so["saddle"] else "no descent direction found"
        lines.append(f"  second-order test (input junction): {verdict} (curvature {_num(so['curvature'], '.3e')}; "
                     f"σ_max(∇_M g) = {_num(so['sigma_max_grad_Z'], '.6g')} vs √(λ_1λ_H) = "
                     f"{_num(so['sqrt_lam_W_lam_H'], '.6g')})")
    lines += ["", f"{'objective f':24}{_num(rec['objective'], '.12g'):>20}"]
    lines.append(f"{'DNC value':24}{_num(th['dnc_objective'], '.12g'):>20}"
                 + (f"   gap f − DNC {_num(th['gap'], '.3e')}" if th["gap"] is not None else f"   ({th['reason']})"))
    if th["dnc_objective"] is not None:
        lines.append(f"  DNC point: logits a {th['dnc_geometry'].replace('_', ' ')} of scale s = "
                     f"{_num(th['dnc_scale'], '.6g')}" + (f", bias {_num(th['dnc_b0'], '.6g')}·1" if th['dnc_b0'] else ""))
    ls = th.get("low_rank")
    if ls:
        ranks = "  ".join(f"r={r}: {_num(v, '.8f')}" for r, v in ls["by_rank"].items())
        lines.append(f"{'low-rank search':24}{_num(ls['best_objective'], '.12g'):>20}   best rank {ls['best_rank']} "
                     f"({ls['starts_per_rank']} starts per inner width)")
        lines.append(f"  by inner width: {ranks}")
    lines.append(f"{'best upper bound':24}{_num(th['best_upper_bound'], '.12g'):>20}   from "
                 f"{(th['best_upper_from'] or '—').replace('_', ' ')}"
                 + ("" if th["dnc_optimal_so_far"] is None else
                    ("; DNC not beaten" if th["dnc_optimal_so_far"] else "; DNC is beaten")))
    lines.append(f"  {th['note']}")
    lines += ["", "per layer (layer l = features entering W_{l+1}; 0 = collapsed; rank of the class-mean matrix):",
              f"  {'layer':>5}{'width':>7}{'DNC1':>11}{'DNC2 ETF':>11}{'DNC2 OF':>11}{'DNC3':>11}{'rank':>6}"]
    for row in dn["layers"]:
        lines.append(f"  {row['layer']:>5}{row['width']:>7}{_num(row['DNC1'], '.2e'):>11}"
                     f"{_num(row['DNC2_ETF'], '.2e'):>11}{_num(row['DNC2_OF'], '.2e'):>11}"
                     f"{_num(row['DNC3'], '.2e'):>11}{'—' if row['rank'] is None else row['rank']:>6}")
    lines.append(f"  logits: rank {'—' if dn['logit_rank'] is None else dn['logit_rank']}"
                 + (f"; singular values / largest: " + ", ".join(_num(v, '.3g') for v in dn["logit_singular_values"])
                    if dn["logit_singular_values"] else ""))
    return "\n".join(lines)


def save_deep_npz(sol, path, record: dict) -> None:
    """``W1`` … ``WL``, ``H``, ``b`` (absent without a bias), ``labels``, the record as JSON text and the traces."""
    Ws, H, b = sol.params
    arrays = {f"W{l}": np.asarray(W) for l, W in enumerate(Ws, start=1)}
    arrays.update(H=np.asarray(H), labels=sol.problem.labels, trace_objective=sol.trace_objective,
                  trace_grad_norm=sol.trace_grad_norm, record=np.asarray(to_json(record)))
    if b is not None:
        arrays["b"] = np.asarray(b)
    path = os.fspath(path)
    tmp = f"{path}.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


__all__ = ["deep_record", "deep_theory_record", "render_deep", "save_deep_npz", "json_safe"]
