"""WGSL rendering: storage types, loads and stores per dtype, literals, index arithmetic, programs.

Storage layout per asg dtype (what a buffer holds, element by element):

==========  =================  =========================================================
dtype       WGSL storage       value in a kernel
==========  =================  =========================================================
float32     ``array<f32>``     ``f32``
float16     ``array<f16>``     ``f32`` (stored rounded to f16; needs the ``shader-f16`` feature)
int32       ``array<i32>``     ``i32``
int64       ``array<i32>``     two words per element (little endian, as numpy's bytes);
                               kernels compute on the low word as ``i32`` (index values)
                               and write the sign-extended pair; the random ops read all 64 bits
bool        ``array<u32>``     ``bool`` (0 or 1 per 32-bit word)
==========  =================  =========================================================

WGSL has no literals for NaN or infinity: :func:`literal` produces them with ``bitcast`` (as
tinygrad's ``WGSLRenderer`` does). Shapes and strides are baked into the kernel text as constants,
so a kernel's text is its cache key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

WG = 256  # invocations per workgroup of the one-thread-per-element kernels
MAX_GROUPS = 65535

VTYPE = {"float32": "f32", "float16": "f32", "int32": "i32", "int64": "i32", "bool": "bool"}
STORAGE = {"float32": "f32", "float16": "f16", "int32": "i32", "int64": "i32", "bool": "u32"}
ITEMSIZE = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "bool": 4}


# ----------------------------------------------------------------------------- host side conversions
def to_gpu(array: np.ndarray, dtype: str) -> np.ndarray:
    """The bytes a buffer of ``dtype`` holds for ``array`` (bool becomes one u32 per element)."""
    a = np.asarray(array)
    if dtype == "bool":
        return np.ascontiguousarray(a, dtype=np.uint32)
    return np.ascontiguousarray(a, dtype=dtype)


def from_gpu(data: bytes | memoryview, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The numpy array of ``dtype`` and ``shape`` held in ``data`` (a new, writable array)."""
    count = math.prod(shape)
    if dtype == "bool":
        return np.frombuffer(data, np.uint32, count).astype(bool).reshape(shape)
    return np.frombuffer(data, dtype, count).reshape(shape).copy()


def nbytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes a value of ``shape`` and ``dtype`` takes on the GPU."""
    return math.prod(shape) * ITEMSIZE[dtype]


# ----------------------------------------------------------------------------- literals and values
def literal(value: float | int | bool, vtype: str) -> str:
    """A WGSL expression for a constant of ``vtype`` (``f32``, ``i32``, ``u32``, ``bool``).

    >>> literal(float("inf"), "f32"), literal(float("nan"), "f32"), literal(-2.5, "f32")
    ('bitcast<f32>(0x7f800000u)', 'bitcast<f32>(0x7fc00000u)', 'f32(-2.5)')
    >>> literal(-(2**31), "i32"), literal(True, "bool")
    ('i32(-2147483647 - 1)', 'true')
    """
    if vtype == "bool":
        return "true" if value else "false"
    if vtype == "f32":
        v = float(np.float32(value))
        if math.isnan(v):
            return "bitcast<f32>(0x7fc00000u)"
        if math.isinf(v):
            return "bitcast<f32>(0x7f800000u)" if v > 0 else "bitcast<f32>(0xff800000u)"
        return f"f32({v!r})"
    if vtype == "i32":
        v = int(value)
        v = (v + 2**31) % 2**32 - 2**31  # wrap like a 32-bit integer
        return "i32(-2147483647 - 1)" if v == -(2**31) else f"i32({v})"
    return f"{int(value) % 2**32}u"


def convert(expr: str, src: str, dst: str) -> str:
    """``expr`` of WGSL type ``src`` as ``dst`` (numpy's casts: float to int truncates, x != 0 is True)."""
    if src == dst:
        return expr
    if dst == "bool":
        return f"({expr} != {literal(0, src)})"
    if src == "bool":
        return f"select({literal(0, dst)}, {literal(1, dst)}, {expr})"
    return f"{dst}({expr})"


def load(buf: str, dtype: str, index: str) -> str:
    """Read element ``index`` (an ``i32`` or ``u32`` expression) of buffer ``buf`` as a value."""
    if dtype == "bool":
        return f"({buf}[{index}] != 0u)"
    if dtype == "int64":
        return f"{buf}[2 * ({index})]"
    if dtype == "float16":
        return f"f32({buf}[{index}])"
    return f"{buf}[{index}]"


def store(buf: str, dtype: str, index: str, value: str) -> str:
    """A statement writing ``value`` (of the dtype's value type) to element ``index`` of ``buf``."""
    if dtype == "bool":
        return f"{buf}[{index}] = select(0u, 1u, {value});"
    if dtype == "int64":
        return f"{{ let v64 = {value}; {buf}[2 * ({index})] = v64; {buf}[2 * ({index}) + 1] = select(0, -1, v64 < 0); }}"
    if dtype == "float16":
        return f"{buf}[{index}] = f16({value});"
    return f"{buf}[{index}] = {value};"


HELPERS = """
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn is_inf(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
"""


# ----------------------------------------------------------------------------- index arithmetic
def strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Contiguous (row-major) element strides of ``shape``."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of a contiguous ``in_shape`` read at the coordinates of ``out_shape`` (numpy broadcasting)."""
    pad = len(out_shape) - len(in_shape)
    st = strides(in_shape)
    return tuple(0 if d < pad or in_shape[d - pad] == 1 else st[d - pad] for d in range(len(out_shape)))


def coords(shape: Sequence[int], index: str = "i", prefix: str = "c") -> list[str]:
    """Statements defining ``c0 .. c{n-1}`` (``i32``), the coordinates of linear ``index`` in ``shape``."""
    st = strides(shape)
    lines = []
    for d, (n, s) in enumerate(zip(shape, st, strict=True)):
        if n == 1:
            lines.append(f"let {prefix}{d} = 0;")
        elif d == 0:
            lines.append(f"let {prefix}{d} = {index} / {s};")
        elif s == 1:
            lines.append(f"let {prefix}{d} = {index} % {n};")
        else:
            lines.append(f"let {prefix}{d} = ({index} / {s}) % {n};")
    return lines


def offset(st: Sequence[int], base: int = 0, prefix: str = "c") -> str:
    """``base + sum(c_d * st_d)`` as an ``i32`` expression (zero strides left out)."""
    terms = [f"{prefix}{d} * {s}" if s != 1 else f"{prefix}{d}" for d, s in enumerate(st) if s != 0]
    if base:
        terms.insert(0, str(base))
    return " + ".join(terms) or "0"


# ----------------------------------------------------------------------------- programs
@dataclass(frozen=True)
class Dispatch:
    """One compute dispatch: WGSL text, workgroup grid, and the values it binds, in binding order.

    ``args`` name values by role: ``("in", k)`` the step's k-th input, ``("out", 0)`` its output,
    ``("tmp", j)`` the program's j-th scratch buffer.
    """

    wgsl: str
    grid: tuple[int, int, int]
    args: tuple[tuple[str, int], ...]
    windows: tuple[tuple[int, int] | None, ...] = ()
    """Per arg, the (byte offset, bytes) of the value it binds, or None for all of it (empty: all whole)."""


@dataclass
class Program:
    """What a wgpu lowering returns: the dispatches of one step and the scratch buffers they need.

    ``view=True``: no dispatch; the output is the first input's buffer (reshape and friends).
    ``index_check``: (what, axis size, negatives allowed) when the kernel flags out-of-range indices
    in its ``("err", 0)`` binding (two u32: a flag and the bad index); the plan raises after the step.
    """

    dispatches: list[Dispatch] = field(default_factory=list)
    temps: list[int] = field(default_factory=list)
    view: bool = False
    name: str = ""
    index_check: tuple[str, int, bool] | None = None


def chunks(count: int, itemsizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """(first element, elements) pieces of ``0 .. count`` whose windows of each itemsize fit ``limit`` bytes.

    One piece when everything fits; else pieces of a multiple of 1024 elements, so every window's
    byte offset is a multiple of 256 (WebGPU's storage offset alignment is at most that).

    >>> chunks(10, [4], 1 << 20), chunks(5000, [4, 2], 8192)
    ([(0, 10)], [(0, 2048), (2048, 2048), (4096, 904)])
    """
    widest = max(itemsizes, default=4)
    if count * widest <= limit:
        return [(0, count)]
    per = max(1024, limit // widest // 1024 * 1024)
    return [(start, min(per, count - start)) for start in range(0, count, per)]


def window(start: int, count: int, dtype: str) -> tuple[int, int]:
    """The (byte offset, bytes) window of elements ``start .. start + count`` of a ``dtype`` buffer."""
    item = ITEMSIZE[dtype]
    return start * item, max(4, (count * item + 3) // 4 * 4)


def grid(threads: int, wg: int = WG) -> tuple[int, int, int]:
    """A workgroup grid covering ``threads`` invocations, 2-D past 65,535 workgroups."""
    groups = max(1, -(-threads // wg))
    if groups <= MAX_GROUPS:
        return (groups, 1, 1)
    return (MAX_GROUPS, -(-groups // MAX_GROUPS), 1)


def declare(bindings: Sequence[tuple[str, str]]) -> str:
    """Storage declarations for (name, asg dtype or WGSL element type) in binding order."""
    lines = []
    for k, (name, dtype) in enumerate(bindings):
        elem = STORAGE.get(dtype, dtype)
        lines.append(f"@group(0) @binding({k}) var<storage, read_write> {name}: array<{elem}>;")
    return "\n".join(lines)


def elementwise_kernel(
    bindings: Sequence[tuple[str, str]], count: int, body: Sequence[str], wg: int = WG
) -> str:
    """A kernel running ``body`` once per element ``i`` (``i32``) in ``0 .. count``."""
    inner = "\n    ".join(body)
    return f"""{declare(bindings)}
{HELPERS}
@compute @workgroup_size({wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = i32(gid.x + gid.y * nwg.x * {wg}u);
    if (i >= {count}) {{ return; }}
    {inner}
}}
"""


def per_element(
    name: str,
    inputs: Sequence[str],
    out_dtype: str,
    count: int,
    body: Sequence[str],
    temps: Sequence[int] = (),
    index_check: tuple[str, int, bool] | None = None,
) -> Program:
    """A one-dispatch :class:`Program` over ``count`` output elements; buffers ``in0.., out``.

    With ``index_check`` the kernel also binds ``err`` (see :func:`check_index`).
    """
    bindings = [(f"in{k}", d) for k, d in enumerate(inputs)] + [("out", out_dtype)]
    args: tuple[tuple[str, int], ...] = (*tuple(("in", k) for k in range(len(inputs))), ("out", 0))
    if index_check is not None:
        bindings.append(("err", "u32"))
        args = (*args, ("err", 0))
    wgsl = elementwise_kernel(bindings, count, body)
    dispatches = [Dispatch(wgsl, grid(count), args)] if count else []
    return Program(dispatches, list(temps), name=name, index_check=index_check)


def check_index(var: str, size: int, negative: bool) -> list[str]:
    """Statements flagging ``var`` outside ``[0, size)`` (``[-size, size)`` with ``negative``) in
    ``err``, then defining ``{var}_ok``: the index wrapped (negatives from the end) and clamped into range.
    """
    low = -size if negative else 0
    return [
        f"if ({var} < {low} || {var} >= {size}) {{ err[0] = 1u; err[1] = bitcast<u32>({var}); }}",
        f"let {var}_ok = clamp(select({var}, {var} + {size}, {var} < 0), 0, {max(size - 1, 0)});",
    ]
