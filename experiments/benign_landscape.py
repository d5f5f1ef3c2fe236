"""Experiment 3 — the benign landscape, measured: censuses of critical points, escapes, FL at small and large K,
and MSE's geometry with and without a bias.

    python experiments/benign_landscape.py [--out figures] [--quick]

LS and CE at d > K (Thm 3.2; Zhu et al. 2021): every critical point a census finds should be a global minimiser or
a strict saddle, and every escape along negative curvature should reach the optimum. FL: the same census at small
and at large K, with whatever appears reported as measured (only a local result is claimed for FL). MSE: the
solution's geometry with a free bias (simplex ETF) and without a bias (orthogonal frame). Writes
``benign_landscape.md``, ``spectrum_ls_saddle.png`` and ``slice_ls_saddle.png``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import ufm
from ufm import plots
from ufm.landscape import save_landscape

FIGURES = pathlib.Path(__file__).resolve().parents[1] / "figures"


def census_row(name, prob, starts):
    t = time.perf_counter()
    cs = ufm.census(prob, starts)
    classes = [p.classification for p in cs.points]
    saddles = [p for p in cs.points if p.classification == "strict_saddle"]
    to_global = sum(p.escape["classification"] == "global_minimizer" for p in saddles)
    ends = [p.escape["classification"] for p in saddles]
    f_nc = ufm.theory_optimum(prob).objective          # the NC value; for FL at large K only an upper bound
    off = max((abs(p.escape["objective"] - f_nc) for p in saddles), default=float("nan"))
    row = (f"| {name} | {prob.K} | {prob.d} | {prob.n} | {prob.lam_W:g} | {starts} | {cs.converged} | {len(classes)} | "
           + ", ".join(f"{classes.count(c)} {c}" for c in sorted(set(classes))) + f" | {to_global}/{len(saddles)} | "
           + ", ".join(f"{ends.count(c)} {c}" for c in sorted(set(ends))) + f" | {off:.1e} | "
           f"{min((p.min_eig for p in saddles), default=float('nan')):.3g} | {time.perf_counter() - t:.0f} s |")
    return row, cs


def parse_args(argv=None):
    """The flags; ``--out`` defaults to the tracked figures/, or with ``--quick`` to the git-ignored figures/quick/, so
    a reduced run never overwrites a committed figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output folder (default figures/; with --quick figures/quick/, git-ignored)")
    ap.add_argument("--quick", action="store_true", help="fewer starts, small K only (for the test suite)")
    args = ap.parse_args(argv)
    args.out = args.out or str(FIGURES / "quick" if args.quick else FIGURES)
    return args


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"writing to {args.out}")
    t0 = time.perf_counter()
    starts = 4 if args.quick else 16
    rows = ["| loss | K | d | n | λ | starts | converged | distinct points | classes | escapes → global | "
            "escapes end as | max \\|f_end − f_NC\\| | most negative λ_min | time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    benign = True
    cases = [("LS α=0.1", ufm.Problem.create(3, 4, 2, lam=0.05, loss="ls", alpha=0.1)),
             ("CE", ufm.Problem.create(3, 4, 2, lam=0.05, loss="ce")),
             ("FL γ=2 (small K)", ufm.Problem.create(3, 4, 2, lam=0.05, loss="fl", gamma=2.0))]
    if not args.quick:
        cases += [("LS α=0.1", ufm.Problem.create(5, 7, 2, lam=0.02, loss="ls", alpha=0.1)),
                  ("FL γ=2 (large K)", ufm.Problem.create(20, 21, 1, lam=0.003, loss="fl", gamma=2.0))]
    ls_saddle = None
    for name, prob in cases:
        row, cs = census_row(name, prob, starts)
        rows.append(row)
        if not name.startswith("FL"):
            benign &= all(p.classification in ("global_minimizer", "strict_saddle") for p in cs.points)
            benign &= all(p.escape["classification"] == "global_minimizer" for p in cs.points if p.escape)
        if name.startswith("LS") and ls_saddle is None:
            ls_saddle = next((p for p in cs.points if p.classification == "strict_saddle" and p.rank_W > 0), None)
            ls_prob = prob

    mse = ["", "| MSE (κ = 3, β = 2, λ = 0.02, K = 4, d = 6, n = 5) | class | NC2_W centred | NC2_W uncentred | theory geometry |",
           "|---|---|---|---|---|"]
    for label, kw in [("free bias", dict(lam_b=0.0)), ("no bias", dict(bias=False))]:
        prob = ufm.Problem.create(4, 6, 5, lam=0.02, loss="mse", kappa=3.0, beta=2.0, **kw)
        sol = ufm.solve(prob)
        rec = ufm.solution_record(sol)
        cp = ufm.analyze_point(prob, sol.params)
        mse.append(f"| {label} | {cp.classification} | {rec['nc']['NC2_W']:.1e} | {rec['nc']['NC2_W_uncentred']:.3f} | "
                   f"{rec['theory']['geometry']} |")

    if ls_saddle is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "saddle.npz")
            rec = {"config": {**ls_prob.config()}, "tolerances": {"zero_tol": [ls_saddle.zero_tol]},
                   "critical_points": [ls_saddle.record()]}
            save_landscape(ls_prob, [ls_saddle], ufm.report.json_safe(rec), path)
            res = plots.load_result(path, "landscape")
            fig, ax = plt.subplots(figsize=(7, 4.5))
            plots.plot_spectrum(ax, res)
            fig.tight_layout()
            fig.savefig(os.path.join(args.out, "spectrum_ls_saddle.png"), dpi=110)
            plt.close(fig)
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
            plots.plot_slice(a1, a2, res)
            fig.tight_layout()
            fig.savefig(os.path.join(args.out, "slice_ls_saddle.png"), dpi=110)
            plt.close(fig)

    summary = (f"LS and CE censuses benign (only global minimisers and strict saddles, every escape to the optimum): "
               f"{benign}; {time.perf_counter() - t0:.0f} s")
    text = "# The benign landscape, measured (experiments/benign_landscape.py)\n\n" + "\n".join(rows + mse) + \
        f"\n\n{summary}\n"
    with open(os.path.join(args.out, "benign_landscape.md"), "w") as fh:
        fh.write(text)
    print(text)
    print("claim holds" if benign else "CLAIM FAILS")
    return 0 if benign else 1


if __name__ == "__main__":
    raise SystemExit(main())
