"""Exceptions raised while building, compiling and running graphs."""

from __future__ import annotations


class ASGError(Exception):
    """Base class of every error ASG raises on purpose."""


class ShapeError(ASGError, ValueError):
    """An op received inputs whose shapes or dtypes it cannot combine.

    Raised while the graph is built; the message names the op, the inputs and what was expected.
    """


class DTypeError(ShapeError):
    """An op received a tensor of a dtype it cannot take (an int where a float is needed, a
    non-bool condition, float indices ...). A :class:`ShapeError`, so existing handlers still catch it.

    >>> import asg.core as ag
    >>> try:
    ...     ag.exp(ag.input("i", (3,), "int64"))
    ... except ag.DTypeError as err:
    ...     print(err)
    exp: i (3,): expected a floating-point tensor, got int64 (cast it with .astype('float32'))
    """


class DTypeRuleError(ValueError):
    """Raised by a shape/dtype rule for a dtype problem; :func:`~asg.core.registry.infer_type` turns it
    into a :class:`DTypeError` naming the op and its inputs (other ``ValueError`` become ``ShapeError``)."""


class MissingRuleError(ASGError, NotImplementedError):
    """An op has no gradient rule, or a backend has no kernel for it."""


class ExecutionError(ASGError, RuntimeError):
    """A kernel failed while a plan was running; the message shows the node that failed."""


class NonFiniteError(ExecutionError):
    """A numerics check found a NaN or infinity; the message names the first node producing one.

    Attributes:
        node_name: the node's printed name (``graph.names()``), or ``None`` when not raised for a node.
        node_id: the node's id (``node.id``) in the graph the plan ran.
        op: the node's op (``"input"`` or ``"parameter"`` for a non-finite feed or parameter).
        scope: the node's module path, ``None`` outside every :func:`~asg.core.scope`.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (2,))
    >>> try:
    ...     ag.compile(ag.log(x).named("logx")).check_numerics(np.array([1.0, -1.0], "float32"))
    ... except ag.NonFiniteError as err:
    ...     print(err.node_name, err.op, err.scope)
    logx log None
    """

    def __init__(
        self,
        message: str,
        *,
        node_name: str | None = None,
        node_id: int | None = None,
        op: str | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(message)
        self.node_name = node_name
        self.node_id = node_id
        self.op = op
        self.scope = scope
