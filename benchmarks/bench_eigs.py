"""ARPACK (host) against the JAX-native thick-restart Lanczos (ufm/eigensolvers.py) for the matrix-free curvature of
``ufm landscape``: time, Hessian-vector products, residuals and peak memory, each method in a fresh process.

    python benchmarks/bench_eigs.py                      # 10⁶ and 10⁷ parameters, writes benchmarks/results/eigs_cpu.md
    python benchmarks/bench_eigs.py --sizes 100 --out -  # 10⁶ only, print the table
    python benchmarks/bench_eigs.py --algorithms         # HVPs to converge: Lanczos vs LOBPCG vs ARPACK (small)

The point is the exact global minimiser of docs/theory.md §4 (ufm.theory_point, randomly rotated) of the problem
K = 100, d = 100, n ∈ {100, 1000}, CE, λ = 1e-4 (below the trivial-collapse threshold: a real NC optimum, with
d(d−1)/2 − (d−K+1)(d−K)/2 = 4950 exact zero eigenvalues). Each method runs ``analyze_point(..., hessian="lanczos",
eigensolver=...)`` end to end, so the time includes what both share (gradient, certificate, bounds) and each one's
compilation; the columns give the products (HVPs) of the eigensolves, the largest eigenpair residual ‖Hv − θv‖, the
classification (which must agree) and the peak resident memory of the process (ru_maxrss). At 10⁶ the call is repeated
in the same process ("warm": compiled programs reused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METHODS = {"arpack": ("arpack", "float64"), "jax": ("jax", "float64"), "jax-f32": ("jax", "float32")}


def child(spec: dict) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import ufm
    from ufm.hessian import MatrixFree
    from ufm.model import flatten

    prob = ufm.Problem.create(spec["K"], spec["d"], spec["n"], lam=spec["lam"])
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(prob.d, prob.d)))
    x = flatten(ufm.theory_point(prob, rotation=Q), xp=np)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    solver, dtype = METHODS[spec["method"]]
    out = {"params": prob.num_params, "backend": jax.default_backend(), **spec}
    runs, curv = [], []
    for _ in range(spec["repeat"]):
        t = time.perf_counter()
        cp = ufm.analyze_point(prob, x, hessian="lanczos", eigensolver=solver, hessian_dtype=dtype)
        runs.append(time.perf_counter() - t)
        curv.append(cp.curvature["seconds"])
    if out["backend"] != "cpu":                  # device memory: ru_maxrss sees only the host
        out["device_peak_bytes"] = jax.devices()[0].memory_stats().get("peak_bytes_in_use")
    out.update(seconds=runs, curvature_seconds=curv, matvecs=cp.curvature["matvecs"], residual=cp.eig_residual,
               min_eig=cp.min_eig, min_eig_deflated=cp.min_eig_deflated, max_eig=cp.max_eig, zero_tol=cp.zero_tol,
               classification=cp.classification, peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               point_bytes=base)
    mf = MatrixFree(prob, x)
    v = np.random.default_rng(1).standard_normal(x.size)
    mf.H(v)
    t = time.perf_counter()
    for _ in range(3):
        mf.H(v)
    out["hvp_seconds"] = (time.perf_counter() - t) / 3
    return out


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def algorithms() -> str:
    """HVPs each algorithm needs for λ_min and λ_max of ∇²f at a small NC optimum and at a random point."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental.sparse.linalg import lobpcg_standard

    jax.config.update("jax_enable_x64", True)
    import ufm
    from ufm.eigensolvers import thick_restart_lanczos
    from ufm.hessian import MatrixFree, hvp
    from ufm.model import flatten

    lines = ["| point | P | Lanczos (ours): HVPs, one run for both ends | ARPACK: HVPs (largest + shifted smallest) | "
             "LOBPCG (jax.experimental): HVPs (largest + shifted smallest) | λ_min / λ_max (all three agree to) |",
             "|---|---|---|---|---|---|"]
    for K, d, n in ((10, 20, 10), (20, 40, 20)):
        prob = ufm.Problem.create(K, d, n, lam=1e-4)
        Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, d)))
        points = {"NC optimum": flatten(ufm.theory_point(prob, rotation=Q), xp=np),
                  "random (σ = 0.3)": np.random.default_rng(1).normal(size=prob.num_params) * 0.3}
        for name, x in points.items():
            xj = jnp.asarray(x)
            H = lambda v, xj=xj, prob=prob: hvp(xj, v, prob.reg, prob.shape)
            v0 = jnp.asarray(np.random.default_rng(2).standard_normal(x.size))
            ours = jax.jit(lambda v, H=H: thick_restart_lanczos(H, v, which="both", rtol=1e-10))(v0)
            mf = MatrixFree(prob, x)
            top = mf.largest()
            low = mf.smallest(top.value + max(1.0, 0.01 * abs(top.value)))
            # LOBPCG's convergence test is ‖r‖ < tol·10·P·(|θ| + ‖Av‖): tol = 1e-10/(10P) asks ≈ 1e-10·‖A‖ as ours
            Hb = jax.vmap(H, in_axes=1, out_axes=1)
            tol = 1e-10 / (10 * x.size)
            th, _, it = lobpcg_standard(Hb, v0[:, None], m=5000, tol=tol)
            sigma = 1.01 * float(th[0])
            th2, _, it2 = lobpcg_standard(lambda V, s=sigma, Hb=Hb: s * V - Hb(V), v0[:, None], m=5000, tol=tol)
            lob = (sigma - float(th2[0]), float(th[0]))
            # LOBPCG applies A to its [X, P, R] block (three products) and to X again every iteration, plus once
            lob_hvps = 4 * (int(it) + int(it2)) + 2
            agree = max(abs(float(ours.values[0]) - low.value), abs(float(ours.values[1]) - top.value),
                        abs(lob[0] - low.value), abs(lob[1] - top.value))
            lines.append(f"| {name} | {x.size:,} | {int(ours.matvecs)} | {top.matvecs + low.matvecs} | {lob_hvps} | "
                         f"{low.value:.3e} / {top.value:.3e} ({agree:.0e}) |")
    return "\n".join(lines)


def table(rows: list) -> str:
    lines = ["| P | method | backend | analyze_point s (first, warm) | of which eigensolves s (first, warm) | HVP ms | "
             "eigensolve products | max residual | λ_min | λ_min⊥ | λ_max | class | peak RSS GB | eigensolves vs "
             "ARPACK (first, warm) | peak vs ARPACK |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["n"]: r for r in rows if r["method"] == "arpack"}
    for r in rows:
        b = base.get(r["n"])
        pair = lambda xs: ", ".join(f"{v:.1f}" for v in xs)
        ratio_t = (", ".join(f"{a / c:.2f}×" for a, c in zip(r["curvature_seconds"], b["curvature_seconds"]))
                   if b else "—")
        peak = r.get("device_peak_bytes") or r["peak_bytes"]
        bpeak = b and (b.get("device_peak_bytes") or b["peak_bytes"])
        ratio_m = f"{peak / bpeak:.2f}×" if b else "—"
        where = " (device)" if r.get("device_peak_bytes") else ""
        lines.append(f"| {r['params']:,} | {r['method']} | {r['backend']} | {pair(r['seconds'])} | "
                     f"{pair(r['curvature_seconds'])} | {r['hvp_seconds'] * 1e3:.0f} | {r['matvecs']} | "
                     f"{r['residual']:.1e} | {r['min_eig']:.2e} | {r['min_eig_deflated']:.3e} | {r['max_eig']:.4e} | "
                     f"{r['classification']} | {peak / 1e9:.2f}{where} | {ratio_t} | {ratio_m} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="100,1000", help="samples per class n (K = d = 100): 100 → 10⁶, 1000 → 10⁷")
    ap.add_argument("--methods", default="arpack,jax,jax-f32", help=f"of {', '.join(METHODS)}")
    ap.add_argument("--lam", type=float, default=1e-4)
    ap.add_argument("--algorithms", action="store_true", help="only the small HVP-count comparison of algorithms")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "eigs_cpu.md"),
                    help="markdown file to write ('-': print only)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.algorithms:
        print(algorithms())
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            spec = {"K": 100, "d": 100, "n": n, "lam": args.lam, "method": method, "repeat": 2 if n <= 100 else 1}
            rows.append(run_child(spec))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if args.out != "-":
        with open(args.out, "w") as fh:
            fh.write(f"# ARPACK vs JAX-native eigensolver\n\n`python benchmarks/bench_eigs.py --sizes {args.sizes} "
                     f"--methods {args.methods}`\n\n{text}\n")


if __name__ == "__main__":
    main()
