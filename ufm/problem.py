"""The static description of one UFM instance, eq. (7).

Convention (pinned here once; theory.py, the tests and every report follow it):

    f(W, H, b) = (1/N) Σ_{k=1..K} Σ_{i=1..n_k} L(W h_{k,i} + b, y_k)
                 + λ_W/2 ‖W‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²,          N = Σ_k n_k,

the loss averaged over N, the penalties *not* divided by N. Classes are balanced (n_k = n, N = nK) unless ``n`` is
given as K sizes. Shapes: W is K×d, H is d×N, b is K. Columns of H are class-major: class k's n_k columns follow
class k−1's, and carry label k (docs/theory.md §1.2 warns that the paper's printed H and Y orders disagree; the sum
form is the definition).

Bias modes: ``"regularized"`` (λ_b > 0), ``"free"`` (λ_b = 0, an unregularised bias) and ``"none"`` (no b).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from .errors import UFMInputError
from .losses import Loss, UserLoss, as_loss

BIAS_MODES = ("regularized", "free", "none")


class Reg(NamedTuple):
    """The traced regularisation strengths (λ_W, λ_H, λ_b): a λ grid at one shape compiles once."""

    lam_W: float
    lam_H: float
    lam_b: float


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a compiled objective depends on: sizes, bias presence and the loss (all hashable)."""

    K: int
    d: int
    n: "int | tuple[int, ...]"       # samples per class, or the K class sizes when they differ
    has_bias: bool
    loss: Loss

    @property
    def counts(self) -> tuple[int, ...]:
        return class_counts(self.K, self.n)

    @property
    def N(self) -> int:
        return sum(self.counts)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Number of entries of W, H and b in the flat parameter vector."""
        return self.K * self.d, self.d * self.N, self.K if self.has_bias else 0

    @property
    def num_params(self) -> int:
        return sum(self.sizes)


def _int_at_least(flag, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UFMInputError(flag, value, f"must be an integer ≥ {low}")
    if value < low:
        raise UFMInputError(flag, value, f"must be an integer ≥ {low}")
    return int(value)


def class_counts(K: int, n) -> tuple[int, ...]:
    """The K class sizes n_k of an ``n`` that is one size (balanced) or K sizes."""
    return (n,) * K if isinstance(n, int) else tuple(n)


def _class_sizes(value, K):
    """``n`` as given (an integer, K integers, or a comma list like ``"100,100,10,10"``) → an int when every class
    has the same size (so a balanced problem has one spelling and one cache key), else a tuple of K sizes."""
    if isinstance(value, str):
        tokens = [t.strip() for t in value.split(",")]
        try:
            value = [int(t) for t in tokens] if len(tokens) > 1 else int(tokens[0])
        except ValueError:
            raise UFMInputError("-n", value, "must be one integer ≥ 1 or K comma-separated integers ≥ 1 "
                                "(e.g. 100,100,10,10)") from None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        sizes = tuple(_int_at_least("-n", v, 1) for v in value)
        if len(sizes) != K:
            shown = ",".join(map(str, sizes))
            raise UFMInputError("-n", shown, f"gives {len(sizes)} class sizes but K = {K}; give one size (balanced) "
                                f"or exactly {K}")
        return sizes[0] if len(set(sizes)) == 1 else sizes
    return _int_at_least("-n", value, 1)


def _nonneg(flag, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UFMInputError(flag, value, "must be a finite number ≥ 0") from None
    if not math.isfinite(v) or v < 0:
        raise UFMInputError(flag, value, "must be a finite number ≥ 0")
    return v


def _check_user_loss(loss: UserLoss, K: int, N: int):
    """Trace the user's loss once on abstract (N, K) logits: it must return N per-sample losses."""
    import jax
    import jax.numpy as jnp

    try:
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct((N, K), jnp.float32), jax.ShapeDtypeStruct((N,), jnp.int32))
    except Exception as exc:  # the user's code failed to trace; report it in one line
        raise UFMInputError("--loss", loss.label, f"it must be JAX-traceable on logits (N, K) and labels (N,) "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise UFMInputError("--loss", loss.label, f"it must return real floating-point losses, got dtype {dtype}")
    if shape != (N,):
        raise UFMInputError("--loss", loss.label, f"it must return per-sample losses of shape (N,) = ({N},), got {shape}")


def _check_minimiser_exists(p) -> None:
    """Refuse the λ's for which (7) has no minimiser (docs/theory.md §7.3), so no solve can report one.

    With λ_W = 0 < λ_H (or the reverse), (tW, H/t) keeps Z = WH and shrinks the penalty as t → ∞: f decreases
    towards the infimum of the loss term and never attains it, for every built-in loss. With λ_W = λ_H = 0, CE and
    FL still have no minimiser (the loss → 0 only as the margins → ∞), while MSE and LS with α > 0 (its smoothed
    target is met at finite logits) attain their minimum. A user loss is not judged."""
    if isinstance(p.loss, UserLoss) or (p.lam_W > 0 and p.lam_H > 0):
        return
    flag = "--lam-w" if p.lam_W == 0 else "--lam-h"
    value = p.lam_W if p.lam_W == 0 else p.lam_H
    if p.lam_W == 0 and p.lam_H == 0:
        if p.loss.name == "mse" or (p.loss.name == "ls" and p.loss.alpha > 0):
            return
        raise UFMInputError("--lam", 0.0, f"with λ_W = λ_H = 0 the {p.loss.name.upper()} objective has no minimiser "
                            "(f → 0 only as the margins → ∞; docs/theory.md §7.3); give λ_W > 0 and λ_H > 0")
    raise UFMInputError(flag, value, "with only one of λ_W, λ_H zero, (7) has no minimiser (scaling W up and H down, "
                        "or the reverse, lowers f forever; docs/theory.md §7.3); give both > 0, or both 0 for MSE")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One UFM instance of eq. (7): K classes, feature dimension d, samples per class, λ's, bias mode, loss.

    ``n`` is one size for balanced classes, or K sizes n_1, …, n_K (a sequence, or text like ``"100,100,10,10"``);
    K equal sizes are stored as one integer. :attr:`counts` always gives the K sizes.

    ``lam`` sets λ_W = λ_H = λ_b at once; ``lam_W``, ``lam_H``, ``lam_b`` override it. ``lam_b = 0`` means a free
    (unregularised) bias, ``bias=False`` removes b altogether. ``loss`` is anything :func:`ufm.as_loss` accepts.
    """

    K: int = 10
    d: int = 64
    n: "int | tuple[int, ...]" = 100
    lam_W: float = 5e-4
    lam_H: float = 5e-4
    lam_b: float = 5e-4
    bias: bool = True
    loss: Loss = dataclasses.field(default_factory=lambda: as_loss("ce"))

    def __post_init__(self):
        object.__setattr__(self, "K", _int_at_least("-K", self.K, 2))
        object.__setattr__(self, "d", _int_at_least("-d", self.d, 1))
        object.__setattr__(self, "n", _class_sizes(self.n, self.K))
        for name, flag in (("lam_W", "--lam-w"), ("lam_H", "--lam-h"), ("lam_b", "--lam-b")):
            object.__setattr__(self, name, _nonneg(flag, getattr(self, name)))
        object.__setattr__(self, "bias", bool(self.bias))
        object.__setattr__(self, "loss", as_loss(self.loss))
        if isinstance(self.loss, UserLoss):
            _check_user_loss(self.loss, self.K, self.N)
        _check_minimiser_exists(self)

    @classmethod
    def create(cls, K=10, d=64, n=100, *, lam=5e-4, lam_W=None, lam_H=None, lam_b=None, bias=True,
               loss="ce", gamma=None, alpha=None, kappa=None, beta=None) -> "Problem":
        """Build a problem from flat keyword arguments (the command line's vocabulary)."""
        lam = _nonneg("--lam", lam)
        return cls(
            K=K, d=d, n=n,
            lam_W=lam if lam_W is None else lam_W,
            lam_H=lam if lam_H is None else lam_H,
            lam_b=lam if lam_b is None else lam_b,
            bias=bias,
            loss=as_loss(loss, gamma=gamma, alpha=alpha, kappa=kappa, beta=beta),
        )

    @property
    def counts(self) -> tuple[int, ...]:
        """The K class sizes n_k."""
        return class_counts(self.K, self.n)

    @property
    def balanced(self) -> bool:
        return isinstance(self.n, int)

    @property
    def N(self) -> int:
        return sum(self.counts)

    @property
    def bias_mode(self) -> str:
        if not self.bias:
            return "none"
        return "free" if self.lam_b == 0.0 else "regularized"

    @property
    def shape(self) -> Shape:
        return Shape(self.K, self.d, self.n, self.bias, self.loss)

    @property
    def reg(self) -> Reg:
        return Reg(self.lam_W, self.lam_H, self.lam_b if self.bias else 0.0)

    @property
    def labels(self) -> np.ndarray:
        """Label of each column of H (class-major)."""
        return np.repeat(np.arange(self.K), self.counts)

    @property
    def num_params(self) -> int:
        return self.shape.num_params

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)

    def config(self) -> dict:
        """Every input, resolved, as plain JSON-able values."""
        return {
            "K": self.K, "d": self.d, "n": self.n if self.balanced else list(self.n), "N": self.N,
            "lam_W": self.lam_W, "lam_H": self.lam_H, "lam_b": self.lam_b if self.bias else None,
            "bias": self.bias_mode,
            "loss": self.loss.name if self.loss.name != "user" else self.loss.describe(),
            "loss_params": self.loss.params(),
        }
