"""Bad sweep input is found before any point is computed: exit 2, one line on stderr naming the flag, nothing
stored (no store file created, an existing one unchanged). Python users of ``run_sweep`` get the same errors."""

import socket
import sqlite3
import sys
import time

import pytest

from ufm.cli import main
from ufm.errors import UFMInputError
from ufm.grid import build_grid
from ufm.store import SweepStore
from ufm.sweep import run_sweep

TINY = ["-K", "3", "-d", "2", "-n", "2", "--lam", "0.01"]


def _sweep(capsys, *args):
    try:
        code = main(["sweep", *args])
    except SystemExit as e:           # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def _refused(capsys, store, args, flag, also=""):
    before = store.read_bytes() if store.exists() else None
    t0 = time.monotonic()
    code, err = _sweep(capsys, *args, "--store", str(store))
    assert code == 2 and err.count("\n") == 1 and flag in err and also in err, err
    assert "Traceback" not in err
    assert time.monotonic() - t0 < 15                        # refused, not computed
    assert (store.read_bytes() if store.exists() else None) == before, "bad input must store nothing"
    return err


@pytest.mark.parametrize("args, flag", [
    (["--solver", "bogus"], "--solver"),
    (["--gtol", "0"], "--gtol"),
    (["--gtol", "-1"], "--gtol"),
    (["--rtol", "0"], "--rtol"),
    (["--init-scale", "-1"], "--init-scale"),
    (["--max-steps", "0"], "--max-steps"),
    (["--hessian", "bogus"], "--hessian"),
    (["--seed", str(2**63)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--loss", "ce", "--gamma", "7"], "--gamma"),                 # no loss in the grid takes γ
    (["--loss", "ce,ls", "--kappa", "2"], "--kappa"),
    (["--bias", "free", "--lam-b", "0.1"], "--lam-b"),              # a free bias is unregularised
    (["--bias", "none", "--lam-b", "0.1"], "--lam-b"),
    (["--address", "tcp://127.0.0.1:8786"], "--address"),          # an address without --executor dask
    (["-K", "range:3:1000000000"], "-K"),                          # refused before it is built (was MemoryError)
    (["--lam", "lin:0:1:2000000"], "--lam"),
    (["--lam", "log:0:1:3"], "--lam"),
    (["-K", "range:2:1001", "-d", "range:1:1001", "-n", "2"], "grid"),   # 10⁶ points each fine, too many together
    (["--export", "x.xlsx"], "--export"),
    (["--export", "/nonexistent/x.csv"], "--export"),
    (["--minority", "1", "--ratio", "3"], "--ratio"),              # n / R = 2/3 is not a class size
    (["--minority", "1", "--ratio", "0"], "--ratio"),
    (["--minority", "1", "--ratio", "-2"], "--ratio"),
    (["--minority", "1", "--ratio", "nan"], "--ratio"),
    (["--ratio", "2"], "--minority"),                              # a ratio without minority classes
    (["--minority", "0,1", "--ratio", "2"], "--minority"),
    (["--minority", "3"], "--minority"),                           # K = 3 has at most 2 minority classes
    (["--minority", "-1"], "--minority"),
    (["--minority", "1.5"], "--minority"),
])
def test_bad_flags(tmp_path, capsys, args, flag):
    _refused(capsys, tmp_path / "s.db", [*TINY, *args], flag)


def test_flags_that_are_consistent_pass_validation():
    # the contradiction checks refuse only what no point can take
    build_grid(flag_values=dict(loss="ce,fl", gamma="1,2")).validate()
    build_grid(flag_values=dict(bias="regularized,free", lam_b="0.1")).validate()
    build_grid(flag_values=dict(bias="free", lam_b="0")).validate()


def test_file_values_made_moot_by_flags_are_not_contradictions(tmp_path, capsys):
    # a study file with LS's α, narrowed on the command line to CE: the flags replace the losses, α is moot
    grid = build_grid({"loss": ["ce", "ls"], "alpha": [0.1, 0.2]}, {"loss": "ce"})
    assert {p["loss"] for p in grid.points()} == {"ce"}
    with pytest.raises(UFMInputError, match="--alpha"):           # but a file contradicting itself is refused
        build_grid({"loss": "ce", "alpha": 0.1})


@pytest.mark.parametrize("text, flag", [
    ('gtol = "abc"', "--gtol"),
    ("max_steps = 1.5", "--max-steps"),
    ('analyze = "no"', "--analyze"),
    ("census = -3", "--census"),
    ("census = true", "--census"),
    ('hessian = "bogus"', "--hessian"),
    ('solver = "bogus"', "--solver"),
    ("init_scale = -1", "--init-scale"),
    ("K = true", "-K"),
    ("bogus_key = 1", "bogus_key"),
    ("store = 5", "store"),
    ('workers = "x"', "workers"),
    ("workers = 0", "workers"),
    ("export = 3", "export"),
    ("quiet = 1", "quiet"),
    ('loss = "ce"\ngamma = 7', "--gamma"),
    ("minority = 1\nratio = 4", "--ratio"),
    ("ratio = [1, 2]", "--minority"),
])
def test_bad_toml_values(tmp_path, capsys, text, flag):
    toml = tmp_path / "g.toml"
    toml.write_text(("" if text.startswith("K =") else "K = 3\n") + "d = 2\nn = 2\n" + text + "\n")
    _refused(capsys, tmp_path / "s.db", ["--config", str(toml)], flag)


@pytest.mark.parametrize("kind", ["directory", "binary", "latin-1", "missing", "bad toml"])
def test_unreadable_toml(tmp_path, capsys, kind):
    path = tmp_path / "g.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin-1":
        path.write_bytes("K = 3 # café\n".encode("latin-1"))
    elif kind == "bad toml":
        path.write_text("K = [3, 4\n")
    _refused(capsys, tmp_path / "s.db", ["--config", str(path)], "--config")


def _ufm_store_with_a_row(path):
    s = SweepStore(path)
    s.add("k", 0, 1, {"K": 3, "status": "converged"})
    s.close()


@pytest.mark.parametrize("kind, says", [
    ("folder", "folder"), ("text", "not an SQLite file"), ("foreign", "another program"), ("damaged", "damaged"),
])
def test_bad_store_files(tmp_path, capsys, kind, says):
    store = tmp_path / "s.db"
    if kind == "folder":
        store.mkdir()
    elif kind == "text":
        store.write_text("name,value\na,1\n")
    elif kind == "foreign":
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        db.close()
    else:
        _ufm_store_with_a_row(store)
        with sqlite3.connect(store) as db:            # enough pages that cutting the file in half breaks it
            db.executemany("INSERT INTO points (key, error) VALUES (?, ?)", ((f"x{i}", "e" * 500) for i in range(200)))
        db.close()
        data = store.read_bytes()
        store.write_bytes(data[: len(data) // 2])
    if kind == "folder":
        code, err = _sweep(capsys, *TINY, "--store", str(store))
        assert code == 2 and err.count("\n") == 1 and "--store" in err and says in err, err
    else:
        _refused(capsys, store, TINY, "--store", says)


def test_store_in_a_missing_folder(tmp_path, capsys):
    _refused(capsys, tmp_path / "no" / "such" / "s.db", TINY, "--store", "does not exist")


def test_export_onto_a_folder(tmp_path, capsys):
    (tmp_path / "out.csv").mkdir()
    _refused(capsys, tmp_path / "s.db", [*TINY, "--export", str(tmp_path / "out.csv")], "--export", "folder")


def test_parquet_without_pyarrow(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)          # import pyarrow → ImportError, as when not installed
    _refused(capsys, tmp_path / "s.db", [*TINY, "--export", str(tmp_path / "x.parquet")], "--export",
             'pip install "ufm[parquet]"')


def test_dask_not_installed(tmp_path, capsys, monkeypatch):
    for name in ("dask", "dask.distributed", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    _refused(capsys, tmp_path / "s.db", [*TINY, "--executor", "dask"], "--executor", 'pip install "ufm[dask]"')


@pytest.mark.parametrize("address", ["not an address", "tcp://127.0.0.1:notaport", "http://127.0.0.1:8786",
                                     "tcp://127.0.0.1", "tcp://127.0.0.1:99999", ""])
def test_dask_address_that_does_not_parse(tmp_path, capsys, address):
    pytest.importorskip("dask.distributed")
    _refused(capsys, tmp_path / "s.db", [*TINY, "--executor", "dask", "--address", address], "--address")


def test_dask_address_that_nobody_answers(tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    with socket.socket() as s:                                 # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    err = _refused(capsys, tmp_path / "s.db", [*TINY, "--executor", "dask", "--address", f"tcp://127.0.0.1:{port}"],
                   "--address", "no scheduler answers")
    assert time.monotonic() - t0 < 11, err


def test_memory_that_cannot_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "1K")
    _refused(capsys, tmp_path / "s.db", TINY, "-K/-d/-n", "more than")


def test_the_dense_hessian_is_counted_where_analysis_uses_it(monkeypatch):
    # P = 2210 takes the dense path under --hessian auto: 8 P×P copies ≈ 300 MiB, while the solve needs < 1 MiB
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "100M")
    build_grid(flag_values=dict(K="10", d="20", n="10")).validate()
    with pytest.raises(UFMInputError, match="dense Hessian.*--hessian lanczos"):
        build_grid(flag_values=dict(K="10", d="20", n="10", analyze=True)).validate()
    build_grid(flag_values=dict(K="10", d="20", n="10", analyze=True, hessian="lanczos")).validate()


@pytest.mark.parametrize("flags, kwargs, flag", [
    (dict(gtol=0), {}, "--gtol"), (dict(solver="bogus"), {}, "--solver"), (dict(max_steps=1.5), {}, "--max-steps"),
    (dict(analyze="no"), {}, "--analyze"), (dict(census=-3), {}, "--census"), (dict(rtol=-1.0), {}, "--rtol"),
    ({}, dict(address="tcp://127.0.0.1:8786"), "--address"), ({}, dict(workers=0), "--workers"),
    ({}, dict(executor="slurm"), "--executor"),
])
def test_run_sweep_gives_python_users_the_same_errors(tmp_path, flags, kwargs, flag):
    grid = build_grid(flag_values=dict(K="3", d="2", n="2", **flags))
    with pytest.raises(UFMInputError) as exc:
        run_sweep(grid, tmp_path / "s.db", **kwargs)
    assert exc.value.flag == flag
    assert not (tmp_path / "s.db").exists()
