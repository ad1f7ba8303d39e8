"""The op registry: one :class:`OpDef` per op, found by name.

An op is declared once, in its family's module under ``asg.core.ops``, with its shape/dtype rule,
its gradient rule and its numpy kernel::

    exp = define_op(
        "exp",
        infer=float_unary,  # (TensorType, **attrs) -> TensorType
        grad=lambda g, out, x: (g * out,),  # cotangents of the inputs, as Tensors
        kernel=np.exp,
        out_arg=True,  # numpy kernel; accepts out=
    )

Other backends add kernels for the same name with :func:`register_kernel`. A missing gradient rule
or kernel is an error naming the op, never a silent zero.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import MissingRuleError, ShapeError
from .shapes import Shape, format_shape

if TYPE_CHECKING:
    from .graph import Node
    from .tensor import Tensor


class TensorType(NamedTuple):
    """The static type of a value: shape (dims may be symbolic) and dtype name."""

    shape: Shape
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)


# Op traits: named sets of ops that passes and backends query (tinygrad's ``GroupOp``), so no pass
# keeps its own list of op names. ``ops_with(COMMUTATIVE)`` is the set of commutative ops.
ELEMENTWISE = "elementwise"  # output element i depends only on input elements i (same broadcast shape)
COMMUTATIVE = "commutative"  # binary op whose operands can be swapped exactly (IEEE arithmetic)
VIEW = "view"  # the output may share storage with the first input (reshape, transpose, slice ...)
MOVEMENT = "movement"  # output elements are input elements, rearranged or repeated (no new values)
REDUCTION = "reduction"  # reduces its input over ``axes``
BILINEAR = "bilinear"  # linear in each of its two inputs (mul, matmul, convolution)
RANDOM = "random"  # draws numbers from a key: pure given the key, but never constant-folded
EFFECTFUL = "effectful"  # two applications to equal inputs may differ: never merged or folded
TRAITS = frozenset({ELEMENTWISE, COMMUTATIVE, VIEW, MOVEMENT, REDUCTION, BILINEAR, RANDOM, EFFECTFUL})

InferRule = Callable[..., TensorType]
GradRule = Callable[..., Sequence["Tensor | None"]]


@dataclass
class OpDef:
    """Everything about one op.

    Attributes:
        name: the op's registry name, used in graphs, printouts and errors.
        infer: shape/dtype rule; receives the inputs' :class:`TensorType` and the attributes and
            returns the output type, raising ``ValueError`` with a plain reason on bad input.
        grad: gradient rule ``(g, out, *inputs, **attrs) -> cotangent per input`` written with the
            Tensor API (so it differentiates again); ``None`` entries mean "no gradient flows".
            ``grad=None`` on a differentiable op makes differentiation through it an error.
        differentiable: ``False`` for ops whose output is piecewise constant (comparisons,
            argmax, random): gradients stop there and are zero.
        kernels: backend name -> kernel; the numpy kernel is ``kernels["numpy"]``.
        out_arg: the numpy kernel accepts ``out=`` (so the executor can hand it a reused buffer).
        elementwise: output element i depends only on input elements i (safe to run in place).
        view: the numpy kernel may return a view of its first input.
        traits: the named sets this op belongs to (:data:`ELEMENTWISE`, :data:`COMMUTATIVE`, ...).
        symbol: infix symbol used in error messages (``@`` for matmul).
        shape_attrs: attributes holding dimensions that may be symbolic; they are resolved to
            ints when a plan is compiled for concrete input shapes.
    """

    name: str
    infer: InferRule
    grad: GradRule | None = None
    differentiable: bool = True
    kernels: dict[str, Callable[..., Any]] = field(default_factory=dict)
    out_arg: bool = False
    elementwise: bool = False
    view: bool = False
    symbol: str | None = None
    shape_attrs: tuple[str, ...] = ()
    family: str = ""
    doc: str = ""
    traits: frozenset[str] = frozenset()

    def has(self, trait: str) -> bool:
        """True when the op carries ``trait``.

        >>> import asg.core as ag
        >>> ag.get_op("add").has("commutative"), ag.get_op("sub").has("commutative")
        (True, False)
        """
        return trait in self.traits


OPS: dict[str, OpDef] = {}


def define_op(
    name: str,
    *,
    infer: InferRule,
    kernel: Callable[..., Any],
    grad: GradRule | None = None,
    differentiable: bool = True,
    out_arg: bool = False,
    elementwise: bool = False,
    view: bool = False,
    symbol: str | None = None,
    shape_attrs: tuple[str, ...] = (),
    traits: Iterable[str] = (),
    doc: str = "",
) -> OpDef:
    """Declare an op: its rules and numpy kernel in one place. Returns the registered :class:`OpDef`.

    ``elementwise=True`` and ``view=True`` also give the op the :data:`ELEMENTWISE` and :data:`VIEW` traits.
    """
    if name in OPS:
        raise ValueError(f"op {name!r} is already defined (in {OPS[name].family})")
    trait_set = frozenset(traits) | ({ELEMENTWISE} if elementwise else set()) | ({VIEW} if view else set())
    unknown = trait_set - TRAITS
    if unknown:
        raise ValueError(f"op {name!r}: unknown traits {sorted(unknown)}; known: {', '.join(sorted(TRAITS))}")
    op = OpDef(
        name=name,
        infer=infer,
        grad=grad,
        differentiable=differentiable,
        kernels={"numpy": kernel},
        out_arg=out_arg,
        elementwise=elementwise,
        view=view,
        symbol=symbol,
        shape_attrs=shape_attrs,
        family=sys._getframe(1).f_globals.get("__name__", ""),
        doc=doc,
        traits=trait_set,
    )
    OPS[name] = op
    return op


def ops_with(trait: str) -> frozenset[str]:
    """Names of the registered ops that carry ``trait``.

    >>> import asg.core as ag
    >>> sorted(ag.registry.ops_with(ag.registry.COMMUTATIVE))[:3]
    ['add', 'equal', 'logical_and']
    """
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; known: {', '.join(sorted(TRAITS))}")
    return frozenset(name for name, op in OPS.items() if trait in op.traits)


def op_has(name: str, trait: str) -> bool:
    """True when ``name`` is a registered op carrying ``trait`` (leaves such as ``input`` carry none)."""
    op = OPS.get(name)
    return op is not None and trait in op.traits


def add_trait(name: str, trait: str) -> None:
    """Give a registered op one more trait (for example :data:`EFFECTFUL` for a stateful sampler)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; known: {', '.join(sorted(TRAITS))}")
    op = get_op(name)
    op.traits = op.traits | {trait}


def get_op(name: str) -> OpDef:
    """The :class:`OpDef` registered under ``name``."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op named {name!r} is registered; known ops: {', '.join(sorted(OPS))}") from None


def register_kernel(backend: str, name: str, kernel: Callable[..., Any]) -> None:
    """Add a backend's kernel for an existing op (used by backend packages such as asg-gpu)."""
    get_op(name).kernels[backend] = kernel


def kernel_for(backend: str, name: str) -> Callable[..., Any]:
    """The kernel of op ``name`` on ``backend``, or a :class:`MissingRuleError` naming both."""
    op = get_op(name)
    try:
        return op.kernels[backend]
    except KeyError:
        raise MissingRuleError(
            f"op {name!r} has no kernel for backend {backend!r} (it has: {', '.join(sorted(op.kernels))})"
        ) from None


def describe_inputs(op: OpDef, nodes: Sequence[Node]) -> str:
    """``x (B, 784) @ w (128, 10)`` — the inputs as an error message shows them."""
    parts = [f"{n.label} {format_shape(n.shape)}" for n in nodes]
    dtypes = {n.dtype for n in nodes}
    if len(dtypes) > 1:
        parts = [f"{p} {n.dtype}" for p, n in zip(parts, nodes, strict=True)]
    sep = f" {op.symbol} " if op.symbol and len(nodes) == 2 else ", "
    return sep.join(parts)


def infer_type(op: OpDef, inputs: Sequence[Node], attrs: dict[str, Any]) -> TensorType:
    """Run an op's shape/dtype rule, turning a failure into a :class:`ShapeError` that names everything."""
    types = [TensorType(n.shape, n.dtype) for n in inputs]
    try:
        result = op.infer(*types, **attrs)
    except ShapeError:
        raise
    except (ValueError, TypeError) as err:
        raise ShapeError(f"{op.name}: {describe_inputs(op, inputs)}: {err}") from None
    return result


def grad_rule(op: OpDef) -> GradRule:
    """The op's gradient rule, or a :class:`MissingRuleError` naming the op."""
    if op.grad is None:
        raise MissingRuleError(
            f"op {op.name!r} has no gradient rule, so nothing can be differentiated through it"
        )
    return op.grad
