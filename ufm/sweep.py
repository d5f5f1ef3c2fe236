"""Running a sweep: every grid point solved (and, on request, analysed and censused), rows into the store.

Execution was chosen by measurement (benchmarks/bench_sweep.py, README): on a 2-core CPU a loop of one jitted
solve per point beat ``vmap`` (design.md §4), and one in-process loop was as fast as two single-threaded worker
processes (``auto_workers``). Points are ordered by shape and a shape's points go to one worker together, so each
shape compiles once and is reused for every λ and seed. Only the
parent writes the store; an interrupted sweep resumes by rerunning the same command.

Everything is checked before the first point is computed (the grid, its size and memory, the options, the store, the
executor and its address): bad input raises :class:`~ufm.errors.UFMInputError` and stores nothing.

Failures while running: a point whose computation raises becomes a row with status ``error`` and its message (the
next run computes it again). A worker process that dies (the out-of-memory killer's SIGKILL, a crash in native
code) is noticed at once through its process sentinel; the rows it had finished are kept, the point it was on is
retried once on a fresh worker and, if it kills a worker again, stored as an error; when workers keep dying without
finishing anything the run stops and reports the points it could not compute. Ctrl-C stops the workers and returns
the summary of what is stored (workers ignore SIGINT, so only the parent decides).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
import signal
import socket
import sqlite3
import sys
import threading
import time
from typing import Callable, Optional

from . import signals
from .errors import UFMInputError
from .grid import AXES, DEEP_AXES, Grid, SweepOptions, options_key, point_key, problem_of
from .store import SweepStore, check_store

EXECUTORS = ("local", "dask")
BATCH_MODES = ("auto", "on", "off")
#: where ``batch="auto"`` solves a shape's points together under vmap (ufm.batch), by backend. Measured with
#: benchmarks/bench_batch.py (100 points of one shape, warm): on the 2-core CPU the vmapped program took 12.9× the
#: loop's time (the loop's XLA already keeps both cores busy, and under vmap every point runs each inner loop as long
#: as the slowest one), so the CPU keeps the loop. On a GPU it has not been measured yet (benchmarks/device.py does,
#: and the one device session so far ran out of time before its sweep): until it is, ``auto`` keeps the loop there
#: too, and ``--batch on`` asks for the batch
BATCH_AUTO = {"cpu": False}
BATCH_AUTO_UNMEASURED = False
_SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
#: how long a Dask scheduler at --address may take to answer before the sweep gives up (exit 2)
DASK_CONNECT_TIMEOUT_S = 10
#: a run stops when 2·workers + this many workers die in a row without one computed row between them: enough for a
#: point per worker to be tried twice, not enough to restart workers (seconds each) for a whole shape that cannot fit
DEATHS_WITHOUT_PROGRESS = 2


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _options_columns(options: SweepOptions) -> dict:
    # low_rank_starts: only a deep point's row has it (evaluate_point), as only its key does
    return dict(solver=options.solver, gtol=options.gtol, rtol=options.rtol, max_steps=options.max_steps,
                init_scale=options.init_scale, analyze=options.analyze, census=options.census, hessian=options.hessian)


def evaluate_point(point: dict, options: SweepOptions, sol=None) -> dict:
    """Solve one grid point and measure it: the store's row (inputs and outputs). Never raises: a failure is a row
    with status ``error`` and the message. ``sol``: the point's solve, already done (a batch, ufm.batch)."""
    from .critical import analyze_point, origin, origin_min_eig_theory
    from .landscape import census
    from .report import solution_record
    from .solvers import solve

    t0 = time.perf_counter()
    row = dict(point, **_options_columns(options))
    deep = (point.get("depth") or 1) > 1
    row["depth"] = point.get("depth") or 1
    if deep:
        row["low_rank_starts"] = options.low_rank_starts
    try:
        prob = problem_of(point) if sol is None else sol.problem
        if sol is None:
            sol = solve(prob, solver=options.solver, gtol=options.gtol, rtol=options.rtol, max_steps=options.max_steps,
                        seed=point["seed"], init_scale=options.init_scale)
        if deep:
            row.update(_deep_columns(prob, sol, options))
            row["time_s"] = time.perf_counter() - t0
            return {k: _finite(v) for k, v in row.items()}
        rec = solution_record(sol)
        th = rec["theory"]
        row.update(status=rec["status"], converged=rec["converged"], objective=rec["objective"],
                   grad_norm=rec["grad_norm"], rel_grad_norm=rec.get("rel_grad_norm"), steps=rec["steps"],
                   W_fro_sq=rec["W_fro_sq"], H_fro_sq=rec["H_fro_sq"],
                   theory_applies=th["applies"], theory_objective=th["objective"], theory_gap=th["gap"],
                   theory_rel_gap=th["rel_gap"], theory_geometry=th["geometry"], solve_time_s=sol.wall_time,
                   lower_bound=rec["bounds"]["lower"], upper_bound=rec["bounds"]["upper"],
                   certified=rec["bounds"]["certified"], bound_method=rec["bounds"]["method"],
                   bound_rank=rec["bounds"]["rank"], bound_rel_gap=rec["bounds"]["solution_rel_gap"],
                   **{k: rec["nc"][k] for k in ("NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3",
                                                 "NC4", "bias_residual")})
        if options.analyze:
            t1 = time.perf_counter()
            cp = analyze_point(prob, sol.params, hessian=options.hessian)
            at0 = analyze_point(prob, origin(prob), hessian=options.hessian)
            try:
                o_theory = origin_min_eig_theory(prob)
            except TypeError:            # φ′(0) exists for the softmax losses only
                o_theory = None
            row.update(classification=cp.classification, min_eig=cp.min_eig, min_eig_deflated=cp.min_eig_deflated,
                       max_eig=cp.max_eig, n_negative=cp.n_negative, n_zero=cp.n_zero,
                       expected_zero_modes=cp.expected_zero_modes, eig_residual=cp.eig_residual,
                       origin_classification=at0.classification, origin_min_eig=at0.min_eig,
                       origin_min_eig_theory=o_theory, analyze_time_s=time.perf_counter() - t1)
        if options.census:
            t2 = time.perf_counter()
            cs = census(prob, options.census, hessian=options.hessian)
            classes = [p.classification for p in cs.points]
            row.update(census_unique=len(classes), census_global=classes.count("global_minimizer"),
                       census_saddles=classes.count("strict_saddle"),
                       census_other=len(classes) - classes.count("global_minimizer") - classes.count("strict_saddle"),
                       census_escapes_global=sum(1 for p in cs.points if p.escape and
                                                 p.escape["classification"] == "global_minimizer"),
                       census_time_s=time.perf_counter() - t2)
    except Exception as exc:  # a failing point must not take the sweep down; it is recorded with its message
        row.update(status="error", converged=False, error=f"{type(exc).__name__}: {exc}")
    row["time_s"] = time.perf_counter() - t0
    return {k: _finite(v) for k, v in row.items()}


@functools.lru_cache(maxsize=256)
def _dnc_value(problem):
    from .deep_theory import dnc_value

    return dnc_value(problem)


@functools.lru_cache(maxsize=256)
def _low_rank_search(problem, starts: int):
    # deterministic (its own seed 0): a sweep's seeds of one problem share it instead of repeating the search
    from .deep_theory import low_rank_search

    return low_rank_search(problem, starts=starts) if starts else None


def _deep_columns(problem, sol, options: SweepOptions) -> dict:
    """The row of a depth ≥ 2 point (docs/theory.md §12): the solve, the classifier layer's NC metrics, the DNC
    value, the low-rank search (deep linear), the best value found and the logit rank of the point realising it."""
    from .deep_report import deep_record

    search = _low_rank_search(problem, options.low_rank_starts) if problem.activation == "linear" else None
    rec = deep_record(sol, search=search if search is not None else False, dnc=_dnc_value(problem))
    th, dn = rec["theory"], rec["deep_nc"]
    ls = th["low_rank"]
    f_dnc = th["dnc_objective"]
    best, best_from, best_rank = rec["objective"], "solution", dn["logit_rank"]
    if best is None or not math.isfinite(best):
        best, best_from, best_rank = None, None, None
    if ls is not None and (best is None or ls["best_objective"] < best - 1e-9 * max(1.0, abs(best))):
        # the search's point is realised explicitly (deep_theory.balanced_factors): its rank is that of its A
        best, best_from, best_rank = ls["best_objective"], "low_rank_search", ls["best_rank"]
    rel = (best - f_dnc) / max(abs(f_dnc), 1e-300) if best is not None and f_dnc is not None else None
    return dict(status=rec["status"], converged=rec["converged"], objective=rec["objective"],
                grad_norm=rec["grad_norm"], rel_grad_norm=rec.get("rel_grad_norm"), steps=rec["steps"],
                W_fro_sq=rec["W_fro_sq"][-1], H_fro_sq=rec["H_fro_sq"], solve_time_s=sol.wall_time,
                W_fro_sq_layers=json.dumps(rec["W_fro_sq"]), upper_bound=th["best_upper_bound"], certified=False,
                bound_method=th["best_upper_from"],
                **{k: rec["nc"][k] for k in ("NC1", "NC2_W", "NC2_H", "NC2_W_uncentred", "NC2_H_uncentred", "NC3",
                                             "NC4", "bias_residual")},
                dnc_objective=f_dnc, dnc_geometry=th["dnc_geometry"], dnc_gap=th["gap"], dnc_rel_gap=th["rel_gap"],
                low_rank_objective=None if ls is None else ls["best_objective"],
                low_rank_rank=None if ls is None else ls["best_rank"], best_found=best, best_found_from=best_from,
                best_found_rel_gap=rel, best_found_rank=best_rank,
                dnc_optimal_so_far=None if rel is None else bool(rel >= -1e-9),
                logit_rank=dn["logit_rank"], deep_layers=json.dumps(dn["layers"]))


def error_row(point: dict, options: SweepOptions, message: str) -> dict:
    """The row of a point that could not be computed (stored so it can be found, and computed again next run)."""
    return dict(point, **_options_columns(options), status="error", converged=False, error=message)


def describe_point(p: dict) -> str:
    """One point in a few words, for log lines: ``K=3 d=2 n=2 fl(γ=2) λ=0.01 seed=0``."""
    loss = str(p["loss"])
    params = [f"{sym}={p[k]:g}" for k, sym in (("gamma", "γ"), ("alpha", "α"), ("kappa", "κ"), ("beta", "β"))
              if p.get(k) is not None]
    if params:
        loss += f"({','.join(params)})"
    lw, lh, lb = p["lam_W"], p["lam_H"], p["lam_b"]
    if p["bias"] == "regularized" and lw == lh == lb:
        lam = f"λ={lw:g}"
    else:
        lam = f"λ_W={lw:g} λ_H={lh:g}" + (f" λ_b={lb:g}" if p["bias"] == "regularized" else f" bias={p['bias']}")
    n = p["n"] if not p.get("minority") else f"{p['n']} ({p['minority']} minority, R={p['ratio']:g})"
    deep = "" if (p.get("depth") or 1) == 1 else (f" L={p['depth']} {p['activation']}"
                                                 + (f" widths={p['widths']}" if p.get("widths") else ""))
    return f"K={p['K']} d={p['d']} n={n}{deep} {loss} {lam} seed={p['seed']}"


def _worker_init(executables: Optional[str] = None):
    """A local worker's set-up: XLA single-threaded (a worker per core), and the parent's executable store when the
    parent had one (ufm.aot: the worker then loads what an earlier sweep or worker compiled for the same settings
    instead of tracing and lowering each program again; JAX's own cache reaches it through the environment)."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _SINGLE_THREAD_XLA).strip()
    if executables is not None:
        from . import aot

        aot.enable(executables)


def _shape_order(item):
    _, p = item
    return (p["K"], p["d"], p["n"], p.get("minority") or 0, p.get("ratio") or 1.0, p["loss"], p["bias"] == "none",
            p.get("depth") or 1, p.get("activation") or "", p.get("widths") or 0)


@dataclasses.dataclass
class SweepSummary:
    """What one run did, and where this grid's points stand in the store (rows of other grids are not counted)."""

    total: int                    # distinct points of the grid
    skipped: int                  # already in the store from an earlier run
    computed: int                 # rows written by this run (failed ones included)
    failures: int                 # this grid's rows with status error
    counts: dict                  # classification (or status) → number of this grid's rows
    not_converged: int            # this grid's computed rows that did not converge
    max_rel_gap: Optional[float]
    wall_time: float
    interrupted: bool = False
    stored: int = 0               # this grid's rows in the store
    lost: int = 0                 # points this run could not compute (workers kept dying); not stored
    run: Optional[int] = None
    notes: list = dataclasses.field(default_factory=list)
    batched: bool = False         # whether the solves ran batched under vmap (run_sweep's ``batch``)

    @property
    def ok(self) -> bool:
        return not (self.interrupted or self.failures or self.lost)


def _check_run_args(executor, workers, address, batch="auto"):
    if batch not in BATCH_MODES:
        raise UFMInputError("--batch", batch, f"use one of {', '.join(BATCH_MODES)}")
    if executor not in EXECUTORS:
        raise UFMInputError("--executor", executor, f"use one of {', '.join(EXECUTORS)}")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UFMInputError("--workers", workers, "must be an integer ≥ 1")
    if address is not None and executor != "dask":
        raise UFMInputError("--address", address, "is the Dask scheduler's address; it needs --executor dask")
    if executor == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise UFMInputError("--executor", "dask", 'Dask is not installed: pip install "ufm[dask]"') from None
        if address is not None:
            _probe_address(address)


def _probe_address(address):
    """A scheduler address that parses and answers a TCP connection within the timeout (refused: at once)."""
    from urllib.parse import urlsplit

    if not isinstance(address, str) or not address.strip():
        raise UFMInputError("--address", address, "give the scheduler's address, e.g. tcp://10.0.0.5:8786")
    text = address.strip() if "://" in address else f"tcp://{address.strip()}"
    try:
        u = urlsplit(text)
        host, port = u.hostname, u.port
    except ValueError:
        host = port = None
        u = None
    if u is None or u.scheme not in ("tcp", "tls") or not host or port is None or u.path not in ("", "/") \
            or u.query or u.fragment:
        raise UFMInputError("--address", address, "use tcp://HOST:PORT or tls://HOST:PORT, e.g. tcp://10.0.0.5:8786")
    try:
        socket.create_connection((host, port), timeout=DASK_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UFMInputError("--address", address, f"no scheduler answers there ({why}, waited at most "
                            f"{DASK_CONNECT_TIMEOUT_S} s); start it or check the host and port") from None


def _grid_identity(grid: Grid) -> tuple[str, str]:
    # the deep axes at their defaults are left out, so a grid without depth keeps the identity it had before them
    defaults = {name: AXES[name][2] for name in DEEP_AXES}
    axes = [[k, list(v)] for k, v in grid.axes if not (k in defaults and tuple(v) == defaults[k])]
    deep = max(dict(grid.axes).get("depth") or (1,)) > 1
    spec = json.dumps({"axes": axes, "options": options_key(grid.options, deep)}, sort_keys=True)
    return hashlib.sha1(spec.encode()).hexdigest(), spec


def run_sweep(grid: Grid, store_path, *, workers: int = 1, executor: str = "local", address: Optional[str] = None,
              progress: Optional[Callable] = None, on_point: Optional[Callable] = None,
              log: Optional[Callable[[str], None]] = None, command: Optional[str] = None,
              batch: str = "auto") -> SweepSummary:
    """Compute every point of ``grid`` missing from the store at ``store_path`` (or stored as failed); return the
    summary of this grid.

    ``progress(k, failures)`` and ``on_point(done, to_do, idx, row)`` are called in the parent after each row is
    stored; ``log(message)`` receives notes such as a worker's death; ``command`` is recorded in the store's ``runs``
    table (default: this process's command line). Bad input raises :class:`UFMInputError` before anything is computed
    or stored.

    ``batch``: ``on`` solves the points of one shape together in one vmapped program (ufm.batch) when the sweep runs
    in-process; ``auto`` does so where it measured faster (BATCH_AUTO: nowhere yet — slower on the CPU, not yet
    measured on a GPU); ``off`` never. The summary's ``batched`` and notes say what was used. Rows are the same either way (to round-off).
    """
    _check_run_args(executor, workers, address, batch)
    grid.validate()
    store_path = check_store(store_path)
    points = grid.points()
    keys = [point_key(p, grid.options) for p in points]
    first_idx = {}
    for i, k in enumerate(keys):
        first_idx.setdefault(k, i)                 # a value given twice on an axis is one point
    grid_key, grid_spec = _grid_identity(grid)
    notes = []

    def note(message):
        notes.append(message)
        if log:
            log(message)

    t0 = time.perf_counter()
    store = SweepStore(store_path)
    try:
        done = store.done_keys()
        todo = sorted(((i, points[i]) for k, i in first_idx.items() if k not in done), key=_shape_order)
        skipped = len(first_idx) - len(todo)
        if workers == "auto":
            workers = auto_workers(todo)
        batched = _use_batch(batch, executor, workers, todo)
        if batched:
            note(f"batched: each shape's solves run together under vmap (--batch {batch}, backend {_backend()})")
        client = cluster = None
        if executor == "dask" and todo:
            client, cluster = _dask_client(address, workers)
        run, grid_no = store.new_run(len(todo), grid_key=grid_key, grid_spec=grid_spec, grid_points=len(first_idx),
                                     command=command if command is not None else shlex.join(sys.argv))
        failures, computed, interrupted = 0, 0, False
        lost = []

        recorded = set()

        def record(i, row):
            nonlocal failures, computed
            store.add(keys[i], i, run, row, grid=grid_no)
            recorded.add(i)
            failures += row.get("status") == "error"
            computed += 1
            if progress:
                progress(1, failures)
            if on_point:
                on_point(computed, len(todo), i, row)

        def fail(i, p, message):
            record(i, error_row(p, grid.options, message))

        try:
            if not todo:
                pass
            elif executor == "dask":
                _run_dask(todo, grid.options, client, record, fail)
            elif workers == 1 and batched:
                _run_batched(todo, grid.options, record)
            elif workers == 1:
                for i, p in todo:
                    record(i, evaluate_point(p, grid.options))
                    signals.check()
            else:
                lost = _run_processes(todo, grid.options, workers, record, fail, note)
        except KeyboardInterrupt:
            interrupted = True
        except sqlite3.Error as exc:     # the disk filled up, the file was removed, …: stop, keep what is stored
            lost = [ip for ip in todo if ip[0] not in recorded]
            note(f"stopped: cannot write the store any more ({exc}); {computed} rows were stored by this run")
        finally:
            with _sigint_ignored():
                if client is not None:
                    _close_dask(client, cluster)
        if lost:
            note(f"{len(lost)} points were not computed because worker processes kept dying; rerun the same "
                 "command to try them again")
        with _sigint_ignored():
            with contextlib.suppress(sqlite3.Error):
                store.finish_run(run, computed=computed, failed=failures,
                                 outcome="interrupted" if interrupted else "failed" if (failures or lost) else "finished")
            try:
                stats = store.grid_rows(first_idx)
            except sqlite3.Error:
                stats = dict(counts={}, stored=skipped + computed, failed=failures, not_converged=0, max_rel_gap=None)
    finally:
        with _sigint_ignored():
            store.close()
    return SweepSummary(total=len(first_idx), skipped=skipped, computed=computed, failures=stats["failed"],
                        counts=stats["counts"], not_converged=stats["not_converged"], max_rel_gap=stats["max_rel_gap"],
                        wall_time=time.perf_counter() - t0, interrupted=interrupted, stored=stats["stored"],
                        lost=len(lost), run=run, notes=notes, batched=batched)


@contextlib.contextmanager
def _sigint_ignored():
    """Clean-up after a Ctrl-C must finish (stop workers, close the store): a second Ctrl-C waits until it has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _sigint_blocked():
    """A child started now inherits SIGINT blocked, so a Ctrl-C during its start-up (before it can ignore the
    signal) cannot print a traceback; the parent receives a pending SIGINT when the block is lifted."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _shape_groups(todo):
    """Consecutive runs of one shape (todo is sorted by shape): a group is compiled once, on one worker."""
    groups, last = [], None
    for i, p in todo:
        key = _shape_order((i, p))
        if key != last:
            groups.append([])
            last = key
        groups[-1].append((i, p))
    return groups


def _backend() -> str:
    import jax

    return jax.default_backend()


def _use_batch(batch: str, executor: str, workers, todo) -> bool:
    """Batching runs in-process (one program per shape): with worker processes or Dask each point goes alone."""
    if batch == "off" or executor != "local" or workers != 1 or not todo:
        return False
    return batch == "on" or BATCH_AUTO.get(_backend(), BATCH_AUTO_UNMEASURED)


def _run_batched(todo, options: SweepOptions, record) -> None:
    """Solve each shape's points together (ufm.batch.solve_batch, as many side by side as memory allows), then measure
    each point as ``evaluate_point`` does. A batch that cannot run (a user loss jax.vmap cannot trace, memory) falls
    back to one point at a time, which records any error as that point's row."""
    from .batch import batch_size_that_fits, solve_batch

    for group in _shape_groups(todo):
        by_shape = {}
        for i, p in group:
            try:
                prob = problem_of(p)
            except Exception:                       # evaluate_point turns it into the point's error row
                record(i, evaluate_point(p, options))
                continue
            if (p.get("depth") or 1) > 1:           # ufm.batch vmaps eq. (7)'s solve only
                record(i, evaluate_point(p, options, None))
                continue
            by_shape.setdefault(prob.shape, []).append((i, p, prob))
        for items in by_shape.values():
            size = batch_size_that_fits(items[0][2], options.solver, max_steps=options.max_steps)
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                try:
                    sols = solve_batch([c[2] for c in chunk], [c[1]["seed"] for c in chunk], solver=options.solver,
                                       gtol=options.gtol, rtol=options.rtol, max_steps=options.max_steps,
                                       init_scale=options.init_scale)
                except Exception:
                    sols = [None] * len(chunk)
                for (i, p, _), sol in zip(chunk, sols):
                    record(i, evaluate_point(p, options, sol))


def auto_workers(todo) -> int:
    """Measured on the 2-core development machine (benchmarks/bench_sweep.py, README): one in-process loop keeps
    both cores busy in XLA, and two single-threaded workers were 0.92× (100 points, 20 shapes, compile-bound) to
    1.2× (100 points, 4 shapes, n = 1000) of it while each costs ~3 s to start JAX. So: in-process on ≤ 2 cores or
    under 20 points; otherwise one worker per core, never more than the shapes (a shape compiles on one worker)."""
    cores = os.cpu_count() or 1
    if len(todo) < 20 or cores <= 2:
        return 1
    return max(1, min(cores, len(_shape_groups(todo))))


# ------------------------------------------------------------------------------------------------ local processes


def _worker_main(conn, executables=None):
    """A worker: evaluate the groups the parent sends, one row per message, until told to stop or orphaned."""
    # Ctrl-C reaches the whole process group; the parent alone handles it (and stops the workers with SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _worker_init(executables)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            group, options = msg
            for i, p in group:
                conn.send(("row", i, evaluate_point(p, options)))
            conn.send(("done",))
    except (EOFError, OSError):
        pass                     # the parent is gone: nobody to send rows to


def _executables() -> Optional[str]:
    """The executable store this process uses, if any (set by ufm.cache.enable, as the ``ufm`` command does)."""
    aot = sys.modules.get("ufm.aot")
    return None if aot is None else aot._folder


class _Worker:
    def __init__(self, ctx):
        parent, child = ctx.Pipe()
        with _sigint_blocked():
            self.proc = ctx.Process(target=_worker_main, args=(child, _executables()), daemon=True,
                                    name="ufm-sweep-worker")
            self.proc.start()
        child.close()            # the parent keeps only its end, so the worker's death reads as end-of-file
        self.conn = parent
        self.todo = collections.deque()   # (i, point) sent to it and not yet returned, in its order of work

    def give(self, group, options):
        self.todo = collections.deque(group)
        self.conn.send((group, options))

    def stop(self):
        with contextlib.suppress(OSError):
            self.conn.send(None)


def _death_reason(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " — the out-of-memory killer sends it" if exitcode == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {exitcode}"


def _run_processes(todo, options, workers, record, fail, note) -> list:
    """Run the groups on ``workers`` spawned processes, each fed one shape group at a time over its own pipe.
    Returns the points left uncomputed because workers kept dying."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")      # spawn, not fork: a forked JAX runtime is unsafe
    # biggest groups first, so the last ones to finish are short
    queue = collections.deque(sorted(_shape_groups(todo), key=len, reverse=True))
    workers = min(workers, len(queue))
    attempts = collections.Counter()
    live, retired = [], []
    deaths_in_a_row = 0
    try:
        while queue or live:
            while queue and len(live) < workers:
                w = _Worker(ctx)
                w.give(queue.popleft(), options)
                live.append(w)
            ready = set(wait([w.conn for w in live] + [w.proc.sentinel for w in live], timeout=5.0))
            signals.check()
            for w in list(live):
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                dead = False
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg[0] == "row":
                            _returned(w, msg[1])
                            record(msg[1], msg[2])
                            deaths_in_a_row = 0
                        elif queue:
                            w.give(queue.popleft(), options)
                        else:
                            w.stop()
                            live.remove(w)
                            retired.append(w)
                            break
                except (EOFError, OSError):
                    dead = True
                if w in live and (dead or not w.proc.is_alive()):
                    live.remove(w)
                    retired.append(w)
                    w.proc.join(5)
                    deaths_in_a_row += 1
                    if w.todo:
                        _lost_worker(w, options, attempts, queue, fail, note)
                    else:
                        note(f"worker pid {w.proc.pid} died ({_death_reason(w.proc.exitcode)}) between groups; "
                             "no point was lost")
                    if deaths_in_a_row >= 2 * workers + DEATHS_WITHOUT_PROGRESS:
                        note(f"stopping: {deaths_in_a_row} worker processes died in a row without finishing a point")
                        return [ip for g in queue for ip in g] + [ip for x in live for ip in x.todo]
        return []
    finally:
        _stop_workers(live + retired, record)


def _returned(w, i):
    # rows come back in the order they were sent, so this is the first one; a scan would make groups quadratic
    if w.todo and w.todo[0][0] == i:
        w.todo.popleft()
    else:
        w.todo = collections.deque(ip for ip in w.todo if ip[0] != i)


def _lost_worker(w, options, attempts, queue, fail, note):
    """The worker died: the first point it had not returned is the one it was computing. That point is retried once
    (a second death stores it as an error); the rest of its group goes back to the front of the queue."""
    why = _death_reason(w.proc.exitcode)
    (i, p), rest = w.todo[0], list(w.todo)[1:]
    attempts[i] += 1
    if attempts[i] >= 2:
        fail(i, p, f"WorkerDied: the worker process computing this point died twice ({why})")
        note(f"worker pid {w.proc.pid} died ({why}) on point #{i} ({describe_point(p)}) for the second time: "
             "stored as an error" + (f"; its other {len(rest)} points go to a fresh worker" if rest else ""))
    else:
        rest = list(w.todo)
        note(f"worker pid {w.proc.pid} died ({why}) while computing point #{i} ({describe_point(p)}); retrying its "
             f"{len(rest)} unfinished points on a fresh worker")
    if rest:
        queue.appendleft(rest)
    w.todo = collections.deque()


def _stop_workers(workers, record):
    """Keep the rows already sent, then stop every worker (SIGTERM, then SIGKILL) and reap it, so no process
    outlives the sweep and no pipe is torn down under the interpreter's exit."""
    with _sigint_ignored():
        for w in workers:
            try:
                while w.proc.is_alive() and w.todo and w.conn.poll():
                    msg = w.conn.recv()
                    if msg[0] == "row":
                        _returned(w, msg[1])
                        record(msg[1], msg[2])
            except Exception:       # a row that cannot be read or stored now is computed again next run
                pass
        for w in workers:
            if w.proc.is_alive() and w.todo:
                w.proc.terminate()            # it is mid-group and its results are no longer wanted
        deadline = time.monotonic() + 10
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            w.conn.close()


# ---------------------------------------------------------------------------------------------------------- Dask


DASK_CHUNK = 8


def _evaluate_chunk(chunk, options):
    return [(i, evaluate_point(p, options)) for i, p in chunk]


def _dask_client(address, workers):
    from dask.distributed import Client, LocalCluster

    if address:
        try:
            return Client(address, timeout=f"{DASK_CONNECT_TIMEOUT_S}s"), None
        except Exception as exc:  # refused, timed out, not a Dask scheduler, TLS without credentials, …
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UFMInputError("--address", address, f"cannot connect to a Dask scheduler there "
                                f"({type(exc).__name__}: {first})") from None
    # Ctrl-C reaches the whole process group, and Dask's worker processes print a traceback each when it does; started
    # while SIGINT is ignored, they inherit the ignoring through exec (Python keeps an inherited SIG_IGN), so only
    # this process handles it (a Ctrl-C during these seconds of start-up is not seen)
    with _sigint_ignored():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
    return Client(cluster), cluster


def _close_dask(client, cluster):
    with contextlib.suppress(Exception):
        client.close(timeout=10)
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)


def _run_dask(todo, options, client, record, fail):
    from dask.distributed import as_completed

    # one task per run of ≤ DASK_CHUNK same-shape points: each compiles its shape once, and a lost parent loses
    # at most one chunk per worker of finished-but-unstored rows
    chunks = [g[k:k + DASK_CHUNK] for g in _shape_groups(todo) for k in range(0, len(g), DASK_CHUNK)]
    futures = {client.submit(_evaluate_chunk, chunk, options, pure=False): chunk for chunk in chunks}
    try:
        for fut in as_completed(list(futures)):
            try:
                rows = fut.result()
            except Exception as exc:  # KilledWorker (its workers kept dying), a lost connection, …
                for i, p in futures[fut]:
                    fail(i, p, f"the Dask task failed ({type(exc).__name__}: {exc})")
                continue
            for i, row in rows:
                record(i, row)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        raise


# --------------------------------------------------------------------------------------------------- the summary


def render_summary(s: SweepSummary, store_path) -> str:
    lines = [f"sweep: {s.total} points — {s.computed} computed now, {s.skipped} already in {store_path}, "
             f"{s.failures} failed, {s.wall_time:.1f} s"]
    if s.interrupted:
        lines.append(f"interrupted: {s.stored} of {s.total} points are stored; rerun the same command to finish the "
                     "rest")
    lines.extend(s.notes)
    lines.append("this grid's rows by class: "
                 + (", ".join(f"{v} {k}" for k, v in sorted(s.counts.items())) or "none yet"))
    lines.append(f"not converged: {s.not_converged}; largest |relative theory gap| among converged points where "
                 f"theory applies: {'—' if s.max_rel_gap is None else f'{s.max_rel_gap:.2e}'}")
    if s.failures:
        lines.append(f"failed: {s.failures} points have status 'error'; their messages are in the error column "
                     f"(df[df.status == 'error'].error); rerunning the same command computes them again")
    lines.append(f"load it: import ufm; df = ufm.load_sweep({str(store_path)!r})")
    return "\n".join(lines)

