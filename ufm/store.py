"""The sweep results store: one SQLite file, one row per grid point, written point by point.

Guarantees (SQLite's, used as intended): each row is inserted and committed in its own transaction, with the
write-ahead log and ``synchronous=FULL``, so a process killed at any moment (SIGKILL included) leaves every committed
row intact and no half-written one; the point key is the primary key, so a rerun never duplicates a point. Only the
parent process writes.

The write-ahead log: while a sweep runs, and after one was killed, committed rows may live in ``STORE.db-wal``
next to the store. Keep that file with the ``.db`` (copy or move both): SQLite folds it back in when the store is
next opened somewhere it can write. After a clean exit (finished, Ctrl-C, or failed points) the log is checkpointed
and removed, and the ``.db`` file alone holds every row.

Tables:

- ``points``: ``key`` (hash of the point and of every option that changes its result), ``grid`` and ``idx`` (the
  grid the row was computed for, numbered by that grid's first run, and the point's position in it; rows load in
  this order), ``run`` (the run that wrote it), ``finished_at``, then :data:`COLUMNS`: the inputs, every option
  that enters the key, and the outputs. A row with ``status = 'error'`` holds its message in ``error`` and is
  computed again by the next run.
- ``runs``: one row per ``ufm sweep`` / ``run_sweep`` call: ``command`` (the command line), ``started_at``,
  ``finished_at``, ``outcome`` (finished / interrupted / failed), ``points`` (to compute), ``computed``,
  ``failed``, ``grid_key`` and ``grid_spec`` (the grid's axes and options as JSON), ``grid_points``, and the
  ``ufm_version``, ``jax_version``, ``numpy_version`` and ``python_version`` that computed its rows.

A store written by an older ufm is migrated when opened for writing (missing columns are added, empty); reading never
changes the file, and works on a read-only file or folder.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time

from .errors import UFMInputError

#: every column of a row, in order: inputs (the point, then every option that enters its key), then outputs (None
#: where a part was not computed)
INPUT_COLUMNS = ["K", "d", "n", "minority", "ratio", "loss", "gamma", "alpha", "kappa", "beta", "lam_W", "lam_H", "lam_b", "bias", "seed",
                 "depth", "activation", "widths",
                 "solver", "gtol", "rtol", "max_steps", "init_scale", "analyze", "census", "hessian", "low_rank_starts"]
OUTPUT_COLUMNS = [
    "status", "converged", "objective", "grad_norm", "rel_grad_norm", "steps", "W_fro_sq", "H_fro_sq",
    "theory_applies", "theory_objective", "theory_gap", "theory_rel_gap", "theory_geometry",
    "lower_bound", "upper_bound", "certified", "bound_method", "bound_rank", "bound_rel_gap",
    "NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3", "NC4", "bias_residual",
    "classification", "min_eig", "min_eig_deflated", "max_eig", "n_negative", "n_zero", "expected_zero_modes",
    "eig_residual", "origin_classification", "origin_min_eig", "origin_min_eig_theory",
    "census_unique", "census_global", "census_saddles", "census_other", "census_escapes_global",
    # depth ≥ 2 (docs/theory.md §12): the DNC value, the low-rank search, the best value found and its logit rank,
    # and the per-layer metrics as JSON text (a list of {layer, width, DNC1, DNC2_ETF, DNC2_OF, DNC3, rank})
    "dnc_objective", "dnc_geometry", "dnc_gap", "dnc_rel_gap", "low_rank_objective", "low_rank_rank",
    "best_found", "best_found_from", "best_found_rel_gap", "best_found_rank", "dnc_optimal_so_far", "logit_rank",
    "deep_layers", "W_fro_sq_layers",
    "error", "solve_time_s", "analyze_time_s", "census_time_s", "time_s",
]
COLUMNS = INPUT_COLUMNS + OUTPUT_COLUMNS
META_COLUMNS = ["key", "grid", "idx", "run", "finished_at"]
RUN_COLUMNS = {"run": "INTEGER PRIMARY KEY", "started_at": "REAL", "points": "INTEGER", "finished_at": "REAL",
               "outcome": "TEXT", "computed": "INTEGER", "failed": "INTEGER", "command": "TEXT", "grid_key": "TEXT",
               "grid_spec": "TEXT", "grid_points": "INTEGER", "ufm_version": "TEXT", "jax_version": "TEXT",
               "numpy_version": "TEXT", "python_version": "TEXT"}
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _uri(path: str, **params) -> str:
    # a path is not a URI: `%41` would be read as `A`, and `#`, `?` would end it; as_uri percent-encodes them all
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return pathlib.Path(os.path.abspath(path)).as_uri() + (f"?{query}" if query else "")


def _connect_ro(path: str) -> sqlite3.Connection:
    """Open for reading without ever writing: ``mode=ro``, and ``immutable=1`` when SQLite cannot set up its
    shared-memory file (a read-only folder holding a store left in WAL mode)."""
    db = sqlite3.connect(_uri(path, mode="ro"), uri=True, timeout=30)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
    return sqlite3.connect(_uri(path, mode="ro", immutable=1), uri=True)


def _check_is_store(flag: str, path: str) -> None:
    """An existing file at ``path`` must be a healthy ufm store (or empty): not another format, not another
    program's SQLite database, not a corrupted one."""
    if os.path.isdir(path):
        raise UFMInputError(flag, path, "is a folder; give the store's file name")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise UFMInputError(flag, path, f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    if head != _SQLITE_MAGIC:
        raise UFMInputError(flag, path, "not a ufm sweep store (not an SQLite file); give a new file name")
    try:
        db = _connect_ro(path)
        try:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            cols = {c for (_, c, *_rest) in db.execute("PRAGMA table_info(points)")} if "points" in tables else set()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise UFMInputError(flag, path, f"a damaged SQLite file ({exc}); give a new file name") from None
    if ok != "ok":
        raise UFMInputError(flag, path, f"a damaged SQLite file (integrity check: {ok}); give a new file name")
    if tables and not {"key", "idx", "K", "status"} <= cols:
        raise UFMInputError(flag, path, f"an SQLite database of another program (tables: {', '.join(tables)}), not "
                            "a ufm sweep store; give a new file name")


def check_store(path, flag: str = "--store") -> str:
    """Everything about a store path that can be checked before work: a file can be written there, and any existing
    file is a ufm store. Creates nothing."""
    from .paths import check_output_path

    path = check_output_path(flag, path)
    _check_is_store(flag, path)
    return path


class SweepStore:
    def __init__(self, path, *, flag: str = "--store"):
        self.path = check_store(path, flag)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            with self.db:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS points (key TEXT PRIMARY KEY, grid INTEGER, idx INTEGER, "
                                f"run INTEGER, finished_at REAL, {cols})")
                self.db.execute("CREATE TABLE IF NOT EXISTS runs ("
                                + ", ".join(f"{c} {t}" for c, t in RUN_COLUMNS.items()) + ")")
                self._migrate()
        except sqlite3.OperationalError as exc:
            raise UFMInputError(flag, self.path, f"cannot write the store ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise UFMInputError(flag, self.path, f"not a ufm sweep store ({exc})") from None

    def _migrate(self):
        """Add the columns an older ufm did not write (they stay empty for its rows)."""
        for table, wanted in (("points", {c: "" for c in META_COLUMNS + COLUMNS}), ("runs", RUN_COLUMNS)):
            have = {c for (_, c, *_rest) in self.db.execute(f"PRAGMA table_info({table})")}
            for c, kind in wanted.items():
                if c not in have:
                    self.db.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {kind.replace("PRIMARY KEY", "")}')

    def done_keys(self) -> set:
        """Keys of the points that need no computing: every row but the failed ones."""
        return {k for (k,) in self.db.execute("SELECT key FROM points WHERE status IS NOT 'error'")}

    def new_run(self, n_points: int, *, grid_key: str = None, grid_spec: str = None, grid_points: int = None,
                command: str = None) -> tuple[int, int]:
        """Record a run; return its id and the grid's number (the id of the first run of the same grid)."""
        import platform

        import numpy

        from . import __version__

        try:
            import jax
            jax_version = jax.__version__
        except ImportError:
            jax_version = None
        with self.db:
            cur = self.db.execute("INSERT INTO runs (started_at, points, command, grid_key, grid_spec, grid_points, "
                                  "ufm_version, jax_version, numpy_version, python_version) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  (time.time(), n_points, command, grid_key, grid_spec, grid_points, __version__,
                                   jax_version, numpy.__version__, platform.python_version()))
        run = int(cur.lastrowid)
        first = self.db.execute("SELECT MIN(run) FROM runs WHERE grid_key = ?", (grid_key,)).fetchone()[0]
        return run, int(first if first is not None and grid_key is not None else run)

    def finish_run(self, run: int, *, computed: int, failed: int, outcome: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished_at = ?, computed = ?, failed = ?, outcome = ? WHERE run = ?",
                            (time.time(), computed, failed, outcome, run))

    def add(self, key: str, idx: int, run: int, row: dict, grid: int = None) -> None:
        values = [row.get(c) for c in COLUMNS]
        names = ", ".join(f'"{c}"' for c in META_COLUMNS + COLUMNS)
        marks = ", ".join("?" for _ in range(len(META_COLUMNS) + len(COLUMNS)))
        with self.db:
            # a failed row is replaced by its recomputation; a good one is never overwritten
            self.db.execute("DELETE FROM points WHERE key = ? AND status = 'error'", (key,))
            self.db.execute(f"INSERT OR IGNORE INTO points ({names}) VALUES ({marks})",
                            [key, grid, idx, run, time.time(), *values])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def grid_rows(self, keys) -> dict:
        """Counts over the rows of these keys only (one grid's points, not the whole store)."""
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS grid_keys (key TEXT PRIMARY KEY)")
        db.execute("DELETE FROM grid_keys")
        db.executemany("INSERT OR IGNORE INTO grid_keys VALUES (?)", ((k,) for k in keys))
        mine = "FROM points JOIN grid_keys USING (key)"
        counts = {}
        for cls, status, n in db.execute(f"SELECT classification, status, COUNT(*) {mine} GROUP BY classification, status"):
            label = cls if cls is not None else status
            counts[label] = counts.get(label, 0) + n
        out = dict(
            counts=counts,
            stored=db.execute(f"SELECT COUNT(*) {mine}").fetchone()[0],
            failed=db.execute(f"SELECT COUNT(*) {mine} WHERE status = 'error'").fetchone()[0],
            not_converged=db.execute(f"SELECT COUNT(*) {mine} WHERE (converged = 0 OR converged IS NULL) "
                                     "AND status IS NOT 'error'").fetchone()[0],
            max_rel_gap=db.execute(f"SELECT MAX(ABS(theory_rel_gap)) {mine} WHERE converged = 1 "
                                   "AND theory_applies = 1").fetchone()[0])
        db.execute("DROP TABLE grid_keys")
        db.commit()              # the key inserts opened a transaction; an open one would block the checkpoint
        return out

    def close(self):
        """Fold the write-ahead log into the file, so that the ``.db`` alone holds every row, and leave it in
        rollback-journal mode, so that a reader on a read-only medium needs no ``-shm``/``-wal`` files."""
        try:
            self.db.commit()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            # a reader has the store open: the log stays (checkpointed to empty if the checkpoint got through)
            pass
        self.db.close()


def load_sweep(path):
    """The sweep store at ``path`` as a pandas DataFrame, one row per point, grid by grid in grid order. Opens the
    file read-only: a read-only file or folder is fine, and the store is never changed."""
    import pandas as pd

    from .paths import check_input_file

    path = check_input_file("store", path)
    _check_is_store("store", path)
    db = _connect_ro(path)
    try:
        have = {c for (_, c, *_rest) in db.execute("PRAGMA table_info(points)")}
        if not have:
            return pd.DataFrame(columns=META_COLUMNS + COLUMNS)
        # named columns, not *: a migrated store has its added columns at the end
        cols = ", ".join(f'"{c}"' if c in have else f'NULL AS "{c}"' for c in META_COLUMNS + COLUMNS)
        return pd.read_sql_query(f"SELECT {cols} FROM points ORDER BY grid, idx, rowid", db)
    finally:
        db.close()


def check_export(out_path, flag: str = "--export") -> str:
    """An export path that can be written, with an extension ufm writes (and the library that writes it)."""
    from .paths import check_output_path

    out = check_output_path(flag, out_path, (".csv", ".parquet"))
    if out.lower().endswith(".parquet"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UFMInputError(flag, out, 'writing Parquet needs pyarrow: pip install "ufm[parquet]" (or export .csv)') from None
    return out


def export_sweep(store_path, out_path) -> str:
    """Write the store as CSV or Parquet (chosen by the extension of ``out_path``)."""
    out = check_export(out_path)
    df = load_sweep(store_path)
    tmp = out + ".partial"
    try:
        if out.lower().endswith(".csv"):
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
