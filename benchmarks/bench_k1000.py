"""Many classes in few dimensions (issue 11: (K, d, n) = (1000, 512, 10), d < K − 1): work counts and allocation churn
of the solvers, before and after a change, side by side in one run.

    python benchmarks/bench_k1000.py --churn 1000,512,10,lbfgs,15 [--churn ...] [--before REV]
    python benchmarks/bench_k1000.py --ladder 200,100,10 [--ladder 400,200,10] [--solvers newton,lbfgs,auto] [--before REV]

Each run is a fresh process (``ufm`` of this checkout, *after*, or of git revision ``--before``, unpacked with ``git
archive`` into a temporary folder, *before*), λ = 1e-4, CE, seed 0, float64, reporting from ``getrusage``: wall
time, user and system CPU seconds, minor page faults and peak RSS, with ``Solution.work`` (value-and-gradients,
Hessian-vector products, Newton steps) and the status, ‖∇f‖ and f. ``--churn`` runs a fixed number of steps
(``max_steps``), so the two sides do the same work and the faults per step compare directly; ``--ladder`` solves to
the default tolerances. Before and after alternate per row, so both see the same load (given beside each table).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: main before the carry donation and the f-progress stall rule
BEFORE = "3b74e35"

CHILD = r"""
import json, resource, sys, time
import ufm
K, d, n, solver, steps = sys.argv[1:6]
t0 = time.perf_counter()
sol = ufm.solve(K=int(K), d=int(d), n=int(n), lam=1e-4, solver=solver, max_steps=int(steps))
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(dict(status=sol.status.name, grad_norm=sol.grad_norm, f=sol.objective, steps=sol.steps,
                      stage_steps=list(sol.stage_steps), work=sol.work, solve_s=wall, user_s=ru.ru_utime,
                      sys_s=ru.ru_stime, minflt=ru.ru_minflt, maxrss_gib=ru.ru_maxrss / 2**20)))
"""


def unpack(rev: str, into: str) -> str:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "ufm"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into)
    return into


def run(path: str, K, d, n, solver, steps) -> dict:
    env = dict(os.environ, PYTHONPATH=path)
    # cwd = the side's own root: `python -c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", CHILD, str(K), str(d), str(n), solver, str(steps)], env=env,
                         cwd=path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--churn", action="append", default=[], help="K,d,n,solver,steps (fixed step count)")
    ap.add_argument("--ladder", action="append", default=[], help="K,d,n (solved to the default tolerances)")
    ap.add_argument("--solvers", default="newton,lbfgs,auto")
    ap.add_argument("--before", default=BEFORE)
    args = ap.parse_args(argv)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores, "
          f"before = {args.before}, after = this checkout; `python benchmarks/bench_k1000.py "
          + " ".join(sys.argv[1:]) + "`\n")
    with tempfile.TemporaryDirectory() as tmp:
        before = unpack(args.before, tmp)
        after = str(ROOT)
        churn = [(*spec.split(",")[:4], spec.split(",")[4]) for spec in args.churn]
        ladder = [(*spec.split(","), solver, 10000) for spec in args.ladder for solver in args.solvers.split(",")]
        table(churn, before, after, ("steps", "value+grad", "HVPs", "solve s", "user s", "sys s", "minor faults",
                                     "faults/step", "peak RSS GiB"),
              lambda r: (r["steps"], r["work"]["value_grad"], r["work"]["hvp"], f"{r['solve_s']:.1f}",
                         f"{r['user_s']:.1f}", f"{r['sys_s']:.1f}", f"{r['minflt']:,}",
                         f"{r['minflt'] / max(r['steps'], 1):,.0f}", f"{r['maxrss_gib']:.2f}"))
        table(ladder, before, after, ("status", "‖∇f‖", "f", "stage steps", "value+grad", "HVPs", "Newton steps",
                                      "solve s", "sys s", "peak RSS GiB"),
              lambda r: (r["status"], f"{r['grad_norm']:.1e}", f"{r['f']:.15g}", "+".join(map(str, r["stage_steps"])),
                         r["work"]["value_grad"], r["work"]["hvp"], r["work"]["newton_steps"], f"{r['solve_s']:.1f}",
                         f"{r['sys_s']:.1f}", f"{r['maxrss_gib']:.2f}"))


def table(specs, before, after, columns, cells):
    """One markdown table: a row per spec (K, d, n, solver, steps) and side, before and after alternating."""
    if not specs:
        return
    print(f"load before: {load()}\n")
    print("| K | d | n | solver | side | " + " | ".join(columns) + " |")
    print("|" + "---|" * (5 + len(columns)))
    for K, d, n, solver, steps in specs:
        for side, path in (("before", before), ("after", after)):
            r = run(path, K, d, n, solver, steps)
            print(f"| {K} | {d} | {n} | {solver} | {side} | " + " | ".join(map(str, cells(r))) + " |", flush=True)
    print(f"\nload after: {load()}\n")


if __name__ == "__main__":
    main()
