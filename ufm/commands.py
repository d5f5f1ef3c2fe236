"""The bodies of the ``ufm`` commands: each turns parsed flags into library calls and prints the result.

Heavy imports happen inside the functions, so ``ufm --help`` never loads JAX.
"""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_BAD_INPUT, EXIT_NOT_CONVERGED = 0, 2, 3
#: the result was computed and printed, but an output file could not be written (disk full, folder removed meanwhile)
EXIT_SAVE_FAILED = 4



def emit(text: str) -> None:
    """Write the command's result to standard output (the JSON document, or the human summary)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def problem_from_args(args):
    from .problem import Problem

    if args.no_bias and args.lam_b is not None:
        from .errors import UFMInputError
        raise UFMInputError("--lam-b", args.lam_b, "cannot be combined with --no-bias")
    if getattr(args, "depth", 1) != 1 or getattr(args, "widths", None) or getattr(args, "lam_layers", None):
        from .deep import deep_problem      # docs/theory.md §12; depth 1 stays eq. (7)'s Problem below

        return deep_problem(args.K, args.d, args.n, depth=args.depth, activation=args.activation,
                            widths=args.widths, lam=args.lam, lam_W=args.lam_W, lam_H=args.lam_H, lam_b=args.lam_b,
                            lam_layers=args.lam_layers, bias=not args.no_bias, loss=args.loss, gamma=args.gamma,
                            alpha=args.alpha, kappa=args.kappa, beta=args.beta)
    return Problem.create(
        args.K, args.d, args.n, lam=args.lam, lam_W=args.lam_W, lam_H=args.lam_H, lam_b=args.lam_b,
        bias=not args.no_bias, loss=args.loss, gamma=args.gamma, alpha=args.alpha, kappa=args.kappa, beta=args.beta,
    )


def _check_save_folder(path):
    if path is not None:
        from .paths import check_output_path
        check_output_path("--save", path, (".npz",))


class SolveProgress:
    """Solver progress on stderr: one rewritten line on a terminal (stage, step, f, ‖∇f‖, elapsed, at most five
    times a second), or, with ``verbose`` when stderr is not a terminal (nohup, batch jobs), one line per stage and
    one every LOG_EVERY_SECONDS of a long stage (a killed batch job then shows how far it got)."""

    #: seconds between log lines within one stage when stderr is not a terminal
    LOG_EVERY_SECONDS = 60.0

    def __init__(self, verbose: bool = False, label: str = "solve"):
        self.tty = sys.stderr.isatty()
        self.verbose = verbose
        self.label = label
        self.last_draw = 0.0
        self.stage = None
        self.drawn = False
        self.last_logged = 0.0

    def __call__(self, ev: dict) -> None:
        import time

        line = (f"{self.label}: {ev['stage']} step {ev['step']}  f = {ev['f']:.10g}  ‖∇f‖ = {ev['grad_norm']:.2e}  "
                f"scale-free {ev['rel_grad_norm']:.1e}  {ev['elapsed']:.1f} s")
        if self.tty:
            now = time.monotonic()
            if ev["done"]:
                if self.drawn:
                    sys.stderr.write("\r\033[K")
                    sys.stderr.flush()
            elif now - self.last_draw >= 0.2:
                sys.stderr.write("\r\033[K" + line)
                sys.stderr.flush()
                self.last_draw, self.drawn = now, True
        elif self.verbose and (ev["done"] or ev["stage"] != self.stage
                               or ev["elapsed"] - self.last_logged >= self.LOG_EVERY_SECONDS):
            self.last_logged = ev["elapsed"]
            if ev["done"]:
                line = f"{self.label}: {ev['status']} after {ev['step']} steps, ‖∇f‖ = {ev['grad_norm']:.2e}, {ev['elapsed']:.1f} s"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        self.stage = ev["stage"]


def _write_after_result(command, flag, path, write) -> int:
    """Write an output file after the result was printed: a failure now (disk full, folder removed) loses nothing
    the user has not already seen; it is one line and exit 4."""
    try:
        write()
    except OSError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"ufm {command}: error: {flag}: could not write {path} ({exc.strerror or exc}); the result "
                         "above is complete\n")
        return EXIT_SAVE_FAILED
    return EXIT_OK


def cmd_solve(args) -> int:
    from .render import render_solution
    from .report import save_npz, solution_record, to_json
    from .solvers import solve

    from .methods import as_solver
    from .solvers import _validate_run_args

    # every flag checked before any work: the run options, the output path, then the problem
    _validate_run_args(args.seed, args.init_scale, args.gtol, args.max_steps, args.dtype, args.rtol)
    as_solver(args.solver, lr=args.lr)
    _check_save_folder(args.save)
    problem = problem_from_args(args)
    deep = hasattr(problem, "depth")
    if deep and args.trace_every:
        from .errors import UFMInputError
        raise UFMInputError("--trace-every", args.trace_every, "applies only at --depth 1 (NC dynamics of eq. (7))")
    sol = solve(problem, solver=args.solver, gtol=args.gtol, rtol=args.rtol, max_steps=args.max_steps, seed=args.seed,
                init_scale=args.init_scale, dtype=args.dtype, lr=args.lr, trace_every=args.trace_every,
                progress=SolveProgress(args.verbose))
    if deep:
        from .deep_report import deep_record, render_deep, save_deep_npz

        rec = deep_record(sol, search=not args.no_bounds)
        render_solution, save_npz = render_deep, save_deep_npz
    else:
        rec = solution_record(sol, bounds=not args.no_bounds)
    emit(to_json(rec) if args.json else render_solution(rec))
    code = EXIT_OK if sol.converged else EXIT_NOT_CONVERGED
    if args.save is not None:
        wrote = _write_after_result("solve", "--save", args.save, lambda: save_npz(sol, args.save, rec))
        if wrote != EXIT_OK:
            return wrote
        if not args.json:
            emit(f"saved W, H, b, labels to {args.save}")
    return code


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
    "solution": {"solver": "auto", "gtol": None, "rtol": None, "max_steps": 10000, "seed": 0, "init_scale": 0.1,
                 "dtype": "float64"},
    "census": {"solver": "lm", "gtol": None, "rtol": None, "max_steps": 500, "seed": 0, "init_scale": None,
               "dtype": "float64"},
}
_SOLVE_FLAGS = {"solver": "--solver", "gtol": "--gtol", "rtol": "--rtol", "max_steps": "--max-steps", "seed": "--seed",
                "init_scale": "--init-scale", "dtype": "--dtype", "lr": "--lr"}


def _landscape_options(args) -> dict:
    """The run options of `ufm landscape`, resolved per --at; a flag that would be ignored is bad input."""
    from .errors import UFMInputError

    if args.starts is not None and args.at != "census":
        raise UFMInputError("--starts", args.starts, "applies only with --at census")
    if args.at == "dnc" and getattr(args, "depth", 1) == 1:
        raise UFMInputError("--at", "dnc", "the deep-neural-collapse point needs --depth ≥ 2 (at depth 1 the NC "
                            "optimum is what --at solution finds)")
    if args.at in ("origin", "dnc"):
        for key, flag in _SOLVE_FLAGS.items():
            if getattr(args, key) is not None:
                raise UFMInputError(flag, getattr(args, key), f"--at {args.at} runs no solve; use it with --at "
                                    "solution or --at census")
        return {}
    from .solvers import default_tolerances

    opts = {k: (v if getattr(args, k) is None else getattr(args, k)) for k, v in _SOLVE_DEFAULTS[args.at].items()}
    opts["lr"] = args.lr
    # tolerances left open take the dtype's defaults; a float64 census asks LM for a tighter gtol (1e-10)
    if opts["gtol"] is None and args.at == "census" and opts["dtype"] == "float64":
        opts["gtol"] = 1e-10
    opts["gtol"], opts["rtol"], _ = default_tolerances(opts["dtype"], opts["gtol"], opts["rtol"])
    if args.at == "census":
        opts["starts"] = 20 if args.starts is None else args.starts
    return opts


def cmd_landscape(args) -> int:
    from .critical import Tolerances, analyze_point, check_eigensolver, check_hessian, origin, origin_min_eig_theory
    from .landscape import CENSUS_SCALES, ESCAPE_SOLVERS, census, escape
    from .paths import check_output_path
    from .render import render_landscape
    from .report import json_safe, to_json
    from .solvers import as_solver, solve

    # everything that can be refused is refused here, before the first solve or Hessian
    problem = problem_from_args(args)
    opts = _landscape_options(args)
    deep = hasattr(problem, "depth")
    if deep:
        from .symmetry import check_deep_basis

        check_deep_basis(problem)
    if args.at == "dnc":
        from .deep_theory import dnc_value

        dnc = dnc_value(problem)
        if dnc.objective is None:
            from .errors import UFMInputError
            raise UFMInputError("--at", "dnc", f"this problem has no DNC point: {dnc.reason}")
    tol = Tolerances(grad_tol=args.grad_tol, zero_tol=args.zero_tol)
    save = check_output_path("--save", args.save, (".npz",))
    if opts:
        from .solvers import _validate_run_args

        scale = 0.1 if opts["init_scale"] is None else opts["init_scale"]
        _validate_run_args(opts["seed"], scale, opts["gtol"], opts["max_steps"], opts["dtype"], opts["rtol"])
        as_solver(opts["solver"], lr=opts["lr"])
    method = check_hessian(problem, args.hessian, solver=opts.get("solver", ESCAPE_SOLVERS[0]),
                           eigensolver=args.eigensolver, hessian_dtype=args.hessian_dtype)
    eigensolver = check_eigensolver(problem, method, args.eigensolver, args.hessian_dtype)
    curv = {"eigensolver": args.eigensolver, "hessian_dtype": args.hessian_dtype}
    report = _progress(args.verbose)

    config = {**problem.config(), "hessian": args.hessian, **curv, **{k: opts.get(k) for k in _SOLVE_FLAGS}}
    if args.at == "census":
        config.update(starts=opts["starts"], seeds=[opts["seed"], opts["seed"] + opts["starts"] - 1],
                      init_scales=list(CENSUS_SCALES if opts["init_scale"] is None else [opts["init_scale"]]))
    config["escape_solvers"] = None if args.no_escape else list(ESCAPE_SOLVERS)
    rec = {"at": args.at, "config": config}
    if deep:
        from .deep_landscape import GLOBAL_RULE

        rec["global_rule"] = GLOBAL_RULE
    code = EXIT_OK
    if args.at == "census":
        cs = census(problem, opts["starts"], hessian=args.hessian, **curv, tolerances=tol, with_escape=not args.no_escape,
                    progress=report, solver=opts["solver"], seed=opts["seed"], gtol=opts["gtol"], rtol=opts["rtol"],
                    max_steps=opts["max_steps"], init_scale=opts["init_scale"], lr=opts["lr"], dtype=opts["dtype"])
        points = cs.points
        rec["census"] = {"starts": cs.starts, "converged": cs.converged, "unique": len(points),
                         "found": [p.found for p in points], "statuses": cs.statuses, "wall_time_s": cs.wall_time}
        code = EXIT_OK if cs.converged else EXIT_NOT_CONVERGED      # nothing was found: say so in the status too
    else:
        if args.at == "solution":
            report(0, 1, "solving")
            sol = solve(problem, solver=opts["solver"], gtol=opts["gtol"], rtol=opts["rtol"], max_steps=opts["max_steps"],
                        seed=opts["seed"], init_scale=opts["init_scale"], dtype=opts["dtype"], lr=opts["lr"])
            report(1, 1, "solving")
            rec["solve"] = {"status": sol.status.name.lower(), "steps": sol.steps, "grad_norm": sol.grad_norm,
                            "wall_time_s": sol.wall_time, "work": sol.work}
            code = EXIT_OK if sol.converged else EXIT_NOT_CONVERGED
            point, label = sol.params, "solution"
        elif args.at == "dnc":
            from .deep_theory import dnc_point

            point, label = dnc_point(problem, dnc), "dnc"
            rec["dnc"] = dnc.as_dict()
        elif deep:
            from .deep_landscape import deep_origin, deep_origin_min_eig_theory

            point, label = deep_origin(problem), "origin"
            rec["origin_min_eig_theory"] = deep_origin_min_eig_theory(problem)
        else:
            point, label = origin(problem), "origin"
            try:
                rec["origin_min_eig_theory"] = origin_min_eig_theory(problem)
            except TypeError:            # φ′(0) exists only for the softmax losses
                rec["origin_min_eig_theory"] = None
        report(0, 1, "analysing the Hessian")
        cp = analyze_point(problem, point, hessian=args.hessian, **curv, tolerances=tol, label=label)
        report(1, 1, "analysing the Hessian")
        if cp.classification == "strict_saddle" and not args.no_escape:
            report(0, 1, "escaping from the saddle")
            cp.escape = escape(problem, cp, hessian=args.hessian, **curv, tolerances=tol)
            report(1, 1, "escaping from the saddle")
        points = [cp]
    rec["hessian_method"] = points[0].hessian_method if points else method
    # the matrix-free eigensolver that ran (None on the dense path) and the dtype the zero tolerance is scaled to
    rec["eigensolver"] = eigensolver
    dtype = args.hessian_dtype if eigensolver else "float64"
    rec["hessian_dtype"] = dtype
    rec["tolerances"] = {"grad_tol": tol.grad_tol, "obj_tol": tol.obj_tol,
                         "zero_tol": [p.zero_tol for p in points], "zero_tol_rule": tol.zero_rule(dtype)}
    rec["critical_points"] = [p.record() for p in points]
    rec = json_safe(rec)
    emit(to_json(rec) if args.json else render_landscape(rec))
    if save:
        from .landscape import save_landscape

        wrote = _write_after_result("landscape", "--save", save, lambda: save_landscape(problem, points, rec, save))
        if wrote != EXIT_OK:
            return wrote
        if not args.json:
            emit(f"saved spectra and slices to {save}")
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
                 analyze=True if args.analyze else None, low_rank_starts=args.low_rank_starts)
    grid = build_grid(file_values, flags)          # also checks the file's store/workers/export/… types

    def setting(name, default):
        value = getattr(args, name)
        return value if value is not None else file_values.get(name, default)

    store = setting("store", "ufm-sweep.db")
    workers = setting("workers", "auto")
    executor = setting("executor", "local")
    batch = setting("batch", "auto")
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
                            log=log, command=_sweep_command_line(args), batch=batch)
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


PLOT_KINDS = ("etf", "gram", "dynamics", "spectrum", "phase", "slice")
PLOT_FORMATS = (".png", ".pdf", ".svg")
DPI_RANGE = (30, 1200)
#: the largest raster ``ufm plot`` draws: Agg allocates width × height × 4 bytes up front (1e8 px ≈ 400 MB)
MAX_PIXELS = 100_000_000


def cmd_plot(args) -> int:
    from .errors import UFMInputError

    if not DPI_RANGE[0] <= args.dpi <= DPI_RANGE[1]:
        raise UFMInputError("--dpi", args.dpi, f"must be an integer in {DPI_RANGE[0]}..{DPI_RANGE[1]}")
    if len(args.results) > 1 and args.kind not in ("etf", "gram", "dynamics"):
        raise UFMInputError("RESULT", " ".join(args.results), f"`ufm plot {args.kind}` takes one result")
    where = getattr(args, "where", None)
    if args.kind == "phase":
        from .plots import check_phase_axes, parse_where

        check_phase_axes(args.x, args.y)       # against the store's fixed columns, before loading it
        parse_where(where)
    from .paths import claim_output_path

    # checked before any loading or drawing; the image goes to this temporary and is renamed over -o when complete
    tmp = claim_output_path("-o", args.output, PLOT_FORMATS)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from . import plots

        need = {"etf": "solution", "gram": "solution", "dynamics": "solution", "spectrum": "landscape",
                "slice": "landscape", "phase": "sweep"}
        results = [plots.load_result(p, need[args.kind], geometry=args.kind in ("etf", "gram")) for p in args.results]
        w, h = plots.figure_size(args.kind, results, where)
        px_w, px_h = round(w * args.dpi), round(h * args.dpi)
        if px_w * px_h > MAX_PIXELS or max(px_w, px_h) >= 2**16:
            most = int(min((MAX_PIXELS / (w * h)) ** 0.5, (2**16 - 1) / max(w, h)))
            raise UFMInputError("--dpi", args.dpi, f"this {w:g}×{h:g} in figure would be {px_w}×{px_h} px; "
                                f"at most {most} dpi here")
        fig = plots.make_figure(args.kind, results, point=args.point, x=args.x, y=args.y, color=args.color,
                                where=where)
        try:
            fig.savefig(tmp, dpi=args.dpi, format=os.path.splitext(args.output)[1][1:].lower())
            os.replace(tmp, args.output)
        except OSError as exc:
            raise UFMInputError("-o", args.output, f"could not write the image ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_analyze(args) -> int:
    """``ufm analyze``: read the arrays, then ufm.analysis.analyze (the same code path as Python's ``ufm.analyze``)."""
    from .analysis import analyze
    from .lastlayer import load_arrays
    from .render import render_analysis
    from .report import to_json

    arrays = load_arrays(args.file, **{name: getattr(args, f"file_{name}") for name in ("W", "H", "labels", "b")})
    rec = analyze(arrays["W"], arrays["H"], arrays["labels"], arrays["b"], loss=args.loss, lam_W=args.lam_W,
                  lam_H=args.lam_H, lam_b=args.lam_b, layout=args.layout, hessian=args.hessian or False,
                  bounds=not args.no_bounds, gamma=args.gamma, alpha=args.alpha, kappa=args.kappa, beta=args.beta)
    emit(to_json(rec) if args.json else render_analysis(rec))
    return EXIT_OK


def cmd_serve(args) -> int:
    """``ufm serve``: run, start, stop or describe this installation's server (ufm.server). Exit 0 whatever the state
    found (a stop with none running, a start with one running): the state asked for holds afterwards."""
    import json
    import time

    from . import client, server

    path = client.socket_path()
    if path is None:
        return _serve_failed(("no private folder with room for its socket (XDG_RUNTIME_DIR, else the temporary folder: it must be "
                             "ours, closed to others, and its path short)"))

    def say(record: dict, text: str) -> int:
        emit(json.dumps(record) if args.json else text)
        return EXIT_OK

    def described(reply: dict) -> str:
        up = (time.time() - reply["started"]) / 60
        return (f"pid {reply['pid']}, up {up:.0f} min, {reply['commands']} commands run, "
                f"{'running one now' if reply['busy'] else 'idle'}, stops after {reply['idle_minutes']:g} idle minutes; "
                f"log {server.log_path(reply['socket'])}")

    if args.status:
        reply = client.ask(client.STATUS, path)
        if reply is None:
            return say({"running": False, "socket": path}, "ufm serve: no server runs for this installation")
        return say(dict(reply, running=True), f"ufm serve: running ({described(reply)})")
    if args.stop:
        reply = client.ask(client.QUIT, path)
        if reply is None:
            return say({"running": False, "stopped": False, "socket": path},
                       "ufm serve: no server runs for this installation")
        deadline = time.monotonic() + 10
        while not reply["busy"] and time.monotonic() < deadline and os.path.exists(path):
            time.sleep(0.05)
        return say(dict(reply, running=reply["busy"], stopped=True),
                   f"ufm serve: the server (pid {reply['pid']}) "
                   + ("stops after the command it is running" if reply["busy"] else "stopped"))
    reply = client.ask(client.STATUS, path)
    if reply is not None:
        return say(dict(reply, running=True, started_now=False), f"ufm serve: already running ({described(reply)})")
    if args.background:
        try:
            reply = server.start_background(path, args.idle_minutes)
        except RuntimeError as exc:
            return _serve_failed(str(exc))
        return say(dict(reply, running=True, started_now=True),
                   f"ufm serve: started (pid {reply['pid']}); `ufm solve`, `landscape` and `analyze` now run in it. It "
                   f"stops after {args.idle_minutes:g} idle minutes or with `ufm serve --stop`; log "
                   f"{server.log_path(path)}")

    def announce(srv):
        if args.json:
            emit(json.dumps(dict(srv.status(), running=True, started_now=True)))
        sys.stderr.write(f"ufm serve: listening (pid {os.getpid()}); `ufm solve`, `landscape` and `analyze` now run "
                         f"here. Ctrl-C stops it; so do `ufm serve --stop` and {args.idle_minutes:g} idle minutes\n")
        sys.stderr.flush()

    try:
        server.run_foreground(path, args.idle_minutes, announce)
    except server.AlreadyRunning:
        return say({"running": True, "started_now": False, "socket": path},
                   "ufm serve: a server for this installation is starting or running already")
    return EXIT_OK


def _serve_failed(text: str) -> int:
    """Not the user's input but this machine: one line and exit 1."""
    sys.stderr.write(f"ufm serve: error: {text}\n")
    return 1
