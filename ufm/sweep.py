"""Running a sweep: every grid point solved (and, on request, analysed and censused), rows into the store.

Execution was chosen by measurement (benchmarks/bench_sweep.py, README): on a 2-core CPU a loop of one jitted
solve per point beat ``vmap`` (design.md §4), and one in-process loop was as fast as two single-threaded worker
processes (``auto_workers``). Points are ordered by shape and a shape's points go to one worker together, so each
shape compiles once and is reused for every λ and seed. Only the
parent writes the store; an interrupted sweep resumes by rerunning the same command.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional

from .grid import Grid, SweepOptions, point_key, problem_of
from .store import SweepStore

EXECUTORS = ("local", "dask")
_SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def evaluate_point(point: dict, options: SweepOptions) -> dict:
    """Solve one grid point and measure it: the store's row (inputs and outputs). Never raises: a failure is a row
    with status ``error`` and the message."""
    from .critical import analyze_point, origin, origin_min_eig_theory
    from .landscape import census
    from .report import solution_record
    from .solvers import solve

    t0 = time.perf_counter()
    row = dict(point, solver=options.solver, gtol=options.gtol, analyze=options.analyze, census=options.census)
    try:
        prob = problem_of(point)
        sol = solve(prob, solver=options.solver, gtol=options.gtol, max_steps=options.max_steps, seed=point["seed"],
                    init_scale=options.init_scale)
        rec = solution_record(sol)
        th = rec["theory"]
        row.update(status=rec["status"], converged=rec["converged"], objective=rec["objective"],
                   grad_norm=rec["grad_norm"], steps=rec["steps"], W_fro_sq=rec["W_fro_sq"], H_fro_sq=rec["H_fro_sq"],
                   theory_applies=th["applies"], theory_objective=th["objective"], theory_gap=th["gap"],
                   theory_rel_gap=th["rel_gap"], theory_geometry=th["geometry"], solve_time_s=sol.wall_time,
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


def _worker_init():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _SINGLE_THREAD_XLA).strip()


def _shape_order(item):
    _, p = item
    return (p["K"], p["d"], p["n"], p["loss"], p["bias"] == "none")


@dataclasses.dataclass
class SweepSummary:
    total: int
    skipped: int                  # already in the store from an earlier run
    computed: int
    failures: int                 # rows with status error
    counts: dict                  # classification (or status) → number of rows, over the whole store
    not_converged: int
    max_rel_gap: Optional[float]
    wall_time: float
    interrupted: bool = False


def run_sweep(grid: Grid, store_path, *, workers: int = 1, executor: str = "local", address: Optional[str] = None,
              progress: Optional[Callable] = None) -> SweepSummary:
    """Compute every point of ``grid`` missing from the store at ``store_path``; return the summary."""
    from .errors import UFMInputError

    if executor not in EXECUTORS:
        raise UFMInputError("--executor", executor, f"use one of {', '.join(EXECUTORS)}")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UFMInputError("--workers", workers, "must be an integer ≥ 1")
    grid.validate()
    points = grid.points()
    keys = [point_key(p, grid.options) for p in points]
    store = SweepStore(store_path)
    t0 = time.perf_counter()
    done = store.done_keys()
    todo = sorted(((i, p) for i, p in enumerate(points) if keys[i] not in done), key=_shape_order)
    run = store.new_run(len(todo))
    if workers == "auto":
        workers = auto_workers(todo)
    failures, computed, interrupted = 0, 0, False

    def record(i, row):
        nonlocal failures, computed
        store.add(keys[i], i, run, row)
        failures += row.get("status") == "error"
        computed += 1
        if progress:
            progress(1, failures)

    try:
        if not todo:
            pass
        elif executor == "dask":
            _run_dask(todo, grid.options, workers, address, record)
        elif workers == 1:
            for i, p in todo:
                record(i, evaluate_point(p, grid.options))
        else:
            _run_processes(todo, grid.options, workers, record)
    except KeyboardInterrupt:
        interrupted = True
    summary = summarize(store, len(points), len(points) - len(todo), computed, failures, time.perf_counter() - t0,
                        interrupted)
    store.close()
    return summary


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


_QUEUE = None


def _worker_init_queue(queue):
    global _QUEUE
    _worker_init()
    _QUEUE = queue


def _evaluate_group(args):
    group, options = args
    for i, p in group:
        _QUEUE.put((i, evaluate_point(p, options)))      # row by row: the parent stores each as it lands
    return len(group)


def auto_workers(todo) -> int:
    """Measured on the 2-core development machine (benchmarks/bench_sweep.py, README): one in-process loop keeps
    both cores busy in XLA, and two single-threaded workers were 0.92× (100 points, 20 shapes, compile-bound) to
    1.2× (100 points, 4 shapes, n = 1000) of it while each costs ~3 s to start JAX. So: in-process on ≤ 2 cores or
    under 20 points; otherwise one worker per core, never more than the shapes (a shape compiles on one worker)."""
    cores = os.cpu_count() or 1
    if len(todo) < 20 or cores <= 2:
        return 1
    return max(1, min(cores, len(_shape_groups(todo))))


def _run_processes(todo, options, workers, record):
    import multiprocessing as mp
    import queue as queue_mod

    # spawn, not fork: a forked JAX runtime is unsafe
    ctx = mp.get_context("spawn")
    rows = ctx.Queue()
    with ctx.Pool(workers, initializer=_worker_init_queue, initargs=(rows,)) as pool:
        # biggest groups first, so the last ones to finish are short
        groups = sorted(_shape_groups(todo), key=len, reverse=True)
        pending = pool.map_async(_evaluate_group, [(g, options) for g in groups], chunksize=1)
        received = 0
        while received < len(todo):
            try:
                i, row = rows.get(timeout=1.0)
            except queue_mod.Empty:
                if pending.ready():
                    pending.get()             # re-raises a worker's crash
                    if rows.empty():
                        break
                continue
            record(i, row)
            received += 1


DASK_CHUNK = 8


def _evaluate_chunk(chunk, options):
    return [(i, evaluate_point(p, options)) for i, p in chunk]


def _run_dask(todo, options, workers, address, record):
    from dask.distributed import Client, LocalCluster, as_completed

    if address:
        client = Client(address, timeout="30s")
        cluster = None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    try:
        # one task per run of ≤ DASK_CHUNK same-shape points: each compiles its shape once, and a lost parent loses
        # at most one chunk per worker of finished-but-unstored rows
        chunks = [g[k:k + DASK_CHUNK] for g in _shape_groups(todo) for k in range(0, len(g), DASK_CHUNK)]
        futures = [client.submit(_evaluate_chunk, chunk, options, pure=False) for chunk in chunks]
        for fut in as_completed(futures):
            for i, row in fut.result():
                record(i, row)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def summarize(store: SweepStore, total, skipped, computed, failures, wall, interrupted=False) -> SweepSummary:
    """Counts by class (or status), non-converged rows and the largest relative theory gap, over the whole store."""
    db = store.db
    counts = {}
    for cls, status, n in db.execute("SELECT classification, status, COUNT(*) FROM points GROUP BY classification, status"):
        label = cls if cls is not None else status
        counts[label] = counts.get(label, 0) + n
    not_conv = db.execute("SELECT COUNT(*) FROM points WHERE converged = 0 OR converged IS NULL").fetchone()[0]
    gap = db.execute("SELECT MAX(ABS(theory_rel_gap)) FROM points WHERE converged = 1 AND theory_applies = 1").fetchone()[0]
    return SweepSummary(total=total, skipped=skipped, computed=computed, failures=failures,
                        counts=counts, not_converged=int(not_conv), max_rel_gap=gap, wall_time=wall,
                        interrupted=interrupted)


def render_summary(s: SweepSummary, store_path) -> str:
    lines = [f"sweep: {s.total} points — {s.computed} computed now, {s.skipped} already in {store_path}, "
             f"{s.failures} failed, {s.wall_time:.1f} s"]
    if s.interrupted:
        lines.append(f"interrupted: {s.skipped + s.computed} of {s.total} points are stored; rerun the same command "
                     "to finish the rest")
    lines.append("rows by class: " + ", ".join(f"{v} {k}" for k, v in sorted(s.counts.items())))
    lines.append(f"not converged: {s.not_converged}; largest |relative theory gap| among converged points where "
                 f"theory applies: {'—' if s.max_rel_gap is None else f'{s.max_rel_gap:.2e}'}")
    lines.append(f"load it: import ufm; df = ufm.load_sweep({str(store_path)!r})")
    return "\n".join(lines)
