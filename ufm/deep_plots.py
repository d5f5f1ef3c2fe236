"""Figures of the deep UFM (docs/theory.md §12): where deep neural collapse (DNC) is the best point found, over two
sweep inputs, and the per-layer collapse of one solution. Axes in, Axes out (re-exported by :mod:`ufm.plots`).

The phase map's colour is the relative gap (f_best − f_DNC)/|f_DNC| with f_best the least of the sweep's solves over
seeds and the low-rank search (``best_found``), capped at 0: 0 means nothing found beats the DNC value (DNC optimal
*so far*; at depth ≥ 2 nothing certifies a global optimum), negative values say by how much DNC is beaten. Each cell
is annotated with the logit rank of the point that realises f_best (``DNC`` where DNC is not beaten, ``DNC*`` where
it is not beaten but no start reached it either). Depth-1 rows
(eq. (7)) use the theory optimum, whose simplex ETF is the DNC point at L = 1 (docs/theory.md §3).
"""

from __future__ import annotations

import json

import numpy as np

from .errors import UFMInputError
from .plot_style import CMAP, COLORS, NEUTRAL, series_style

#: a relative gap at or above −DNC_TIE counts as "DNC not beaten": the solves stop at ‖∇f‖ ≤ 1e-9, so two values of
#: the same point agree far better than 1e-9 relative, and a genuinely lower point found so far is ≥ 1e-4 below
DNC_TIE = 1e-9
_LABELS = {"lam_W": "λ (every factor)", "lam_H": "λ_H", "depth": "depth L", "K": "K", "d": "d", "n": "n"}


def _deep_rows(df, activation: str, where=None):
    """The rows of one activation (depth-1 rows, which have none, always kept), with f_DNC, f_best and the winner's
    rank filled in for depth 1 from eq. (7)'s theory."""
    import pandas as pd

    from .phase import apply_where

    df = df[df["status"] != "error"]
    if "depth" not in df.columns or df["depth"].isna().all():
        raise UFMInputError("RESULT", "the sweep store", "has no depth column: sweep with --depth (ufm ≥ the deep axes)")
    depth = pd.to_numeric(df["depth"], errors="coerce").fillna(1).astype(int)
    keep = (depth == 1) | (df["activation"].astype(str) == activation)
    if not keep[depth > 1].any():
        have = sorted(map(str, df.loc[depth > 1, "activation"].dropna().unique()))
        raise UFMInputError("--activation", activation, f"no deep row has it; the sweep has {', '.join(have) or 'none'}")
    sel = df[keep].assign(depth=depth[keep])
    one = sel["depth"] == 1
    etf = sel["theory_geometry"] == "simplex_etf"
    sel = sel.assign(
        dnc_objective=np.where(one, sel["theory_objective"], sel["dnc_objective"]),
        best_found=np.where(one, sel["objective"], sel["best_found"]),
        best_found_rank=np.where(one, np.where(etf, sel["K"] - 1, np.nan), sel["best_found_rank"]),
        activation=np.where(one, activation, sel["activation"]))
    return apply_where(sel, where)


def dnc_phase_table(df, x: str = "K", y: str = "depth", activation: str = "linear", where=None):
    """``(gap, rank, beaten)`` tables over (y, x): per cell the least ``best_found`` over seeds against the DNC
    value, (f_best − f_DNC)/|f_DNC|; the logit rank of the row realising it; whether it is below f_DNC by more than
    DNC_TIE. Cells pool seeds only (anything else that varies in a cell is refused, :func:`ufm.phase.phase_table`'s
    rule)."""
    from .phase import _phase_rows

    sel = _deep_rows(df, activation, where)
    sel, info = _phase_rows(sel, x, y, None)
    sel = sel.dropna(subset=["best_found", "dnc_objective"])
    if sel.empty:
        raise UFMInputError("--where", "the selection", "has no row with both a DNC value and a best value found "
                            "(the DNC family needs n_k equal and widths ≥ K − 1, K for ReLU)")
    idx = sel.groupby([y, x])["best_found"].idxmin()
    best = sel.loc[idx.to_numpy()].set_index([y, x])
    gap = ((best["best_found"] - best["dnc_objective"]) / best["dnc_objective"].abs()).unstack(x)
    rank = best["best_found_rank"].unstack(x)
    gap, rank = gap.sort_index().sort_index(axis=1), rank.sort_index().sort_index(axis=1)
    beaten = gap < -DNC_TIE
    from .phase import parse_where

    # the selection is the caller's ``where`` (applied in _deep_rows), which the title must name
    gap.attrs.update(info, activation=activation, where=[f"{c}={v}" for c, v in parse_where(where)])
    return gap, rank, beaten


def plot_dnc_phase(ax, df, x: str = "K", y: str = "depth", activation: str = "linear", where=None):
    """Heatmap over (x, y) of where DNC is the best point found (module docstring): colour min(gap, 0) on a linear
    scale, each cell annotated with the winning logit rank or ``DNC``."""
    from matplotlib.colors import Normalize

    from .phase import _cell_ticks, cell_edges

    gap, rank, beaten = dnc_phase_table(df, x, y, activation, where)
    shown = np.minimum(gap.to_numpy(dtype=float), 0.0)
    xs, ys = gap.columns.to_numpy(dtype=float), gap.index.to_numpy(dtype=float)
    (xe, xlog), (ye, ylog) = cell_edges(xs), cell_edges(ys)
    lo = float(np.nanmin(shown)) if np.isfinite(shown).any() else -1.0
    norm = Normalize(vmin=min(lo, -1e-3), vmax=0.0)
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(shown), cmap=CMAP, norm=norm, shading="flat")
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    centre = lambda e, log: np.sqrt(e[1:] * e[:-1]) if log else (e[1:] + e[:-1]) / 2
    cx, cy = centre(xe, xlog), centre(ye, ylog)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isfinite(shown[i, j]):
                continue
            r = rank.iat[i, j]
            # DNC*: nothing beat DNC, but no start reached it either (the best found lies above f_DNC)
            text = ((f"r={int(r)}" if np.isfinite(r) else "r=?") if beaten.iat[i, j] else
                    "DNC*" if gap.iat[i, j] > DNC_TIE else "DNC")
            light = norm(shown[i, j]) < 0.5          # cividis is dark at its low end
            ax.text(cx[j], cy[i], text, ha="center", va="center", fontsize=7,
                    color="white" if light else "black")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    _cell_ticks(ax.xaxis, xs, "g")
    _cell_ticks(ax.yaxis, ys, ".2g" if y != "depth" else "g")
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    info = gap.attrs
    lo_s, hi_s = info["seeds"]
    pooled = "one start per cell" if hi_s == 1 else f"best of {lo_s if lo_s == hi_s else f'{lo_s}–{hi_s}'} starts"
    where_text = ", ".join(info["where"]) if info["where"] else ""
    ax.set_title(f"is DNC optimal? {activation}, {', '.join(info['losses'])}: {pooled} (+ low-rank search)"
                 + (f"\nwhere {where_text}" if where_text else ""), fontsize=9)
    cb = ax.figure.colorbar(mesh, ax=ax)
    cb.set_label("(f_best − f_DNC)/|f_DNC|, capped at 0 (DNC not beaten;\n* no start reached f_DNC)", fontsize=8)
    return ax


def layer_series(record: dict) -> dict:
    """Per-layer arrays of a deep record (``ufm solve --depth L --json``) or a sweep row (its ``deep_layers`` JSON):
    layer, DNC1, DNC2_ETF, DNC2_OF, DNC3, rank, and the logit rank."""
    if "deep_nc" in record:
        layers, logit_rank = record["deep_nc"]["layers"], record["deep_nc"]["logit_rank"]
    elif "deep_layers" in record and isinstance(record["deep_layers"], str):
        layers, logit_rank = json.loads(record["deep_layers"]), record.get("logit_rank")
    else:
        raise UFMInputError("RESULT", "the record", "has no per-layer metrics: give a depth ≥ 2 solve record or a "
                            "deep sweep row")
    out = {k: np.array([np.nan if r[k] is None else r[k] for r in layers], dtype=float)
           for k in ("layer", "DNC1", "DNC2_ETF", "DNC2_OF", "DNC3", "rank")}
    out["logit_rank"] = logit_rank
    return out


def plot_layer_curves(axes, record: dict, title: str | None = None):
    """Three panels against the layer l (features entering W_{l+1}; the logits last): DNC1, DNC2 (ETF and
    orthogonal frame) on log axes (exact zeros, e.g. DNC1 at n = 1, left out and said), and the class-mean rank."""
    s = layer_series(record)
    a1, a2, a3 = np.ravel(axes)
    layers = s["layer"]
    for ax, keys in ((a1, ("DNC1",)), (a2, ("DNC2_ETF", "DNC2_OF"))):
        for i, k in enumerate(keys):
            y = s[k]
            ax.plot(layers, y, label=k, lw=1.4, ms=5, **series_style(i))
        positive = np.concatenate([s[k][np.isfinite(s[k]) & (s[k] > 0)] for k in keys])
        if positive.size:
            ax.set_yscale("log", nonpositive="mask")
        else:
            ax.text(0.5, 0.5, "zero at every layer\n(n = 1: collapsed by construction)" if keys == ("DNC1",) else
                    "no positive values", transform=ax.transAxes, ha="center", va="center", fontsize=8, color=NEUTRAL)
        ax.set_title(" / ".join(keys) + " per layer (0 = collapsed)", fontsize=9)
        ax.legend(fontsize=7)
    x_logits = layers[-1] + 1 if layers.size else 0
    a3.step(np.append(layers, x_logits), np.append(s["rank"], np.nan if s["logit_rank"] is None else s["logit_rank"]),
            where="mid", color=COLORS[0], marker="o")
    a3.set_title("rank of the class means (last: the logits)", fontsize=9)
    a3.set_ylim(bottom=0)
    for ax in (a1, a2, a3):
        ax.set_xlabel("layer l (features entering W_{l+1})")
        ax.set_xticks(list(layers) + [x_logits], [str(int(v)) for v in layers] + ["logits"])
    if title:
        a1.figure.suptitle(title, fontsize=10)
    return a1, a2, a3
