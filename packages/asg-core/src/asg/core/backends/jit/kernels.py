"""Hand-written numba kernels of ``"numpy-jit"``: row-wise normalisations, column sums and optimizer updates.

Imported only when numba is available. Each kernel computes in the arrays' dtype, as the numpy
kernel it replaces does (sums of a row accumulate in float64: a row is a few thousand values at
most, and the result is rounded to the dtype once). Rows run in parallel (``prange``); the
optimizer kernels run over the flat parameter and write every updated tensor in the same pass.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .mathfn import f32_from_bits, fexp

_JIT = {"parallel": True, "cache": True, "fastmath": False, "nogil": True, "error_model": "numpy"}
_SERIAL = {**_JIT, "parallel": False}  # per-row helpers the parallel kernels call
# Row sums may be reassociated: LLVM then vectorises them (several float64 partial sums instead of one
# chain of dependent adds), 2.5-3x faster for layer_norm's rows of 128; still summed in float64.
_ROW_SUM = {**_SERIAL, "fastmath": {"reassoc"}}


@intrinsic
def _bits_of_f32(typingctx, x):  # pragma: no cover - compiled
    """The bit pattern of a float32 as an int32 (an LLVM bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


def _row_max(x, r, cols):  # pragma: no cover - replaced by the overload below inside numba code
    """The largest value of row ``r`` of ``x`` (softmax's shift)."""
    return x[r, :cols].max()


@overload(_row_max, inline="always")
def _row_max_impl(x, r, cols):  # pragma: no cover - compiled
    if x.dtype == types.float32:

        def keys(x, r, cols):
            # The max of the bits as order-preserving int32 keys (vectorised, unlike a compare and
            # branch per element: 2.4x faster softmax rows of 64). A NaN with the sign bit clear is
            # above +inf, so it is the max, as numpy's; one with it set is below -inf, and the row
            # still comes out all NaN through exp(NaN) in the sum, as numpy's does.
            flip = np.int32(0x7FFFFFFF)
            best = np.int32(-(2**31))
            for c in range(cols):
                b = _bits_of_f32(x[r, c])
                best = max(best, b ^ ((b >> np.int32(31)) & flip))
            return f32_from_bits(best ^ ((best >> np.int32(31)) & flip))

        return keys

    def scan(x, r, cols):
        m = x[r, 0]
        for c in range(1, cols):
            v = x[r, c]
            if v > m or v != v:  # NaN when the row holds one, as numpy's max
                m = v
        return m

    return scan


@njit(inline="always")
def _exp_normalize(src, out, r, cols):  # pragma: no cover - compiled
    # row r of out = softmax of row r of src (src may be out): shift by the max, exp, divide by the sum
    m = _row_max(src, r, cols)
    for c in range(cols):
        out[r, c] = fexp(src[r, c] - m)
    total = _row_sum(out, r, cols)
    for c in range(cols):
        out[r, c] = out[r, c] / total


@njit(**_JIT)
def softmax_rows(x, out):  # pragma: no cover - compiled
    rows, cols = x.shape
    for r in prange(rows):
        _exp_normalize(x, out, r, cols)
    return out


@njit(**_JIT)
def softmax_bias_rows(x, bias, out):  # pragma: no cover - compiled
    # softmax(x + bias) over rows, bias broadcast over leading dims: row r adds bias row r % len(bias)
    # (attention's additive mask), the sum rounded to the dtype as numpy's add before the softmax
    rows, cols = x.shape
    brows = bias.shape[0]
    for r in prange(rows):
        br = r % brows
        for c in range(cols):
            out[r, c] = x[r, c] + bias[br, c]
        _exp_normalize(out, out, r, cols)
    return out


@njit(**_JIT)
def softmax_backward_rows(g, y, out):  # pragma: no cover - compiled
    # y * (g - sum(g * y)) over rows in one pass (softmax's gradient): the products rounded to the
    # dtype as the unfused mul's, summed in float64, the sum rounded to the dtype as the sum's result
    rows, cols = g.shape
    for r in prange(rows):
        out[r, 0] = _row_dot(g, y, r, cols)
        total = out[r, 0]
        for c in range(cols):
            out[r, c] = y[r, c] * (g[r, c] - total)
    return out


@njit(**_ROW_SUM)
def _row_dot(a, b, r, cols):  # pragma: no cover - compiled
    total = 0.0
    for c in range(cols):
        total += a[r, c] * b[r, c]
    return total


@njit(**_ROW_SUM)
def _row_sum(x, r, cols):  # pragma: no cover - compiled
    total = 0.0
    for c in range(cols):
        total += x[r, c]
    return total


@njit(**_JIT)
def log_softmax_rows(x, out):  # pragma: no cover - compiled
    rows, cols = x.shape
    for r in prange(rows):
        m = _row_max(x, r, cols)
        total = 0.0
        for c in range(cols):
            shifted = x[r, c] - m
            out[r, c] = shifted
        total = _row_exp_sum(out, r, cols)
        lse = math.log(total)
        for c in range(cols):
            out[r, c] = out[r, c] - lse
    return out


@njit(**_JIT)
def row_sums(x, out):  # pragma: no cover - compiled
    # sum over the trailing axes (softmax's backward, cross_entropy): out[r] = sum of row r
    rows, cols = x.shape
    for r in prange(rows):
        out[r] = _row_sum(x, r, cols)
    return out


@njit(**_ROW_SUM)
def _row_exp_sum(x, r, cols):  # pragma: no cover - compiled
    total = 0.0
    for c in range(cols):
        total += fexp(x[r, c])
    return total


@njit(**_ROW_SUM)
def _row_moments(x, r, cols, eps):  # pragma: no cover - compiled
    """Row ``r``'s mean and ``1 / sqrt(variance + eps)`` (biased variance, as layer_norm)."""
    total = 0.0
    for c in range(cols):
        total += x[r, c]
    mean = total / cols
    sq = 0.0
    for c in range(cols):
        d = x[r, c] - mean
        sq += d * d
    return mean, 1.0 / math.sqrt(sq / cols + eps)


@njit(**_JIT)
def layer_norm_rows(x, w, b, has_w, has_b, eps, out):  # pragma: no cover - compiled
    rows, cols = x.shape
    for r in prange(rows):
        mean, rstd = _row_moments(x, r, cols, eps)
        for c in range(cols):
            y = (x[r, c] - mean) * rstd
            if has_w:
                y = y * w[c]
            if has_b:
                y = y + b[c]
            out[r, c] = y
    return out


@njit(**_ROW_SUM)
def _row_grad_sums(g, x, w, has_w, r, cols, mean, rstd):  # pragma: no cover - compiled
    """Row ``r``'s sums of ``g_hat`` and ``g_hat * x_hat`` (``g_hat = g * w``)."""
    sum_g = 0.0
    sum_gx = 0.0
    for c in range(cols):
        gh = g[r, c] * w[c] if has_w else g[r, c]
        sum_g += gh
        sum_gx += gh * (x[r, c] - mean) * rstd
    return sum_g, sum_gx


@njit(**_JIT)
def _layer_norm_backward(g, x, w, has_w, eps, res, has_res, out):  # pragma: no cover - compiled
    # dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)), g_hat = g * w; with has_res,
    # res + dx (dx rounded to the dtype first, then added in the dtype, as the unfused add does)
    rows, cols = x.shape
    for r in prange(rows):
        mean, rstd = _row_moments(x, r, cols, eps)
        sum_g, sum_gx = _row_grad_sums(g, x, w, has_w, r, cols, mean, rstd)
        mean_g = sum_g / cols
        mean_gx = sum_gx / cols
        for c in range(cols):
            gh = g[r, c] * w[c] if has_w else g[r, c]
            xh = (x[r, c] - mean) * rstd
            out[r, c] = rstd * (gh - mean_g - xh * mean_gx)
            if has_res:
                out[r, c] = out[r, c] + res[r, c]
    return out


def layer_norm_backward_rows(g, x, w, has_w, eps, out):
    """layer_norm's input gradient, row by row, into ``out``."""
    return _layer_norm_backward(g, x, w, has_w, eps, out, False, out)


def layer_norm_backward_add_rows(g, x, w, has_w, eps, res, out):
    """``res`` + layer_norm's input gradient (the residual stream's gradient of a pre-norm block)."""
    return _layer_norm_backward(g, x, w, has_w, eps, res, True, out)


_BLOCKS = 8  # row blocks of the column sums: parallel tasks, each summing its rows into its own row


@njit(**_JIT)
def layer_norm_weight_grad_rows(g, x, eps, out):  # pragma: no cover - compiled
    # out[c] = sum over rows of g * x_hat: each block of rows into its own partial row, then the blocks
    rows, cols = x.shape
    blocks = min(rows, _BLOCKS)
    partial = np.zeros((blocks, cols), np.float64)
    for b in prange(blocks):
        for r in range(b * rows // blocks, (b + 1) * rows // blocks):
            mean, rstd = _row_moments(x, r, cols, eps)
            for c in range(cols):
                partial[b, c] += g[r, c] * ((x[r, c] - mean) * rstd)
    _sum_blocks(partial, out)
    return out


@njit(**_JIT)
def column_sums(x, out):  # pragma: no cover - compiled
    # out[c] = sum over rows of x[r, c] (sum_to over leading axes: bias gradients), blocked as above
    rows, cols = x.shape
    blocks = min(rows, _BLOCKS)
    partial = np.zeros((blocks, cols), np.float64)
    for b in prange(blocks):
        for r in range(b * rows // blocks, (b + 1) * rows // blocks):
            for c in range(cols):
                partial[b, c] += x[r, c]
    _sum_blocks(partial, out)
    return out


@njit(**_JIT)
def channel_sums(x, out):  # pragma: no cover - compiled
    # out[c] = sum over n and s of x[n, c, s] (a convolution's bias gradient: (N, C, H*W) -> (C,)),
    # blocks of n as column_sums, each (n, c) row summed in SIMD lanes
    rows, channels, inner = x.shape
    blocks = min(rows, _BLOCKS)
    partial = np.zeros((blocks, channels), np.float64)
    for b in prange(blocks):
        for r in range(b * rows // blocks, (b + 1) * rows // blocks):
            plane = x[r]
            for c in range(channels):
                partial[b, c] += _row_sum(plane, c, inner)
    _sum_blocks(partial, out)
    return out


@njit(**_SERIAL)
def _sum_blocks(partial, out):  # pragma: no cover - compiled
    blocks, cols = partial.shape
    for c in range(cols):
        total = 0.0
        for b in range(blocks):
            total += partial[b, c]
        out[c] = total


@njit(**_JIT)
def adam(p, g, m, v, c, decoupled, maximize, out_p, out_m, out_v):  # pragma: no cover - compiled
    # As asg.core.ops.optim._adam_kernel (torch.optim.Adam's single-tensor formulas), in p's dtype.
    # c: (1 - beta1, beta2, 1 - beta2, lr / (1 - beta1**t), sqrt(1 - beta2**t), eps, 1 - lr * wd, wd, 1),
    # an array of p's dtype.
    one_minus_b1, b2, one_minus_b2, step_size, bias2 = c[0], c[1], c[2], c[3], c[4]
    eps, decay, wd, one = c[5], c[6], c[7], c[8]
    low_weight = one_minus_b1 < 0.5
    for i in prange(p.shape[0]):
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        if wd != 0 and decoupled:
            pi = pi * decay
        elif wd != 0:
            gi = gi + wd * pi
        mi = m[i]
        # torch.lerp(m, g, 1 - beta1): two formulas, on either side of weight 0.5
        if low_weight:
            mi = mi + one_minus_b1 * (gi - mi)
        else:
            mi = gi - (gi - mi) * (one - one_minus_b1)
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        out_m[i] = mi
        out_v[i] = vi
        out_p[i] = pi - step_size * (mi / (np.sqrt(vi) / bias2 + eps))


@njit(**_JIT)
def sgd(p, g, buf, c, first, nesterov, maximize, out_p, out_buf):  # pragma: no cover - compiled
    # As asg.core.ops.optim._sgd_kernel. c: (lr, momentum, 1 - dampening, weight_decay) in p's dtype.
    lr, mom, damp, wd = c[0], c[1], c[2], c[3]
    for i in prange(p.shape[0]):
        gi = -g[i] if maximize else g[i]
        if wd != 0:
            gi = gi + wd * p[i]
        if mom != 0:
            b = gi if first else buf[i] * mom + damp * gi
            out_buf[i] = b
            gi = gi + mom * b if nesterov else b
        out_p[i] = p[i] - lr * gi


@njit(**_JIT)
def rmsprop(
    p, g, sq, grad_avg, buf, c, centered, has_momentum, maximize, out_p, out_sq, out_ga, out_buf
):  # pragma: no cover - compiled
    # As asg.core.ops.optim._rmsprop_kernel (torch.optim.RMSprop), in p's dtype. c: (alpha, 1 - alpha,
    # 1 - (1 - alpha), eps, lr, momentum, weight_decay); grad_avg and buf are read (and out_ga / out_buf
    # written) only when centered / has_momentum.
    alpha, w, w_rest, eps, lr, mom, wd = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    low_weight = w < 0.5
    for i in prange(p.shape[0]):
        gi = -g[i] if maximize else g[i]
        if wd != 0:
            gi = gi + wd * p[i]
        s = sq[i] * alpha + w * (gi * gi)
        out_sq[i] = s
        if centered:
            ga = grad_avg[i]
            # torch.lerp(grad_avg, g, 1 - alpha): two formulas, on either side of weight 0.5
            ga = ga + w * (gi - ga) if low_weight else gi - (gi - ga) * w_rest
            out_ga[i] = ga
            avg = np.sqrt(s - ga * ga) + eps
        else:
            avg = np.sqrt(s) + eps
        if has_momentum:
            b = buf[i] * mom + gi / avg
            out_buf[i] = b
            out_p[i] = p[i] - lr * b
        else:
            out_p[i] = p[i] - lr * (gi / avg)


@njit(**_JIT)
def col2im(cols, stride_h, stride_w, dil_h, dil_w, top, left, out):  # pragma: no cover - compiled
    # out[n, g*cpg + c, y*stride + i*dilation - top, x*stride + j*dilation - left] += cols[g, i, j, c, n, y, x]:
    # conv_transpose2d's scatter, one (image, channel) plane per task (no two tasks write one element).
    groups, kh, kw, cpg, n, hg, wg = cols.shape
    height, width = out.shape[2], out.shape[3]
    for task in prange(n * groups * cpg):
        b = task // (groups * cpg)
        gc = task - b * (groups * cpg)
        g = gc // cpg
        c = gc - g * cpg
        plane = out[b, gc]
        plane[:, :] = 0
        for i in range(kh):
            for j in range(kw):
                src = cols[g, i, j, c, b]
                for y in range(hg):
                    row = y * stride_h + i * dil_h - top
                    if row < 0 or row >= height:
                        continue
                    for x in range(wg):
                        col = x * stride_w + j * dil_w - left
                        if 0 <= col < width:
                            plane[row, col] += src[y, x]
    return out


_SCATTER_COLUMNS = 64  # columns per task of scatter_add_rows (each task owns its columns: no races)


@njit(**_JIT)
def scatter_add_rows(rows, idx, out):  # pragma: no cover - compiled
    # out[idx[i], :] += rows[i, :] into zeros (index_select_backward over axis 0: the embedding
    # gradient), rows added in their order, as the numpy kernel's stable-sorted segment sums; the
    # columns are split between tasks, so every element is written by one task
    n, cols = rows.shape
    tasks = (cols + _SCATTER_COLUMNS - 1) // _SCATTER_COLUMNS
    for t in prange(tasks):
        c0 = t * _SCATTER_COLUMNS
        c1 = min(cols, c0 + _SCATTER_COLUMNS)
        for r in range(out.shape[0]):
            for c in range(c0, c1):
                out[r, c] = 0
        for i in range(n):
            r = idx[i]
            for c in range(c0, c1):
                out[r, c] += rows[i, c]
    return out
