"""The JAX-native eigensolver (ufm/eigensolvers.py) against dense eigh and ARPACK: values and residuals, at an NC
minimum (a cluster of exact zeros), at a strict saddle (the origin), with the orbit deflation, float64 and float32;
and the selection flags, refused where they would be ignored."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.critical import Tolerances, analyze_point, check_eigensolver
from ufm.eigensolvers import (
    WHICH,
    DeviceCurvature,
    choose_eigensolver,
    residual_tolerance,
    thick_restart_lanczos,
)
from ufm.errors import UFMInputError
from ufm.hessian import MatrixFree, dense_hessian
from ufm.model import flatten
from ufm.symmetry import orbit_tangent, project

# one small shape for every device solve (one compiled program per dtype): rank W = K − 1 = 3 < d = 8, free softmax
# bias, so the NC minimum has d(d−1)/2 − (d−r)(d−r−1)/2 + 1 = 28 − 10 + 1 = 19 exact zero eigenvalues
PROB = ufm.Problem.create(4, 8, 3, lam=5e-3, lam_b=0.0)


def _nc_minimum():
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(PROB.d, PROB.d)))
    return flatten(ufm.theory_point(PROB, rotation=Q), xp=np)


POINTS = {"nc_minimum": _nc_minimum, "origin": lambda: np.zeros(PROB.num_params)}


def _dense(x):
    """The oracle: dense ∇²f, its spectrum, and the spectrum of the deflated (I − P)H(I − P) + σP with σ set as the
    JAX path sets it."""
    with jax.enable_x64(True):
        reg = MatrixFree(PROB, x).reg                      # the arrays analyze_point passes: one compiled Hessian
        Hd = np.asarray(dense_hessian(jnp.asarray(x), reg, PROB.shape))
        t = orbit_tangent(PROB, x)
        Pm = np.asarray(jax.vmap(lambda e: project(t, jnp.asarray(x), e, PROB.shape))(jnp.eye(x.size))).T
    theta = np.linalg.eigvalsh(Hd)
    norm = np.max(np.abs(theta))
    sigma = theta[-1] + 0.01 * norm
    Qc = np.eye(x.size) - Pm
    perp = np.linalg.eigvalsh(Qc @ Hd @ Qc + sigma * Pm)
    return Hd, theta, perp[0], t, sigma, norm


def test_lanczos_finds_both_ends_through_krylov_breakdowns():
    # five distinct eigenvalues, one of them 0 with multiplicity 150: the Krylov space of any start vector is
    # exhausted after five steps (a breakdown in every cycle), as at an NC optimum
    rng = np.random.default_rng(3)
    n = 400
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    ev = np.repeat([-0.7, 0.0, 0.3, 1.1, 2.5], [3, 150, 100, 100, 47])
    A = jnp.asarray((Q * ev) @ Q.T)
    run = jax.jit(lambda v, w: thick_restart_lanczos(lambda u: A @ u, v, which=w, rtol=1e-10))
    v0 = jnp.asarray(rng.normal(size=n))
    for which in ("min", "max", "both"):
        res = run(v0, WHICH[which])
        assert bool(res.converged)
        for i, want in ((0, -0.7), (1, 2.5)):
            if which in ("both", ("min", "max")[i]):
                v = np.asarray(res.vectors[i])
                true_residual = np.linalg.norm(np.asarray(A) @ v - float(res.values[i]) * v)
                assert float(res.values[i]) == pytest.approx(want, abs=1e-12)
                assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-12)
                # the estimate |β sⱼ| is the true residual (full reorthogonalisation), both far below 1e-10·‖A‖
                assert true_residual <= 2.5e-10 and float(res.estimates[i]) <= 2.5e-10
                assert true_residual == pytest.approx(float(res.estimates[i]), abs=1e-13)


# float32 repeats the float64 oracle at its own tolerance: slow tier (time)
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_device_eigenpairs_match_dense_eigh_and_arpack(dtype):
    # one test per dtype, both points inside: the device program compiles once per dtype and process
    for name, expected in (("nc_minimum", "global_minimizer"), ("origin", "strict_saddle")):
        x = POINTS[name]()
        Hd, theta, perp_dense, tangent, sigma, norm = _dense(x)
        dev = DeviceCurvature(PROB, x, dtype)
        low, high = dev.extremes(vectors=(0, 1) if dtype == "float32" else (0,))
        if dtype == "float64":                   # one eigenvector a float64 run: λ_max's from a second run
            high = dev.extremes(vectors=(1,))[1]
        perp = dev.smallest_deflated(tangent, sigma, norm)
        # a Ritz value is within its residual of the spectrum: by default a run asks residual ≤ 1e-10·‖H‖ in float64
        # (1% of the 1e-8·‖H‖ zero tolerance) and ≤ 1e-5·‖H‖ in float32 (its floor), and float32 adds the rounding of
        # x and of H's entries (ε₃₂·‖H‖ ≈ 1e-7·‖H‖)
        assert (dev.rtol, dev.atol) == residual_tolerance(1e-8, 0.0, dtype) == ({"float64": 1e-10, "float32": 1e-5}[dtype], 0.0)
        tol = {"float64": 1e-9, "float32": 1e-4}[dtype] * norm
        assert low.value == pytest.approx(theta[0], abs=tol), name
        assert high.value == pytest.approx(theta[-1], abs=tol), name
        assert perp.value == pytest.approx(perp_dense, abs=tol), name
        # every reported residual is ‖Hv − θv‖ of the returned pair in float64, recomputed here from the dense matrix
        # (the deflated one from the host path's float64 operator); the measured residual may exceed the solver's
        # estimate by round-off, hence the factor 10
        mf = MatrixFree(PROB, x)
        defl = mf.H_deflated(tangent, sigma)
        dense = lambda v, Hd=Hd: Hd @ v
        for e, op in ((low, dense), (high, dense), (perp, defl)):
            assert e.residual == pytest.approx(np.linalg.norm(op(e.vector) - e.value * e.vector), rel=1e-6,
                                               abs=1e-15), name
            assert e.residual <= 10 * dev.rtol * norm, name
        # ARPACK (shifted, tol 1e-10) finds the same extremes
        top = mf.largest()
        s = top.value + max(1.0, 0.01 * abs(top.value))
        assert mf.smallest(s).value == pytest.approx(low.value, abs=tol), name
        assert top.value == pytest.approx(high.value, abs=tol), name
        assert mf.smallest(s, op=mf.H_deflated(tangent, s)).value == pytest.approx(perp.value, abs=tol), name

        # and analyze_point on the JAX path classifies as the dense path does, with the dtype's zero tolerance
        cp = analyze_point(PROB, x, hessian="lanczos", eigensolver="jax", hessian_dtype=dtype)
        assert cp.classification == analyze_point(PROB, x, hessian="dense").classification == expected
        assert cp.curvature["eigensolver"] == "jax" and cp.curvature["dtype"] == dtype and cp.curvature["matvecs"] > 0
        rel = {"float64": 1e-8, "float32": 1e-3}[dtype]
        assert cp.zero_tol == pytest.approx(max(rel * max(abs(cp.max_eig), abs(cp.min_eig)), 1e2 * cp.grad_norm,
                                                1e-5 * rel), rel=1e-9)
        if expected == "global_minimizer":
            assert cp.n_zero == cp.expected_zero_modes == 19
        if dtype == "float64":
            arpack = analyze_point(PROB, x, hessian="lanczos", eigensolver="arpack")
            assert arpack.classification == expected and arpack.curvature["eigensolver"] == "arpack"


def test_zero_tolerance_scales_with_the_dtype():
    t = Tolerances()
    assert t.zero(2.0, 0.0) == pytest.approx(2e-8) and t.zero(2.0, 0.0, "float32") == pytest.approx(2e-3)
    assert t.zero(0.0, 0.0) == pytest.approx(1e-13) and t.zero(0.0, 0.0, "float32") == pytest.approx(1e-8)
    assert t.zero(2.0, 1e-4, "float32") == pytest.approx(1e-2)         # 1e2·‖∇f‖ dominates
    assert Tolerances(zero_tol=0.5).zero(2.0, 0.0, "float32") == 0.5
    assert t.zero_rule("float32") == "max(1e-3·‖∇²f‖₂, 1e2·‖∇f‖)" and t.zero_rule() == "max(1e-8·‖∇²f‖₂, 1e2·‖∇f‖)"


def test_auto_picks_by_backend_dtype_and_size():
    for backend in ("gpu", "tpu"):
        assert choose_eigensolver(10_000, backend=backend) == "jax"
    assert choose_eigensolver(10**7, "float32", backend="cpu") == "jax"
    from ufm.eigensolvers import JAX_MIN_PARAMS_CPU

    assert choose_eigensolver(max(JAX_MIN_PARAMS_CPU, 1), backend="cpu") == "jax"
    if JAX_MIN_PARAMS_CPU > 1:
        assert choose_eigensolver(JAX_MIN_PARAMS_CPU - 1, backend="cpu") == "arpack"


BAD = [("dense", "jax", "float64", "--eigensolver"), ("dense", "arpack", "float64", "--eigensolver"),
       ("dense", "auto", "float32", "--hessian-dtype"), ("lanczos", "arpack", "float32", "--hessian-dtype"),
       ("lanczos", "lobpcg", "float64", "--eigensolver"), ("lanczos", "jax", "float16", "--hessian-dtype"),
       ("lanczos", "", "float64", "--eigensolver"), ("lanczos", None, "float64", "--eigensolver")]


@pytest.mark.parametrize("method, eigensolver, dtype, flag", BAD)
def test_choices_that_would_be_ignored_or_unknown_are_refused(method, eigensolver, dtype, flag):
    with pytest.raises(UFMInputError) as err:
        check_eigensolver(PROB, method, eigensolver, dtype)
    assert err.value.flag == flag and "\n" not in str(err.value)


@pytest.mark.slow            # a full `ufm landscape` run (~25 s under load); the eigenpair oracles stay in the default run
def test_landscape_cli_records_the_eigensolver(capsys):
    import json

    from ufm.cli import main

    args = ["landscape", "-K", "4", "-d", "8", "-n", "3", "--lam", "5e-3", "--lam-b", "0", "--at", "origin",
            "--no-escape", "--hessian", "lanczos"]
    assert main([*args, "--eigensolver", "jax", "--hessian-dtype", "float32", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["eigensolver"] == "jax" and rec["hessian_dtype"] == "float32"
    assert rec["tolerances"]["zero_tol_rule"] == "max(1e-3·‖∇²f‖₂, 1e2·‖∇f‖)"
    p = rec["critical_points"][0]
    assert p["classification"] == "strict_saddle" and p["curvature"]["dtype"] == "float32"
    assert main([*args, "--eigensolver", "jax"]) == 0
    assert "Hessian lanczos (jax eigensolver, float64)" in capsys.readouterr().out
    assert main([*args[:-2], "--eigensolver", "jax"]) == 2           # auto takes the dense path at 132 parameters
    assert "--eigensolver" in capsys.readouterr().err
