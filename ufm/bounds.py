"""Proven brackets [lower, upper] on the global optimum of (7), for any class sizes (docs/theory.md, bounds).

Three kinds of answer:

- **convex lifting** (losses convex in the logits: CE, LS, MSE in every bias mode, a user loss declared convex):
  the K×K nuclear-norm problem of docs/theory.md is solved to a duality-gap certificate (lifting.py). Its dual value
  is a proven ``lower`` bound for every d; when d ≥ the rank of its solution, the lifted solution is recovered as an
  explicit (W, H, b) whose objective (evaluated by the UFM code itself) is an ``upper`` bound, and the two agree.
- **convex envelope** (focal loss, balanced classes): min_{t≤0} φ**(t) − ct is a proven ``lower`` bound for every d
  (envelope.py); the NC point (d ≥ K − 1) gives ``upper`` = min_{t≤0} φ(t) − ct. They agree outside the band where
  φ_FL is non-convex; inside it only the bracket is known.
- **none** (a user loss not declared convex; FL with unequal class sizes): ``lower`` is None, said plainly.

``upper`` is always the objective of an explicit point ufm holds (the NC point, the recovered lifted point, or the
solve's own solution), so a second-order minimum above it is provably not global. ``certified`` is True when
upper − lower ≤ CERTIFY_RTOL · max(|lower|, |upper|): the optimum is then known to that accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import numpy as np

from .losses import FocalLoss
from .problem import Problem

#: upper and lower agreeing to this relative accuracy certify the optimum (1e-8 relative), with an absolute floor
#: at float64 round-off of the objective's sum, for optima near 0 (λ → 0)
CERTIFY_RTOL = 1e-8
CERTIFY_ATOL = 2e-14
#: lower may exceed upper by round-off only (two float64 evaluations of one value); more is a contradiction
ROUNDOFF_RTOL = 1e-12


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A bracket on the global optimum of one problem, from points and certificates that do not depend on a solve."""

    lower: Optional[float]
    upper: Optional[float]
    method: str                          # "convex_lifting", "convex_envelope" or "none"
    reason: str
    rank: Optional[int] = None           # convex lifting: rank of the lifted solution (d ≥ rank ⇒ attained)
    upper_from: Optional[str] = None     # "lifted_point", "nc_point"
    detail: Optional[dict] = None        # the lifted / envelope computation's own numbers
    #: convex lifting: the lifted solution itself (K×K), from which the optimum's Gram matrices and norms follow
    #: (ufm.analyze compares a network's last layer with them) without a second lifting
    lifted: Optional[object] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def certified(self) -> bool:
        return certified(self.lower, self.upper)

    def with_point(self, objective: Optional[float], name: str = "solution") -> "Bounds":
        """The bracket once an explicit point of objective ``objective`` is known too (it can only lower ``upper``)."""
        if objective is None or not math.isfinite(objective) or (self.upper is not None and objective >= self.upper):
            return self
        return dataclasses.replace(self, upper=float(objective), upper_from=name)

    def record(self) -> dict:
        gap = None if self.lower is None or self.upper is None else self.upper - self.lower
        reason = self.reason
        if contradicts(self.lower, self.upper):
            reason += (f"; CONTRADICTION: the lower bound exceeds an attained value by {self.lower - self.upper:.3e}, "
                       "so one of them is wrong (please report this problem)")
        return {"lower": self.lower, "upper": self.upper, "certified": self.certified, "method": self.method,
                "rank": self.rank, "upper_from": self.upper_from, "gap": gap, "reason": reason,
                "contradiction": contradicts(self.lower, self.upper), "detail": self.detail}


def _scale(lower: float, upper: float) -> float:
    return max(abs(lower), abs(upper))


def contradicts(lower: Optional[float], upper: Optional[float]) -> bool:
    """A proven lower bound above an attained value, beyond round-off: one of the two is wrong."""
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return False
    return lower - upper > ROUNDOFF_RTOL * _scale(lower, upper) + CERTIFY_ATOL


def certified(lower: Optional[float], upper: Optional[float]) -> bool:
    """lower and upper agree to CERTIFY_RTOL (relative) or CERTIFY_ATOL, and do not contradict each other."""
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return False
    return not contradicts(lower, upper) and upper - lower <= CERTIFY_RTOL * _scale(lower, upper) + CERTIFY_ATOL


def objective_f64(problem: Problem, W, H, b) -> float:
    import jax

    from .model import Params, objective_compiled

    with jax.enable_x64(True):
        return float(objective_compiled(Params(*(None if a is None else np.asarray(a, np.float64) for a in (W, H, b))),
                               problem.reg, problem.shape))


#: wall-time cap of the convex lifting inside a solve (K = 1000 with unequal sizes can take minutes: the bound it
#: holds when stopped is still proven, only looser, and the record says it was capped)
LIFTING_MAX_SECONDS = 60.0


def _lifting_bounds(problem: Problem) -> Bounds:
    from .lifting import lifted_optimum, recover

    lifted = lifted_optimum(problem.loss, problem.counts, problem.lam_W, problem.lam_H,
                            problem.lam_b if problem.bias else 0.0, problem.bias_mode,
                            max_seconds=LIFTING_MAX_SECONDS)
    detail = {"lifted_value": lifted.value, "dual_value": lifted.lower, "duality_gap": lifted.gap,
              "iterations": lifted.iterations, "converged": lifted.converged, "seconds": lifted.seconds,
              "singular_values": [float(s) for s in lifted.singular_values]}
    upper, upper_from = None, None
    if problem.d >= lifted.rank:
        W, H, b = recover(lifted, problem.d, problem.lam_W, problem.lam_H, problem.counts, problem.bias)
        upper, upper_from = objective_f64(problem, W, H, b), "lifted_point"
        detail["lifted_point_objective"] = upper
        reason = (f"convex lifting (K×K nuclear-norm problem): its dual value is a lower bound, and d = {problem.d} ≥ "
                  f"rank {lifted.rank} of its solution, so the recovered point attains it")
    else:
        reason = (f"convex lifting: a lower bound only, since d = {problem.d} < rank {lifted.rank} of the lifted "
                  "solution (the rank constraint cuts it off)")
    if lifted.status == "max_seconds":
        reason += (f"; the lifting stopped at its {LIFTING_MAX_SECONDS:g} s cap (duality gap {lifted.gap:.2e}): the "
                   "lower bound holds but is loose")
    lower = None if lifted.lower is None or not math.isfinite(lifted.lower) else float(lifted.lower)
    if lower is None:
        reason = (f"convex lifting found no proven lower bound ({lifted.status}; {lifted.method})"
                  + (f"; the recovered point (rank {lifted.rank} ≤ d) gives the upper bound" if upper is not None else ""))
    return Bounds(lower=lower, upper=upper, method="convex_lifting", reason=reason, rank=int(lifted.rank),
                  upper_from=upper_from, detail=detail, lifted=lifted)


def _envelope_bounds(problem: Problem) -> Bounds:
    from .envelope import envelope_bound
    from .theory import c_of

    c = c_of(problem)
    if not (c > 0 and math.isfinite(c)):
        return Bounds(None, None, "none", f"c = √(nλ_Wλ_H) = {c:g} is not a positive float64 number at these λ's: no "
                      "envelope bound")
    env = envelope_bound(problem.loss, problem.K, c)
    detail = {"c": c, "slope": env.slope, "nc_value": env.nc_value, "t_nc": env.t_nc, "method": env.method}
    if problem.d >= problem.K - 1:
        upper, upper_from = float(env.nc_value), "nc_point"
        reason = "convex envelope of φ_FL (lower) and the neural-collapse point of the scalar problem (upper)"
    else:
        upper, upper_from = None, None
        reason = (f"convex envelope of φ_FL: a lower bound (valid for every d); d = {problem.d} < K − 1 holds no NC "
                  "point, so only a solve gives an upper bound")
    return Bounds(lower=float(env.lower), upper=upper, method="convex_envelope", reason=reason,
                  upper_from=upper_from, detail=detail)


def problem_bounds(problem: Problem) -> Bounds:
    """The bracket on the global optimum of ``problem`` (module docstring), computed once per problem (a census and
    its escapes judge many points of one problem)."""
    return _problem_bounds(problem)


@functools.lru_cache(maxsize=64)
def _problem_bounds(problem: Problem) -> Bounds:
    loss = problem.loss
    if problem.lam_W <= 0 or problem.lam_H <= 0:
        return Bounds(None, None, "none", "bounds need λ_W > 0 and λ_H > 0")
    if getattr(loss, "convex_in_logits", False):
        return _lifting_bounds(problem)
    if isinstance(loss, FocalLoss):
        if problem.balanced:
            return _envelope_bounds(problem)
        return Bounds(None, None, "none", "focal loss with unequal class sizes: φ_FL is not convex and the envelope "
                      "bound needs balanced classes; no lower bound")
    return Bounds(None, None, "none", f"the loss {loss.describe()} is not declared convex in the logits "
                  "(set fn.convex = True if it is): no lower bound")
