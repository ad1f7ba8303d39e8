"""Register-tiled multiply-add loops for the direct convolutions, written as LLVM vector code.

numba vectorises one innermost loop at a time, so a loop over flat positions that adds a few
shifted planes into an output row loads and stores that row for every few multiply-adds, and a dot
product per weight ends in a horizontal sum after a short loop. These intrinsics keep a tile of
accumulators in vector registers across a whole reduction instead (the micro-kernel of a GEMM, with
im2col's columns read in place as shifted windows of a padded plane):

- ``fma_tile_<cb>``: ``cb`` output channels x :data:`TILE` positions, summed over every kernel term
  (one load of the input per term feeds ``cb`` vector FMAs), stored, or added (the transposed
  convolution's scatter of one kernel offset);
- ``dot_tile``: :data:`DOT_CHANNELS` output channels x :data:`DOT_TERMS` kernel terms of the weight gradient,
  each a dot product over the positions, horizontally summed once at the end;
- :func:`max_pool_2x2_backward_rows`: 2x2 max pooling's backward, :data:`LANES` windows a step (the
  two input rows split into even and odd columns, the gradient selected into the first maximum's
  place, then interleaved back), where numba's loop over windows stayed scalar.

Vectors are :data:`LANES` wide in the arrays' dtype (float32 or float64; LLVM splits them to what
the CPU has). Loads and stores are unaligned; the callers size their buffers so that every tile
reads and writes inside them. On 2 cores of an AMD Zen 4 (LeNet-5, batch 64), the forward
convolutions went from 0.24 and 0.46 ms to 0.18 and 0.30, the weight gradients from 0.24 and 0.49
to 0.14 and 0.29, conv2's input gradient from 0.47 to 0.33 and the first pool's backward from 0.16
to 0.07.

numba's disk cache of a kernel that calls these is keyed by its own file: after changing this one,
clear the ``__pycache__`` beside :mod:`.conv_kernels` (an installed upgrade replaces both files).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8
"""Elements of one vector register tile row."""
TILE = 2 * LANES
"""Output positions of one ``fma_tile_<cb>`` call."""

_I64 = ir.IntType(64)


def _arrays_ok(*arrays: Any) -> bool:
    floats = {types.float32, types.float64}
    return all(isinstance(a, types.Array) and a.layout == "C" and a.dtype in floats for a in arrays) and (
        len({a.dtype for a in arrays}) == 1
    )


def _llvm(dtype: Any) -> tuple[ir.Type, ir.VectorType, int, str]:
    """The element type, the vector type, the element size and the intrinsics' suffix of ``dtype``."""
    scalar = ir.FloatType() if dtype == types.float32 else ir.DoubleType()
    bits = 32 if dtype == types.float32 else 64
    return scalar, ir.VectorType(scalar, LANES), bits // 8, f"v{LANES}f{bits}"


def _fma(builder: ir.IRBuilder, vec: ir.VectorType, suffix: str) -> Any:
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.{suffix}"
    )


def _at(builder: ir.IRBuilder, base: Any, index: Any, vec: ir.VectorType) -> Any:
    """Pointer to the vector starting at element ``index`` of ``base``."""
    return builder.bitcast(builder.gep(base, [index]), vec.as_pointer())


def _row_elements(builder: ir.IRBuilder, array: Any, item: int) -> Any:
    return builder.sdiv(builder.extract_value(array.strides, 0), ir.Constant(_I64, item))


def _const(n: int) -> ir.Constant:
    return ir.Constant(_I64, n)


def _zeros(vec: ir.VectorType, count: int) -> list:
    return [ir.Constant(vec, [0.0] * LANES)] * count


def _loop(
    builder: ir.IRBuilder, count: Any, vec: ir.VectorType, body: Callable[[Any, list], list], starting: list
) -> list:
    """``for i in range(count)`` carrying the vectors ``starting`` through ``body(i, accs)``, which
    returns their new values; the values after the loop."""
    before = builder.block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed("<=", count, _const(0)), done, loop)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    i.add_incoming(_const(0), before)
    carried = []
    for value in starting:
        phi = builder.phi(vec)
        phi.add_incoming(value, before)
        carried.append(phi)
    new = body(i, carried)
    after = builder.block
    following = builder.add(i, _const(1))
    i.add_incoming(following, after)
    for phi, value in zip(carried, new, strict=True):
        phi.add_incoming(value, after)
    builder.cbranch(builder.icmp_signed("<", following, count), loop, done)
    builder.position_at_end(done)
    results = []
    for first, value in zip(starting, new, strict=True):
        phi = builder.phi(vec)
        phi.add_incoming(first, before)
        phi.add_incoming(value, after)
        results.append(phi)
    return results


def _make_fma_tile(cb: int) -> Any:
    @intrinsic
    def fma_tile(typingctx, src, starts, weights, terms, q0, acc, at0, add):  # pragma: no cover - compiled
        """``s[c, p] = sum_t weights[t*cb + c] * src[starts[t] + q0 + p]`` for ``c < cb``, ``p < TILE``,
        ``t < terms``, stored (``add``: added) at flat element ``c * row + at0 + q0 + p`` of ``acc``
        (``row``: its first stride)."""
        if not (
            _arrays_ok(src, weights, acc) and isinstance(starts, types.Array) and starts.dtype == types.int64
        ):
            return None
        if not (
            all(isinstance(a, types.Integer) for a in (terms, q0, at0)) and isinstance(add, types.Boolean)
        ):
            return None
        sig = types.void(src, starts, weights, terms, q0, acc, at0, add)

        def codegen(context, builder, signature, args):
            src_a, starts_a, weights_a, acc_a = (
                context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 1, 2, 5)
            )
            terms_v, q0_v, at0_v = (
                context.cast(builder, args[k], signature.args[k], types.int64) for k in (3, 4, 6)
            )
            _, vec, item, suffix = _llvm(signature.args[0].dtype)
            fma = _fma(builder, vec, suffix)
            spread = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

            def body(t, accs):
                base = builder.add(builder.load(builder.gep(starts_a.data, [t])), q0_v)
                inputs = [
                    builder.load(
                        _at(builder, src_a.data, builder.add(base, _const(h * LANES)), vec), align=item
                    )
                    for h in range(2)
                ]
                new = []
                for c in range(cb):
                    w = builder.load(
                        builder.gep(weights_a.data, [builder.add(builder.mul(t, _const(cb)), _const(c))])
                    )
                    one = builder.insert_element(
                        ir.Constant(vec, ir.Undefined), w, ir.Constant(ir.IntType(32), 0)
                    )
                    wide = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), spread)
                    new += [builder.call(fma, [wide, v, accs[2 * c + h]]) for h, v in enumerate(inputs)]
                return new

            sums = _loop(builder, terms_v, vec, body, _zeros(vec, 2 * cb))
            row = _row_elements(builder, acc_a, item)
            first = builder.add(at0_v, q0_v)
            for c in range(cb):
                for h in range(2):
                    at = builder.add(builder.mul(_const(c), row), builder.add(first, _const(h * LANES)))
                    ptr = _at(builder, acc_a.data, at, vec)
                    added = builder.fadd(builder.load(ptr, align=item), sums[2 * c + h])
                    builder.store(builder.select(args[7], added, sums[2 * c + h]), ptr, align=item)
            return context.get_dummy_value()

        return sig, codegen

    return fma_tile


def _make_dot_tile(cb: int, tb: int) -> Any:
    @intrinsic
    def dot_tile(
        typingctx, src, g, starts, t0, c0, steps, part, images, src_step, g_step
    ):  # pragma: no cover
        """``part[c0 + c, t0 + k] += sum_m sum_q g[c0 + c, m*g_step + q] * src[m*src_step + starts[t0 + k] + q]``
        for ``c < cb``, ``k < tb``, ``m < images``, ``q < steps * LANES`` (flat elements past the arrays'
        first image: the callers' buffers hold ``images`` of them, ``*_step`` elements apart)."""
        if not (_arrays_ok(src, g, part) and isinstance(starts, types.Array) and starts.dtype == types.int64):
            return None
        if not all(isinstance(a, types.Integer) for a in (t0, c0, steps, images, src_step, g_step)):
            return None
        sig = types.void(src, g, starts, t0, c0, steps, part, images, src_step, g_step)

        def codegen(context, builder, signature, args):
            src_a, g_a, starts_a = (
                context.make_array(signature.args[k])(context, builder, args[k]) for k in range(3)
            )
            part_a = context.make_array(signature.args[6])(context, builder, args[6])
            t0_v, c0_v, steps_v, images_v, src_step_v, g_step_v = (
                context.cast(builder, args[k], signature.args[k], types.int64) for k in (3, 4, 5, 7, 8, 9)
            )
            scalar, vec, item, suffix = _llvm(signature.args[0].dtype)
            fma = _fma(builder, vec, suffix)
            reduce = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(scalar, [scalar, vec]), f"llvm.vector.reduce.fadd.{suffix}"
            )
            g_row, part_row = _row_elements(builder, g_a, item), _row_elements(builder, part_a, item)
            firsts = [
                builder.load(builder.gep(starts_a.data, [builder.add(t0_v, _const(k))])) for k in range(tb)
            ]
            g_rows = [builder.mul(builder.add(c0_v, _const(c)), g_row) for c in range(cb)]

            def image(m, accs):
                src_at, g_at = builder.mul(m, src_step_v), builder.mul(m, g_step_v)
                src_firsts = [builder.add(src_at, first) for first in firsts]
                g_firsts = [builder.add(g_at, r) for r in g_rows]

                def positions(q, accs):
                    at = builder.mul(q, _const(LANES))
                    gs = [
                        builder.load(_at(builder, g_a.data, builder.add(r, at), vec), align=item)
                        for r in g_firsts
                    ]
                    new = [None] * (cb * tb)
                    for k, first in enumerate(src_firsts):
                        v = builder.load(_at(builder, src_a.data, builder.add(first, at), vec), align=item)
                        for c in range(cb):
                            new[c * tb + k] = builder.call(fma, [gs[c], v, accs[c * tb + k]])
                    return new

                return _loop(builder, steps_v, vec, positions, accs)

            sums = _loop(builder, images_v, vec, image, _zeros(vec, cb * tb))
            for c in range(cb):
                for k in range(tb):
                    total = builder.call(reduce, [ir.Constant(scalar, 0.0), sums[c * tb + k]])
                    index = builder.add(
                        builder.mul(builder.add(c0_v, _const(c)), part_row), builder.add(t0_v, _const(k))
                    )
                    ptr = builder.gep(part_a.data, [index])
                    builder.store(builder.fadd(builder.load(ptr), total), ptr)
            return context.get_dummy_value()

        return sig, codegen

    return dot_tile


fma_tile_1 = _make_fma_tile(1)
fma_tile_4 = _make_fma_tile(4)
fma_tile_6 = _make_fma_tile(6)
DOT_CHANNELS, DOT_TERMS = 2, 5
"""The weight gradient's tile: output channels x kernel terms (one row of a 5x5 kernel)."""
dot_tile = _make_dot_tile(DOT_CHANNELS, DOT_TERMS)


@intrinsic
def max_pool_2x2_backward_rows(typingctx, x, g, out, y, blocks):  # pragma: no cover - compiled
    """2x2 max pooling's backward for windows ``0 .. LANES*blocks`` of pooled row ``y``: ``g[y, s]``
    written at its window's first maximum in rows ``2y`` and ``2y+1`` of ``out``, 0 at the other three
    (the last of the four when the window holds a NaN), ``LANES`` windows per vector step (``x``, ``g``
    and ``out`` are 2-D planes)."""
    if not (_arrays_ok(x, g, out) and x.ndim == g.ndim == out.ndim == 2):
        return None
    if not (isinstance(y, types.Integer) and isinstance(blocks, types.Integer)):
        return None
    sig = types.void(x, g, out, y, blocks)

    def codegen(context, builder, signature, args):
        x_a, g_a, out_a = (context.make_array(signature.args[k])(context, builder, args[k]) for k in range(3))
        y_v, blocks_v = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (3, 4))
        scalar, vec, item, _ = _llvm(signature.args[0].dtype)
        pair = ir.VectorType(scalar, 2 * LANES)
        i32 = ir.IntType(32)
        evens = ir.Constant(ir.VectorType(i32, LANES), list(range(0, 2 * LANES, 2)))
        odds = ir.Constant(ir.VectorType(i32, LANES), list(range(1, 2 * LANES, 2)))
        zip_ = ir.Constant(
            ir.VectorType(i32, 2 * LANES), [k // 2 + LANES * (k % 2) for k in range(2 * LANES)]
        )
        zero = ir.Constant(vec, [0.0] * LANES)
        x_row, g_row, out_row = (_row_elements(builder, a, item) for a in (x_a, g_a, out_a))
        top = builder.mul(builder.mul(y_v, _const(2)), x_row)
        x_rows = [top, builder.add(top, x_row)]
        out_top = builder.mul(builder.mul(y_v, _const(2)), out_row)
        out_rows = [out_top, builder.add(out_top, out_row)]
        g_first = builder.mul(y_v, g_row)

        def body(b, accs):
            at = builder.mul(b, _const(2 * LANES))
            halves = []
            for r in x_rows:
                both = builder.load(
                    builder.bitcast(builder.gep(x_a.data, [builder.add(r, at)]), pair.as_pointer()),
                    align=item,
                )
                halves += [
                    builder.shuffle_vector(both, both, evens),
                    builder.shuffle_vector(both, both, odds),
                ]
            v0, v1, v2, v3 = halves
            grad = builder.load(
                _at(builder, g_a.data, builder.add(g_first, builder.mul(b, _const(LANES))), vec), align=item
            )
            m1 = builder.fcmp_ordered(">", v1, v0)
            best = builder.select(m1, v1, v0)
            m2 = builder.fcmp_ordered(">", v2, best)
            best = builder.select(m2, v2, best)
            m3 = builder.fcmp_ordered(">", v3, best)
            nan = builder.or_(
                builder.or_(builder.fcmp_unordered("uno", v0, v0), builder.fcmp_unordered("uno", v1, v1)),
                builder.or_(builder.fcmp_unordered("uno", v2, v2), builder.fcmp_unordered("uno", v3, v3)),
            )
            k3 = builder.or_(m3, nan)
            k2 = builder.and_(m2, builder.not_(k3))
            later = builder.or_(m2, k3)
            k1 = builder.and_(m1, builder.not_(later))
            k0 = builder.not_(builder.or_(m1, later))
            outs = [builder.select(k, grad, zero) for k in (k0, k1, k2, k3)]
            for r, (left, right) in zip(out_rows, (outs[:2], outs[2:]), strict=True):
                both = builder.shuffle_vector(left, right, zip_)
                ptr = builder.bitcast(builder.gep(out_a.data, [builder.add(r, at)]), pair.as_pointer())
                builder.store(both, ptr, align=item)
            return accs

        _loop(builder, blocks_v, vec, body, [])
        return context.get_dummy_value()

    return sig, codegen
