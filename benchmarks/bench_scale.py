"""The whole `ufm landscape --at solution` at 10⁶–10⁷ parameters, one process per run: wall time, peak RSS, the
solve's work counts and the eigensolve's residual, next to the memory model (ufm/resources.py); and the float64
solve at (K, d, n) = (1000, 512, 10).

    python benchmarks/bench_scale.py                      # 10⁷ landscape + the (1000, 512, 10) solve
    python benchmarks/bench_scale.py --sizes 100,1000 --forcing sqrt,ew --no-big
    python benchmarks/bench_scale.py --sizes 100 --compare 3b74e35 --repeat 2 --hvp-micro --no-table --no-big

Each run is a subprocess under ``/usr/bin/time -v`` (whole-process wall time and maximum resident set size); the
machine's load (``uptime``) is recorded before and after each run, since this CPU is shared. ``--forcing`` also runs
the solve alone with each Newton-CG forcing rule, side by side in one process (the work counters do not depend on
the load). ``--hvp-micro`` times one Hessian-vector product in float64 and in float32 (the iterate and the λ's
rounded), interleaved in one process. ``--compare REF`` runs
each landscape also on the code of git revision REF (extracted to a temporary folder), the two interleaved
``--repeat`` times, and reports the ratios of wall and CPU time beside timing-free counts: the products, and the
GEMMs (dot) and exponentials XLA compiled into one CG iteration and one Lanczos step of each code. Writes
benchmarks/results/scale_cpu.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
#: the sizes of issue 11: K = d = 100, λ = 1e-4, CE (the default loss); n = 1000 is 1.0·10⁷ parameters
K, D, LAM = 100, 100, 1e-4
BIG = (1000, 512, 10)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def timed(cmd: list[str], timeout=None, root: Path = ROOT) -> dict:
    """Run ``cmd`` under /usr/bin/time -v with ufm from ``root``: its stdout, wall and CPU (user + system) seconds,
    peak RSS (bytes), exit code, load before/after (exit code None: stopped at ``timeout`` seconds)."""
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load0 = uptime()
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as tf:
        t0 = time.perf_counter()
        try:
            # cwd: `python -c` and `-m` put the working directory first on sys.path
            proc = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], capture_output=True, text=True,
                                  env=env, timeout=timeout, cwd=root)
        except subprocess.TimeoutExpired:
            return {"code": None, "wall_s": time.perf_counter() - t0, "load_before": load0, "load_after": uptime()}
        wall = time.perf_counter() - t0
        stats = tf.read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats).group(1)) * 1024
    cpu = sum(float(re.search(rf"{what} time \(seconds\): ([\d.]+)", stats).group(1)) for what in ("User", "System"))
    return {"stdout": proc.stdout, "stderr": proc.stderr[-2000:], "code": proc.returncode, "wall_s": wall,
            "cpu_s": cpu, "peak_rss": rss, "load_before": load0, "load_after": uptime()}


def runtime_rss() -> int:
    """Peak RSS of the interpreter with jax and ufm loaded and one array made (resources.RUNTIME_BYTES)."""
    return timed([sys.executable, "-c", "import ufm, jax; jax.numpy.zeros(1).block_until_ready()"])["peak_rss"]


def model(n: int, **kw) -> int:
    sys.path.insert(0, str(ROOT))
    import ufm
    from ufm.resources import peak_rss
    return peak_rss(ufm.Problem.create(K=K, d=D, n=n, lam=LAM), **kw)


def landscape(n: int, root: Path = ROOT) -> dict:
    r = timed([sys.executable, "-m", "ufm", "landscape", "-K", str(K), "-d", str(D), "-n", str(n), "--lam", str(LAM),
               "--at", "solution", "--eigensolver", "jax", "--json"], root=root)
    if r["code"] != 0:
        raise SystemExit(f"landscape n={n} failed ({r['code']}): {r['stderr']}")
    rec = json.loads(r["stdout"])
    cp = rec["critical_points"][0]
    return {**r, "P": K * D + D * K * n + K, "n": n, "solve": rec["solve"], "classification": cp["classification"],
            "min_eig": cp["min_eig"], "eig_residual": cp["eig_residual"], "curvature": cp["curvature"],
            "model": model(n, solver="auto", hessian="lanczos", eigensolver="jax")}


SOLVE_SCRIPT = """
import json, sys, time, ufm
from ufm.methods import NewtonCG
K, d, n, lam, solver = json.loads(sys.argv[1])
prob = ufm.Problem.create(K=K, d=d, n=n, lam=lam)
t = time.perf_counter()
sol = ufm.solve(prob, solver=NewtonCG(forcing=solver) if solver in ("ew", "sqrt") else solver)
print(json.dumps({"status": sol.status.name, "grad_norm": sol.grad_norm, "objective": sol.objective,
                  "steps": sol.steps, "work": sol.work, "solve_s": time.perf_counter() - t}))
"""


def solve_only(K_, d_, n_, lam, solver, timeout=None) -> dict:
    r = timed([sys.executable, "-c", SOLVE_SCRIPT, json.dumps([K_, d_, n_, lam, solver])], timeout)
    if r["code"] is None:
        return r
    if r["code"] != 0:
        raise SystemExit(f"solve {(K_, d_, n_, solver)} failed ({r['code']}): {r['stderr']}")
    return {**r, **json.loads(r["stdout"].strip().splitlines()[-1])}


def loop_ops(hlo: str, ops=("dot", "exponential")) -> list[dict]:
    """For every while loop in XLA's optimised HLO text, how many of each op its body runs per iteration, callees
    (fusions, branches, inner loops: counted once each) included. Ops hoisted out of a loop by XLA's loop-invariant
    code motion are not counted in it."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if m and not line.startswith(" "):
            cur = m.group(1)
            comps[cur] = []
        elif cur is not None:
            comps[cur].append(line)

    def count(name, op, seen):
        c = 0
        for line in comps.get(name, []):
            c += bool(re.search(rf"= [^=]*\b{op}\(", line))
            for group in re.findall(r"(?:calls|body|condition|to_apply|branch_computations|true_computation|"
                                    r"false_computation)=\{?([%\w.\-, ]+)\}?", line):
                for callee in (g.strip().lstrip("%") for g in group.split(",")):
                    if callee and callee not in seen:
                        c += count(callee, op, seen | {callee})
        return c

    bodies = [m.group(1) for lines in comps.values() for line in lines
              for m in [re.search(r"\bwhile\(.*body=%?([\w.\-]+)", line)] if m]
    return [{op: count(b, op, {b}) for op in ops} for b in bodies]


#: one CG iteration's and one Lanczos step's compiled operations, counted in XLA's optimised HLO of the programs the
#: solve and the eigensolve run (timing-free): the while-loop bodies with their callees, each loop once
HLO_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from bench_scale import loop_ops
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import ufm
from ufm.eigensolvers import _device_solve, basis_size, KEEP
from ufm.hessian import reg_of
from ufm.methods import NewtonCG, _advance, _start
from ufm.symmetry import no_tangent

K, d, n, lam = json.loads(sys.argv[1])
prob = ufm.Problem.create(K=K, d=d, n=n, lam=lam)
shape, reg = prob.shape, reg_of(prob)
P = prob.num_params
x = jax.ShapeDtypeStruct((P,), jnp.float64)
f64 = lambda a: jnp.asarray(a, jnp.float64)
i32 = lambda a: jnp.asarray(a, jnp.int32)
s = NewtonCG()
carry = jax.eval_shape(lambda y: _start(s, y, reg, shape), x)
solve = loop_ops(_advance.lower(s, carry, reg, shape, f64(1), f64(1), i32(1), i32(1), i32(0), 256, 0).compile().as_text())
U, w = (jnp.asarray(a) for a in no_tangent(shape, P))
eig = _device_solve.lower(x, reg, x, U, w, f64(0), f64(1e-10), f64(0), f64(0), jnp.asarray(False), jnp.asarray(2),
                          jnp.asarray(0), shape=shape, free_shift=True, basis=basis_size(P), keep=KEEP,
                          max_cycles=500, n_out=1).compile()
mem = eig.memory_analysis()
print(json.dumps({"solve_loops": solve, "eig_loops": loop_ops(eig.as_text()),
                  "eig_temp_bytes": mem.temp_size_in_bytes}))
"""


def hlo_counts(n: int, root: Path = ROOT) -> dict:
    """The compiled loop bodies' GEMM and exponential counts of the code in ``root`` at K = d = 100: the CG loop is
    the Newton step's loop with the most GEMMs (six per product when the primal half is hoisted, against three for
    a value-and-gradient in the line search), the Lanczos step the eigensolve's loop with the most."""
    r = timed([sys.executable, "-c", HLO_SCRIPT, json.dumps([K, D, n, LAM]), str(Path(__file__).parent)],
              root=root)
    if r["code"] != 0:
        raise SystemExit(f"HLO count n={n} ({root}) failed: {r['stderr']}")
    return json.loads(r["stdout"].strip().splitlines()[-1])


#: one Hessian-vector product at a fixed point in float64 and in float32 (methods._derivatives), interleaved
HVP_SCRIPT = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import ufm
from ufm.hessian import hvp, reg_of
K, d, n, lam, reps, m = json.loads(sys.argv[1])
prob = ufm.Problem.create(K=K, d=d, n=n, lam=lam)
rng = np.random.default_rng(0)
x = jnp.asarray(0.1 * rng.standard_normal(prob.num_params))
v = jnp.asarray(rng.standard_normal(prob.num_params))

def loop(dt):
    # m products in a loop at one x, as in a CG solve (the primal half hoisted), each on the last one's output; the
    # float32 product rounds x, the λ's and each direction, and is cast back
    reg = reg_of(prob, dt)
    def body(i, u, x):
        return 1e-3 * hvp(x.astype(dt), u.astype(dt), reg, prob.shape).astype(u.dtype) + v
    return jax.jit(lambda x, v: jax.lax.fori_loop(0, m, lambda i, u: body(i, u, x), v))

loops = {dt: loop(dt) for dt in ("float64", "float32")}
best = {dt: [np.inf, np.inf] for dt in loops}
for dt, f in loops.items():
    f(x, v).block_until_ready()
for _ in range(reps):
    for dt, f in loops.items():
        t, c = time.perf_counter(), time.process_time()
        f(x, v).block_until_ready()
        best[dt] = [min(best[dt][0], (time.perf_counter() - t) / m), min(best[dt][1], (time.process_time() - c) / m)]
print(json.dumps(best))
"""


def hvp_micro(n: int, pinned: bool, reps: int = 6, m: int = 20) -> dict:
    """Seconds (wall, CPU) of one product in float64 and float32 at K = d = 100, the best of ``reps`` interleaved
    runs; ``pinned``: under ``taskset -c 0`` (one core: CPU time not inflated by contention for the other)."""
    cmd = [sys.executable, "-c", HVP_SCRIPT, json.dumps([K, D, n, LAM, reps, m])]
    r = timed((["taskset", "-c", "0"] if pinned else []) + cmd)
    if r["code"] != 0:
        raise SystemExit(f"HVP timing n={n} failed: {r['stderr']}")
    return {**r, "best": json.loads(r["stdout"].strip().splitlines()[-1])}


def checkout(ref: str) -> Path:
    """ufm of git revision ``ref`` in a temporary folder (removed at exit)."""
    import atexit
    import shutil
    where = Path(tempfile.mkdtemp(prefix="ufm-base-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "ufm"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def compare_lines(ref: str, sizes: list[int], repeat: int) -> list[str]:
    """The landscapes on REF's code and on this checkout's, interleaved, with the ratios (new / REF)."""
    base = checkout(ref)
    out = [f"## This checkout against `{ref}`, side by side (interleaved runs)", "",
           "| code | P | wall s | CPU s | solve s | steps | HVPs | value+grad | eigensolve s | eig products | "
           "λ_min | eig residual | ‖∇f‖ | peak RSS GiB | load before → after |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for n in sizes:
        runs = {"ref": [], "new": []}
        for _ in range(repeat):
            for code, root in (("ref", base), ("new", ROOT)):
                r = landscape(n, root)
                runs[code].append(r)
                s, w, c = r["solve"], r["solve"]["work"], r["curvature"]
                out.append(f"| {ref if code == 'ref' else 'this'} | {r['P']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                           f"{s['wall_time_s']:.1f} | {s['steps']} | {w['hvp']} | {w['value_grad']} | "
                           f"{c['seconds']:.1f} | {c['matvecs']} | {r['min_eig']:.2e} | {r['eig_residual']:.1e} | "
                           f"{s['grad_norm']:.1e} | {r['peak_rss'] / GIB:.2f} | {r['load_before']} → {r['load_after']} |")
                print(out[-1], flush=True)
        med = lambda code, key: sorted(key(r) for r in runs[code])[(len(runs[code]) - 1) // 2]
        for label, key in (("wall", lambda r: r["wall_s"]), ("CPU", lambda r: r["cpu_s"]),
                           ("solve", lambda r: r["solve"]["wall_time_s"]),
                           ("eigensolve", lambda r: r["curvature"]["seconds"])):
            ratios.append(f"n = {n}, {label}: {med('new', key) / med('ref', key):.2f}")
        counts = {code: hlo_counts(n, root) for code, root in (("ref", base), ("new", ROOT))}
        for code, cnt in counts.items():
            cg = max(cnt["solve_loops"], key=lambda c: c["dot"])
            lz = max(cnt["eig_loops"], key=lambda c: c["dot"])
            ratios.append(f"n = {n}, {ref if code == 'ref' else 'this'}: compiled per CG loop body {cg['dot']} dot, "
                          f"{cg['exponential']} exp; per Lanczos "
                          f"step body {lz['dot']} dot, {lz['exponential']} exp; eigensolve temporaries "
                          f"{cnt['eig_temp_bytes'] / 2**20:.0f} MiB")
    return out + ["", "Ratios this / REF (medians of the interleaved runs), and the compiled counts:", "",
                  *(f"- {r}" for r in ratios), ""]


def largest_fitting(budget: int, solver: str = "auto") -> tuple[int, int]:
    """The largest n (K = d = 100) whose modelled peak RSS fits in ``budget`` bytes, and its parameter count."""
    lo, hi = 1, 1 << 20
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = model(mid, solver=solver, hessian="lanczos", eigensolver="jax") <= budget
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return lo, K * D + D * K * lo + K


def fit_lines() -> list[str]:
    """The largest landscape that the memory model (resources.peak_rss) fits in 16 GB and in 16 GiB."""
    out = ["| budget | solver counted | largest n | P | modelled peak GiB |", "|---|---|---|---|---|"]
    for label, budget in (("16 GB", 16 * 10**9), ("16 GiB", 16 * GIB)):
        for solver, what in (("auto", "auto (its L-BFGS fallback's 32 vectors)"), ("newton", "Newton-CG alone")):
            n, P = largest_fitting(budget, solver)
            out.append(f"| {label} | {what} | {n} | {P:,} | "
                       f"{model(n, solver=solver, hessian='lanczos', eigensolver='jax') / GIB:.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000", help="n per class (K = d = 100), comma-separated")
    ap.add_argument("--forcing", default="", help="also run the solve alone with these Newton-CG forcing rules "
                                                  "(sqrt, ew), at --forcing-n")
    ap.add_argument("--forcing-n", type=int, default=None, help="n of the forcing runs (default: the largest size)")
    ap.add_argument("--compare", default="", metavar="REF", help="also run each landscape on git revision REF's code, "
                                                                 "interleaved, and report the ratios")
    ap.add_argument("--repeat", type=int, default=1, help="runs per code with --compare")
    ap.add_argument("--counts-only", action="store_true", help="print the compiled counts of this checkout (and of "
                                                                "--compare REF) at each size, and nothing else")
    ap.add_argument("--no-table", action="store_true", help="skip the landscape table and the fit table")
    ap.add_argument("--hvp-micro", action="store_true", help="also time one float64 and one float32 product at each "
                                                             "size, interleaved, on one pinned core and unpinned")
    ap.add_argument("--big-timeout", type=float, default=1800, help="seconds the (1000, 512, 10) solve may take")
    ap.add_argument("--no-big", action="store_true", help="skip the (1000, 512, 10) solve")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale_cpu.md"))
    ap.add_argument("--fit-only", action="store_true", help="print the largest-fit table of the memory model only")
    args = ap.parse_args(argv)
    if args.fit_only:
        print("\n".join(fit_lines()))
        return 0
    if args.counts_only:
        roots = [("this", ROOT)] + ([(args.compare, checkout(args.compare))] if args.compare else [])
        for n in (int(s) for s in args.sizes.split(",")):
            for label, root in roots:
                print(f"n = {n}, {label}: {json.dumps(hlo_counts(n, root))}", flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    lines = ["# `ufm landscape --at solution` at scale on this CPU", "",
             f"`python benchmarks/bench_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, shared: the load averages are beside each "
             "run). K = d = 100, λ = 1e-4, CE, default solver (auto) and `--eigensolver jax`; one process per run under "
             "`/usr/bin/time -v` (wall time and peak RSS of the whole process, start-up and compilation included).", ""]
    base = runtime_rss()
    lines += [f"Runtime alone (python, jax, ufm imported, one array): peak RSS {base / GIB:.2f} GiB.", ""]
    if args.forcing:
        n = args.forcing_n or max(sizes)
        lines += [f"## The solve alone, Newton-CG forcing rules side by side (n = {n})", "",
                  "| forcing | status | ‖∇f‖ | f | Newton steps | HVPs | value+grad | max CG/step | solve s | load before → after |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rule in args.forcing.split(","):
            r = solve_only(K, D, n, LAM, rule)
            w = r["work"]
            lines.append(f"| {rule} | {r['status']} | {r['grad_norm']:.1e} | {r['objective']:.15g} | "
                         f"{w['newton_steps']} | {w['hvp']} | {w['value_grad']} | {w['cg_max']} | {r['solve_s']:.1f} | "
                         f"{r['load_before']} → {r['load_after']} |")
            print(lines[-1], flush=True)
        lines.append("")
    if args.hvp_micro:
        lines += ["## One Hessian-vector product, float64 against float32 (best of 6 interleaved loops of 20; "
                  f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", "",
                  "| P | cores | float64 ms wall / CPU | float32 ms wall / CPU | ratio wall / CPU | load before → after |",
                  "|---|---|---|---|---|---|"]
        for n in sizes:
            for pinned in (True, False):
                r = hvp_micro(n, pinned)
                (w64, c64), (w32, c32) = r["best"]["float64"], r["best"]["float32"]
                lines.append(f"| {K * D + D * K * n + K:,} | {'1 (taskset -c 0)' if pinned else 'all'} | "
                             f"{w64 * 1e3:.1f} / {c64 * 1e3:.1f} | {w32 * 1e3:.1f} / {c32 * 1e3:.1f} | "
                             f"{w32 / w64:.2f} / {c32 / c64:.2f} | {r['load_before']} → {r['load_after']} |")
                print(lines[-1], flush=True)
        lines.append("")
    if args.compare:
        lines += compare_lines(args.compare, sizes, args.repeat)
    if args.no_table:
        sizes = []
    if sizes:
        lines += ["## The whole landscape", "",
                  "| P | wall s | of which solve s | solve status, steps | ‖∇f‖ | HVPs | value+grad | class | λ_min | "
                  "eig residual | peak RSS GiB | model GiB (resources.peak_rss) | load before → after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n in sizes:
            r = landscape(n)
            s, w = r["solve"], r["solve"]["work"]
            lines.append(f"| {r['P']:,} | {r['wall_s']:.1f} | {s['wall_time_s']:.1f} | {s['status']}, {s['steps']} | "
                         f"{s['grad_norm']:.1e} | {w['hvp']} | {w['value_grad']} | {r['classification']} | "
                         f"{r['min_eig']:.2e} | {r['eig_residual']:.1e} | {r['peak_rss'] / GIB:.2f} | "
                         f"{r['model'] / GIB:.2f} | {r['load_before']} → {r['load_after']} |")
            print(lines[-1], flush=True)
    if sizes:
        lines += ["", "The largest size whose modelled peak fits (resources.peak_rss: the solve's or the eigensolve's "
                  "vectors, whichever is larger, plus RUNTIME_BYTES):", "", *fit_lines(), ""]
    if not args.no_big:
        Kb, db, nb = BIG
        r = solve_only(Kb, db, nb, LAM, "auto", args.big_timeout)
        lines += [f"## The float64 solve at (K, d, n) = {BIG}, λ = {LAM}", ""]
        if r["code"] is None:
            lines += [f"Not finished within {args.big_timeout:.0f} s (load {r['load_before']} → {r['load_after']}).", ""]
        else:
            w = r["work"]
            lines += ["| P | status | ‖∇f‖ | steps | HVPs | value+grad | solve s | wall s | peak RSS GiB | load before → after |",
                      "|---|---|---|---|---|---|---|---|---|---|",
                      f"| {Kb * db + db * Kb * nb + Kb:,} | {r['status']} | {r['grad_norm']:.1e} | {r['steps']} | "
                      f"{w['hvp']} | {w['value_grad']} | {r['solve_s']:.1f} | {r['wall_s']:.1f} | "
                      f"{r['peak_rss'] / GIB:.2f} | {r['load_before']} → {r['load_after']} |", ""]
        print(lines[-2], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
