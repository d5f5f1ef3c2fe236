"""Per-sample losses L(z, y_k) of the UFM, eqs. (3)–(6) of Zhou et al. (NeurIPS 2022).

Each loss is a small frozen (hashable) object whose ``__call__`` maps logits ``z`` of shape (N, K) and integer
labels of shape (N,) to per-sample losses of shape (N,). Objective (7) averages them over N.

Numerics: every softmax loss is written through the single quantity
``a = logsumexp_{j≠k} z_j − z_k``, because
``−log p_k = softplus(a)`` and ``log(1 − p_k) = −softplus(−a)`` are then both exact and finite for any logits.
That keeps FL's value and gradient finite for every γ ≥ 0, including γ < 1 when p_k saturates to 1
(docs/theory.md §2.6), where the naive ``(1 − p)**γ`` gives 0·∞ = NaN under autodiff.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .errors import UFMInputError

LOSS_NAMES = ("ce", "fl", "ls", "mse")


def _off_target_gap(z, labels):
    """a = logsumexp_{j≠k} z_j − z_k for each row, with k the row's label."""
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
    z_k = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
    lse_off = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, z), axis=-1)
    return lse_off - z_k


class Loss:
    """Base class. Subclasses are frozen dataclasses: hashable, so a loss can be a static jit argument."""

    name: str = "loss"
    #: True when L(z + s·1) = L(z): a free bias then has a flat direction b ↦ b + s·1 (docs/theory.md §5.6).
    shift_invariant: bool = True
    #: True when L(·, y) is convex in the logits: the convex lifting (ufm.lifting, docs/theory.md §5.8) then applies.
    convex_in_logits: bool = True

    def __call__(self, z, labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({p})" if p else self.name


@dataclasses.dataclass(frozen=True)
class CrossEntropy(Loss):
    """Eq. (3): L_CE(z, y_k) = −log(exp(z_k) / Σ_j exp(z_j))."""

    name = "ce"

    def __call__(self, z, labels):
        return jax.nn.softplus(_off_target_gap(z, labels))


@dataclasses.dataclass(frozen=True)
class FocalLoss(Loss):
    """Eq. (4): L_FL(z, y_k) = −(1 − p_k)^γ log p_k, γ ≥ 0 (γ = 0 is CE)."""

    gamma: float = 2.0
    name = "fl"
    convex_in_logits = False          # (1 − p_k)^γ breaks convexity in z for γ > 0 (docs/theory.md §5.1)

    def __post_init__(self):
        _check_finite("--gamma", self.gamma)
        if self.gamma < 0:
            raise UFMInputError("--gamma", self.gamma, "the focusing parameter γ must be ≥ 0")

    def __call__(self, z, labels):
        a = _off_target_gap(z, labels)
        # (1 − p_k)^γ = exp(γ log(1 − p_k)) with log(1 − p_k) = −softplus(−a): finite value and gradient.
        return jnp.exp(-self.gamma * jax.nn.softplus(-a)) * jax.nn.softplus(a)


@dataclasses.dataclass(frozen=True)
class LabelSmoothing(Loss):
    """Eq. (5): L_LS(z, y_k) = −Σ_ℓ y^smooth_{k,ℓ} log p_ℓ, y^smooth_k = (1 − α) y_k + (α/K) 1, 0 ≤ α < 1."""

    alpha: float = 0.1
    name = "ls"

    def __post_init__(self):
        _check_finite("--alpha", self.alpha)
        if not 0.0 <= self.alpha < 1.0:
            raise UFMInputError("--alpha", self.alpha, "the smoothing parameter α must lie in [0, 1)")

    def __call__(self, z, labels):
        K = z.shape[-1]
        log_p = jax.nn.log_softmax(z, axis=-1)
        y_smooth = (1.0 - self.alpha) * jax.nn.one_hot(labels, K, dtype=z.dtype) + self.alpha / K
        return -jnp.sum(y_smooth * log_p, axis=-1)


@dataclasses.dataclass(frozen=True)
class RescaledMSE(Loss):
    """Eq. (6): L_MSE(z, y_k) = κ (z_k − β)² + Σ_{ℓ≠k} z_ℓ², κ > 0, β > 0 (no 1/2, no 1/K)."""

    kappa: float = 1.0
    beta: float = 1.0
    name = "mse"
    shift_invariant = False

    def __post_init__(self):
        _check_finite("--kappa", self.kappa)
        _check_finite("--beta", self.beta)
        if self.kappa <= 0:
            raise UFMInputError("--kappa", self.kappa, "the true-class weight κ must be > 0")
        if self.beta <= 0:
            raise UFMInputError("--beta", self.beta, "the target scale β must be > 0")

    def __call__(self, z, labels):
        onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
        target = self.beta * onehot
        weight = 1.0 + (self.kappa - 1.0) * onehot
        return jnp.sum(weight * (z - target) ** 2, axis=-1)


@dataclasses.dataclass(frozen=True)
class UserLoss(Loss):
    """A user-supplied JAX-traceable ``fn(logits (N, K), labels (N,)) -> per-sample losses (N,)``.

    No closed-form theory applies to it. ``shift_invariant`` says whether a free bias has the b ↦ b + s·1 flat
    direction; set it when you know (it only affects the expected zero-mode count of the landscape tools).
    ``convex`` declares the loss convex in the logits (``fn.convex = True`` on the function sets it): ufm cannot
    check it, and only then does the convex lifting (ufm.lifting) accept the loss.
    """

    fn: Callable = dataclasses.field(compare=True)
    label: str = "user"
    shift_invariant: bool = False
    convex: bool = False
    name = "user"

    @property
    def convex_in_logits(self) -> bool:
        return self.convex

    def __call__(self, z, labels):
        import contextlib
        import sys

        # the user's function runs (is traced) inside ufm's commands: whatever it prints goes to stderr, so that
        # ``--json`` keeps stdout to one JSON document
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return self.fn(z, labels)
            except SystemExit as exc:           # inside ufm's own run: an error of the loss, not a way out
                raise UFMInputError("--loss", self.label, f"the function called sys.exit({exc.code!r})") from None

    def params(self) -> dict:
        return {"function": self.label}

    def describe(self) -> str:
        return self.label


def _check_finite(flag, value):
    try:
        ok = np.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UFMInputError(flag, value, "must be a finite number")


def _import_user_module(name: str):
    """Import the user's module as ``python -m`` would see it: the current folder is searched too (the ``ufm``
    console script does not put it on sys.path), and whatever the module prints goes to stderr, so that
    ``--json`` keeps stdout to one JSON document. Importing runs the module's code: it is trusted."""
    import contextlib
    import os
    import sys

    with contextlib.redirect_stdout(sys.stderr):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            cwd = os.getcwd()
            if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
                raise
            # kept on sys.path: sweep workers (spawned) inherit it and import the same module
            sys.path.insert(0, cwd)
            return importlib.import_module(name)


def _declared_convex(fn) -> bool:
    """The user's declaration ``fn.convex = True`` (exactly True: a truthy string is not a declaration)."""
    return getattr(fn, "convex", False) is True


def load_user_loss(spec: str) -> UserLoss:
    """Import ``package.module:function`` and wrap it as a :class:`UserLoss`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UFMInputError(
            "--loss", spec, f"use one of {', '.join(LOSS_NAMES)} or 'package.module:function'"
        )
    try:
        module = _import_user_module(module_name)
    except SystemExit as exc:
        raise UFMInputError("--loss", spec, f"module {module_name!r} called sys.exit({exc.code!r}) while being imported") from None
    except Exception as exc:  # any import-time failure is the user's module, reported in one line
        raise UFMInputError("--loss", spec, f"module {module_name!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UFMInputError("--loss", spec, f"module {module_name!r} has no callable {attr!r}")
    return UserLoss(fn=fn, label=spec, convex=_declared_convex(fn))


def as_loss(loss="ce", *, gamma=None, alpha=None, kappa=None, beta=None) -> Loss:
    """Normalise a loss spec: a :class:`Loss`, one of ``ce fl ls mse``, ``module:function`` or a callable.

    Parameters that the chosen loss does not take are an error (a silently ignored γ is a wrong experiment).
    """
    given = {k: v for k, v in dict(gamma=gamma, alpha=alpha, kappa=kappa, beta=beta).items() if v is not None}
    takes = {"ce": (), "fl": ("gamma",), "ls": ("alpha",), "mse": ("kappa", "beta")}
    if isinstance(loss, Loss):
        if given:
            raise UFMInputError(f"--{next(iter(given))}", given[next(iter(given))], "pass loss parameters inside the Loss object")
        return loss
    if callable(loss):
        return UserLoss(fn=loss, label=getattr(loss, "__name__", "user"), convex=_declared_convex(loss))
    if not isinstance(loss, str):
        raise UFMInputError("--loss", loss, f"use one of {', '.join(LOSS_NAMES)} or 'package.module:function'")
    key = loss.strip().lower()
    if key not in takes:
        if ":" in loss:
            user = load_user_loss(loss)
            extra = sorted(given)
            if extra:
                raise UFMInputError(f"--{extra[0]}", given[extra[0]], "a user loss takes no built-in loss parameters")
            return user
        raise UFMInputError("--loss", loss, f"use one of {', '.join(LOSS_NAMES)} or 'package.module:function'")
    for k in given:
        if k not in takes[key]:
            allowed = ", ".join(f"--{t}" for t in takes[key]) or "none"
            raise UFMInputError(f"--{k}", given[k], f"loss {key!r} does not take it (its parameters: {allowed})")
    if key == "ce":
        return CrossEntropy()
    if key == "fl":
        return FocalLoss(**given)
    if key == "ls":
        return LabelSmoothing(**given)
    return RescaledMSE(**given)
