"""Every experiment's reduced version runs, writes its files and confirms its claim (exit 0), so none can rot."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize("script, files", [
    ("all_losses.py", ["all_losses.md", "nc_dynamics.png"]),
    ("theory_boundary.py", ["theory_boundary.md", "theory_boundary.csv", "phase_K_lambda.png", "phase_d_lambda.png"]),
    ("benign_landscape.py", ["benign_landscape.md", "spectrum_ls_saddle.png", "slice_ls_saddle.png"]),
    ("etf_geometry.py", ["etf_k3.png", "etf_k4.png", "etf_geometry.md"]),
])
def test_quick_experiment(tmp_path, script, files):
    args = [sys.executable, str(ROOT / "experiments" / script), "--out", str(tmp_path)]
    if script != "etf_geometry.py":
        args.append("--quick")
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "claim holds" in r.stdout or script == "etf_geometry.py"
    for name in files:
        assert (tmp_path / name).stat().st_size > 200, name
