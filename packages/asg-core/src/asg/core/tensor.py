"""The :class:`Tensor` API: Python code that builds graph nodes.

Nothing is computed when a Tensor expression is written: each operation looks its op up in the
registry, checks shapes and dtypes at once, and appends a node. :func:`asg.core.compile` turns
the result into something that runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from .dtypes import dtype_of, is_float
from .graph import Node, Variable
from .registry import get_op, infer_type
from .shapes import Dim, Shape, format_shape, normalize_shape

Scalar = int | float | bool
TensorLike = "Tensor | Scalar | np.ndarray"


class Tensor:
    """A value in the graph: a handle on the :class:`~asg.core.graph.Node` that computes it.

    Tensors support Python arithmetic with NumPy broadcasting, ``@``, comparisons, indexing and
    the usual methods (``sum``, ``reshape``, ``relu`` ...). Build them with :func:`input`,
    :func:`parameter` and :func:`constant`.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 3))
        >>> y = (x * 2.0 + 1.0).relu().sum(axis=1)
        >>> y.shape, y.dtype
        (('B',), 'float32')
    """

    __slots__ = {
        "node": "The graph :class:`~asg.core.graph.Node` computing this value (same shape and dtype)."
    }
    __array_priority__ = 1000  # numpy scalars and arrays defer to Tensor's operators

    def __init__(self, node: Node) -> None:
        self.node = node

    # ------------------------------------------------------------ type
    @property
    def shape(self) -> Shape:
        """The static shape, e.g. ``('B', 784)``: ints, or strings for symbolic dimensions."""
        return self.node.shape

    @property
    def dtype(self) -> str:
        """The dtype name, e.g. ``'float32'``."""
        return self.node.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions: ``len(x.shape)``."""
        return len(self.node.shape)

    @property
    def name(self) -> str | None:
        """The user's name for the value (shown in printouts and errors), or None."""
        return self.node.name

    @name.setter
    def name(self, value: str | None) -> None:
        self.node.name = value

    def named(self, name: str) -> Tensor:
        """Give the value a name (shown in printouts and errors); returns ``self``, same shape."""
        self.node.name = name
        return self

    def __repr__(self) -> str:
        return f"Tensor({self.node.label}: {self.node.type_str()}, op={self.node.op})"

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of tensor {self.node.label} {format_shape(self.shape)} is not known while the "
            "graph is built; use ag.where(cond, a, b) for data-dependent choices"
        )

    __hash__ = object.__hash__

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        first = self.shape[0]
        if not isinstance(first, int):
            raise TypeError(f"len() of tensor {self.node.label}: its first dimension {first!r} is symbolic")
        return first

    def __iter__(self) -> Any:
        # Without this, Python would iterate through __getitem__ and never stop on a symbolic axis.
        return (self[i] for i in range(len(self)))

    # ------------------------------------------------------------ values of leaves
    def numpy(self) -> np.ndarray:
        """The current value (an array of ``x.shape``) of a parameter or constant; others have none until run."""
        if self.node.op == "parameter":
            return self.node.data.value
        if self.node.op == "constant":
            return self.node.data
        raise ValueError(
            f"tensor {self.node.label} is computed by op {self.node.op!r}; compile and run the graph to get its value"
        )

    def assign(self, value: np.ndarray) -> None:
        """Overwrite a parameter's value in place: ``value`` has the parameter's shape; cast to its dtype."""
        if self.node.op != "parameter":
            raise ValueError(f"only parameters can be assigned; {self.node.label} is a {self.node.op!r} node")
        value = np.asarray(value)
        var: Variable = self.node.data
        if value.shape != var.value.shape:
            raise ValueError(
                f"assign to {self.node.label}: shape {value.shape} does not match the parameter's {var.value.shape}"
            )
        np.copyto(var.value, value, casting="unsafe")
        if var._home is not None:  # a backend holds the current value (asg.core.storage): write through
            var._home.write(var)

    # ------------------------------------------------------------ operators
    # The arithmetic operators map one to one onto registered ops. Every other method (``sum``,
    # ``reshape``, ``exp``, ``@``, ``[]`` ...) is attached by the op family that defines it, with
    # :func:`tensor_method`, so each op is written once.
    def __add__(self, other: Any) -> Tensor:
        return apply("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return apply("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return apply("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return apply("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return apply("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return apply("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return apply("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return apply("div", other, self)

    def __pow__(self, other: Any) -> Tensor:
        return apply("pow", self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return apply("pow", other, self)

    def __neg__(self) -> Tensor:
        return apply("neg", self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return apply("abs", self)

    def __lt__(self, other: Any) -> Tensor:
        return apply("less", self, other)

    def __le__(self, other: Any) -> Tensor:
        return apply("less_equal", self, other)

    def __gt__(self, other: Any) -> Tensor:
        return apply("greater", self, other)

    def __ge__(self, other: Any) -> Tensor:
        return apply("greater_equal", self, other)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return apply("equal", self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return apply("not_equal", self, other)

    def __invert__(self) -> Tensor:
        return apply("logical_not", self)

    def __and__(self, other: Any) -> Tensor:
        return apply("logical_and", self, other)

    def __or__(self, other: Any) -> Tensor:
        return apply("logical_or", self, other)


# ---------------------------------------------------------------------------- methods attached from above
TENSOR_METHODS: dict[str, str] = {}
"""Tensor attribute name -> the module that attached it (see :func:`tensor_method`)."""

_F = TypeVar("_F", bound=Callable[..., Any])


def tensor_method(fn: _F | None = None, /, *, name: str | None = None, as_property: bool = False) -> Any:
    """Install a public op function as a :class:`Tensor` method too, so the op is spelled once.

    The op families (``asg.core.ops.*``) sit above this module and attach their functions, as JAX's
    ``register_jax_array_methods`` does: ``@tensor_method`` on ``def exp(x)`` gives both
    ``ag.exp(x)`` and ``x.exp()``, the same object with the same docstring. ``name=`` attaches under
    another name (``cast`` as ``astype``), ``as_property=True`` as a read-only property (``T``).
    Returns the function unchanged. Attaching a name twice is an error.

    >>> import asg.core as ag
    >>> ag.Tensor.exp is ag.exp, ag.tensor.TENSOR_METHODS["exp"]
    (True, 'asg.core.ops.elementwise')
    """

    def install(f: _F) -> _F:
        attr = name or f.__name__
        if attr in vars(Tensor):
            where = TENSOR_METHODS.get(attr, __name__)
            raise ValueError(f"Tensor.{attr} is already defined (by {where})")
        setattr(Tensor, attr, property(f, doc=f.__doc__) if as_property else f)
        TENSOR_METHODS[attr] = f.__module__
        return f

    return install if fn is None else install(fn)


# ---------------------------------------------------------------------------- building nodes
def _reference_dtype(args: Sequence[Any]) -> str | None:
    for a in args:
        if isinstance(a, Tensor):
            return a.dtype
    return None


def as_tensor(value: Any, dtype_hint: str | None = None) -> Tensor:
    """A Tensor for a Tensor, Python scalar or array; Python scalars take the other operand's dtype.

    >>> as_tensor(2, "float32").dtype
    'float32'
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.ndarray):
        if isinstance(value, bool):
            dtype = "bool"
        elif isinstance(value, int):
            dtype = dtype_hint if dtype_hint is not None and dtype_hint != "bool" else "int64"
        else:
            dtype = dtype_hint if dtype_hint is not None and is_float(dtype_hint) else "float32"
        return constant(np.asarray(value, dtype=dtype))
    if isinstance(value, np.generic):
        return constant(np.asarray(value))
    if isinstance(value, np.ndarray):
        return constant(value)
    raise TypeError(f"cannot use a {type(value).__name__} as a tensor")


def apply(name: str, *args: Any, **attrs: Any) -> Tensor:
    """Apply the registered op ``name`` to tensors (or scalars/arrays), checking shapes now.

    This is the one function every Tensor operation goes through.

    >>> import asg.core as ag
    >>> ag.apply("add", ag.input("x", (2, 3)), 1.0).shape
    (2, 3)
    """
    op = get_op(name)
    hint = _reference_dtype(args)
    inputs = [as_tensor(a, hint).node for a in args]
    result = infer_type(op, inputs, attrs)
    return Tensor(Node(name, inputs, attrs, normalize_shape(result.shape), result.dtype))


def input(name: str, shape: Sequence[Dim] | Dim, dtype: Any = "float32") -> Tensor:
    """A graph input, fed when the compiled function is called. Dimensions may be symbols.

    >>> x = input("x", ("B", 784))
    >>> x.shape
    ('B', 784)
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"an input needs a non-empty name, got {name!r}")
    try:
        dims = normalize_shape(shape)
    except (TypeError, ValueError) as err:
        raise type(err)(f"input {name!r}: {err}") from None
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d < 0:
            raise ValueError(
                f"input {name!r}: dimension {axis} of shape {format_shape(dims)} is {d}; a dimension is "
                "a size >= 0 or a symbol such as 'B'"
            )
    return Tensor(Node("input", (), {}, dims, dtype_of(dtype), name))


def parameter(value: Any, name: str | None = None, dtype: Any = None, trainable: bool = True) -> Tensor:
    """A trainable value that lives across runs; plans read it and update it in place.

    >>> w = parameter(np.zeros((3, 2), "float32"), name="w")
    >>> w.numpy().shape
    (3, 2)
    """
    array = np.array(value, dtype=None if dtype is None else dtype_of(dtype), copy=True, order="C")
    if array.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray):
        array = array.astype(np.float32)
    dtype_name = dtype_of(array.dtype)
    var = Variable(array, name, trainable)
    return Tensor(Node("parameter", (), {}, array.shape, dtype_name, name, var))


def state(value: Any, name: str | None = None, dtype: Any = None) -> Tensor:
    """A non-trainable variable (optimizer moments, running statistics, step counters)."""
    return parameter(value, name, dtype, trainable=False)


def constant(value: Any, dtype: Any = None, name: str | None = None) -> Tensor:
    """A fixed array baked into the graph.

    >>> constant([1.0, 2.0]).dtype
    'float32'
    """
    array = np.array(value, dtype=None if dtype is None else dtype_of(dtype))
    if array.dtype == np.float64 and dtype is None and not isinstance(value, (np.ndarray, np.generic)):
        array = array.astype(np.float32)
    array.setflags(write=False)
    return Tensor(Node("constant", (), {}, array.shape, dtype_of(array.dtype), name, array))
