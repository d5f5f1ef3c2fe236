"""Phase maps of a sweep: one column coloured over two input axes, placed at their real values, filtered with
``--where``, pooled over seeds only (anything else that varies inside a cell is refused, never averaged silently),
faceted by loss, with round-off and trivial-collapse cells hatched. Axes in, Axes out (re-exported by
:mod:`ufm.plots`)."""

from __future__ import annotations

import numpy as np

from .errors import UFMInputError
from .plot_style import CMAP, NEUTRAL, ROUNDOFF

_STRING_INPUTS = ("loss", "bias", "solver", "activation")
_LOG_COLORS = ("NC", "theory_rel_gap", "theory_gap", "grad_norm", "bias_residual", "bound_rel_gap")


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
    if len(df) == 0:
        raise UFMInputError("RESULT", "the sweep store", "has no rows yet; run `ufm sweep` into it first")
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
                and (sub["lam_W"] == sub["lam_H"]).all() and sub["n"].nunique() == 1 \
                and ("minority" not in sub or (sub["minority"].fillna(0) == 0).all()):
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
