"""One prepared run of ufm on whatever backend JAX finds (a GPU when there is one): GEMM rate, value-and-gradient
against it, solve, λ_min and a 100-point sweep at 10⁶, 10⁷ and (memory permitting) 10⁸ parameters, and the same
measurements on the CPU backend where sizes allow. Writes a Markdown table and the raw numbers as JSON.

    python benchmarks/device.py [--out benchmarks/results/device_<backend>.md] [--budget 420] [--quick]

It installs nothing and needs nothing beyond the project. Each stage is skipped (and says so) when the time left in
``--budget`` seconds is less than its estimate, so the run ends in time. ``--quick`` uses tiny sizes (a check that
the script works, e.g. on a CPU-only machine; the test suite runs it).

Sizes: (K, d, n) = (100, 100, 100) has P = Kd + dN + K = 1.0e6 parameters, n = 1000 gives 1.0e7, n = 10000 1.0e8 — all
with λ = 1e-4, below the trivial-collapse threshold, so the optimum is a real NC configuration (docs/theory.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SIZES = {"1e6": (100, 100, 100), "1e7": (100, 100, 1000), "1e8": (100, 100, 10000)}
QUICK_SIZES = {"1e4": (10, 20, 40), "1e5": (20, 50, 90)}
LAM = 1e-4


def _median_time(fn, repeats=5):
    fn()                                    # compile and warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _device_memory_bytes():
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("bytes_limit"), stats.get("peak_bytes_in_use")
    except Exception:                       # the CPU backend has no memory_stats
        return None, None


def gemm_and_gradient(K, d, n, dtype):
    """Seconds for the three GEMMs a value-and-gradient needs, for the value-and-gradient itself and an HVP, and the
    GEMM rate (flop/s). Z = W H (K×d by d×N), ∇W = G Hᵀ, ∇H = Wᵀ G: 3 · 2KdN flops."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ufm
    from ufm.hessian import hvp, value_and_grad
    from ufm.model import flatten

    with jax.enable_x64(dtype == "float64"):
        p = ufm.Problem.create(K=K, d=d, n=n, lam=LAM)
        N = p.N
        rng = np.random.default_rng(0)
        W = jnp.asarray(rng.standard_normal((K, d)), dtype)
        H = jnp.asarray(rng.standard_normal((d, N)), dtype)
        G = jnp.asarray(rng.standard_normal((K, N)), dtype)

        @jax.jit
        def three(W, H, G):
            return W @ H, G @ H.T, W.T @ G

        t_gemm = _median_time(lambda: jax.block_until_ready(three(W, H, G)))
        x = jnp.asarray(flatten(ufm.init_params(p, 0, 0.1, dtype), xp=np), dtype)
        reg = ufm.Reg(*(jnp.asarray(v, dtype) for v in p.reg))
        t_vg = _median_time(lambda: jax.block_until_ready(value_and_grad(x, reg, p.shape)))
        t_hvp = _median_time(lambda: jax.block_until_ready(hvp(x, x, reg, p.shape)))
    flops = 3 * 2 * K * d * N
    return {"P": p.num_params, "gemm_s": t_gemm, "value_grad_s": t_vg, "hvp_s": t_hvp, "gemm_flops": flops / t_gemm,
            "value_grad_over_gemm": t_vg / t_gemm, "hvp_over_gemm": t_hvp / t_gemm}


def solve_and_curvature(K, d, n, do_curvature=True):
    import ufm

    p = ufm.Problem.create(K=K, d=d, n=n, lam=LAM)
    t0 = time.perf_counter()
    sol = ufm.solve(p)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    sol = ufm.solve(p)
    warm = time.perf_counter() - t0
    th = ufm.theory_optimum(p)
    out = {"P": p.num_params, "solve_cold_s": cold, "solve_warm_s": warm, "status": sol.status.name.lower(),
           "steps": sol.steps, "grad_norm": sol.grad_norm,
           "rel_gap_theory": (sol.objective - th.objective) / abs(th.objective) if th.applies else None}
    if do_curvature:
        t0 = time.perf_counter()
        cp = ufm.analyze_point(p, sol.params, hessian="lanczos")
        out.update(curvature_s=time.perf_counter() - t0, min_eig=cp.min_eig, min_eig_deflated=cp.min_eig_deflated,
                   eig_residual=cp.eig_residual, classification=cp.classification,
                   eigensolver=getattr(cp, "eigensolver", None) or cp.hessian_method)
    out["device_bytes_limit"], out["device_peak_bytes"] = _device_memory_bytes()
    return out


def sweep_100(K, d, n, batch, store):
    """100 points of one shape: 10 λ's × 10 seeds, each solved, measured and bounded as `ufm sweep` does. A 2-point
    sweep first compiles what the mode needs, and the bounds cache is emptied, so neither mode inherits the other's
    work."""
    import ufm
    from ufm.bounds import _problem_bounds
    from ufm.grid import build_grid

    spec = lambda lam, seeds: build_grid({}, {"K": str(K), "d": str(d), "n": str(n), "lam": lam,
                                               "seed": ",".join(map(str, seeds))})
    for path in (store, store + ".warm"):
        if os.path.exists(path):
            os.remove(path)
    ufm.run_sweep(spec("5e-2", (0, 1)), store + ".warm", workers=1, batch=batch)
    _problem_bounds.cache_clear()
    grid = spec("log:1e-4:1e-3:10", range(10))
    t0 = time.perf_counter()
    s = ufm.run_sweep(grid, store, workers=1, batch=batch)
    return {"points": s.total, "computed": s.computed, "failures": s.failures, "batched": s.batched,
            "seconds": time.perf_counter() - t0, "counts": s.counts, "max_rel_gap": s.max_rel_gap}


def _cpu_run(args, sizes) -> dict:
    """The same measurements on the CPU backend, in a fresh process (JAX picks its backend once per process)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--backend-only", "--json-only", "--sizes", ",".join(sizes),
           "--budget", str(args.cpu_budget)] + (["--quick"] if args.quick else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.cpu_budget + 120)
    if r.returncode != 0:
        return {"error": r.stderr[-800:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(args, sizes, budget, say, save=lambda res: None) -> dict:
    """Every stage that fits in ``budget``; ``save(res)`` after each, so a run stopped from outside keeps its numbers."""
    import jax

    t_start = time.perf_counter()
    left = lambda: budget - (time.perf_counter() - t_start)
    res = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
           "sizes": {}, "skipped": []}
    table = QUICK_SIZES if args.quick else SIZES
    sweep_size = sizes[0]
    # rough seconds each stage needs at 1e6 on a GPU; scaled by size, used only to skip what cannot finish in time
    for name in sizes:
        if name == sizes[-1] and len(sizes) > 2:
            _sweeps(args, res, table, sweep_size, left, say, save, t_start)
        K, d, n = table[name]
        scale = (K * d * n) / 1e6
        row = res["sizes"].setdefault(name, {})
        for dtype in ("float64", "float32"):
            if left() < 10 + 2 * scale:
                res["skipped"].append(f"{name} gradient {dtype}: budget")
                continue
            say(f"[{name}] GEMM and value-and-gradient, {dtype}")
            row[f"grad_{dtype}"] = gemm_and_gradient(K, d, n, dtype)
        if left() < 20 + 3 * scale:
            res["skipped"].append(f"{name} solve: budget")
            continue
        say(f"[{name}] solve (cold, warm) and λ_min")
        try:
            row["solve"] = solve_and_curvature(K, d, n, do_curvature=left() > 30 + 3 * scale)
        except Exception as exc:                   # out of device memory at 1e8, say: report it, go on
            row["solve"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        res["seconds"] = time.perf_counter() - t_start
        save(res)
    if "sweep" not in res and not any(x.startswith("sweep") for x in res["skipped"]):
        _sweeps(args, res, table, sweep_size, left, say, save, t_start)
    res["seconds"] = time.perf_counter() - t_start
    return res


def _sweeps(args, res, table, size, left, say, save, t_start):
    """The 100-point sweep at ``size``, batched and not (the largest size comes after it: it may not fit)."""
    K, d, n = table[size]
    for batch in ("on", "off"):
        if left() < 90:
            res["skipped"].append(f"sweep {size} batch={batch}: budget")
            continue
        say(f"[{size}] 100-point sweep, batch {batch}")
        res.setdefault("sweep", {})[batch] = sweep_100(K, d, n, batch, os.path.join(args.tmp, f"sweep-{batch}.db"))
        res["seconds"] = time.perf_counter() - t_start
        save(res)


def _fmt(v, spec=".3g"):
    return "—" if v is None else (format(v, spec) if isinstance(v, (int, float)) else str(v))


def markdown(res: dict, cpu: dict | None) -> str:
    lines = [f"# ufm on {res['device']} ({res['backend']}), JAX {res['jax']}", "",
             f"Measured by `python benchmarks/device.py` on {time.strftime('%Y-%m-%d')}, {res['seconds']:.0f} s. "
             "Times are medians of 5 after a warm-up (solves: one cold, one warm).", ""]
    runs = [("this backend", res)] + ([("CPU backend, same machine", cpu)] if cpu and "sizes" in cpu else [])
    lines += ["## Value-and-gradient against the GEMMs it needs", "",
              "| run | P | dtype | 3 GEMMs (ms) | GEMM rate (GFLOP/s) | value+grad (ms) | value+grad / GEMMs | HVP / GEMMs |",
              "|---|---|---|---|---|---|---|---|"]
    for label, r in runs:
        for name, row in r["sizes"].items():
            for dtype in ("float64", "float32"):
                g = row.get(f"grad_{dtype}")
                if g:
                    lines.append(f"| {label} | {g['P']:.2e} | {dtype} | {g['gemm_s'] * 1e3:.3g} | "
                                 f"{g['gemm_flops'] / 1e9:.4g} | {g['value_grad_s'] * 1e3:.3g} | "
                                 f"{g['value_grad_over_gemm']:.2f} | {g['hvp_over_gemm']:.2f} |")
    lines += ["", "## Solve and λ_min (float64)", "",
              "| run | P | solve cold (s) | solve warm (s) | status | steps | rel. gap to theory | λ_min (s) | "
              "λ_min | residual | class | eigensolver | device peak (GB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs:
        for name, row in r["sizes"].items():
            s = row.get("solve")
            if not s:
                continue
            if "error" in s:
                lines.append(f"| {label} | {name} | {s['error']} |||||||||||")
                continue
            peak = s.get("device_peak_bytes")
            lines.append(f"| {label} | {s['P']:.2e} | {s['solve_cold_s']:.3g} | {s['solve_warm_s']:.3g} | {s['status']} | "
                         f"{s['steps']} | {_fmt(s['rel_gap_theory'], '.1e')} | {_fmt(s.get('curvature_s'))} | "
                         f"{_fmt(s.get('min_eig'), '.2e')} | {_fmt(s.get('eig_residual'), '.1e')} | "
                         f"{_fmt(s.get('classification'))} | {_fmt(s.get('eigensolver'))} | "
                         f"{_fmt(None if peak is None else peak / 1e9)} |")
    if res.get("sweep"):
        lines += ["", "## 100-point sweep (10 λ × 10 seeds, one shape)", "",
                  "| run | batch | seconds | computed | failures | classes | max rel. theory gap |", "|---|---|---|---|---|---|---|"]
        for label, r in runs:
            for batch, s in (r.get("sweep") or {}).items():
                lines.append(f"| {label} | {batch} (batched: {s['batched']}) | {s['seconds']:.1f} | {s['computed']} | "
                             f"{s['failures']} | {s['counts']} | {_fmt(s['max_rel_gap'], '.1e')} |")
    skipped = res["skipped"] + [f"CPU: {x}" for x in (cpu or {}).get("skipped", [])]
    if cpu and "error" in cpu:
        skipped.append(f"CPU run failed: {cpu['error']}")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="Markdown file (default benchmarks/results/device_<backend>.md)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for this backend's stages (default 420)")
    ap.add_argument("--cpu-budget", type=float, default=60, help="seconds for the CPU-backend comparison (0: none)")
    ap.add_argument("--sizes", help="comma-separated size names (default 1e6,1e7,1e8; --quick: 1e4,1e5)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="folder for the sweep stores")
    ap.add_argument("--backend-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    table = QUICK_SIZES if args.quick else SIZES
    sizes = args.sizes.split(",") if args.sizes else list(table)
    bad = [s for s in sizes if s not in table]
    if bad:
        ap.error(f"--sizes: {bad} not among {list(table)}")
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    out = args.out

    def save(res, cpu=None):
        if args.json_only:
            return
        path = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"device_{res['backend']}.md")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(markdown(res, cpu))
        with open(os.path.splitext(path)[0] + ".json", "w") as fh:
            json.dump({"this": res, "cpu": cpu}, fh, indent=1, default=str)
        return path

    res = measure(args, sizes, args.budget, say, save)
    if args.json_only:
        print(json.dumps(res, default=str))
        return
    cpu = None
    if args.cpu_budget > 0 and res["backend"] != "cpu":
        say("CPU backend comparison (fresh process)")
        cpu = _cpu_run(args, sizes[:1])
    res["host"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    path = save(res, cpu)
    print(markdown(res, cpu))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
