"""Value-and-gradient and Hessian-vector products of objective (7) against the GEMMs they must do, before and after
the closed-form logit derivatives of ufm.losses (docs/theory.md §9).

    python benchmarks/bench_gradient.py [--sizes 10,64,100/100,512,50/1000,512,10] [--dtypes float64,float32]
                                        [--losses ce,fl,ls,mse] [--repeats 7] [--big-repeats 3] [--before REV]

*The GEMM bound* is the time of exactly the matrix products a derivative needs, jitted with ``jnp`` in the same
dtype, measured in the same run and the same rounds: a value-and-gradient needs three (Z = W H, ∇_W = G Hᵀ,
∇_H = Wᵀ G), a forward-over-reverse HVP seven (Z = W H; dZ = V_W H + W V_H; ∂∇_W = dG Hᵀ + G V_Hᵀ;
∂∇_H = Wᵀ dG + V_Wᵀ G). Each product is timed in both layouts of G, (K, N) and (N, K), and the faster sum is the
bound. Every (K, N) pass of the loss, the copies that cut W and H out of the flat vector x, the ridge terms and the
assembly of the flat gradient are what the ratio charges above 1.

*Before* is ``ufm`` at ``--before`` (default: the commit before the change, pinned below), unpacked with ``git
archive`` into a temporary folder and imported as a second package; *after* is the ``ufm`` on ``sys.path``. Both
are the solvers' own calls: ``jax.value_and_grad(flat_objective)`` and ``jax.jvp`` of ``jax.grad(flat_objective)``
(ufm.hessian), at the same random point x and direction v.

Timing: after two warm-up calls of each program, ``--repeats`` rounds (``--big-repeats`` at the largest size); each
round calls every program once in turn, so a ratio is taken between calls made seconds apart (the machine is shared);
the table gives medians over rounds of the times and of the per-round ratios. ``agree`` is the largest relative
difference between before and after of the value, the gradient and the HVP (each ‖·‖ relative).
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


def run_rounds(programs, rounds):
    """Two warm-up calls each, then ``rounds`` rounds of one call each in turn: per-round seconds."""
    for fn, args in programs.values():
        for _ in range(2):
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in programs}
    for _ in range(rounds):
        for name, (fn, args) in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return {name: np.asarray(v) for name, v in times.items()}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def one_case(before, K, d, n, dtype, losses, rounds, seed=0):
    rng = np.random.default_rng(seed)
    N = K * n
    programs = gemm_programs(K, d, N, dtype, rng)
    inputs = {}
    for loss in losses:
        for tag, (package, model) in (("before", before), ("after", (ufm, sys.modules["ufm.model"]))):
            vg, hvp, reg, P = derivative_programs(package, model, K, d, n, loss, dtype)
            if loss not in inputs:
                # W, H ~ N(0, 1/d) entries: logits of order 1, as along a solve
                x = rng.standard_normal(P) / np.sqrt(d)
                inputs[loss] = (jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal(P), dtype))
            x, v = inputs[loss]
            programs[f"{loss}_vg_{tag}"] = (vg, (x, reg))
            programs[f"{loss}_hvp_{tag}"] = (hvp, (x, v, reg))
    # agreement of before and after (outside the timed rounds)
    agree = {}
    for loss in losses:
        (vgb, xb), (vga, xa) = programs[f"{loss}_vg_before"], programs[f"{loss}_vg_after"]
        (fb, gb), (fa, ga) = vgb(*xb), vga(*xa)
        hb, ha = programs[f"{loss}_hvp_before"][0](*programs[f"{loss}_hvp_before"][1]), \
            programs[f"{loss}_hvp_after"][0](*programs[f"{loss}_hvp_after"][1])
        agree[loss] = max(rel(fa, fb), rel(ga, gb), rel(ha, hb))
    t = run_rounds(programs, rounds)
    b3 = np.minimum(t["gemm3_kn"], t["gemm3_nk"])
    b7 = np.minimum(t["gemm7_kn"], t["gemm7_nk"])
    med = lambda a: float(statistics.median(a))
    rows = []
    for loss in losses:
        r = {k: med(t[f"{loss}_{k}"]) for k in ("vg_before", "vg_after", "hvp_before", "hvp_after")}
        r.update(vg_ratio_before=med(t[f"{loss}_vg_before"] / b3), vg_ratio_after=med(t[f"{loss}_vg_after"] / b3),
                 hvp_ratio_before=med(t[f"{loss}_hvp_before"] / b7), hvp_ratio_after=med(t[f"{loss}_hvp_after"] / b7),
                 gemm3=med(b3), gemm7=med(b7), gemm3_kn=med(t["gemm3_kn"]), gemm3_nk=med(t["gemm3_nk"]),
                 agree=agree[loss], loss=loss)
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
                 "**after / GEMMs** | 7 GEMMs ms | HVP before ms | after ms | before / GEMMs | **after / GEMMs** | "
                 "agree |", "|" + "---|" * 16]
        for K, d, n in sizes:
            big = K * d * K * n >= 1e9
            losses = (args.big_losses if big else args.losses).split(",")
            for dtype in dtypes:
                rows = one_case(before, K, d, n, dtype, losses, args.big_repeats if big else args.repeats)
                for r in rows:
                    table.append(
                        f"| {K} | {d} | {n} | {dtype.name} | {r['loss']} | {r['gemm3'] * 1e3:.2f} | "
                        f"{r['vg_before'] * 1e3:.2f} | {r['vg_after'] * 1e3:.2f} | {r['vg_ratio_before']:.2f} | "
                        f"**{r['vg_ratio_after']:.2f}** | {r['gemm7'] * 1e3:.2f} | {r['hvp_before'] * 1e3:.2f} | "
                        f"{r['hvp_after'] * 1e3:.2f} | {r['hvp_ratio_before']:.2f} | **{r['hvp_ratio_after']:.2f}** | "
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
