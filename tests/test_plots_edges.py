"""`ufm plot` at its edges: the output path and resolution are checked before anything is drawn, degenerate (K = 2,
d = 1) and trivial (W = H = 0) solutions draw, phase maps never average unlike rows, and the figures are readable
(distinct series, no clipped text, round-off and trivial cells marked, cells at their values)."""

import errno
import json
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ufm import plots
from ufm.cli import main
from ufm.theory import _simplex_frame


def texts_outside(fig) -> list:
    """Every drawn text (titles, axis labels, legends, annotations, tick labels via each Axes' tight bbox) that
    reaches past the figure's edge after rendering."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r, fb = fig.canvas.get_renderer(), fig.bbox
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += [ax.zaxis.label] if hasattr(ax, "zaxis") else []
        texts += ax.get_legend().get_texts() if ax.get_legend() else []
    boxes = [(t.get_text()[:40], t.get_window_extent(r)) for t in texts if t.get_visible() and t.get_text().strip()]
    boxes += [(f"axes {i}", ax.get_tightbbox(r)) for i, ax in enumerate(fig.axes)]
    return [name for name, b in boxes if b.x0 < fb.x0 - 1 or b.y0 < fb.y0 - 1 or b.x1 > fb.x1 + 1 or b.y1 > fb.y1 + 1]


def synthetic_solution(path, K, d, n=3, scale=1.0, geometry="simplex_etf"):
    """A saved solution on an exact simplex ETF (H = W rows per sample), without solving."""
    W = scale * _simplex_frame(K, d) if d >= K - 1 else scale * np.eye(K, d)
    labels = np.repeat(np.arange(K), n)
    rec = {"config": {"loss": "ce", "loss_params": {}, "K": K, "d": d, "n": n, "lam_W": 5e-3, "solver": "auto"},
           "nc": {"NC2_H": 0.0}, "theory": {"geometry": geometry, "objective": None}}
    np.savez(path, W=W, H=W[labels].T, labels=labels, record=json.dumps(rec))
    return path


# ------------------------------------------------------------------------------------------------ -o and --dpi


@pytest.fixture
def tiny(tmp_path):
    return synthetic_solution(tmp_path / "tiny.npz", 3, 4)


@pytest.fixture
def no_drawing(monkeypatch):
    """Fail the test if anything is loaded or drawn: the checks under test must come first."""
    def refuse(*a, **k):
        raise AssertionError("loaded or drew before checking the flags")
    monkeypatch.setattr(plots, "make_figure", refuse, raising=False)
    monkeypatch.setattr(plots, "load_result", refuse)


def _one_line_error(capsys, flag):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag}: got" in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("where", ["missing folder", "a directory", "folder is a file", "/proc"])
def test_output_path_is_checked_before_drawing(tmp_path, tiny, capsys, no_drawing, where):
    (tmp_path / "dir.png").mkdir()
    out = {"missing folder": tmp_path / "no" / "x.png", "a directory": tmp_path / "dir.png",
           "folder is a file": tiny / "x.png", "/proc": "/proc/x.png"}[where]
    assert main(["plot", "etf", str(tiny), "-o", str(out)]) == 2
    _one_line_error(capsys, "-o")
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (/proc covers unwritable here)")
def test_read_only_folder_exits_2(tmp_path, tiny, capsys, no_drawing):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["plot", "etf", str(tiny), "-o", str(ro / "x.png")]) == 2
    finally:
        ro.chmod(0o755)
    assert "cannot write" in _one_line_error(capsys, "-o")


@pytest.mark.parametrize("dpi", ["100000", "1201", "10"])
def test_dpi_out_of_range_exits_2(tmp_path, tiny, capsys, no_drawing, dpi):
    assert main(["plot", "etf", str(tiny), "-o", str(tmp_path / "x.png"), "--dpi", dpi]) == 2
    assert "--dpi" in capsys.readouterr().err


def test_pixel_count_is_bounded_before_drawing(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setattr(plots, "make_figure", lambda *a, **k: (_ for _ in ()).throw(AssertionError("drew")))
    # eight panels at the highest dpi: 48000 px wide, past what Agg can allocate
    assert main(["plot", "etf", *[str(tiny)] * 8, "-o", str(tmp_path / "x.png"), "--dpi", "1200"]) == 2
    err = _one_line_error(capsys, "--dpi")
    assert "px" in err and "at most" in err
    assert os.listdir(tmp_path) == ["tiny.npz"]


def test_failed_write_is_one_line_and_leaves_the_old_image(tmp_path, tiny, capsys, monkeypatch):
    out = tmp_path / "x.png"
    out.write_bytes(b"old image")

    def full_disk(self, fname, **kw):
        # the image goes to a hidden file beside the target, never to the target itself
        assert os.path.dirname(fname) == str(tmp_path) and os.path.basename(fname).startswith(".x.png.")
        with open(fname, "wb") as fh:
            fh.write(b"half an ima")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert main(["plot", "etf", str(tiny), "-o", str(out)]) == 2
    assert "No space left on device" in _one_line_error(capsys, "-o")
    assert out.read_bytes() == b"old image"
    assert sorted(os.listdir(tmp_path)) == ["tiny.npz", "x.png"]


def test_write_replaces_the_image_atomically(tmp_path, tiny, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"old image")
    assert main(["plot", "etf", str(tiny), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["tiny.npz", "x.png"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)           # the umask's mode, not a private temp file's


# ------------------------------------------------------------------------------- degenerate and trivial solutions


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    d = tmp_path_factory.mktemp("edge")
    cases = {"K2d1": ["-K", "2", "-d", "1", "--lam", "5e-3"], "K2d4": ["-K", "2", "-d", "4", "--lam", "5e-3"],
             "K5d1": ["-K", "5", "-d", "1", "--lam", "5e-3"], "trivial": ["-K", "3", "-d", "4", "--lam", "1"]}
    paths = {}
    for name, flags in cases.items():
        paths[name] = d / f"{name}.npz"
        assert main(["solve", *flags, "-n", "3", "--trace-every", "5", "--save", str(paths[name]), "--json"]) == 0
    paths["land"] = d / "land.npz"
    # the origin is the global minimiser here: W = H = 0 exactly
    assert main(["landscape", "-K", "2", "-d", "1", "-n", "2", "--lam", "1", "--at", "origin", "--hessian", "dense",
                 "--no-escape", "--save", str(paths["land"]), "--json"]) == 0
    return paths


@pytest.mark.slow   # the module fixture `edge` solves 4 degenerate problems and a landscape (~2 min of CPU)
@pytest.mark.parametrize("case", ["K2d1", "K2d4", "K5d1", "trivial"])
def test_degenerate_and_trivial_solutions_draw(edge, tmp_path, capsys, case):
    for kind in ("etf", "gram"):
        out = tmp_path / f"{kind}.png"
        assert main(["plot", kind, str(edge[case]), "-o", str(out)]) == 0
        assert out.stat().st_size > 1000 and "Traceback" not in capsys.readouterr().err


@pytest.mark.slow   # the module fixture `edge` solves 4 degenerate problems and a landscape (~2 min of CPU)
def test_degenerate_and_trivial_dynamics_draw(edge, tmp_path):
    out = tmp_path / "dyn.svg"
    assert main(["plot", "dynamics", *[str(edge[c]) for c in ("K2d1", "K2d4", "K5d1", "trivial")], "-o", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.slow   # the module fixture `edge` solves 4 degenerate problems and a landscape (~2 min of CPU)
@pytest.mark.parametrize("kind", ["spectrum", "slice"])
def test_trivial_landscape_draws(edge, tmp_path, kind):
    res = plots.load_result(edge["land"], "landscape")
    assert res["record"]["config"]["d"] == 1
    assert main(["plot", kind, str(edge["land"]), "-o", str(tmp_path / "x.png")]) == 0


@pytest.mark.slow   # the module fixture `edge` solves 4 degenerate problems and a landscape (~2 min of CPU)
@pytest.mark.parametrize("case, three", [("K2d1", False), ("K2d4", False), ("K5d1", False), ("K5d1", True)])
def test_means_spanning_one_dimension_are_zero_padded(edge, case, three):
    res = plots.load_result(edge[case], "solution")
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d" if three else None)
    plots.plot_etf(ax, res)
    c = plots.etf_coordinates(res, dims=3 if three else 2)
    assert c["span"] == 1 and np.all(c["means"][:, 1:] == 0) and np.all(c["W"][:, 1:] == 0)
    # the one coordinate is an isometry of the class means: pairwise distances are kept
    H, labels = res["H"], res["labels"]
    M = np.stack([H[:, labels == k].mean(axis=1) for k in range(len(res["W"]))])
    dist = lambda P: np.linalg.norm(P[:, None] - P[None, :], axis=-1)
    np.testing.assert_allclose(dist(c["means"]), dist(M), rtol=1e-9, atol=1e-12)
    if not three:
        plotted = np.vstack([col.get_offsets() for col in ax.collections if col.get_sizes()[0] == 90])
        np.testing.assert_allclose(plotted, c["means"])
    assert "span 1 dimension: zero-padded" in ax.get_title()
    plt.close(fig)


@pytest.mark.slow   # the module fixture `edge` solves 4 degenerate problems and a landscape (~2 min of CPU)
def test_trivial_solution_is_labelled_as_round_off(edge):
    res = plots.load_result(edge["trivial"], "solution")
    assert res["record"]["theory"]["geometry"] == "trivial" and np.abs(res["W"]).max() < 1e-6
    fig, (a, b) = plt.subplots(1, 2)
    plots.plot_etf(a, res)
    plots.plot_gram(b, res)
    assert "trivial regime" in a.get_title() and "round-off" in b.get_title()
    plt.close(fig)


def test_exactly_zero_solution_draws(tmp_path):
    path = synthetic_solution(tmp_path / "zero.npz", 4, 5, scale=0.0, geometry="trivial")
    fig = plots.make_figure("etf", [plots.load_result(path, "solution")])
    assert texts_outside(fig) == []
    res = plots.load_result(path, "solution")
    assert np.isnan(plots.gram_cosines(res)["cos"]).all() and np.isnan(plots.etf_coordinates(res)["captured"])


# ------------------------------------------------------------------------------------------ gram / cosine view


def test_gram_view_shows_the_cosines_beside_the_ideal(tmp_path):
    K = 8
    res = plots.load_result(synthetic_solution(tmp_path / "k8.npz", K, 9), "solution")
    fig = plots.make_figure("etf", [res])
    names = [ax.name for ax in fig.axes]
    assert names.count("3d") == 1 and len(fig.axes) == 3                  # projection, heat map, its colour bar
    heat = next(ax for ax in fig.axes if ax.images)
    cos = np.ma.filled(heat.images[0].get_array(), np.nan)
    off = cos[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(off, -1 / (K - 1), atol=1e-12)
    cbar = next(ax for ax in fig.axes if ax is not heat and ax.name != "3d")
    assert any(t.get_text().startswith("ideal −0.143") or t.get_text().startswith("ideal -0.143")
               for t in cbar.get_yticklabels())
    assert texts_outside(fig) == []


@pytest.mark.slow   # uses the `edge` fixture (see above)
def test_gram_of_collinear_means(edge):
    g = plots.gram_cosines(plots.load_result(edge["K5d1"], "solution"))
    off = g["cos"][~np.eye(5, dtype=bool)]
    np.testing.assert_allclose(np.abs(off), 1.0, atol=1e-9)                 # d = 1: the means lie on a line
    assert g["max_deviation"] == pytest.approx(1.25, abs=1e-9)


# ------------------------------------------------------------------------------------------------- readability


def test_palette_has_no_greys_and_no_repeats():
    rgb = np.array([matplotlib.colors.to_rgb(c) for c in plots.COLORS])
    assert (rgb.max(axis=1) - rgb.min(axis=1)).min() > 0.3                 # saturated: no grey among the series
    assert len(set(plots.COLORS)) == len(plots.COLORS) and plots.NEUTRAL not in plots.COLORS
    styles = [tuple(plots.series_style(i).values()) for i in range(24)]
    assert len(set(styles)) == 24
    assert all(len({s[j] for s in styles[:4]}) == 4 for j in range(3))    # the first four differ in each of the three


@pytest.mark.slow   # uses the `edge` fixture (see above)
def test_dynamics_series_differ_in_colour_style_and_marker(edge):
    res = [plots.load_result(edge[c], "solution") for c in ("K2d1", "K2d4", "K5d1", "trivial")]
    fig, axes = plt.subplots(2, 3)
    plots.plot_dynamics(axes, res * 2)
    for ax in axes.ravel():
        looks = [(l.get_color(), l.get_linestyle(), l.get_marker()) for l in ax.lines]
        assert len(looks) == 8 and len(set(looks)) == 8
        assert len({l.get_color() for l in ax.lines[:6]}) == 6
        assert all(l.get_color() != plots.NEUTRAL for l in ax.lines)
    labels = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
    assert len(set(labels[:4])) == 4                      # same loss and solver: the file names tell them apart
    plt.close(fig)


def test_text_check_sees_a_clipped_title():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 3))
    fig.add_subplot().set_title("a title far too long to fit across a three-inch-wide figure, clipped at both ends")
    assert texts_outside(fig)


@pytest.mark.slow   # uses the `edge` fixture (see above)
@pytest.mark.parametrize("kind, cases", [("etf", ["K2d1", "K5d1"]), ("gram", ["trivial"]),
                                         ("dynamics", ["K2d1", "K2d4", "K5d1", "trivial"])])
def test_no_text_leaves_the_figure(edge, kind, cases):
    fig = plots.make_figure(kind, [plots.load_result(edge[c], "solution") for c in cases])
    assert texts_outside(fig) == []


# ---------------------------------------------------------------------------------------------------- phase maps

KS, LAMS, SEEDS = (3, 4, 6), (1e-3, 1e-2, 1e-1, 1.0), (0, 1, 2)


def nc2(K, lam, seed, loss, d):
    if lam == 1e-3:
        return 1e-15 * (1 + seed)                    # collapsed to machine precision
    if lam == 1.0:
        return 0.5 + 0.1 * seed                     # trivial regime: round-off divided by round-off
    return 10.0 ** (-2 - K) * (1 + seed) * (2 if loss == "ls" else 1) * d / 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ufm.store import SweepStore

    path = tmp_path_factory.mktemp("phase") / "grid.db"
    s = SweepStore(path)
    i = 0
    for loss in ("ce", "ls"):
        for d in (4, 8):
            for K in KS:
                for lam in LAMS:
                    for seed in SEEDS:
                        row = dict(K=K, d=d, n=5, loss=loss, alpha=0.1 if loss == "ls" else None, lam_W=lam, lam_H=lam,
                                   lam_b=lam, bias="regularized", seed=seed, solver="auto", gtol=1e-9, analyze=0,
                                   census=0, NC2_W=nc2(K, lam, seed, loss, d), theory_objective=1.0,
                                   theory_geometry="trivial" if lam == 1.0 else "simplex_etf",
                                   classification="global_minimizer" if seed else "saddle")
                        s.add(f"p{i}", i, 1, row)
                        i += 1
    s.close()
    return path


@pytest.fixture(scope="module")
def sweep(store):
    return plots.load_result(store, "sweep")


@pytest.mark.parametrize("flags, flag", [(["-x", "foo"], "-x"), (["-x", "K", "-y", "K"], "-y"), (["-x", "loss"], "-x"),
                                         (["-y", "NC1"], "-y"), (["--where", "d4"], "--where"),
                                         (["--where", "dd=4"], "--where")])
def test_phase_flags_are_checked_before_loading(tmp_path, capsys, no_drawing, flags, flag):
    # the store does not even exist: the flags are checked against the store's fixed columns first
    assert main(["plot", "phase", str(tmp_path / "none.db"), *flags, "-o", str(tmp_path / "x.png")]) == 2
    err = _one_line_error(capsys, flag)
    if flag != "--where":
        assert "usable columns: K, d, n" in err and "loss" not in err.split("usable columns:")[1]


@pytest.mark.parametrize("flags, needle", [(["--where", "d=5"], "d takes 4, 8"), (["--where", "loss=mse"], "ce, ls"),
                                          (["--where", "n=x"], "numeric"), (["-x", "gamma"], "no value in this sweep")])
def test_phase_values_are_checked(store, tmp_path, capsys, flags, needle):
    assert main(["plot", "phase", str(store), *flags, "--where", "d=4", "-o", str(tmp_path / "x.png")]) == 2
    assert needle in capsys.readouterr().err


def test_phase_never_averages_unlike_rows(store, sweep, tmp_path, capsys):
    assert main(["plot", "phase", str(store), "-o", str(tmp_path / "x.png")]) == 2
    err = _one_line_error(capsys, "--where")
    assert "differ in d (d: 4, 8)" in err and "--where d=4" in err and not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="differ in d, loss, alpha"):
        plots.phase_table(sweep["df"])                    # the Python API refuses too


def test_phase_pools_seeds_and_says_so(sweep):
    table, codes = plots.phase_table(sweep["df"], "K", "lam_W", "NC2_W", where=["loss=ls", "d=8"])
    assert codes is None and table.attrs["seeds"] == (3, 3) and table.attrs["aggregate"] == "mean"
    assert table.loc[1e-2, 4] == pytest.approx(np.mean([nc2(4, 1e-2, s, "ls", 8) for s in SEEDS]), rel=1e-12)
    assert list(table.columns) == list(KS) and list(table.index) == list(LAMS)
    cat, codes = plots.phase_table(sweep["df"], "K", "lam_W", "classification", where={"loss": "ce", "d": 4})
    assert codes == {"global_minimizer": 0, "saddle": 1} and (cat.to_numpy() == 0).all()   # 2 of 3 seeds


def test_phase_facets_by_loss_on_one_scale(sweep):
    fig = plots.make_figure("phase", [sweep], where=["d=4"])
    maps = [ax for ax in fig.axes if ax.collections and ax.get_title()]
    assert [ax.get_title().split(":")[1].split(",")[0].strip() for ax in maps] == ["ce", "ls"]
    assert all("mean over 3 seeds" in ax.get_title() and "where d=4" in ax.get_title() for ax in maps)
    norms = [(ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) for ax in maps]
    assert norms[0] == norms[1]
    assert texts_outside(fig) == []
    with pytest.raises(ValueError, match="2 losses remain"):
        plots.plot_phase(plt.subplots()[1], sweep, where=["d=4"])
    plt.close("all")


def test_phase_marks_round_off_and_trivial_cells(sweep):
    fig, ax = plt.subplots()
    plots.plot_phase(ax, sweep, where=["loss=ce", "d=4"])
    mesh = ax.collections[0]
    data = mesh.get_array().reshape(len(LAMS), len(KS))
    masked = np.ma.getmaskarray(data)
    assert masked[0].all() and masked[-1].all() and not masked[1:-1].any()     # λ = 1e-3 round-off, λ = 1 trivial
    expect = [[np.mean([nc2(K, lam, s, "ce", 4) for s in SEEDS]) for K in KS] for lam in LAMS[1:-1]]
    np.testing.assert_allclose(data[1:-1], expect, rtol=1e-12)
    hatched = {c.get_hatch(): len(c.get_paths()) for c in ax.collections[1:] if c.get_hatch()}
    assert hatched == {"//": len(KS), "..": len(KS)}
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "trivial regime" in legend and "round-off" in legend and "φ′(0)" in legend
    plt.close(fig)


def test_phase_cells_sit_at_their_values(sweep):
    from ufm.losses import as_loss
    from ufm.theory import phi_prime0

    fig, ax = plt.subplots()
    plots.plot_phase(ax, sweep, where=["loss=ce", "d=4"])
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    corners = ax.collections[0].get_coordinates()                             # (rows + 1) × (cols + 1) × 2
    np.testing.assert_allclose(corners[0, :, 0], [2.5, 3.5, 5.0, 7.0])
    lam = np.array(LAMS)
    inner = np.sqrt(lam[1:] * lam[:-1])
    np.testing.assert_allclose(corners[:, 0, 1], np.concatenate([[lam[0] ** 2 / inner[0]], inner,
                                                                 [lam[-1] ** 2 / inner[-1]]]), rtol=1e-12)
    (boundary,) = [l for l in ax.lines if "φ′(0)" in str(l.get_label())]
    np.testing.assert_allclose(boundary.get_xdata(), KS)
    np.testing.assert_allclose(boundary.get_ydata(), [phi_prime0(as_loss("ce"), K) / np.sqrt(5) for K in KS])
    plt.close(fig)


@pytest.mark.parametrize("arrays", [dict(W=np.zeros((3, 2)), H=np.zeros((2, 6))), dict(a=np.arange(3)),
                                    dict(W=np.zeros((3, 2)), record=np.asarray("not json")),
                                    dict(W=np.zeros((3, 2)), record=np.asarray("[1, 2]"))],
                         ids=["no record", "another program's", "record not JSON", "record not ufm's"])
def test_an_npz_without_ufms_record_is_bad_input(tmp_path, capsys, arrays):
    from ufm.cli import main

    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    code = main(["plot", "etf", str(path), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ufm plot: error: RESULT:") and err.count("\n") == 1



@pytest.mark.parametrize("change", ["W 1-D", "W wrong shape", "labels out of range", "labels not integers", "W NaN",
                                    "W complex"])
def test_a_solution_whose_arrays_contradict_its_record_is_bad_input(tmp_path, capsys, change):
    from ufm.cli import main

    good = tmp_path / "good.npz"
    assert main(["solve", "-K", "3", "-d", "4", "-n", "2", "--lam", "0.01", "--save", str(good)]) == 0
    data = dict(np.load(good))
    if change == "W 1-D":
        data["W"] = data["W"].ravel()
    elif change == "W wrong shape":
        data["W"] = np.zeros((5, 4))
    elif change == "labels out of range":
        data["labels"] = data["labels"] + 5
    elif change == "labels not integers":
        data["labels"] = data["labels"].astype(str)
    elif change == "W NaN":
        data["W"] = np.full_like(data["W"], np.nan)
    else:
        data["W"] = data["W"] * 1j
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    capsys.readouterr()
    for kind in ("etf", "gram"):
        code = main(["plot", kind, str(bad), "-o", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("ufm plot: error: RESULT:") and err.count("\n") == 1, (kind, err)
