"""The optimisation methods for objective (7), each a frozen, hashable object holding its hyperparameters: L-BFGS
and first-order methods (optax), Newton-CG and Levenberg–Marquardt on Hessian-vector products, and chains of them.

A method provides ``parts(reg, shape) -> (init, value_grad, update)``; one shared, jit-compiled loop
(:func:`_advance`) runs any method in chunks over the flat parameter vector. Inside jit nothing raises: every run
ends with a :class:`Status`. ``solvers.solve`` is the host-side entry point that drives the chunks.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import aot
from .errors import UFMInputError
from .model import flat_objective

class Status(enum.IntEnum):
    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2
    STALLED = 3
    SADDLE = 4


_RUNNING = -1

MESSAGES = {
    Status.CONVERGED: "converged: ‖∇f‖ ≤ gtol and ‖∇f‖ ≤ rtol·(‖∇ data term‖ + ‖∇ penalty‖)",
    Status.MAX_STEPS: "stopped at max steps before stationarity (‖∇f‖ ≤ gtol and the scale-free ratio ≤ rtol); raise "
                      "--max-steps or use a faster --solver",
    Status.NONFINITE: "objective or gradient became NaN/inf; lower the step size (--lr) or --init-scale, or check a user loss",
    Status.STALLED: "stalled: ‖∇f‖ stopped decreasing before stationarity (likely the floating-point floor; use float64 "
                    "or a looser --gtol / --rtol)",
    Status.SADDLE: "reached a critical point that is NOT a minimiser: f decreases along an explicit direction (negative "
                   "curvature); start elsewhere (a nonzero --init-scale, another --seed) or escape with `ufm landscape`",
}


class Carry(NamedTuple):
    """The loop state between chunks: iterate, method state, step count, status, and the stopping-rule memory."""

    x: jax.Array
    state: tuple
    k: jax.Array          # updates taken in this stage
    status: jax.Array
    f: jax.Array
    gnorm: jax.Array
    rel: jax.Array        # ‖∇f‖ / (‖∇ data term‖ + ‖∇ penalty‖)
    best: jax.Array
    since: jax.Array
    f_mark: jax.Array     # f when the stall counter last saw f fall (see _advance)


class ChunkTrace(NamedTuple):
    """What one chunk recorded: f and ‖∇f‖ of its ``count`` evaluations, and its NC snapshots."""

    f: jax.Array
    g: jax.Array
    count: jax.Array
    snaps: jax.Array
    snap_steps: jax.Array
    n_snaps: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# The loop every solver shares, run in chunks: evaluate, record, test the stopping rules, update. The host runs
# chunks of a traced number of iterations (sized to a fraction of a second), so Ctrl-C and progress reports reach it
# between chunks, and trace buffers are one chunk long instead of max_steps long.


def stationarity_scale(x, g, reg, shape):
    """‖∇ data term‖ + ‖∇ penalty‖ + min(λ_W, λ_H) at x: the penalty gradient is (λ_W W, λ_H H, λ_b b), the data
    gradient the rest.

    At a minimiser away from the origin the first two balance, so ‖∇f‖ divided by this sum is a stationarity measure
    that does not shrink with the λ's or the gradient's scale (docs/theory.md §7.2). Near the origin both shrink with
    ‖x‖ and the ratio stays O(1) even as the iterates converge to it (the trivial-collapse minimiser); the last
    term, the penalty gradient at unit parameter norm, keeps the ratio meaningful there."""
    if hasattr(shape, "penalty_blocks"):        # a deep shape (ufm/deep.py) lists its own blocks
        blocks, lam_min = shape.penalty_blocks(reg), shape.min_lam(reg)
    else:
        nW, nH, nb = shape.sizes
        blocks = zip(((0, nW), (nW, nW + nH), (nW + nH, nW + nH + nb)), (reg.lam_W, reg.lam_H, reg.lam_b))
        lam_min = jnp.minimum(reg.lam_W, reg.lam_H)
    pen2 = data2 = jnp.zeros((), x.dtype)
    for (lo, hi), lam in blocks:
        if hi > lo:
            pen = lam * x[lo:hi]
            pen2 = pen2 + pen @ pen
            data = g[lo:hi] - pen
            data2 = data2 + data @ data
    return jnp.sqrt(data2) + jnp.sqrt(pen2) + lam_min


def relative_stationarity(gnorm, scale):
    """‖∇f‖ / scale, with 0/0 = 0 (an exact critical point such as the origin) and x/0 = inf."""
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.where(scale > 0, gnorm / safe, jnp.where(gnorm == 0, 0.0, jnp.inf))


@aot.jit(static_argnames=("solver", "shape"))
def _start(solver, x0, reg, shape) -> Carry:
    init, _, _ = solver.parts(reg, shape)
    dtype = x0.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    return Carry(x=x0, state=init(x0), k=jnp.asarray(0, jnp.int32), status=jnp.asarray(_RUNNING, jnp.int32),
                 f=nan, gnorm=nan, rel=nan, best=jnp.asarray(jnp.inf, dtype), since=jnp.asarray(0, jnp.int32),
                 f_mark=nan)


#: the carry is donated: each chunk then updates the iterate and the solver's state (L-BFGS keeps 2·memory + 4
#: P-vectors) in place. Without it every chunk call copied the whole state into fresh buffers, and once an iteration
#: takes longer than solvers.CHUNK_SECONDS every iteration is its own chunk: at (K, d, n) = (1000, 512, 10), 5.6·10⁶
#: parameters, L-BFGS touched ~2.7 GB of new pages per step (1.1 GB with donation) and peaked at 3.98 GiB RSS
#: (2.93 GiB), `python benchmarks/bench_k1000.py --churn` (benchmarks/results/scale_cpu.md)
@aot.jit(static_argnames=("solver", "shape", "length", "every"), donate_argnames=("carry",))
def _advance(solver, carry: Carry, reg, shape, gtol, rtol, max_steps, n_iter, offset, length: int, every: int):
    """Run at most ``n_iter`` ≤ ``length`` iterations of ``solver`` from ``carry``. Each iteration evaluates f, ∇f at
    the iterate, stops with a status (non-finite; stationary: ‖∇f‖ ≤ gtol and relative ≤ rtol; ``max_steps``
    updates; in ``patience`` iterations neither a new best ‖∇f‖ by 0.1% nor f 0.1% below its mark) or updates.
    ``offset + k`` numbers the steps across stages: snapshots are kept at multiples of ``every``."""
    _, value_grad, update = solver.parts(reg, shape)
    dtype = carry.x.dtype
    rows = length // every + 1 if every else 0
    trace0 = ChunkTrace(f=jnp.full((length,), jnp.nan, dtype), g=jnp.full((length,), jnp.nan, dtype),
                        count=jnp.asarray(0, jnp.int32), snaps=jnp.zeros((rows, carry.x.size), dtype),
                        snap_steps=jnp.full((rows,), -1, jnp.int32), n_snaps=jnp.asarray(0, jnp.int32))

    def cond(c):
        carry, tr = c
        return (carry.status == _RUNNING) & (tr.count < n_iter)

    def body(c):
        carry, tr = c
        x, k = carry.x, carry.k
        f, g = value_grad(x, carry.state)
        gnorm = jnp.linalg.norm(g)
        rel = relative_stationarity(gnorm, stationarity_scale(x, g, reg, shape))
        # progress is a new best ‖∇f‖ by 0.1%, or f 0.1% below its mark (f where progress in f was last seen; far
        # above the ulps f moves at a floating-point floor, and a slow creep, e.g. along a kink, still stalls).
        # ‖∇f‖ alone is not monotone: a descent leaving a small start, or crossing indefinite regions (d < K − 1),
        # lowers f at every step while ‖∇f‖ grows: at (K, d, n) = (8, 3, 2) Newton-CG took f from 2.08 to 0.23 in
        # 25 steps with ‖∇f‖ rising 0.06 → 0.29 and was called STALLED ("floating-point floor";
        # tests/test_many_classes.py)
        f_fell = f < carry.f_mark - 1e-3 * jnp.abs(carry.f_mark)
        improved = (gnorm < carry.best * (1.0 - 1e-3)) | f_fell
        since = jnp.where(improved, 0, carry.since + 1)
        status = jnp.select(
            [~(jnp.isfinite(f) & jnp.isfinite(gnorm)), (gnorm <= gtol) & (rel <= rtol), k >= max_steps,
             since >= solver.patience],
            [Status.NONFINITE, Status.CONVERGED, Status.MAX_STEPS, Status.STALLED],
            _RUNNING,
        ).astype(jnp.int32)
        keep = status != _RUNNING
        # the update only when the loop goes on: a stopped iterate's step (a whole Newton-CG solve at the converged
        # point) was computed and thrown away before
        x_new, state_new = jax.lax.cond(keep, lambda: (x, carry.state), lambda: update(x, carry.state, f, g))
        if every:
            snap = ((offset + k) % every == 0)
            tr = tr._replace(snaps=tr.snaps.at[tr.n_snaps].set(jnp.where(snap, x, tr.snaps[tr.n_snaps])),
                             snap_steps=tr.snap_steps.at[tr.n_snaps].set(jnp.where(snap, offset + k,
                                                                                   tr.snap_steps[tr.n_snaps])),
                             n_snaps=tr.n_snaps + snap.astype(jnp.int32))
        tr = tr._replace(f=tr.f.at[tr.count].set(f), g=tr.g.at[tr.count].set(gnorm), count=tr.count + 1)
        carry = Carry(
            x=jnp.where(keep, x, x_new), state=jax.tree.map(lambda a, b: jnp.where(keep, a, b), carry.state, state_new),
            k=jnp.where(keep, k, k + 1), status=status, f=f, gnorm=gnorm, rel=rel,
            best=jnp.minimum(carry.best, gnorm), since=since,
            f_mark=jnp.where(f_fell | ~jnp.isfinite(carry.f_mark), f, carry.f_mark))
        return carry, tr

    return jax.lax.while_loop(cond, body, (carry, trace0))


# ----------------------------------------------------------------------------------------------------------------
# Solvers


def _derivatives(reg, shape):
    """f, (f, ∇f) and x ↦ (v ↦ ∇²f(x)v) (forward-over-reverse) for objective (7) at fixed λ's and shape.

    Inside a loop over v at one x (a CG solve), XLA's loop-invariant code motion takes the primal half of the
    product (W H, the softmax, G) out of the loop: counted in the compiled program, a CG iteration runs the six
    tangent GEMMs dW H + W dH, dG Hᵀ + G dHᵀ, Wᵀ dG + dWᵀ G and no exponential (tests/test_hvp.py), so an explicit
    ``jax.linearize`` per Newton step would save nothing."""
    # a deep shape (ufm/deep.py) carries its own flat objective; eq. (7)'s otherwise
    f = functools.partial(getattr(shape, "flat_objective", flat_objective), reg=reg, shape=shape)
    grad = jax.grad(f)
    hvp_at = lambda x: (lambda v: jax.jvp(grad, (x,), (v,))[1])
    return f, jax.value_and_grad(f), hvp_at


@dataclasses.dataclass(frozen=True)
class LBFGS:
    """optax L-BFGS with a zoom line search (strong Wolfe, approximate-decrease safeguard)."""

    memory: int = 10
    patience: int = 200
    name = "lbfgs"

    def parts(self, reg, shape):
        import optax        # here, not at import: a warm process that loads its compiled programs never needs it

        f, _, _ = _derivatives(reg, shape)
        opt = optax.lbfgs(memory_size=self.memory,
                          linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
        vg = optax.value_and_grad_from_state(f)

        # the state: optax's, and the line-search evaluations so far (a work counter, solvers.Solution.work)
        def update(x, state, v, g):
            u, opt_state = opt.update(g, state[0], x, value=v, grad=g, value_fn=f)
            steps = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
            return x + u, (opt_state, state[1] + jnp.asarray(steps, jnp.int32))

        return ((lambda x: (opt.init(x), jnp.asarray(0, jnp.int32))), (lambda x, s: vg(x, state=s[0])), update)


@dataclasses.dataclass(frozen=True)
class FirstOrder:
    """Fixed-step first-order methods from optax: ``gd``, ``momentum`` (Nesterov, 0.9) or ``adam``."""

    method: str = "gd"
    lr: float = 0.5
    patience: int = 10**9  # first-order methods make slow monotone progress; only max_steps stops them
    name = "first-order"

    def parts(self, reg, shape):
        import optax

        f, vg, _ = _derivatives(reg, shape)
        opt = {
            "gd": lambda: optax.sgd(self.lr),
            "momentum": lambda: optax.sgd(self.lr, momentum=0.9, nesterov=True),
            "adam": lambda: optax.adam(self.lr),
        }[self.method]()

        def update(x, state, v, g):
            u, state = opt.update(g, state, x)
            return x + u, state

        return opt.init, (lambda x, s: vg(x)), update


class NewtonStats(NamedTuple):
    """Work counters a Newton-CG stage carries as its state (timing-free: they do not depend on the machine's load).

    ``hvps``: Hessian-vector products (one per CG iteration); ``evals``: value-and-gradient evaluations inside the
    line searches (the loop adds one per iterate); ``steps``: directions computed; ``cg_max``: the most CG iterations
    one step took; ``gnorm``/``eta``: ‖∇f‖ and the forcing term of the last step (the Eisenstat–Walker memory);
    ``nc_length``: the length of the last accepted step along a negative-curvature exit (inf before the first), where
    the next such line search starts (``NewtonCG.line_search``)."""

    hvps: jax.Array
    evals: jax.Array
    steps: jax.Array
    cg_max: jax.Array
    gnorm: jax.Array
    eta: jax.Array
    nc_length: jax.Array


#: Eisenstat–Walker "choice 2" with its safeguard (SIAM J. Sci. Comput. 17(1), 1996): η_k = γ(‖g_k‖/‖g_{k−1}‖)^α,
#: raised to γη_{k−1}^α when that is above 0.1, capped at ETA_MAX
EW_GAMMA, EW_ALPHA, ETA_MAX = 0.9, 2.0, 0.5
#: NewtonCG's forcing rules (how accurately CG solves each Newton system)
FORCING = ("ew", "sqrt")
#: NewtonCG's line searches: where the search after a negative-curvature exit starts
LINE_SEARCHES = ("nc-memory", "backtrack")


@dataclasses.dataclass(frozen=True)
class NewtonCG:
    """Truncated Newton: CG on Hessian-vector products (forward-over-reverse) with negative-curvature exit,
    then a backtracking line search that accepts a step decreasing f (Armijo) or, once f is at round-off,
    decreasing ‖∇f‖. Converges quadratically near a nondegenerate-up-to-symmetry minimum.

    ``forcing``: how accurately CG solves ∇²f p = −∇f, to ‖r‖ ≤ η‖∇f‖. ``"ew"`` (default): Eisenstat–Walker choice 2,
    η follows the observed decrease of ‖∇f‖ (loose while far from a minimum, where an accurate Newton step is wasted
    on a model that does not hold; tight, hence quadratic, once ‖∇f‖ falls fast); the first step takes the ``"sqrt"``
    η. ``"sqrt"``: η = min(0.5, √‖∇f‖), the rule before (not scale-free: a small gradient asks for an accurate solve
    from the first step). Counted with ``Solution.work`` at (K, d) = (100, 100), λ = 1e-4, CE: "ew" took 223
    Hessian-vector products where "sqrt" took 372 at 1.1·10⁵ parameters, 186 against 233 at 10⁶ and 209 against 263
    at 10⁷ (benchmarks/results/scale_cpu.md); the same f to 15 digits where compared (10⁵, 10⁶).

    ``line_search``: where the backtracking starts after CG ends on negative curvature. There the quadratic model
    has no minimiser along the direction, so the unit step carries no length information: the truncated direction
    was up to 2·10⁶ long at (K, d, n) = (200, 100, 10) and the halving from t = 1 took up to 19 evaluations.
    ``"nc-memory"`` starts such a search at twice the length of the last accepted negative-curvature step
    (t₀ = min(1, 2ℓ/‖p‖)), the initial-step-length rule of Nocedal & Wright, *Numerical Optimization* (2nd ed.,
    2006) §3.5, which for directions without a natural scale starts from the previous iteration's step; when t₀ < 1
    is accepted at once the step is doubled while f keeps falling (up to t = 1), so the memory can grow as well as
    shrink. Steps whose CG ended on positive curvature keep the unit Newton step. ``"backtrack"`` (default): every
    search halves from t = 1. The memory is not the default: it saves value-and-gradients but not the products, and
    below the ETF dimension it moved solves to other local minima, higher in 8 of 11 seeds at (30, 10, 3). Counted with ``Solution.work`` over seeds 0–3 at (200, 100, 10), λ = 1e-4:
    1112 → 720 value-and-gradients, 1899 → 1828 Hessian-vector products (benchmarks/bench_newton_ls.py,
    benchmarks/results/scale_cpu.md)."""

    cg_max: int = 250
    patience: int = 25
    forcing: str = "ew"
    line_search: str = "backtrack"
    name = "newton-cg"

    def parts(self, reg, shape):
        f, vg, hvp_at = _derivatives(reg, shape)
        cg_max = self.cg_max
        if self.forcing not in FORCING:
            raise UFMInputError("forcing", self.forcing, f"use one of {', '.join(FORCING)}")
        ew = self.forcing == "ew"
        if self.line_search not in LINE_SEARCHES:
            raise UFMInputError("line_search", self.line_search, f"use one of {', '.join(LINE_SEARCHES)}")
        memory = self.line_search == "nc-memory"

        def direction(x, g, tol):
            hvp = hvp_at(x)
            gnorm = jnp.linalg.norm(g)

            def cond(c):
                return (c["i"] < cg_max) & ~c["done"]

            def body(c):
                p, r, d = c["p"], c["r"], c["d"]
                Hd = hvp(d)
                curv = d @ Hd
                negative = curv <= 1e-14 * (d @ d)
                alpha = (r @ r) / jnp.where(negative, 1.0, curv)
                p_new = p + alpha * d
                r_new = r + alpha * Hd
                beta = (r_new @ r_new) / (r @ r)
                done_now = negative | (jnp.linalg.norm(r_new) <= tol)
                # On negative curvature keep the last p (or −g if none yet): a descent direction either way.
                p_out = jnp.where(negative, jnp.where(c["i"] == 0, -g, p), p_new)
                return dict(p=p_out, r=jnp.where(negative, r, r_new), d=-r_new + beta * d,
                            i=c["i"] + 1, done=done_now, negative=negative)

            c = jax.lax.while_loop(cond, body, dict(p=jnp.zeros_like(g), r=g, d=-g, i=0, done=gnorm == 0,
                                                    negative=jnp.asarray(False)))
            return c["p"], jnp.asarray(c["i"], jnp.int32), c["negative"]

        def forcing_term(gnorm, stats):
            eta = jnp.minimum(ETA_MAX, jnp.sqrt(gnorm))
            if ew:
                ratio = gnorm / jnp.where(stats.gnorm > 0, stats.gnorm, 1.0)
                eta_ew = EW_GAMMA * ratio ** EW_ALPHA
                floor = EW_GAMMA * stats.eta ** EW_ALPHA
                eta_ew = jnp.where(floor > 0.1, jnp.maximum(eta_ew, floor), eta_ew)
                # the first step has no history: the sqrt rule's η
                eta = jnp.where(stats.steps > 0, jnp.minimum(eta_ew, ETA_MAX), eta)
            return eta

        def init(x):
            zero = jnp.asarray(0, jnp.int32)
            return NewtonStats(hvps=zero, evals=zero, steps=zero, cg_max=zero, gnorm=jnp.zeros((), x.dtype),
                               eta=jnp.asarray(ETA_MAX, x.dtype), nc_length=jnp.asarray(jnp.inf, x.dtype))

        def update(x, stats, v, g):
            gnorm = jnp.linalg.norm(g)
            eta = forcing_term(gnorm, stats)
            p, iters, negative = direction(x, g, eta * gnorm)
            slope = g @ p
            pnorm = jnp.linalg.norm(p)
            one = jnp.asarray(1.0, x.dtype)
            # the first trial step: t = 1, or after a negative-curvature exit twice the last such accepted step
            t0 = one
            if memory:
                t0 = jnp.where(negative & (2 * stats.nc_length < pnorm),
                               2 * stats.nc_length / jnp.where(pnorm > 0, pnorm, 1.0), one)

            def acceptable(t, v_new, g_new):
                return jnp.isfinite(v_new) & ((v_new <= v + 1e-4 * t * slope) | (
                    (v_new <= v + 1e-12 * jnp.abs(v)) & (jnp.linalg.norm(g_new) < gnorm)))

            def ls_cond(c):
                return (c["j"] < 40) & ~c["ok"]

            def ls_body(c):
                t = jnp.where(c["j"] == 0, t0, 0.5 * c["t"])
                v_new, g_new = vg(x + t * p)
                return dict(t=t, j=c["j"] + 1, ok=acceptable(t, v_new, g_new), f=v_new)

            c = jax.lax.while_loop(ls_cond, ls_body, dict(t=one, j=0, ok=False, f=v))
            t, evals = c["t"], c["j"]
            if memory:
                # the remembered length was accepted at once: double while f keeps falling (Armijo holding), up to
                # t = 1, so that the memory follows a growing scale too
                def grow_cond(e):
                    return e["go"] & (e["j"] < 40)

                def grow_body(e):
                    t2 = jnp.minimum(2 * e["t"], 1.0)
                    v2, _ = vg(x + t2 * p)
                    better = jnp.isfinite(v2) & (v2 < e["f"]) & (v2 <= v + 1e-4 * t2 * slope)
                    return dict(t=jnp.where(better, t2, e["t"]), f=jnp.where(better, v2, e["f"]),
                                go=better & (t2 < 1), j=e["j"] + 1)

                e = jax.lax.while_loop(grow_cond, grow_body,
                                       dict(t=t, f=c["f"], go=c["ok"] & (evals == 1) & (t0 < 1), j=0))
                t, evals = e["t"], evals + e["j"]
            stats = NewtonStats(hvps=stats.hvps + iters, evals=stats.evals + jnp.asarray(evals, jnp.int32),
                                steps=stats.steps + 1, cg_max=jnp.maximum(stats.cg_max, iters), gnorm=gnorm, eta=eta,
                                nc_length=jnp.where(negative & c["ok"], t * pnorm, stats.nc_length))
            return jnp.where(c["ok"], x + t * p, x), stats

        return init, (lambda x, s: vg(x)), update


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
    """Levenberg–Marquardt on the system ∇f = 0, whose Jacobian is the symmetric Hessian: each step solves
    (H² + μI) p = −H∇f by CG on Hessian-vector products, μ = c‖∇f‖, and is taken when it lowers ‖∇f‖ (c shrinks
    on success, grows on failure). Near any critical point, of any index, μ → 0 and the step becomes the
    minimum-norm Newton step: quadratic convergence to saddles as well as minima. The symmetry null space makes H
    singular; μ > 0 handles it. Used by the census; ``--solver lm`` to find the critical point nearest a start."""

    cg_max: int = 200
    patience: int = 60
    name = "lm"

    def parts(self, reg, shape):
        f, vg, hvp_at = _derivatives(reg, shape)

        def update(x, c, v, g):
            hvp = hvp_at(x)
            gnorm = jnp.linalg.norm(g)
            mu = c * gnorm
            rhs = -hvp(g)
            p, _ = jax.scipy.sparse.linalg.cg(lambda u: hvp(hvp(u)) + mu * u, rhs, tol=1e-3 * jnp.minimum(1.0, gnorm),
                                              maxiter=self.cg_max)
            ok = jnp.linalg.norm(vg(x + p)[1]) < gnorm
            return jnp.where(ok, x + p, x), jnp.where(ok, jnp.maximum(c / 4.0, 1e-12), jnp.minimum(c * 4.0, 1e12))

        return (lambda x: jnp.asarray(1.0, x.dtype)), (lambda x, s: vg(x)), update


@dataclasses.dataclass(frozen=True)
class Chain:
    """Run stages in turn, each from where the last stopped, until one reaches gtol. ``stage_gtol[i]`` is a
    looser target for stage i (None: the final gtol). The default tries Newton-CG first (measured 2–7× faster than
    L-BFGS at (10, 64, 100) on every built-in loss, benchmarks/bench_solvers.py); if it stalls or runs out of
    steps, L-BFGS takes over to 1e-6 and Newton-CG finishes (the quadratic endgame L-BFGS lacks)."""

    stages: tuple = (NewtonCG(), LBFGS(), NewtonCG())
    stage_gtol: tuple = (None, 1e-6, None)
    name = "auto"


SOLVER_NAMES = ("auto", "lbfgs", "newton", "lm", "gd", "momentum", "adam")


def as_solver(solver="auto", *, lr: Optional[float] = None):
    """Normalise a solver spec: a solver object or one of ``auto lbfgs newton lm gd momentum adam``."""
    if hasattr(solver, "parts") or isinstance(solver, Chain):
        return solver
    if not isinstance(solver, str) or solver not in SOLVER_NAMES:
        raise UFMInputError("--solver", solver, f"use one of {', '.join(SOLVER_NAMES)}")
    if lr is not None:
        if solver not in ("gd", "momentum", "adam"):
            raise UFMInputError("--lr", lr, "only the first-order solvers gd, momentum, adam take a step size")
        if not (np.isfinite(lr) and lr > 0):
            raise UFMInputError("--lr", lr, "must be a finite number > 0")
    if solver == "auto":
        return Chain()
    if solver == "lbfgs":
        return LBFGS()
    if solver == "newton":
        return NewtonCG()
    if solver == "lm":
        return LevenbergMarquardt()
    default_lr = {"gd": 0.5, "momentum": 0.1, "adam": 1e-3}[solver]
    return FirstOrder(solver, default_lr if lr is None else float(lr))
