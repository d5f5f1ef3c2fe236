"""A generated fuzz over every command's flags: a value that is never valid must end with exit 2 and one line on
stderr naming the flag — before any work (the solver, the Hessian and the sweep's points are replaced by functions
that fail the test if reached)."""

import argparse
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ufm.cli import build_parser, main

COMMANDS = ("solve", "landscape", "sweep", "plot", "analyze")


def _subparser(name):
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _numeric_actions(name):
    """Flags whose values are parsed as numbers (``type`` set): every one of them has a lower bound ≥ 0."""
    return [a for a in _subparser(name)._actions
            if a.option_strings and a.type is not None and a.nargs is None and not a.choices]


def _choice_actions(name):
    return [a for a in _subparser(name)._actions if a.option_strings and a.choices]


def _base_args(name, tmp):
    """The minimal valid arguments of a command, so that only the fuzzed flag is wrong."""
    if name == "analyze":                # a valid last layer with a bias, so --lam-b applies
        import numpy as np

        layer = tmp / "layer.npz"
        if not layer.exists():
            np.savez(layer, W=np.eye(3, 4), H=np.eye(6, 4), labels=np.arange(6) % 3, b=np.zeros(3))
        return [str(layer)]
    return {"plot": ["etf", str(tmp / "missing.npz"), "-o", str(tmp / "out.png")]}.get(name, [])


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)          # a command that got as far as its default output file writes it here
    def reached(*a, **k):
        raise AssertionError("work started before the input was checked")

    import ufm.critical
    import ufm.landscape
    import ufm.sweep

    monkeypatch.setattr(ufm.solvers, "solve", reached)
    monkeypatch.setattr(ufm.critical, "analyze_point", reached)
    monkeypatch.setattr(ufm.landscape, "census", reached)
    monkeypatch.setattr(ufm.sweep, "evaluate_point", reached)
    import ufm.analysis

    monkeypatch.setattr(ufm.analysis, "_data_gradient", reached)


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:            # argparse's own errors exit through _Parser.error
        return exc.code


def _parses_as_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# values that are never valid for a numeric flag: not numbers, not finite, or below every flag's lower bound
never_numbers = st.one_of(
    # (a comma list of positive integers is a valid -n: class sizes)
    st.text(max_size=12).filter(lambda s: not _parses_as_number(s) and not s.startswith("-")
                                and not re.fullmatch(r"[\d,\s]+", s)),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "NaN", "Infinity"]),
    st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False).map(repr),
    st.integers(max_value=-1).map(str),
)

CASES = [(name, action.option_strings[-1]) for name in COMMANDS for action in _numeric_actions(name)]


@pytest.mark.parametrize("name, flag", CASES, ids=[f"{n} {f}" for n, f in CASES])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=never_numbers)
def test_every_numeric_flag_rejects_invalid_values(name, flag, value, capsys, tmp_path, no_work):
    code = _exit_code([name, *_base_args(name, tmp_path), f"{flag}={value}"])
    out, err = capsys.readouterr()
    assert code == 2, (name, flag, value, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (name, flag, value, err)
    action = next(a for a in _subparser(name)._actions if flag in a.option_strings)
    assert any(s in err for s in action.option_strings), (name, flag, value, err)


CHOICES = [(name, action.option_strings[-1]) for name in COMMANDS for action in _choice_actions(name)]


@pytest.mark.parametrize("name, flag", CHOICES, ids=[f"{n} {f}" for n, f in CHOICES])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=10).filter(lambda s: not s.startswith("-")))
def test_every_choice_flag_rejects_unknown_values(name, flag, value, capsys, tmp_path, no_work):
    action = next(a for a in _subparser(name)._actions if flag in a.option_strings)
    if value in action.choices:
        return
    code = _exit_code([name, *_base_args(name, tmp_path), f"{flag}={value}"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and flag in err, (name, flag, value, err)


def test_the_fuzz_sees_the_flags_it_should():
    # introspection must find the flags, or the fuzz above would silently test nothing
    flags = {(n, f) for n, f in CASES}
    for f in ("--classes", "--dim", "--per-class", "--lam", "--lam-w", "--lam-h", "--lam-b", "--gamma", "--gtol",
              "--rtol", "--max-steps", "--seed", "--init-scale", "--lr"):
        assert ("solve", f) in flags and ("landscape", f) in flags, f
    assert {("landscape", "--grad-tol"), ("landscape", "--zero-tol"), ("sweep", "--gtol"), ("sweep", "--max-steps"),
            ("plot", "--dpi")} <= flags
    assert {("analyze", f) for f in ("--lam-w", "--lam-h", "--lam-b", "--gamma", "--alpha", "--kappa", "--beta")} <= flags
