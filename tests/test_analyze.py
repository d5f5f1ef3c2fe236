"""`ufm analyze` / `ufm.analyze`: constructed last layers with known answers, a saved UFM optimum shuffled, layouts,
the λ_H estimate, and bad input (a generated fuzz) — exit 2 / UFMInputError with one line naming the array."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ufm
from ufm.cli import main
from ufm.errors import UFMInputError
from ufm.metrics import NC_KEYS
from ufm.problem import Problem
from ufm.theory import theory_point

#: float64 round-off of sums over ~100 terms of O(1) numbers, with room: what "exactly 0" means for a constructed point
EXACT = 1e-12


def shuffled(problem, params, seed=0):
    """(W, H as N×d rows in a random sample order, labels in that order, b): how a network hands its layer over."""
    W, H, b = params
    perm = np.random.default_rng(seed).permutation(problem.N)
    return W, H.T[perm], problem.labels[perm], b


def run_cli(capsys, *argv):
    code = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_exact_simplex_etf_in_any_order_is_the_optimum():
    p = Problem.create(4, 6, 5, lam_W=5e-3, lam_H=2e-3, lam_b=5e-3)
    W, H, y, b = shuffled(p, theory_point(p))
    rec = ufm.analyze(W, H, y, b, lam_W=5e-3, lam_b=5e-3, bounds=False)      # λ_H not given: estimated
    # at a UFM optimum ∇_H g = −λ_H H exactly, so the fit returns the true λ_H up to round-off
    assert rec["lam_H_estimated"] and rec["lam_H_fit"]["estimate"] == pytest.approx(2e-3, rel=1e-10)
    assert rec["lam_H_fit"]["residual"] <= EXACT and not rec["lam_H_fit"]["fallback"]
    assert rec["lam_H_fit"]["balance"] == pytest.approx(2e-3, rel=1e-10)
    assert rec["train_accuracy"] == 1.0 and rec["class_sizes"] == [5] * 4 and rec["layout"] == "rows"
    assert set(rec["nc"]) == set(NC_KEYS)
    for key in NC_KEYS:
        assert abs(rec["nc"][key]) <= EXACT, key
    assert rec["grad_norm"] <= EXACT and rec["rel_grad_norm"] <= EXACT
    assert all(rec["stationarity"][k]["rel_grad_norm"] <= EXACT for k in "WHb")
    opt, gap = rec["optimum"], rec["gap"]
    assert opt["source"] == "closed_form" and opt["certified"]
    assert abs(gap["rel_objective"]) <= EXACT
    assert abs(gap["W_fro_sq"]) <= EXACT * opt["W_fro_sq"] and abs(gap["H_fro_sq"]) <= EXACT * opt["H_fro_sq"]
    for key in ("W_gram_distance", "W_gram_distance_uncentred", "mean_gram_distance", "mean_gram_distance_uncentred"):
        assert gap[key] <= EXACT, key
    assert rec["bounds"] is None and json.dumps(rec, allow_nan=False)


def test_noisy_simplex_etf_has_the_known_nc1_and_unchanged_class_means():
    # two samples per class at μ_k ± δu, u a unit vector in the span of the means: Σ_W = δ²uuᵀ, and Σ_B = r²/(K−1)
    # on that span (‖μ_k‖ = r), so NC1 = tr(Σ_W Σ_B^†)/K = δ²(K−1)/(r²K); the class means are the ETF's exactly
    K, d, r, delta = 5, 7, 2.0, 0.3
    M = np.zeros((d, K))
    M[: K - 1] = np.linalg.qr(np.eye(K) - 1.0 / K)[0][:, : K - 1].T * r * np.sqrt(K / (K - 1))
    u = M[:, 0] - M[:, 1]
    u /= np.linalg.norm(u)
    H = np.concatenate([M.T + delta * u, M.T - delta * u])                 # rows; labels 0..K−1 twice
    y = np.tile(np.arange(K), 2)
    W = M.T.copy()
    rec = ufm.analyze(W, H, y, None, lam_W=1e-3, lam_H=1e-3, bounds=False, loss="ce")
    assert rec["nc"]["NC1"] == pytest.approx(delta**2 * (K - 1) / (r**2 * K), rel=1e-12)
    for key in ("NC2_W", "NC2_H", "NC3", "NC2_W_uncentred"):
        assert rec["nc"][key] <= EXACT, key
    assert rec["train_accuracy"] == 1.0
    assert rec["gap"]["mean_gram_distance"] <= EXACT and rec["gap"]["W_gram_distance"] <= EXACT
    assert rec["gap"]["objective"] > 0                                     # not the optimum: its scale is wrong


def test_orthogonal_frame_mse_without_bias():
    # the bias-free MSE optimum is an orthogonal frame: the centred NC2 calls it a simplex ETF (0), the uncentred one
    # measures ‖I/√K − J‖_F = √(2 − 2√((K−1)/K))
    K = 4
    p = Problem.create(K, 5, 3, lam=1e-2, bias=False, loss="mse", kappa=2.0)
    W, H, y, b = shuffled(p, theory_point(p), seed=3)
    assert b is None
    rec = ufm.analyze(W, H, y, loss="mse", kappa=2.0, lam_W=1e-2, lam_H=1e-2, bounds=False)
    assert rec["nc"]["NC2_W"] <= EXACT
    assert rec["nc"]["NC2_W_uncentred"] == pytest.approx(np.sqrt(2 - 2 * np.sqrt((K - 1) / K)), rel=1e-12)
    assert rec["optimum"]["source"] == "closed_form" and abs(rec["gap"]["rel_objective"]) <= EXACT
    assert rec["gap"]["W_gram_distance_uncentred"] <= EXACT and rec["grad_norm"] <= EXACT
    assert rec["config"]["bias"] == "none" and rec["b"] is None and rec["stationarity"]["b"] is None


def test_saved_optimum_with_unequal_class_sizes_shuffled_has_zero_gap(capsys, tmp_path):
    saved = tmp_path / "sol.npz"
    lam = ["--lam-w", "5e-3", "--lam-h", "2e-3", "--lam-b", "5e-3"]
    code = main(["solve", "-K", "3", "-d", "4", "-n", "6,3,2", *lam, "--gtol", "1e-11", "--save", str(saved),
                 "--json"])
    solved = json.loads(capsys.readouterr().out)
    assert code == 0 and solved["converged"]
    with np.load(saved) as z:                 # the UFM's layout: H is d×N, class-major
        W, H, y, b = z["W"], z["H"], z["labels"], z["b"]
    perm = np.random.default_rng(7).permutation(y.size)
    net = tmp_path / "net.npz"
    np.savez(net, W=W, H=H[:, perm], labels=y[perm], b=b)
    code, out, err = run_cli(capsys, str(net), "--layout", "columns", *lam, "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["class_sizes"] == [6, 3, 2] and rec["layout"] == "columns" and not rec["lam_H_estimated"]
    assert rec["objective"] == pytest.approx(solved["objective"], rel=1e-13)
    for key in NC_KEYS:                       # the metrics do not depend on the sample order
        assert rec["nc"][key] == pytest.approx(solved["nc"][key], rel=1e-8, abs=1e-12), key
    opt, gap = rec["optimum"], rec["gap"]
    # unequal sizes: no closed form, the convex lifting certifies the optimum (minority collapse, not an ETF)
    assert opt["source"] == "convex_lifting" and opt["certified"] and rec["bounds"]["certified"]
    assert abs(gap["rel_objective"]) <= 1e-10
    # the lifted point's A is accurate to ~√(lifting tolerance), the solve's point to gtol/curvature: 1e-6 is both
    for key in ("W_fro_sq", "H_fro_sq"):
        assert abs(gap[key]) <= 1e-6 * opt[key], key
    for key in ("W_gram_distance", "W_gram_distance_uncentred", "mean_gram_distance", "mean_gram_distance_uncentred"):
        assert gap[key] <= 1e-6, key
    assert rec["nc"]["NC2_H"] > 1e-3          # far from a simplex ETF, yet at the optimum: what the gaps are for
    # the same file without --lam-h: the estimate is the true λ_H to the stationarity the solve reached
    code, out, _ = run_cli(capsys, str(net), "--layout", "columns", "--lam-w", "5e-3", "--lam-b", "5e-3", "--json",
                           "--no-bounds")
    fit = json.loads(out)["lam_H_fit"]
    assert code == 0 and fit["estimate"] == pytest.approx(2e-3, rel=1e-8)
    # and the human table says what was estimated and how far from the optimum it is
    code, out, _ = run_cli(capsys, str(net), "--layout", "columns", *lam)
    assert code == 0 and "UFM optimum" in out and "convex lifting, certified" in out and "class sizes 6,3,2" in out


def test_rows_and_columns_layouts_give_the_same_report():
    p = Problem.create(3, 3, 1, lam=1e-2)            # N = d = 3: the layout is ambiguous from the shape alone
    W, H, y, b = shuffled(p, theory_point(p))
    rng = np.random.default_rng(5)
    H = H + 0.1 * rng.standard_normal(H.shape)
    rows = ufm.analyze(W, H, y, b, lam_W=1e-2, lam_H=1e-2, layout="rows", bounds=False)
    cols = ufm.analyze(W, H.T, y, b, lam_W=1e-2, lam_H=1e-2, layout="columns", bounds=False)
    assert rows.pop("layout") == "rows" and cols.pop("layout") == "columns"
    assert rows["config"].pop("layout") == "rows" and cols["config"].pop("layout") == "columns"
    assert rows == cols
    # the flag is trusted when N == d: the transposed array read as rows is another point, reported as rows
    other = ufm.analyze(W, H.T, y, b, lam_W=1e-2, lam_H=1e-2, bounds=False)
    assert other["layout"] == "rows" and other["objective"] != rows["objective"]


def _numpy_ce_point(W, H, y, b, lam_W, lam_H, lam_b):
    """Independent oracle: objective (7) with CE, ‖∇f‖, ∇_H g and the train accuracy, by hand (H as rows)."""
    Z = H @ W.T + b                                          # N×K logits
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    N = len(y)
    g = -np.mean(np.log(P[np.arange(N), y]))
    G = (P - np.eye(W.shape[0])[y]) / N                     # ∂g/∂Z
    gW, gH, gb = G.T @ H, G @ W, G.sum(axis=0)
    f = g + lam_W / 2 * np.sum(W**2) + lam_H / 2 * np.sum(H**2) + lam_b / 2 * np.sum(b**2)
    grad = np.sqrt(np.sum((gW + lam_W * W) ** 2) + np.sum((gH + lam_H * H) ** 2) + np.sum((gb + lam_b * b) ** 2))
    return f, grad, gH, np.mean(np.argmax(Z, axis=1) == y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_point_matches_a_numpy_oracle(seed):
    rng = np.random.default_rng(seed)
    K, d, N = 4, 5, 23
    W, H, b = rng.standard_normal((K, d)), rng.standard_normal((N, d)), rng.standard_normal(K)
    y = rng.integers(0, K, N)
    y[:K] = np.arange(K)                                     # every class present, sizes unequal
    f, grad, gH, acc = _numpy_ce_point(W, H, y, b, 1e-2, 3e-2, 2e-2)
    rec = ufm.analyze(W, H, y, b, lam_W=1e-2, lam_H=3e-2, lam_b=2e-2, bounds=False)
    assert rec["objective"] == pytest.approx(f, rel=1e-13) and rec["grad_norm"] == pytest.approx(grad, rel=1e-12)
    assert rec["train_accuracy"] == acc and rec["class_sizes"] == np.bincount(y).tolist()
    fit = ufm.analyze(W, H, y, b, lam_W=1e-2, lam_b=2e-2, bounds=False)["lam_H_fit"]
    residual = lambda lam: np.linalg.norm(gH + lam * H) / np.linalg.norm(gH)
    lam_hat = fit["estimate"]
    # the fit minimises ‖∇_H g + λH‖ over λ: the residual it reports is the oracle's, and any other λ does worse
    assert fit["residual"] == pytest.approx(residual(lam_hat), rel=1e-10)
    for other in (lam_hat * 1.01, lam_hat * 0.99, lam_hat + 1e-3, lam_hat - 1e-3, 0.0):
        assert residual(other) > residual(lam_hat)
    assert fit["fallback"] == (lam_hat <= 0)


def test_lam_H_fit_that_comes_out_negative_falls_back_to_the_balance_value():
    # every feature points away from its own class's classifier row: growing H raises the loss, ⟨∇_H g, H⟩ > 0
    p = Problem.create(3, 4, 2, lam=1e-2)
    W, H, y, b = shuffled(p, theory_point(p))
    rec = ufm.analyze(W, -H, y, b, lam_W=1e-2, bounds=False)
    fit = rec["lam_H_fit"]
    assert fit["estimate"] < 0 and fit["fallback"] and "balance" in fit["reason"]
    assert rec["config"]["lam_H"] == pytest.approx(1e-2 * np.sum(W**2) / np.sum(H**2), rel=1e-12) == fit["used"]
    assert rec["train_accuracy"] == 0.0


class DuckArray:
    """What a CPU PyTorch tensor or a JAX array offers np.asarray, without importing a framework."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_duck_typed_arrays_are_accepted():
    p = Problem.create(3, 4, 2, lam=1e-2)
    W, H, y, b = shuffled(p, theory_point(p))
    plain = ufm.analyze(W, H, y, b, lam_W=1e-2, bounds=False)
    duck = ufm.analyze(DuckArray(W), DuckArray(H), DuckArray(y.astype(np.int32)), DuckArray(b), lam_W=1e-2,
                       bounds=False)
    assert duck == plain
    import jax.numpy as jnp                      # JAX arrays (the other framework the issue names)

    assert ufm.analyze(jnp.asarray(W), jnp.asarray(H), jnp.asarray(y), jnp.asarray(b), lam_W=1e-2,
                       bounds=False) == plain


@pytest.mark.slow            # --hessian compiles the dense Hessian path (~20 s under load)
def test_hessian_at_the_optimum_is_a_global_minimizer(capsys, tmp_path):
    p = Problem.create(3, 2, 2, lam=1e-2)
    W, H, y, b = shuffled(p, theory_point(p))
    f = tmp_path / "opt.npz"
    np.savez(f, W=W, H=H, labels=y, b=b)
    code, out, err = run_cli(capsys, str(f), "--lam-w", "1e-2", "--lam-h", "1e-2", "--hessian", "dense", "--json",
                             "--no-bounds")
    assert code == 0, err
    hs = json.loads(out)["hessian"]
    assert hs["classification"] == "global_minimizer" and hs["hessian_method"] == "dense"


def test_nc4_chunking_does_not_change_it(monkeypatch, rng):
    import ufm.metrics as metrics

    K, d, N = 5, 3, 200
    W, H, y = rng.standard_normal((K, d)), rng.standard_normal((d, N)), np.arange(N) % K
    whole = metrics.nc4(W, H, None, y, K)
    monkeypatch.setattr(metrics, "NC4_CHUNK_ENTRIES", 7 * d * K)         # chunks of 7 samples, the last one short
    assert metrics.nc4(W, H, None, y, K) == whole and 0 < whole < 1


# ---- bad input: every corruption of a good layer is refused before any work, naming the array it is about -------

GOOD_K, GOOD_d, GOOD_N = 3, 4, 9


def _good():
    rng = np.random.default_rng(0)
    return {"W": rng.standard_normal((GOOD_K, GOOD_d)), "H": rng.standard_normal((GOOD_N, GOOD_d)),
            "labels": np.arange(GOOD_N) % GOOD_K, "b": rng.standard_normal(GOOD_K)}


def _corrupt(kind, where, value):
    a = _good()
    if kind == "nonfinite":
        key = ("W", "H", "b")[where % 3]
        flat = a[key].reshape(-1)
        flat[where % flat.size] = value
        return a, key
    if kind == "label_high":
        a["labels"][where % GOOD_N] = GOOD_K + where % 5
        return a, "labels"
    if kind == "label_negative":
        a["labels"][where % GOOD_N] = -1 - where % 5
        return a, "labels"
    if kind == "label_fraction":
        a["labels"] = a["labels"].astype(float)
        a["labels"][where % GOOD_N] += 0.5
        return a, "labels"
    if kind == "empty_class":
        a["labels"][a["labels"] == where % GOOD_K] = (where + 1) % GOOD_K
        return a, "labels"
    if kind == "H_shape":
        n, d = GOOD_N + (where % 3) - 1, GOOD_d + (where // 3 % 3) - 1
        a["H"] = np.zeros((n, d)) if (n, d) != (GOOD_N, GOOD_d) else np.zeros((GOOD_N, GOOD_d, 1))
        return a, "H"
    if kind == "labels_N":
        a["labels"] = np.arange(GOOD_N + 1 + where % 4) % GOOD_K
        return a, "H"                      # N is the number of labels: H's rows then disagree with it
    if kind == "b_shape":
        a["b"] = np.zeros(GOOD_K + 1 + where % 3) if where % 2 else np.zeros((GOOD_K, 1))
        return a, "b"
    if kind == "W_shape":
        a["W"] = (np.zeros(GOOD_d), np.zeros((1, GOOD_d)), np.zeros((GOOD_K, GOOD_d, 1)))[where % 3]
        return a, "W"
    if kind == "dtype":
        key = ("W", "H", "labels", "b")[where % 4]
        a[key] = a[key].astype(complex) if where % 2 else a[key].astype(str)
        return a, key
    if kind == "W_transposed":
        a["W"] = a["W"].T.copy()           # (d, K): K inferred as d = 4, class 3 has no samples
        return a, "labels"
    raise AssertionError(kind)


KINDS = ["nonfinite", "label_high", "label_negative", "label_fraction", "empty_class", "H_shape", "labels_N",
         "b_shape", "W_shape", "dtype", "W_transposed"]


@pytest.fixture
def no_work(monkeypatch):
    import ufm.analysis

    def reached(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(ufm.analysis, "_data_gradient", reached)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), where=st.integers(0, 1000),
       value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_bad_arrays_are_refused_naming_the_array(kind, where, value, no_work):
    arrays, name = _corrupt(kind, where, value)
    with pytest.raises(UFMInputError) as info:
        ufm.analyze(arrays["W"], arrays["H"], arrays["labels"], arrays["b"])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{name}: got "), (kind, msg)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), where=st.integers(0, 1000), as_json=st.booleans())
def test_bad_files_exit_2_with_one_line(kind, where, as_json, capsys, tmp_path_factory, no_work):
    arrays, name = _corrupt(kind, where, np.nan)
    path = tmp_path_factory.mktemp("bad") / "layer.npz"
    np.savez(path, **arrays)
    code, out, err = run_cli(capsys, str(path), *(["--json"] if as_json else []))
    assert code == 2 and out == "" and err.count("\n") == 1, (kind, err)
    assert err.startswith(f"ufm analyze: error: {name}: got "), (kind, err)


def test_bad_files_and_flags(capsys, tmp_path, no_work):
    good = _good()
    np.save(tmp_path / "W.npy", good["W"])
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "nolabels.npz", W=good["W"], H=good["H"])
    np.savez(tmp_path / "objects.npz", W=np.array([object()] * 3), H=good["H"], labels=good["labels"])
    np.savez(tmp_path / "good.npz", **good)
    cases = [
        ([str(tmp_path / "missing.npz")], "FILE", "no such file"),
        ([str(tmp_path)], "FILE", "folder"),
        ([str(tmp_path / "text.npz")], "FILE", ".npz archive"),
        ([str(tmp_path / "W.npy")], "FILE", "single .npy array"),
        ([str(tmp_path / "nolabels.npz")], "FILE", "no array 'labels'"),
        ([str(tmp_path / "objects.npz")], "FILE", "array 'W' cannot be read"),
        ([], "--W", "give an .npz FILE"),
        (["--W", str(tmp_path / "W.npy"), "--H", str(tmp_path / "nope.npy"), "--labels", "x"], "--H", "no such file"),
        ([str(tmp_path / "good.npz"), "--layout", "columns"], "H", "pass --layout rows"),
        ([str(tmp_path / "good.npz"), "--lam-w", "-1"], "--lam-w", "≥ 0"),
        ([str(tmp_path / "good.npz"), "--lam-w", "0"], "--lam-w", "estimating λ_H needs λ_W > 0"),
        ([str(tmp_path / "good.npz"), "--loss", "ce", "--gamma", "2"], "--gamma", "does not take it"),
        ([str(tmp_path / "good.npz"), "--loss", "nope"], "--loss", "use one of"),
    ]
    for argv, name, words in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert err.startswith(f"ufm analyze: error: {name}: ") and words in err, (argv, err)
    # nothing to estimate λ_H from
    np.savez(tmp_path / "zeroH.npz", W=good["W"], H=np.zeros_like(good["H"]), labels=good["labels"])
    code, _, err = run_cli(capsys, str(tmp_path / "zeroH.npz"))
    assert code == 2 and err.startswith("ufm analyze: error: --lam-h: ") and "H = 0" in err
    # --lam-b without a bias in the file
    np.savez(tmp_path / "nobias.npz", W=good["W"], H=good["H"], labels=good["labels"])
    code, _, err = run_cli(capsys, str(tmp_path / "nobias.npz"), "--lam-b", "1e-3")
    assert code == 2 and "--lam-b" in err and "no bias" in err


def test_npy_flags_replace_the_file_arrays(capsys, tmp_path):
    p = Problem.create(3, 4, 2, lam=1e-2)
    W, H, y, b = shuffled(p, theory_point(p))
    np.savez(tmp_path / "layer.npz", W=W, H=H, labels=y, b=b)
    for name, a in (("W", W), ("H", H), ("labels", y), ("b", b)):
        np.save(tmp_path / f"{name}.npy", a)
    flags = [f"--{n}={tmp_path / n}.npy" for n in ("W", "H", "labels", "b")]
    outs = []
    for argv in ([str(tmp_path / "layer.npz")], flags):
        code, out, err = run_cli(capsys, *argv, "--lam-w", "1e-2", "--json", "--no-bounds")
        assert code == 0, err
        outs.append(json.loads(out))
    assert outs[0] == outs[1] and abs(outs[0]["gap"]["rel_objective"]) <= EXACT
