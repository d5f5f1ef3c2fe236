"""The sweep results store: one SQLite file, one row per grid point, written point by point.

Guarantees (SQLite's, used as intended): each row is inserted and committed in its own transaction, with the
write-ahead log and ``synchronous=FULL``, so a process killed at any moment (SIGKILL included) leaves every committed
row intact and no half-written one; the point key is the primary key and rows are inserted with
``INSERT OR IGNORE``, so a rerun never duplicates a point. Only the parent process writes.
"""

from __future__ import annotations

import os
import sqlite3
import time

from .errors import UFMInputError

#: every column of a row, in order: inputs, then outputs (None where a part was not computed)
INPUT_COLUMNS = ["K", "d", "n", "loss", "gamma", "alpha", "kappa", "beta", "lam_W", "lam_H", "lam_b", "bias", "seed",
                 "solver", "gtol", "analyze", "census"]
OUTPUT_COLUMNS = [
    "status", "converged", "objective", "grad_norm", "steps", "W_fro_sq", "H_fro_sq",
    "theory_applies", "theory_objective", "theory_gap", "theory_rel_gap", "theory_geometry",
    "NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3", "NC4", "bias_residual",
    "classification", "min_eig", "min_eig_deflated", "max_eig", "n_negative", "n_zero", "expected_zero_modes",
    "eig_residual", "origin_classification", "origin_min_eig", "origin_min_eig_theory",
    "census_unique", "census_global", "census_saddles", "census_other", "census_escapes_global",
    "error", "solve_time_s", "analyze_time_s", "census_time_s", "time_s",
]
COLUMNS = INPUT_COLUMNS + OUTPUT_COLUMNS


class SweepStore:
    def __init__(self, path):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise UFMInputError("--store", self.path, f"its folder {folder} does not exist")
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            with self.db:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS points (key TEXT PRIMARY KEY, idx INTEGER, run INTEGER, "
                                f"finished_at REAL, {cols})")
                self.db.execute("CREATE TABLE IF NOT EXISTS runs (run INTEGER PRIMARY KEY, started_at REAL, points INTEGER)")
        except sqlite3.DatabaseError as exc:
            raise UFMInputError("--store", self.path, f"not a ufm sweep store ({exc})") from None

    def done_keys(self) -> set:
        return {k for (k,) in self.db.execute("SELECT key FROM points")}

    def new_run(self, n_points: int) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (started_at, points) VALUES (?, ?)", (time.time(), n_points))
        return int(cur.lastrowid)

    def add(self, key: str, idx: int, run: int, row: dict) -> None:
        values = [row.get(c) for c in COLUMNS]
        marks = ", ".join("?" for _ in range(len(COLUMNS) + 4))
        with self.db:
            self.db.execute(f"INSERT OR IGNORE INTO points VALUES ({marks})", [key, idx, run, time.time(), *values])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def close(self):
        self.db.close()


def load_sweep(path):
    """The sweep store at ``path`` as a pandas DataFrame, one row per point in grid order."""
    import pandas as pd

    if not os.path.exists(path):
        raise UFMInputError("store", os.fspath(path), "no such sweep store")
    with sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True) as db:
        return pd.read_sql_query("SELECT * FROM points ORDER BY idx", db)


def export_sweep(store_path, out_path) -> str:
    """Write the store as CSV or Parquet (chosen by the extension of ``out_path``)."""
    out = os.fspath(out_path)
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".csv", ".parquet"):
        raise UFMInputError("--export", out, "the file must end in .csv or .parquet")
    df = load_sweep(store_path)
    tmp = out + ".partial"
    if ext == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out
