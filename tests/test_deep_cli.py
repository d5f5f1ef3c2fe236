"""`ufm solve --depth L`: the record (JSON and human), bad input, depth 1 unchanged, and the measured rows of
docs/theory.md §12.6 reproduced from several seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ufm.cli import main


def run(capsys, *args):
    code = main(["solve", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_depth_one_is_bit_for_bit_eq7(capsys):
    """--depth 1 (and relu at depth 1, where σ never acts) runs eq. (7)'s code path: the same record to the last
    bit, wall time aside."""
    base = ["-K", "4", "-d", "6", "-n", "5", "--lam", "5e-3", "--loss", "ls", "--alpha", "0.1"]
    recs = [run(capsys, *base, *extra)[1] for extra in ([], ["--depth", "1"], ["--depth", "1", "--activation", "relu"])]
    for r in recs:
        r.pop("wall_time_s")
    assert recs[0] == recs[1] == recs[2]
    assert "depth" not in recs[0]["config"]              # the store and the cache see today's problem


@pytest.mark.slow            # end-to-end CLI compile at depth (~15 s); the bit-for-bit depth-1 test stays in the default run
def test_deep_record_json_and_human(capsys, tmp_path):
    args = ["-K", "4", "-d", "4", "-n", "3", "--lam", "3e-3", "--no-bias", "--depth", "2", "--init-scale", "1",
            "--seed", "2"]
    code, rec = run(capsys, *args, "--no-bounds")
    assert code == 0 and rec["status"] == "converged" and rec["grad_norm"] <= 1e-9
    th = rec["theory"]
    # docs/theory.md §12.6: DNC is optimal at (K, n, L) = (4, 3, 2): the solve, DNC and the search agree
    assert th["dnc_objective"] == pytest.approx(0.07169435, abs=1e-8)
    assert abs(rec["objective"] - th["dnc_objective"]) <= 1e-9 and th["certified"] is False
    assert th["low_rank"] is None and th["dnc_optimal_so_far"] is True
    assert th["best_upper_from"] in ("dnc", "solution")       # equal to round-off: either may be the least
    layers = rec["deep_nc"]["layers"]
    assert [row["layer"] for row in layers] == [0, 1] and rec["deep_nc"]["logit_rank"] == 3
    for row in layers:        # deep neural collapse at every layer: ETF class means, next layer in their span
        assert row["DNC1"] <= 1e-8 and row["DNC2_ETF"] <= 1e-6 and row["DNC3"] <= 1e-8 and row["rank"] == 3
        assert row["DNC2_OF"] > 0.1
    assert len(rec["W_fro_sq"]) == 2 and rec["config"]["depth"] == 2 and rec["config"]["widths"] == [4]
    save = tmp_path / "deep.npz"
    assert main(["solve", *args, "--no-bounds", "--save", str(save)]) == 0
    out = capsys.readouterr().out
    for text in ("deep UFM", "DNC value", "best upper bound", "nothing certifies", "DNC2 ETF", "logits: rank 3"):
        assert text in out, text
    with np.load(save) as z:
        assert {"W1", "W2", "H", "labels", "record"} <= set(z.files) and z["W2"].shape == (4, 4)
        assert json.loads(str(z["record"]))["theory"]["low_rank"] is None          # --no-bounds skipped it


@pytest.mark.slow       # the low-rank search compiles a batched L-BFGS (~10 s)
def test_deep_record_low_rank_search(capsys):
    code, rec = run(capsys, "-K", "4", "-d", "4", "-n", "3", "--lam", "3e-3", "--no-bias", "--depth", "3",
                    "--init-scale", "1", "--seed", "1")
    th = rec["theory"]
    # docs/theory.md §12.6: at (4, 3, 3) a rank-2 point beats DNC; the search finds it and so does seed 1
    assert th["low_rank"]["best_rank"] == 2 and th["low_rank"]["best_objective"] == pytest.approx(0.05964264, abs=1e-8)
    assert th["dnc_optimal_so_far"] is False and th["best_upper_bound"] <= 0.05964265
    assert rec["deep_nc"]["logit_rank"] == 2 and th["gap"] < -5e-3


@pytest.mark.slow
def test_relu_deep_record(capsys):
    code, rec = run(capsys, "-K", "3", "-d", "4", "-n", "2", "--lam", "5e-3", "--depth", "3", "--activation", "relu",
                    "--widths", "5,3", "--lam-layers", "5e-3,1e-2,2e-3", "--no-bounds")
    assert rec["status"] in ("converged", "stalled", "max_steps")       # ReLU kinks can stall a smooth solver
    assert rec["config"]["lam_layers"] == [5e-3, 1e-2, 2e-3] and rec["theory"]["low_rank"] is None
    assert rec["theory"]["dnc_objective"] is not None and rec["objective"] is not None
    assert [row["width"] for row in rec["deep_nc"]["layers"]] == [4, 5, 3]


@pytest.mark.parametrize("argv,flag", [
    (["--depth", "0"], "--depth"), (["--depth", "2", "--widths", "3,4"], "--widths"),
    (["--depth", "3", "--lam-layers", "1e-3,2e-3"], "--lam-layers"), (["--widths", "3"], "--widths"),
    (["--depth", "2", "--activation", "tanh"], "--activation"), (["--depth", "2", "--trace-every", "5"],
                                                                 "--trace-every"),
    (["--depth", "2", "--lam-layers", "0,1e-3"], "--lam-layers"), (["--depth", "2", "--loss", "nope"], "--loss"),
])
def test_bad_input_exit_2(capsys, argv, flag):
    try:
        code = main(["solve", "-K", "3", "-d", "4", "-n", "2", *argv])
    except SystemExit as exc:          # argparse's own checks (types, choices) exit from inside parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("\n") == 1


# docs/theory.md §12.6 (measured independently with L-BFGS-B on its own JAX objective): CE, no bias, λ equal on every
# factor, d = widths. Each row's value must be found by `ufm solve --depth L` from one of a few seeds (start scale
# 1), to 1e-7 (the table's 8 decimals).
ROWS = [  # K, d, n, L, λ, value, seeds
    (4, 4, 3, 2, 3e-3, 0.07169435, (2, 3)),
]
SLOW_ROWS = [
    (10, 10, 1, 2, 3e-3, 0.13632222, (0, 2)), (10, 10, 1, 1, 3e-3, 0.18347904, (0, 1)),
    (10, 10, 1, 3, 3e-3, 0.11552263, (4,)),  # seed 0 now lands in the lower 0.11492782 basin
    (10, 10, 1, 4, 3e-3, 0.10001189, (5,)),
    (10, 10, 1, 2, 1e-4, 0.0058891, (0, 1)), (10, 10, 1, 2, 1e-3, 0.0500167, (0, 2)),
    (10, 10, 1, 2, 1e-2, 0.4004001, (0, 2)), (4, 4, 3, 3, 3e-3, 0.05964264, (1, 2)),
    (10, 20, 1, 2, 3e-3, 0.13632222, (1, 2)),
]


def _reproduce(capsys, K, d, n, L, lam, value, seeds):
    for seed in seeds:
        code, rec = run(capsys, "-K", str(K), "-d", str(d), "-n", str(n), "--lam", str(lam), "--no-bias", "--depth",
                        str(L), "--init-scale", "1", "--seed", str(seed), "--no-bounds")
        assert code == 0 and rec["status"] == "converged"
        assert abs(rec["objective"] - value) <= 1e-7, (seed, rec["objective"])


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"K{r[0]}-n{r[2]}-L{r[3]}")
def test_measured_rows(capsys, row):
    _reproduce(capsys, *row)


@pytest.mark.slow
@pytest.mark.parametrize("row", SLOW_ROWS, ids=lambda r: f"K{r[0]}-d{r[1]}-L{r[3]}-lam{r[4]}")
def test_measured_rows_slow(capsys, row):
    _reproduce(capsys, *row)
