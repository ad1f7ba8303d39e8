"""Elementwise ops: arithmetic, comparisons, selection and activations.

Each op is declared once with its shape rule, gradient rule and numpy kernel. Gradients are
written with the Tensor API; broadcasting is undone by autograd (``sum_to``), not by the rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dtypes import dtype_of, promote
from ..errors import DTypeRuleError, ShapeError
from ..registry import BILINEAR, COMMUTATIVE, ELEMENTWISE, TensorType, define_op
from ..shapes import format_shape
from ..tensor import Tensor, apply, as_tensor, tensor_method
from ._rules import arithmetic, broadcast, comparison, float_unary, logical, same_type, true_division

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _binary(ufunc: np.ufunc):
    def kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return ufunc(a, b, out=out)

    kernel.__name__ = ufunc.__name__
    return kernel


def _arithmetic(ufunc: np.ufunc):
    """A binary kernel that computes bool operands as integers (numpy's bool ``+`` is logical or)."""

    def kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if a.dtype == np.bool_ and b.dtype == np.bool_:
            a = a.astype(np.int64)
        elif a.dtype != b.dtype:  # compute in the dtype the rule infers (int64 + float32 is float32)
            return ufunc(a, b, out=out, dtype=promote(a.dtype.name, b.dtype.name))
        return ufunc(a, b, out=out)

    kernel.__name__ = ufunc.__name__
    return kernel


def _unary(ufunc: np.ufunc):
    def kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return ufunc(x, out=out)

    kernel.__name__ = ufunc.__name__
    return kernel


# ----------------------------------------------------------------------------- arithmetic
define_op(
    "add",
    traits=(COMMUTATIVE,),
    infer=arithmetic,
    grad=lambda g, out, a, b: (g, g),
    kernel=_arithmetic(np.add),
    out_arg=True,
    elementwise=True,
    symbol="+",
)
define_op(
    "sub",
    infer=arithmetic,
    grad=lambda g, out, a, b: (g, -g),
    kernel=_arithmetic(np.subtract),
    out_arg=True,
    elementwise=True,
    symbol="-",
)
define_op(
    "mul",
    traits=(
        COMMUTATIVE,
        BILINEAR,
    ),
    infer=arithmetic,
    grad=lambda g, out, a, b: (g * b, g * a),
    kernel=_arithmetic(np.multiply),
    out_arg=True,
    elementwise=True,
    symbol="*",
)


def _div_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None and not (a.dtype.kind == "f" or b.dtype.kind == "f"):
        return np.divide(a, b, dtype=np.float32)
    return np.divide(a, b, out=out)


define_op(
    "div",
    infer=true_division,
    grad=lambda g, out, a, b: (g / b, -g * out / b),
    kernel=_div_kernel,
    out_arg=True,
    elementwise=True,
    symbol="/",
)


def _pow_grad(g: Tensor, out: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    safe_log = where(a > 0, log(where(a > 0, a, 1.0)), 0.0)
    return g * b * (a ** (b - 1)), g * out * safe_log


define_op(
    "pow",
    infer=arithmetic,
    grad=_pow_grad,
    kernel=_arithmetic(np.power),
    out_arg=True,
    elementwise=True,
    symbol="**",
)
define_op(
    "maximum",
    traits=(COMMUTATIVE,),
    infer=arithmetic,
    kernel=_arithmetic(np.maximum),
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, a, b: (where(a >= b, g, 0.0), where(a >= b, 0.0, g)),
)
define_op(
    "minimum",
    traits=(COMMUTATIVE,),
    infer=arithmetic,
    kernel=_arithmetic(np.minimum),
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, a, b: (where(a <= b, g, 0.0), where(a <= b, 0.0, g)),
)


def _neg_infer(x: TensorType) -> TensorType:
    if x.dtype == "bool":
        raise DTypeRuleError("cannot negate a bool tensor (use ~x or ag.logical_not for logical negation)")
    return x


define_op(
    "neg",
    infer=_neg_infer,
    grad=lambda g, out, x: (-g,),
    kernel=_unary(np.negative),
    out_arg=True,
    elementwise=True,
)
define_op(
    "exp",
    infer=float_unary,
    grad=lambda g, out, x: (g * out,),
    kernel=_unary(np.exp),
    out_arg=True,
    elementwise=True,
)
define_op(
    "log",
    infer=float_unary,
    grad=lambda g, out, x: (g / x,),
    kernel=_unary(np.log),
    out_arg=True,
    elementwise=True,
)
define_op(
    "sqrt",
    infer=float_unary,
    grad=lambda g, out, x: (g * 0.5 / out,),
    kernel=_unary(np.sqrt),
    out_arg=True,
    elementwise=True,
)


def _rsqrt_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.sqrt(x, out=out)
    return np.reciprocal(out, out=out)


define_op(
    "rsqrt",
    infer=float_unary,
    grad=lambda g, out, x: (g * -0.5 * out * out * out,),
    kernel=_rsqrt_kernel,
    out_arg=True,
    elementwise=True,
)
define_op(
    "abs",
    infer=same_type,
    grad=lambda g, out, x: (g * sign(x),),
    kernel=_unary(np.abs),
    out_arg=True,
    elementwise=True,
)
define_op(
    "sign", infer=same_type, differentiable=False, kernel=_unary(np.sign), out_arg=True, elementwise=True
)


# Minimax rational fit of erf on [-4, 4] (odd numerator, even denominator, in x^2), the form used by
# Eigen's and XLA's float32 erf: |error| < 5e-7, within a few float32 ulps, and no exp or branches.
_ERF_NUMERATOR = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_DENOMINATOR = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _erf_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if x.dtype == np.float64:
        result = np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)
    else:
        # Evaluated in float32, in place in three arrays: the kernel sits on the GELU hot path.
        work = np.float32
        clipped = np.clip(x, -4.0, 4.0, dtype=work) if x.dtype != work else np.clip(x, -4.0, 4.0)
        x2 = np.multiply(clipped, clipped)
        num = np.full_like(x2, _ERF_NUMERATOR[0])
        for c in _ERF_NUMERATOR[1:]:
            num *= x2
            num += c
        num *= clipped
        den = np.full_like(x2, _ERF_DENOMINATOR[0])
        for c in _ERF_DENOMINATOR[1:]:
            den *= x2
            den += c
        # The fit overshoots 1 by up to 2 ulps near |x| = 4; clip so that 1 - erf(x) is never negative.
        if out is not None and out.dtype == work:
            return np.clip(np.divide(num, den, out=out), -1.0, 1.0, out=out)
        result = np.clip(np.divide(num, den, out=num), -1.0, 1.0, out=num).astype(x.dtype, copy=False)
    if out is None:
        return result
    np.copyto(out, result)
    return out


define_op(
    "erf",
    infer=float_unary,
    kernel=_erf_kernel,
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, x: (g * (2.0 / math.sqrt(math.pi)) * exp(-x * x),),
)


def _clamp_infer(x: TensorType, min: float | None, max: float | None) -> TensorType:
    if min is not None and max is not None and min > max:
        raise ValueError(f"min={min} is greater than max={max}")
    return x


def _clamp_kernel(
    x: np.ndarray, min: float | None, max: float | None, out: np.ndarray | None = None
) -> np.ndarray:
    if x.dtype.kind in "iu":  # integer bounds, so numpy does not promote the result to float64
        min = None if min is None else x.dtype.type(math.ceil(min))
        max = None if max is None else x.dtype.type(math.floor(max))
    return np.clip(x, min, max, out=out)


define_op(
    "clamp",
    infer=_clamp_infer,
    kernel=_clamp_kernel,
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, x, min, max: (where(_in_range(x, min, max), g, 0.0),),
)


def _in_range(x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    if lo is None:
        return x <= hi
    if hi is None:
        return x >= lo
    return (x >= lo) & (x <= hi)


# ----------------------------------------------------------------------------- comparisons and selection
for _name, _ufunc, _sym, _traits in (
    ("less", np.less, "<", ()),
    ("less_equal", np.less_equal, "<=", ()),
    ("greater", np.greater, ">", ()),
    ("greater_equal", np.greater_equal, ">=", ()),
    ("equal", np.equal, "==", (COMMUTATIVE,)),
    ("not_equal", np.not_equal, "!=", (COMMUTATIVE,)),
):
    define_op(
        _name,
        traits=_traits,
        infer=comparison,
        differentiable=False,
        kernel=_binary(_ufunc),
        out_arg=True,
        elementwise=True,
        symbol=_sym,
    )
define_op(
    "logical_and",
    traits=(COMMUTATIVE,),
    infer=logical,
    differentiable=False,
    kernel=_binary(np.logical_and),
    out_arg=True,
    elementwise=True,
    symbol="&",
)
define_op(
    "logical_or",
    traits=(COMMUTATIVE,),
    infer=logical,
    differentiable=False,
    kernel=_binary(np.logical_or),
    out_arg=True,
    elementwise=True,
    symbol="|",
)


def _logical_not_infer(x: TensorType) -> TensorType:
    if x.dtype != "bool":
        raise DTypeRuleError(f"expected a bool tensor, got {x.dtype}")
    return x


define_op(
    "logical_not",
    infer=_logical_not_infer,
    differentiable=False,
    kernel=_unary(np.logical_not),
    out_arg=True,
    elementwise=True,
)


def _where_infer(cond: TensorType, a: TensorType, b: TensorType) -> TensorType:
    if cond.dtype != "bool":
        raise DTypeRuleError(
            f"the condition must be a bool tensor, got {cond.dtype} (compare first, e.g. x > 0)"
        )
    return TensorType(broadcast(cond, a, b), promote(a.dtype, b.dtype))


def _where_kernel(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype != b.dtype:  # numpy would promote int32 with float32 to float64; the graph says float32
        dtype = promote(dtype_of(a.dtype), dtype_of(b.dtype))
        a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    return np.where(cond, a, b)


define_op(
    "where",
    traits=(ELEMENTWISE,),
    infer=_where_infer,
    kernel=_where_kernel,
    grad=lambda g, out, c, a, b: (None, where(c, g, 0.0), where(c, 0.0, g)),
)


# ----------------------------------------------------------------------------- activations
def _relu_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, 0, out=out)


define_op(
    "relu",
    infer=float_unary,
    kernel=_relu_kernel,
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, x: (where(x > 0, g, 0.0),),
)


def _leaky_relu_kernel(x: np.ndarray, negative_slope: float, out: np.ndarray | None = None) -> np.ndarray:
    return np.where(x > 0, x, x * np.asarray(negative_slope, x.dtype))


define_op(
    "leaky_relu",
    infer=float_unary,
    kernel=_leaky_relu_kernel,
    elementwise=True,
    grad=lambda g, out, x, negative_slope: (where(x > 0, g, g * negative_slope),),
)


def _elu_kernel(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(np.minimum(x, 0)))


define_op(
    "elu",
    infer=float_unary,
    kernel=_elu_kernel,
    elementwise=True,
    grad=lambda g, out, x, alpha: (where(x > 0, g, g * (out + alpha)),),
)


def _sigmoid_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # With e = exp(-|x|) in (0, 1]: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0. Nothing
    # overflows, and tiny values for very negative x keep their relative precision.
    negative = x < 0
    e = np.exp(-np.abs(x))
    out = np.divide(np.asarray(1, x.dtype), np.add(e, 1, out=np.empty_like(e)), out=out)
    np.multiply(out, e, out=out, where=negative)
    return out


define_op(
    "sigmoid",
    infer=float_unary,
    kernel=_sigmoid_kernel,
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, x: (g * out * (1.0 - out),),
)
define_op(
    "tanh",
    infer=float_unary,
    kernel=_unary(np.tanh),
    out_arg=True,
    elementwise=True,
    grad=lambda g, out, x: (g * (1.0 - out * out),),
)


def _silu_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # ``out`` may be ``x`` itself (the planner runs elementwise ops in place): read x before writing out.
    return np.multiply(_sigmoid_kernel(x), x, out=out)


def _silu_grad(g: Tensor, out: Tensor, x: Tensor) -> tuple[Tensor]:
    s = sigmoid(x)
    return (g * (s * (1.0 + x * (1.0 - s))),)


define_op("silu", infer=float_unary, kernel=_silu_kernel, out_arg=True, elementwise=True, grad=_silu_grad)


def _softplus_kernel(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    bx = x * np.asarray(beta, x.dtype)
    soft = (np.logaddexp(bx, np.zeros_like(bx)) / np.asarray(beta, x.dtype)).astype(x.dtype)
    return np.where(bx > threshold, x, soft)


define_op(
    "softplus",
    infer=float_unary,
    kernel=_softplus_kernel,
    elementwise=True,
    grad=lambda g, out, x, beta, threshold: (where(x * beta > threshold, g, g * sigmoid(x * beta)),),
)


def _gelu_kernel(x: np.ndarray, approximate: str) -> np.ndarray:
    half = np.asarray(0.5, x.dtype)
    if approximate == "tanh":
        inner = np.asarray(math.sqrt(2.0 / math.pi), x.dtype) * (
            x + np.asarray(0.044715, x.dtype) * x * x * x
        )
        return half * x * (1 + np.tanh(inner))
    out = _erf_kernel(x * np.asarray(1 / _SQRT_2, x.dtype))
    out += 1
    out *= x
    out *= half
    return out


def _gelu_grad(g: Tensor, out: Tensor, x: Tensor, approximate: str) -> tuple[Tensor]:
    if approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        t = tanh(k * (x + 0.044715 * x * x * x))
        return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)),)
    cdf = 0.5 * (1.0 + erf(x * (1 / _SQRT_2)))
    return (g * (cdf + x * _INV_SQRT_2PI * exp(-0.5 * x * x)),)


def _gelu_infer(x: TensorType, approximate: str) -> TensorType:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return float_unary(x)


define_op("gelu", infer=_gelu_infer, kernel=_gelu_kernel, elementwise=True, grad=_gelu_grad)


# ----------------------------------------------------------------------------- cast
def _cast_infer(x: TensorType, dtype: str) -> TensorType:
    return TensorType(x.shape, dtype_of(dtype))


def _cast_kernel(x: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        return x.astype(dtype)
    np.copyto(out, x, casting="unsafe")
    return out


def _cast_grad(g: Tensor, out: Tensor, x: Tensor, dtype: str) -> tuple[Tensor | None]:
    return (cast(g, x.dtype) if x.dtype in ("float16", "float32", "float64") else None,)


define_op("cast", infer=_cast_infer, kernel=_cast_kernel, out_arg=True, elementwise=True, grad=_cast_grad)


# ----------------------------------------------------------------------------- public functions
# Shapes: ``(*a), (*b) -> broadcast(a, b)`` for binary ops, ``(*) -> (*)`` for unary ones.
def add(a: Any, b: Any) -> Tensor:
    """``a + b`` with broadcasting: (*a), (*b) -> broadcast(a, b)."""
    return apply("add", a, b)


def sub(a: Any, b: Any) -> Tensor:
    """``a - b`` with broadcasting: (*a), (*b) -> broadcast(a, b)."""
    return apply("sub", a, b)


def mul(a: Any, b: Any) -> Tensor:
    """``a * b`` with broadcasting: (*a), (*b) -> broadcast(a, b)."""
    return apply("mul", a, b)


def div(a: Any, b: Any) -> Tensor:
    """``a / b`` with broadcasting (integers divide to float32): (*a), (*b) -> broadcast(a, b)."""
    return apply("div", a, b)


def pow(a: Any, b: Any) -> Tensor:
    """``a ** b`` with broadcasting: (*a), (*b) -> broadcast(a, b)."""
    return apply("pow", a, b)


@tensor_method
def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum, ties send the gradient to ``a``: (*a), (*b) -> broadcast(a, b)."""
    return apply("maximum", a, b)


@tensor_method
def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum, ties send the gradient to ``a``: (*a), (*b) -> broadcast(a, b)."""
    return apply("minimum", a, b)


def neg(x: Any) -> Tensor:
    """``-x``: (*) -> (*)."""
    return apply("neg", x)


@tensor_method
def exp(x: Any) -> Tensor:
    """``e ** x`` elementwise: (*) -> (*)."""
    return apply("exp", x)


@tensor_method
def log(x: Any) -> Tensor:
    """Natural logarithm elementwise: (*) -> (*)."""
    return apply("log", x)


@tensor_method
def sqrt(x: Any) -> Tensor:
    """Square root elementwise: (*) -> (*)."""
    return apply("sqrt", x)


@tensor_method
def rsqrt(x: Any) -> Tensor:
    """``1 / sqrt(x)`` elementwise: (*) -> (*)."""
    return apply("rsqrt", x)


@tensor_method
def abs(x: Any) -> Tensor:
    """Absolute value elementwise (gradient ``sign(x)``, 0 at 0): (*) -> (*)."""
    return apply("abs", x)


@tensor_method
def sign(x: Any) -> Tensor:
    """-1, 0 or 1 elementwise, no gradient flows through it: (*) -> (*)."""
    return apply("sign", x)


@tensor_method
def erf(x: Any) -> Tensor:
    """The error function elementwise: (*) -> (*)."""
    return apply("erf", x)


@tensor_method
def clamp(x: Any, min: float | None = None, max: float | None = None) -> Tensor:
    """Limit values to ``[min, max]`` (either bound may be None), gradient 0 outside: (*) -> (*).

    >>> import asg.core as ag
    >>> ag.clamp(ag.input("x", (3,)), 0.0, 1.0).shape
    (3,)
    """
    if min is None and max is None:
        raise ValueError("clamp: give min, max or both")
    return apply("clamp", x, min=None if min is None else float(min), max=None if max is None else float(max))


def less(a: Any, b: Any) -> Tensor:
    """``a < b`` (bool): (*a), (*b) -> broadcast(a, b)."""
    return apply("less", a, b)


def greater(a: Any, b: Any) -> Tensor:
    """``a > b`` (bool): (*a), (*b) -> broadcast(a, b)."""
    return apply("greater", a, b)


def equal(a: Any, b: Any) -> Tensor:
    """``a == b`` (bool): (*a), (*b) -> broadcast(a, b)."""
    return apply("equal", a, b)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """``a`` where ``cond`` holds, else ``b``: (*c), (*a), (*b) -> broadcast(c, a, b).

    >>> import asg.core as ag
    >>> x = ag.input("x", (4,))
    >>> ag.where(x > 0, x, 0.0).shape
    (4,)
    """
    ref = next((v.dtype for v in (a, b) if isinstance(v, Tensor)), None)
    return apply("where", cond, as_tensor(a, ref), as_tensor(b, ref))


@tensor_method
def masked_fill(x: Any, mask: Any, value: float) -> Tensor:
    """``value`` where the bool ``mask`` holds, else ``x`` (``torch.masked_fill``): (*x), (*m) -> (*x).

    The mask broadcasts against ``x``; no gradient reaches ``x`` where it is filled.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> scores = ag.input("scores", ("T", "T"))
    >>> masked = scores.masked_fill(~ag.causal_mask("T"), float("-inf"))
    >>> ag.compile(masked)(np.zeros((2, 2), "float32")).tolist()
    [[0.0, -inf], [0.0, 0.0]]
    """
    x = as_tensor(x)
    mask = as_tensor(mask)
    out = apply("where", mask, as_tensor(value, x.dtype), x)
    if out.shape != x.shape:
        raise ShapeError(
            f"masked_fill: mask {mask.node.label} {format_shape(mask.shape)} must broadcast to "
            f"x {x.node.label} {format_shape(x.shape)} without growing it"
        )
    return out


@tensor_method
def relu(x: Any) -> Tensor:
    """``max(x, 0)`` elementwise: (*) -> (*)."""
    return apply("relu", x)


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    """``x`` for positive inputs, ``negative_slope * x`` otherwise: (*) -> (*)."""
    return apply("leaky_relu", x, negative_slope=float(negative_slope))


def elu(x: Any, alpha: float = 1.0) -> Tensor:
    """``x`` for positive inputs, ``alpha * (exp(x) - 1)`` otherwise: (*) -> (*)."""
    return apply("elu", x, alpha=float(alpha))


@tensor_method
def sigmoid(x: Any) -> Tensor:
    """``1 / (1 + exp(-x))``, computed without overflow: (*) -> (*)."""
    return apply("sigmoid", x)


@tensor_method
def tanh(x: Any) -> Tensor:
    """Hyperbolic tangent elementwise: (*) -> (*)."""
    return apply("tanh", x)


def silu(x: Any) -> Tensor:
    """``x * sigmoid(x)`` (also called swish): (*) -> (*)."""
    return apply("silu", x)


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold`` as in PyTorch: (*) -> (*)."""
    return apply("softplus", x, beta=float(beta), threshold=float(threshold))


def gelu(x: Any, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit, exact (``"none"``) or tanh-approximated (``"tanh"``): (*) -> (*)."""
    return apply("gelu", x, approximate=approximate)


@tensor_method(name="astype")
def cast(x: Any, dtype: Any) -> Tensor:
    """Convert to ``dtype`` (``x.astype(dtype)``); gradients flow back to float inputs: (*) -> (*).

    >>> import asg.core as ag
    >>> ag.cast(ag.input("i", (3,), "int64"), "float32").dtype
    'float32'
    """
    dtype = dtype_of(dtype)
    if isinstance(x, Tensor) and x.dtype == dtype:
        return x
    return apply("cast", x, dtype=dtype)
