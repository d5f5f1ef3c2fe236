"""`ufm plot`: every kind writes an image from a small saved result, the artists hold the result's numbers, and a
missing or wrong-kind file exits 2."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest


from ufm import plots
from ufm.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    paths = {
        "etf3": d / "ce3.npz", "etf4": d / "ls4.npz", "dyn": d / "dyn.npz", "land": d / "land.npz", "sweep": d / "s.db",
    }
    assert main(["solve", "-K", "3", "-d", "4", "-n", "4", "--lam", "5e-3", "--save", str(paths["etf3"]), "--json"]) == 0
    assert main(["solve", "-K", "4", "-d", "6", "-n", "4", "--lam", "5e-3", "--loss", "ls", "--save", str(paths["etf4"]),
                 "--json"]) == 0
    assert main(["solve", "-K", "3", "-d", "4", "-n", "5", "--lam", "5e-3", "--solver", "gd", "--gtol", "1e-6",
                 "--max-steps", "5000", "--trace-every", "50", "--save", str(paths["dyn"]), "--json"]) == 0
    assert main(["landscape", "-K", "3", "-d", "4", "-n", "2", "--lam", "0.05", "--at", "origin", "--no-escape", "--save",
                 str(paths["land"]), "--json"]) == 0
    assert main(["sweep", "-K", "3,4,5", "-d", "5", "-n", "2", "--lam", "log:1e-2:5e-1:4", "--store", str(paths["sweep"]),
                 "--quiet"]) == 0
    return paths


@pytest.mark.parametrize("kind, key", [("etf", "etf3"), ("etf", "etf4"), ("gram", "etf4"), ("dynamics", "dyn"),
                                       ("spectrum", "land"), ("slice", "land"), ("phase", "sweep")])
@pytest.mark.parametrize("ext", [".png", ".svg"])
def test_each_kind_writes_an_image(saved, tmp_path, capsys, kind, key, ext):
    out = tmp_path / f"{kind}{ext}"
    assert main(["plot", kind, str(saved[key]), "-o", str(out)]) == 0
    assert out.stat().st_size > 1000 and f"wrote {out}" in capsys.readouterr().out


def test_etf_panel_across_losses(saved, tmp_path):
    out = tmp_path / "panel.pdf"
    assert main(["plot", "etf", str(saved["etf3"]), str(saved["etf4"]), "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"%PDF"


def test_etf_points_are_the_class_means(saved):
    res = plots.load_result(saved["etf3"], "solution")
    fig, ax = plt.subplots()
    plots.plot_etf(ax, res)
    means = next(c for c in ax.collections if c.get_sizes()[0] == 90)      # the class-mean markers
    # K = 3 means span 2 dimensions: the projection is an isometry on them, so pairwise distances are kept
    H, labels = res["H"], res["labels"]
    M = np.stack([H[:, labels == k].mean(axis=1) for k in range(3)])
    dist = lambda P: np.linalg.norm(P[:, None] - P[None, :], axis=-1)
    plotted = np.vstack([c.get_offsets() for c in ax.collections if c.get_sizes()[0] == 90])
    np.testing.assert_allclose(dist(plotted), dist(M), rtol=1e-9, atol=1e-12)
    assert plots.etf_coordinates(res)["captured"] == pytest.approx(1.0, abs=1e-12)
    plt.close(fig)
    del means


def test_dynamics_lines_hold_the_trace(saved):
    res = plots.load_result(saved["dyn"], "solution")
    fig, axes = plt.subplots(2, 3)
    plots.plot_dynamics(axes, [res])
    np.testing.assert_array_equal(axes[0, 0].lines[0].get_ydata(), res["trace_NC1"])
    np.testing.assert_array_equal(axes[0, 0].lines[0].get_xdata(), res["trace_steps"])
    np.testing.assert_array_equal(axes[1, 2].lines[0].get_ydata(), res["trace_grad_norm"])
    f_star = res["record"]["theory"]["objective"]
    np.testing.assert_allclose(axes[1, 1].lines[0].get_ydata(), np.abs(res["trace_objective"] - f_star))
    # the snapshots' NC2 matches metrics recomputed at the end point within the solve's tolerance
    assert res["trace_NC2_W"][0] > 1e-2 and res["trace_NC2_W"][-1] < 1e-4
    plt.close(fig)


def test_spectrum_histogram_counts_every_eigenvalue(saved):
    res = plots.load_result(saved["land"], "landscape")
    fig, ax = plt.subplots()
    plots.plot_spectrum(ax, res)
    heights = sum(p.get_height() for p in ax.patches if hasattr(p, "get_height") and p.get_width() != 0
                  and p.get_facecolor()[:3] == matplotlib.colors.to_rgb(plots.COLORS[0]))
    assert heights == len(res["eigs_0"])
    p = res["record"]["critical_points"][0]
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"{p['n_zero']} found, {p['expected_zero_modes']} expected" in legend
    assert f"{int(np.sum(res['eigs_0'] < -res['record']['tolerances']['zero_tol'][0]))} negative" in legend
    plt.close(fig)


def test_slice_lines_hold_the_saved_values(saved):
    res = plots.load_result(saved["land"], "landscape")
    fig, (a, b) = plt.subplots(1, 2)
    plots.plot_slice(a, b, res)
    np.testing.assert_array_equal(a.lines[0].get_ydata(), res["slice_0_f_eig"])
    np.testing.assert_array_equal(a.lines[1].get_ydata(), res["slice_0_f_rand"])
    # a strict saddle: f falls on both sides along v_min
    f0 = res["record"]["critical_points"][0]["objective"]
    assert res["slice_0_f_eig"][0] < f0 and res["slice_0_f_eig"][-1] < f0
    plt.close(fig)


def test_phase_map_holds_the_sweep_and_the_boundary(saved):
    res = plots.load_result(saved["sweep"], "sweep")
    fig, ax = plt.subplots()
    plots.plot_phase(ax, res, color="NC2_W")
    table, _ = plots.phase_table(res["df"], "K", "lam_W", "NC2_W")
    assert table.attrs["seeds"] == (1, 1) and "one run per cell" in ax.get_title()
    vals = np.abs(table.to_numpy(dtype=float))
    df = res["df"]
    trivial = (df.assign(t=df["theory_geometry"] == "trivial").pivot_table(index="lam_W", columns="K", values="t")
               .to_numpy() == 1)
    assert trivial.any() and not trivial.all()
    data = ax.collections[0].get_array().reshape(table.shape)
    # round-off and the trivial regime are masked (and hatched), every other cell holds the sweep's value
    np.testing.assert_array_equal(np.ma.getmaskarray(data), trivial | (vals <= plots.ROUNDOFF))
    np.testing.assert_allclose(data.compressed(), vals[~np.ma.getmaskarray(data)])
    assert {c.get_hatch() for c in ax.collections[1:]} >= {"//"}
    # cells sit at their λ on a log axis, and the boundary λ = φ′(0)/√n = 1/(K√2) is in the same units
    assert ax.get_yscale() == "log"
    (boundary,) = [l for l in ax.lines if "φ′(0)" in str(l.get_label())]
    np.testing.assert_allclose(boundary.get_ydata(), 1 / (np.array([3, 4, 5]) * np.sqrt(2)))
    plt.close(fig)


@pytest.mark.parametrize("kind, keys", [("etf", ["etf3", "etf4"]), ("gram", ["etf4"]), ("dynamics", ["dyn"]),
                                        ("spectrum", ["land"]), ("slice", ["land"]), ("phase", ["sweep"])])
def test_no_text_leaves_the_figure(saved, kind, keys):
    from test_plots_edges import texts_outside

    need = {"etf": "solution", "gram": "solution", "dynamics": "solution", "spectrum": "landscape",
            "slice": "landscape", "phase": "sweep"}[kind]
    fig = plots.make_figure(kind, [plots.load_result(saved[k], need) for k in keys])
    assert texts_outside(fig) == []


@pytest.mark.parametrize("args", [["etf", "/no/such.npz"], ["spectrum", "ETF3"], ["dynamics", "ETF3"],
                                  ["phase", "ETF3"], ["etf", "LAND"], ["slice", "LAND", "--point", "3"]])
def test_missing_or_wrong_result_exits_2(saved, tmp_path, capsys, args):
    args = [str(saved["etf3"]) if a == "ETF3" else str(saved["land"]) if a == "LAND" else a for a in args]
    code = main(["plot", *args, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "RESULT" in err


def test_bad_image_extension_exits_2(saved, tmp_path, capsys):
    assert main(["plot", "etf", str(saved["etf3"]), "-o", str(tmp_path / "x.bmp")]) == 2
    assert "-o" in capsys.readouterr().err

