"""The ``ufm`` command line: thin parsing around the library (heavy imports happen inside the commands, so
``ufm --help`` is fast).

Exit status: 0 success, 2 bad input (one line on stderr, before any work), 3 not converged or not a minimiser,
4 result printed but an output file not written, 130 interrupted, 1 internal error.
"""

from __future__ import annotations

import argparse
import codecs
import math
import re
import sys

from .commands import (EXIT_BAD_INPUT, EXIT_OK, PLOT_KINDS, cmd_analyze, cmd_landscape, cmd_plot, cmd_serve, cmd_solve,
                       cmd_sweep)


#: what argparse may take as a negative number rather than an option: with exponents, so that ``--lam-w -1e-3``
#: reaches the flag's own check (and its message) instead of "expected one argument"
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) and exits 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)


def _int_min(low, high=None):
    allowed = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; must be {allowed}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"got {v}; must be {allowed}")
        return v
    return parse


def _class_sizes(text):
    """``-n``: one size (balanced) or K comma-separated sizes; the count is checked against K by Problem."""
    tokens = [t.strip() for t in text.split(",")]
    try:
        sizes = [int(t) for t in tokens]
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; must be an integer ≥ 1 or K comma-separated integers ≥ 1 "
                                         "(e.g. 100,100,10,10)") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; every class size must be an integer ≥ 1")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def _float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; must be a finite number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"got {text!r}; must be a finite number")
    return v


def add_problem_flags(p: argparse.ArgumentParser) -> None:
    """The flags that define one UFM instance and its solve; shared by every command that solves."""
    g = p.add_argument_group("problem (eq. 7)")
    g.add_argument("-K", "--classes", dest="K", type=_int_min(2), default=10, help="number of classes K ≥ 2 (default 10)")
    g.add_argument("-d", "--dim", dest="d", type=_int_min(1), default=64, help="feature dimension d ≥ 1 (default 64)")
    g.add_argument("-n", "--per-class", dest="n", type=_class_sizes, default=100, metavar="N[,N…]",
                   help="samples per class n ≥ 1 (default 100), or the K class sizes, e.g. 100,100,10,10")
    g.add_argument("--loss", default="ce", help="ce | fl | ls | mse | package.module:function (default ce)")
    g.add_argument("--gamma", type=_float, help="FL focusing parameter γ ≥ 0 (default 2)")
    g.add_argument("--alpha", type=_float, help="LS smoothing α in [0, 1) (default 0.1)")
    g.add_argument("--kappa", type=_float, help="MSE true-class weight κ > 0 (default 1)")
    g.add_argument("--beta", type=_float, help="MSE target scale β > 0 (default 1)")
    g.add_argument("--lam", type=_float, default=5e-4, help="sets λ_W = λ_H = λ_b (default 5e-4)")
    g.add_argument("--lam-w", dest="lam_W", type=_float, help="λ_W (overrides --lam)")
    g.add_argument("--lam-h", dest="lam_H", type=_float, help="λ_H (overrides --lam)")
    g.add_argument("--lam-b", dest="lam_b", type=_float, help="λ_b (overrides --lam); 0 means a free, unregularised bias")
    g.add_argument("--no-bias", action="store_true", help="drop b from the model")
    s = p.add_argument_group("solver")
    s.add_argument("--solver", default="auto", help="auto (Newton-CG, L-BFGS fallback) | lbfgs | newton | lm (any critical point) | gd | momentum | adam (default auto)")
    s.add_argument("--gtol", type=_float, help="stationary when ‖∇f‖ ≤ gtol (default 1e-9; 1e-4 with --dtype float32) "
                   "and …")
    s.add_argument("--rtol", type=_float, help="… ‖∇f‖ ≤ rtol·(‖∇ data term‖ + ‖∇ penalty‖), a scale-free "
                   "test (default 1e-6; 1e-3 with --dtype float32)")
    s.add_argument("--max-steps", type=_int_min(1), default=10000, help="bound on total solver updates (default 10000, at most 2³¹ − 1)")
    s.add_argument("--lr", type=_float, help="step size of gd / momentum / adam")
    s.add_argument("--seed", type=_int_min(0), default=0, help="initialisation seed (default 0)")
    s.add_argument("--init-scale", type=_float, default=0.1, help="std of the N(0, s²) initial entries (default 0.1)")
    s.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="float64 certifies (default)")


def add_depth_flags(p: argparse.ArgumentParser) -> None:
    """The deep UFM's flags (docs/theory.md §12); --depth 1, the default, is eq. (7) unchanged."""
    g = p.add_argument_group("depth (deep UFM, docs/theory.md §12)")
    g.add_argument("--depth", type=_int_min(1), default=1, metavar="L",
                   help="weight matrices after the features, L ≥ 1 (default 1: eq. (7))")
    g.add_argument("--activation", choices=("linear", "relu"), default="linear",
                   help="σ between the weight matrices (default linear)")
    g.add_argument("--widths", metavar="D1[,D2…]", help="hidden widths d_1..d_{L−1}: one value for all, or L − 1 "
                   "values (default d)")
    g.add_argument("--lam-layers", metavar="λ1[,λ2…]", help="λ_1..λ_L of the weight matrices, one value for all or "
                   "L values (default --lam-w, else --lam)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="ufm", description="Unconstrained feature model of neural collapse (Zhou et al. 2022, eq. 7).")
    parser.add_argument("--version", action="version", version=f"ufm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sp = sub.add_parser("solve", help="minimise (7) to ‖∇f‖ ≤ gtol and compare with theory",
                        description="Minimise objective (7) and compare with the theory optimum.\n\n"
                                    "example: ufm solve -K 4 -d 6 -n 5 --loss ls --alpha 0.1 --lam 5e-3 --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_problem_flags(sp)
    add_depth_flags(sp)
    sp.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    sp.add_argument("--no-bounds", action="store_true", help="skip the proven bracket on the optimum (the convex "
                    "lifting: milliseconds at K ≤ 100, up to a minute at K = 1000); `bounds` is then null; at "
                    "--depth ≥ 2, skip the low-rank search instead")
    sp.add_argument("--save", metavar="PATH.npz", help="write W, H, b, labels and the record to an .npz")
    sp.add_argument("--trace-every", type=_int_min(0), default=0, metavar="K",
                    help="with --save: keep every K-th iterate's NC metrics for `ufm plot dynamics` (default 0: off)")
    sp.add_argument("--verbose", action="store_true", help="log each solver stage, and each minute of a long one, on "
                    "stderr even when it is not a terminal (a terminal always shows a progress line)")
    sp.set_defaults(func=cmd_solve)

    lp = sub.add_parser("landscape", help="Hessian spectra and classification of critical points (saddles, minima)",
                        description="Classify critical points of (7) by their measured Hessian spectrum.\n\n"
                                    "examples:\n  ufm landscape -K 4 -d 6 -n 5 --lam 5e-3 --loss ls\n"
                                    "  ufm landscape -K 3 -d 4 -n 2 --lam 0.05 --loss ls --at census --starts 12 --json\n"
                                    "  ufm landscape -K 10 -d 10 -n 1 --lam 3e-3 --no-bias --depth 2 --at dnc",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_problem_flags(lp)
    add_depth_flags(lp)
    # None = not given: the solve flags resolve per --at (commands._SOLVE_DEFAULTS: the census defaults to LM at
    # gtol 1e-10, 500 steps a start, cycled start scales), and a flag --at would ignore is refused
    lp.set_defaults(solver=None, gtol=None, rtol=None, max_steps=None, seed=None, init_scale=None, dtype=None)
    g = lp.add_argument_group("landscape")
    g.add_argument("--at", choices=("solution", "origin", "census", "dnc"), default="solution",
                   help="analyse the solve's end point, the origin, or a census of critical points (default solution); "
                   "with --depth ≥ 2 also dnc, the deep-neural-collapse point (docs/theory.md §12.2)")
    g.add_argument("--starts", type=_int_min(1, 100_000), help="census: number of random starts, start i with seed --seed + i "
                   "(default 20; the census runs --solver lm, --gtol 1e-10, --max-steps 500 a start and cycles "
                   "--init-scale through 0.03, 0.1, 0.3, 1 unless those flags are given)")
    g.add_argument("--hessian", choices=("auto", "dense", "lanczos"), default="auto",
                   help="dense eigh, matrix-free shifted Lanczos, or auto by size (dense up to 4000 parameters)")
    g.add_argument("--eigensolver", choices=("auto", "arpack", "jax"), default="auto",
                   help="matrix-free path: scipy's ARPACK on the host, or a JAX-native Lanczos that keeps every "
                   "Hessian-vector product on the device; auto: jax on a GPU/TPU, on a CPU by size (default auto)")
    g.add_argument("--hessian-dtype", choices=("float64", "float32"), default="float64",
                   help="matrix-free path, JAX eigensolver: float32 halves the memory of large problems; its zero "
                   "tolerance is 1e-3·‖∇²f‖ instead of 1e-8 and residuals are still measured in float64")
    g.add_argument("--grad-tol", type=_float, default=1e-8, help="‖∇f‖ at or below it is critical (default 1e-8)")
    g.add_argument("--zero-tol", type=_float, help="|eigenvalue| at or below it is zero (default max(1e-8‖∇²f‖, 1e2‖∇f‖))")
    g.add_argument("--no-escape", action="store_true", help="skip the escape runs from strict saddles")
    g.add_argument("--verbose", action="store_true", help="log each stage and census point on stderr when it is not "
                   "a terminal (a terminal always shows progress)")
    lp.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    lp.add_argument("--save", metavar="PATH.npz", help="write the record, the dense spectra and f-slices through each "
                    "point (for `ufm plot spectrum` and `ufm plot slice`)")
    lp.set_defaults(func=cmd_landscape)

    sw = sub.add_parser("sweep", help="solve (and analyse) every point of a grid over K, d, n, λ, losses, seeds",
                        description="Sweep a grid of UFM instances into a resumable SQLite store.\n\n"
                                    "Each grid flag takes a list (3,4,10), log:START:STOP:NUM, lin:START:STOP:NUM or\n"
                                    "range:START:STOP[:STEP]; a TOML file (--config) takes the same keys, and flags win.\n"
                                    "Kill it at any time and rerun the same command: finished points are kept.\n"
                                    "Exit status: 0 every point computed, 1 some points failed (status error; rerun\n"
                                    "to retry them), 2 bad input (nothing computed), 130 interrupted (Ctrl-C).\n\n"
                                    "example:\n  ufm sweep -K 3,4,5 -d 8 -n 5 --lam log:1e-3:1e-1:5 --loss ce,ls --analyze "
                                    "--store grid.db --export grid.csv",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    gg = sw.add_argument_group("grid (lists or ranges)")
    for name, flag, help_text in [("K", "-K", "classes K (default 10)"), ("d", "-d", "feature dimension (default 64)"),
                                  ("n", "-n", "samples per class (the majority's, with --minority) (default 100)"),
                                  ("minority", "--minority", "number of minority classes, the last ones (default 0)"),
                                  ("ratio", "--ratio", "majority/minority size ratio R: minority classes get n/R samples "
                                   "(default 1)"),
                                  ("lam", "--lam", "λ_W = λ_H = λ_b tied (default 5e-4)"),
                                  ("lam_W", "--lam-w", "λ_W values (override --lam)"),
                                  ("lam_H", "--lam-h", "λ_H values (override --lam)"),
                                  ("lam_b", "--lam-b", "λ_b values (0 = free bias)"),
                                  ("loss", "--loss", "losses: ce, fl, ls, mse, module:function (default ce)"),
                                  ("gamma", "--gamma", "FL γ values (default 2)"), ("alpha", "--alpha", "LS α values (default 0.1)"),
                                  ("kappa", "--kappa", "MSE κ values (default 1)"), ("beta", "--beta", "MSE β values (default 1)"),
                                  ("bias", "--bias", "bias modes: regularized, free, none (default regularized)"),
                                  ("seed", "--seed", "initialisation seeds (default 0)"),
                                  ("depth", "--depth", "depths L of the deep UFM, docs/theory.md §12 (default 1: eq. (7), "
                                   "rows as without it)"),
                                  ("activation", "--activation", "activations at depth ≥ 2: linear, relu (default linear)"),
                                  ("widths", "--widths", "hidden widths at depth ≥ 2, each value sets every hidden width "
                                   "(default d)")]:
        gg.add_argument(flag, dest=f"grid_{name}", metavar="SPEC", help=help_text)
    go = sw.add_argument_group("at each point")
    go.add_argument("--solver", help="as for ufm solve (default auto)")
    go.add_argument("--gtol", type=_float, help="stop at ‖∇f‖ ≤ gtol (default 1e-9)")
    go.add_argument("--rtol", type=_float, help="scale-free stationarity bound (default 1e-6)")
    go.add_argument("--max-steps", type=_int_min(1), help="solver step bound (default 10000)")
    go.add_argument("--init-scale", type=_float, help="initialisation scale (default 0.1)")
    go.add_argument("--analyze", action="store_true", help="also classify the solution and the origin by their Hessians")
    go.add_argument("--census", type=_int_min(0, 100_000), help="also run a census of N starts at each point")
    go.add_argument("--hessian", choices=("auto", "dense", "lanczos"), help="Hessian method for --analyze/--census")
    go.add_argument("--low-rank-starts", type=_int_min(0), help="starts per inner width of the deep linear low-rank "
                    "search at depth ≥ 2 (default 4; 0 skips it; docs/theory.md §12.4)")
    gx = sw.add_argument_group("execution and output")
    gx.add_argument("--config", metavar="GRID.toml", help="read the grid and options from a TOML file")
    gx.add_argument("--store", metavar="PATH.db", help="SQLite results store, resumable (default ufm-sweep.db)")
    gx.add_argument("--workers", type=_int_min(1), help="worker processes (default: in-process on ≤ 2 cores or under 20 points, "
                    "else one per core up to the number of distinct shapes)")
    gx.add_argument("--executor", choices=("local", "dask"), help="local processes, or a Dask cluster (default local)")
    gx.add_argument("--batch", choices=("auto", "on", "off"), help="solve each shape's points together under vmap "
                    "when in-process (default auto: where measured faster; the loop, on the CPU 12.9× faster, everywhere so far)")
    gx.add_argument("--address", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: a local cluster); "
                    "it runs the sweep's code: use only a scheduler you trust")
    gx.add_argument("--export", action="append", metavar="FILE", help="write the table as .csv or .parquet (repeatable)")
    gx.add_argument("--quiet", action="store_true", help="no progress bar and no summary (unless points failed)")
    gx.add_argument("-v", "--verbose", action="store_true",
                    help="one line per finished point on stderr, terminal or not (for nohup and batch logs)")
    gx.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    sw.set_defaults(func=cmd_sweep)

    pp = sub.add_parser("plot", help="figures from saved results: etf, gram, dynamics, spectrum, phase, slice",
                        description="Draw a figure from saved results (never solves).\n\n"
                                    "  etf       RESULT.npz… (ufm solve --save): simplex-ETF geometry, one panel each\n"
                                    "            (and the cosine heat map beside it for K > 6)\n"
                                    "  gram      RESULT.npz…: cosines of the centred class means vs the ETF's −1/(K−1)\n"
                                    "  dynamics  RESULT.npz… (ufm solve --trace-every K --save): NC metrics vs iteration\n"
                                    "  spectrum  LAND.npz (ufm landscape --hessian dense --save): Hessian eigenvalues\n"
                                    "  phase     SWEEP.db (ufm sweep): heatmap with the trivial-collapse boundary; one\n"
                                    "            panel per loss; cells pool seeds only (--where fixes the other inputs)\n"
                                    "  slice     LAND.npz: f along the negative-curvature direction and a random one\n\n"
                                    "examples:\n  ufm plot etf ce.npz ls.npz -o etf.png\n"
                                    "  ufm plot phase grid.db -x K -y lam_W --where d=8 --where n=5 -o phase.png",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("kind", choices=PLOT_KINDS, metavar="KIND", help=" | ".join(PLOT_KINDS))
    pp.add_argument("results", nargs="+", metavar="RESULT", help="saved result file(s)")
    pp.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="image file: .png, .pdf or .svg, in an existing writable folder (written atomically)")
    pp.add_argument("--point", type=_int_min(0), default=0, help="spectrum/slice: which critical point (default 0)")
    pp.add_argument("--color", default="NC2_W", help="phase: the column that colours the map (default NC2_W)")
    pp.add_argument("-x", default="K", help="phase: horizontal axis, a numeric input column (default K)")
    pp.add_argument("-y", default="lam_W", help="phase: vertical axis, a numeric input column (default lam_W)")
    pp.add_argument("--where", action="append", metavar="COL=VALUE",
                    help="phase: keep only rows with COL = VALUE (repeatable; repeats of one column are alternatives), "
                         "e.g. --where loss=ls --where n=5")
    pp.add_argument("--dpi", type=_int_min(1), default=130, help="raster resolution, 30..1200 (default 130)")
    pp.set_defaults(func=cmd_plot)
    add_analyze_parser(sub)
    add_serve_parser(sub)
    return parser


def add_serve_parser(sub) -> None:
    """``ufm serve``: one warm process for the short commands (ufm.server, ufm.client)."""
    sv = sub.add_parser("serve", help="keep one warm process that runs solve, landscape and analyze (no start-up cost)",
                        description="Keep one warm ufm process: while it runs, `ufm solve`, `ufm landscape` and `ufm "
                                    "analyze`\nrun in it instead of starting Python and JAX afresh (same output, exit "
                                    "status, files,\nCtrl-C). Only a server of this very installation and environment "
                                    "is used; one command\nat a time (another runs as usual); UFM_SERVER=0 keeps a "
                                    "command off it.\n\nexamples:\n  ufm serve --background\n  ufm serve --status\n"
                                    "  ufm serve --stop",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    what = sv.add_mutually_exclusive_group()
    what.add_argument("--background", action="store_true", help="start it detached and return once it answers")
    what.add_argument("--status", action="store_true", help="say whether one runs for this installation, and its state")
    what.add_argument("--stop", action="store_true", help="stop it (after the command it is running, if any)")
    sv.add_argument("--idle-minutes", type=_idle_minutes, default=30.0, metavar="M",
                    help=f"stop after M minutes without a command, 0 < M ≤ {MAX_IDLE_MINUTES} (default 30)")
    sv.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    sv.set_defaults(func=cmd_serve, needs_jax=False)


#: a week: a server is meant to outlive a working session, not the machine's uptime
MAX_IDLE_MINUTES = 10080


def _idle_minutes(text):
    v = _float(text)
    if not 0 < v <= MAX_IDLE_MINUTES:
        raise argparse.ArgumentTypeError(f"got {text!r}; must be a number in (0, {MAX_IDLE_MINUTES}]")
    return v


def add_analyze_parser(sub) -> None:
    """``ufm analyze``: a trained network's last layer as a point of (7) (ufm.analysis, docs/theory.md §11)."""
    ap = sub.add_parser("analyze", help="NC metrics, UFM objective, stationarity and the gap to the UFM optimum of a "
                        "trained network's last layer (W, b, features, labels)",
                        description="Judge a trained network's last layer as a point of the UFM (7): every NC metric, "
                                    "train accuracy,\nobjective (7) and its gradient per block, the UFM optimum for "
                                    "the same K, d, class sizes,\nloss and λ's, and the gaps to it. Without --lam-h, "
                                    "λ_H is estimated (networks do not penalise\nfeatures; docs/theory.md §11.2).\n\n"
                                    "FILE is an .npz (numpy.savez) with arrays W (K×d), H (N×d features, one row per "
                                    "sample;\n--layout columns for d×N), labels (N integers in 0..K−1, any order) "
                                    "and optionally b (K).\n--W/--H/--labels/--b name .npy files instead (or "
                                    "override the FILE's arrays).\n\n"
                                    "examples:\n  ufm analyze last_layer.npz --loss ce --lam-w 5e-4\n"
                                    "  ufm analyze --W W.npy --H feats.npy --labels y.npy --b b.npy --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", metavar="FILE", help=".npz with W, H, labels (and b)")
    g = ap.add_argument_group("arrays")
    for name, what in (("W", "classifier weights, K×d"), ("H", "features, N×d (or d×N with --layout columns)"),
                       ("labels", "labels, N integers in 0..K−1"), ("b", "classifier bias, K")):
        g.add_argument(f"--{name}", dest=f"file_{name}", metavar=f"{name}.npy", help=f".npy file of the {what}")
    g.add_argument("--layout", choices=("rows", "columns"), default="rows",
                   help="features as rows (N, d), the PyTorch/JAX habit (default), or columns (d, N)")
    m = ap.add_argument_group("UFM objective (7) to judge the point with")
    m.add_argument("--loss", default="ce", help="ce | fl | ls | mse | package.module:function (default ce)")
    m.add_argument("--gamma", type=_float, help="FL focusing parameter γ ≥ 0 (default 2)")
    m.add_argument("--alpha", type=_float, help="LS smoothing α in [0, 1) (default 0.1)")
    m.add_argument("--kappa", type=_float, help="MSE true-class weight κ > 0 (default 1)")
    m.add_argument("--beta", type=_float, help="MSE target scale β > 0 (default 1)")
    m.add_argument("--lam-w", dest="lam_W", type=_float, help="λ_W, the weight decay on W (default 5e-4)")
    m.add_argument("--lam-h", dest="lam_H", type=_float, help="λ_H (default: estimated, the λ_H at which the point is "
                   "closest to stationary in H)")
    m.add_argument("--lam-b", dest="lam_b", type=_float, help="λ_b (default λ_W); 0 means a free, unregularised bias")
    o = ap.add_argument_group("output")
    o.add_argument("--hessian", nargs="?", const="auto", choices=("auto", "dense", "lanczos"),
                   help="also measure the Hessian spectrum at the point (auto: dense up to 4000 parameters)")
    o.add_argument("--no-bounds", action="store_true", help="skip the convex lifting; compare with the closed forms "
                   "only (`bounds` is then null)")
    o.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ap.set_defaults(func=cmd_analyze)


def main(argv=None, *, handle_signals: bool = True) -> int:
    """Run one command; return its exit status. Every failure ends as one line on stderr, never a traceback
    (``UFM_DEBUG=1`` re-raises unexpected errors for a bug report): 2 bad input (checked before any work), 3 not
    converged or not a minimiser, 4 result printed but an output file not written, 130 interrupted (Ctrl-C or
    SIGTERM), 1 an internal error.

    Called as the program (``argv`` None), a command runs on this installation's ``ufm serve`` server when one
    answers (ufm.client says which commands and when). ``handle_signals=False`` is for that server, which handles
    signals itself."""
    import os

    if sys.stdout is None:                   # started with stdout closed (`>&-`): results go nowhere, as with a pipe
        sys.stdout = open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):
        # a terminal or PYTHONIOENCODING that cannot show λ or ‖∇f‖ gets \u escapes (valid in the JSON too), not a
        # UnicodeEncodeError after the work is done
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors=_ESCAPE)
            except (ValueError, OSError):
                pass
    if argv is None:
        from . import client

        status = client.run(sys.argv[1:])
        if status is not None:
            return status
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # usage is what the user needs, but on stderr: stdout stays for results
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    from .errors import UFMInputError

    prefix = f"ufm {args.command}: error:"
    from . import signals

    # a batch scheduler's SIGTERM is handled like Ctrl-C: the same clean stop (a sweep stores what it finished and
    # says so), instead of dying mid-write; both are recorded as well as raised, so none is lost (signals.py)
    previous = None
    try:
        if handle_signals:
            previous = signals.install()
    except ValueError:                      # not the main thread (embedded use): leave signals alone
        pass
    try:
        if not getattr(args, "needs_jax", True):
            return args.func(args)
        import jax

        jax.config.update("jax_enable_x64", True)   # before any computation: certification needs float64
        from . import cache

        cache.enable()                               # a repeated command loads its compiled programs (cache.py)
        return args.func(args)
    except UFMInputError as exc:
        sys.stderr.write(f"{prefix} {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"ufm {args.command}: {signals.describe(exc)}\n")
        return 130
    except BrokenPipeError:
        # the reader (`| head`) closed the pipe: stop quietly as Unix tools do, and keep Python's exit-time flush of
        # stdout from raising again
        signals.silence(sys.stdout)
        return EXIT_OK
    except OSError as exc:
        # writing the result failed (stdout on a full disk, a file system gone read-only): not a bug in ufm
        where = exc.filename or "standard output"
        sys.stderr.write(f"{prefix} could not write {where} ({exc.strerror or exc})\n")
        if exc.filename is None:
            signals.silence(sys.stdout)      # what is still buffered would fail again at exit (status 120)
        return 4
    except MemoryError:
        sys.stderr.write(f"{prefix} ran out of memory; use smaller sizes (ufm estimates memory before a solve, but "
                         "this step needed more than the estimate)\n")
        return EXIT_BAD_INPUT
    except Exception as exc:
        if signals._pending is not None:
            # a Ctrl-C or SIGTERM that landed inside an import (of JAX, early on) surfaces as an ImportError or the
            # like; the handler recorded it, so it is reported as what it was
            sys.stderr.write(f"ufm {args.command}: {signals.describe(signals._pending)}\n")
            return 130
        if os.environ.get("UFM_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(f"ufm {args.command}: internal error: {type(exc).__name__}: {first[:300]} (a bug in ufm: "
                         "please report it with this command; UFM_DEBUG=1 shows the traceback)\n")
        return 1
    finally:
        if previous is not None:
            signals.restore(previous)


def _json_escape(exc: UnicodeEncodeError):
    """Characters a stream cannot encode, as JSON's ``\\uXXXX`` escapes (surrogate pairs past U+FFFF): the JSON
    document stays valid and means the same, and the human summary stays readable. Python's own backslashreplace
    writes ``\\xb2`` for ², which JSON refuses."""
    out = []
    for c in exc.object[exc.start:exc.end]:
        n = ord(c)
        if n > 0xFFFF:
            n -= 0x10000
            out.append(f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}")
        else:
            out.append(f"\\u{n:04x}")
    return "".join(out), exc.end


_ESCAPE = "ufm-json-escape"
codecs.register_error(_ESCAPE, _json_escape)


if __name__ == "__main__":
    sys.exit(main())
