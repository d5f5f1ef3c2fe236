"""Human-readable summaries of the JSON records (the CLI prints these without ``--json``)."""

from __future__ import annotations


def _num(v, spec: str = ".6e") -> str:
    """A number formatted with ``spec``, or "—" for a missing (None, NaN in JSON) or non-numeric value: a format spec
    applied to None raises."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—"
    if v != v:
        return "—"
    return format(v, spec)


def sizes_text(n) -> str:
    """n as typed on the command line: one size, or the class sizes comma-separated."""
    return ",".join(map(str, n)) if isinstance(n, (list, tuple)) else str(n)


def render_bounds(b: dict) -> list[str]:
    """The proven bracket on the global optimum in words: a certified optimum, an open bracket, or no bound."""
    method = {"convex_lifting": "convex lifting", "convex_envelope": "convex envelope of φ"}.get(b["method"], b["method"])
    if b["method"] == "none" or b["lower"] is None:
        return [f"bounds: no lower bound — {b['reason']}"]
    rank = f", rank {b['rank']}" if b.get("rank") is not None else ""
    frm = f" ({b['upper_from'].replace('_', ' ')})" if b.get("upper_from") else ""
    head = (f"bounds ({method}{rank}): {_num(b['lower'], '.12g')} ≤ f* ≤ {_num(b['upper'], '.12g')}{frm}")
    if b["certified"]:
        sol = b.get("solution_rel_gap")
        verdict = ("certified optimum; the solution is at it" if sol is not None and abs(sol) <= 1e-8 else
                   f"certified optimum; the solution is {_num(b.get('solution_gap'), '.3e')} above it")
    elif b["upper"] is None:
        verdict = "a lower bound only"
    else:
        verdict = f"open bracket, width {_num(b['gap'], '.3e')}"
    return [head + f" — {verdict}", f"  {b['reason']}"]


def render_solution(rec: dict) -> str:
    """A readable summary of a solve record: what was solved, how it ended, and measured vs theory. Every number
    may be missing (a diverged solve stores NaN/inf as null): it prints as "—"."""
    c, th, nc = rec["config"], rec["theory"], rec["nc"]
    loss = c["loss"] + ("" if not c["loss_params"] or c["loss"] not in ("fl", "ls", "mse")
                        else "(" + ", ".join(f"{k}={v}" for k, v in c["loss_params"].items()) + ")")
    lines = [
        f"UFM eq. (7): K={c['K']} d={c['d']} n={sizes_text(c['n'])} loss={loss} λ_W={_num(c['lam_W'], 'g')} "
        f"λ_H={_num(c['lam_H'], 'g')} bias={c['bias']}" + (f" λ_b={_num(c['lam_b'], 'g')}" if c["bias"] == "regularized" else ""),
        f"solver {c['solver']} ({c['dtype']}): {rec['status']} after {rec['steps']} steps in {_num(rec['wall_time_s'], '.2f')} s "
        f"— ‖∇f‖ = {_num(rec['grad_norm'], '.3e')} (gtol {_num(c['gtol'], 'g')}), scale-free "
        f"{_num(rec.get('rel_grad_norm'), '.1e')} (rtol {_num(c.get('rtol'), 'g')})",
    ]
    if c.get("dtype") == "float32" and rec.get("tolerance_source") == "float32 defaults":
        lines.append("  float32 tolerances (gtol 1e-4, rtol 1e-3: float32 cannot reach float64's): stationary at "
                     "float32's scale; use --dtype float64 to certify")
    if rec["status"] != "converged":
        lines.append(f"  {rec['message']}")
    so = rec.get("second_order")
    if so and so.get("checked"):
        verdict = "a strict saddle" if so["saddle"] else "no descent direction found"
        lines.append(f"  second-order test: {verdict} (curvature along the explicit direction "
                     f"{_num(so['curvature'], '.3e')}; σ_max(∇_Z g) = {_num(so['sigma_max_grad_Z'], '.6g')} vs "
                     f"√(λ_Wλ_H) = {_num(so['sqrt_lam_W_lam_H'], '.6g')})")
    lines.append("")
    lines.append(f"{'':14}{'solved':>22}{'theory':>22}")
    rows = [("objective f", rec["objective"], th["objective"]), ("‖W‖²_F", rec["W_fro_sq"], th["W_fro_sq"]),
            ("‖H‖²_F", rec["H_fro_sq"], th["H_fro_sq"])]
    for name, a, b in rows:
        lines.append(f"{name:14}{_num(a, '.12g'):>22}{_num(b, '.12g'):>22}")
    if th["objective"] is not None:
        lines.append(f"{'gap':14}{_num(th['gap'], '.3e'):>22}  (relative {_num(th['rel_gap'], '.3e')})")
    lines.append(f"theory: {th['reason'] if th['applies'] or th['upper_bound_only'] else 'does not apply — ' + th['reason']}")
    if th["applies"]:
        lines.append(f"  geometry {th['geometry']}, logit margin {_num(th['margin'], '.6g')}, c = √(nλ_Wλ_H) = "
                     f"{_num(th['c'], '.4g')}")
    if rec.get("bounds"):
        lines += render_bounds(rec["bounds"])
    lines.append("")
    lines.append("neural collapse (0 = collapsed; — = undefined, e.g. W = 0 or a diverged solve):")
    keys = ["NC1", "NC2_W", "NC2_H", "NC3", "NC4", "NC2_W_uncentred", "NC2_H_uncentred", "bias_residual"]
    lines.append("  " + "  ".join(f"{k}={_num(nc[k], '.2e')}" for k in keys[:5]))
    lines.append("  " + "  ".join(f"{k}={_num(nc[k], '.2e')}" for k in keys[5:]))
    return "\n".join(lines)


def _escape_line(e: dict) -> str:
    runs = e.get("attempts") or []
    how = " → ".join(a["solver"] for a in runs) if len(runs) > 1 else ""
    where = (f"{e.get('classification', '—')} (f = {_num(e.get('objective'), '.8f')}, "
             f"‖∇f‖ = {_num(e.get('grad_norm'), '.1e')}" + (f"; runs {how}" if how else "") + ")")
    if e.get("gave_up"):
        return f"escape GAVE UP: {e.get('reason') or 'no reason recorded'}; last point {where}"
    return f"escape along the negative-curvature eigenvector → {where}"


def render_landscape(rec: dict) -> str:
    """A readable table of analysed critical points; "—" where a number is missing (NaN/inf points, no theory)."""
    c, tol = rec["config"], rec["tolerances"]
    lines = [f"UFM landscape: K={c['K']} d={c['d']} n={sizes_text(c['n'])} loss={c['loss']} λ_W={_num(c['lam_W'], 'g')} "
             f"λ_H={_num(c['lam_H'], 'g')} bias={c['bias']} — at {rec['at']}, Hessian {rec.get('hessian_method')}"
             + (f" ({rec['eigensolver']} eigensolver, {rec.get('hessian_dtype')})" if rec.get("eigensolver") else ""),
             f"tolerances: ‖∇f‖ ≤ {_num(tol['grad_tol'], 'g')} is critical; |θ| ≤ zero_tol is zero "
             f"({tol['zero_tol_rule']}); objective vs {'the lowest known' if c.get('depth', 1) > 1 else 'theory'} "
             f"to {_num(tol['obj_tol'], 'g')} relative"]
    if c.get("solver") is not None:
        lines.append(f"solver {c['solver']}, gtol {_num(c.get('gtol'), 'g')}, max steps {c.get('max_steps')}, "
                     + (f"seeds {c['seeds'][0]}…{c['seeds'][1]}, start scales "
                        + ", ".join(_num(v, "g") for v in c.get("init_scales") or []) if "seeds" in c
                        else f"seed {c.get('seed')}, init scale {_num(c.get('init_scale'), 'g')}"))
    if "census" in rec:
        cs = rec["census"]
        lines.append(f"census: {cs['starts']} starts, {cs['converged']} reached a critical point, {cs['unique']} distinct "
                     f"up to rotation, {_num(cs.get('wall_time_s'), '.1f')} s")
        if not cs["converged"]:
            ends = ", ".join(f"{v} {k}" for k, v in sorted((cs.get("statuses") or {}).items()))
            lines.append(f"  no start converged ({ends or 'no runs'}): raise --max-steps or loosen --gtol")
    if c.get("depth", 1) > 1:
        lines.append(f"depth {c['depth']} ({c['activation']}), widths {', '.join(map(str, c['widths'])) or '—'}, "
                     f"λ_1…λ_L = {', '.join(_num(v, 'g') for v in c['lam_layers'])}")
        lines.append(f"rule: {rec['global_rule']}")
    if "dnc" in rec:
        lines.append(f"DNC point: f = {_num(rec['dnc']['objective'], '.10g')}, logit margin s = "
                     f"{_num(rec['dnc']['scale'], '.6g')}, {rec['dnc']['geometry'].replace('_', ' ')}")
    if "origin_min_eig_theory" in rec:
        th = rec["origin_min_eig_theory"]
        where = "§12.6, the (W_1…W_L, H) block" if c.get("depth", 1) > 1 else "§5.4"
        lines.append(f"theory λ_min at the origin (docs/theory.md {where}): {_num(th, '.2e')}"
                     + ("  (defined for CE, LS and FL only)" if th is None else ""))
    head = f"{'point':10}{'class':>26}{'f':>14}{'‖∇f‖':>10}{'λ_min':>11}{'λ_min⊥':>11}{'λ_max':>10}{'#neg':>6}{'#zero/exp':>11}{'resid':>9}"
    lines += ["", head]
    for p in rec["critical_points"]:
        zero = f"{'?' if p['n_zero'] is None else p['n_zero']}/{'—' if p['expected_zero_modes'] is None else p['expected_zero_modes']}"
        if p["classification"] == "nonfinite":
            neg = "—"
        else:
            neg = "≥1" if p["n_negative"] is None else str(p["n_negative"])
        lines.append(f"{(p['label'] or '')[:10]:10}{p['classification']:>26}{_num(p['objective'], '.8f'):>14}"
                     f"{_num(p['grad_norm'], '.1e'):>10}{_num(p['min_eig'], '.2e'):>11}"
                     f"{_num(p['min_eig_deflated'], '.2e'):>11}{_num(p['max_eig'], '.2e'):>10}{neg:>6}{zero:>11}"
                     f"{_num(p['eig_residual'], '.1e'):>9}")
        if p.get("not_finite"):
            lines.append(f"{'':10}  not finite: {', '.join(p['not_finite'])} — neither a minimiser nor a saddle")
        if p.get("junction_ranks") is not None:
            lines.append(f"{'':10}  orbit: junction (width, rank) " + ", ".join(f"({m}, {r})" for m, r in
                         p["junction_ranks"]) + f"; deflated zeros {'?' if p['n_zero_deflated'] is None else p['n_zero_deflated']}")
        if p["escape"]:
            lines.append(f"{'':10}  {_escape_line(p['escape'])}")
        f, fs, br = p["objective"], p["theory_objective"], p.get("bounds") or {}
        if p["classification"] in ("not_critical", "nonfinite"):
            continue
        if fs is not None:
            gap = f - fs if isinstance(f, (int, float)) and isinstance(fs, (int, float)) else None
            lines.append(f"{'':10}  theory optimum f* = {_num(fs, '.8f')}; gap {_num(gap, '.2e')}")
        elif br.get("method") == "best_known_deep":
            gap = f - br["upper"] if isinstance(f, (int, float)) else None
            lines.append(f"{'':10}  lowest f known {_num(br['upper'], '.10g')} (from {str(br.get('upper_from')).replace('_', ' ')}"
                         f"; not certified); f − that {_num(gap, '.2e')}")
        elif br.get("upper") is not None:
            gap = f - br["upper"] if isinstance(f, (int, float)) else None
            state = "certified" if br.get("certified") else "open"
            lines.append(f"{'':10}  optimum f* in [{_num(br.get('lower'), '.10g')}, {_num(br['upper'], '.10g')}] "
                         f"({br['method'].replace('_', ' ')}, {state}); f − upper {_num(gap, '.2e')}")
        elif br.get("lower") is not None:
            lines.append(f"{'':10}  optimum f* ≥ {_num(br['lower'], '.10g')} ({br['method'].replace('_', ' ')})")
    counts = {}
    for p in rec["critical_points"]:
        counts[p["classification"]] = counts.get(p["classification"], 0) + 1
    lines += ["", "summary: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no critical points")]
    return "\n".join(lines)


def render_analysis(rec: dict) -> str:
    """A readable summary of ``ufm analyze``'s record: the point, its stationarity, the UFM optimum and the gaps, the
    NC metrics. "—" where a number is missing (no optimum known, an undefined metric)."""
    c, st, opt, gap, nc = rec["config"], rec["stationarity"], rec["optimum"], rec["gap"], rec["nc"]
    loss = c["loss"] + ("" if not c["loss_params"] or c["loss"] not in ("fl", "ls", "mse")
                        else "(" + ", ".join(f"{k}={v}" for k, v in c["loss_params"].items()) + ")")
    rows_or_cols = "rows (N×d)" if rec["layout"] == "rows" else "columns (d×N)"
    lam_H = _num(c["lam_H"], "g") + (" (estimated)" if rec["lam_H_estimated"] else "")
    lines = [
        f"last layer: K={c['K']} d={c['d']} N={c['N']}, class sizes {sizes_text(c['n'])}, features read as "
        f"{rows_or_cols}",
        f"UFM eq. (7): loss={loss} λ_W={_num(c['lam_W'], 'g')} λ_H={lam_H} bias={c['bias']}"
        + (f" λ_b={_num(c['lam_b'], 'g')}" if c["bias"] == "regularized" else ""),
    ]
    fit = rec.get("lam_H_fit")
    if fit:
        lines.append(f"  λ_H estimate: {_num(fit['estimate'], '.6g')} (residual {_num(fit['residual'], '.2e')}; "
                     f"balance λ_W‖W‖²/‖H‖² = {_num(fit['balance'], '.6g')})"
                     + (f" — {fit['reason']}" if fit["fallback"] else "; pass --lam-h to fix it"))
    lines.append(f"train accuracy {_num(100 * rec['train_accuracy'] if rec['train_accuracy'] is not None else None, '.2f')} %"
                 f"; data term {_num(rec['data_term'], '.10g')}")
    lines += ["", f"{'stationarity':14}{'‖∇f‖':>14}{'scale-free':>14}",
              f"{'all':14}{_num(rec['grad_norm'], '.3e'):>14}{_num(rec['rel_grad_norm'], '.2e'):>14}"]
    for name in ("W", "H", "b"):
        if st.get(name):
            lines.append(f"{name:14}{_num(st[name]['grad_norm'], '.3e'):>14}{_num(st[name]['rel_grad_norm'], '.2e'):>14}")
    lines += ["", f"{'':24}{'given':>20}{'UFM optimum':>20}{'gap':>14}"]
    for name, key in (("objective f", "objective"), ("‖W‖²_F", "W_fro_sq"), ("‖H‖²_F", "H_fro_sq")):
        lines.append(f"{name:24}{_num(rec[key], '.12g'):>20}{_num(opt[key], '.12g'):>20}{_num(gap[key], '.3e'):>14}")
    lines.append(f"{'Gram distance':24}{'centred':>20}{'uncentred':>20}")
    for name, key in (("  classifier W Wᵀ", "W_gram_distance"), ("  class means MᵀM", "mean_gram_distance")):
        lines.append(f"{name:24}{_num(gap[key], '.3e'):>20}{_num(gap[key + '_uncentred'], '.3e'):>20}")
    src = {"closed_form": "closed form", "convex_lifting": "convex lifting"}.get(opt["source"], "none")
    state = "certified" if opt["certified"] else "NOT certified"
    if not opt["source"]:
        lines.append(f"optimum: unknown — {opt['reason']}")
    elif opt["source"] == "convex_lifting" and rec.get("bounds"):
        lines.append(f"optimum: {src}, {state} (the bracket below)")
    else:
        lines.append(f"optimum: {src}, {state} — {opt['reason']}")
    if rec.get("bounds"):
        # the bracket's explicit point here is the network's, not a solve's
        lines += [line.replace("the solution", "the given point").replace("(solution)", "(given point)")
                  for line in render_bounds(rec["bounds"])]
    lines += ["", "neural collapse (0 = collapsed; — = undefined; docs/theory.md §6):"]
    keys = ["NC1", "NC2_W", "NC2_H", "NC3", "NC4", "NC2_W_uncentred", "NC2_H_uncentred", "bias_residual",
            "W_equinorm", "W_equiangularity", "W_max_angle", "H_equinorm", "H_equiangularity", "H_max_angle"]
    for i in range(0, len(keys), 4):
        lines.append("  " + "  ".join(f"{k}={_num(nc[k], '.2e')}" for k in keys[i:i + 4]))
    hs = rec.get("hessian")
    if hs:
        lines += ["", f"Hessian ({hs['hessian_method']}): {hs['classification']}; λ_min = {_num(hs['min_eig'], '.3e')}, "
                  f"λ_min off the symmetry orbit = {_num(hs['min_eig_deflated'], '.3e')}, λ_max = "
                  f"{_num(hs['max_eig'], '.3e')}"]
    return "\n".join(lines)
