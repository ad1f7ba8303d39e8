"""Shapes whose dimensions may be symbolic.

A dimension is an ``int`` or a ``str``: a symbol such as ``"B"`` (a batch size fixed only when the
graph runs) or a product of symbols and integers such as ``"B*T"`` or ``"4*B"``. Sums, which a few
ops produce, are kept as opaque parenthesised expressions such as ``"(B+T)"``. Every symbolic
dimension is resolved to an ``int`` when a plan is compiled for concrete input shapes.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping, Sequence

Dim = int | str
Shape = tuple[Dim, ...]


def _split_product(dim: str) -> list[str]:
    """Split ``"4*B*(S+T)"`` into ``["4", "B", "(S+T)"]`` (top-level ``*`` only)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(dim):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "*" and depth == 0:
            parts.append(dim[start:i])
            start = i + 1
    parts.append(dim[start:])
    return [p.strip() for p in parts]


def _factors(dim: Dim) -> tuple[int, list[str]]:
    """A dimension as (integer coefficient, sorted symbolic factors)."""
    if isinstance(dim, int):
        return dim, []
    coeff, names = 1, []
    for part in _split_product(dim):
        if part.lstrip("-").isdigit():
            coeff *= int(part)
        else:
            names.append(part)
    return coeff, sorted(names)


def _from_factors(coeff: int, names: list[str]) -> Dim:
    if not names:
        return coeff
    if coeff == 0:
        return 0
    body = "*".join(sorted(names))
    return body if coeff == 1 else f"{coeff}*{body}"


def normalize_dim(dim: Dim) -> Dim:
    """Canonical form of a dimension: ``"T*B"`` and ``"B*T"`` both become ``"B*T"``."""
    if isinstance(dim, bool) or not isinstance(dim, (int, str)):
        if hasattr(dim, "__index__"):
            return int(dim)  # numpy integers
        raise TypeError(f"a dimension must be an int or a symbol name, got {dim!r}")
    return _from_factors(*_factors(dim))


def normalize_shape(shape: Iterable[Dim] | Dim) -> Shape:
    """A shape as a tuple of canonical dimensions; an int or a symbol alone is a 1-d shape."""
    if isinstance(shape, (int, str)):
        shape = (shape,)
    return tuple(normalize_dim(d) for d in shape)


def dim_mul(a: Dim, b: Dim) -> Dim:
    """Product of two dimensions, symbolic where either is."""
    ca, na = _factors(a)
    cb, nb = _factors(b)
    return _from_factors(ca * cb, na + nb)


def dim_prod(dims: Iterable[Dim]) -> Dim:
    """Product of dimensions; ``1`` for none."""
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it divides exactly (symbols cancel), else ``None``."""
    ca, na = _factors(a)
    cb, nb = _factors(b)
    if cb == 0 or ca % cb:
        return None
    rest = list(na)
    for name in nb:
        if name not in rest:
            return None
        rest.remove(name)
    return _from_factors(ca // cb, rest)


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of two dimensions; symbolic sums stay expressions (``"(B+T)"``)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    if isinstance(b, int) and b < 0:
        return f"({a}-{-b})"
    return f"({a}+{b})"


def dim_floordiv(a: Dim, b: int) -> Dim:
    """``a // b`` for a positive int ``b``: exact when it divides, else an expression."""
    exact = dim_div(a, b)
    if exact is not None:
        return exact
    if isinstance(a, int):
        return a // b
    return f"({a}//{b})"


def is_static(shape: Sequence[Dim]) -> bool:
    """True when every dimension is an int."""
    return all(isinstance(d, int) for d in shape)


def format_shape(shape: Sequence[Dim]) -> str:
    """``(B, 784)`` style; a 0-d shape prints as ``()``."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def broadcast_shapes(*shapes: Sequence[Dim]) -> Shape:
    """NumPy broadcasting over possibly symbolic shapes.

    A size-1 dimension stretches; a symbol meeting an int other than 1 takes the int (the
    symbol is checked when the plan is compiled). Raises ``ValueError`` when two dims differ.

    >>> broadcast_shapes(("B", 1, 4), (3, 4))
    ('B', 3, 4)
    """
    ndim = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(ndim):
        result: Dim = 1
        for shape in shapes:
            i = axis - (ndim - len(shape))
            if i < 0:
                continue
            d = shape[i]
            if d == 1 or d == result:
                continue
            if result == 1:
                result = d
            elif isinstance(result, str) and isinstance(d, int):
                result = d
            elif isinstance(result, int) and isinstance(d, str):
                continue
            else:
                raise ValueError(f"dimension {d} does not broadcast against {result} (axis {axis - ndim})")
        out.append(result)
    return tuple(out)


def normalize_axis(axis: int, ndim: int, what: str = "axis") -> int:
    """A non-negative axis, or ``ValueError`` naming the allowed range."""
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{what} {axis} is out of range for a {ndim}-d tensor")
    return axis % ndim if ndim else 0


def normalize_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Sorted non-negative axes; ``None`` means all of them."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    axes = tuple(sorted({normalize_axis(a, ndim) for a in axis}))
    return axes


_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.Name, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Load,
)


def resolve_dim(dim: Dim, bindings: Mapping[str, int]) -> int:
    """The int value of a dimension given values for its symbols.

    >>> resolve_dim("4*B", {"B": 8})
    32
    """
    if isinstance(dim, int):
        return dim
    if dim in bindings:
        return bindings[dim]
    tree = ast.parse(dim, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(f"malformed symbolic dimension {dim!r}")

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return int(node.value)
        if isinstance(node, ast.Name):
            if node.id not in bindings:
                raise ValueError(f"symbolic dimension {node.id!r} has no value (known: {dict(bindings)})")
            return bindings[node.id]
        assert isinstance(node, ast.BinOp)
        left, right = value(node.left), value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.FloorDiv):
            return left // right
        return left * right

    return value(tree)


def resolve_shape(shape: Sequence[Dim], bindings: Mapping[str, int]) -> tuple[int, ...]:
    """A shape with every symbol replaced by its value."""
    return tuple(resolve_dim(d, bindings) for d in shape)


def bind_shape(declared: Sequence[Dim], actual: Sequence[int], bindings: dict[str, int], what: str) -> None:
    """Check a concrete shape against a declared one, recording values of new symbols in ``bindings``."""
    if len(declared) != len(actual):
        raise ValueError(
            f"{what}: expected a {len(declared)}-d array of shape {format_shape(declared)}, "
            f"got shape {tuple(actual)}"
        )
    pending = []
    for d, n in zip(declared, actual, strict=True):
        if isinstance(d, int):
            if d != n:
                raise ValueError(f"{what}: expected shape {format_shape(declared)}, got {tuple(actual)}")
        elif d.isidentifier():
            if bindings.setdefault(d, n) != n:
                raise ValueError(
                    f"{what}: dimension {d} is {n} here but {bindings[d]} in another input "
                    f"(shape {tuple(actual)} against {format_shape(declared)})"
                )
        else:
            pending.append((d, n))
    for d, n in pending:
        if resolve_dim(d, bindings) != n:
            raise ValueError(f"{what}: expected shape {format_shape(declared)}, got {tuple(actual)}")


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a concrete shape."""
    return math.prod(shape)
