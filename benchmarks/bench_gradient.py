"""Value-and-gradient and Hessian-vector products of objective (7) against the GEMMs they must do, before and after
the closed-form logit derivatives of ufm.losses (docs/theory.md §9).

    python benchmarks/bench_gradient.py [--sizes 10,64,100/100,512,50/1000,512,10] [--dtypes float64,float32]
                                        [--losses ce,fl,ls,mse] [--repeats 9] [--big-repeats 3] [--before REV]

*The GEMM bound* is the time of exactly the matrix products a derivative needs, jitted with ``jnp`` in the same
dtype, measured in the same run and the same rounds: a value-and-gradient needs three (Z = W H, ∇_W = G Hᵀ,
∇_H = Wᵀ G), a forward-over-reverse HVP seven (Z = W H; dZ = V_W H + W V_H; ∂∇_W = dG Hᵀ + G V_Hᵀ;
∂∇_H = Wᵀ dG + V_Wᵀ G). The products are timed in both layouts of the logits, (K, N) and (N, K), and the faster
sum is the bound. Every pass of the loss over the logits, the copies that cut W and H out of the flat vector x, the
ridge terms and the assembly of the flat gradient are what the ratio charges above 1. *The flat part* is the
value-and-gradient of (7) without its data term (cutting W, H, b out of x, the ridge terms, assembling the flat
gradient) over the same bound: what the solvers' flat layout costs any implementation, loss or not.

*Before* is ``ufm`` at ``--before`` (default: the commit before the change, pinned below), unpacked with ``git
archive`` into a temporary folder and imported as a second package; *after* is the ``ufm`` on ``sys.path``. Both
are the solvers' own calls: ``jax.value_and_grad(flat_objective)`` and ``jax.jvp`` of ``jax.grad(flat_objective)``
(ufm.hessian), at the same random point x and direction v.

Timing: the bound's layout is the faster of the two in three calls each; then, after two warm-up calls of each
program, ``--repeats`` rounds (``--big-repeats`` at the largest sizes), in which every derivative is called right
after its bound, so that each ratio compares two calls made moments apart (the machine is shared with other jobs).
The table gives medians over rounds: of the times, and of the ratios (the median of ratios, not the ratio of the
medians; the GEMM column is the median of the bound's calls paired with the *after* program). ``agree`` is the
largest relative difference between before and after of the value, the gradient and the HVP (each ‖·‖ relative).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm.model import flat_objective

#: main before the closed-form logit derivatives (ufm/losses.py autodiff through masked logsumexps on (N, K) rows)
BEFORE = "8ad2ab2bbd6392c73a31de14b46d235b1df278d0"
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "gradient_cpu.md"
ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSSES = {"ce": {}, "fl": dict(gamma=2.0), "ls": dict(alpha=0.1), "mse": dict(kappa=1.0, beta=1.0)}


def load_before(rev: str, into: str):
    """``ufm`` at git revision ``rev`` as the package ``ufm_before`` (its relative imports resolve inside it)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "ufm"], check=True, capture_output=True).stdout
    path = pathlib.Path(into) / "tree.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    spec = importlib.util.spec_from_file_location("ufm_before", os.path.join(into, "ufm", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(into, "ufm")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ufm_before"] = module
    spec.loader.exec_module(module)
    return module


def derivative_programs(package, model, K, d, n, loss, dtype):
    """jitted (value-and-gradient, HVP) of one package's objective (7), and its Reg in ``dtype``."""
    prob = package.Problem.create(K, d, n, lam=5e-3, loss=loss, **LOSSES[loss])
    shape = prob.shape
    reg = type(prob.reg)(*(jnp.asarray(v, dtype) for v in prob.reg))
    grad = jax.grad(model.flat_objective)
    vg = jax.jit(lambda x, reg: jax.value_and_grad(model.flat_objective)(x, reg, shape))
    hvp = jax.jit(lambda x, v, reg: jax.jvp(lambda y: grad(y, reg, shape), (x,), (v,))[1])
    return vg, hvp, reg, prob.num_params


def gemm_programs(K, d, N, dtype, rng):
    """The bound's products on arrays of the derivative's shapes, in both layouts of the (K, N) factors."""
    mk = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    W, H, VW, VH, G, dG = mk(K, d), mk(d, N), mk(K, d), mk(d, N), mk(K, N), mk(K, N)
    GT, dGT = G.T.copy(), dG.T.copy()
    vg_kn = jax.jit(lambda W, H, G: (W @ H, G @ H.T, W.T @ G))
    vg_nk = jax.jit(lambda W, H, G: (H.T @ W.T, G.T @ H.T, W.T @ G.T))
    hv_kn = jax.jit(lambda W, H, VW, VH, G, dG: (W @ H, VW @ H, W @ VH, dG @ H.T, G @ VH.T, W.T @ dG, VW.T @ G))
    hv_nk = jax.jit(lambda W, H, VW, VH, G, dG: (H.T @ W.T, H.T @ VW.T, VH.T @ W.T, dG.T @ H.T, G.T @ VH.T,
                                                 W.T @ dG.T, VW.T @ G.T))
    return {"gemm3_kn": (vg_kn, (W, H, G)), "gemm3_nk": (vg_nk, (W, H, GT)),
            "gemm7_kn": (hv_kn, (W, H, VW, VH, G, dG)), "gemm7_nk": (hv_nk, (W, H, VW, VH, GT, dGT))}


def flat_part_program(K, d, n, dtype):
    """Value-and-gradient of (7) without its data term: cutting W, H, b out of x, the ridge terms and assembling the
    flat gradient, which the solvers' flat layout (docs/theory.md §9) costs any implementation."""
    prob = ufm.Problem.create(K, d, n, lam=5e-3)
    reg = ufm.Reg(*(jnp.asarray(v, dtype) for v in prob.reg))

    def ridge(x, reg):
        W, H, b = sys.modules["ufm.model"].unflatten(x, prob.shape)
        return 0.5 * reg.lam_W * jnp.sum(W**2) + 0.5 * reg.lam_H * jnp.sum(H**2) + 0.5 * reg.lam_b * jnp.sum(b**2)

    x = jnp.asarray(np.random.default_rng(1).standard_normal(prob.num_params), dtype)
    return jax.jit(jax.value_and_grad(ridge)), (x, reg)


def call_time(fn, args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def faster_layout(programs, kind, calls=3):
    """The layout (kn or nk) whose products ran faster in ``calls`` calls each after a warm-up call (the bound's)."""
    best = {}
    for layout in ("kn", "nk"):
        fn, args = programs[f"{kind}_{layout}"]
        jax.block_until_ready(fn(*args))
        best[layout] = min(call_time(fn, args) for _ in range(calls))
    return programs[f"{kind}_{min(best, key=best.get)}"]


def run_rounds(targets, bounds, rounds):
    """Two warm-up calls each, then ``rounds`` rounds; in each, every target is timed right after its bound, so each
    ratio compares calls made within a second or so of each other (the machine is shared). Per-round seconds."""
    for fn, args in list(targets.values()) + list(bounds.values()):
        for _ in range(2):
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in targets}
    bound_times = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (fn, args) in targets.items():
            bound_times[name].append(call_time(*bounds[name.split("_")[1]]))
            times[name].append(call_time(fn, args))
    return ({name: np.asarray(v) for name, v in times.items()},
            {name: np.asarray(v) for name, v in bound_times.items()})


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def one_case(before, K, d, n, dtype, losses, rounds, seed=0):
    rng = np.random.default_rng(seed)
    gemms = gemm_programs(K, d, K * n, dtype, rng)
    bounds = {"vg": faster_layout(gemms, "gemm3"), "hvp": faster_layout(gemms, "gemm7")}
    targets, inputs = {"flat_vg_part": flat_part_program(K, d, n, dtype)}, {}
    for loss in losses:
        for tag, (package, model) in (("before", before), ("after", (ufm, sys.modules["ufm.model"]))):
            vg, hvp, reg, P = derivative_programs(package, model, K, d, n, loss, dtype)
            if loss not in inputs:
                # W, H ~ N(0, 1/d) entries: logits of order 1, as along a solve
                x = rng.standard_normal(P) / np.sqrt(d)
                inputs[loss] = (jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal(P), dtype))
            x, v = inputs[loss]
            targets[f"{loss}_vg_{tag}"] = (vg, (x, reg))
            targets[f"{loss}_hvp_{tag}"] = (hvp, (x, v, reg))
    # agreement of before and after (outside the timed rounds)
    agree = {}
    for loss in losses:
        out = {k: targets[f"{loss}_{k}"][0](*targets[f"{loss}_{k}"][1])
               for k in ("vg_before", "vg_after", "hvp_before", "hvp_after")}
        (fb, gb), (fa, ga) = out["vg_before"], out["vg_after"]
        agree[loss] = max(rel(fa, fb), rel(ga, gb), rel(out["hvp_after"], out["hvp_before"]))
    t, tb = run_rounds(targets, bounds, rounds)
    med = lambda a: float(statistics.median(a))
    rows = []
    for loss in losses:
        r = dict(loss=loss, agree=agree[loss])
        for k in ("vg_before", "vg_after", "hvp_before", "hvp_after"):
            name = f"{loss}_{k}"
            r[k], r[k + "_bound"], r[k + "_ratio"] = med(t[name]), med(tb[name]), med(t[name] / tb[name])
        r["flat_ratio"] = med(t["flat_vg_part"] / tb["flat_vg_part"])
        rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,64,100/100,512,50/1000,512,10", help="K,d,n triples separated by '/'")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--losses", default="ce,fl,ls,mse")
    ap.add_argument("--big-losses", default="ce,fl", help="losses at sizes with K·d·N ≥ 1e9 (each round is seconds)")
    ap.add_argument("--repeats", type=int, default=9, help="timed rounds per case")
    ap.add_argument("--big-repeats", type=int, default=3, help="timed rounds at sizes with K·d·N ≥ 1e9")
    ap.add_argument("--before", default=BEFORE, help="git revision of the implementation to compare against")
    ap.add_argument("--write", default=str(RESULTS), help="Markdown output ('' to skip)")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split("/")]
    dtypes = [jnp.dtype(s) for s in args.dtypes.split(",")]

    with tempfile.TemporaryDirectory(prefix="ufm-before-") as tmp:
        pkg = load_before(args.before, tmp)
        before = (pkg, importlib.import_module("ufm_before.model"))
        threads = ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "XLA_FLAGS") if v in os.environ)
        head = (f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores "
                f"({platform.processor() or platform.machine()}), shared with other jobs"
                f"{'; ' + threads if threads else ''}; load average {os.getloadavg()[0]:.1f} at start; "
                f"{datetime.date.today().isoformat()}")
        print(head, flush=True)
        table = ["| K | d | n | dtype | loss | 3 GEMMs ms | value+grad before ms | after ms | before / GEMMs | "
                 "**after / GEMMs** | flat part / GEMMs | 7 GEMMs ms | HVP before ms | after ms | before / GEMMs | "
                 "**after / GEMMs** | agree |", "|" + "---|" * 17]
        for K, d, n in sizes:
            big = K * d * K * n >= 1e9
            losses = (args.big_losses if big else args.losses).split(",")
            for dtype in dtypes:
                rows = one_case(before, K, d, n, dtype, losses, args.big_repeats if big else args.repeats)
                for r in rows:
                    ms = lambda key: f"{r[key] * 1e3:.2f}"
                    table.append(
                        f"| {K} | {d} | {n} | {dtype.name} | {r['loss']} | {ms('vg_after_bound')} | "
                        f"{ms('vg_before')} | {ms('vg_after')} | {r['vg_before_ratio']:.2f} | "
                        f"**{r['vg_after_ratio']:.2f}** | {r['flat_ratio']:.2f} | {ms('hvp_after_bound')} | "
                        f"{ms('hvp_before')} | "
                        f"{ms('hvp_after')} | {r['hvp_before_ratio']:.2f} | **{r['hvp_after_ratio']:.2f}** | "
                        f"{r['agree']:.1e} |")
                    print(table[-1], flush=True)
    tail = f"load average {os.getloadavg()[0]:.1f} at the end"
    command = ("python benchmarks/bench_gradient.py " + f"--sizes {args.sizes} --dtypes {args.dtypes} --losses "
               f"{args.losses} --big-losses {args.big_losses} --repeats {args.repeats} --big-repeats "
               f"{args.big_repeats} --before {args.before[:12]}")
    text = "\n".join(["# Value-and-gradient and HVP over the GEMM bound (benchmarks/bench_gradient.py)", "",
                      head + "; " + tail, "", "    " + command, ""] + table) + "\n"
    print("\n" + text)
    if args.write:
        os.makedirs(os.path.dirname(args.write), exist_ok=True)
        with open(args.write, "w") as fh:
            fh.write(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
