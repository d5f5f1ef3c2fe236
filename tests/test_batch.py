"""ufm.batch: a shape's solves under vmap agree with lone solves, and sweeps can use it."""

import json

import numpy as np
import pytest

import ufm
from ufm.batch import solve_batch
from ufm.cli import main
from ufm.errors import UFMInputError
from ufm.methods import Status
from ufm.model import flatten

LAMS = (1e-3, 5e-3, 2e-2)


# one loss in the default run, the others in the slow tier (each compiles a vmapped Newton-CG chain, ~20 s loaded)
@pytest.mark.parametrize("loss,bias", [("mse", False), pytest.param("ce", True, marks=pytest.mark.slow),
                                       pytest.param("fl", True, marks=pytest.mark.slow)])
def test_batch_equals_lone_solves(loss, bias):
    problems = [ufm.Problem.create(K=3, d=4, n=3, lam=lam, loss=loss, bias=bias) for lam in LAMS]
    seeds = [0, 7, 3]
    batch = solve_batch(problems, seeds)
    for p, s, sb in zip(problems, seeds, batch):
        lone = ufm.solve(p, seed=s)
        assert sb.status == lone.status and sb.converged
        # the same method on the same start: only the order of reductions inside vmap may differ, so f agrees to
        # round-off (the step count may differ where a path is sensitive to the last bit: not asserted)
        assert abs(sb.objective - lone.objective) <= 1e-13 * abs(lone.objective)
        assert np.allclose(flatten(sb.params, xp=np), flatten(lone.params, xp=np), rtol=0, atol=1e-8)
        assert (sb.seed, sb.gtol, sb.rtol) == (s, lone.gtol, lone.rtol)
        assert len(sb.trace_objective) == sb.steps + 1 == len(lone.trace_objective) - lone.steps + sb.steps


@pytest.mark.slow   # time (5 s); batch-equals-lone-solves stays in the default run
def test_batch_stops_each_point_on_its_own():
    # one point cannot converge in 3 steps, one blows up: each keeps its own status while the others finish
    problems = [ufm.Problem.create(K=3, d=4, n=3, lam=lam) for lam in (5e-3, 5e-3)]
    out = solve_batch(problems, [0, 1], solver="gd", max_steps=3, init_scale=0.1)
    assert [s.status for s in out] == [Status.MAX_STEPS, Status.MAX_STEPS] and all(s.steps == 3 for s in out)
    out = solve_batch(problems, [0, 1], init_scale=1e200)
    assert all(s.status == Status.NONFINITE for s in out)


def test_batch_refuses_mixed_shapes_and_seed_counts():
    a, b = ufm.Problem.create(K=3, d=4, n=3), ufm.Problem.create(K=3, d=5, n=3)
    with pytest.raises(UFMInputError, match="one shape"):
        solve_batch([a, b], [0, 1])
    with pytest.raises(UFMInputError, match="one seed per problem"):
        solve_batch([a, a], [0])
    with pytest.raises(UFMInputError, match="--seed"):
        solve_batch([a], [-1])


@pytest.mark.slow            # two sweeps (~13 s loaded)
def test_sweep_batched_rows_match_the_loop(tmp_path, capsys):
    argv = ["sweep", "-K", "3", "-d", "4", "-n", "3", "--lam", "1e-3,1e-2", "--seed", "0,1", "--quiet", "--json"]
    rows = {}
    for mode in ("on", "off"):
        store = tmp_path / f"{mode}.db"
        assert main(argv + ["--store", str(store), "--batch", mode]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["batched"] is (mode == "on")
        assert any("vmap" in n for n in summary["notes"]) is (mode == "on")
        rows[mode] = ufm.load_sweep(str(store)).sort_values(["lam_W", "seed"]).reset_index(drop=True)
    on, off = rows["on"], rows["off"]
    assert list(on.status) == list(off.status) == ["converged"] * 4
    assert np.allclose(on.objective, off.objective, rtol=1e-13, atol=0)
    assert np.allclose(on.theory_gap, off.theory_gap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", ["yes", "ON", ""])
def test_bad_batch_flag_exits_2(bad, tmp_path, capsys):
    code = None
    try:
        code = main(["sweep", "-K", "3", "-d", "4", "-n", "3", "--store", str(tmp_path / "x.db"), "--batch", bad])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "--batch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_batch_in_toml_is_checked(tmp_path, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text('K = [3]\nd = [4]\nn = [3]\nbatch = "sometimes"\n')
    assert main(["sweep", "--config", str(cfg), "--store", str(tmp_path / "x.db")]) == 2
    assert "batch" in capsys.readouterr().err
