"""The deep unconstrained-features model: L weight matrices after the free features (docs/theory.md §12).

Convention (pinned here once; deep_theory.py, deep_metrics.py and the tests follow it):

    f(W_1, …, W_L, H, b) = (1/N) Σ_{k,i} L(W_L σ(W_{L−1} ⋯ σ(W_1 h_{k,i})) + b, y_k)
                           + Σ_{l=1..L} λ_l/2 ‖W_l‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²,

the loss averaged over N = Σ_k n_k and the penalties not divided by N, as in eq. (7). σ is the identity (deep
linear) or ReLU, applied after every W_l except the last; H (d×N, class-major columns) is never passed through σ.
W_l is d_l × d_{l−1} with d_0 = d, d_L = K and hidden widths d_1, …, d_{L−1} (default d each). L = 1 is eq. (7)
with W = W_1, λ_W = λ_1: ``deep_problem(depth=1, …)`` returns today's :class:`ufm.Problem` itself, so a depth-1
run is eq. (7)'s code path, unchanged.

The flat parameter vector is [vec W_1, …, vec W_L, vec H, b] cut by static slices (as model.py does for (7)).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .errors import UFMInputError
from .losses import Loss
from .problem import Problem, Reg, class_counts

ACTIVATIONS = ("linear", "relu")
#: depth beyond which a run is refused: the penalty's exponent 2/(L+1) and the compile time both degrade, and the
#: literature's questions (docs/theory.md §12) are about L ≤ 10
MAX_DEPTH = 32


class DeepReg(NamedTuple):
    """The traced λ's of the deep objective: ``lams`` = (λ_1, …, λ_L) (an array when traced), λ_H, λ_b."""

    lams: tuple
    lam_H: float
    lam_b: float


class DeepParams(NamedTuple):
    """A point of the deep UFM: ``Ws`` = (W_1, …, W_L), H (d×N, class-major), b (K,) or None."""

    Ws: tuple
    H: jax.Array
    b: Optional[jax.Array]


@dataclasses.dataclass(frozen=True)
class DeepShape:
    """What a compiled deep objective depends on (all hashable): sizes, widths, activation, bias presence, loss."""

    K: int
    d: int
    n: "int | tuple[int, ...]"
    has_bias: bool
    loss: Loss
    widths: tuple          # hidden widths d_1, …, d_{L−1}
    activation: str

    @property
    def depth(self) -> int:
        return len(self.widths) + 1

    @property
    def dims(self) -> tuple:
        """(d_0, …, d_L) = (d, d_1, …, d_{L−1}, K): W_l is dims[l] × dims[l−1]."""
        return (self.d, *self.widths, self.K)

    @property
    def counts(self) -> tuple:
        return class_counts(self.K, self.n)

    @property
    def N(self) -> int:
        return sum(self.counts)

    @property
    def sizes(self) -> tuple:
        """Entries of W_1, …, W_L, H and b in the flat vector."""
        dims = self.dims
        return tuple(dims[l] * dims[l - 1] for l in range(1, len(dims))) + (self.d * self.N,
                                                                             self.K if self.has_bias else 0)

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def penalty_blocks(self, reg: DeepReg):
        """((start, stop), λ) of every penalised block of the flat vector: the solvers' scale-free stationarity
        test (methods.stationarity_scale) splits the gradient into penalty and data parts with it."""
        out, lo = [], 0
        lams = [reg.lams[l] for l in range(self.depth)] + [reg.lam_H, reg.lam_b]
        for size, lam in zip(self.sizes, lams):
            out.append(((lo, lo + size), lam))
            lo += size
        return out

    def min_lam(self, reg: DeepReg):
        """The smallest of λ_1, …, λ_L, λ_H (the penalty gradient at unit norm, for the scale-free test)."""
        return jnp.minimum(jnp.min(jnp.asarray(reg.lams)), reg.lam_H)

    @staticmethod
    def flat_objective(x, reg: DeepReg, shape: "DeepShape"):
        """f of the deep UFM on the flat vector (methods._derivatives picks this up in place of eq. (7)'s)."""
        return deep_objective(unflatten(x, shape), reg, shape)


def labels_of(shape: DeepShape):
    return jnp.asarray(np.repeat(np.arange(shape.K), shape.counts))


def _act(activation: str, xp=jnp):
    return (lambda a: a) if activation == "linear" else (lambda a: xp.maximum(a, 0.0))


def features(params: DeepParams, activation: str, xp=jnp) -> list:
    """[h⁽⁰⁾, …, h⁽ᴸ⁻¹⁾]: the features entering each W_l, h⁽⁰⁾ = H and h⁽ˡ⁾ = σ(W_l h⁽ˡ⁻¹⁾) (each d_l × N)."""
    sigma = _act(activation, xp)
    out = [params.H]
    for W in params.Ws[:-1]:
        out.append(sigma(W @ out[-1]))
    return out


def deep_logits(params: DeepParams, activation: str):
    """(N, K) rows z_{k,i} = W_L σ(⋯σ(W_1 h_{k,i})) + b."""
    Z = (params.Ws[-1] @ features(params, activation)[-1]).T
    return Z if params.b is None else Z + params.b[None, :]


def deep_objective(params: DeepParams, reg: DeepReg, shape: DeepShape):
    """f of the deep UFM (module docstring; docs/theory.md §12.1). At L = 1 the operations are those of eq. (7)
    in model.objective, in the same order."""
    f = jnp.mean(shape.loss(deep_logits(params, shape.activation), labels_of(shape)))
    for l, W in enumerate(params.Ws):
        f = f + 0.5 * reg.lams[l] * jnp.sum(W**2)
    f = f + 0.5 * reg.lam_H * jnp.sum(params.H**2)
    if params.b is not None:
        f = f + 0.5 * reg.lam_b * jnp.sum(params.b**2)
    return f


def unflatten(x, shape: DeepShape) -> DeepParams:
    """Static slices of the flat vector back to (W_1, …, W_L, H, b)."""
    dims, sizes = shape.dims, shape.sizes
    Ws, lo = [], 0
    for l in range(1, len(dims)):
        Ws.append(x[lo:lo + sizes[l - 1]].reshape(dims[l], dims[l - 1]))
        lo += sizes[l - 1]
    H = x[lo:lo + sizes[-2]].reshape(shape.d, shape.N)
    lo += sizes[-2]
    b = x[lo:] if sizes[-1] else None
    return DeepParams(tuple(Ws), H, b)


def flatten(params: DeepParams, xp=jnp):
    parts = [W.reshape(-1) for W in params.Ws] + [params.H.reshape(-1)]
    if params.b is not None:
        parts.append(params.b.reshape(-1))
    return xp.concatenate(parts)


def _number_list(flag, value, cast, ok, allowed):
    """A comma list, one number or a sequence → a tuple of ``cast`` numbers each passing ``ok``; else one-line
    UFMInputError naming ``flag``."""
    # the message shows what was given, as it was typed (a comma list), never a Python list or tuple
    shown = value
    if isinstance(value, (list, tuple, np.ndarray, int, float, np.integer, np.floating)):
        shown = ",".join(map(str, np.atleast_1d(value).tolist()))
    if isinstance(value, str):
        value = value.split(",")
    elif isinstance(value, (int, float, np.integer, np.floating)):
        value = [value]
    try:
        if any(isinstance(v, bool) for v in value):
            raise ValueError
        out = tuple(cast(v) for v in value)
        if cast is int and any(not isinstance(v, str) and int(v) != v for v in value):
            raise ValueError
    except (TypeError, ValueError):
        raise UFMInputError(flag, shown, allowed) from None
    if not out or not all(ok(v) for v in out):
        raise UFMInputError(flag, shown, allowed)
    return out


def _int_list(flag, value, low):
    return _number_list(flag, value, int, lambda v: v >= low, f"must be integers ≥ {low} (comma-separated)")


def _float_list(flag, value):
    return _number_list(flag, value, float, lambda v: np.isfinite(v) and v >= 0,
                        "must be finite numbers ≥ 0 (comma-separated)")


@dataclasses.dataclass(frozen=True)
class DeepProblem:
    """One deep UFM instance (module docstring): depth L ≥ 2, activation, hidden widths, λ_1…λ_L, and the rest
    of eq. (7)'s inputs (K, d, n or class sizes, λ_H, λ_b, bias mode, loss) checked exactly as :class:`Problem`
    checks them. Build it with :func:`deep_problem`, which returns a plain Problem at depth 1."""

    base: Problem                 # K, d, n, λ_H, λ_b, bias, loss (its λ_W is λ_L)
    lams: tuple                   # λ_1, …, λ_L
    widths: tuple                 # d_1, …, d_{L−1}
    activation: str = "linear"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise UFMInputError("--activation", self.activation, f"use one of {', '.join(ACTIVATIONS)}")
        L = len(self.lams)
        if not 2 <= L <= MAX_DEPTH or len(self.widths) != L - 1:
            raise UFMInputError("--depth", L, f"must be an integer in [2, {MAX_DEPTH}] with L − 1 hidden widths")
        if self.base.loss.name == "user":
            raise UFMInputError("--loss", self.base.loss.describe(), "depth ≥ 2 supports the built-in losses ce, fl, ls, mse")
        zero = [l + 1 for l, v in enumerate(self.lams) if v == 0]
        if zero and (len(zero) < L or self.base.lam_H > 0):
            raise UFMInputError("--lam-layers", ",".join(map(str, self.lams)),
                                "with some but not all of λ_1…λ_L, λ_H zero the deep objective has no minimiser "
                                "(rescaling the factors lowers it forever; docs/theory.md §12.1); give all > 0")

    # --- the vocabulary the solvers, the memory estimate and the reports use (as Problem's) ---------------------
    K = property(lambda self: self.base.K)
    d = property(lambda self: self.base.d)
    n = property(lambda self: self.base.n)
    N = property(lambda self: self.base.N)
    counts = property(lambda self: self.base.counts)
    labels = property(lambda self: self.base.labels)
    balanced = property(lambda self: self.base.balanced)
    bias = property(lambda self: self.base.bias)
    bias_mode = property(lambda self: self.base.bias_mode)
    loss = property(lambda self: self.base.loss)
    lam_H = property(lambda self: self.base.lam_H)
    lam_b = property(lambda self: self.base.lam_b)

    @property
    def depth(self) -> int:
        return len(self.lams)

    @property
    def dims(self) -> tuple:
        return (self.d, *self.widths, self.K)

    @property
    def shape(self) -> DeepShape:
        return DeepShape(self.K, self.d, self.n, self.bias, self.loss, tuple(self.widths), self.activation)

    @property
    def reg(self) -> DeepReg:
        return DeepReg(tuple(self.lams), self.lam_H, self.lam_b if self.bias else 0.0)

    @property
    def num_params(self) -> int:
        return self.shape.num_params

    @property
    def all_penalised(self) -> bool:
        """Every factor has λ > 0 (the solvers' scale-free stationarity test needs it)."""
        return min(self.lams) > 0 and self.lam_H > 0

    def replace(self, **changes) -> "DeepProblem":
        return dataclasses.replace(self, **changes)

    def config(self) -> dict:
        """Every input, resolved, as plain JSON-able values (eq. (7)'s keys, λ_W = λ_L, plus the deep ones)."""
        return {**self.base.config(), "depth": self.depth, "activation": self.activation,
                "widths": list(self.widths), "lam_layers": list(self.lams)}

    # --- points ---------------------------------------------------------------------------------------------------
    def init_params(self, seed: int = 0, scale: float = 0.1, dtype="float64") -> DeepParams:
        """Seeded i.i.d. N(0, scale²) entries, drawn W_1, …, W_L, H, b in turn from numpy's PCG64."""
        rng = np.random.default_rng(seed)
        dims = self.dims
        with np.errstate(over="ignore"):
            Ws = tuple((scale * rng.standard_normal((dims[l], dims[l - 1]))).astype(dtype)
                       for l in range(1, len(dims)))
            H = (scale * rng.standard_normal((self.d, self.N))).astype(dtype)
            b = (scale * rng.standard_normal(self.K)).astype(dtype) if self.bias else None
        return DeepParams(Ws, H, b)

    def to_np_params(self, params, dtype="float64") -> DeepParams:
        """Check user-given parameters against the shapes and cast them to numpy."""
        Ws = getattr(params, "Ws", None)
        dims = self.dims
        if Ws is None or len(Ws) != self.depth:
            raise UFMInputError("init", type(params).__name__, f"give DeepParams with {self.depth} weight matrices")
        out = []
        for l, W in enumerate(Ws, start=1):
            if np.shape(W) != (dims[l], dims[l - 1]):
                raise UFMInputError("init", f"W_{l} of shape {np.shape(W)}", f"W_{l} must have shape "
                                    f"{(dims[l], dims[l - 1])}")
            out.append(np.asarray(W, dtype=dtype))
        if np.shape(params.H) != (self.d, self.N):
            raise UFMInputError("init", f"H of shape {np.shape(params.H)}", f"H must have shape {(self.d, self.N)}")
        if self.bias != (params.b is not None) or (self.bias and np.shape(params.b) != (self.K,)):
            raise UFMInputError("init", f"b = {None if params.b is None else np.shape(params.b)}",
                                f"b must be {'of shape (K,)' if self.bias else 'None (no bias)'}")
        b = None if params.b is None else np.asarray(params.b, dtype=dtype)
        return DeepParams(tuple(out), np.asarray(params.H, dtype=dtype), b)

    def flatten(self, params, xp=jnp):
        return flatten(params, xp)

    def unflatten(self, x) -> DeepParams:
        return unflatten(x, self.shape)

    def objective(self, params) -> float:
        """f at ``params`` in float64 (numpy in, float out)."""
        with jax.enable_x64(True):
            p = DeepParams(tuple(jnp.asarray(W, jnp.float64) for W in params.Ws), jnp.asarray(params.H, jnp.float64),
                           None if params.b is None else jnp.asarray(params.b, jnp.float64))
            reg = DeepReg(jnp.asarray(self.lams, jnp.float64), jnp.asarray(self.lam_H, jnp.float64),
                          jnp.asarray(self.reg.lam_b, jnp.float64))
            return float(deep_objective(p, reg, self.shape))


def deep_problem(K=10, d=64, n=100, *, depth: int = 1, activation: str = "linear", widths=None, lam=5e-4,
                 lam_W=None, lam_H=None, lam_b=None, lam_layers=None, bias=True, loss="ce", gamma=None, alpha=None,
                 kappa=None, beta=None):
    """A deep UFM of ``depth`` L from the command line's vocabulary; L = 1 returns :class:`Problem` itself (eq. 7,
    unchanged). ``lam`` sets every λ; ``lam_W`` sets λ_1 = … = λ_L; ``lam_layers`` lists λ_1, …, λ_L; ``widths``
    lists d_1, …, d_{L−1} (one value: all; default d)."""
    depth = _int_list("--depth", depth, 1)
    if len(depth) != 1 or depth[0] > MAX_DEPTH:
        raise UFMInputError("--depth", ",".join(map(str, depth)), f"must be one integer in [1, {MAX_DEPTH}]")
    L = depth[0]
    if activation not in ACTIVATIONS:
        raise UFMInputError("--activation", activation, f"use one of {', '.join(ACTIVATIONS)}")
    base = Problem.create(K, d, n, lam=lam, lam_W=lam_W, lam_H=lam_H, lam_b=lam_b, bias=bias, loss=loss,
                          gamma=gamma, alpha=alpha, kappa=kappa, beta=beta) if L == 1 or lam_layers is None else None
    if L == 1:
        for flag, v in (("--widths", widths), ("--lam-layers", lam_layers)):
            if v is not None:
                raise UFMInputError(flag, v, "applies only with --depth ≥ 2 (depth 1 is eq. (7), which has no "
                                    "hidden layer)")
        return base
    if lam_layers is not None:
        lams = _float_list("--lam-layers", lam_layers)
        if len(lams) == 1:
            lams = lams * L
        if len(lams) != L:
            raise UFMInputError("--lam-layers", ",".join(map(str, lams)), f"gives {len(lams)} values; give one or "
                                f"L = {L} (λ_1, …, λ_L)")
        if lam_W is not None:
            raise UFMInputError("--lam-w", lam_W, "cannot be combined with --lam-layers (it sets every λ_l)")
        try:
            base = Problem.create(K, d, n, lam=lam, lam_W=lams[-1], lam_H=lam_H, lam_b=lam_b, bias=bias, loss=loss,
                                  gamma=gamma, alpha=alpha, kappa=kappa, beta=beta)
        except UFMInputError as e:
            if e.flag != "--lam-w":
                raise
            # the base problem's λ_W is λ_L, taken from --lam-layers: name the flag the user gave, in depth's terms
            raise UFMInputError("--lam-layers", ",".join(map(str, lams)),
                                "with some but not all of λ_1…λ_L, λ_H zero the deep objective has no minimiser "
                                "(rescaling the factors lowers it forever; docs/theory.md §12.1); give all > 0") from None
    else:
        lams = (base.lam_W,) * L
    if widths is None:
        widths = (base.d,) * (L - 1)
    else:
        widths = _int_list("--widths", widths, 1)
        if len(widths) == 1:
            widths = widths * (L - 1)
        if len(widths) != L - 1:
            raise UFMInputError("--widths", ",".join(map(str, widths)), f"gives {len(widths)} widths; give one or "
                                f"L − 1 = {L - 1} (d_1, …, d_{{L−1}})")
    return DeepProblem(base, tuple(float(v) for v in lams), tuple(widths), activation)


def is_deep(problem) -> bool:
    return isinstance(problem, DeepProblem)
