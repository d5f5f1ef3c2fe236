"""Depth, activation and widths as sweep axes (docs/theory.md §12): a tiny deep sweep end to end against values
measured independently (docs/theory.md §12.6), depth-1 points exactly as a sweep without depth gives them (same
keys, same rows), and bad axis values refused before any work (exit 2, one line, nothing stored)."""

import json
import random

import pandas as pd
import pytest

from ufm.cli import main
from ufm.grid import build_grid, point_key
from ufm.store import load_sweep
from ufm.sweep import _grid_identity

# (K, d, n, λ) = (4, 4, 3, 3e-3), CE, no bias, L = 2: f_DNC = 0.07169435 and DNC not beaten — measured with L-BFGS-B on
# an independent JAX objective (docs/theory.md §12.6); seed 2 at --init-scale 1 reaches it
POINT = ["-K", "4", "-d", "4", "-n", "3", "--lam", "3e-3", "--bias", "none", "--seed", "2", "--init-scale", "1"]
F_DNC_4_2 = 0.07169435
#: the key and the grid identity of this depth-1 point as ufm computed them before the deep axes existed (commit
#: 8233a54): a store written then resumes now
OLD_KEY = "69aa8ac08d071625a81642fa9e3e805b1b180339"
OLD_GRID_KEY = "a53cf60aa3e26477e6551a8380dfd5f5882e6366"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("deep_sweep")
    plain, deep = d / "plain.db", d / "deep.db"
    assert main(["sweep", *POINT, "--store", str(plain), "--quiet"]) == 0
    assert main(["sweep", *POINT, "--depth", "1,2", "--activation", "linear",
                 "--store", str(deep), "--export", str(d / "deep.csv"), "--quiet"]) == 0
    return load_sweep(plain), load_sweep(deep), pd.read_csv(d / "deep.csv")


def test_deep_point_carries_the_deep_record(stores):
    _, df, csv = stores
    row = df[df.depth == 2].iloc[0]
    assert row.status == "converged" and row.activation == "linear" and row.low_rank_starts == 4
    # 1e-7: the independent measurement's printed digits (8 significant)
    assert row.objective == pytest.approx(F_DNC_4_2, abs=1e-7)
    assert row.dnc_objective == pytest.approx(F_DNC_4_2, abs=1e-7)
    # the search's default 4 starts per inner width find it too (docs/theory.md §12.6)
    assert row.low_rank_objective == pytest.approx(F_DNC_4_2, abs=1e-7)
    assert row.dnc_geometry == "simplex_etf" and bool(row.dnc_optimal_so_far)
    # the simplex ETF's logits have rank K − 1; the best found is the solution (the search only ties it)
    assert row.best_found_rank == 3 and row.logit_rank == 3 and row.best_found_from == "solution"
    assert abs(row.best_found_rel_gap) < 1e-9 and abs(row.dnc_rel_gap) < 1e-9
    layers = json.loads(row.deep_layers)
    assert [r["layer"] for r in layers] == [0, 1] and [r["rank"] for r in layers] == [3, 3]
    # at the DNC point every layer's classes are collapsed onto a simplex ETF (round-off of a converged solve)
    assert max(max(r["DNC1"], r["DNC2_ETF"]) for r in layers) < 1e-6
    assert len(json.loads(row.W_fro_sq_layers)) == 2
    assert len(csv) == 2 and set(csv.depth) == {1, 2}


def test_depth_one_rows_are_those_of_a_sweep_without_depth(stores):
    plain, deep, _ = stores
    one = deep[deep.depth == 1]
    assert len(plain) == 1 and len(one) == 1
    assert plain.key.iloc[0] == one.key.iloc[0] == OLD_KEY
    timing = {"solve_time_s", "time_s", "analyze_time_s", "census_time_s", "finished_at", "run", "grid", "key",
              "depth", "activation", "widths", "low_rank_starts"}
    a, b = plain.iloc[0], one.iloc[0]
    for col in plain.columns:
        if col not in timing:
            assert (pd.isna(a[col]) and pd.isna(b[col])) or a[col] == b[col], col
    # a deep-only column stays empty at depth 1; only the depth column says what it is
    assert pd.isna(b.activation) and pd.isna(b.dnc_objective) and a.depth == b.depth == 1
    grid = build_grid(None, {"K": 4, "d": 4, "n": 3, "lam": 3e-3, "seed": 2, "bias": "none", "init_scale": 1.0})
    assert _grid_identity(grid)[0] == OLD_GRID_KEY
    assert point_key(grid.points()[0], grid.options) == OLD_KEY


def test_duplicate_depth_one_points_are_one_point():
    """At depth 1 activation and widths mean nothing: ``--depth 1,2 --activation linear,relu`` has 3 points."""
    g = build_grid(None, {"K": 3, "d": 3, "n": 1, "depth": "1,2", "activation": "linear,relu", "widths": "3"})
    g.validate()
    keys = {point_key(p, g.options) for p in g.points()}
    assert len(keys) == 3


TINY = ["-K", "3", "-d", "3", "-n", "1", "--lam", "0.01"]


def _refused(capsys, tmp_path, args, flag):
    store = tmp_path / "s.db"
    try:
        code = main(["sweep", *TINY, *args, "--store", str(store)])
    except SystemExit as e:            # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flag in err and "Traceback" not in err, (args, err)
    assert not store.exists(), "bad input must store nothing"


def _bad_values(rng):
    """Generated bad values of each deep axis, with the flag the message must name."""
    ints_bad = ["0", "-1", "33", "1.5", "x", "", "2,", "true", "range:0:2", "lin:0:2:3", str(rng.randint(33, 10**6)),
                str(-rng.randint(1, 10**6)), f"{rng.randint(2, 9)}.{rng.randint(1, 9)}"]
    for v in ints_bad:
        yield ["--depth", v], "--depth"
    for v in ["0", "-3", "2.5", "w", "", str(-rng.randint(1, 10**6))]:
        yield ["--depth", "2", "--widths", v], "--widths"
    for v in ["tanh", "", "RELU", "relu,", "linear,sigmoid", "".join(rng.choice("abcxyz") for _ in range(5))]:
        yield ["--depth", "2", "--activation", v], "--activation"
    # meaningful only at depth ≥ 2: refused when every depth is 1
    yield ["--activation", "relu"], "--activation"
    yield ["--depth", "1", "--widths", "4"], "--widths"
    # the Hessian analysis, a user loss and a zero λ with others positive are depth-1 only
    yield ["--depth", "2", "--analyze"], "--analyze"
    yield ["--depth", "1,2", "--census", "2"], "--census"
    yield ["--depth", "2", "--loss", "ce,math:sin"], "--loss"
    yield ["--depth", "2", "--lam-w", "0"], "--lam-w"
    for v in ["-1", "x", "65"]:
        yield ["--depth", "2", "--low-rank-starts", v], "--low-rank-starts"


@pytest.mark.parametrize("case", list(_bad_values(random.Random(13))), ids=lambda c: " ".join(c[0]) or "empty")
def test_bad_deep_axis_values_exit_2(capsys, tmp_path, case):
    args, flag = case
    _refused(capsys, tmp_path, args, flag)


@pytest.mark.parametrize("toml, flag", [
    ("depth = true", "--depth"), ("depth = [2, 0]", "--depth"), ("activation = 3", "--activation"),
    ("depth = 2\nactivation = ['linear', 'gelu']", "--activation"), ("depth = 2\nwidths = -1", "--widths"),
    ("depth = 2\nlow_rank_starts = -2", "--low-rank-starts"), ("widths = 5", "--widths"),
])
def test_bad_deep_toml_values_exit_2(capsys, tmp_path, toml, flag):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(toml + "\n")
    _refused(capsys, tmp_path, ["--config", str(cfg)], flag)
