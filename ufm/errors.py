"""Errors raised at ufm's boundary.

Every bad input raises :class:`UFMInputError` (a ``ValueError``) whose message is one line naming the field
(spelled as its command-line flag), the offending value and what is allowed. The CLI prints that line and exits
with status 2; Python users can catch ``ValueError``.
"""

from __future__ import annotations


class UFMInputError(ValueError):
    """Bad user input: one line with the flag, the value and what is allowed."""

    def __init__(self, flag: str, value, allowed: str):
        self.flag = flag
        self.value = value
        self.allowed = allowed
        super().__init__(f"{flag}: got {value!r}; {allowed}")


class NotConvergedError(RuntimeError):
    """Raised by ``solve(..., throw=True)`` when a solve ends without ‖∇f‖ ≤ gtol."""

    def __init__(self, solution):
        self.solution = solution
        super().__init__(
            f"solve did not converge: {solution.message} "
            f"(status={solution.status.name}, ‖∇f‖={solution.grad_norm:.3e}, steps={solution.steps})"
        )
