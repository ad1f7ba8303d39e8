"""Exceptions raised while building, compiling and running graphs."""

from __future__ import annotations


class ASGError(Exception):
    """Base class of every error ASG raises on purpose."""


class ShapeError(ASGError, ValueError):
    """An op received inputs whose shapes or dtypes it cannot combine.

    Raised while the graph is built; the message names the op, the inputs and what was expected.
    """


class MissingRuleError(ASGError, NotImplementedError):
    """An op has no gradient rule, or a backend has no kernel for it."""


class ExecutionError(ASGError, RuntimeError):
    """A kernel failed while a plan was running; the message shows the node that failed."""


class NonFiniteError(ExecutionError):
    """A numerics check found a NaN or infinity; the message names the first node producing one."""
