"""Elementwise fusion codegen: one group of elementwise nodes -> the source of one numba loop.

A group (nodes of one iteration space, see :mod:`asg.core.fusion`) becomes a function
``kernel(a0, a1, ..., o0, o1, ...)`` that reads each external input once per element, keeps every
intermediate value in a local variable and writes each group output once: one pass over memory
instead of one per op. The loop nest is fixed when the plan is built, from the concrete shapes:

- ``"flat"``: every input is either the whole space or one element; the loop runs over the flat
  index in blocks (``prange`` over blocks);
- ``"3d"``: the space collapsed to ``(n0, n1, n2)``, each input either spanning or broadcast along
  each of the three axes (a bias is ``(1, 1, n2)``, a keepdims row statistic ``(1, n1, 1)``, a
  per-channel conv bias ``(1, n1, 1)`` of ``(N, C, H*W)``); ``prange`` over ``n0 * n1``.

Every value is computed in the dtype the graph infers for it (constants are typed literals, mixed
operands are cast first), so results match the numpy kernels to float rounding.
:func:`kernel_source` is pure (no numba import): the tests read the source it writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ...graph import Node

_FLOATS = ("float32", "float64")
_INPUT_DTYPES = ("float32", "float64", "bool", "int32", "int64")
_NP = {
    "float32": "np.float32",
    "float64": "np.float64",
    "bool": "np.bool_",
    "int32": "np.int32",
    "int64": "np.int64",
}
FLAT_BLOCK = 16384  # elements per parallel task of a flat loop


def _lit(value: float, dtype: str) -> str:
    """A typed literal: ``np.float32(0.5)`` (a bare Python float would promote float32 to float64)."""
    if math.isnan(value):
        return f"{_NP[dtype]}(np.nan)"
    if math.isinf(value):
        return f"{_NP[dtype]}({'-' if value < 0 else ''}np.inf)"
    return f"{_NP[dtype]}({float(value)!r})"


# Each rule: (node, operand expressions already cast to the computing dtype, that dtype) -> expression.
Rule = Callable[[Node, Sequence[str], str], str]


def _binary(fmt: str) -> Rule:
    return lambda n, a, t: fmt.format(a=a[0], b=a[1])


def _unary(fmt: str) -> Rule:
    return lambda n, a, t: fmt.format(x=a[0], T=_NP[t])


def _clamp(n: Node, a: Sequence[str], t: str) -> str:
    lo, hi = n.attrs.get("min"), n.attrs.get("max")
    expr = a[0]
    if lo is not None:
        expr = f"_max({expr}, {_lit(lo, t)})"
    if hi is not None:
        expr = f"_min({expr}, {_lit(hi, t)})"
    return expr


def _leaky(n: Node, a: Sequence[str], t: str) -> str:
    return f"({a[0]} if {a[0]} > 0 else {a[0]} * {_lit(n.attrs['negative_slope'], t)})"


def _elu(n: Node, a: Sequence[str], t: str) -> str:
    return f"({a[0]} if {a[0]} > 0 else {_lit(n.attrs['alpha'], t)} * np.expm1({a[0]}))"


def _softplus(n: Node, a: Sequence[str], t: str) -> str:
    beta, threshold = n.attrs["beta"], n.attrs["threshold"]
    return f"_softplus({a[0]}, {_lit(beta, t)}, {_lit(threshold, t)}, {_lit(0.0, t)})"


def _gelu(n: Node, a: Sequence[str], t: str) -> str:
    x = a[0]
    if n.attrs.get("approximate") == "tanh":
        inner = f"{_lit(math.sqrt(2.0 / math.pi), t)} * ({x} + {_lit(0.044715, t)} * {x} * {x} * {x})"
        return f"{_lit(0.5, t)} * {x} * ({_lit(1.0, t)} + np.tanh({inner}))"
    return f"({_erf_call(t, f'{x} * {_lit(1 / math.sqrt(2.0), t)}')} + {_lit(1.0, t)}) * {x} * {_lit(0.5, t)}"


def _erf_call(t: str, x: str) -> str:
    return f"_erf32({x})" if t == "float32" else f"math.erf({x})"


def _sigmoid(t: str) -> str:
    return "_sigmoid32" if t == "float32" else "_sigmoid"


def _cast(n: Node, a: Sequence[str], t: str) -> str:
    return f"({a[0]} != 0)" if t == "bool" else a[0]


RULES: dict[str, Rule] = {
    "add": _binary("({a} + {b})"),
    "sub": _binary("({a} - {b})"),
    "mul": _binary("({a} * {b})"),
    "div": _binary("({a} / {b})"),
    "pow": _binary("({a} ** {b})"),
    "maximum": _binary("_max({a}, {b})"),
    "minimum": _binary("_min({a}, {b})"),
    "neg": _unary("(-{x})"),
    "exp": lambda n, a, t: f"_exp32({a[0]})" if t == "float32" else f"np.exp({a[0]})",
    "log": _unary("np.log({x})"),
    "sqrt": _unary("np.sqrt({x})"),
    "rsqrt": _unary("({T}(1.0) / np.sqrt({x}))"),
    "abs": _unary("abs({x})"),
    "sign": _unary("np.sign({x})"),
    "erf": lambda n, a, t: _erf_call(t, a[0]),
    "clamp": _clamp,
    "less": _binary("({a} < {b})"),
    "less_equal": _binary("({a} <= {b})"),
    "greater": _binary("({a} > {b})"),
    "greater_equal": _binary("({a} >= {b})"),
    "equal": _binary("({a} == {b})"),
    "not_equal": _binary("({a} != {b})"),
    "logical_and": _binary("({a} and {b})"),
    "logical_or": _binary("({a} or {b})"),
    "logical_not": _unary("(not {x})"),
    "where": lambda n, a, t: f"({a[1]} if {a[0]} else {a[2]})",
    "relu": _unary("({x} if not ({x} < 0) else {T}(0.0))"),
    "leaky_relu": _leaky,
    "elu": _elu,
    "sigmoid": lambda n, a, t: f"{_sigmoid(t)}({a[0]}, {_NP[t]}(1.0))",
    "tanh": _unary("np.tanh({x})"),
    "silu": lambda n, a, t: f"({a[0]} * {_sigmoid(t)}({a[0]}, {_NP[t]}(1.0)))",
    "softplus": _softplus,
    "gelu": _gelu,
    "cast": _cast,
}
# Ops whose operands are compared or selected rather than computed in the output dtype.
_COMPARE = frozenset({"less", "less_equal", "greater", "greater_equal", "equal", "not_equal"})
_LOGICAL = frozenset({"logical_and", "logical_or", "logical_not"})

# Helpers the rules call, emitted into every generated module (numba inlines them).
_HELPERS = """
@njit(cache=True, inline="always", error_model="numpy")
def _max(a, b):
    # numpy's maximum: NaN wins
    return a if (a >= b or a != a) else b


@njit(cache=True, inline="always", error_model="numpy")
def _min(a, b):
    return a if (a <= b or a != a) else b


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid(x, one):
    # exp(-|x|) in (0, 1]: nothing overflows (as the numpy kernel)
    e = np.exp(-abs(x))
    return one / (one + e) if x >= 0 else e / (one + e)


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid32(x, one):
    e = _exp32(-abs(x))
    return one / (one + e) if x >= 0 else e / (one + e)


@njit(cache=True, inline="always", error_model="numpy")
def _softplus(x, beta, threshold, zero):
    # logaddexp(beta * x, 0) / beta, and x itself above the threshold
    bx = x * beta
    if bx > threshold:
        return x
    return (_max(bx, zero) + np.log1p(np.exp(-abs(bx)))) / beta


@njit(cache=True, inline="always", error_model="numpy")
def _erf32(x0):
    # The float32 rational fit of asg.core.ops.elementwise._erf_kernel, term for term; selects, not
    # branches, so that loops calling it vectorise.
    x = min(max(x0, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    num = np.float32(NUM0)
NUM_STEPS
    num = num * x
    den = np.float32(DEN0)
DEN_STEPS
    r = min(max(num / den, np.float32(-1.0)), np.float32(1.0))
    return x0 if x0 != x0 else r
"""


def _helpers() -> str:
    from ...ops.elementwise import _ERF_DENOMINATOR, _ERF_NUMERATOR

    num = "\n".join(f"    num = num * x2 + np.float32({c!r})" for c in _ERF_NUMERATOR[1:])
    den = "\n".join(f"    den = den * x2 + np.float32({c!r})" for c in _ERF_DENOMINATOR[1:])
    return (
        _HELPERS.replace("NUM0", repr(_ERF_NUMERATOR[0]))
        .replace("DEN0", repr(_ERF_DENOMINATOR[0]))
        .replace("NUM_STEPS", num)
        .replace("DEN_STEPS", den)
    )


def supported(node: Node) -> bool:
    """True when :func:`kernel_source` can compute ``node`` inside a fused loop."""
    if node.op not in RULES or node.dtype not in (*_FLOATS, "bool"):
        return False
    if any(i.dtype not in _INPUT_DTYPES for i in node.inputs):
        return False
    if node.dtype == "bool":
        return node.op in _COMPARE or node.op in _LOGICAL or node.op in ("where", "cast")
    if node.op == "cast":
        return node.inputs[0].dtype in (*_FLOATS, "bool")
    return True


@dataclass(frozen=True)
class Layout:
    """The loop nest of one fused kernel for concrete shapes.

    Attributes:
        kind: ``"flat"`` or ``"3d"``.
        shape: the collapsed iteration shape (``(n,)`` for flat, ``(n0, n1, n2)`` for 3d).
        input_shapes: the shape each input is reshaped to (``(1,)`` or ``(n,)`` for flat; 3d: per
            axis the full extent or 1).
    """

    kind: str
    shape: tuple[int, ...]
    input_shapes: tuple[tuple[int, ...], ...]


def layout(space: Sequence[int], input_shapes: Sequence[Sequence[int]]) -> Layout | None:
    """The loop nest for inputs of ``input_shapes`` broadcast to ``space``; ``None`` when it needs more
    than three axes (the group then runs on the numpy kernels).

    >>> layout((16, 64, 512), [(16, 64, 512), (512,), ()])
    Layout(kind='3d', shape=(1, 1024, 512), input_shapes=((1, 1024, 512), (1, 1, 512), (1, 1, 1)))
    >>> layout((8, 4), [(8, 4), ()]).kind
    'flat'
    """
    space = tuple(int(d) for d in space)
    rank = len(space)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in input_shapes]
    size = math.prod(space)
    if all(math.prod(s) in (1, size) for s in padded):
        return Layout(
            "flat", (size,), tuple((1,) if math.prod(s) == 1 and size != 1 else (size,) for s in padded)
        )
    # Per kept axis (extent > 1): which inputs span it. Adjacent axes with the same pattern merge.
    axes: list[tuple[int, tuple[bool, ...]]] = []
    for d, extent in enumerate(space):
        if extent == 1:
            continue
        pattern = tuple(s[d] == extent for s in padded)
        if axes and axes[-1][1] == pattern:
            axes[-1] = (axes[-1][0] * extent, pattern)
        else:
            axes.append((extent, pattern))
    if len(axes) > 3:
        return None
    axes = [(1, tuple(True for _ in padded))] * (3 - len(axes)) + axes
    shape = tuple(extent for extent, _ in axes)
    shapes = tuple(tuple(extent if pattern[k] else 1 for extent, pattern in axes) for k in range(len(padded)))
    return Layout("3d", shape, shapes)


def kernel_source(
    name: str,
    nodes: Sequence[Node],
    inputs: Sequence[Node],
    outputs: Sequence[Node],
    lay: Layout,
    parallel: bool,
    literals: Mapping[int, float] | None = None,
) -> str:
    """Python source of a module defining ``name(a0, ..., o0, ...)``: the group's loop (see module doc).

    ``nodes`` are the group's nodes in graph order, ``inputs`` the values read from memory (in
    argument order) and ``outputs`` the values written (in argument order). ``literals`` maps the
    position of an input that is a one-element float constant to its value: the loop uses it as a
    literal (its argument is still passed, unread), so LLVM sees equal subexpressions as equal (GELU's
    backward computes erf(x * 0.7071...) once for the forward value and its derivative, not twice).
    """
    var: dict[int, str] = {}
    args = [f"a{k}" for k in range(len(inputs))]
    outs = [f"o{k}" for k in range(len(outputs))]
    hoisted, row_loads, loads, sliced = [], [], [], []
    for k, (node, shape) in enumerate(zip(inputs, lay.input_shapes, strict=True)):
        if literals and k in literals:
            var[node.id] = _lit(literals[k], node.dtype)
            continue
        v = f"x{k}"
        var[node.id] = v
        if lay.kind == "flat":
            if shape[0] > 1 or lay.shape[0] == 1:
                loads.append(f"{v} = a{k}_[t]")
                sliced.append(f"a{k}")
            else:
                hoisted.append(f"{v} = a{k}[0]")
            continue
        idx = [("i" if shape[0] > 1 else "0"), ("j" if shape[1] > 1 else "0"), ("k" if shape[2] > 1 else "0")]
        line = f"{v} = a{k}[{', '.join(idx)}]"
        if shape[2] > 1:
            loads.append(line)
        elif shape[0] > 1 or shape[1] > 1:
            row_loads.append(line)
        else:
            hoisted.append(line)
    body = []
    for n_index, node in enumerate(nodes):
        operands = []
        t = node.dtype
        compute = t
        if node.op in _COMPARE:
            compute = _promote([i.dtype for i in node.inputs])
        for i in node.inputs:
            operand = var[i.id]
            want = compute
            if (node.op == "where" and i is node.inputs[0]) or node.op in _LOGICAL or node.op == "cast":
                want = i.dtype
            if i.dtype != want:
                operand = f"{_NP[want]}({operand})"
            operands.append(operand)
        expr = RULES[node.op](node, operands, compute)
        v = f"v{n_index}"
        body.append(f"{v} = {_NP[t]}({expr})" if t != "bool" else f"{v} = {expr}")
        var[node.id] = v
    for k, node in enumerate(outputs):
        if lay.kind == "flat":
            body.append(f"{outs[k]}_[t] = {var[node.id]}")
            sliced.append(outs[k])
        else:
            body.append(f"{outs[k]}[i, j, k] = {var[node.id]}")
    lines = [
        "import math",
        "",
        "import numpy as np",
        "from numba import njit, prange",
        "",
        "from asg.core.backends.jit.mathfn import exp32 as _exp32",
        _helpers(),
        "",
        f"@njit(parallel={parallel}, cache=True, fastmath=False, nogil=True, error_model='numpy')",
        f"def {name}({', '.join(args + outs)}):",
    ]
    ind = "    "
    lines += [ind + h for h in hoisted]
    if lay.kind == "flat":
        # Each task takes a slice of every full-size array: indexing from 0 lets LLVM vectorise.
        lines += [
            ind + "n = o0.shape[0]",
            ind + f"for b in prange((n + {FLAT_BLOCK - 1}) // {FLAT_BLOCK}):",
            ind * 2 + f"lo = b * {FLAT_BLOCK}",
            ind * 2 + f"hi = min(n, lo + {FLAT_BLOCK})",
        ]
        lines += [ind * 2 + f"{a}_ = {a}[lo:hi]" for a in sliced]
        lines.append(ind * 2 + "for t in range(hi - lo):")
        lines += [ind * 3 + s for s in loads + body]
    else:
        lines += [
            ind + "n0, n1, n2 = o0.shape",
            ind + "for ij in prange(n0 * n1):",
            ind * 2 + "i = ij // n1",
            ind * 2 + "j = ij - i * n1",
        ]
        lines += [ind * 2 + s for s in row_loads]
        lines.append(ind * 2 + "for k in range(n2):")
        lines += [ind * 3 + s for s in loads + body]
    return "\n".join(lines) + "\n"


def _promote(dtypes: Sequence[str]) -> str:
    from ...dtypes import promote

    result = dtypes[0]
    for d in dtypes[1:]:
        result = promote(result, d)
    return result
