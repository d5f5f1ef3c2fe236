"""Newton-CG's line search after a negative-curvature exit, old rule against new in one run (issue 11): the work
counts ``Solution.work`` (Newton steps, Hessian-vector products, value-and-gradients) of ``NewtonCG(line_search=
"backtrack")`` (every search halves from t = 1, the rule before) and ``NewtonCG(line_search="nc-memory")`` (an
option), solved to the default float64 tolerances, problem by problem and seed by seed.

    python benchmarks/bench_newton_ls.py --problem 200,100,10 --seeds 0,1,2,3 [--problem 100,100,100,1e-4 ...]

A problem is K,d,n[,λ] (λ = 1e-4 unless given), CE, init scale 0.1. The counts do not depend on the machine's load;
the solve seconds (printed for information) do, so the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

RULES = ("backtrack", "nc-memory")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", action="append", default=[], help="K,d,n[,lam]")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--max-steps", type=int, default=2000)
    args = ap.parse_args(argv)
    import ufm
    from ufm.methods import NewtonCG

    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.2f}; "
          f"`python benchmarks/bench_newton_ls.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print("| (K, d, n) | λ | seed | line search | status | ‖∇f‖ | f | steps | HVPs | value+grad | solve s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for spec in args.problem or ["200,100,10"]:
        parts = spec.split(",")
        K, d, n = map(int, parts[:3])
        lam = float(parts[3]) if len(parts) > 3 else 1e-4
        for seed in map(int, args.seeds.split(",")):
            for rule in RULES:
                t0 = time.perf_counter()
                sol = ufm.solve(K=K, d=d, n=n, lam=lam, seed=seed, max_steps=args.max_steps,
                                solver=NewtonCG(line_search=rule))
                w = sol.work
                print(f"| ({K}, {d}, {n}) | {lam:g} | {seed} | {rule} | {sol.status.name} | {sol.grad_norm:.1e} | "
                      f"{sol.objective:.15f} | {w['newton_steps']} | {w['hvp']} | {w['value_grad']} | "
                      f"{time.perf_counter() - t0:.1f} |", flush=True)
                tot = totals.setdefault(((K, d, n), lam, rule), [0, 0, 0, 0])
                for i, v in enumerate((w["newton_steps"], w["hvp"], w["value_grad"],
                                       sol.status.name != "CONVERGED")):
                    tot[i] += v
    print("\n| (K, d, n) | λ | line search | seeds | not converged | steps | HVPs | value+grad | HVPs new/old | "
          "value+grad new/old |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (shape, lam, rule), (steps, hvp, vg, bad) in totals.items():
        old = totals[(shape, lam, "backtrack")]
        print(f"| {shape} | {lam:g} | {rule} | {args.seeds} | {bad} | {steps} | {hvp} | {vg} | {hvp / old[1]:.2f} | "
              f"{vg / old[2]:.2f} |")
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
