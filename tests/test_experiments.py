"""Every experiment's reduced version runs, writes its files and confirms its claim (exit 0), so none can rot; and a
reduced run never writes over the committed figures."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
SCRIPTS = ["all_losses.py", "theory_boundary.py", "benign_landscape.py", "etf_geometry.py", "minority_collapse.py",
           "fl_band.py", "digits_collapse.py", "deep_collapse.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script, files", [
    ("all_losses.py", ["all_losses.md", "nc_dynamics.png"]),
    ("theory_boundary.py", ["theory_boundary.md", "theory_boundary.csv", "phase_K_lambda.png", "phase_d_lambda.png"]),
    ("benign_landscape.py", ["benign_landscape.md", "spectrum_ls_saddle.png", "slice_ls_saddle.png"]),
    ("etf_geometry.py", ["etf_k3.png", "etf_k4.png", "etf_geometry.md"]),
    ("minority_collapse.py", ["minority_collapse.md", "minority_collapse.csv", "minority_collapse.png"]),
    ("fl_band.py", ["fl_band.md", "fl_band.csv", "fl_band.png"]),
    ("digits_collapse.py", ["digits_collapse.md", "digits_collapse.csv", "digits_nc.png", "digits_geometry.png"]),
    ("deep_collapse.py", ["deep_collapse.md", "deep_collapse.csv", "deep_collapse.json", "deep_phase_K_L.png",
                          "deep_phase_L_lambda.png", "deep_layers.png"]),
])
def test_quick_experiment(tmp_path, script, files):
    args = [sys.executable, str(ROOT / "experiments" / script), "--out", str(tmp_path), "--quick"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"writing to {tmp_path}" in r.stdout
    assert "claim holds" in r.stdout or script == "etf_geometry.py"
    for name in files:
        assert (tmp_path / name).stat().st_size > 200, name


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_output_defaults_to_an_ignored_folder(script):
    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "experiments" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert pathlib.Path(mod.parse_args([]).out) == ROOT / "figures"
    assert pathlib.Path(mod.parse_args(["--quick"]).out) == ROOT / "figures" / "quick"
    assert mod.parse_args(["--quick", "--out", "elsewhere"]).out == "elsewhere"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_quick_folder_is_git_ignored():
    r = subprocess.run(["git", "check-ignore", "-q", "figures/quick/nc_dynamics.png"], cwd=ROOT)
    assert r.returncode == 0
    r = subprocess.run(["git", "check-ignore", "-q", "figures/nc_dynamics.png"], cwd=ROOT)
    assert r.returncode == 1


def test_digits_without_scikit_learn_names_the_extra(tmp_path):
    """Without scikit-learn the digits experiment stops before any work: one line naming the extra, exit status 2."""
    code = ("import runpy, sys; sys.modules['sklearn'] = None; "       # None in sys.modules makes the import fail
            f"sys.argv = ['digits_collapse.py', '--out', {str(tmp_path)!r}]; "
            f"runpy.run_path({str(ROOT / 'experiments' / 'digits_collapse.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "scikit-learn" in lines[0] and "ufm[digits]" in lines[0], r.stderr
    assert not any(tmp_path.iterdir())


def _experiment(script):
    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "experiments" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_network_objective_is_eq7_on_its_last_layer():
    """The network's training objective minus the decay of its hidden layers is objective (7) at its last layer
    (W, H, b) with λ_W = λ_b = λ and λ_H = 0, computed independently by ufm.analyze in float64: the mapping of the
    network's weight decay onto the UFM's λ's that digits_collapse.py states, for each of the four losses."""
    import jax
    import numpy as np

    import ufm

    mod = _experiment("digits_collapse.py")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 64)).astype(np.float32)
    y = np.arange(40) % mod.K
    # the layout of mod.init_mlp, drawn with numpy (JAX's eager random ops compile one by one: seconds)
    sizes = (64, 16, 12)
    params = {"hidden": [(rng.normal(size=(a, c)).astype(np.float32) / np.sqrt(a), rng.normal(size=c).astype(np.float32))
                         for a, c in zip(sizes[:-1], sizes[1:])],
              "W": rng.normal(size=(mod.K, sizes[-1])).astype(np.float32), "b": rng.normal(size=mod.K).astype(np.float32)}
    lam, lam_H = 3e-3, 0.5
    hidden_sq = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for layer in params["hidden"] for a in layer)
    for name, kw in mod.LOSSES:
        f_net = float(jax.jit(mod.make_objective(ufm.as_loss(name, **kw), lam, X, y))(params))
        W, H, b = mod.last_layer(params, X)
        rec = ufm.analyze(W, H, y, b, loss=name, lam_W=lam, lam_b=lam, lam_H=lam_H, bounds=False, **kw)
        f_eq7 = rec["objective"] - 0.5 * lam_H * rec["H_fro_sq"]
        # the network runs in float32 (relative round-off ~1e-7 per operation, sums of a few hundred terms)
        assert abs(f_net - 0.5 * lam * hidden_sq - f_eq7) <= 1e-5 * abs(f_eq7), name


def test_digits_split_is_balanced_fixed_and_complete():
    import numpy as np

    mod = _experiment("digits_collapse.py")
    Xtr, ytr, Xte, yte = mod.load_split(130)
    assert np.bincount(ytr, minlength=mod.K).tolist() == [130] * mod.K
    assert len(ytr) + len(yte) == 1797 and Xtr.shape[1] == Xte.shape[1] == 64
    np.testing.assert_allclose(Xtr.mean(axis=0), 0.0, atol=1e-12)      # centred by the training mean
    again = mod.load_split(130)
    for a, b in zip((Xtr, ytr, Xte, yte), again):
        np.testing.assert_array_equal(a, b)
