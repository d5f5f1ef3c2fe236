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

COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
NEUTRAL = "#595959"          # overlays only (ideal ETF, reference lines): never a series colour
CMAP = "cividis"
#: a relative value at or below this is machine precision: a phase map shows it as "collapsed to round-off"
ROUNDOFF = 1e-12


def series_style(i: int) -> dict:
    """Colour, line style and marker of series ``i``: every series differs from the others in all three (the triple
    repeats after 24 series), so curves that lie on each other stay distinguishable."""
    return {"color": COLORS[i % len(COLORS)], "ls": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def class_style(k: int) -> dict:
    """Colour and marker of class ``k``: colours first, then markers, so the first 48 classes all differ."""
    return {"color": COLORS[k % len(COLORS)], "marker": MARKERS[(k // len(COLORS)) % len(MARKERS)]}


# ------------------------------------------------------------------------------------------------------ loading


def load_result(path, kind: str) -> dict:
    """Read a saved result and check it is of ``kind`` ("solution", "landscape" or "sweep")."""
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
    found = str(data["kind"]) if "kind" in data else ("solution" if "W" in data else "unknown")
    if found != kind:
        need = {"solution": "`ufm solve --save`", "landscape": "`ufm landscape --save`"}[kind]
        raise UFMInputError("RESULT", path, f"is a {found} result; this plot needs one from {need}")
    data["record"] = json.loads(str(data["record"]))
    data["path"] = path
    return data


def _title(rec: dict) -> str:
    c = rec["config"]
    params = ", ".join(f"{k}={v:g}" for k, v in (c.get("loss_params") or {}).items() if isinstance(v, (int, float)))
    return f"{c['loss'].upper()}{f' ({params})' if params else ''}: K={c['K']}, d={c['d']}, n={c['n']}, λ={c['lam_W']:g}"


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


# -------------------------------------------------------------------------------------------------------- phase

_STRING_INPUTS = ("loss", "bias", "solver")
_LOG_COLORS = ("NC", "theory_rel_gap", "theory_gap", "grad_norm", "bias_residual")


def phase_axis_columns(df=None) -> list:
    """The columns a phase map can put on an axis: the sweep's numeric inputs (those with a value, given ``df``)."""
    from .store import INPUT_COLUMNS

    cols = [c for c in INPUT_COLUMNS if c not in _STRING_INPUTS]
    if df is not None:
        import pandas as pd

        cols = [c for c in cols if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
    return cols


def check_phase_axes(x: str, y: str, df=None) -> None:
    """``-x`` and ``-y`` must be two different numeric input columns (of ``df`` when given; checkable before a
    store is loaded, from the store's fixed columns)."""
    from .store import COLUMNS

    usable = phase_axis_columns(df)
    listing = f"usable columns: {', '.join(usable)}"
    for flag, col in (("-x", x), ("-y", y)):
        if col not in usable:
            why = ("not a column of the sweep" if col not in COLUMNS else
                   "not numeric" if col in _STRING_INPUTS else
                   "an output, not an input of the sweep" if col not in phase_axis_columns() else
                   "has no value in this sweep")
            raise UFMInputError(flag, col, f"{why}; {listing}")
    if x == y:
        raise UFMInputError("-y", y, f"is also -x: the two axes need different columns; {listing}")


def parse_where(where) -> list:
    """``--where`` conditions as (column, value-text) pairs, from "COL=VALUE" strings, (column, value) pairs or a
    dict {column: value or values}."""
    from .store import COLUMNS, INPUT_COLUMNS

    if where is None:
        return []
    if isinstance(where, dict):
        pairs = [(str(k), str(v)) for k, vs in where.items() for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
    else:
        pairs = []
        for text in [where] if isinstance(where, str) else where:
            if isinstance(text, tuple):
                pairs.append((str(text[0]), str(text[1])))
                continue
            col, sep, val = str(text).partition("=")
            if not sep or not col.strip() or not val.strip():
                raise UFMInputError("--where", text, "must be COLUMN=VALUE, e.g. loss=ls or n=5")
            pairs.append((col.strip(), val.strip()))
    for col, val in pairs:
        if col not in COLUMNS:
            raise UFMInputError("--where", f"{col}={val}", f"{col} is not a column of the sweep; inputs: "
                                f"{', '.join(INPUT_COLUMNS)}")
    return pairs


def _where_text(where) -> str:
    return " ".join(f"{c}={v}" for c, v in parse_where(where)) or "nothing"


def _is_numeric(series) -> bool:
    import pandas as pd

    values = series.dropna()
    return len(values) > 0 and not pd.api.types.is_bool_dtype(values) \
        and bool(pd.to_numeric(values, errors="coerce").notna().all())


def _values(series, most: int = 10) -> str:
    vals = series.dropna().unique()
    vals = sorted(vals, key=float) if _is_numeric(series) else sorted(map(str, vals))
    text = ", ".join(format(float(v), ".6g") if _is_numeric(series) else str(v) for v in vals[:most])
    return text + (", …" if len(vals) > most else "") + (", none" if series.isna().any() else "")


def _matches(series, text: str):
    import pandas as pd

    if text.lower() in ("none", "nan", "null"):
        return series.isna().to_numpy()
    if _is_numeric(series):
        try:
            v = float(text)
        except ValueError:
            raise UFMInputError("--where", f"{series.name}={text}", f"{series.name} is numeric: "
                                f"{_values(series)}") from None
        num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        # a value typed as printed (6 significant digits) names the stored one
        printed = np.array([format(u, ".6g") == format(v, ".6g") for u in num])
        return np.isclose(num, v, rtol=1e-9, atol=0.0) | printed
    return (series.astype(str) == text).to_numpy()


def apply_where(df, where=None):
    """The rows of ``df`` that satisfy every ``--where`` condition ("COL=VALUE"; several for one column are
    alternatives: ``loss=ce loss=ls``). A condition that matches no row is an error naming the column's values."""
    pairs = parse_where(where)
    by_col = {}
    for col, val in pairs:
        m = _matches(df[col], val)
        if not m.any():
            raise UFMInputError("--where", f"{col}={val}", f"no row has {col} = {val}; {col} takes {_values(df[col])}")
        by_col[col] = by_col.get(col, False) | m
    mask = np.ones(len(df), dtype=bool)
    for m in by_col.values():
        mask &= m
    if not mask.any():
        raise UFMInputError("--where", " ".join(f"{c}={v}" for c, v in pairs), "no row matches all of them together")
    return df[mask]


def _phase_rows(df, x: str, y: str, where=None):
    """The rows behind a phase map, and what its cells aggregate; cells may only pool seeds."""
    import pandas as pd

    from .store import INPUT_COLUMNS

    check_phase_axes(x, y, df)
    sel = apply_where(df, where)
    for flag, col in (("-x", x), ("-y", y)):
        vals = pd.to_numeric(sel[col], errors="coerce")
        if vals.isna().any():
            losses = ", ".join(sorted(map(str, sel.loc[vals.isna(), "loss"].unique())))
            raise UFMInputError(flag, col, f"has no value in {int(vals.isna().sum())} selected rows (loss {losses}); "
                                f"leave them out with --where, e.g. --where loss=...")
        sel = sel.assign(**{col: vals.astype(float)})
    cells = sel.groupby([y, x])
    others = [c for c in INPUT_COLUMNS if c not in (x, y, "seed") and c in sel.columns]
    counts = cells[others].nunique(dropna=False)
    varying = [c for c in others if (counts[c] > 1).any()]
    if varying:
        first = sel[varying[0]].dropna().iloc[0]
        first = format(float(first), "g") if _is_numeric(sel[varying[0]]) else first
        raise UFMInputError("--where", _where_text(where),
                            f"rows sharing a ({x}, {y}) cell differ in {', '.join(varying)} ("
                            + "; ".join(f"{c}: {_values(sel[c])}" for c in varying)
                            + f"), and a cell pools seeds only: fix the others, e.g. --where {varying[0]}={first}")
    seeds = cells["seed"].nunique() if "seed" in sel.columns else cells.size()
    return sel, {"rows": len(sel), "seeds": (int(seeds.min()), int(seeds.max())),
                 "where": [f"{c}={v}" for c, v in parse_where(where)],
                 "losses": sorted(map(str, sel["loss"].unique())) if "loss" in sel.columns else []}


def phase_table(df, x: str = "K", y: str = "lam_W", color: str = "NC2_W", where=None):
    """The heatmap's values: ``color`` over (y, x), rows sorted by y and columns by x, of the rows that pass
    ``where`` (see :func:`apply_where`). Each cell pools the runs that differ only in their seed and shows their
    mean (categories: the most frequent); rows that differ in anything else (loss, d, n, λ_H, γ, …) are refused,
    never averaged. ``table.attrs`` records what was pooled: ``rows``, ``seeds`` (fewest, most per cell),
    ``where``, ``losses`` and ``aggregate``. Returns ``(table, codes)``, codes mapping categories to their values."""
    import pandas as pd

    if color not in df.columns:
        raise UFMInputError("--color", color, "not a column of the sweep; try NC2_W, theory_rel_gap, classification")
    sel, info = _phase_rows(df, x, y, where)
    if sel[color].isna().all():
        raise UFMInputError("--color", color, "has no value in the selected rows (analysis columns need "
                            "`ufm sweep --analyze`)")
    if _is_numeric(sel[color]):
        table = sel.assign(_c=pd.to_numeric(sel[color], errors="coerce")).groupby([y, x])["_c"].mean().unstack(x)
        codes, how = None, "mean"
    else:
        codes = {v: i for i, v in enumerate(sorted(sel[color].dropna().astype(str).unique()))}
        mode = lambda s: s.mode().iloc[0] if s.notna().any() else np.nan
        table = sel.assign(_c=sel[color].dropna().astype(str).map(codes)).groupby([y, x])["_c"].agg(mode).unstack(x)
        how = "most frequent"
    table = table.sort_index().sort_index(axis=1).astype(float)
    table.attrs.update(info, aggregate=how)
    return table, codes


def phase_panels(df, where=None) -> list:
    """The losses left after ``where``: a phase map draws one panel each."""
    return sorted(map(str, apply_where(df, where)["loss"].unique()))


def cell_edges(values) -> tuple:
    """Cell edges around sorted axis values, spaced as values, and whether the axis is logarithmic: positive values
    spread over a decade or more and more even in log than in linear steps (λ grids) get geometric midpoints."""
    v = np.asarray(values, dtype=float)
    even = lambda steps: np.std(steps) / np.mean(steps) if len(steps) and np.mean(steps) > 0 else 0.0
    log = bool(np.all(v > 0) and v[-1] / v[0] >= 10 and even(np.diff(np.log(v))) <= even(np.diff(v))) \
        if len(v) > 1 else bool(v[0] > 0 and not float(v[0]).is_integer())
    u = np.log(v) if log else v
    if len(u) == 1:
        half = np.log(10) / 2 if log else 0.5
        e = np.array([u[0] - half, u[0] + half])
    else:
        mid = (u[1:] + u[:-1]) / 2
        e = np.concatenate([[2 * u[0] - mid[0]], mid, [2 * u[-1] - mid[-1]]])
    return (np.exp(e) if log else e), log


def _cell_ticks(axis, values, fmt):
    from matplotlib.ticker import NullLocator

    step = max(1, int(np.ceil(len(values) / 10)))         # at most ~10 labels, so they never overlap
    axis.set_ticks(values[::step], [format(v, fmt) for v in values[::step]])
    axis.set_minor_locator(NullLocator())


def _hatch(ax, mask, xe, ye, face, hatch, label):
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    cells = [Rectangle((xe[j], ye[i]), xe[j + 1] - xe[j], ye[i + 1] - ye[i]) for i, j in zip(*np.nonzero(mask))]
    if not cells:
        return None
    ax.add_collection(PatchCollection(cells, facecolor=face, edgecolor=NEUTRAL, hatch=hatch, lw=0.0, label=label))
    return Patch(facecolor=face, edgecolor=NEUTRAL, hatch=hatch, label=label)


def _phase_panel(df, x, y, color, where, codes_all):
    """One panel's values and masks (round-off and trivial cells), before any drawing."""
    table, codes = phase_table(df, x, y, color, where)
    vals = table.to_numpy(dtype=float)
    log = codes is None and color.startswith(_LOG_COLORS)
    shape = vals.shape
    roundoff, trivial = np.zeros(shape, bool), np.zeros(shape, bool)
    if codes is not None:           # one category→value map across panels, so one colour bar reads them all
        inv = {i: codes_all[c] for c, i in codes.items()}
        vals = np.array([inv.get(v, np.nan) if np.isfinite(v) else np.nan for v in vals.ravel()]).reshape(shape)
    if log:
        vals = np.abs(vals)
        scale = 1.0
        if color == "theory_gap":       # an absolute gap is round-off relative to the objective
            scale = np.abs(phase_table(df, x, y, "theory_objective", where)[0].reindex_like(table).to_numpy(float))
        roundoff = np.isfinite(vals) & (vals <= ROUNDOFF * scale)
    if color.startswith("NC") and "theory_geometry" in df.columns:
        # W* = H* = 0 there: the NC metrics divide round-off by round-off and mean nothing
        flag = df.assign(_t=(df["theory_geometry"] == "trivial").astype(float))
        trivial = phase_table(flag, x, y, "_t", where)[0].reindex_like(table).to_numpy(dtype=float) == 1.0
        roundoff &= ~trivial
    return table, vals, log, roundoff, trivial


def plot_phase(ax, result: dict, x: str = "K", y: str = "lam_W", color: str = "NC2_W", where=None):
    """Heatmap of ``color`` over (x, y) from a sweep, cells placed at their values (λ grids on log axes), with the
    trivial-collapse boundary √(nλ_Wλ_H) = φ′(0) (λ_W = λ_H = λ: λ = φ′(0)/√n) for a softmax loss.

    ``where`` filters rows ("COL=VALUE" strings); cells pool seeds only (:func:`phase_table`), and the title says
    so. Given a sequence of Axes, one panel per loss left (:func:`phase_panels`) on a shared colour scale; one Axes
    takes one loss. Values at machine precision (≤ ``ROUNDOFF``) and, for NC metrics, the trivial regime
    (theory_geometry "trivial", W* = H* = 0) are hatched with a legend entry instead of coloured."""
    import matplotlib
    import matplotlib.patheffects as pe
    from matplotlib.colors import BoundaryNorm, LogNorm, Normalize

    if color not in result["df"].columns:
        raise UFMInputError("--color", color, "not a column of the sweep; try NC2_W, theory_rel_gap, classification")
    check_phase_axes(x, y, result["df"])
    df = apply_where(result["df"], where)
    axes = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    losses = phase_panels(df)
    if len(axes) != len(losses):
        raise UFMInputError("--where", _where_text(where),
                            f"{len(losses)} losses remain ({', '.join(losses)}) for {len(axes)} panel(s): "
                            f"draw one panel per loss, or pick one with --where loss={losses[0]}")
    codes_all = None
    if not _is_numeric(df[color]):
        codes_all = {v: i for i, v in enumerate(sorted(df[color].dropna().astype(str).unique()))}
    # each panel's own conditions: the user's, with its loss in place of theirs (a subset of their alternatives)
    pairs = parse_where(where)
    wheres = [[p for p in pairs if p[0] != "loss"] + [("loss", loss)] for loss in losses]
    panels = []
    for loss, w in zip(losses, wheres):
        try:
            panels.append(_phase_panel(result["df"], x, y, color, w, codes_all))
        except UFMInputError as exc:        # name what the user typed, and the panel
            raise UFMInputError(exc.flag, _where_text(where) if exc.flag == "--where" else exc.value,
                                f"{exc.allowed} (in the loss={loss} panel)") from None
    shown = [np.ma.masked_where(~np.isfinite(v) | r | t, v) for _, v, _, r, t in panels]
    log = panels[0][2]
    finite = np.concatenate([s.compressed() for s in shown])
    if codes_all is not None:
        cmap = matplotlib.colormaps[CMAP].resampled(len(codes_all))
        norm = BoundaryNorm(np.arange(len(codes_all) + 1) - 0.5, len(codes_all))
    else:
        cmap = CMAP
        lo, hi = (finite.min(), finite.max()) if finite.size else (1.0, 10.0)
        norm = LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001)) if log else Normalize(vmin=lo, vmax=hi)
    for a, loss, (table, vals, _, roundoff, trivial), data in zip(axes, losses, panels, shown):
        xs, ys = table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float)
        (xe, xlog), (ye, ylog) = cell_edges(xs), cell_edges(ys)
        mesh = a.pcolormesh(xe, ye, data, cmap=cmap, norm=norm, shading="flat")
        handles = [_hatch(a, trivial, xe, ye, "#DDDDDD", "//", "trivial regime (W* = H* = 0): NC undefined"),
                   _hatch(a, roundoff, xe, ye, "white", "..", f"≤ {ROUNDOFF:.0e}"
                          + (" of f*" if color == "theory_gap" else "") + ": round-off (collapsed)")]
        handles = [h for h in handles if h is not None]
        if xlog:
            a.set_xscale("log")
        if ylog:
            a.set_yscale("log")
        sub = df[df["loss"].astype(str) == loss]
        if x == "K" and y in ("lam_W", "lam_H") and loss in ("ce", "ls", "fl") \
                and (sub["lam_W"] == sub["lam_H"]).all() and sub["n"].nunique() == 1:
            from .losses import as_loss
            from .theory import phi_prime0

            row = sub.iloc[0]
            kw = {"ce": {}, "ls": {"alpha": row["alpha"]}, "fl": {"gamma": row["gamma"]}}[loss]
            boundary = [phi_prime0(as_loss(loss, **kw), int(K)) / np.sqrt(int(row["n"])) for K in xs]
            (line,) = a.plot(xs, boundary, "--", color="white", lw=2, label="√(nλ_Wλ_H) = φ′(0)",
                             path_effects=[pe.Stroke(linewidth=3.5, foreground="black"), pe.Normal()])
            handles.insert(0, line)
        a.set_xlim(xe[0], xe[-1])
        a.set_ylim(ye[0], ye[-1])
        _cell_ticks(a.xaxis, xs, "g")
        _cell_ticks(a.yaxis, ys, ".2g")
        a.set_xlabel({"lam_W": "λ_W", "lam_H": "λ_H", "lam_b": "λ_b"}.get(x, x))
        a.set_ylabel({"lam_W": "λ_W", "lam_H": "λ_H", "lam_b": "λ_b"}.get(y, y))
        info = table.attrs
        lo_s, hi_s = info["seeds"]
        pooled = ("one run per cell" if hi_s == 1 else
                  f"{info['aggregate']} over {lo_s if lo_s == hi_s else f'{lo_s}–{hi_s}'} seeds")
        where_text = ", ".join(f"{c}={v}" for c, v in pairs if c != "loss")
        a.set_title(f"{color} over {x} × {y}: {loss}, {info['rows']} runs\n{pooled}"
                    + (f"; where {where_text}" if where_text else ""), fontsize=9)
        if handles:
            a.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    if finite.size:                 # with every cell hatched a colour bar would show a made-up range
        cb = axes[0].figure.colorbar(mesh, ax=axes if len(axes) > 1 else axes[0])
        if codes_all:
            cb.set_ticks(list(codes_all.values()), labels=list(codes_all.keys()))
        cb.set_label(color + (" (absolute value, log scale)" if log else ""))
    return axes if len(axes) > 1 else axes[0]


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
