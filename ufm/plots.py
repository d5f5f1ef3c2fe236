"""Figures from saved results (Axes in, Axes out; nothing here solves or calls ``plt.show``).

Results: a solve (``ufm solve --save x.npz``), a landscape (``ufm landscape --save x.npz``) or a sweep store
(``.db``). Series colours are the colour-blind-safe Okabe–Ito palette without its black, grey and yellow (grey is
kept for overlays such as the ideal ETF, so no series is confused with one; yellow is unreadable on white); past its
six colours, series also differ by line style and marker. Maps use ``cividis``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import UFMInputError
from .render import sizes_text

from .phase import (apply_where, cell_edges, check_phase_axes, parse_where, phase_axis_columns, phase_panels,  # noqa: F401
                    phase_table, plot_phase)
from .plot_style import CMAP, COLORS, LINESTYLES, MARKERS, NEUTRAL, ROUNDOFF, class_style, series_style  # noqa: F401
from .deep_plots import dnc_phase_table, layer_series, plot_dnc_phase, plot_layer_curves  # noqa: F401


# ------------------------------------------------------------------------------------------------------ loading


def load_result(path, kind: str, geometry: bool = False) -> dict:
    """Read a saved result and check it is of ``kind`` ("solution", "landscape" or "sweep"); ``geometry``: a
    solution must also have finite W, H, b (the ETF and Gram views draw them; dynamics may show a diverged run)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UFMInputError("RESULT", path, "no such file")
    if kind == "sweep":
        if not path.endswith(".db"):
            raise UFMInputError("RESULT", path, "a sweep result is the .db store written by `ufm sweep`")
        from .store import load_sweep

        try:
            return {"df": load_sweep(path), "path": path}
        except Exception as exc:  # not SQLite, or not our table
            raise UFMInputError("RESULT", path, f"not a ufm sweep store ({type(exc).__name__})") from None
    try:
        z = np.load(path, allow_pickle=False)
        data = {k: z[k] for k in z.files}
    except Exception:
        raise UFMInputError("RESULT", path, "not an .npz written by `ufm solve --save` or `ufm landscape --save`") from None
    need = {"solution": "`ufm solve --save`", "landscape": "`ufm landscape --save`"}[kind]
    if "record" not in data:
        # another program's .npz (or a hand-made one): the record is what makes it a ufm result
        raise UFMInputError("RESULT", path, f"has no ufm record (arrays: {', '.join(sorted(data)) or 'none'}); this "
                            f"plot needs a file written by {need}")
    found = str(data["kind"]) if "kind" in data else ("solution" if "W" in data else "unknown")
    if found != kind:
        raise UFMInputError("RESULT", path, f"is a {found} result; this plot needs one from {need}")
    try:
        data["record"] = json.loads(str(data["record"]))
        if not isinstance(data["record"], dict) or "config" not in data["record"]:
            raise ValueError
    except ValueError:
        raise UFMInputError("RESULT", path, f"its record is not ufm's JSON; this plot needs a file written by {need}") from None
    if kind == "solution":
        _check_solution_arrays(path, data, finite=geometry)
    data["path"] = path
    return data


def _check_solution_arrays(path, data, finite: bool) -> None:
    """The arrays of a solve's .npz against its record: W (K×d), H (d×N), labels (N integers in [0, K)), finite
    reals; a hand-edited or foreign file gets one line naming it instead of a crash or a wrong picture."""
    c = data["record"]["config"]
    labels = data.get("labels")
    K, d = c.get("K"), c.get("d")
    N = c.get("N") or (None if labels is None else labels.size)
    want = {"W": (K, d), "H": (d, N), "labels": (N,)}
    for name, shape in want.items():
        a = data.get(name)
        if a is None or a.shape != shape:
            raise UFMInputError("RESULT", path, f"its {name} has shape {None if a is None else a.shape}, but its record "
                                f"says {shape} (K={K}, d={d}, N={N}); write it again with `ufm solve --save`")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) >= K:
        raise UFMInputError("RESULT", path, f"its labels must be integers in [0, {K})")
    for name in ("W", "H", "b"):
        a = data.get(name)
        if a is not None and not np.issubdtype(a.dtype, np.floating):
            raise UFMInputError("RESULT", path, f"its {name} is not real floating-point numbers")
        if a is not None and finite and not np.all(np.isfinite(a)):
            raise UFMInputError("RESULT", path, f"its {name} is not finite (a diverged solve has no geometry to draw)")


def _title(rec: dict) -> str:
    c = rec["config"]
    params = ", ".join(f"{k}={v:g}" for k, v in (c.get("loss_params") or {}).items() if isinstance(v, (int, float)))
    return f"{c['loss'].upper()}{f' ({params})' if params else ''}: K={c['K']}, d={c['d']}, n={sizes_text(c['n'])}, λ={c['lam_W']:g}"


def _num(v, spec=".1e") -> str:
    return "—" if v is None or not np.isfinite(v) else format(v, spec)


def _trivial(rec: dict) -> bool:
    return ((rec.get("theory") or {}).get("geometry")) == "trivial"


# ---------------------------------------------------------------------------------------------------------- etf


def _class_means(result: dict):
    W, H, labels = np.asarray(result["W"], float), np.asarray(result["H"], float), np.asarray(result["labels"])
    K = W.shape[0]
    onehot = np.eye(K)[labels]
    M = H @ onehot / np.maximum(onehot.sum(axis=0), 1)
    mu_G = H.mean(axis=1)
    return W, H, labels, M - mu_G[:, None], mu_G


def etf_coordinates(result: dict, dims: int | None = None) -> dict:
    """Coordinates of the class means, classifier rows and features in the span of the centred class means
    (top ``dims`` principal directions; default min(K − 1, d, 3)), the ideal simplex ETF fitted by the best rotation
    and scale (orthogonal Procrustes), and the fraction of the means' variance the projection captures.

    The centred means span at most min(K − 1, d) directions (one for K = 2 or d = 1); coordinates past that span are
    zero, so a 2-D or 3-D view of such a solution is its 1-D layout padded with zeros."""
    W, H, labels, Mc, mu_G = _class_means(result)
    K, d = W.shape
    U, S, _ = np.linalg.svd(Mc, full_matrices=False)             # U: d × min(d, K)
    span = min(K - 1, d)
    k = min(span, 3) if dims is None else dims

    def coords(X, cols):
        out = np.zeros((X.shape[1], cols))
        r = min(cols, U.shape[1], span)
        out[:, :r] = (U[:, :r].T @ X).T
        return out

    full = coords(Mc, K - 1)                                      # K×(K−1) coordinates of the means
    from .theory import _simplex_frame

    P = _simplex_frame(K, K - 1)                                  # ideal ETF, K×(K−1)
    A, sig, Bt = np.linalg.svd(P.T @ full)
    scale = sig.sum() / np.sum(P**2)
    ideal = np.zeros((K, k))
    ideal[:, :min(k, K - 1)] = (scale * P @ (A @ Bt))[:, :k]
    total = np.sum(S**2)
    wnorm = np.linalg.norm(W)
    # W = 0 (trivial collapse) has no direction to rescale: draw it as it is
    wscale = np.linalg.norm(Mc) / wnorm if wnorm > 0 else 1.0
    return {"means": coords(Mc, k), "W": wscale * coords(W.T, k), "W_scale": wscale,
            "features": coords(H - mu_G[:, None], k), "labels": labels, "ideal": ideal,
            "captured": float(np.sum(S[:k] ** 2) / total) if total > 0 else float("nan"), "dims": k, "span": span}


def plot_etf(ax, result: dict, title: str | None = None):
    """Class means (large markers), classifier rows w_k (arrows, rescaled onto the means' scale), individual features
    (dots) and the fitted ideal simplex ETF (dashed); on a 2-D Axes, or a 3-D one (``projection="3d"``). Means that
    span fewer dimensions than the Axes (K = 2, d = 1) are drawn zero-padded, and the title says so."""
    three = getattr(ax, "name", "") == "3d"
    c = etf_coordinates(result, dims=3 if three else 2)
    K = len(c["means"])
    pts = lambda a: (a[:, 0], a[:, 1], a[:, 2]) if three else (a[:, 0], a[:, 1])
    for i in range(K):
        for j in range(i + 1, K):
            seg = c["ideal"][[i, j]]
            ax.plot(*pts(seg), ls="--", lw=0.8, color=NEUTRAL, label="ideal simplex ETF" if (i, j) == (0, 1) else None)
    for k in range(K):
        st = class_style(k)
        f = c["features"][c["labels"] == k]
        ax.scatter(*pts(f), s=8, alpha=0.35, color=st["color"], marker=st["marker"])
        ax.scatter(*pts(c["means"][k:k + 1]), s=90, marker=st["marker"], color=st["color"], edgecolor="black",
                   zorder=3, label="class means μ_k − μ_G" if k == 0 else None)
        w = c["W"][k]
        if three:
            ax.quiver(0, 0, 0, *w, color=st["color"], arrow_length_ratio=0.1, lw=1.5)
        else:
            ax.annotate("", xy=w, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=st["color"], lw=1.5))
    ax.scatter(*pts(np.zeros((1, c["dims"]))), marker="+", color="black", s=40)
    ax.set_xlabel("PC 1 of class means")
    ax.set_ylabel("PC 2")
    if three:
        ax.set_zlabel("PC 3")
        # a 3-D Axes draws its z label outside the box that layout engines see: shrink the cube to keep it inside
        ax.set_box_aspect(None, zoom=0.82)
        ax.tick_params(labelsize=7)
    else:
        ax.set_aspect("equal", adjustable="datalim")
    rec = result["record"]
    notes = []
    if c["span"] < c["dims"]:
        notes.append(f"means span {c['span']} dimension{'s' if c['span'] > 1 else ''}: zero-padded")
    if _trivial(rec):
        notes.append("trivial regime W* = H* = 0: the points are round-off")
    ax.set_title((title or _title(rec)) + f"\nNC2 = {_num(rec['nc'].get('NC2_H'))}, captured variance "
                 f"{_num(100 * c['captured'], '.1f')}%, arrows: w_k ×{c['W_scale']:.2g}"
                 + "".join(f"\n{n}" for n in notes), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax


def gram_cosines(result: dict) -> dict:
    """The K×K cosine matrix of the centred class means (NaN where a mean is zero), the ideal off-diagonal value
    −1/(K − 1) of a simplex ETF, and the largest off-diagonal deviation from it."""
    _, _, _, Mc, _ = _class_means(result)
    K = Mc.shape[1]
    norms = np.linalg.norm(Mc, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (Mc.T @ Mc) / np.outer(norms, norms)
    cos[:, norms == 0] = np.nan
    cos[norms == 0, :] = np.nan
    ideal = -1.0 / (K - 1)
    off = cos[~np.eye(K, dtype=bool)]
    dev = float(np.max(np.abs(off - ideal))) if off.size and np.isfinite(off).all() else float("nan")
    return {"cos": cos, "ideal": ideal, "max_deviation": dev}


def plot_gram(ax, result: dict, title: str | None = None):
    """Heat map of the cosines between centred class means, with the simplex ETF's −1/(K − 1) marked on the colour
    bar: the ETF view that still reads at large K, where a 2-D or 3-D projection hides most of the geometry."""
    g = gram_cosines(result)
    cos, K = g["cos"], len(g["cos"])
    im = ax.imshow(np.ma.masked_invalid(cos), cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, shrink=0.85)
    cb.ax.axhline(g["ideal"], color="#D55E00", lw=2)
    cb.set_ticks([-1, g["ideal"], 0, 1], labels=["−1", f"ideal {g['ideal']:.3g}", "0", "1"])
    cb.set_label("cos(μ_j − μ_G, μ_k − μ_G)")
    if K <= 10:
        for i in range(K):
            for j in range(K):
                if np.isfinite(cos[i, j]):
                    ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if cos[i, j] > 0.2 else "white")
    step = max(1, K // 10)
    ax.set_xticks(range(0, K, step))
    ax.set_yticks(range(0, K, step))
    ax.set_xlabel("class k")
    ax.set_ylabel("class j")
    rec = result["record"]
    if not np.isfinite(cos).any():
        note = "class means are zero: cosines undefined"
    else:
        note = f"off-diagonal max |cos + 1/(K−1)| = {_num(g['max_deviation'])}"
    if _trivial(rec):
        note += "\ntrivial regime W* = H* = 0: cosines of round-off"
    ax.set_title((title or _title(rec)) + f"\ncosines of the centred class means\n{note}", fontsize=9)
    return ax


# ----------------------------------------------------------------------------------------------------- dynamics

DYNAMICS_PANELS = [("trace_NC1", "NC1"), ("trace_NC2_W", "NC2 (classifier W)"), ("trace_NC3", "NC3"),
                   ("trace_NC4", "NC4 (NCC mismatch)"), ("gap", "f − f* (theory)"), ("trace_grad_norm", "‖∇f‖")]


def dynamics_series(result: dict) -> dict:
    """x/y arrays of each dynamics panel: NC metrics at the snapshots, f − f* and ‖∇f‖ at every iterate."""
    if "trace_steps" not in result:
        raise UFMInputError("RESULT", result["path"], "has no NC trace: save it with `ufm solve --trace-every K --save`")
    steps = result["trace_steps"]
    it = np.arange(len(result["trace_objective"]))
    f_star = result["record"]["theory"]["objective"]
    out = {k: (steps, result[k]) for k, _ in DYNAMICS_PANELS if k.startswith("trace_NC")}
    out["trace_grad_norm"] = (it, result["trace_grad_norm"])
    out["gap"] = (it, result["trace_objective"] - f_star) if f_star is not None else (it, np.full(it.shape, np.nan))
    return out


def plot_dynamics(axes, results: list, labels: list | None = None):
    """Six panels (NC1, NC2, NC3, NC4, f − f*, ‖∇f‖ against iteration), one line per result, each in its own
    colour, line style and marker; log y-scales (a panel with nothing positive to show says so instead)."""
    axes = np.asarray(axes).ravel()
    shown = {key: False for key, _ in DYNAMICS_PANELS}
    if not labels:
        labels = [f"{r['record']['config']['loss']} ({r['record']['config']['solver']})" for r in results]
        if len(set(labels)) < len(labels):          # a legend must tell the lines apart
            labels = [f"{lab}: {os.path.basename(r['path'])}" for lab, r in zip(labels, results)]
    for r_i, res in enumerate(results):
        series = dynamics_series(res)
        label = labels[r_i]
        st = series_style(r_i)
        for ax, (key, name) in zip(axes, DYNAMICS_PANELS):
            x, y = series[key]
            y = np.abs(y) if key == "gap" else np.asarray(y, dtype=float)
            ax.plot(x, y, label=label, lw=1.4, markevery=max(1, len(x) // 8), ms=4, **st)
            shown[key] |= bool(np.any(np.isfinite(y) & ((y > 0) | (key == "trace_NC4"))))
    for ax, (key, name) in zip(axes, DYNAMICS_PANELS):
        if shown[key]:
            # exact zeros (e.g. NC2 = 0 at K = 2) are left out rather than drawn as spikes to the axis floor
            ax.set_yscale(*(["symlog"] if key == "trace_NC4" else ["log"]),
                          **({"linthresh": 1e-3} if key == "trace_NC4" else {"nonpositive": "mask"}))
        else:
            # a log axis with no positive value has no range to show (W = H = 0 gives NaN metrics, f = f* a zero gap)
            ax.text(0.5, 0.5, "no positive values\n(zero or undefined throughout)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color=NEUTRAL)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    return axes


# ----------------------------------------------------------------------------------------------------- spectrum


def plot_spectrum(ax, result: dict, index: int = 0):
    """Histogram of the Hessian eigenvalues of critical point ``index`` on a symmetric-log axis, with the zero band
    (|θ| ≤ zero_tol), the measured and expected zero-mode counts, and the negative eigenvalues marked."""
    key = f"eigs_{index}"
    if key not in result:
        raise UFMInputError("RESULT", result["path"], f"has no dense spectrum for point {index}: save it with "
                            "`ufm landscape --hessian dense --save` (the matrix-free path keeps extreme eigenvalues only)")
    theta = result[key]
    p = result["record"]["critical_points"][index]
    ztol = result["record"]["tolerances"]["zero_tol"][index]
    lin = max(ztol, 1e-12)
    top = max(np.max(np.abs(theta)), 10 * lin)
    edges = np.concatenate([-np.geomspace(top, lin, 30), np.linspace(-lin, lin, 3)[1:-1], np.geomspace(lin, top, 30)])
    ax.hist(theta, bins=edges, color=COLORS[0], edgecolor="white")
    ax.set_xscale("symlog", linthresh=lin)
    lo, hi = int(np.floor(np.log10(lin))), int(np.ceil(np.log10(top)))
    step = max(1, (hi - lo) // 3)
    decades = [10.0**e for e in range(hi, lo, -step)]     # the zero band marks the smallest scale
    ax.set_xticks([-v for v in decades] + [0.0] + decades[::-1], [f"−1e{int(np.log10(v))}" for v in decades] + ["0"]
                  + [f"1e{int(np.log10(v))}" for v in decades[::-1]], fontsize=7)
    ax.set_yscale("log")
    ax.axvspan(-ztol, ztol, color=NEUTRAL, alpha=0.2,
               label=f"zero band |θ| ≤ {ztol:.0e}: {p['n_zero']} found, {p['expected_zero_modes']} expected")
    neg = theta[theta < -ztol]
    if neg.size:
        ax.plot(neg, np.full(neg.shape, 0.7), "v", color=COLORS[5], ms=6, label=f"{neg.size} negative eigenvalues")
    ax.set_xlabel("Hessian eigenvalue θ (symmetric log)")
    ax.set_ylabel("count")
    ax.set_title(f"{_title(result['record'])} — {p['label'] or 'point'}: {p['classification']}", fontsize=9)
    ax.legend(fontsize=7)
    return ax


# -------------------------------------------------------------------------------------------------------- slice


def plot_slice(ax_line, ax_contour, result: dict, index: int = 0):
    """f along the lowest-curvature eigenvector v and a random direction r through critical point ``index`` (1-D),
    and on the plane (v, r) (2-D contour)."""
    key = f"slice_{index}_t"
    if key not in result:
        raise UFMInputError("RESULT", result["path"], f"has no slice for point {index}")
    t, fe, fr = result[key], result[f"slice_{index}_f_eig"], result[f"slice_{index}_f_rand"]
    p = result["record"]["critical_points"][index]
    ax_line.plot(t, fe, color=COLORS[5], lw=1.8, label=f"along v_min (θ = {p['min_eig']:.3g})")
    ax_line.plot(t, fr, color=COLORS[0], lw=1.8, ls="--", label="along a random direction")
    ax_line.axvline(0, color=NEUTRAL, lw=0.6)
    ax_line.set_xlabel("step t")
    ax_line.set_ylabel("f(x + t·direction)")
    ax_line.set_title(f"{p['label'] or 'point'}: {p['classification']}, f = {p['objective']:.6g}", fontsize=9)
    ax_line.legend(fontsize=7)
    s2, grid = result[f"slice_{index}_s2"], result[f"slice_{index}_f_grid"]
    cs = ax_contour.contourf(s2, s2, grid.T, levels=30, cmap=CMAP)
    ax_contour.figure.colorbar(cs, ax=ax_contour, label="f")
    ax_contour.plot(0, 0, "w+", ms=10)
    ax_contour.set_xlabel("t along v_min")
    ax_contour.set_ylabel("s along the random direction")
    ax_contour.set_title(_title(result["record"]), fontsize=9)
    return ax_line, ax_contour


# ------------------------------------------------------------------------------------------------------ figures

#: ``ufm plot etf`` adds the cosine heat map next to the projection above this K (a 3-D view shows 3 of K − 1 axes)
GRAM_PANEL_K = 6


def figure_size(kind: str, results: list, where=None) -> tuple:
    """Width and height in inches of :func:`make_figure`'s figure (known before drawing, to bound its pixels)."""
    if kind == "etf":
        return 5.0 * sum(1 + (r["W"].shape[0] > GRAM_PANEL_K) for r in results), 5.4
    if kind == "gram":
        return 5.5 * len(results), 5.2
    if kind == "phase":
        return 6.0 * len(phase_panels(results[0]["df"], where)) + 1.2, 5.8
    return {"dynamics": (13.0, 7.5), "spectrum": (7.5, 4.8), "slice": (12.0, 4.8)}[kind]


def make_figure(kind: str, results: list, point: int = 0, x: str = "K", y: str = "lam_W", color: str = "NC2_W",
                where=None):
    """The figure ``ufm plot KIND`` draws from loaded results (a Matplotlib ``Figure`` with constrained layout, so
    titles and labels stay inside it; no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figure_size(kind, results, where), layout="constrained")
    if kind in ("etf", "gram"):
        cols = [(res, panel) for res in results for panel in
                (["gram"] if kind == "gram" else ["etf"] + (["gram"] if res["W"].shape[0] > GRAM_PANEL_K else []))]
        for sub, (res, panel) in zip(np.ravel(fig.subfigures(1, len(cols))), cols):
            if panel == "gram":
                plot_gram(sub.add_subplot(), res)
                continue
            three = min(res["W"].shape[0] - 1, res["W"].shape[1]) >= 3
            ax = plot_etf(sub.add_subplot(projection="3d" if three else None), res)
            if three:
                # constrained layout does not see a 3-D Axes' title (it lands on the legend or past the figure's
                # edge): the panel's own subfigure title takes its place
                sub.suptitle(ax.get_title(), fontsize=9)
                ax.set_title("")
    elif kind == "dynamics":
        plot_dynamics(fig.subplots(2, 3), results)
    elif kind == "spectrum":
        plot_spectrum(fig.subplots(), results[0], point)
    elif kind == "phase":
        n = len(phase_panels(results[0]["df"], where))
        plot_phase(list(fig.subplots(1, n, squeeze=False)[0]), results[0], x=x, y=y, color=color, where=where)
    else:
        plot_slice(*fig.subplots(1, 2), results[0], point)
    return fig
