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


def _progress(done, total):
    if sys.stderr.isatty():
        sys.stderr.write(f"\rcensus: {done}/{total} starts" + ("\n" if done == total else ""))
        sys.stderr.flush()


def cmd_landscape(args) -> int:
    from .landscape import census, escape
    from .render import render_landscape
    from .critical import Tolerances, analyze_point, origin, origin_min_eig_theory
    from .report import json_safe, to_json
    from .solvers import solve

    problem = problem_from_args(args)
    _check_save_folder(args.save)
    if args.grad_tol <= 0:
        from .errors import UFMInputError
        raise UFMInputError("--grad-tol", args.grad_tol, "must be > 0")
    if args.zero_tol is not None and args.zero_tol <= 0:
        from .errors import UFMInputError
        raise UFMInputError("--zero-tol", args.zero_tol, "must be > 0")
    tol = Tolerances(grad_tol=args.grad_tol, zero_tol=args.zero_tol)
    rec = {"at": args.at, "config": {**problem.config(), "solver": args.solver, "gtol": args.gtol, "seed": args.seed,
                                      "init_scale": args.init_scale, "hessian": args.hessian}}
    code = EXIT_OK
    if args.at == "census":
        cs = census(problem, args.starts, hessian=args.hessian, tolerances=tol, with_escape=not args.no_escape,
                    progress=_progress)
        points = cs.points
        rec["census"] = {"starts": cs.starts, "converged": cs.converged, "unique": len(points),
                         "found": [p.found for p in points], "wall_time_s": cs.wall_time}
    else:
        if args.at == "solution":
            sol = solve(problem, solver=args.solver, gtol=args.gtol, max_steps=args.max_steps, seed=args.seed,
                        init_scale=args.init_scale, dtype=args.dtype, lr=args.lr)
            rec["solve"] = {"status": sol.status.name.lower(), "steps": sol.steps, "grad_norm": sol.grad_norm}
            code = EXIT_OK if sol.converged else EXIT_NOT_CONVERGED
            point, label = sol.params, "solution"
        else:
            point, label = origin(problem), "origin"
            try:
                rec["origin_min_eig_theory"] = origin_min_eig_theory(problem)
            except TypeError:            # φ′(0) exists only for the softmax losses
                rec["origin_min_eig_theory"] = None
        cp = analyze_point(problem, point, hessian=args.hessian, tolerances=tol, label=label)
        if cp.classification == "strict_saddle" and not args.no_escape:
            cp.escape = escape(problem, cp, hessian=args.hessian, tolerances=tol)
        points = [cp]
    rec["hessian_method"] = points[0].hessian_method if points else args.hessian
    rec["tolerances"] = {"grad_tol": tol.grad_tol, "obj_tol": tol.obj_tol,
                         "zero_tol": [p.zero_tol for p in points],
                         "zero_tol_rule": "given" if args.zero_tol else "max(1e-8·‖∇²f‖₂, 1e2·‖∇f‖)"}
    rec["critical_points"] = [p.record() for p in points]
    rec = json_safe(rec)
    if args.save:
        from .landscape import save_landscape
        save_landscape(problem, points, rec, args.save)
    print(to_json(rec) if args.json else render_landscape(rec))
    if args.save and not args.json:
        print(f"saved spectra and slices to {args.save}")
    return code


#: `ufm sweep` exit status beyond 0 and 2: some points failed (status error) or could not be computed; Ctrl-C
EXIT_POINTS_FAILED, EXIT_INTERRUPTED = 1, 130


def _sweep_command_line(args) -> str:
    """The command as given (flags in a canonical order), for the store's ``runs`` table."""
    import shlex

    from .grid import AXES

    words = ["ufm", "sweep"]
    for dest, value in vars(args).items():
        if dest in ("func", "command") or value is None or value is False:
            continue
        flag = AXES[dest[5:]][0] if dest.startswith("grid_") else "--" + dest.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            words += [flag] if v is True else [flag, str(v)]
    return shlex.join(words)


def _point_line(done, todo, idx, row) -> str:
    from .sweep import describe_point

    outcome = row.get("status") or "?"
    if row.get("classification"):
        outcome += f", {row['classification']}"
    if row.get("status") == "error":
        outcome += f": {(str(row.get('error') or '').splitlines() or [''])[0][:200]}"
    return f"sweep [{done}/{todo}] #{idx} {describe_point(row)}: {outcome}, {row.get('time_s') or 0:.2f} s"


def cmd_sweep(args) -> int:
    from .grid import AXES, build_grid, load_toml
    from .store import check_export, export_sweep
    from .sweep import render_summary, run_sweep

    file_values = load_toml(args.config) if args.config else {}
    flags = {name: getattr(args, f"grid_{name}") for name in AXES}
    flags.update(solver=args.solver, gtol=args.gtol, rtol=args.rtol, max_steps=args.max_steps,
                 init_scale=args.init_scale, hessian=args.hessian, census=args.census,
                 analyze=True if args.analyze else None)
    grid = build_grid(file_values, flags)          # also checks the file's store/workers/export/… types

    def setting(name, default):
        value = getattr(args, name)
        return value if value is not None else file_values.get(name, default)

    store = setting("store", "ufm-sweep.db")
    workers = setting("workers", "auto")
    executor = setting("executor", "local")
    address = setting("address", None)
    quiet = args.quiet or file_values.get("quiet", False)
    verbose = args.verbose or file_values.get("verbose", False)
    as_json = args.json or file_values.get("json", False)
    exports = setting("export", [])
    exports = [exports] if isinstance(exports, str) else list(exports)
    exports = [check_export(out) for out in exports]      # before the work, not after it
    bar, failed = None, 0
    show = not quiet and sys.stderr.isatty()

    def say(line):
        # through tqdm when a bar is drawn, so the line does not tear it
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def on_point(done, todo, idx, row):
        # the bar opens with the first finished point: run_sweep has validated everything by then (bad input never
        # draws a bar)
        nonlocal bar, failed
        failed += row.get("status") == "error"
        if bar is None and show:
            from tqdm import tqdm

            bar = tqdm(total=todo, unit="pt", desc="sweep", file=sys.stderr, dynamic_ncols=True)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=failed)
        if verbose:
            say(_point_line(done, todo, idx, row))

    def log(message):
        say(f"ufm sweep: {message}")

    try:
        summary = run_sweep(grid, store, workers=workers, executor=executor, address=address, on_point=on_point,
                            log=log, command=_sweep_command_line(args))
    finally:
        if bar is not None:
            bar.close()
    if not summary.interrupted:
        for out in exports:
            export_sweep(store, out)
    if as_json:
        from dataclasses import asdict

        from .report import to_json

        print(to_json({**asdict(summary), "store": store, "exports": [] if summary.interrupted else exports}))
    elif not quiet or not summary.ok:
        print(render_summary(summary, store))
        for out in exports if not summary.interrupted else []:
            print(f"exported {out}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failures or summary.lost:
        return EXIT_POINTS_FAILED
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
