"""ufm: a JAX laboratory for the unconstrained feature model (UFM) of neural collapse.

Objective (7) of Zhou et al. (NeurIPS 2022), certified float64 solves, NC metrics and the theory optimum.

The public names below load on first use (PEP 562), so ``ufm --help`` starts without importing JAX. The package
never changes JAX's global configuration on import; ``solve`` runs in a scoped float64 context.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "errors": ("NotConvergedError", "UFMInputError"),
    "losses": ("CrossEntropy", "FocalLoss", "LabelSmoothing", "Loss", "RescaledMSE", "UserLoss", "as_loss"),
    "metrics": ("nc_metrics",),
    "model": ("Params", "objective"),
    "problem": ("Problem", "Reg"),
    "report": ("save_npz", "solution_record"),
    "solvers": ("Solution", "Status", "init_params", "solve"),
    "batch": ("solve_batch",),
    "theory": ("TheoryOptimum", "theory_optimum", "theory_point"),
    "bounds": ("Bounds", "problem_bounds"),
    "critical": ("CriticalPoint", "Tolerances", "analyze_point", "mse_saddle_point", "origin"),
    "landscape": ("Census", "census", "escape"),
    "lifting": ("Lifted", "lifted_optimum"),
    "grid": ("Grid", "SweepOptions", "build_grid"),
    "store": ("export_sweep", "load_sweep"),
    "sweep": ("SweepSummary", "run_sweep"),
    "analysis": ("analyze",),
    "lastlayer": ("LastLayer", "last_layer"),
    "deep": ("DeepParams", "DeepProblem", "deep_problem"),
    "deep_theory": ("dnc_value", "dnc_point", "low_rank_search"),
    "deep_report": ("deep_record",),
    "deep_landscape": ("DeepCriticalPoint", "analyze_deep_point"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ufm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
