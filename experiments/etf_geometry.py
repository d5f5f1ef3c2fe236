"""Experiment: the learned geometry is a simplex ETF for CE, LS and FL, and for MSE with a free bias, at K = 3 and 4.

    python experiments/etf_geometry.py [--out figures] [--quick]

Solves the four losses on the same UFM instance (K = 3, d = 4 and K = 4, d = 6; n = 10, λ = 5e-3; MSE with a free
bias), saves each solution, draws one panel per loss with `ufm plot etf`'s code, and writes
``figures/etf_k3.png``, ``figures/etf_k4.png`` and ``figures/etf_geometry.md`` (the NC numbers behind them).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import ufm
from ufm import plots

LOSSES = [("ce", {}, None), ("ls", dict(alpha=0.1), None), ("fl", dict(gamma=2.0), None), ("mse", dict(kappa=1.0), 0.0)]

FIGURES = pathlib.Path(__file__).resolve().parents[1] / "figures"


def parse_args(argv=None):
    """The flags; ``--out`` defaults to the tracked figures/, or with ``--quick`` to the git-ignored figures/quick/, so
    a reduced run never overwrites a committed figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output folder (default figures/; with --quick figures/quick/, git-ignored)")
    ap.add_argument("--quick", action="store_true", help="n = 4 instead of 10 (for the test suite)")
    args = ap.parse_args(argv)
    args.out = args.out or str(FIGURES / "quick" if args.quick else FIGURES)
    return args


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"writing to {args.out}")
    rows = ["| K | d | loss | status | ‖∇f‖ | f − f* | NC1 | NC2 (means) | NC3 |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for K, d in [(3, 4), (4, 6)]:
            fig = plt.figure(figsize=(4.2 * len(LOSSES), 4.4))
            for i, (loss, kw, lam_b) in enumerate(LOSSES):
                prob = ufm.Problem.create(K, d, 4 if args.quick else 10, lam=5e-3, lam_b=lam_b, loss=loss, **kw)
                sol = ufm.solve(prob)
                rec = ufm.solution_record(sol)
                path = os.path.join(tmp, f"{loss}_{K}.npz")
                ufm.save_npz(sol, path, rec)
                ax = fig.add_subplot(1, len(LOSSES), i + 1, projection="3d" if K == 4 else None)
                plots.plot_etf(ax, plots.load_result(path, "solution"))
                nc = rec["nc"]
                rows.append(f"| {K} | {d} | {loss} | {rec['status']} | {rec['grad_norm']:.1e} | "
                            f"{rec['theory']['gap']:.1e} | {nc['NC1']:.1e} | {nc['NC2_H']:.1e} | {nc['NC3']:.1e} |")
            fig.tight_layout()
            out = os.path.join(args.out, f"etf_k{K}.png")
            fig.savefig(out, dpi=110)
            plt.close(fig)
            print(f"wrote {out}")
    table = os.path.join(args.out, "etf_geometry.md")
    with open(table, "w") as fh:
        fh.write("# Simplex-ETF geometry across losses (experiments/etf_geometry.py)\n\n" + "\n".join(rows) + "\n")
    print(f"wrote {table}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
