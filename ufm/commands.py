"""The bodies of the ``ufm`` commands: each turns parsed flags into library calls and prints the result.

Heavy imports happen inside the functions, so ``ufm --help`` never loads JAX.
"""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_BAD_INPUT, EXIT_NOT_CONVERGED = 0, 2, 3


def problem_from_args(args):
    from .problem import Problem

    if args.no_bias and args.lam_b is not None:
        from .errors import UFMInputError
        raise UFMInputError("--lam-b", args.lam_b, "cannot be combined with --no-bias")
    return Problem.create(
        args.K, args.d, args.n, lam=args.lam, lam_W=args.lam_W, lam_H=args.lam_H, lam_b=args.lam_b,
        bias=not args.no_bias, loss=args.loss, gamma=args.gamma, alpha=args.alpha, kappa=args.kappa, beta=args.beta,
    )


def _check_save_folder(path):
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            from .errors import UFMInputError
            raise UFMInputError("--save", path, f"its folder {folder} does not exist")


def cmd_solve(args) -> int:
    from .render import render_solution
    from .report import save_npz, solution_record, to_json
    from .solvers import solve

    _check_save_folder(args.save)
    problem = problem_from_args(args)
    sol = solve(problem, solver=args.solver, gtol=args.gtol, max_steps=args.max_steps, seed=args.seed,
                init_scale=args.init_scale, dtype=args.dtype, lr=args.lr, trace_every=args.trace_every)
    rec = solution_record(sol)
    if args.save is not None:
        save_npz(sol, args.save, rec)
    print(to_json(rec) if args.json else render_solution(rec))
    if args.save is not None and not args.json:
        print(f"saved W, H, b, labels to {args.save}")
    return EXIT_OK if sol.converged else EXIT_NOT_CONVERGED


def _progress(verbose: bool = False):
    """The landscape's ``progress(done, total, stage)``: on a terminal one line rewritten in place (each stage ends
    with a newline); elsewhere nothing, or with ``--verbose`` one log line per stage and per census point.

    "starts" counts finished starts; the other stages are called with the index of the item about to run and once
    more with done == total when the stage is over."""
    tty = sys.stderr.isatty()

    def report(done, total, stage):
        end = done >= total
        if stage == "starts":
            text = f"census: {done}/{total} starts"
        elif stage in ("classifying", "escaping"):
            what = "classifying" if stage == "classifying" else "escaping from saddle"
            text = f"census: {what} {total}/{total}, done" if end else f"census: {what} {done + 1}/{total}"
        else:
            text = f"landscape: {stage}" + (", done" if end else " …")
        if tty:
            sys.stderr.write("\r\x1b[K" + text + ("\n" if end else ""))
        elif verbose and (stage == "starts" or not end):
            sys.stderr.write(f"ufm {text}\n")
        else:
            return
        sys.stderr.flush()

    return report


#: the solve flags of `ufm landscape` and their defaults where a solve runs: the census runs LM to a tighter gtol
#: with a short budget per start and cycles its start scales (landscape.CENSUS_SCALES) unless --init-scale is given
_SOLVE_DEFAULTS = {
    "solution": {"solver": "auto", "gtol": 1e-9, "max_steps": 10000, "seed": 0, "init_scale": 0.1, "dtype": "float64"},
    "census": {"solver": "lm", "gtol": 1e-10, "max_steps": 500, "seed": 0, "init_scale": None, "dtype": "float64"},
}
_SOLVE_FLAGS = {"solver": "--solver", "gtol": "--gtol", "max_steps": "--max-steps", "seed": "--seed",
                "init_scale": "--init-scale", "dtype": "--dtype", "lr": "--lr"}


def _landscape_options(args) -> dict:
    """The run options of `ufm landscape`, resolved per --at; a flag that would be ignored is bad input."""
    from .errors import UFMInputError

    if args.starts is not None and args.at != "census":
        raise UFMInputError("--starts", args.starts, "applies only with --at census")
    if args.at == "origin":
        for key, flag in _SOLVE_FLAGS.items():
            if getattr(args, key) is not None:
                raise UFMInputError(flag, getattr(args, key), "--at origin runs no solve; use it with --at solution "
                                    "or --at census")
        return {}
    opts = {k: (v if getattr(args, k) is None else getattr(args, k)) for k, v in _SOLVE_DEFAULTS[args.at].items()}
    opts["lr"] = args.lr
    if args.at == "census":
        opts["starts"] = 20 if args.starts is None else args.starts
    return opts


#: `ufm landscape` finished and printed its result, but --save could not be written (disk full)
EXIT_SAVE_FAILED = 1


def cmd_landscape(args) -> int:
    from .critical import Tolerances, analyze_point, check_hessian, origin, origin_min_eig_theory
    from .errors import UFMInputError
    from .landscape import CENSUS_SCALES, ESCAPE_SOLVERS, census, escape
    from .paths import check_output_path
    from .render import render_landscape
    from .report import json_safe, to_json
    from .solvers import as_solver, solve

    # everything that can be refused is refused here, before the first solve or Hessian
    problem = problem_from_args(args)
    opts = _landscape_options(args)
    tol = Tolerances(grad_tol=args.grad_tol, zero_tol=args.zero_tol)
    save = check_output_path("--save", args.save, (".npz",))
    if opts:
        as_solver(opts["solver"], lr=opts["lr"])
    method = check_hessian(problem, args.hessian, solver=opts.get("solver", ESCAPE_SOLVERS[0]))
    report = _progress(args.verbose)

    config = {**problem.config(), "hessian": args.hessian, **{k: opts.get(k) for k in _SOLVE_FLAGS}}
    if args.at == "census":
        config.update(starts=opts["starts"], seeds=[opts["seed"], opts["seed"] + opts["starts"] - 1],
                      init_scales=list(CENSUS_SCALES if opts["init_scale"] is None else [opts["init_scale"]]))
    config["escape_solvers"] = None if args.no_escape else list(ESCAPE_SOLVERS)
    rec = {"at": args.at, "config": config}
    code = EXIT_OK
    if args.at == "census":
        cs = census(problem, opts["starts"], hessian=args.hessian, tolerances=tol, with_escape=not args.no_escape,
                    progress=report, solver=opts["solver"], seed=opts["seed"], gtol=opts["gtol"],
                    max_steps=opts["max_steps"], init_scale=opts["init_scale"], lr=opts["lr"], dtype=opts["dtype"])
        points = cs.points
        rec["census"] = {"starts": cs.starts, "converged": cs.converged, "unique": len(points),
                         "found": [p.found for p in points], "statuses": cs.statuses, "wall_time_s": cs.wall_time}
        code = EXIT_OK if cs.converged else EXIT_NOT_CONVERGED      # nothing was found: say so in the status too
    else:
        if args.at == "solution":
            report(0, 1, "solving")
            sol = solve(problem, solver=opts["solver"], gtol=opts["gtol"], max_steps=opts["max_steps"],
                        seed=opts["seed"], init_scale=opts["init_scale"], dtype=opts["dtype"], lr=opts["lr"])
            report(1, 1, "solving")
            rec["solve"] = {"status": sol.status.name.lower(), "steps": sol.steps, "grad_norm": sol.grad_norm}
            code = EXIT_OK if sol.converged else EXIT_NOT_CONVERGED
            point, label = sol.params, "solution"
        else:
            point, label = origin(problem), "origin"
            try:
                rec["origin_min_eig_theory"] = origin_min_eig_theory(problem)
            except TypeError:            # φ′(0) exists only for the softmax losses
                rec["origin_min_eig_theory"] = None
        report(0, 1, "analysing the Hessian")
        cp = analyze_point(problem, point, hessian=args.hessian, tolerances=tol, label=label)
        report(1, 1, "analysing the Hessian")
        if cp.classification == "strict_saddle" and not args.no_escape:
            report(0, 1, "escaping from the saddle")
            cp.escape = escape(problem, cp, hessian=args.hessian, tolerances=tol)
            report(1, 1, "escaping from the saddle")
        points = [cp]
    rec["hessian_method"] = points[0].hessian_method if points else method
    rec["tolerances"] = {"grad_tol": tol.grad_tol, "obj_tol": tol.obj_tol,
                         "zero_tol": [p.zero_tol for p in points],
                         "zero_tol_rule": "given" if args.zero_tol else "max(1e-8·‖∇²f‖₂, 1e2·‖∇f‖)"}
    rec["critical_points"] = [p.record() for p in points]
    rec = json_safe(rec)
    failed = None
    if save:
        from .landscape import save_landscape
        try:
            save_landscape(problem, points, rec, save)
        except OSError as exc:         # disk full after the work: the result is printed all the same
            failed = f"could not write {save} ({exc.strerror or exc}); the result above is complete"
    print(to_json(rec) if args.json else render_landscape(rec))
    if failed:
        sys.stdout.flush()
        sys.stderr.write(f"ufm landscape: error: {failed}\n")
        return EXIT_SAVE_FAILED
    if save and not args.json:
        print(f"saved spectra and slices to {save}")
    return code


def cmd_sweep(args) -> int:
    from .grid import AXES, build_grid, load_toml
    from .store import export_sweep
    from .sweep import render_summary, run_sweep

    file_values = load_toml(args.config) if args.config else {}
    flags = {name: getattr(args, f"grid_{name}") for name in AXES}
    flags.update(solver=args.solver, gtol=args.gtol, max_steps=args.max_steps, init_scale=args.init_scale,
                 hessian=args.hessian, census=args.census, analyze=True if args.analyze else None)
    grid = build_grid(file_values, flags)
    store = args.store or file_values.get("store") or "ufm-sweep.db"
    workers = args.workers or file_values.get("workers") or "auto"
    executor = args.executor or file_values.get("executor") or "local"
    address = args.address or file_values.get("address")
    exports = args.export or file_values.get("export") or []
    exports = [exports] if isinstance(exports, str) else list(exports)
    for out in exports:
        if not out.lower().endswith((".csv", ".parquet")):
            from .errors import UFMInputError
            raise UFMInputError("--export", out, "the file must end in .csv or .parquet")
    bar = None
    show = not args.quiet and sys.stderr.isatty()

    def progress(k, failures):
        # the bar opens with the first finished point: run_sweep has validated the grid by then (bad input never
        # draws a bar), and the grid is validated once
        nonlocal bar
        if bar is None and show:
            from tqdm import tqdm

            bar = tqdm(total=len(grid.points()), unit="pt", desc="sweep", file=sys.stderr, dynamic_ncols=True)
        if bar is not None:
            bar.update(k)
            bar.set_postfix(failures=failures)

    summary = run_sweep(grid, store, workers=workers, executor=executor, address=address, progress=progress)
    if bar is not None:
        bar.close()
    for out in exports:
        export_sweep(store, out)
    if args.json:
        from .report import to_json
        import dataclasses

        print(to_json({**dataclasses.asdict(summary), "store": store, "exports": exports}))
    elif not args.quiet or summary.interrupted:
        print(render_summary(summary, store))
        for out in exports:
            print(f"exported {out}")
    if summary.interrupted:
        return 130
    return EXIT_OK


PLOT_KINDS = ("etf", "dynamics", "spectrum", "phase", "slice")
PLOT_FORMATS = (".png", ".pdf", ".svg")


def cmd_plot(args) -> int:
    from .errors import UFMInputError

    ext = os.path.splitext(args.output)[1].lower()
    if ext not in PLOT_FORMATS:
        raise UFMInputError("-o", args.output, f"the image must end in {', '.join(PLOT_FORMATS)}")
    _check_save_folder(args.output)
    if len(args.results) > 1 and args.kind not in ("etf", "dynamics"):
        raise UFMInputError("RESULT", " ".join(args.results), f"`ufm plot {args.kind}` takes one result")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plots

    need = {"etf": "solution", "dynamics": "solution", "spectrum": "landscape", "slice": "landscape", "phase": "sweep"}
    results = [plots.load_result(p, need[args.kind]) for p in args.results]
    if args.kind == "etf":
        n = len(results)
        fig = plt.figure(figsize=(5 * n, 5))
        for i, res in enumerate(results):
            three = res["W"].shape[0] >= 4
            ax = fig.add_subplot(1, n, i + 1, projection="3d" if three else None)
            plots.plot_etf(ax, res)
    elif args.kind == "dynamics":
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        plots.plot_dynamics(axes, results)
    elif args.kind == "spectrum":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        plots.plot_spectrum(ax, results[0], args.point)
    elif args.kind == "phase":
        fig, ax = plt.subplots(figsize=(7, 5))
        plots.plot_phase(ax, results[0], x=args.x, y=args.y, color=args.color)
    else:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        plots.plot_slice(a1, a2, results[0], args.point)
    fig.tight_layout()
    tmp = f"{args.output}.partial{ext}"
    fig.savefig(tmp, dpi=args.dpi)
    os.replace(tmp, args.output)
    plt.close(fig)
    print(f"wrote {args.output}")
    return EXIT_OK
