"""Sweep grids: lists and ranges of K, d, n, λ, losses, loss parameters, bias modes and seeds, from flags or TOML.

A value spec is a comma list (``3,4,10``), a log range ``log:START:STOP:NUM`` (NUM points, both ends included),
a linear range ``lin:START:STOP:NUM``, or an integer range ``range:START:STOP[:STEP]`` (STOP included). In TOML a
key may hold a scalar, an array or such a string. The grid is the Cartesian product of the axes, except that each
loss takes only its own parameters (``--loss ce,fl --gamma 1,2`` gives ce, fl(γ=1), fl(γ=2)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
from typing import Any

import numpy as np

from .errors import UFMInputError

#: axis name → (flag, type, default values)
AXES: dict[str, tuple[str, type, tuple]] = {
    "K": ("-K", int, (10,)),
    "d": ("-d", int, (64,)),
    "n": ("-n", int, (100,)),
    "minority": ("--minority", int, (0,)),
    "ratio": ("--ratio", float, (1.0,)),
    "lam": ("--lam", float, (5e-4,)),
    "lam_W": ("--lam-w", float, ()),
    "lam_H": ("--lam-h", float, ()),
    "lam_b": ("--lam-b", float, ()),
    "loss": ("--loss", str, ("ce",)),
    "gamma": ("--gamma", float, (2.0,)),
    "alpha": ("--alpha", float, (0.1,)),
    "kappa": ("--kappa", float, (1.0,)),
    "beta": ("--beta", float, (1.0,)),
    "bias": ("--bias", str, ("regularized",)),
    "seed": ("--seed", int, (0,)),
    # the deep UFM (docs/theory.md §12): depth 1 is eq. (7), and its points are exactly those of a sweep without them
    "depth": ("--depth", int, (1,)),
    "activation": ("--activation", str, ("linear",)),
    "widths": ("--widths", int, ()),
}
#: the axes that only a point of depth ≥ 2 carries (a depth-1 point is eq. (7): no activation, no hidden layer)
DEEP_AXES = ("depth", "activation", "widths")
LOSS_PARAMS = {"ce": (), "fl": ("gamma",), "ls": ("alpha",), "mse": ("kappa", "beta")}
BIAS_CHOICES = ("regularized", "free", "none")
#: TOML / Python spellings of the axes (flags use dashes and lower case)
ALIASES = {"lam_w": "lam_W", "lam_h": "lam_H", "seeds": "seed", "losses": "loss", "activations": "activation",
           "width": "widths", "depths": "depth"}


def _cast(flag, kind, token):
    # TOML booleans are ints to Python; `K = true` is a typo, not K = 1
    if isinstance(token, bool):
        raise UFMInputError(flag, token, f"must be {'an integer' if kind is int else 'a number'}, not a boolean")
    try:
        if kind is int:
            v = float(token)
            if not v.is_integer():
                raise ValueError
            return int(v)
        return kind(token)
    except (TypeError, ValueError):
        raise UFMInputError(flag, token, f"must be {'an integer' if kind is int else 'a number'}") from None


#: the most values one axis and the most points one grid may have: beyond them the grid itself (its point dicts and
#: keys) would take gigabytes and the sweep days, so the mistake is refused before anything is built
MAX_AXIS_VALUES = 10**6
MAX_POINTS = 10**6


def _check_length(flag, spec, length):
    if length > MAX_AXIS_VALUES:
        raise UFMInputError(flag, spec, f"gives {length:,} values; at most {MAX_AXIS_VALUES:,} per axis")
    if length < 1:
        raise UFMInputError(flag, spec, "gives no values (is STOP before START?)")


def parse_values(flag: str, spec: Any, kind: type) -> tuple:
    """One axis's values from a spec string, a scalar or a list (see module docstring)."""
    if isinstance(spec, (list, tuple)):
        values = tuple(_cast(flag, kind, v) if kind is not str else str(v) for v in spec)
    elif isinstance(spec, str) and kind is not str and spec.split(":", 1)[0] in ("log", "lin", "range"):
        head, *parts = spec.split(":")
        try:
            if head == "range":
                start, stop, *step = (int(p) for p in parts)
                if len(step) > 1:
                    raise ValueError
                span = range(start, stop + 1, step[0] if step else 1)
                _check_length(flag, spec, len(span))        # len() of a range is O(1): refused before it is built
                values = tuple(span)
            else:
                start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
                if len(parts) != 3 or num < 1:
                    raise ValueError
                _check_length(flag, spec, num)
                if head == "log":
                    if start <= 0 or stop <= 0:
                        raise UFMInputError(flag, spec, "a log range needs START > 0 and STOP > 0")
                    values = tuple(float(v) for v in np.geomspace(start, stop, num))
                else:
                    values = tuple(float(v) for v in np.linspace(start, stop, num))
            values = tuple(_cast(flag, kind, v) for v in values)
        except UFMInputError:
            raise
        except (ValueError, IndexError):
            raise UFMInputError(flag, spec, "use log:START:STOP:NUM, lin:START:STOP:NUM or range:START:STOP[:STEP]") from None
    elif isinstance(spec, str):
        tokens = [t.strip() for t in spec.split(",")]
        if any(t == "" for t in tokens):
            raise UFMInputError(flag, spec, "the list is empty or has an empty item; give values like 3,4,10")
        values = tuple(tokens) if kind is str else tuple(_cast(flag, kind, t) for t in tokens)
    else:
        values = (_cast(flag, kind, spec) if kind is not str else str(spec),)
    if not values or any(v == "" for v in values):
        raise UFMInputError(flag, spec, "the list is empty; give at least one value")
    return values


#: the most starts per inner width of the low-rank search: they all run at once in one batch (docs/theory.md §12.4)
MAX_LOW_RANK_STARTS = 64


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """What is computed at every point (part of each point's identity in the store)."""

    solver: str = "auto"
    gtol: float = 1e-9
    max_steps: int = 10000
    init_scale: float = 0.1
    analyze: bool = False
    census: int = 0
    hessian: str = "auto"
    rtol: float = 1e-6
    #: starts per inner width of the deep linear low-rank search (docs/theory.md §12.4) at depth ≥ 2; 0 skips it.
    #: Not part of a depth-1 point's key, nor of any key at its default (keys of stores from before depth resume)
    low_rank_starts: int = 4

    def validate(self) -> None:
        """Check every option with the library's own validators (the CLI and ``run_sweep`` give the same errors)."""
        from .critical import HESSIAN_METHODS
        from .methods import SOLVER_NAMES, as_solver
        from .solvers import _validate_run_args

        if not isinstance(self.solver, str):
            # a row stores the solver by name; an object has none that a rerun could match
            raise UFMInputError("--solver", self.solver, f"use one of {', '.join(SOLVER_NAMES)}")
        as_solver(self.solver)
        _validate_run_args(0, self.init_scale, self.gtol, self.max_steps, "float64", rtol=self.rtol)
        if not isinstance(self.analyze, bool):
            raise UFMInputError("--analyze", self.analyze, "must be true or false")
        if isinstance(self.census, bool) or not isinstance(self.census, int) or self.census < 0:
            raise UFMInputError("--census", self.census, "must be an integer ≥ 0 (0: no census)")
        if self.hessian not in HESSIAN_METHODS:
            raise UFMInputError("--hessian", self.hessian, f"use one of {', '.join(HESSIAN_METHODS)}")
        if isinstance(self.low_rank_starts, bool) or not isinstance(self.low_rank_starts, int) \
                or not 0 <= self.low_rank_starts <= MAX_LOW_RANK_STARTS:
            raise UFMInputError("--low-rank-starts", self.low_rank_starts,
                                f"must be an integer in [0, {MAX_LOW_RANK_STARTS}] (0: no low-rank search)")

    def hessian_for(self, num_params: int):
        """The Hessian path analysis takes at this size (None when nothing is analysed)."""
        if not (self.analyze or self.census):
            return None
        if self.hessian != "auto":
            return self.hessian
        from .hessian import DENSE_MAX_PARAMS

        return "dense" if num_params <= DENSE_MAX_PARAMS else "lanczos"


@dataclasses.dataclass(frozen=True)
class Grid:
    axes: tuple          # ((name, values), …)
    options: SweepOptions

    def size(self) -> int:
        """The number of points, from the axis lengths (nothing is built)."""
        ax = dict(self.axes)
        base = math.prod(len(ax.get(k) or (None,)) for k in _BASE_NAMES)
        return sum(base * math.prod(len(ax[p]) for p in LOSS_PARAMS.get(str(loss).lower(), ())) for loss in ax["loss"])

    def points(self) -> list[dict]:
        """The grid's points, in a deterministic order, each a dict of resolved inputs."""
        ax = dict(self.axes)
        out = []
        base_names = list(_BASE_NAMES)
        base_axes = [ax.get(k) or (None,) for k in base_names]
        for loss in ax["loss"]:
            key = loss.lower() if loss.lower() in LOSS_PARAMS else loss
            params = LOSS_PARAMS.get(key, ())
            for combo in itertools.product(*base_axes, *(ax[p] for p in params)):
                out.append(_resolve(dict(zip(base_names, combo[: len(base_names)])), key,
                                    dict(zip(params, combo[len(base_names):]))))
        return out

    def validate(self) -> None:
        """Everything that can be wrong with the grid, found before any point is computed: its size (from the axis
        lengths, before the points are built), the options, every axis value (each builds a Problem once), and the
        memory of the largest shape (and of the largest one on the dense Hessian path)."""
        n = self.size()
        if n > MAX_POINTS:
            raise UFMInputError("grid", f"{n:,} points", f"at most {MAX_POINTS:,} per sweep; split it into several "
                                "sweeps (they can share one --store)")
        self.options.validate()
        ax = dict(self.axes)
        for v in ax["bias"]:
            if v not in BIAS_CHOICES:
                raise UFMInputError("--bias", v, f"use one of {', '.join(BIAS_CHOICES)}")
        _check_imbalance(ax)
        _check_depth_axes(ax, self.options)
        from .solvers import _validate_run_args

        o = self.options
        for seed in ax["seed"]:
            _validate_run_args(seed, o.init_scale, o.gtol, o.max_steps, "float64", rtol=o.rtol)
        for point in self._cover():
            problem_of(point)
        self._check_memory()

    def _cover(self):
        """Points that between them hold every axis value and every loss with each of its parameter combinations
        (and, for a user loss, every K and n it is traced at): a Problem validates each input on its own, so these
        find every bad value without building all the points. With depths ≥ 2 the same cover is repeated at each
        (depth, activation, width) pair, since a deep problem checks more (every λ > 0, the loss, the widths)."""
        ax = dict(self.axes)
        deep = [{"depth": L, "activation": a, "widths": w} for L in ax.get("depth") or (1,) if L > 1
                for a in ax.get("activation") or ("linear",) for w in ax.get("widths") or (None,)]
        for at in [{}] + deep:
            yield from self._cover_at(ax, at)

    def _cover_at(self, ax, at: dict):
        first = {k: (ax.get(k) or (None,))[0] for k in _BASE_NAMES}
        first.update(at)
        for loss in ax["loss"]:
            key = str(loss).lower() if str(loss).lower() in LOSS_PARAMS else loss
            params = LOSS_PARAMS.get(key, ())
            sizes = itertools.product(ax["K"], ax["n"]) if key not in LOSS_PARAMS else [(first["K"], first["n"])]
            for K, n in sizes:
                for combo in itertools.product(*(ax[p] for p in params)):
                    yield _resolve(dict(first, K=K, n=n), key, dict(zip(params, combo)))
        key = str(ax["loss"][0]).lower() if str(ax["loss"][0]).lower() in LOSS_PARAMS else ax["loss"][0]
        params = {p: ax[p][0] for p in LOSS_PARAMS.get(key, ())}
        for name in _BASE_NAMES:
            if name in at:
                continue
            for v in (ax.get(name) or (None,))[1:]:
                yield _resolve(dict(first, **{name: v}), key, params)

    def _check_memory(self):
        from .resources import check_fits

        ax = dict(self.axes)
        bias = any(b != "none" for b in ax["bias"])
        o = self.options
        shapes = {(K, d, n): K * d + d * K * n + (K if bias else 0)
                  for K, d, n in itertools.product(ax["K"], ax["d"], ax["n"])}
        worst = [max(shapes, key=shapes.get)]
        if o.analyze or o.census:
            # the dense Hessian is O(P²): its largest case may be a smaller shape than the largest one overall
            dense = [s for s, p in shapes.items() if o.hessian_for(p) == "dense"]
            if dense:
                worst.append(max(dense, key=shapes.get))
        for K, d, n in worst:
            from .problem import Problem

            problem = Problem.create(K, d, n, bias=bias)
            check_fits(problem, solver=o.solver, max_steps=o.max_steps, hessian=o.hessian_for(problem.num_params))
        L = max(ax.get("depth") or (1,))
        if L > 1:
            # the deep model's largest shape: the deepest stack at the widest hidden width and the largest K, d, n
            from .deep import deep_problem

            width = max(ax.get("widths") or (max(ax["d"]),))
            problem = deep_problem(max(ax["K"]), max(ax["d"]), max(ax["n"]), depth=L, widths=width, bias=bias)
            check_fits(problem, solver=o.solver, max_steps=o.max_steps)


_BASE_NAMES = ("K", "d", "n", "minority", "ratio", "lam", "lam_W", "lam_H", "lam_b", "bias", "seed", "depth",
               "activation", "widths")


def _resolve(base: dict, loss: str, extra: dict) -> dict:
    """One point's resolved inputs from its base axis values, its loss and that loss's parameters."""
    lam = base["lam"]
    point = {"K": base["K"], "d": base["d"], "n": base["n"], "minority": base["minority"], "ratio": base["ratio"],
             "loss": loss,
             "gamma": extra.get("gamma"), "alpha": extra.get("alpha"),
             "kappa": extra.get("kappa"), "beta": extra.get("beta"),
             "lam_W": lam if base["lam_W"] is None else base["lam_W"],
             "lam_H": lam if base["lam_H"] is None else base["lam_H"],
             "lam_b": lam if base["lam_b"] is None else base["lam_b"],
             "bias": base["bias"], "seed": base["seed"]}
    depth = base.get("depth") or 1
    if depth > 1:
        # only a deep point has them: a depth-1 point stays the dict (and the key) a sweep without depth gives
        point.update(depth=depth, activation=base.get("activation") or "linear", widths=base.get("widths"))
    if point["bias"] == "free":
        point["lam_b"] = 0.0
    elif point["bias"] == "none":
        point["lam_b"] = None
    elif point["lam_b"] == 0.0:
        point["bias"] = "free"
    return point


def class_sizes(point: dict):
    """The class sizes of a point: n for the first K − minority classes (the majority), n / ratio for the last
    ``minority`` classes (Fang et al. 2021's two-group imbalance, R = n_A / n_B). n / ratio must be an integer."""
    K, n, m, R = point["K"], point["n"], point.get("minority") or 0, point.get("ratio", 1.0)
    if m == 0:
        return n
    n_minor = n / R
    if not (abs(n_minor - round(n_minor)) <= 1e-9 * n_minor and round(n_minor) >= 1):
        raise UFMInputError("--ratio", R, f"n / R = {n} / {R:g} = {n_minor:.6g} is not a class size (an integer ≥ 1); "
                            "choose ratios that divide n")
    return (n,) * (K - m) + (int(round(n_minor)),) * m


def _check_imbalance(ax: dict) -> None:
    """--minority and --ratio against every K and n they meet (each is a handful of values)."""
    minorities, ratios = ax.get("minority") or (0,), ax.get("ratio") or (1.0,)
    for R in ratios:
        if not (math.isfinite(R) and R > 0):
            raise UFMInputError("--ratio", R, "the majority/minority size ratio R must be a finite number > 0")
    if any(R != 1.0 for R in ratios) and 0 in minorities:
        raise UFMInputError("--minority", 0, "with --ratio other than 1 every --minority value must be ≥ 1 (the number "
                            "of minority classes); include ratio 1 for balanced points")
    for K, m in itertools.product(ax["K"], minorities):
        if not 0 <= m <= K - 1:
            raise UFMInputError("--minority", m, f"the number of minority classes must lie in [0, K − 1] = [0, {K - 1}]")
    for K, n, m, R in itertools.product(ax["K"][:1], ax["n"], [max(minorities)], ratios):
        class_sizes({"K": K, "n": n, "minority": m, "ratio": R})


def _check_depth_axes(ax: dict, options: "SweepOptions") -> None:
    """--depth, --activation and --widths against each other, the losses and the options: every value is checked
    here (a depth-1 point drops activation and widths, so building the points would not see them all)."""
    from .deep import ACTIVATIONS, MAX_DEPTH

    depths, acts, widths = ax.get("depth") or (1,), ax.get("activation") or ("linear",), ax.get("widths") or ()
    for L in depths:
        if not 1 <= L <= MAX_DEPTH:
            raise UFMInputError("--depth", L, f"must be an integer in [1, {MAX_DEPTH}] (1: eq. (7))")
    for a in acts:
        if a not in ACTIVATIONS:
            raise UFMInputError("--activation", a, f"use one of {', '.join(ACTIVATIONS)}")
    for w in widths:
        if w < 1:
            raise UFMInputError("--widths", w, "hidden widths must be integers ≥ 1 (one value sets every hidden width)")
    if max(depths) == 1:
        for flag, name, given, default in (("--activation", "activation", acts, ("linear",)),
                                           ("--widths", "widths", widths, ())):
            if tuple(given) != default:
                raise UFMInputError(flag, ",".join(map(str, given)), "applies only with --depth ≥ 2 (depth 1 is "
                                    "eq. (7), which has no hidden layer); add depths ≥ 2 or drop it")
        return
    for loss in ax["loss"]:
        if str(loss).lower() not in LOSS_PARAMS:
            raise UFMInputError("--loss", loss, "depth ≥ 2 supports the built-in losses ce, fl, ls, mse")
    if options.analyze or options.census:
        raise UFMInputError("--analyze" if options.analyze else "--census", "with --depth ≥ 2",
                            "the Hessian analysis of a sweep point is for depth 1 only; drop it or keep --depth 1")


def problem_of(point: dict):
    from .problem import Problem

    if (point.get("depth") or 1) > 1:
        from .deep import deep_problem

        return deep_problem(point["K"], point["d"], class_sizes(point), depth=point["depth"],
                            activation=point["activation"], widths=point.get("widths"), lam_W=point["lam_W"],
                            lam_H=point["lam_H"], lam_b=point["lam_b"] if point["bias"] != "none" else None,
                            bias=point["bias"] != "none", loss=point["loss"], gamma=point["gamma"],
                            alpha=point["alpha"], kappa=point["kappa"], beta=point["beta"])
    return Problem.create(point["K"], point["d"], class_sizes(point), lam_W=point["lam_W"], lam_H=point["lam_H"],
                          lam_b=point["lam_b"] if point["bias"] != "none" else None, bias=point["bias"] != "none",
                          loss=point["loss"], gamma=point["gamma"], alpha=point["alpha"], kappa=point["kappa"],
                          beta=point["beta"])


def point_key(point: dict, options: SweepOptions) -> str:
    """Content hash of a point and what is computed at it: the store's primary key."""
    if not point.get("minority"):
        # balanced: the key a store written before class sizes existed gave it, so such stores resume
        point = {k: v for k, v in point.items() if k not in ("minority", "ratio")}
    deep = (point.get("depth") or 1) > 1
    blob = json.dumps({"point": point, "options": options_key(options, deep)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def options_key(options: SweepOptions, deep: bool = True) -> dict:
    """The options as they enter a key: ``low_rank_starts`` only for a deep point and away from its default, so a
    depth-1 point (and every point of a store written before depth existed) keeps its key."""
    out = dataclasses.asdict(options)
    if not deep or out["low_rank_starts"] == SweepOptions.low_rank_starts:
        del out["low_rank_starts"]
    return out


def load_toml(path) -> dict:
    from .paths import check_input_file

    path = check_input_file("--config", path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except UnicodeDecodeError:
        raise UFMInputError("--config", str(path), "not UTF-8 text (a TOML file is UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UFMInputError("--config", str(path), f"not valid TOML ({exc})") from None
    except OSError as exc:
        raise UFMInputError("--config", str(path), f"cannot read it ({exc.strerror or type(exc).__name__})") from None


#: TOML keys that are not axes or options: how the sweep runs, each with the type it must have
RUN_KEYS = {"store": "a file name", "workers": "an integer ≥ 1 or \"auto\"", "executor": "a string",
            "address": "a string", "export": "a file name or a list of them", "quiet": "true or false",
            "json": "true or false", "verbose": "true or false", "batch": "\"auto\", \"on\" or \"off\""}


def _check_run_key(k, v):
    ok = {"store": isinstance(v, str) and v.strip() != "",
          "workers": v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
          "executor": isinstance(v, str), "address": isinstance(v, str), "batch": v in ("auto", "on", "off"),
          "export": isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
          }.get(k, isinstance(v, bool))
    if not ok:
        raise UFMInputError(f"--config key {k!r}", v, f"must be {RUN_KEYS[k]}")


#: which loss takes each loss parameter (for the message when none in the grid does)
_PARAM_OWNER = {p: loss for loss, params in LOSS_PARAMS.items() for p in params}


def _check_given(merged: dict, source: dict, axes: dict) -> None:
    """A parameter given for points that cannot take it is a wrong experiment, not a default to ignore. A file's
    value is exempt when the flags replaced the axis it depends on (``-K 3 --loss ce`` over a file with ``alpha``
    narrows the study; it does not contradict it)."""
    losses = [str(v).lower() for v in axes["loss"]]
    for p, owner in _PARAM_OWNER.items():
        if p not in merged or any(p in LOSS_PARAMS.get(loss, ()) for loss in losses):
            continue
        if source[p] == "file" and source.get("loss") == "flag":
            continue
        raise UFMInputError(AXES[p][0], merged[p], f"no loss in the grid takes it (--loss {','.join(losses)}); "
                            f"it is a parameter of {owner}")
    if "lam_b" in merged:
        modes, lam_b = set(axes["bias"]), axes["lam_b"]
        if "regularized" in modes or ("free" in modes and all(v == 0 for v in lam_b)):
            return
        if source["lam_b"] == "file" and source.get("bias") == "flag":
            return
        raise UFMInputError("--lam-b", merged["lam_b"], f"--bias {','.join(axes['bias'])} takes no λ_b (a free bias is "
                            "unregularised, none has no bias); drop --lam-b or add --bias regularized")


def build_grid(file_values: dict | None = None, flag_values: dict | None = None) -> Grid:
    """Merge TOML values and flags (flags win) into a Grid. Keys are axis names or SweepOptions fields."""
    merged, source = {}, {}
    for name, values in (("file", file_values), ("flag", flag_values)):
        for k, v in (values or {}).items():
            if v is None:
                continue
            merged[ALIASES.get(k, k)] = v
            source[ALIASES.get(k, k)] = name
    option_fields = {f.name: f for f in dataclasses.fields(SweepOptions)}
    axes, options = [], {}
    for k, v in merged.items():
        if k in AXES:
            continue
        if k in option_fields:
            options[k] = v
        elif k in RUN_KEYS:
            _check_run_key(k, v)
        else:
            raise UFMInputError(f"--config key {k!r}", v, f"use the axes {', '.join(AXES)}, the options "
                                f"{', '.join(option_fields)} or {', '.join(RUN_KEYS)}")
    for name, (flag, kind, default) in AXES.items():
        spec = merged.get(name)
        values = default if spec is None else parse_values(flag, spec, kind)
        axes.append((name, values))
    _check_given(merged, source, dict(axes))
    return Grid(tuple(axes), SweepOptions(**options))
