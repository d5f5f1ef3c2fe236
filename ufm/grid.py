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
import tomllib
from typing import Any

import numpy as np

from .errors import UFMInputError

#: axis name → (flag, type, default values)
AXES: dict[str, tuple[str, type, tuple]] = {
    "K": ("-K", int, (10,)),
    "d": ("-d", int, (64,)),
    "n": ("-n", int, (100,)),
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
}
LOSS_PARAMS = {"ce": (), "fl": ("gamma",), "ls": ("alpha",), "mse": ("kappa", "beta")}
BIAS_CHOICES = ("regularized", "free", "none")
#: TOML / Python spellings of the axes (flags use dashes and lower case)
ALIASES = {"lam_w": "lam_W", "lam_h": "lam_H", "seeds": "seed", "losses": "loss"}


def _cast(flag, kind, token):
    try:
        if kind is int:
            v = float(token)
            if not v.is_integer():
                raise ValueError
            return int(v)
        return kind(token)
    except (TypeError, ValueError):
        raise UFMInputError(flag, token, f"must be {'an integer' if kind is int else 'a number'}") from None


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
                values = tuple(range(start, stop + 1, step[0] if step else 1))
            else:
                start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
                if len(parts) != 3 or num < 1:
                    raise ValueError
                if head == "log":
                    if start <= 0 or stop <= 0:
                        raise UFMInputError(flag, spec, "a log range needs START > 0 and STOP > 0")
                    values = tuple(float(v) for v in np.geomspace(start, stop, num))
                else:
                    values = tuple(float(v) for v in np.linspace(start, stop, num))
            values = tuple(_cast(flag, kind, v) for v in values)
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


@dataclasses.dataclass(frozen=True)
class Grid:
    axes: tuple          # ((name, values), …)
    options: SweepOptions

    def points(self) -> list[dict]:
        """The grid's points, in a deterministic order, each a dict of resolved inputs."""
        ax = dict(self.axes)
        out = []
        base_names = ["K", "d", "n", "lam", "lam_W", "lam_H", "lam_b", "bias", "seed"]
        base_axes = [ax.get(k) or (None,) for k in base_names]
        for loss in ax["loss"]:
            key = loss.lower() if loss.lower() in LOSS_PARAMS else loss
            params = LOSS_PARAMS.get(key, ())
            for combo in itertools.product(*base_axes, *(ax[p] for p in params)):
                base = dict(zip(base_names, combo[: len(base_names)]))
                extra = dict(zip(params, combo[len(base_names):]))
                lam = base.pop("lam")
                point = {"K": base["K"], "d": base["d"], "n": base["n"], "loss": key,
                         "gamma": extra.get("gamma"), "alpha": extra.get("alpha"),
                         "kappa": extra.get("kappa"), "beta": extra.get("beta"),
                         "lam_W": lam if base["lam_W"] is None else base["lam_W"],
                         "lam_H": lam if base["lam_H"] is None else base["lam_H"],
                         "lam_b": lam if base["lam_b"] is None else base["lam_b"],
                         "bias": base["bias"], "seed": base["seed"]}
                if point["bias"] == "free":
                    point["lam_b"] = 0.0
                elif point["bias"] == "none":
                    point["lam_b"] = None
                elif point["lam_b"] == 0.0:
                    point["bias"] = "free"
                out.append(point)
        return out

    def validate(self) -> list:
        """Build every point's Problem once, so bad input fails before any computation."""
        for name, values in self.axes:
            if name == "bias":
                for v in values:
                    if v not in BIAS_CHOICES:
                        raise UFMInputError("--bias", v, f"use one of {', '.join(BIAS_CHOICES)}")
        problems = []
        for p in self.points():
            if p["seed"] < 0:
                raise UFMInputError("--seed", p["seed"], "must be an integer ≥ 0")
            problems.append(problem_of(p))
        return problems


def problem_of(point: dict):
    from .problem import Problem

    return Problem.create(point["K"], point["d"], point["n"], lam_W=point["lam_W"], lam_H=point["lam_H"],
                          lam_b=point["lam_b"] if point["bias"] != "none" else None, bias=point["bias"] != "none",
                          loss=point["loss"], gamma=point["gamma"], alpha=point["alpha"], kappa=point["kappa"],
                          beta=point["beta"])


def point_key(point: dict, options: SweepOptions) -> str:
    """Content hash of a point and what is computed at it: the store's primary key."""
    blob = json.dumps({"point": point, "options": dataclasses.asdict(options)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def load_toml(path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UFMInputError("--config", str(path), "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UFMInputError("--config", str(path), f"not valid TOML ({exc})") from None


def build_grid(file_values: dict | None = None, flag_values: dict | None = None) -> Grid:
    """Merge TOML values and flags (flags win) into a Grid. Keys are axis names or SweepOptions fields."""
    merged = {}
    for source in (file_values or {}, flag_values or {}):
        for k, v in source.items():
            if v is None:
                continue
            merged[ALIASES.get(k, k)] = v
    option_fields = {f.name: f for f in dataclasses.fields(SweepOptions)}
    axes, options = [], {}
    for k, v in merged.items():
        if k in AXES:
            continue
        if k in option_fields:
            options[k] = v
        elif k not in ("workers", "store", "executor", "address", "quiet", "export", "json"):
            raise UFMInputError(f"--config key {k!r}", v, f"use the axes {', '.join(AXES)} or the options "
                                f"{', '.join(option_fields)}")
    for name, (flag, kind, default) in AXES.items():
        spec = merged.get(name)
        values = default if spec is None else parse_values(flag, spec, kind)
        axes.append((name, values))
    return Grid(tuple(axes), SweepOptions(**options))
