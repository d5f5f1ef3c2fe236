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
           "fl_band.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script, files", [
    ("all_losses.py", ["all_losses.md", "nc_dynamics.png"]),
    ("theory_boundary.py", ["theory_boundary.md", "theory_boundary.csv", "phase_K_lambda.png", "phase_d_lambda.png"]),
    ("benign_landscape.py", ["benign_landscape.md", "spectrum_ls_saddle.png", "slice_ls_saddle.png"]),
    ("etf_geometry.py", ["etf_k3.png", "etf_k4.png", "etf_geometry.md"]),
    ("minority_collapse.py", ["minority_collapse.md", "minority_collapse.csv", "minority_collapse.png"]),
    ("fl_band.py", ["fl_band.md", "fl_band.csv", "fl_band.png"]),
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
