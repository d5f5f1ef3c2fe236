"""Many classes in few dimensions (d < K − 1, issue 11): the solve's chunks update the solver state in place, and the
solvers agree on the optimum where the simplex ETF does not fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.methods import LBFGS, NewtonCG
from ufm.model import flatten
from ufm.solvers import CHUNK_LENGTH, _advance, _start, init_params

# d = 3 < K − 1 = 7: no simplex ETF fits, so the optimum is not the closed-form NC point (docs/theory.md)
FEW_DIMS = dict(K=8, d=3, n=2, lam=1e-3)


@pytest.mark.parametrize("solver", [LBFGS(), NewtonCG()], ids=["lbfgs", "newton"])
def test_chunk_donates_the_solver_state(solver):
    # each chunk call must take over the carry's buffers (x and the method's state): a copy per chunk is what made
    # L-BFGS at 5.6·10⁶ parameters touch ~2.7 GB of new pages per step (benchmarks/results/scale_cpu.md)
    prob = ufm.Problem.create(**FEW_DIMS)
    reg = prob.reg
    x = jnp.asarray(flatten(init_params(prob, seed=0), xp=np))
    carry = _start(solver, x, reg, prob.shape)
    leaves = jax.tree.leaves(carry)
    new, tr = _advance(solver, carry, reg, prob.shape, jnp.asarray(1e-9), jnp.asarray(np.inf), jnp.asarray(100),
                       jnp.asarray(3), jnp.asarray(0), CHUNK_LENGTH, 0)
    assert int(tr.count) == 3 and int(new.k) == 3
    assert all(leaf.is_deleted() for leaf in leaves)
    assert np.isfinite(float(new.f)) and not new.x.is_deleted()


def test_solvers_agree_below_the_etf_dimension():
    # the same optimum from Newton-CG, L-BFGS and the auto chain (the chunks hand the donated state on between
    # stages); f agrees to 1e-10 relative: all three stop at ‖∇f‖ ≤ 1e-9 near a nondegenerate-up-to-symmetry
    # minimiser, where f − f* is O(‖∇f‖²/μ), far below that
    prob = ufm.Problem.create(**FEW_DIMS)
    sols = {s: ufm.solve(prob, solver=s, seed=1) for s in ("newton", "lbfgs", "auto")}
    for s, sol in sols.items():
        assert sol.status == ufm.Status.CONVERGED, (s, sol.message)
    f = [sol.objective for sol in sols.values()]
    assert max(f) - min(f) <= 1e-10 * abs(f[0])
    # Thm 3.1's value at d = K − 1 bounds f* from below for every d (a point in d dimensions embeds in more), and is
    # attained only by the simplex ETF, which needs K − 1 dimensions: here f stays strictly above it
    nc = ufm.theory_optimum(prob.replace(d=prob.K - 1))
    assert nc.applies and nc.geometry == "simplex_etf"
    assert f[0] > nc.objective * (1 + 1e-3)
