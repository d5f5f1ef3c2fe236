"""``analyze``: a trained network's last layer judged as a point of the UFM, eq. (7) (docs/theory.md §11).

One record, the one ``ufm analyze --json`` prints: every NC metric (metrics.py, both conventions), the train accuracy
of the given classifier, objective (7) at the given point with its gradient per block (absolute and scale-free), the
UFM optimum for the same K, d, class sizes, loss and λ's (the certified bracket of bounds.py where it is available,
the closed forms of theory.py otherwise) and the gaps to it: objective, norms, and the distances between the
normalised Gram matrices of the classifier and of the class means and the optimum's. Networks do not penalise
features, so without a λ_H the λ_H that makes the point closest to stationary in H is estimated (§11.2).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .errors import UFMInputError
from .lastlayer import LastLayer, last_layer

#: the λ's when not given, as ``ufm solve``'s --lam default; λ_b follows λ_W (an optimiser's weight decay usually
#: applies to the bias too)
DEFAULT_LAM = 5e-4
HESSIAN_METHODS = ("auto", "dense", "lanczos")
LOSS_PARAMS = ("gamma", "alpha", "kappa", "beta")


def _ratio(num: float, den: float) -> float:
    """num/den with 0/0 = 0 (an exactly stationary block with nothing in it) and x/0 = inf."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _hessian_method(hessian) -> Optional[str]:
    if hessian is False or hessian is None:
        return None
    if hessian is True:
        return "auto"
    if hessian in HESSIAN_METHODS:
        return hessian
    raise UFMInputError("--hessian", hessian, f"use False, True or one of {', '.join(HESSIAN_METHODS)}")


def _problem(layer: LastLayer, loss, lam_W, lam_H, lam_b, loss_params):
    """The Problem of the given point, checked before any work; λ_H None → a placeholder (λ_W) until estimated."""
    from .problem import Problem

    unknown = sorted(set(loss_params) - set(LOSS_PARAMS))
    if unknown:
        raise UFMInputError(unknown[0], loss_params[unknown[0]], f"loss parameters are {', '.join(LOSS_PARAMS)}")
    lam_W = DEFAULT_LAM if lam_W is None else lam_W
    if layer.b is None and lam_b is not None:
        raise UFMInputError("--lam-b", lam_b, "the last layer has no bias b; give b, or drop --lam-b")
    if lam_H is None:
        try:
            ok = float(lam_W) != 0            # a negative λ_W: Problem's own message below
        except (TypeError, ValueError):
            ok = True                 # Problem names the bad value below
        if not ok:
            raise UFMInputError("--lam-w", lam_W, "estimating λ_H needs λ_W > 0 (with λ_W = 0 < λ_H, eq. 7 has no "
                                "minimiser); give --lam-h too")
        for name, a in (("H", layer.H), ("W", layer.W)):
            if not np.any(a):
                raise UFMInputError("--lam-h", None, f"cannot be estimated: {name} = 0 (no least-squares fit and no "
                                    "balance value λ_W‖W‖²/‖H‖², docs/theory.md §11.2); give --lam-h")
    return Problem.create(layer.K, layer.d, layer.counts, lam=DEFAULT_LAM, lam_W=lam_W,
                          lam_H=lam_W if lam_H is None else lam_H, lam_b=lam_W if lam_b is None else lam_b,
                          bias=layer.b is not None, loss=loss,
                          **{k: loss_params.get(k) for k in LOSS_PARAMS})


_VALUE_AND_GRAD = None


def _data_gradient(problem, layer: LastLayer):
    """(g, ∇_W g, ∇_H g, ∇_b g) of the data term g = (1/N) Σ L(W h + b, y) at the given point, in float64."""
    import jax
    import jax.numpy as jnp

    from .model import Params, data_term

    global _VALUE_AND_GRAD
    if _VALUE_AND_GRAD is None:
        # one compiled program per shape: measured 1 s against 5–7 s for the same call run eagerly (each primitive
        # compiles on its own), on this 2-core machine
        _VALUE_AND_GRAD = jax.jit(jax.value_and_grad(data_term), static_argnums=1)
    with jax.enable_x64(True):
        p = Params(jnp.asarray(layer.W), jnp.asarray(layer.H), None if layer.b is None else jnp.asarray(layer.b))
        g, grad = _VALUE_AND_GRAD(p, problem.shape)
        out = (float(g), np.asarray(grad.W, np.float64), np.asarray(grad.H, np.float64),
               None if layer.b is None else np.asarray(grad.b, np.float64))
    return out


def estimate_lam_H(H, grad_H_data, lam_W: float, W_fro_sq: float) -> dict:
    """The λ_H closest to H-stationarity (docs/theory.md §11.2): ∇_H f = ∇_H g + λ_H H = 0 at a critical point of
    (7), so the least-squares λ_H is −⟨∇_H g, H⟩/‖H‖²; ``residual`` = ‖∇_H g + λ̂ H‖/‖∇_H g‖ (0: exactly stationary
    in H, 1: no λ_H helps). When it is not positive (or H = 0) no λ_H > 0 makes the point stationary in H, and the
    balance value λ_W‖W‖²/‖H‖² (λ_W‖W‖² = λ_H‖H‖² at every critical point) is used instead, said in ``reason``."""
    hh = float(np.sum(H * H))
    inner = float(np.sum(grad_H_data * H))
    gnorm = float(np.linalg.norm(grad_H_data))
    raw = -inner / hh if hh > 0 else math.nan
    balance = lam_W * W_fro_sq / hh if hh > 0 else math.nan
    residual = _ratio(float(np.linalg.norm(grad_H_data + raw * H)), gnorm) if math.isfinite(raw) else math.nan
    rec = {"estimate": raw, "residual": residual, "balance": balance, "used": raw, "fallback": False,
           "reason": "least-squares fit of ∇_H g + λ_H H = 0 (docs/theory.md §11.2): an estimate, not a given value"}
    if not (raw > 0 and math.isfinite(raw)):
        rec["fallback"] = True
        if balance > 0 and math.isfinite(balance):
            rec["used"] = balance
            rec["reason"] = (f"the fit gave λ_H = {raw:.3g} ≤ 0: the data gradient pushes the features outward "
                             "(⟨∇_H g, H⟩ ≥ 0), so no λ_H > 0 makes this point stationary in H; using the balance "
                             "value λ_W‖W‖²/‖H‖² instead (give --lam-h to choose)")
        else:
            raise UFMInputError("--lam-h", None, "cannot be estimated here (H = 0 or W = 0: no fit and no balance "
                                "value); give --lam-h")
    return rec


def _stationarity(blocks, floor: float) -> dict:
    """Per block X: ‖∇_X f‖ and the scale-free ‖∇_X f‖/(‖∇_X g‖ + ‖λ_X X‖ + min(λ_W, λ_H)) (docs/theory.md §7.2;
    the last term, as in the solver's measure, keeps a block at round-off, such as b* = 0, from reading 1)."""
    out = {}
    for name, data, pen in blocks:
        if data is None:
            out[name] = None
            continue
        norm = float(np.linalg.norm(data + pen))
        out[name] = {"grad_norm": norm, "rel_grad_norm": _ratio(norm, float(np.linalg.norm(data))
                                                                + float(np.linalg.norm(pen)) + floor)}
    return out


def analyze(W, H, labels, b=None, *, loss="ce", lam_W=None, lam_H=None, lam_b=None, layout="rows",
            hessian=False, bounds=True, **loss_params) -> dict:
    """The record of ``ufm analyze --json`` for a trained network's last layer (docs/theory.md §11).

    W (K, d); H (N, d) rows (``layout="rows"``) or (d, N) columns (``layout="columns"``); labels (N,) integers in
    [0, K), any order and class sizes; b (K,) or None (no bias). Anything ``np.asarray`` takes (numpy, JAX, a CPU
    PyTorch tensor). ``loss`` a name (ce, fl, ls, mse, module:function) or a :class:`ufm.Loss`, with ``gamma=``,
    ``alpha=``, ``kappa=``, ``beta=`` as ``ufm solve``. λ_W defaults to 5e-4 and λ_b to λ_W; ``lam_H=None``
    estimates λ_H (``lam_H_estimated`` and ``lam_H_fit`` in the record). ``hessian`` True or a method (auto, dense,
    lanczos) adds the curvature at the point (critical.analyze_point); ``bounds=False`` skips the convex lifting and
    compares with the closed forms only. Bad input raises :class:`UFMInputError` before any work.
    """
    from .critical import check_hessian
    from .optimum import compare_with_optimum
    from .report import _fro_sq, _nc_or_nan, json_safe

    layer = last_layer(W, H, labels, b, layout=layout)
    problem = _problem(layer, loss, lam_W, lam_H, lam_b, loss_params)
    method = _hessian_method(hessian)
    if method is not None:
        check_hessian(problem, method)

    g, gW, gH, gb = _data_gradient(problem, layer)
    W_sq, H_sq = _fro_sq(layer.W), _fro_sq(layer.H)
    fit = None
    if lam_H is None:
        fit = estimate_lam_H(layer.H, gH, problem.lam_W, W_sq)
        problem = problem.replace(lam_H=fit["used"])
    lw, lh, lb = problem.reg
    f = g + 0.5 * lw * W_sq + 0.5 * lh * H_sq + (0.0 if layer.b is None else 0.5 * lb * _fro_sq(layer.b))
    blocks = [("W", gW, lw * layer.W), ("H", gH, lh * layer.H),
              ("b", gb, None if layer.b is None else lb * layer.b)]
    per_block = _stationarity(blocks, min(lw, lh))
    grad_norm = math.sqrt(sum(v["grad_norm"] ** 2 for v in per_block.values() if v is not None))
    data_norm = math.sqrt(sum(float(np.sum(d * d)) for _, d, _ in blocks if d is not None))
    pen_norm = math.sqrt(sum(float(np.sum(p * p)) for _, d, p in blocks if d is not None))
    z = layer.W @ layer.H + (0.0 if layer.b is None else layer.b[:, None])
    opt, gap, bounds_rec = compare_with_optimum(problem, layer, f, W_sq, H_sq, bounds=bounds)
    record = {
        "objective": f,
        "data_term": g,
        "grad_norm": grad_norm,
        # the solver's scale-free measure (methods.stationarity_scale): the same number `ufm solve` stops on
        "rel_grad_norm": _ratio(grad_norm, data_norm + pen_norm + min(lw, lh)),
        "stationarity": per_block,
        "train_accuracy": float(np.mean(np.argmax(z, axis=0) == layer.labels)),
        "class_sizes": list(layer.counts),
        "layout": layer.layout,
        "W_fro_sq": W_sq,
        "H_fro_sq": H_sq,
        "b": None if layer.b is None else [float(v) for v in layer.b],
        "nc": _nc_or_nan(layer.W, layer.H, layer.b, problem),
        "lam_H_estimated": fit is not None,
        "lam_H_fit": fit,
        "bounds": bounds_rec,
        "optimum": opt,
        "gap": gap,
        "hessian": None,
        "config": {**problem.config(), "layout": layer.layout, "lam_H_source": "estimated" if fit else "given",
                   "hessian": method, "bounds": bool(bounds)},
    }
    if method is not None:
        from .critical import analyze_point
        from .model import Params

        cp = analyze_point(problem, Params(layer.W, layer.H, layer.b), hessian=method, label="given")
        record["hessian"] = cp.record()
    return json_safe(record)
