"""Shapes whose dimensions may be symbolic.

A dimension is an ``int`` or a ``str``: a symbol such as ``"B"`` (a batch size fixed only when the
graph runs) or an integer polynomial of symbols such as ``"B*T"``, ``"4*B"`` or ``"(B+2)"``, with
``//`` by an integer kept as an opaque factor (``"((B-1)//2)"``). Dimensions are kept in one
canonical text form, so ``"(B+T)"`` minus ``"B"`` is ``"T"``. Every symbolic dimension is resolved to
an ``int`` when a plan is compiled for concrete input shapes.

Parsing takes bounded time whatever the text: a dimension longer than :data:`MAX_DIM_CHARS`, one whose
expansion has more than :data:`MAX_DIM_TERMS` terms, or malformed text raises ``ValueError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from numpy import bool_ as np_bool

Dim = int | str
Shape = tuple[Dim, ...]


Poly = dict[tuple[str, ...], int]  # monomial (sorted atoms, repeats allowed) -> integer coefficient


def _poly_add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for mono, c in b.items():
        out[mono] = out.get(mono, 0) + sign * c
    return {m: c for m, c in out.items() if c}


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            mono = tuple(sorted(ma + mb))
            out[mono] = out.get(mono, 0) + ca * cb
    return {m: c for m, c in out.items() if c}


def _poly_floordiv(a: Poly, b: Poly) -> Poly:
    if len(b) == 1 and () in b and b[()] > 0 and all(c % b[()] == 0 for c in a.values()):
        return {m: c // b[()] for m, c in a.items()}
    divisor = _format(b)
    atom = f"({_format(a)}//{divisor})"
    return {(atom,): 1}


MAX_DIM_CHARS = 512
"""Longest symbolic dimension accepted (as written, or as its canonical text after simplification)."""
MAX_DIM_TERMS = 64
"""Most terms a symbolic dimension may expand to (``(A+B)*(C+D)`` has 4): bounds the work of canonicalising."""

_TOKEN = re.compile(r"\s*(?:(\d+)|([^\W\d]\w*)|(//|[-+*()]))")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "//": 2, "neg": 3}


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:40] + "...") + f" ({len(text)} characters)"


def _postfix(dim: str) -> list[Any]:
    """The tokens of a dimension expression in postfix order: ints, symbol names and operators.

    A shunting-yard loop (no recursion, so any nesting depth is safe); operators are ``"+"``, ``"-"``,
    ``"*"``, ``"//"`` and ``"neg"`` (unary minus); a symbol is a ``("sym", name)`` pair.
    """
    if len(dim) > MAX_DIM_CHARS:
        raise ValueError(
            f"symbolic dimension {_short(dim)} is longer than {MAX_DIM_CHARS} characters; "
            "dimensions must be short expressions such as '4*B' or '(T+1)'"
        )
    out: list[Any] = []
    ops: list[str] = []
    pos, end, operand = 0, len(dim.rstrip()), True
    while pos < end:
        match = _TOKEN.match(dim, pos)
        if match is None:
            raise ValueError(
                f"malformed symbolic dimension {_short(dim)}: unexpected {dim[pos:].strip()[:10]!r}"
            )
        pos = match.end()
        number, name, symbol = match.groups()
        if number is not None or name is not None:
            if not operand:
                raise ValueError(f"malformed symbolic dimension {_short(dim)}: a value follows a value")
            out.append(int(number) if number is not None else ("sym", name))
            operand = False
        elif symbol == "(":
            if not operand:
                raise ValueError(f"malformed symbolic dimension {_short(dim)}: '(' follows a value")
            ops.append("(")
        elif symbol == ")":
            while ops and ops[-1] != "(":
                out.append(ops.pop())
            if operand or not ops:
                raise ValueError(f"malformed symbolic dimension {_short(dim)}: unbalanced ')'")
            ops.pop()
        elif operand:
            if symbol != "-":
                raise ValueError(
                    f"malformed symbolic dimension {_short(dim)}: {symbol!r} lacks its left operand"
                )
            ops.append("neg")
        else:
            rank = _PRECEDENCE[symbol]
            while ops and ops[-1] != "(" and _PRECEDENCE[ops[-1]] >= rank:
                out.append(ops.pop())
            ops.append(symbol)
            operand = True
    if operand:
        raise ValueError(f"malformed symbolic dimension {_short(dim)}: it ends without a value")
    while ops:
        op = ops.pop()
        if op == "(":
            raise ValueError(f"malformed symbolic dimension {_short(dim)}: unbalanced '('")
        out.append(op)
    return out


def _parse(dim: Dim) -> Poly:
    """A dimension as a polynomial over its symbols; ``//`` that does not divide stays an opaque atom.

    Bounded work: the text is at most :data:`MAX_DIM_CHARS` long and no intermediate result may have
    more than :data:`MAX_DIM_TERMS` terms, so ``(A+B)*(C+D)*...`` cannot expand exponentially.
    """
    if isinstance(dim, int):
        return {(): dim} if dim else {}
    if len(dim) <= MAX_DIM_CHARS and dim.isidentifier():
        return {(dim,): 1}
    stack: list[Poly] = []
    for token in _postfix(dim):
        if isinstance(token, int):
            stack.append({(): token} if token else {})
        elif isinstance(token, tuple):
            stack.append({(token[1],): 1})
        elif token == "neg":
            stack.append({m: -c for m, c in stack.pop().items()})
        else:
            right, left = stack.pop(), stack.pop()
            if token == "+":
                result = _poly_add(left, right)
            elif token == "-":
                result = _poly_add(left, right, -1)
            elif token == "*":
                result = _poly_mul(left, right)
            else:
                result = _poly_floordiv(left, right)
            if len(result) > MAX_DIM_TERMS:
                raise ValueError(
                    f"symbolic dimension {_short(dim)} expands to more than {MAX_DIM_TERMS} terms; "
                    "dimensions must be short expressions such as '4*B' or '(T+1)'"
                )
            stack.append(result)
    (poly,) = stack
    return poly


def _format_term(mono: tuple[str, ...], coeff: int) -> str:
    if not mono:
        return str(coeff)
    body = "*".join(mono)
    return body if coeff == 1 else f"{coeff}*{body}"


def _format(poly: Poly) -> Dim:
    """The canonical text of a polynomial: ``"4*B*T"`` for a product, ``"(B*T+2)"`` for a sum."""
    terms = sorted(((m, c) for m, c in poly.items() if c), key=lambda t: (not t[0], t[0]))
    if not terms:
        return 0
    if len(terms) == 1 and not terms[0][0]:
        return terms[0][1]
    if len(terms) == 1 and terms[0][1] > 0:
        text = _format_term(*terms[0])
    else:
        parts = []
        for k, (mono, coeff) in enumerate(terms):
            sign = "-" if coeff < 0 else ("+" if k else "")
            parts.append(sign + _format_term(mono, -coeff if coeff < 0 else coeff))
        text = f"({''.join(parts)})"
    if len(text) > MAX_DIM_CHARS:
        raise ValueError(
            f"symbolic dimension {_short(text)} is longer than {MAX_DIM_CHARS} characters; "
            "dimensions must be short expressions such as '4*B' or '(T+1)'"
        )
    return text


def normalize_dim(dim: Dim) -> Dim:
    """Canonical form of a dimension: ``"T*B"`` and ``"B*T"`` both become ``"B*T"``, ``"((B+1)+1)"`` becomes
    ``"(B+2)"`` and ``"2*3"`` becomes ``6``.

    >>> normalize_dim("T*B"), normalize_dim("((B+1)+1)"), normalize_dim("((B+T)-B)")
    ('B*T', '(B+2)', 'T')
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, str)):
        if hasattr(dim, "__index__") and not isinstance(dim, (bool, np_bool)):
            return int(dim)  # numpy integers
        raise TypeError(f"a dimension must be an int or a symbol name, got {dim!r}")
    if isinstance(dim, int):
        return dim
    if len(dim) <= MAX_DIM_CHARS and dim.isidentifier():
        return dim
    return _format(_parse(dim))


def normalize_shape(shape: Iterable[Dim] | Dim) -> Shape:
    """A shape as a tuple of canonical dimensions; an int or a symbol alone is a 1-d shape."""
    if isinstance(shape, (int, str)):
        shape = (shape,)
    return tuple(normalize_dim(d) for d in shape)


def dim_mul(a: Dim, b: Dim) -> Dim:
    """Product of two dimensions, symbolic where either is."""
    return _format(_poly_mul(_parse(a), _parse(b)))


def dim_prod(dims: Iterable[Dim]) -> Dim:
    """Product of dimensions; ``1`` for none."""
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it divides exactly (symbols cancel), else ``None``."""
    pa, pb = _parse(a), _parse(b)
    if not pb:
        return None
    if len(pb) != 1:
        return 1 if pa == pb else None
    ((mono_b, cb),) = pb.items()
    out: Poly = {}
    for mono, c in pa.items():
        rest = list(mono)
        for atom in mono_b:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % cb:
            return None
        out[tuple(rest)] = out.get(tuple(rest), 0) + c // cb
    return _format(out)


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of two dimensions; symbolic sums are simplified (``"(B+1)"`` plus 1 is ``"(B+2)"``)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return _format(_poly_add(_parse(a), _parse(b)))


def dim_sub(a: Dim, b: Dim) -> Dim:
    """Difference of two dimensions (``"(B+T)"`` minus ``"B"`` is ``"T"``)."""
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return _format(_poly_add(_parse(a), _parse(b), -1))


def dim_floordiv(a: Dim, b: int) -> Dim:
    """``a // b`` for a positive int ``b``: exact when it divides, else an expression."""
    if isinstance(a, int):
        return a // b
    return _format(_poly_floordiv(_parse(a), {(): b}))


def dims_differ(a: Dim, b: Dim) -> bool:
    """True when two dimensions differ for every value of their symbols (``"6*B"`` and ``"4*B"``, ``"(B+1)"``
    and ``"B"``); False when they are equal or may be."""
    diff = _parse(dim_sub(a, b))
    if not diff:
        return False
    if list(diff) == [()]:
        return True
    pa, pb = _parse(a), _parse(b)
    return len(pa) == 1 and len(pb) == 1 and next(iter(pa)) == next(iter(pb))


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
            if result == 1 or (isinstance(result, str) and isinstance(d, int)):
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


def resolve_dim(dim: Dim, bindings: Mapping[str, int]) -> int:
    """The int value of a dimension given values for its symbols.

    >>> resolve_dim("4*B", {"B": 8}), resolve_dim("((B-1)//2)", {"B": 8})
    (32, 3)
    """
    if isinstance(dim, int):
        return dim
    if dim in bindings:
        return bindings[dim]
    stack: list[int] = []
    for token in _postfix(dim):
        if isinstance(token, int):
            stack.append(token)
        elif isinstance(token, tuple):
            if token[1] not in bindings:
                raise ValueError(f"symbolic dimension {token[1]!r} has no value (known: {dict(bindings)})")
            stack.append(bindings[token[1]])
        elif token == "neg":
            stack.append(-stack.pop())
        else:
            right, left = stack.pop(), stack.pop()
            if token == "+":
                stack.append(left + right)
            elif token == "-":
                stack.append(left - right)
            elif token == "*":
                stack.append(left * right)
            elif right == 0:
                raise ValueError(f"symbolic dimension {_short(dim)} divides by zero for {dict(bindings)}")
            else:
                stack.append(left // right)
    (value,) = stack
    return value


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
