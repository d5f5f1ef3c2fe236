"""Per-sample losses L(z, y_k) of the UFM, eqs. (3)–(6) of Zhou et al. (NeurIPS 2022).

Each loss is a small frozen (hashable) object whose ``__call__`` maps logits ``z`` of shape (N, K) and integer
labels of shape (N,) to per-sample losses of shape (N,). Objective (7) averages them over N (:meth:`Loss.mean`).

Numerics: every softmax loss is written through the single quantity
``a = logsumexp_{j≠k} z_j − z_k``, because
``−log p_k = softplus(a)`` and ``log(1 − p_k) = −softplus(−a)`` are then both exact and finite for any logits.
That keeps FL's value and gradient finite for every γ ≥ 0, including γ < 1 when p_k saturates to 1
(docs/theory.md §2.6), where the naive ``(1 − p)**γ`` gives 0·∞ = NaN under autodiff.

Speed (docs/theory.md §9): the built-in losses carry their gradient in the logits and its directional derivative
(the Hessian-vector product in the logits) in closed form, as two nested ``jax.custom_jvp`` rules, so a gradient
or a forward-over-reverse HVP of (7) is a few fused passes over the logits between the GEMMs, instead of autodiff's
chain of masked, materialised (N, K) temporaries. The values are the same formulas as before; only the
derivative programs change. A :class:`UserLoss` goes through plain autodiff.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .errors import UFMInputError

LOSS_NAMES = ("ce", "fl", "ls", "mse")


# ---------------------------------------------------------------------------------------------------------------
# Pieces shared by the value, the gradient and the HVP in the logits. ``axis`` is the class axis of z: -1 for (N, K)
# rows (``__call__``; objective (7) at large N), 0 for the (K, N) columns W H (objective (7) at small N: ufm.model).


def _label_mask(z, labels, axis):
    """True at each sample's label. An iota comparison, which XLA fuses into its consumers (no one-hot in memory)."""
    iota = lax.broadcasted_iota(labels.dtype, z.shape, axis % z.ndim)
    return iota == jnp.expand_dims(labels, axis)


def _at_label(z, labels, axis):
    """z_{y_i} for each sample: a gather of N entries (a masked sum would be a full pass over z)."""
    idx = jnp.expand_dims(labels, axis)
    return jnp.squeeze(jnp.take_along_axis(z, idx, axis=axis, mode="clip"), axis)


class _OffTarget:
    """The off-target log-partition of each sample: with k its label,

    zm = z with −∞ at k,  m = max_{j≠k} z_j,  e_j = exp(zm_j − m),  s = Σ_j e_j,  a = (log s + m) − z_k,

    the very operations (and order) of ``logsumexp_{j≠k} z_j − z_k``; e is 0 at the label, so q = e / s is the
    off-target softmax, ∂a/∂z = q − e_k and ∂²a/∂z² = diag(q) − q qᵀ."""

    def __init__(self, z, labels, axis):
        self.mask = _label_mask(z, labels, axis)
        zm = jnp.where(self.mask, -jnp.inf, z)
        m = jnp.max(zm, axis=axis, keepdims=True)
        self.m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))   # as logsumexp: no ∞ − ∞ when all are −∞
        self.e = jnp.exp(zm - self.m)
        self.s = jnp.sum(self.e, axis=axis, keepdims=True)
        self.a = (jnp.log(self.s) + self.m).squeeze(axis) - _at_label(z, labels, axis)


def _derivatives(ell, a, order):
    """ℓ'(a) (and ℓ''(a)) of an elementwise ℓ by forward-mode autodiff: exactly autodiff's own numbers."""
    d1 = lambda u: jax.jvp(ell, (u,), (jnp.ones_like(u),))[1]
    if order == 1:
        return d1(a)
    return jax.jvp(d1, (a,), (jnp.ones_like(a),))


# The two custom rules. ``loss`` is static (a frozen, hashable Loss); it supplies _value, _grad and _grad_jvp.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3))
def _per_sample(loss, z, labels, axis):
    return loss._value(z, labels, axis)


@_per_sample.defjvp
def _per_sample_jvp(loss, axis, primals, tangents):
    z, labels = primals
    return loss._value(z, labels, axis), jnp.sum(_grad_logits(loss, z, labels, axis) * tangents[0], axis=axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3))
def _grad_logits(loss, z, labels, axis):
    """∂L_i/∂z_i for every sample, same shape as z."""
    return loss._grad(z, labels, axis)


@_grad_logits.defjvp
def _grad_logits_jvp(loss, axis, primals, tangents):
    z, labels = primals
    return loss._grad_jvp(z, labels, tangents[0], axis)


class Loss:
    """Base class. Subclasses are frozen dataclasses: hashable, so a loss can be a static jit argument."""

    name: str = "loss"
    #: True when L(z + s·1) = L(z): a free bias then has a flat direction b ↦ b + s·1 (docs/theory.md §5.6).
    shift_invariant: bool = True
    #: True when L(·, y) is convex in the logits: the convex lifting (ufm.lifting, docs/theory.md §5.8) then applies.
    convex_in_logits: bool = True

    def __call__(self, z, labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, z, labels, axis: int = -1):
        """(1/N) Σ_i L(z_i, y_i), the data term of (7), with the class axis of z at ``axis`` (0 for the (K, N)
        product W H). The generic path: ``__call__`` on (N, K) rows, differentiated by autodiff."""
        return jnp.mean(self(jnp.moveaxis(z, axis, -1), labels))

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({p})" if p else self.name


def _as_logits(z, labels):
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.result_type(float))
    return z, jnp.asarray(labels)


class _ClosedForm(Loss):
    """A built-in loss with its logit gradient ``_grad`` and HVP ``_grad_jvp`` in closed form (see the module
    docstring): both the per-sample values and the mean go through the custom rules."""

    def __call__(self, z, labels):
        z, labels = _as_logits(z, labels)
        return _per_sample(self, z, labels, -1)

    def mean(self, z, labels, axis: int = -1):
        if not has_closed_form(self):
            return super().mean(z, labels, axis)
        z, labels = _as_logits(z, labels)
        return jnp.mean(_per_sample(self, z, labels, axis % z.ndim))


def mean_and_grad(loss: Loss, z, labels, axis: int):
    """(1/N) Σ_i L(z_i, y_i) and its gradient in z, for a loss with closed-form logit derivatives
    (:func:`has_closed_form`); the gradient carries the closed-form HVP rule, so it can be differentiated again."""
    n = labels.size
    return jnp.mean(loss._value(z, labels, axis)), _grad_logits(loss, z, labels, axis) / n


def has_closed_form(loss: Loss) -> bool:
    """True for the built-in losses (their logit gradient and HVP are in closed form); False for a UserLoss, and for
    a subclass that redefines ``__call__`` (its derivatives are then autodiff's of its own values)."""
    return isinstance(loss, _ClosedForm) and type(loss).__call__ is _ClosedForm.__call__


class _GapLoss(_ClosedForm):
    """L = ℓ(a) with a = logsumexp_{j≠k} z_j − z_k (CE, FL). With q the off-target softmax and e_k the label's
    indicator, ∇L = ℓ'(a)(q − e_k) and ∇²L·v = ℓ''(a) u (q − e_k) + ℓ'(a) q ⊙ (v − ⟨q, v⟩), u = ⟨q, v⟩ − v_k."""

    def _ell(self, a):  # pragma: no cover - abstract
        raise NotImplementedError

    def _value(self, z, labels, axis):
        return self._ell(_OffTarget(z, labels, axis).a)

    def _grad(self, z, labels, axis):
        o = _OffTarget(z, labels, axis)
        d1 = jnp.expand_dims(_derivatives(self._ell, o.a, 1), axis)
        return jnp.where(o.mask, -d1, (d1 / o.s) * o.e)

    def _grad_jvp(self, z, labels, v, axis):
        o = _OffTarget(z, labels, axis)
        d1, d2 = (jnp.expand_dims(d, axis) for d in _derivatives(self._ell, o.a, 2))
        # per-sample scalars times e (q = e/s is never formed: one (K, N) temporary fewer)
        t = jnp.sum(o.e * v, axis=axis, keepdims=True) / o.s
        u = t - jnp.expand_dims(_at_label(v, labels, axis), axis)
        c = d1 / o.s
        G = jnp.where(o.mask, -d1, c * o.e)
        return G, jnp.where(o.mask, -d2 * u, o.e * ((d2 * u - d1 * t) / o.s + c * v))


@dataclasses.dataclass(frozen=True)
class CrossEntropy(_GapLoss):
    """Eq. (3): L_CE(z, y_k) = −log(exp(z_k) / Σ_j exp(z_j))."""

    name = "ce"

    def _ell(self, a):
        return jax.nn.softplus(a)


@dataclasses.dataclass(frozen=True)
class FocalLoss(_GapLoss):
    """Eq. (4): L_FL(z, y_k) = −(1 − p_k)^γ log p_k, γ ≥ 0 (γ = 0 is CE)."""

    gamma: float = 2.0
    name = "fl"
    convex_in_logits = False          # (1 − p_k)^γ breaks convexity in z for γ > 0 (docs/theory.md §5.1)

    def __post_init__(self):
        _check_finite("--gamma", self.gamma)
        if self.gamma < 0:
            raise UFMInputError("--gamma", self.gamma, "the focusing parameter γ must be ≥ 0")

    def _ell(self, a):
        # (1 − p_k)^γ = exp(γ log(1 − p_k)) with log(1 − p_k) = −softplus(−a): finite value and gradient.
        return jnp.exp(-self.gamma * jax.nn.softplus(-a)) * jax.nn.softplus(a)


@dataclasses.dataclass(frozen=True)
class LabelSmoothing(_ClosedForm):
    """Eq. (5): L_LS(z, y_k) = −Σ_ℓ y^smooth_{k,ℓ} log p_ℓ, y^smooth_k = (1 − α) y_k + (α/K) 1, 0 ≤ α < 1.

    With r_ℓ = −log p_ℓ = log Σ_j e^{z_j − m} − (z_ℓ − m) ≥ 0 (m = max z, as ``log_softmax``), the value is
    (1 − α) r_k + (α/K) Σ_ℓ r_ℓ: a sum of non-negative terms. ∇L = p − y^smooth, ∇²L·v = p ⊙ (v − ⟨p, v⟩)."""

    alpha: float = 0.1
    name = "ls"

    def __post_init__(self):
        _check_finite("--alpha", self.alpha)
        if not 0.0 <= self.alpha < 1.0:
            raise UFMInputError("--alpha", self.alpha, "the smoothing parameter α must lie in [0, 1)")

    @staticmethod
    def _shifted(z, axis):
        m = jnp.max(z, axis=axis, keepdims=True)
        shifted = z - m
        return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))

    def _value(self, z, labels, axis):
        shifted, lse = self._shifted(z, axis)
        r_k = lse.squeeze(axis) - _at_label(shifted, labels, axis)
        value = (1.0 - self.alpha) * r_k
        if self.alpha:
            value = value + self.alpha / z.shape[axis] * jnp.sum(lse - shifted, axis=axis)
        return value

    def _p_minus_y(self, z, labels, axis):
        shifted, lse = self._shifted(z, axis)
        p = jnp.exp(shifted - lse)
        off = self.alpha / z.shape[axis]
        return p, jnp.where(_label_mask(z, labels, axis), p - (off + (1.0 - self.alpha)), p - off)

    def _grad(self, z, labels, axis):
        return self._p_minus_y(z, labels, axis)[1]

    def _grad_jvp(self, z, labels, v, axis):
        p, G = self._p_minus_y(z, labels, axis)
        return G, p * (v - jnp.sum(p * v, axis=axis, keepdims=True))


@dataclasses.dataclass(frozen=True)
class RescaledMSE(_ClosedForm):
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

    def _value(self, z, labels, axis):
        # the off-target squares and the label's term separately: no cancellation for any κ
        off = jnp.sum(jnp.where(_label_mask(z, labels, axis), 0.0, z * z), axis=axis)
        return off + self.kappa * (_at_label(z, labels, axis) - self.beta) ** 2

    def _grad(self, z, labels, axis):
        return jnp.where(_label_mask(z, labels, axis), (2.0 * self.kappa) * (z - self.beta), 2.0 * z)

    def _grad_jvp(self, z, labels, v, axis):
        return self._grad(z, labels, axis), jnp.where(_label_mask(z, labels, axis), (2.0 * self.kappa) * v, 2.0 * v)


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
