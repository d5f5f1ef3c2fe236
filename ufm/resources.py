"""Memory a run will need, estimated from the sizes before any work, and what this machine can give.

A UFM instance with P = Kd + dN + K parameters is cheap to describe and expensive to solve: the solvers keep a few
P-vectors, the logits are N×K, a dense Hessian is P×P (several copies during ``eigh`` and the symmetry deflation),
and NC snapshots keep one P-vector per recorded step. ``check_fits`` refuses, with the estimate, a run that cannot
fit in the memory available, so that it fails in a second with exit 2 instead of after minutes with a
``MemoryError`` (or inside XLA with an abort).

The counts are upper-bound style (every live buffer of the method counted once, temporaries of the objective
counted at their peak); ``UFM_MEMORY_LIMIT`` (bytes, or a number with K/M/G/T) overrides what the machine reports,
for tests and shared machines.
"""

from __future__ import annotations

import dataclasses
import os

from .errors import UFMInputError

#: P-vectors each method keeps alive (iterate, gradient, direction, line-search and CG vectors, optimiser state)
_VECTORS = {"lbfgs": 12, "newton-cg": 12, "lm": 14, "gd": 5, "momentum": 6, "adam": 7}
_LBFGS_MEMORY = 10
#: N×K temporaries of one value-and-gradient or Hessian-vector product (logits, masks, softmax, their tangents)
_LOGIT_COPIES = 10
#: P×P matrices alive on the dense Hessian path: ∇²f, its symmetrised copy, eigenvectors, eigh workspace, the
#: orbit projector, its complement and the deflated product
_DENSE_COPIES = 8
#: Lanczos basis vectors ARPACK keeps (ncv ≤ 40 here) plus the HVP's temporaries (the JAX-native eigensolver's count
#: is eigensolvers.vectors_kept)
_LANCZOS_VECTORS = 48
#: iterations per solver chunk (solvers.CHUNK_LENGTH): the device-side trace buffers are this long
_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated peak bytes of a run, by part. ``parts`` are alive all run long; ``phases`` (name → its parts) run
    one after the other (the solve, then the curvature analysis), so only the largest of them counts."""

    parts: dict
    phases: dict = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()) + max((sum(p.values()) for p in self.phases.values()), default=0))

    def describe(self) -> str:
        common = [f"{k} {human(v)}" for k, v in self.parts.items() if v]
        for name, parts in self.phases.items():
            inner = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)
            if inner:
                common.append(f"{name}: {inner}")
        return "; ".join(common) if self.phases else ", ".join(common)


def human(nbytes: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


def _parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    return int(float(number) * scale)


def available_bytes() -> int:
    """Memory this process may use: ``UFM_MEMORY_LIMIT`` if set, else MemAvailable (Linux), else physical memory."""
    env = os.environ.get("UFM_MEMORY_LIMIT")
    if env:
        try:
            return _parse_size(env)
        except ValueError:
            raise UFMInputError("UFM_MEMORY_LIMIT", env, "must be a size such as 8G, 512M or a number of bytes") from None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62                        # unknown: never refuse on a guess


def _method_names(solver) -> list[str]:
    """The method names a solver spec runs (``auto`` chains Newton-CG and L-BFGS)."""
    if isinstance(solver, str):
        return {"auto": ["newton-cg", "lbfgs"], "newton": ["newton-cg"]}.get(solver, [solver])
    stages = getattr(solver, "stages", None) or (solver,)
    names = []
    for s in stages:
        name = getattr(s, "method", None) or getattr(s, "name", "lbfgs")
        names.append(name if name in _VECTORS else "lbfgs")
    return names


def estimate(problem, *, solver="auto", dtype: str = "float64", max_steps: int = 0, trace_every: int = 0,
             hessian: str | None = None, eigensolver: str | None = "auto", hessian_dtype: str = "float64") -> Estimate:
    """Peak memory of solving ``problem`` (and, with ``hessian`` = "dense" or "lanczos", analysing a point after;
    on the matrix-free path ``eigensolver`` (auto, jax, arpack) and ``hessian_dtype`` say which eigensolver's vectors
    count). The solve and the analysis run one after the other: the larger of the two counts."""
    item = 4 if dtype == "float32" else 8
    P = problem.num_params
    NK = problem.N * problem.K
    vectors = max(_VECTORS[m] + (2 * _LBFGS_MEMORY if m == "lbfgs" else 0) for m in _method_names(solver))
    parts = {
        # f and ‖∇f‖ of every step are kept on the host (Solution.trace_objective/trace_grad_norm): a bound at max_steps
        "per-step f and ‖∇f‖ traces": 16 * max_steps,
        # one chunk's snapshot buffer on the device; the host keeps what is recorded and thins it past a quarter of
        # the memory available (solvers.solve), so max_steps does not enter
        "NC snapshots": (min(max_steps, _CHUNK) // trace_every + 1) * P * item if trace_every else 0,
    }
    phases = {"solve": {"parameters and solver state": vectors * P * item,
                        "logits and their derivatives": _LOGIT_COPIES * NK * item}}
    if hessian == "dense":
        phases["analysis"] = {"dense Hessian": _DENSE_COPIES * P * P * 8}
    elif hessian == "lanczos":
        which = _eigensolver(P, eigensolver, hessian_dtype)
        h_item = 4 if hessian_dtype == "float32" and which == "jax" else 8
        if which == "jax":
            from .eigensolvers import vectors_kept
            kept = {"eigensolver vectors": vectors_kept(P) * P * h_item}
        else:
            kept = {"Lanczos vectors": _LANCZOS_VECTORS * P * 8}
        # the solved point stays on the host (Solution.params) while the analysis runs
        phases["analysis"] = {**kept, "solved point": P * 8, "logits and their derivatives": _LOGIT_COPIES * NK * h_item}
    return Estimate(parts, phases)


def _eigensolver(num_params: int, eigensolver: str | None, hessian_dtype: str) -> str:
    """The eigensolver whose vectors count: ``auto`` resolved as the analysis resolves it; an unknown name (refused
    later, by critical.check_eigensolver) or None counts ARPACK's, the larger."""
    if eigensolver == "auto":
        from .eigensolvers import choose_eigensolver
        return choose_eigensolver(num_params, hessian_dtype)
    return eigensolver if eigensolver in ("jax", "arpack") else "arpack"


#: what a whole ``ufm`` process holds beside the counted parts: the interpreter with jax and ufm (0.18 GiB), XLA's
#: compiled programs and the allocator's slack. Calibrated on `ufm landscape --at solution` (K = d = 100, CE,
#: λ = 1e-4; benchmarks/results/scale_cpu.md): peak RSS 0.40 GiB at 3·10⁴ parameters, 0.88 GiB at 10⁶ where the
#: counted parts (the larger phase) come to 0.32 GiB, 3.05 GiB at 10⁷ against 3.13 GiB counted; this is the largest of
#: the three differences (0.56 GiB, raised to 600 MiB for the ±0.005 GiB of the two-decimal measurements), so
#: ``estimate(...).total + RUNTIME_BYTES`` bounds all three (by 0.2, 0.02 and 0.7 GiB). Not part of ``estimate``,
#: which counts what a run allocates and what check_fits compares with what is still available.
RUNTIME_BYTES = 600 * 2**20


def peak_rss(problem, **kwargs) -> int:
    """The whole process's expected peak resident memory: the run's estimate plus the runtime's own."""
    return estimate(problem, **kwargs).total + RUNTIME_BYTES


def check_fits(problem, *, flag: str = "-K/-d/-n", have: int | None = None, **kwargs) -> Estimate:
    """Raise :class:`UFMInputError` naming ``flag`` when the estimate exceeds the memory available (``have``, read
    from the machine when not given)."""
    if flag == "-K/-d/-n" and hasattr(problem, "widths"):
        flag = "-K/-d/-n/--widths"                       # at depth the hidden widths are sizes too
    est = estimate(problem, **kwargs)
    have = available_bytes() if have is None else have
    if est.total > have:
        traces = est.parts.get("per-step f and ‖∇f‖ traces", 0)
        if est.total - traces <= have:                   # the step budget, not the sizes, is what does not fit
            raise UFMInputError("--max-steps", kwargs.get("max_steps"), f"its per-step traces need about "
                                f"{human(est.total)} ({est.describe()}), more than the {human(have)} available; "
                                "use a smaller --max-steps")
        raise UFMInputError(flag, f"K={problem.K} d={problem.d} n={problem.n} ({problem.num_params:,} parameters)",
                            f"needs about {human(est.total)} ({est.describe()}), more than the {human(have)} "
                            "available; use smaller sizes"
                            + (" or --hessian lanczos" if kwargs.get("hessian") == "dense" else "")
                            )
    return est
