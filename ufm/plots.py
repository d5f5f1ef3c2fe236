"""Figures from saved results (Axes in, Axes out; nothing here solves or calls ``plt.show``).

Results: a solve (``ufm solve --save x.npz``), a landscape (``ufm landscape --save x.npz``) or a sweep store
(``.db``). Colours are the colour-blind-safe ``tableau-colorblind10`` cycle and the ``cividis`` map.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import UFMInputError

COLORS = ["#006BA4", "#FF800E", "#ABABAB", "#595959", "#5F9ED1", "#C85200", "#898989", "#A2C8EC", "#FFBC79", "#CFCFCF"]
CMAP = "cividis"


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


# ---------------------------------------------------------------------------------------------------------- etf


def etf_coordinates(result: dict, dims: int | None = None) -> dict:
    """Coordinates of the class means, classifier rows and features in the span of the centred class means
    (top ``dims`` ≤ 3 principal directions), the ideal simplex ETF fitted by the best rotation and scale
    (orthogonal Procrustes), and the fraction of the means' variance the projection captures."""
    W, H, labels = result["W"], result["H"], result["labels"]
    K = W.shape[0]
    onehot = np.eye(K)[labels]
    M = H @ onehot / onehot.sum(axis=0)
    mu_G = H.mean(axis=1)
    Mc = M - mu_G[:, None]
    U, S, _ = np.linalg.svd(Mc, full_matrices=False)
    k = min(K - 1, 3) if dims is None else dims
    B = U[:, :k]
    full = U[:, : K - 1].T @ Mc                                   # (K−1)×K coordinates of the means
    from .theory import _simplex_frame

    P = _simplex_frame(K, K - 1)                                  # ideal ETF, K×(K−1)
    A, sig, Bt = np.linalg.svd(P.T @ full.T)
    R = A @ Bt
    scale = sig.sum() / np.sum(P**2)
    ideal = (scale * P @ R)[:, :k]
    wscale = np.linalg.norm(Mc) / max(np.linalg.norm(W), 1e-300)
    return {"means": (B.T @ Mc).T, "W": wscale * (W @ B), "W_scale": wscale, "features": (B.T @ (H - mu_G[:, None])).T,
            "labels": labels, "ideal": ideal, "captured": float(np.sum(S[:k] ** 2) / max(np.sum(S**2), 1e-300)),
            "dims": k}


def plot_etf(ax, result: dict, title: str | None = None):
    """Class means (large markers), classifier rows w_k (arrows, rescaled onto the means' scale), individual features
    (dots) and the fitted ideal simplex ETF (dashed); 2-D for K = 3, 3-D for K ≥ 4 (pass a 3-D Axes)."""
    c = etf_coordinates(result, dims=3 if getattr(ax, "name", "") == "3d" else 2)
    K = len(c["means"])
    three = c["dims"] == 3
    pts = lambda a: (a[:, 0], a[:, 1], a[:, 2]) if three else (a[:, 0], a[:, 1])
    for i in range(K):
        for j in range(i + 1, K):
            seg = c["ideal"][[i, j]]
            ax.plot(*pts(seg), ls="--", lw=0.8, color="#595959", label="ideal simplex ETF" if (i, j) == (0, 1) else None)
    for k in range(K):
        col = COLORS[k % len(COLORS)]
        f = c["features"][c["labels"] == k]
        ax.scatter(*pts(f), s=8, alpha=0.35, color=col)
        ax.scatter(*pts(c["means"][k:k + 1]), s=90, marker="o", color=col, edgecolor="black", zorder=3,
                   label="class means μ_k − μ_G" if k == 0 else None)
        w = c["W"][k]
        if three:
            ax.quiver(0, 0, 0, *w, color=col, arrow_length_ratio=0.1, lw=1.5)
        else:
            ax.annotate("", xy=w, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=col, lw=1.5))
    ax.scatter(*pts(np.zeros((1, c["dims"]))), marker="+", color="black", s=40)
    ax.set_xlabel("PC 1 of class means")
    ax.set_ylabel("PC 2")
    if three:
        ax.set_zlabel("PC 3")
    else:
        ax.set_aspect("equal", adjustable="datalim")
    rec = result["record"]
    ax.set_title((title or _title(rec)) + f"\nNC2 = {rec['nc']['NC2_H']:.1e}, captured variance "
                 f"{100 * c['captured']:.1f}%, arrows: w_k ×{c['W_scale']:.2g}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
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
    """Six panels (NC1, NC2, NC3, NC4, f − f*, ‖∇f‖ against iteration), one line per result; log y-scales."""
    axes = np.asarray(axes).ravel()
    for r_i, res in enumerate(results):
        series = dynamics_series(res)
        c = res["record"]["config"]
        label = labels[r_i] if labels else f"{c['loss']} ({c['solver']})"
        for ax, (key, name) in zip(axes, DYNAMICS_PANELS):
            x, y = series[key]
            y = np.abs(y) if key == "gap" else y
            ax.plot(x, y, color=COLORS[r_i % len(COLORS)], label=label, lw=1.4)
            ax.set_yscale("log" if key != "trace_NC4" else "symlog", **({"linthresh": 1e-3} if key == "trace_NC4" else {}))
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
    ax.axvspan(-ztol, ztol, color=COLORS[7], alpha=0.4,
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


def phase_table(df, x: str = "K", y: str = "lam_W", color: str = "NC2_W"):
    """The heatmap's values: ``color`` pivoted over (y, x), the mean over any other axes (categories: the
    most frequent). Rows sorted by y, columns by x."""
    import pandas as pd

    if color not in df.columns:
        raise UFMInputError("--color", color, "not a column of the sweep; try NC2_W, theory_rel_gap, classification")
    if not pd.api.types.is_numeric_dtype(df[color]) or pd.api.types.is_bool_dtype(df[color]):
        codes = {v: i for i, v in enumerate(sorted(df[color].dropna().unique()))}
        table = df.assign(_c=df[color].map(codes)).pivot_table(index=y, columns=x, values="_c",
                                                                 aggfunc=lambda s: s.mode().iloc[0])
        return table.sort_index().sort_index(axis=1), codes
    table = pd.pivot_table(df, index=y, columns=x, values=color, aggfunc="mean")
    return table.sort_index().sort_index(axis=1), None


def plot_phase(ax, result: dict, x: str = "K", y: str = "lam_W", color: str = "NC2_W"):
    """Heatmap of ``color`` over (x, y) from a sweep, with the trivial-collapse boundary √(nλ_Wλ_H) = φ′(0)
    (λ_W = λ_H = λ: λ = φ′(0)/√n) drawn over it for a softmax loss."""
    df = result["df"]
    table, codes = phase_table(df, x, y, color)
    xs, ys = table.columns.to_numpy(), table.index.to_numpy()
    vals = table.to_numpy(dtype=float)
    if codes is None and color.startswith(("NC", "theory_rel_gap", "theory_gap", "grad_norm")):
        from matplotlib.colors import LogNorm

        pos = np.abs(vals[np.isfinite(vals)])
        pos = pos[pos > 0]
        norm = LogNorm(vmin=max(pos.min(), 1e-16), vmax=pos.max()) if pos.size else None
        vals = np.abs(vals)
    else:
        norm = None
    mesh = ax.pcolormesh(np.arange(len(xs) + 1), np.arange(len(ys) + 1), np.ma.masked_invalid(vals), cmap=CMAP,
                         norm=norm, shading="flat")
    cb = ax.figure.colorbar(mesh, ax=ax)
    if codes:
        cb.set_ticks(list(codes.values()))
        cb.set_ticklabels(list(codes.keys()))
    cb.set_label(color)
    ax.set_xticks(np.arange(len(xs)) + 0.5, [f"{v:g}" for v in xs])
    ax.set_yticks(np.arange(len(ys)) + 0.5, [f"{v:.2g}" for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel({"lam_W": "λ_W", "lam_H": "λ_H", "lam_b": "λ_b"}.get(y, y))
    losses = df["loss"].unique()
    if x == "K" and y in ("lam_W", "lam_H") and len(losses) == 1 and losses[0] in ("ce", "ls", "fl") \
            and (df["lam_W"] == df["lam_H"]).all() and df["n"].nunique() == 1:
        from .theory import phi_prime0
        from .losses import as_loss

        row = df.iloc[0]
        kw = {"ce": {}, "ls": {"alpha": row["alpha"]}, "fl": {"gamma": row["gamma"]}}[losses[0]]
        n = int(row["n"])
        boundary = [phi_prime0(as_loss(losses[0], **kw), int(K)) / np.sqrt(n) for K in xs]
        # map λ to the heatmap's row coordinate by log interpolation between row centres
        yc = np.interp(np.log(boundary), np.log(ys.astype(float)), np.arange(len(ys)) + 0.5, left=np.nan, right=np.nan)
        ax.plot(np.arange(len(xs)) + 0.5, yc, "w--", lw=2, label="√(nλ_Wλ_H) = φ′(0)")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{color} over {x} × {y} ({len(df)} points, {', '.join(map(str, losses))})", fontsize=9)
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
    ax_line.axvline(0, color="#595959", lw=0.6)
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
