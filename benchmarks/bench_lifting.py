"""The lifted K×K solve (``ufm.lifting.lifted_optimum``) against the full UFM solve (``ufm.solve`` at d = K) on the
same λ's and class sizes, at K = 10, 100, 1000, balanced and imbalanced: seconds, ratios and the objectives' agreement.

    python benchmarks/bench_lifting.py [--ks 10,100,1000] [--full-max-steps 10000] [--repeats 2] [--write PATH]

Lifted: *cold* is the first call for that K in this process (it includes JAX compilation; the imbalanced case at the
same K reuses the compiled program, so its first call is not cold); *warm* is the median of ``--repeats`` further
calls. Full: ``ufm.solve`` (Newton-CG) from the same seeded start, d = K, the first call (compile included) and, where
the first took under ``--warm-below`` seconds, the median of ``--repeats`` further calls. A full solve stopped by
``--full-max-steps`` is reported as capped with its status, never as converged. The lifted value is the proven
optimum of (7) for every d ≥ its rank (docs/theory.md §5.8), so f_full − f_lift ≥ −gap is expected, and ≈ 0 when
the full solve reaches the global minimum (the CE landscape at d = K is benign). CE, λ_W = λ_H = λ_b = λ.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

import ufm
from ufm.lifting import lifted_optimum

#: K: (λ, balanced n, imbalanced sizes (n_big, n_small): the first half of the classes get n_big, the rest n_small).
#: λ is chosen per K so that c = √(nλ_Wλ_H) stays below the trivial-collapse threshold 1/K (else W = H = 0, rank 0)
CASES = {10: (5e-3, 20, (20, 2)), 100: (1e-3, 5, (5, 1)), 1000: (1e-4, 1, (2, 1))}
#: full-solve step cap per K (a 2-core run at K = 1000, n = 1 took 26 Newton-CG steps, 179 s, in a trial)
FULL_CAP = {1000: 60}
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "lifting_cpu.md"


def sizes(K, spec):
    if isinstance(spec, int):
        return spec
    big, small = spec
    return tuple([big] * (K // 2) + [small] * (K - K // 2))


def time_lifted(prob, repeats, max_seconds=None):
    args = (prob.loss, prob.counts, prob.lam_W, prob.lam_H, prob.lam_b if prob.bias else 0.0, prob.bias_mode)
    t = time.perf_counter()
    first = lifted_optimum(*args, max_seconds=max_seconds)
    t_first = time.perf_counter() - t
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = lifted_optimum(*args, max_seconds=max_seconds)
        walls.append(time.perf_counter() - t)
    return first, t_first, statistics.median(walls) if walls else float("nan"), res if repeats else first


def time_full(prob, repeats, max_steps, warm_below):
    t = time.perf_counter()
    sol = ufm.solve(prob, max_steps=max_steps, seed=0)
    t_first = time.perf_counter() - t
    walls = []
    if t_first < warm_below:
        for _ in range(repeats):
            t = time.perf_counter()
            ufm.solve(prob, max_steps=max_steps, seed=0)
            walls.append(time.perf_counter() - t)
    return sol, t_first, statistics.median(walls) if walls else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="10,100,1000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lifted-max-seconds", type=float, default=None, help="cap each lifted solve (status max_seconds)")
    ap.add_argument("--lifted-repeats-1000", type=int, default=None, help="warm repeats at K ≥ 1000 (default --repeats)")
    ap.add_argument("--full-max-steps", type=int, default=10000)
    ap.add_argument("--warm-below", type=float, default=60.0, help="repeat the full solve only if its first took less")
    ap.add_argument("--only", choices=("balanced", "imbalanced"), help="run one of the two cases per K")
    ap.add_argument("--write", default=str(RESULTS), help="Markdown output ('' to skip)")
    args = ap.parse_args()
    Ks = [int(k) for k in args.ks.split(",")]

    threads = ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")
                        if v in os.environ) or "no thread limits set"
    head = (f"CE, λ_W = λ_H = λ_b = λ (per K below), d = K, float64, {threads}, jax {jax.__version__} on {jax.devices()[0].platform}; "
            f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other jobs; "
            f"{datetime.date.today().isoformat()}")
    print(head, flush=True)
    rows = ["| K | λ | class sizes | N | UFM parameters | lifted: cold s | lifted: warm s | lifted status (iters) | "
            "full: first s | full: warm s | full status (steps) | full first / lifted warm | full warm / lifted warm | "
            "f_lift | f_full − f_lift | lifted gap | rank |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for K in Ks:
        lam, n_bal, imb = CASES[K]
        for label, n in (("balanced", n_bal), ("imbalanced", sizes(K, imb))):
            if args.only and label != args.only:
                continue
            prob = ufm.Problem.create(K, K, n, lam=lam)
            reps = args.repeats if K < 1000 or args.lifted_repeats_1000 is None else args.lifted_repeats_1000
            first, t_cold, t_warm, lif = time_lifted(prob, reps, args.lifted_max_seconds)
            cold = f"{t_cold:.3f}" if K not in seen else f"({t_cold:.3f}, compiled)"
            seen.add(K)
            print(f"K={K} {label}: lifted {lif.status} in {t_warm:.3f} s warm ({t_cold:.3f} s first); full solve ...",
                  flush=True)
            max_steps = min(args.full_max_steps, FULL_CAP.get(K, args.full_max_steps))
            sol, f_first, f_warm = time_full(prob, args.repeats, max_steps, args.warm_below)
            status = sol.status.name.lower()
            capped = "" if status == "converged" else " (capped)" if sol.steps >= max_steps else ""
            sz = f"{n}" if isinstance(n, int) else f"{imb[0]}×{K // 2}, {imb[1]}×{K - K // 2}"
            base = t_warm if np.isfinite(t_warm) else t_cold       # no warm repeats: against the first call
            ratio_first = f_first / base
            ratio_warm = f_warm / base if np.isfinite(f_warm) else float("nan")
            rows.append(
                f"| {K} | {lam:g} | {sz} | {prob.N} | {prob.num_params:,} | {cold} | {'—' if not np.isfinite(t_warm) else f'{t_warm:.3f}'} | {lif.status} ({lif.iterations}) | "
                f"{f_first:.2f} | {'—' if not np.isfinite(f_warm) else f'{f_warm:.2f}'} | {status}{capped} ({sol.steps}) | "
                f"{ratio_first:.0f}× | {'—' if not np.isfinite(ratio_warm) else f'{ratio_warm:.0f}×'} | "
                f"{lif.value:.12f} | {sol.objective - lif.value:.2e} | {lif.gap:.1e} | {lif.rank} |")
            print(rows[-1], flush=True)
    text = "\n".join([f"# Lifted K×K solve vs full UFM solve (benchmarks/bench_lifting.py)", "", head, "",
                      "`python benchmarks/bench_lifting.py` " + f"--ks {args.ks} --repeats {args.repeats} "
                      f"--full-max-steps {args.full_max_steps}"
                      + (f" --lifted-max-seconds {args.lifted_max_seconds:g}" if args.lifted_max_seconds else "")
                      + (f" --lifted-repeats-1000 {args.lifted_repeats_1000}" if args.lifted_repeats_1000 is not None
                         else "") + (f" --only {args.only}" if args.only else ""), ""] + rows) + "\n"
    print("\n" + text)
    if args.write:
        os.makedirs(os.path.dirname(args.write), exist_ok=True)
        with open(args.write, "w") as fh:
            fh.write(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
