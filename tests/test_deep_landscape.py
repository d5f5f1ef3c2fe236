"""The landscape of the deep UFM (docs/theory.md §12.6): Hessian-vector products against the dense Hessian and finite
differences, the symmetry orbit's zero modes against the dense Hessian's null space (an independent count), the
classification of constructed points, and `ufm landscape --depth` end to end and at its edges."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.cli import main
from ufm.deep import DeepParams, deep_objective, deep_problem, flatten, unflatten
from ufm.deep_landscape import analyze_deep_point, best_known, deep_origin, deep_origin_min_eig_theory
from ufm.deep_theory import dnc_point, dnc_value, low_rank_search, reduced_point
from ufm.hessian import MatrixFree, dense_hessian, hvp, reg_of
from ufm.symmetry import deep_orbit_tangent


def _f64(problem):
    return lambda x: deep_objective(unflatten(x, problem.shape), reg_of(problem), problem.shape)


def oracle_null_dim(problem, x, rtol=1e-7):
    """An independent count: eigenvalues of the dense Hessian (jax.hessian of deep_objective itself, numpy eigvalsh)
    with |λ| ≤ rtol·‖∇²f‖. rtol 1e-7: float64 round-off of a ~100×100 Hessian is ~1e-14 relative and the constructed
    points are critical to ~1e-10 (zero modes move by O(‖∇f‖)), while the smallest nonzero eigenvalue of every point
    here is ≥ λ/‖∇²f‖ ≈ 1e-2 relative."""
    with jax.enable_x64(True):
        Hd = np.asarray(jax.jit(jax.hessian(_f64(problem)))(jnp.asarray(x, jnp.float64)))
    ev = np.linalg.eigvalsh(0.5 * (Hd + Hd.T))
    return int(np.sum(np.abs(ev) <= rtol * np.max(np.abs(ev)))), Hd


@pytest.fixture(scope="module")
def lowrank():
    """K = 4, d = 4, n = 1, L = 2, λ = 3e-2, CE without bias: the K×K search's best is rank 2 and beats DNC (rank 3)."""
    p = deep_problem(4, 4, 1, depth=2, lam=3e-2, bias=False)
    return p, low_rank_search(p)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_hvp_matches_dense_hessian_and_finite_differences(activation):
    p = deep_problem(3, 3, 2, depth=2, lam=2e-2, activation=activation, bias=False)   # the shapes tested below
    x = flatten(p.init_params(seed=3, scale=0.7), xp=np)
    v = np.random.default_rng(1).standard_normal(x.size)
    with jax.enable_x64(True):
        reg, xj, vj = reg_of(p), jnp.asarray(x), jnp.asarray(v)
        Hv = np.asarray(hvp(xj, vj, reg, p.shape))
        Hd = np.asarray(dense_hessian(xj, reg, p.shape))
        grad = jax.grad(_f64(p))
        eps = 1e-5                # central differences: error O(ε²‖∇³f‖) ≈ 1e-10, round-off O(1e-16/ε) ≈ 1e-11
        fd = (np.asarray(grad(xj + eps * vj)) - np.asarray(grad(xj - eps * vj))) / (2 * eps)
    scale = np.linalg.norm(Hv)
    assert np.linalg.norm(Hv - Hd @ v) <= 1e-12 * scale        # the same derivative two ways: round-off only
    assert np.linalg.norm(Hv - fd) <= 1e-6 * scale


def _points():
    """(id, problem, point, expected orbit dimension by hand) at constructed critical points; each new shape costs
    seconds of compilation, so all but one run in the slow tier."""
    slow = pytest.mark.slow
    out = []
    p = deep_problem(3, 3, 2, depth=2, lam=1e-2, bias=False)
    out.append(pytest.param("dnc-linear", p, dnc_point(p), 2 * (3 - 0), id="dnc-linear"))   # r = K − 1 = 2, m = 3
    p = deep_problem(3, 4, 2, depth=2, lam=1e-2, lam_b=0.0, widths=5)
    # free bias: d = 4 (r = 2: 6 − 1 = 5), width 5 (r = 2: 10 − 3 = 7), + 1 shift
    out.append(pytest.param("free-bias-wide", p, dnc_point(p), 5 + 7 + 1, id="dnc-linear-free-bias-wide",
                            marks=slow))
    p = deep_problem(3, 3, 2, depth=3, lam=1e-2, bias=True)
    out.append(pytest.param("L3-bias", p, dnc_point(p), 3 * 3, id="dnc-linear-L3-bias", marks=slow))  # 3 junctions
    return out


@pytest.mark.parametrize("name, p, point, expected", _points())
def test_zero_modes_match_the_dense_null_space(name, p, point, expected):
    x = flatten(point, xp=np)
    cp = analyze_deep_point(p, point, reference=p.objective(point))
    null, Hd = oracle_null_dim(p, x)
    assert cp.expected_zero_modes == expected == null == cp.n_zero
    assert cp.n_zero_deflated == 0                      # the orbit accounts for every zero mode
    assert cp.min_eig_deflated > 1e-3 * cp.max_eig      # no spurious zero left after deflation
    # the orbit's basis is orthonormal and lies in the null space of the oracle Hessian
    U = deep_orbit_tangent(p, x).U
    assert U.shape == (x.size, expected)
    assert np.allclose(U.T @ U, np.eye(expected), atol=1e-10)
    assert np.linalg.norm(Hd @ U) <= 1e-7 * np.linalg.norm(Hd)
    assert cp.classification == "global_minimizer"      # judged against its own value, given as the reference


@pytest.mark.parametrize("K, d, bias, width, orbit", [
    (3, 3, False, None, 3),                                              # d = K = r = 3: 3 − 0
    pytest.param(4, 5, True, 6, 10 - 0, marks=pytest.mark.slow),         # d = 5, r = K = 4: 10 − 0
])
def test_relu_dnc_has_the_orbit_plus_the_flat_preactivation_family(K, d, bias, width, orbit):
    """ReLU: only the input junction is a symmetry (its rank r = K at the DNC point). The DNC point's first
    pre-activation P̄ = W_1H̄ (class means) is PSD with diagonal a and negative off-diagonal entries; every such P̄
    has the same ‖P̄‖_* = trace and the same ReLU(P̄) = a·I, so its K(K−1)/2 off-diagonal entries are flat too
    (docs/theory.md §12.6): orbit + K(K−1)/2 dense zeros, and the point is degenerate."""
    p = deep_problem(K, d, 2, depth=2, lam=1e-2, bias=bias, activation="relu", widths=width)
    point = dnc_point(p)
    cp = analyze_deep_point(p, point, reference=p.objective(point))
    null, _ = oracle_null_dim(p, flatten(point, xp=np))
    assert cp.expected_zero_modes == orbit and cp.junction_ranks == [[d, K]]
    assert null == cp.n_zero == orbit + K * (K - 1) // 2
    assert cp.n_zero_deflated == K * (K - 1) // 2
    assert cp.classification == "degenerate"


def test_low_rank_point_and_dnc_are_classified(lowrank):
    """The rank-2 point of the K×K search is a second-order minimum at the best known value (global in ufm's
    uncertified sense); the DNC point (rank 3) is also a second-order minimum, but above it: spurious. Both have
    λ_min⊥ = λ (docs/theory.md §12.6)."""
    p, search = lowrank
    assert search.best_rank == 2
    best = best_known(p)
    assert best["objective"] == search.best_objective and best["from"] == "low_rank_search" and not best["certified"]
    low = analyze_deep_point(p, reduced_point(p, search))
    x = low.x
    assert low.junction_ranks == [[4, 2], [4, 2]]
    assert low.expected_zero_modes == 2 * (6 - 1) == oracle_null_dim(p, x)[0] == low.n_zero
    assert low.classification == "global_minimizer" and low.bounds["certified"] is False
    dnc = analyze_deep_point(p, dnc_point(p))
    assert dnc.objective > search.best_objective + 1e-3
    assert dnc.classification == "spurious_local_minimizer"
    assert dnc.expected_zero_modes == 2 * (6 - 0) == dnc.n_zero
    for cp in (low, dnc):
        assert cp.min_eig_deflated == pytest.approx(3e-2, rel=1e-6)
        assert abs(cp.min_eig) <= cp.zero_tol


@pytest.mark.parametrize("eigensolver", ["arpack", pytest.param("jax", marks=pytest.mark.slow)])
def test_matrix_free_agrees_with_dense(lowrank, eigensolver):
    p, search = lowrank
    point = reduced_point(p, search)
    dense = analyze_deep_point(p, point, reference=search.best_objective)
    free = analyze_deep_point(p, point, reference=search.best_objective, hessian="lanczos", eigensolver=eigensolver)
    assert free.classification == dense.classification
    assert free.min_eig_deflated == pytest.approx(dense.min_eig_deflated, rel=1e-6)
    assert free.max_eig == pytest.approx(dense.max_eig, rel=1e-8)
    assert free.n_zero == dense.n_zero                  # matrix-free: the orbit dimension, once λ_min⊥ > zero_tol
    assert free.curvature["eigensolver"] == eigensolver and free.curvature["matvecs"] > 0


def test_origin_block_is_the_penalty():
    """At depth ≥ 2 the logits are a product of ≥ 3 factors, so ∇²f(0) on the factors is diag(λ): without a bias
    λ_min = min(λ_l, λ_H)."""
    p = deep_problem(3, 3, 2, depth=2, lam_layers="0.02,0.05", lam_H=0.03, bias=False)
    cp = analyze_deep_point(p, deep_origin(p), reference=0.0)
    assert cp.grad_norm == 0.0
    assert cp.min_eig == pytest.approx(deep_origin_min_eig_theory(p), rel=1e-12) and deep_origin_min_eig_theory(p) == 0.02
    assert cp.classification == "spurious_local_minimizer"       # above the (given) reference 0


def test_public_api_and_depth_one_dispatch(lowrank):
    assert ufm.analyze_deep_point is analyze_deep_point
    p, search = lowrank
    cp = ufm.analyze_point(p, reduced_point(p, search))          # the one-layer entry point dispatches on depth
    assert isinstance(cp, ufm.DeepCriticalPoint) and cp.record()["depth"] == 2


def _run(capsys, *args):
    try:
        code = main(["landscape", *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


LOWRANK = ["-K", "4", "-d", "4", "-n", "1", "--lam", "3e-2", "--no-bias", "--depth", "2"]


def test_cli_dnc_json_and_human(capsys, lowrank):
    p, search = lowrank
    code, out, err = _run(capsys, *LOWRANK, "--at", "dnc", "--json")
    assert code == 0, err
    rec = json.loads(out)
    cp = rec["critical_points"][0]
    assert rec["at"] == "dnc" and rec["config"]["depth"] == 2 and "neither is certified" in rec["global_rule"]
    assert cp["classification"] == "spurious_local_minimizer"
    assert cp["objective"] == pytest.approx(dnc_value(p).objective, rel=1e-12)
    assert cp["n_zero"] == cp["expected_zero_modes"] == 12 and cp["junction_ranks"] == [[4, 3], [4, 3]]
    assert cp["best_known"]["objective"] == pytest.approx(search.best_objective) and cp["bounds"]["certified"] is False
    code, out, err = _run(capsys, *LOWRANK, "--at", "dnc")
    assert code == 0
    assert "spurious_local_minimizer" in out and "junction (width, rank) (4, 3), (4, 3)" in out
    assert "neither is certified" in out


# flag combinations that mean nothing: each must exit 2 with one line naming the flag, before any work
BAD = [
    (["-K", "3", "-d", "3", "-n", "2", "--at", "dnc"], "--at"),                              # depth 1
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--widths", "1", "--at", "dnc"], "--at"),  # width < K − 1
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--at", "dnc", "--seed", "1"], "--seed"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--at", "dnc", "--starts", "3"], "--starts"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--at", "origin", "--solver", "lm"], "--solver"),
    (["-K", "3", "-d", "3", "-n", "2", "--widths", "4"], "--widths"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--lam-layers", "1e-2,1e-2,1e-2"], "--lam-layers"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "3", "--widths", "3,3,3"], "--widths"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "0"], "--depth"),
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--activation", "tanh"], "--activation"),
    (["-K", "3", "-d", "3", "-n", "1,2,3", "--depth", "2", "--at", "dnc"], "--at"),           # unbalanced
    (["-K", "3", "-d", "3", "-n", "2", "--depth", "2", "--hessian", "dense", "--eigensolver", "jax"], "--eigensolver"),
]


def _fuzz_cases(seed=0, count=12):
    """Random valid problem flags joined with one bad combination from BAD's kinds, at random positions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        args, flag = BAD[rng.integers(len(BAD))]
        extra = [["--lam", str(rng.choice([1e-3, 5e-2]))], ["--json"], ["--no-escape"], ["--hessian", "auto"]]
        picks = [extra[i] for i in rng.permutation(len(extra))[: rng.integers(0, 3)]]
        if "--hessian" in args:
            picks = [e for e in picks if e[0] != "--hessian"]
        out.append(([*args, *(a for e in picks for a in e)], flag))
    return out


@pytest.mark.parametrize("args, flag", BAD + _fuzz_cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_flag_combinations_exit_2_with_one_line(capsys, monkeypatch, args, flag):
    import ufm.critical
    import ufm.solvers

    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    for mod, name in [(ufm.solvers, "solve"), (ufm.critical, "first_order"), (ufm.critical, "measure_spectrum")]:
        monkeypatch.setattr(mod, name, boom)
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], err


@pytest.mark.slow
def test_dnc_beaten_by_rank_5_is_a_local_minimum():
    """(K, d, n, L, λ) = (10, 10, 1, 2, 3e-3), CE without bias: the K×K search's best (rank 5 in the search's
    record) is below the DNC value, and the DNC point is a second-order minimum modulo its 90-dimensional orbit
    (docs/theory.md §12.6), hence a spurious local minimum, not a strict saddle."""
    p = deep_problem(10, 10, 1, depth=2, lam=3e-3, bias=False)
    best = best_known(p)
    cp = analyze_deep_point(p, dnc_point(p))
    assert best["objective"] < cp.objective - 1e-3
    assert cp.classification == "spurious_local_minimizer"
    assert cp.n_zero == cp.expected_zero_modes == 90 == oracle_null_dim(p, cp.x)[0]
    assert cp.min_eig_deflated > 1e-3


@pytest.mark.slow
def test_census_and_escape_at_depth(capsys):
    code, out, err = _run(capsys, "-K", "3", "-d", "3", "-n", "2", "--lam", "3e-2", "--depth", "2", "--at", "census",
                          "--starts", "4", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["census"]["converged"] >= 1
    for cp in rec["critical_points"]:
        assert cp["classification"] in ufm.critical.CLASSES
        if cp["classification"] != "degenerate" and cp["n_zero"] is not None:
            assert cp["n_zero"] == cp["expected_zero_modes"]


@pytest.mark.slow
@pytest.mark.parametrize("lam_b, width", [(None, 5), (0.0, 4)])
def test_low_rank_points_with_bias_zero_modes(lam_b, width):
    """The K×K search's best point with a regularised bias (wider hidden layer) or a free bias (+1 shift mode):
    orbit dimension by the junction formula = the dense null space."""
    p = deep_problem(4, 4, 1, depth=2, lam=3e-2, lam_b=lam_b, bias=True, widths=width)
    search = low_rank_search(p)
    point = reduced_point(p, search)
    cp = analyze_deep_point(p, point, reference=search.best_objective)
    r = search.best_rank
    assert r < 4 - 1                                            # a genuinely low-rank point, below DNC's K − 1
    expected = (6 - (4 - r) * (3 - r) // 2) + (width * (width - 1) // 2 - (width - r) * (width - r - 1) // 2) \
        + int(lam_b == 0.0)
    assert cp.expected_zero_modes == expected == cp.n_zero == oracle_null_dim(p, cp.x)[0]
    assert cp.n_zero_deflated == 0 and cp.classification == "global_minimizer"


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_same_orbit_sees_the_junction_rotations(activation):
    """A point moved along the orbit (a random Q at every symmetric junction) is the same critical point for the
    census's dedupe and has the same objective; a perturbed one is not."""
    from ufm.landscape import same_orbit
    from ufm.symmetry import deep_junctions

    p = deep_problem(3, 3, 2, depth=3, lam=1e-2, bias=False, activation=activation, widths=4)
    point = p.init_params(seed=5, scale=0.8)
    rng = np.random.default_rng(0)
    factors = [np.asarray(W) for W in point.Ws] + [np.asarray(point.H)]
    for _, m, left, right in deep_junctions(p):
        Q, _ = np.linalg.qr(rng.standard_normal((m, m)))
        factors[left], factors[right] = factors[left] @ Q.T, Q @ factors[right]
    moved = DeepParams(tuple(factors[:-1]), factors[-1], None)
    x, y = flatten(point, xp=np), flatten(moved, xp=np)
    assert len(deep_junctions(p)) == (3 if activation == "linear" else 1)
    assert p.objective(moved) == pytest.approx(p.objective(point), rel=1e-12)
    assert same_orbit(p, x, y)
    assert not same_orbit(p, x, y + 1e-3 * rng.standard_normal(y.size))
