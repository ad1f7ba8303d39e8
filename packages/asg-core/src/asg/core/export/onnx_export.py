"""ONNX export: every forward op of asg-core mapped to standard ONNX ops, in one table.

:func:`to_onnx` walks an optimised graph in order and calls, per node, the small function that
:data:`ONNX_OPS` holds under the node's op name; that function emits the node's ONNX ops through an
:class:`_Emitter` (which owns the value names, the initializers and the run-time dimension tensors).
Symbolic dimensions become ONNX ``dim_param`` names on the model's inputs and outputs; where an op needs
one as a value (a reshape target, an ``arange`` bound), it is computed at run time from ``Shape`` ops on
the input that carries it. Parameters become initializers under their dotted names.

The ``onnx`` package is imported only inside :func:`to_onnx` (``pip install asg-core[onnx]``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dtypes import promote
from ..errors import ASGError
from ..graph import LEAF_OPS, Graph, Node
from ..registry import RANDOM, op_has
from ..shapes import Dim, _postfix, dim_add, dim_mul, dim_sub, format_shape

if TYPE_CHECKING:
    from ..function import Function

DEFAULT_OPSET = 18
"""The opset :func:`to_onnx` writes unless told otherwise (``LayerNormalization`` needs 17 or later)."""
MIN_OPSET = 17
_INT64_MAX = np.iinfo(np.int64).max


class ExportError(ASGError, ValueError):
    """A graph that cannot be exported: an op without an ONNX mapping, a training step, a random op."""


# ============================================================================= the emitter
class _Emitter:
    """Builds the ONNX graph: value names, nodes, initializers and run-time dimension values."""

    def __init__(self, onnx: Any, graph: Graph, opset: int) -> None:
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.graph, self.opset = graph, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.values: dict[int, str] = {}  # asg node id -> ONNX value name
        self.taken: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._dims: dict[str, str] = {}
        self._symbols: dict[str, tuple[str, int]] = {}  # symbol -> (input value name, axis)
        self.current: Node | None = None  # the asg node being lowered (for names and errors)

    # ------------------------------------------------------------------ names
    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def _node_name(self, op_type: str) -> str:
        node = self.current
        if node is None:
            return self.unique(op_type)
        base = self.graph.names()[node.id]
        scope = node.meta.get("scope")
        return self.unique(f"{scope}/{base}/{op_type}" if scope else f"{base}/{op_type}")

    # ------------------------------------------------------------------ emitting
    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        """Append one ONNX node; returns the name of its output (named after the asg node being lowered)."""
        hint = self.graph.names()[self.current.id] if self.current is not None else "t"
        output = self.unique(f"{hint}__{op_type.lower()}")
        self.nodes.append(
            self.helper.make_node(op_type, list(inputs), [output], name=self._node_name(op_type), **attrs)
        )
        return output

    def initializer(self, array: np.ndarray, name: str) -> str:
        name = self.unique(name)
        self.initializers.append(self.numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def const(self, value: Any, dtype: str | np.dtype) -> str:
        """A constant initializer (shared between equal constants)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = self._consts[key] = self.initializer(array, "const")
        return name

    def i64(self, values: Sequence[int]) -> str:
        """A 1-d int64 constant (shapes, axes, pads)."""
        return self.const(np.asarray(list(values), np.int64).reshape(-1), np.int64)

    def cast(self, value: str, source: str, target: str) -> str:
        if source == target:
            return value
        return self.op("Cast", [value], to=self.tensor_type(target))

    def tensor_type(self, dtype: str) -> int:
        return int(self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def operand(self, node: Node, dtype: str) -> str:
        """The value of ``node`` as ``dtype`` (ASG promotes mixed operands; ONNX wants them equal)."""
        return self.cast(self.values[node.id], node.dtype, dtype)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """``Reduce*`` over ``axes``: an input from opset 18 (ReduceSum from 13), an attribute before."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    # ------------------------------------------------------------------ dimensions at run time
    def bind_symbols(self, inputs: Sequence[Node]) -> None:
        for node in inputs:
            for axis, d in enumerate(node.shape):
                if isinstance(d, str) and d.isidentifier():
                    self._symbols.setdefault(d, (self.values[node.id], axis))

    def _symbol(self, name: str) -> str:
        if name not in self._symbols:
            where = self.graph.format_node(self.current) if self.current is not None else "the graph"
            raise ExportError(
                f"to_onnx: dimension {name!r} (needed by {where}) is not the size of any input axis, so "
                "the exported model cannot compute it; give an input that dimension"
            )
        if name not in self._dims:
            source, axis = self._symbols[name]
            self._dims[name] = self.op("Shape", [source], start=axis, end=axis + 1)
        return self._dims[name]

    def dim(self, d: Dim) -> str:
        """A dimension as an int64[1] value: a constant, or computed from the inputs' shapes."""
        if isinstance(d, int):
            return self.i64([d])
        cached = self._dims.get(d)
        if cached is not None:
            return cached
        stack: list[int | str] = []
        binary = {"+": "Add", "-": "Sub", "*": "Mul", "//": "Div"}
        for token in _postfix(d):
            if isinstance(token, int):
                stack.append(token)
            elif isinstance(token, tuple):
                stack.append(self._symbol(token[1]))
            elif token == "neg":
                v = stack.pop()
                stack.append(-v if isinstance(v, int) else self.op("Neg", [v]))
            else:
                b, a = stack.pop(), stack.pop()
                if isinstance(a, int) and isinstance(b, int):
                    stack.append({"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0}[token])
                else:
                    va = self.i64([a]) if isinstance(a, int) else a
                    vb = self.i64([b]) if isinstance(b, int) else b
                    stack.append(self.op(binary[token], [va, vb]))
        (result,) = stack
        value = self.i64([result]) if isinstance(result, int) else result
        self._dims[d] = value
        return value

    def shape(self, dims: Sequence[Dim]) -> str:
        """A 1-d int64 shape value; static runs of dimensions are one constant."""
        if all(isinstance(d, int) for d in dims):
            return self.i64(dims)  # type: ignore[arg-type]
        parts: list[str] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                parts.append(self.i64(run))
                run = []
            parts.append(self.dim(d))
        if run:
            parts.append(self.i64(run))
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, axis=0)

    def scalar_dim(self, d: Dim, dtype: str) -> str:
        """A dimension as a 0-d value of ``dtype`` (``Range`` takes scalars)."""
        if isinstance(d, int):
            return self.const(d, dtype)
        return self.cast(self.op("Squeeze", [self.dim(d), self.i64([0])]), "int64", dtype)

    def expand(
        self, value: str, source: Sequence[Dim], target: Sequence[Dim], keep: int | None = None
    ) -> str:
        """Broadcast ``value`` (shape ``source``) to ``target``; axis ``keep`` keeps the source's size.

        A target dimension equal to the source's becomes 1 in ``Expand``'s shape (Expand keeps the
        input's size there), so symbolic dimensions already present need no run-time value.
        """
        lead = len(target) - len(source)
        slots: list[Dim] = []
        for j, d in enumerate(target):
            i = j - lead
            same = i >= 0 and (source[i] == d or j == keep)
            slots.append(1 if same else d)
        if lead == 0 and all(s == 1 for s in slots):
            return value
        return self.op("Expand", [value, self.shape(slots)])


# ============================================================================= the mapping table
Rule = Callable[[_Emitter, Node, list[str]], str]
ONNX_OPS: dict[str, Rule] = {}
"""asg op name -> the function that emits its ONNX ops (``rule(emitter, node, input_names) -> output``)."""
ONNX_MAPPING: dict[str, str] = {}
"""asg op name -> the ONNX ops it becomes, as text (the table in the docs and the report)."""


def _maps(names: str | Sequence[str], onnx_ops: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for name in [names] if isinstance(names, str) else names:
            ONNX_OPS[name] = rule
            ONNX_MAPPING[name] = onnx_ops
        return rule

    return register


def _simple(op_type: str, cast_to: Callable[[Node], str] | None = None) -> Rule:
    """One ONNX op on the node's inputs (cast to ``cast_to(node)`` first: ONNX wants equal operand types)."""

    def rule(e: _Emitter, node: Node, ins: list[str]) -> str:
        if cast_to is not None:
            dtype = cast_to(node)
            ins = [e.operand(i, dtype) for i in node.inputs]
        return e.op(op_type, ins)

    return rule


def _out_dtype(node: Node) -> str:
    return node.dtype


def _common_dtype(node: Node) -> str:
    return promote(node.inputs[0].dtype, node.inputs[1].dtype)


for _name, _type in (
    ("add", "Add"),
    ("sub", "Sub"),
    ("mul", "Mul"),
    ("div", "Div"),
    ("pow", "Pow"),
    ("maximum", "Max"),
    ("minimum", "Min"),
):
    _maps(_name, _type)(_simple(_type, _out_dtype))
for _name, _type in (
    ("less", "Less"),
    ("less_equal", "LessOrEqual"),
    ("greater", "Greater"),
    ("greater_equal", "GreaterOrEqual"),
    ("equal", "Equal"),
):
    _maps(_name, _type)(_simple(_type, _common_dtype))
for _name, _type in (
    ("neg", "Neg"),
    ("exp", "Exp"),
    ("log", "Log"),
    ("sqrt", "Sqrt"),
    ("abs", "Abs"),
    ("sign", "Sign"),
    ("erf", "Erf"),
    ("tanh", "Tanh"),
    ("sigmoid", "Sigmoid"),
    ("relu", "Relu"),
    ("logical_not", "Not"),
    ("logical_and", "And"),
    ("logical_or", "Or"),
    ("matmul", "MatMul"),
    ("stop_gradient", "Identity"),
):
    _maps(_name, _type)(_simple(_type))
del _name, _type


@_maps("not_equal", "Not(Equal)")
def _not_equal(e: _Emitter, node: Node, ins: list[str]) -> str:
    dtype = _common_dtype(node)
    return e.op("Not", [e.op("Equal", [e.operand(i, dtype) for i in node.inputs])])


@_maps("rsqrt", "Reciprocal(Sqrt)")
def _rsqrt(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Reciprocal", [e.op("Sqrt", ins)])


@_maps("where", "Where")
def _where(e: _Emitter, node: Node, ins: list[str]) -> str:
    _, a, b = node.inputs
    return e.op("Where", [ins[0], e.operand(a, node.dtype), e.operand(b, node.dtype)])


@_maps("cast", "Cast")
def _cast(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Cast", ins, to=e.tensor_type(node.attrs["dtype"]))


@_maps("clamp", "Clip")
def _clamp(e: _Emitter, node: Node, ins: list[str]) -> str:
    lo, hi = node.attrs["min"], node.attrs["max"]
    bounds = ["" if v is None else e.const(v, node.dtype) for v in (lo, hi)]
    return e.op("Clip", [ins[0], *bounds])


@_maps("leaky_relu", "LeakyRelu")
def _leaky_relu(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("LeakyRelu", ins, alpha=float(node.attrs["negative_slope"]))


@_maps("elu", "Elu")
def _elu(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Elu", ins, alpha=float(node.attrs["alpha"]))


@_maps("silu", "Mul(x, Sigmoid)")
def _silu(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Mul", [ins[0], e.op("Sigmoid", ins)])


@_maps("softplus", "Softplus, Where(Greater) for the threshold")
def _softplus(e: _Emitter, node: Node, ins: list[str]) -> str:
    beta, threshold = float(node.attrs["beta"]), float(node.attrs["threshold"])
    x = ins[0]
    bx = x if beta == 1.0 else e.op("Mul", [x, e.const(beta, node.dtype)])
    soft = e.op("Softplus", [bx])
    if beta != 1.0:
        soft = e.op("Div", [soft, e.const(beta, node.dtype)])
    return e.op("Where", [e.op("Greater", [bx, e.const(threshold, node.dtype)]), x, soft])


@_maps("gelu", "Erf formula (exact), Tanh formula (approximate='tanh'); Gelu at opset >= 20")
def _gelu(e: _Emitter, node: Node, ins: list[str]) -> str:
    approximate = node.attrs["approximate"]
    if e.opset >= 20:
        return e.op("Gelu", ins, approximate=approximate)
    x, dt = ins[0], node.dtype
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = e.op("Mul", [e.op("Mul", [x, x]), x])
        inner = e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715, dt)])])
        t = e.op("Tanh", [e.op("Mul", [inner, e.const(math.sqrt(2.0 / math.pi), dt)])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = e.op("Erf", [e.op("Mul", [x, e.const(1.0 / math.sqrt(2.0), dt)])])
    half_x = e.op("Mul", [x, e.const(0.5, dt)])
    return e.op("Mul", [half_x, e.op("Add", [t, e.const(1.0, dt)])])


# ----------------------------------------------------------------------------- normalised exponentials
@_maps("softmax", "Softmax")
def _softmax(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Softmax", ins, axis=node.attrs["axis"])


@_maps("log_softmax", "LogSoftmax")
def _log_softmax(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("LogSoftmax", ins, axis=node.attrs["axis"])


# ----------------------------------------------------------------------------- reductions
def _accumulated(e: _Emitter, node: Node, ins: list[str], op_type: str, compute: str | None = None) -> str:
    """``op_type`` computed in ``compute`` dtype (float32 for float16, int64 for bool: as the numpy kernels)."""
    x = node.inputs[0]
    work = compute or ("float32" if x.dtype == "float16" else "int64" if x.dtype == "bool" else x.dtype)
    value = e.cast(ins[0], x.dtype, work)
    axes, keepdims = node.attrs["axes"], node.attrs["keepdims"]
    if not axes:  # a reduction over no axis is the identity
        out = e.op("Identity", [value])
    else:
        out = e.reduce(op_type, value, axes, keepdims)
    return e.cast(out, work, node.dtype)


@_maps("sum", "ReduceSum")
def _sum(e: _Emitter, node: Node, ins: list[str]) -> str:
    return _accumulated(e, node, ins, "ReduceSum")


@_maps("mean", "ReduceMean")
def _mean(e: _Emitter, node: Node, ins: list[str]) -> str:
    return _accumulated(e, node, ins, "ReduceMean")


@_maps("max", "ReduceMax")
def _max(e: _Emitter, node: Node, ins: list[str]) -> str:
    return _accumulated(e, node, ins, "ReduceMax", node.inputs[0].dtype)


@_maps("min", "ReduceMin")
def _min(e: _Emitter, node: Node, ins: list[str]) -> str:
    return _accumulated(e, node, ins, "ReduceMin", node.inputs[0].dtype)


def _arg(op_type: str) -> Rule:
    def rule(e: _Emitter, node: Node, ins: list[str]) -> str:
        out = e.op(op_type, ins, axis=node.attrs["axis"], keepdims=int(node.attrs["keepdims"]))
        return e.cast(out, "int64", node.dtype)

    return rule


_maps("argmax", "ArgMax")(_arg("ArgMax"))
_maps("argmin", "ArgMin")(_arg("ArgMin"))


@_maps("cumsum", "CumSum")
def _cumsum(e: _Emitter, node: Node, ins: list[str]) -> str:
    x = node.inputs[0]
    work = "float32" if x.dtype == "float16" else "int64" if x.dtype == "bool" else x.dtype
    out = e.op(
        "CumSum",
        [e.cast(ins[0], x.dtype, work), e.const(node.attrs["axis"], np.int64)],
        reverse=int(node.attrs["reverse"]),
    )
    return e.cast(out, work, node.dtype)


@_maps("count", "Shape, Gather, ReduceProd, Cast")
def _count(e: _Emitter, node: Node, ins: list[str]) -> str:
    sizes = e.op("Gather", [e.op("Shape", ins), e.i64(node.attrs["axes"])])
    return e.cast(e.op("ReduceProd", [sizes], keepdims=0), "int64", node.dtype)


# ----------------------------------------------------------------------------- shape ops
@_maps("reshape", "Reshape (target from Shape ops where it holds symbolic dims)")
def _reshape(e: _Emitter, node: Node, ins: list[str]) -> str:
    target, source = node.shape, node.inputs[0].shape
    if 0 in target:  # an empty tensor: 0 means "copy" in ONNX unless allowzero
        return e.op("Reshape", [ins[0], e.shape(target)], allowzero=1)
    slots: list[Dim] = list(target)
    open_slots = [i for i, d in enumerate(slots) if not isinstance(d, int)]
    if len(open_slots) > 1:  # 0 copies the input's size at the same position
        for i in open_slots:
            if i < len(source) and source[i] == slots[i]:
                slots[i] = 0
        open_slots = [i for i, d in enumerate(slots) if not isinstance(d, int)]
    if len(open_slots) == 1:
        slots[open_slots[0]] = -1
    return e.op("Reshape", [ins[0], e.shape(slots)])


@_maps("transpose", "Transpose")
def _transpose(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Transpose", ins, perm=list(node.attrs["axes"]))


@_maps("broadcast_to", "Expand")
def _broadcast_to(e: _Emitter, node: Node, ins: list[str]) -> str:
    out = e.expand(ins[0], node.inputs[0].shape, node.shape)
    return out if out != ins[0] else e.op("Identity", ins)


@_maps("sum_to", "ReduceSum, Squeeze")
def _sum_to(e: _Emitter, node: Node, ins: list[str]) -> str:
    x, target = node.inputs[0], node.shape
    lead = x.ndim - len(target)
    axes = [*range(lead)] + [lead + i for i, d in enumerate(target) if d == 1 and x.shape[lead + i] != 1]
    if not axes:
        return e.op("Identity", ins)
    out = e.reduce("ReduceSum", ins[0], axes, keepdims=True)
    return e.op("Squeeze", [out, e.i64(range(lead))]) if lead else out


@_maps("slice", "Slice")
def _slice(e: _Emitter, node: Node, ins: list[str]) -> str:
    axes, starts, ends, steps = [], [], [], []
    for axis, (start, stop, step) in enumerate(node.attrs["index"]):
        if (start, stop, step) == (None, None, 1):
            continue
        axes.append(axis)
        starts.append(0 if start is None else start)
        ends.append(_INT64_MAX if stop is None else stop)
        steps.append(step)
    if not axes:
        return e.op("Identity", ins)
    return e.op("Slice", [ins[0], e.i64(starts), e.i64(ends), e.i64(axes), e.i64(steps)])


@_maps("slice_range", "Slice (bounds from Shape ops when symbolic)")
def _slice_range(e: _Emitter, node: Node, ins: list[str]) -> str:
    a = node.attrs
    return e.op("Slice", [ins[0], e.dim(a["start"]), e.dim(a["stop"]), e.i64([a["axis"]])])


@_maps("concat", "Concat")
def _concat(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Concat", ins, axis=node.attrs["axis"])


@_maps("pad", "Pad (constant)")
def _pad(e: _Emitter, node: Node, ins: list[str]) -> str:
    widths = node.attrs["pad_width"]
    pads = [b for b, _ in widths] + [a for _, a in widths]
    return e.op("Pad", [ins[0], e.i64(pads), e.const(node.attrs["value"], node.dtype)], mode="constant")


@_maps("index_select", "Gather")
def _index_select(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Gather", ins, axis=node.attrs["axis"])


@_maps("embedding", "Gather (axis 0)")
def _embedding(e: _Emitter, node: Node, ins: list[str]) -> str:
    return e.op("Gather", ins, axis=0)


@_maps("take_along_axis", "Expand, GatherElements")
def _take_along_axis(e: _Emitter, node: Node, ins: list[str]) -> str:
    (x, idx), axis = node.inputs, node.attrs["axis"]
    data = e.expand(ins[0], x.shape, node.shape, keep=axis)
    index = e.expand(ins[1], idx.shape, node.shape, keep=axis)
    return e.op("GatherElements", [data, index], axis=axis)


@_maps("gather", "Slice, GatherElements")
def _gather(e: _Emitter, node: Node, ins: list[str]) -> str:
    (x, idx), axis = node.inputs, node.attrs["axis"]
    data = ins[0]
    window = [a for a in range(x.ndim) if a != axis and x.shape[a] != idx.shape[a]]
    if window:  # torch.gather reads the leading window of the other axes
        ends = e.shape([idx.shape[a] for a in window])
        data = e.op("Slice", [data, e.i64([0] * len(window)), ends, e.i64(window)])
    return e.op("GatherElements", [data, ins[1]], axis=axis)


@_maps("one_hot", "Unsqueeze, Equal, Cast")
def _one_hot(e: _Emitter, node: Node, ins: list[str]) -> str:
    idx = node.inputs[0]
    classes = e.const(np.arange(node.attrs["num_classes"]), idx.dtype)
    hit = e.op("Equal", [e.op("Unsqueeze", [ins[0], e.i64([-1])]), classes])
    return e.cast(hit, "bool", node.dtype)


def _triangle(upper: int) -> Rule:
    def rule(e: _Emitter, node: Node, ins: list[str]) -> str:
        return e.op("Trilu", [ins[0], e.const(node.attrs["k"], np.int64)], upper=upper)

    return rule


_maps("tril", "Trilu")(_triangle(0))
_maps("triu", "Trilu (upper)")(_triangle(1))


@_maps("arange", "Range (bounds from Shape ops when symbolic)")
def _arange(e: _Emitter, node: Node, ins: list[str]) -> str:
    a = node.attrs
    work = node.dtype if node.dtype in ("int32", "int64", "float32", "float64") else "int64"
    bounds = [e.scalar_dim(a["start"], work), e.scalar_dim(a["stop"], work), e.const(a["step"], work)]
    return e.cast(e.op("Range", bounds), work, node.dtype)


@_maps("full", "ConstantOfShape (a constant when static)")
def _full(e: _Emitter, node: Node, ins: list[str]) -> str:
    value = np.asarray(node.attrs["value"]).astype(node.dtype)
    if all(isinstance(d, int) for d in node.shape):
        return e.op("Identity", [e.const(np.full(node.shape, value, node.dtype), node.dtype)])
    fill = e.numpy_helper.from_array(value.reshape(1))
    return e.op("ConstantOfShape", [e.shape(node.shape)], value=fill)


# ----------------------------------------------------------------------------- convolution and pooling
def _onnx_pads(padding: Sequence[int]) -> list[int]:
    """ASG's (top, bottom, left, right) as ONNX's (top, left, bottom, right)."""
    top, bottom, left, right = padding
    return [top, left, bottom, right]


@_maps("conv2d", "Conv")
def _conv2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    a, w = node.attrs, node.inputs[1]
    return e.op(
        "Conv",
        ins,
        kernel_shape=list(w.shape[2:]),
        strides=list(a["stride"]),
        pads=_onnx_pads(a["padding"]),
        dilations=list(a["dilation"]),
        group=a["groups"],
    )


@_maps("conv_transpose2d", "ConvTranspose")
def _conv_transpose2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    a, (x, w) = node.attrs, node.inputs
    extra = []
    for axis in range(2):
        k, s, d = w.shape[2 + axis], a["stride"][axis], a["dilation"][axis]
        pads = a["padding"][2 * axis] + a["padding"][2 * axis + 1]
        # size = (H - 1) s - pads + d (k - 1) + 1 + output_padding
        natural = dim_add(dim_mul(x.shape[2 + axis], s), d * (k - 1) + 1 - s - pads)
        extra.append(dim_sub(a["size"][axis], natural))
    if not all(isinstance(v, int) for v in extra):
        raise ExportError(
            f"to_onnx: {e.graph.format_node(node)}: the output size {format_shape(a['size'])} is not the "
            "input size times the stride plus a constant, so ONNX's output_padding cannot express it"
        )
    return e.op(
        "ConvTranspose",
        ins,
        kernel_shape=list(w.shape[2:]),
        strides=list(a["stride"]),
        pads=_onnx_pads(a["padding"]),
        dilations=list(a["dilation"]),
        group=a["groups"],
        output_padding=extra,
    )


def _pool_pads(node: Node, dilation: Sequence[int]) -> tuple[list[int], bool]:
    """ONNX pads for a pooling node, and whether a ceil-mode overhang was added to them.

    ``ceil_mode`` windows follow PyTorch's rule (the last window starts inside the input or its left
    padding), which ONNX's ceil_mode does not: the overhang becomes explicit end padding instead.
    """
    a = node.attrs
    (ph, pw), size = a["padding"], node.inputs[0].shape[2:]
    if not a["ceil_mode"]:
        return [ph, pw, ph, pw], False
    from ..ops.pooling import _regular_windows

    windows = _regular_windows(
        tuple(size), a["kernel_size"], a["stride"], a["padding"], tuple(dilation), True
    )  # ceil_mode needs static sizes (the shape rule says so)
    top, bottom, left, right = windows.padding
    return [top, left, bottom, right], (bottom, right) != (ph, pw)


@_maps("max_pool2d", "MaxPool (a ceil-mode overhang as end padding)")
def _max_pool2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    a = node.attrs
    pads, _ = _pool_pads(node, a["dilation"])
    return e.op(
        "MaxPool",
        ins,
        kernel_shape=list(a["kernel_size"]),
        strides=list(a["stride"]),
        pads=pads,
        dilations=list(a["dilation"]),
    )


@_maps("avg_pool2d", "AveragePool (a ceil-mode overhang as end padding, its divisors corrected by a Mul)")
def _avg_pool2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    a = node.attrs
    pads, overhang = _pool_pads(node, (1, 1))
    out = e.op(
        "AveragePool",
        ins,
        kernel_shape=list(a["kernel_size"]),
        strides=list(a["stride"]),
        pads=pads,
        count_include_pad=int(a["count_include_pad"]),
    )
    if not (overhang and a["count_include_pad"]):
        return out
    # ONNX divides by the whole window there; PyTorch leaves the overhang (not the padding) out.
    from ..ops.pooling import _avg_divisor

    inverse = _avg_divisor(
        tuple(node.inputs[0].shape[2:]),
        a["kernel_size"],
        a["stride"],
        a["padding"],
        tuple(node.shape[2:]),
        True,
        "float64",
    )
    window = a["kernel_size"][0] * a["kernel_size"][1]
    return e.op("Mul", [out, e.const(inverse * window, node.dtype)])


def _static_hw(e: _Emitter, node: Node) -> tuple[int, int]:
    h, w = node.inputs[0].shape[2:]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ExportError(
            f"to_onnx: {e.graph.format_node(node)}: adaptive pooling to {node.attrs['output_size']} of a "
            f"symbolic spatial size {format_shape((h, w))} has no ONNX equivalent; give the input a static "
            "height and width (or pool to size 1)"
        )
    return h, w


def _adaptive_pool_shortcut(
    e: _Emitter, node: Node, ins: list[str], global_op: str, pool_op: str
) -> str | None:
    """The plain ONNX pool for adaptive pooling to 1x1 or to sizes that divide the input; None otherwise."""
    oh, ow = node.attrs["output_size"]
    if (oh, ow) == (1, 1):
        return e.op(global_op, ins)
    h, w = _static_hw(e, node)
    if h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        return e.op(pool_op, ins, kernel_shape=kernel, strides=kernel)
    return None


@_maps(
    "adaptive_avg_pool2d",
    "GlobalAveragePool (to 1x1), AveragePool (sizes divide), MatMul with bin-average matrices (otherwise)",
)
def _adaptive_avg_pool2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    shortcut = _adaptive_pool_shortcut(e, node, ins, "GlobalAveragePool", "AveragePool")
    if shortcut is not None:
        return shortcut
    oh, ow = node.attrs["output_size"]
    h, w = _static_hw(e, node)
    from ..ops.pooling import adaptive_bins

    def averaging(size: int, out: int) -> np.ndarray:  # (out, size): row i averages bin i
        starts, ends = adaptive_bins(size, out)
        m = np.zeros((out, size), np.float64)
        for i, (s, t) in enumerate(zip(starts, ends, strict=True)):
            m[i, s:t] = 1.0 / (t - s)
        return m.astype(node.dtype)

    rows = e.op("MatMul", [e.const(averaging(h, oh), node.dtype), ins[0]])  # (N, C, oh, W)
    return e.op("MatMul", [rows, e.const(averaging(w, ow).T, node.dtype)])  # (N, C, oh, ow)


@_maps(
    "adaptive_max_pool2d",
    "GlobalMaxPool (to 1x1), MaxPool (sizes divide), Slice + ReduceMax + Concat per bin (otherwise)",
)
def _adaptive_max_pool2d(e: _Emitter, node: Node, ins: list[str]) -> str:
    shortcut = _adaptive_pool_shortcut(e, node, ins, "GlobalMaxPool", "MaxPool")
    if shortcut is not None:
        return shortcut
    oh, ow = node.attrs["output_size"]
    h, w = _static_hw(e, node)
    from ..ops.pooling import adaptive_bins

    (row_starts, row_ends), (col_starts, col_ends) = adaptive_bins(h, oh), adaptive_bins(w, ow)
    rows = []
    for r0, r1 in zip(row_starts, row_ends, strict=True):
        cells = []
        for c0, c1 in zip(col_starts, col_ends, strict=True):
            window = e.op("Slice", [ins[0], e.i64([r0, c0]), e.i64([r1, c1]), e.i64([2, 3])])
            cells.append(e.reduce("ReduceMax", window, [2, 3], keepdims=True))
        rows.append(e.op("Concat", cells, axis=3))
    return e.op("Concat", rows, axis=2)


# ----------------------------------------------------------------------------- normalisation
@_maps("layer_norm", "LayerNormalization")
def _layer_norm(e: _Emitter, node: Node, ins: list[str]) -> str:
    a = node.attrs
    shape = tuple(a["normalized_shape"])
    params = list(ins[1:])
    if not a["has_weight"]:
        if not all(isinstance(d, int) for d in shape):
            raise ExportError(
                f"to_onnx: {e.graph.format_node(node)}: layer_norm without a weight over a symbolic "
                f"normalized_shape {format_shape(shape)}: ONNX's LayerNormalization needs a scale; pass a weight"
            )
        params.insert(0, e.const(np.ones(shape), node.dtype))
    return e.op("LayerNormalization", [ins[0], *params], axis=-len(shape), epsilon=a["eps"])


# ----------------------------------------------------------------------------- attention
@_maps("attention", "MatMul, Mul, Where, Softmax, Where, MatMul (float16 in float32)")
def _attention(e: _Emitter, node: Node, ins: list[str]) -> str:
    """The unfused formula; masked scores are -inf and a row with no key gives 0 (as ASG)."""
    q, k, v = node.inputs[:3]
    work = "float32" if node.dtype == "float16" else node.dtype
    qs, ks, vs = (e.cast(name, n.dtype, work) for name, n in zip(ins[:3], (q, k, v), strict=True))
    perm = [*range(k.ndim - 2), k.ndim - 1, k.ndim - 2]
    scores = e.op(
        "Mul", [e.op("MatMul", [qs, e.op("Transpose", [ks], perm=perm)]), e.const(node.attrs["scale"], work)]
    )
    allowed = ins[3] if len(ins) > 3 else None
    if node.attrs["causal"]:
        length_q, length_k = q.shape[-2], k.shape[-2]
        if isinstance(length_q, int) and isinstance(length_k, int):
            tril = e.const(np.tril(np.ones((length_q, length_k), bool), length_k - length_q), np.bool_)
        else:
            ones = e.op("Expand", [e.const(True, np.bool_), e.shape([length_q, length_k])])
            diagonal = e.op("Sub", [e.scalar_dim(length_k, "int64"), e.scalar_dim(length_q, "int64")])
            tril = e.op("Trilu", [ones, diagonal], upper=0)
        allowed = tril if allowed is None else e.op("And", [allowed, tril])
    if allowed is None:
        probabilities = e.op("Softmax", [scores], axis=-1)
    else:
        masked = e.op("Where", [allowed, scores, e.const(-np.inf, work)])
        probabilities = e.op("Where", [allowed, e.op("Softmax", [masked], axis=-1), e.const(0.0, work)])
    return e.cast(e.op("MatMul", [probabilities, vs]), work, node.dtype)


# ============================================================================= ops left out, on purpose
_GRADIENT = "a gradient op (built by ag.grad): export the forward function, compiled without gradients"
_OPTIMIZER = "an optimizer update (a training step): export the inference function, compiled without updates"
NOT_EXPORTED: dict[str, str] = {
    **dict.fromkeys(
        (
            "slice_backward",
            "index_select_backward",
            "take_along_axis_backward",
            "gather_backward",
            "conv2d_backward_weight",
            "layer_norm_backward",
            "layer_norm_weight_grad",
            "max_pool2d_backward",
            "max_pool2d_gather",
            "adaptive_max_pool2d_backward",
            "adaptive_max_pool2d_gather",
            "avg_pool2d_backward",
            "adaptive_avg_pool2d_backward",
            "attention_lse",
            "attention_grad_q",
            "attention_grad_k",
            "attention_grad_v",
        ),
        _GRADIENT,
    ),
    **dict.fromkeys(("adam_update", "rmsprop_update", "sgd_update"), _OPTIMIZER),
    **dict.fromkeys(
        ("bernoulli", "random_uniform", "random_normal", "fold_in"),
        "a random op: inference graphs draw no random numbers (dropout is removed by "
        "asg.core.export.inference_function, or not built in eval mode)",
    ),
}
"""asg-core ops that :func:`to_onnx` refuses, with the reason its error gives."""


# ============================================================================= refusals and checks
_RANDOM_HINT = (
    "an inference graph must not draw random numbers: this is dropout (or another random op) built in "
    "training mode. Build the function in eval mode: with asg.nn, model.eval() or nn.compile_inference(model); "
    "with asg.core, ag.dropout(x, p, key, training=False). asg.core.export.inference_function(f) also "
    "removes dropout masks from a compiled function"
)


def resolve_function(obj: Any, what: str) -> Any:
    """A :class:`~asg.core.function.Function` or a :class:`Graph` from what the caller passed.

    Objects that hold a compiled function in ``.function`` (asg-nn's ``compile_inference`` result, a
    ``TrainStep``) are unwrapped.
    """
    from ..function import Function

    if isinstance(obj, Function | Graph):
        return obj
    inner = getattr(obj, "function", None)
    if isinstance(inner, Function):
        return inner
    if hasattr(obj, "function") and inner is None:
        raise ExportError(
            f"{what}: {type(obj).__name__} has not been compiled yet (its .function is None); call it once "
            "on an example batch, or build it with inputs=[...]"
        )
    raise TypeError(f"{what}: expected a compiled asg.core.Function or a Graph, got {type(obj).__name__}")


def refuse_updates(updates: Sequence[tuple[Node, Node]], what: str) -> None:
    """A function that updates parameters is a training step, not an inference function."""
    if updates:
        names = ", ".join(p.label for p, _ in updates[:6]) + (" ..." if len(updates) > 6 else "")
        raise ExportError(
            f"{what}: the function updates {len(updates)} parameter(s) or state(s) ({names}): it is a training "
            "step. Export the inference function instead: with asg.nn, nn.compile_inference(model) (eval mode, "
            "no updates); with asg.core, ag.compile(outputs) without updates="
        )


def check_inference_graph(
    graph: Graph, updates: Sequence[tuple[Node, Node]], what: str, allow_batch_statistics: bool = False
) -> None:
    """Refuse what an inference graph must not hold: updates (a training step), gradient nodes, random
    ops, and batch statistics (batch_norm in training mode), each with what to do instead."""
    refuse_updates(updates, what)
    for node in graph.nodes:
        if "grad_of" in node.meta:
            raise ExportError(
                f"{what}: {graph.format_node(node)} is a gradient node: the function computes gradients, so "
                "it is not a forward (inference) function; compile the model's outputs alone"
            )
        if op_has(node.op, RANDOM):
            raise ExportError(f"{what}: {graph.format_node(node)} draws random numbers: {_RANDOM_HINT}")
        batch_mean = None if allow_batch_statistics else _batch_norm_statistics(node)
        if batch_mean is not None:
            raise ExportError(
                f"{what}: {graph.format_node(node)} normalises by {graph.format_node(batch_mean)}, a mean over "
                "the batch axis 0 per channel: this is batch_norm in training mode, which uses the batch's "
                "statistics. Build the function in eval mode (asg.nn: model.eval() or "
                "nn.compile_inference(model); asg.core: ag.batch_norm(..., training=False) with the running "
                "statistics), or pass allow_batch_statistics=True if the graph means it"
            )


def _batch_norm_statistics(node: Node) -> Node | None:
    """The batch mean when ``node`` is ``rsqrt(mean((x - m)^2) + eps)`` with ``m = mean(x)`` over the batch
    axis 0 and not the channel axis 1, kept dims: how ``batch_norm(training=True)`` normalises."""
    if node.op != "rsqrt" or node.inputs[0].op != "add":
        return None
    variance = next((v for v in node.inputs[0].inputs if v.op == "mean"), None)
    if variance is None or not _per_channel(variance):
        return None
    square = variance.inputs[0]
    if square.op != "mul" or square.inputs[0] is not square.inputs[1] or square.inputs[0].op != "sub":
        return None
    mean = square.inputs[0].inputs[1]
    if mean.op != "mean" or mean.attrs != variance.attrs:
        return None
    return mean


def _per_channel(node: Node) -> bool:
    axes = node.attrs["axes"]
    return bool(node.attrs["keepdims"]) and node.inputs[0].ndim >= 2 and 0 in axes and 1 not in axes


def _check_mapped(graph: Graph) -> None:
    missing: dict[str, Node] = {}
    for node in graph.nodes:
        if node.op not in LEAF_OPS and node.op not in ONNX_OPS:
            missing.setdefault(node.op, node)
    if missing:
        lines = "\n".join(
            f"  {op}: {graph.format_node(n)}" + (f" ({NOT_EXPORTED[op]})" if op in NOT_EXPORTED else "")
            for op, n in missing.items()
        )
        raise ExportError(
            f"to_onnx: {len(missing)} op(s) have no ONNX mapping:\n{lines}\n"
            f"ops that map: {', '.join(sorted(ONNX_OPS))}"
        )


# ============================================================================= to_onnx
def to_onnx(
    function_or_graph: Function | Graph | Any,
    path: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    check: bool = True,
    allow_batch_statistics: bool = False,
) -> Any:
    """Export a compiled inference function (or a Graph) as an ONNX model; write it to ``path`` if given.

    Inputs keep their names and become ONNX graph inputs, symbolic dimensions (``"B"``, ``"T"``)
    become ``dim_param`` names, so the batch stays dynamic. Parameters become initializers under
    their dotted names (``fc.weight``). Outputs take their user names, else ``output`` /
    ``output_<i>``. The model is checked with ``onnx.checker.check_model(model, full_check=True)``
    before it is written (``check=False`` skips that).

    A training step (a function with updates), a gradient node, a random op (dropout built in
    training mode), batch statistics (batch_norm in training mode) or an op without an ONNX mapping
    is an :class:`ExportError` naming the node and what to do. The ops that map, and the ONNX ops
    they become, are :data:`ONNX_MAPPING`.

    Known differences of onnxruntime (CPU), not of the model: its ``ReduceMax``/``ReduceMin`` skip a NaN
    where numpy (and ASG) return NaN, and it has no float64 ``Erf`` (exact GELU of float64 values).

    Args:
        function_or_graph: an :class:`asg.core.Function` without updates, a :class:`Graph`, or an
            object holding one in ``.function`` (asg-nn's ``compile_inference``).
        path: where to write the ``.onnx`` file (atomically); ``None`` only returns the model.
        opset: the ``ai.onnx`` opset, from 17 (18 by default; 20 or later uses ``Gelu``).
        check: run the ONNX checker (with shape inference) on the result.
        allow_batch_statistics: accept ``mean`` over the batch axis per channel (see above).

    Returns:
        The ``onnx.ModelProto``.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> from asg.core.export import to_onnx
        >>> x = ag.input("x", ("B", 3))
        >>> w = ag.parameter(np.ones((2, 3), "float32"), name="fc.weight")
        >>> model = to_onnx(ag.compile(ag.linear(x, w).relu()))
        >>> (
        ...     [i.name for i in model.graph.initializer],
        ...     model.graph.input[0].type.tensor_type.shape.dim[0].dim_param,
        ... )
        (['fc.weight'], 'B')
    """
    try:
        import onnx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "to_onnx needs the onnx package: pip install asg-core[onnx] (or pip install onnx)"
        ) from None
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(
            f"to_onnx: opset must be an int from {MIN_OPSET} (LayerNormalization) to "
            f"{onnx.defs.onnx_opset_version()} (this onnx package's newest), got {opset!r}"
        )
    target = resolve_function(function_or_graph, "to_onnx")
    if isinstance(target, Graph):
        graph, num_outputs, updates = target, len(target.outputs), []
    else:
        graph, num_outputs, updates = target.graph, target.num_outputs, target.updates
    check_inference_graph(graph, updates, "to_onnx", allow_batch_statistics)
    _check_mapped(graph)
    model = _build_model(onnx, graph, graph.outputs[:num_outputs], opset)
    if check:
        onnx.checker.check_model(model, full_check=True)
    if path is not None:
        from ..bundle import _atomic_write

        _atomic_write(path, lambda tmp: onnx.save_model(model, tmp))
    return model


def _build_model(onnx: Any, graph: Graph, outputs: Sequence[Node], opset: int) -> Any:
    from .. import __version__

    helper = onnx.helper
    e = _Emitter(onnx, graph, opset)

    def value_info(name: str, node: Node) -> Any:
        dims = [d if isinstance(d, int) else str(d) for d in node.shape]
        return helper.make_tensor_value_info(name, e.tensor_type(node.dtype), dims)

    inputs = []
    for node in graph.inputs:
        name = e.unique(node.name or f"input_{len(inputs)}")
        e.values[node.id] = name
        inputs.append(value_info(name, node))
    stored: dict[int, str] = {}  # a Variable read by several parameter nodes (tied weights) is stored once
    for node in graph.parameters:
        name = stored.get(id(node.data))
        if name is None:
            name = stored[id(node.data)] = e.initializer(np.asarray(node.data.value), node.name or "param")
        e.values[node.id] = name
    e.bind_symbols(graph.inputs)
    for node in graph.nodes:
        if node.op == "constant":
            e.values[node.id] = e.const(node.data, node.dtype)
        elif node.op not in LEAF_OPS:
            e.current = node
            e.values[node.id] = ONNX_OPS[node.op](e, node, [e.values[i.id] for i in node.inputs])
    e.current = None
    graph_outputs = []
    for i, node in enumerate(outputs):
        base = node.name if node.name and node.op not in LEAF_OPS else None
        name = e.unique(base or ("output" if len(outputs) == 1 else f"output_{i}"))
        e.nodes.append(
            helper.make_node("Identity", [e.values[node.id]], [name], name=e.unique(f"{name}/Identity"))
        )
        graph_outputs.append(value_info(name, node))
    onnx_graph = helper.make_graph(e.nodes, "asg", inputs, graph_outputs, initializer=e.initializers)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="asg-core",
        producer_version=__version__,
    )
