"""The deep UFM's figures: the DNC phase map holds, cell by cell, the best value over seeds against the DNC value and
the winner's logit rank; the per-layer curves hold the record's numbers; both write an image with the right axes."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ufm import plots
from ufm.errors import UFMInputError
from ufm.store import COLUMNS


def _row(**kw):
    row = {c: None for c in COLUMNS}
    row.update(d=12, n=1, minority=0, ratio=1.0, loss="ce", lam_H=3e-3, lam_b=None, bias="none", solver="auto",
               gtol=1e-9, rtol=1e-6, max_steps=10000, init_scale=1.0, analyze=False, census=0, hessian="auto",
               status="converged", converged=True)
    row.update(kw)
    return row


def _sweep():
    """Rows of a (K, L) sweep with known numbers: two seeds each, the search where given, depth 1 from theory."""
    rows, rng = [], np.random.default_rng(0)
    truth = {}
    for K in (3, 4, 10):
        rows += [_row(K=K, lam_W=3e-3, depth=1, seed=s, objective=0.2 + K / 100, theory_objective=0.2 + K / 100,
                      theory_geometry="simplex_etf") for s in (0, 1)]
        truth[(1, K)] = (0.0, K - 1)
        for L in (2, 3):
            f_dnc = 0.1 + K / 100 + L / 1000
            # seed values: DNC reached at K ≤ 4 (one seed a bit worse), beaten by a rank-2 point at K = 10
            best = f_dnc * (0.8 if K == 10 else 1.0)
            for s in (0, 1):
                f = best if s == 1 else best * 1.05
                rows.append(_row(K=K, lam_W=3e-3, depth=L, activation="linear", low_rank_starts=4, seed=s,
                                 objective=f, dnc_objective=f_dnc, best_found=f, best_found_rank=2 if K == 10 else K - 1,
                                 deep_layers=json.dumps([]), logit_rank=2))
            truth[(L, K)] = ((best - f_dnc) / f_dnc, 2 if K == 10 else None)
        # a ReLU row that must not enter a linear map
        rows.append(_row(K=K, lam_W=3e-3, depth=2, activation="relu", seed=0, objective=9.0, dnc_objective=1.0,
                         best_found=9.0, best_found_rank=1))
    return pd.DataFrame(rows)[COLUMNS], truth


def test_phase_table_is_the_best_over_seeds_against_dnc():
    df, truth = _sweep()
    gap, rank, beaten = plots.dnc_phase_table(df, "K", "depth")
    assert list(gap.index) == [1, 2, 3] and list(gap.columns) == [3, 4, 10]
    for (L, K), (g, r) in truth.items():
        assert gap.loc[L, K] == pytest.approx(g, abs=1e-15)
        assert bool(beaten.loc[L, K]) == (g < -1e-9)
        if r is not None:
            assert rank.loc[L, K] == r


def test_phase_figure_cells_and_annotations(tmp_path):
    df, truth = _sweep()
    fig, ax = plt.subplots()
    plots.plot_dnc_phase(ax, df, "K", "depth")
    assert ax.get_xlabel() == "K" and ax.get_ylabel() == "depth L"
    mesh = ax.collections[0]
    shown = np.asarray(mesh.get_array()).reshape(3, 3)
    for i, L in enumerate((1, 2, 3)):
        for j, K in enumerate((3, 4, 10)):
            assert shown[i, j] == pytest.approx(min(truth[(L, K)][0], 0.0), abs=1e-15)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts.count("r=2") == 2 and texts.count("DNC") == 7
    plt.close(fig)
    # no start reaching f_DNC: still "not beaten", marked as unconfirmed
    worse = df.assign(best_found=np.where((df.depth == 2) & (df.K == 3), df.best_found * 1.5, df.best_found))
    fig, ax = plt.subplots()
    plots.plot_dnc_phase(ax, worse, "K", "depth")
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("DNC*") == 1 and texts.count("DNC") == 6
    out = tmp_path / "phase.png"
    fig.savefig(out)
    plt.close(fig)
    assert out.stat().st_size > 1000


def test_phase_over_lambda_and_depth(tmp_path):
    df, _ = _sweep()
    df2 = df.copy()
    df2["lam_W"] = 1e-2
    df2["lam_H"] = 1e-2
    both = pd.concat([df, df2], ignore_index=True)
    fig, ax = plt.subplots()
    plots.plot_dnc_phase(ax, both, "lam_W", "depth", where=["K=10"])
    assert ax.get_xlabel().startswith("λ") and ax.get_xscale() == "linear" and ax.get_ylabel() == "depth L"
    assert "K=10" in ax.get_title()
    plt.close(fig)


def test_phase_refuses_what_it_cannot_show():
    df, _ = _sweep()
    with pytest.raises(UFMInputError, match="--activation"):
        plots.dnc_phase_table(df, activation="tanh")
    mixed = pd.concat([df, df.assign(loss="mse")], ignore_index=True)
    with pytest.raises(UFMInputError, match="pools seeds only"):
        plots.dnc_phase_table(mixed)


def test_layer_curves_hold_the_record(tmp_path):
    layers = [{"layer": 0, "width": 5, "DNC1": 1e-3, "DNC2_ETF": 0.5, "DNC2_OF": 0.6, "DNC3": 0.0, "rank": 4},
              {"layer": 1, "width": 5, "DNC1": 1e-5, "DNC2_ETF": 0.2, "DNC2_OF": 0.3, "DNC3": 0.0, "rank": 3},
              {"layer": 2, "width": 5, "DNC1": 0.0, "DNC2_ETF": 1e-8, "DNC2_OF": 0.1, "DNC3": 0.0, "rank": 3}]
    rec = {"deep_nc": {"layers": layers, "logit_rank": 3, "logit_singular_values": [1, 1, 1]}}
    fig, axes = plt.subplots(1, 3)
    plots.plot_layer_curves(axes, rec, title="test")
    np.testing.assert_array_equal(axes[0].lines[0].get_ydata(), [1e-3, 1e-5, 0.0])
    np.testing.assert_array_equal(axes[1].lines[1].get_ydata(), [0.6, 0.3, 0.1])
    np.testing.assert_array_equal(axes[2].lines[0].get_ydata(), [4, 3, 3, 3])
    assert axes[0].get_yscale() == "log" and [t.get_text() for t in axes[2].get_xticklabels()][-1] == "logits"
    # a sweep row carries the same numbers as JSON text
    row = {"deep_layers": json.dumps(layers), "logit_rank": 3}
    assert plots.layer_series(row)["DNC2_OF"].tolist() == [0.6, 0.3, 0.1]
    out = tmp_path / "layers.svg"
    fig.savefig(out)
    plt.close(fig)
    assert out.stat().st_size > 1000
    with pytest.raises(UFMInputError, match="per-layer"):
        plots.layer_series({"objective": 1.0})
