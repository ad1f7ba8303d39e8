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

Other backends add kernels for the same name with :func:`register_kernel`, or a *lowering* with
:func:`register_lowering`: a rule called once per plan with the node's concrete types
(:class:`~asg.core.lowering.LoweringContext`) that returns what the backend runs. Flags describing a
kernel (accepts ``out=``, may return a view, safe in place) belong to the backend's :class:`Kernel`
record, not to the op. A missing gradient rule, kernel or lowering is an error naming the op, never a
silent zero.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import DTypeError, DTypeRuleError, MissingRuleError, ShapeError
from .shapes import Shape, format_shape

if TYPE_CHECKING:
    from .graph import Node
    from .lowering import LoweringContext
    from .tensor import Tensor


class TensorType(NamedTuple):
    """The static type of a value: shape (dims may be symbolic) and dtype name."""

    shape: Shape
    dtype: str

    @property
    def ndim(self) -> int:
        """The number of axes, ``len(self.shape)``."""
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
KEY = "key"  # gives a random key (fold_in: a 64-bit hash, not an index): never narrowed to int32
EFFECTFUL = "effectful"  # two applications to equal inputs may differ: never merged or folded
NORMALIZATION = "normalization"  # normalises its first input over trailing axes (layer_norm): a fusion anchor
TRAITS = frozenset(
    {ELEMENTWISE, COMMUTATIVE, VIEW, MOVEMENT, REDUCTION, BILINEAR, RANDOM, KEY, EFFECTFUL, NORMALIZATION}
)

InferRule = Callable[..., TensorType]
GradRule = Callable[..., Sequence["Tensor | None"]]
LoweringRule = Callable[["LoweringContext"], Any]


@dataclass(frozen=True)
class Kernel:
    """A backend's kernel for one op, with the flags the scheduler needs to plan its buffers.

    Attributes:
        fn: what the backend runs; for numpy ``fn(*arrays, **attrs)`` returning an array.
        out_arg: ``fn`` accepts ``out=`` (the scheduler may hand it a reused buffer).
        returns_view: the result may share storage with the first input (reshape, transpose ...).
        in_place: the result may be written over an input that dies at this very step (elementwise).

    Calling the record calls ``fn``, so ``op.kernels["numpy"](x, axis=0)`` works as before.
    """

    fn: Callable[..., Any]
    out_arg: bool = False
    returns_view: bool = False
    in_place: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def bind(self, attrs: Mapping[str, Any]) -> Kernel:
        """The same kernel with its attributes fixed: called with the arrays only (and ``out=``)."""
        return replace(self, fn=functools.partial(self.fn, **attrs)) if attrs else self


NumpyKernel = Kernel  # the numpy backend's records are plain Kernels: fn(*arrays, **attrs, out=None)


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
        kernels: backend name -> :class:`Kernel`; the numpy kernel is ``kernels["numpy"]``.
        lowerings: backend name -> lowering rule (see :func:`register_lowering`).
        traits: the named sets this op belongs to (:data:`ELEMENTWISE`, :data:`COMMUTATIVE`, ...).
        symbol: infix symbol used in error messages (``@`` for matmul).
        shape_attrs: attributes holding dimensions that may be symbolic; they are resolved to
            ints when a plan is compiled for concrete input shapes.
        decomposition: for a fused op, its formula in simpler ops, ``(*inputs, **attrs) -> Tensor``
            written with the Tensor API; a backend that runs the formula faster than the fused
            kernel lists the op in ``Capabilities.decompose`` (see :mod:`asg.core.passes.decompose`).
    """

    name: str
    infer: InferRule
    grad: GradRule | None = None
    differentiable: bool = True
    kernels: dict[str, Kernel] = field(default_factory=dict)
    lowerings: dict[str, LoweringRule] = field(default_factory=dict)
    symbol: str | None = None
    shape_attrs: tuple[str, ...] = ()
    family: str = ""
    doc: str = ""
    traits: frozenset[str] = frozenset()
    decomposition: Callable[..., Any] | None = None

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
    decomposition: Callable[..., Any] | None = None,
) -> OpDef:
    """Declare an op: its rules and numpy kernel in one place. Returns the registered :class:`OpDef`.

    ``elementwise=True`` and ``view=True`` also give the op the :data:`ELEMENTWISE` and :data:`VIEW` traits.
    ``kernel`` becomes the numpy :class:`Kernel` record: ``out_arg`` says it accepts ``out=``; it may
    return a view when the op is a view, and runs in place when the op is elementwise.
    ``decomposition`` is a fused op's formula in simpler ops (:attr:`OpDef.decomposition`).
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
        kernels={
            "numpy": kernel
            if isinstance(kernel, Kernel)
            else Kernel(
                kernel,
                out_arg=out_arg,
                returns_view=VIEW in trait_set,
                in_place=ELEMENTWISE in trait_set,
            )
        },
        symbol=symbol,
        shape_attrs=shape_attrs,
        family=sys._getframe(1).f_globals.get("__name__", ""),
        doc=doc,
        traits=trait_set,
        decomposition=decomposition,
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


def register_kernel(backend: str, name: str, kernel: Kernel | Callable[..., Any]) -> None:
    """Add a backend's kernel for an existing op (a bare callable has no flags: no ``out=``, no view).

    Without a lowering for ``backend``, the kernel is lowered by binding the node's attributes.
    """
    get_op(name).kernels[backend] = kernel if isinstance(kernel, Kernel) else Kernel(kernel)


def register_lowering(name: str, backend: str, rule: LoweringRule) -> None:
    """Register how op ``name`` is lowered on ``backend`` (JAX's ``register_lowering``).

    ``rule(ctx)`` is called once per plan with a :class:`~asg.core.lowering.LoweringContext` (concrete
    input and output types, resolved attrs, the node's name and scope) and returns what the backend
    runs: for numpy a :class:`Kernel` or a callable ``fn(*arrays)``; for wgpu a pipeline and dispatch size.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> ag.register_lowering("exp", "numpy-doc", lambda ctx: ag.Kernel(np.exp, out_arg=True))
        >>> ag.registry.lowering_rule("numpy-doc", "exp") is not None
        True
        >>> del ag.get_op("exp").lowerings["numpy-doc"]
    """
    get_op(name).lowerings[backend] = rule


def lowering_rule(backend: str, name: str) -> LoweringRule | None:
    """The lowering registered for op ``name`` on ``backend``, or ``None`` (then its kernel is used)."""
    return get_op(name).lowerings.get(backend)


def has_rule_for(backend: str, name: str) -> bool:
    """True when ``backend`` can run op ``name`` (a lowering or a kernel is registered)."""
    op = get_op(name)
    return backend in op.lowerings or backend in op.kernels


def kernel_for(backend: str, name: str) -> Kernel:
    """The kernel of op ``name`` on ``backend``, or a :class:`MissingRuleError` naming both."""
    op = get_op(name)
    try:
        return op.kernels[backend]
    except KeyError:
        raise MissingRuleError(
            f"op {name!r} has no kernel or lowering for backend {backend!r} "
            f"(it has kernels for: {', '.join(sorted(op.kernels))}); register one with "
            f"register_lowering({name!r}, {backend!r}, rule) or register_kernel({backend!r}, {name!r}, fn)"
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
    except DTypeRuleError as err:
        raise DTypeError(f"{op.name}: {describe_inputs(op, inputs)}: {err}") from None
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
