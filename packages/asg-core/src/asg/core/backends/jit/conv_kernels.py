"""numba kernels of ``"numpy-jit"``'s convolution and max pooling (lowered in :mod:`.conv`).

Imported only when numba is available. The direct convolutions work on one image per task, its planes
padded into a task-local buffer of width ``wp``: output pixel ``(y, x)`` of a stride-1 convolution is
flat position ``q = y*wp + x``, and kernel offset ``(i, j)`` reads the padded plane at ``q + i*dh*wp + j*dw``,
so every kernel offset is one long contiguous loop over ``q`` (columns ``x >= wo`` are computed and dropped).
That avoids im2col's columns (25x the input for a 5x5 kernel) where the channel counts are too small for
a GEMM to pay for them. The max-pool kernels find each window's first maximum in one pass per plane, as
the numpy kernels' rule does (the first offset equal to the window's maximum, the last one when that
maximum is NaN; padding reads as -inf and takes no gradient).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = {"parallel": True, "cache": True, "nogil": True, "error_model": "numpy"}
# contract: a multiply-add may be one FMA; reassoc: a dot product may be summed in SIMD lanes (as a GEMM's)
_FMA = {**_JIT, "fastmath": {"contract"}}
_DOT = {**_JIT, "fastmath": {"contract", "reassoc"}}


@njit(**{**_JIT, "parallel": False}, inline="always")
def _pad_image(x, n, top, left, hp, wp, xp):  # pragma: no cover - compiled
    """Image ``n`` of ``x`` placed at ``(top, left)`` in the zero planes ``xp`` (C, hp*wp); negative offsets crop."""
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        for r in range(max(0, -top), min(h, hp - top)):
            dst = xp[c, (r + top) * wp : (r + top + 1) * wp]
            src = x[n, c, r]
            for s in range(max(0, -left), min(wd, wp - left)):
                dst[s + left] = src[s]


@njit(**_FMA)
def conv_direct(x, w, top, left, hp, wp, dh, dw, out):  # pragma: no cover - compiled
    # out[n, co, y, x] = sum_{c, i, j} w[co, c, i, j] * xpad[n, g*cig + c, y + i*dh, x + j*dw], stride 1;
    # xpad is x placed at (top, left) in an (hp, wp) zero plane. Four output channels of a group at a time
    # share each load of the input (then one at a time for the rest of the group).
    n_img, channels = x.shape[0], x.shape[1]
    c_out, cig, kh, kw = w.shape
    groups = channels // cig
    cog = c_out // groups
    ho, wo = out.shape[2], out.shape[3]
    length = (ho - 1) * wp + wo
    for n in prange(n_img):
        xp = np.zeros((channels, hp * wp), x.dtype)
        _pad_image(x, n, top, left, hp, wp, xp)
        acc = np.empty((4, length), x.dtype)
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for grp in range(groups):
            co = grp * cog
            while co < (grp + 1) * cog:
                block = 4 if co + 4 <= (grp + 1) * cog else 1
                acc[:block] = 0
                for c in range(cig):
                    for i in range(kh):
                        for j in range(kw):
                            off = i * dh * wp + j * dw
                            src = xp[grp * cig + c, off : off + length]  # a slice: no negative-index checks
                            if block == 4:
                                w0, w1, w2, w3 = (
                                    w[co, c, i, j],
                                    w[co + 1, c, i, j],
                                    w[co + 2, c, i, j],
                                    w[co + 3, c, i, j],
                                )
                                for q in range(length):
                                    v = src[q]
                                    a0[q] += w0 * v
                                    a1[q] += w1 * v
                                    a2[q] += w2 * v
                                    a3[q] += w3 * v
                            else:
                                w0 = w[co, c, i, j]
                                for q in range(length):
                                    a0[q] += w0 * src[q]
                for k in range(block):
                    for y in range(ho):
                        out[n, co + k, y] = acc[k, y * wp : y * wp + wo]
                co += block
    return out


@njit(**_DOT)
def conv_weight_direct(x, g, top, left, hp, wp, dh, dw, part):  # pragma: no cover - compiled
    # part[t, co, c, i, j] = sum over the images of chunk t, and (y, x), of
    # g[n, co, y, x] * xpad[n, grp*cig + c, y + i*dh, x + j*dw]  (stride 1; conv2d's weight gradient)
    n_img, channels = x.shape[0], x.shape[1]
    chunks, c_out, cig, kh, kw = part.shape
    groups = channels // cig
    cog = c_out // groups
    ho, wo = g.shape[2], g.shape[3]
    length = (ho - 1) * wp + wo
    for t in prange(chunks):
        acc = part[t]
        acc[:] = 0
        xp = np.zeros((channels, hp * wp), x.dtype)
        gw = np.zeros((c_out, length), x.dtype)  # g at width wp; the columns x >= wo stay 0
        zero = gw[0, 0]  # in x's dtype: a float64 sum would halve the SIMD width
        for n in range(t * n_img // chunks, (t + 1) * n_img // chunks):
            _pad_image(x, n, top, left, hp, wp, xp)
            for co in range(c_out):
                for y in range(ho):
                    gw[co, y * wp : y * wp + wo] = g[n, co, y]
            for grp in range(groups):
                co = grp * cog
                while co < (grp + 1) * cog:
                    block = 4 if co + 4 <= (grp + 1) * cog else 1
                    step = block // 4
                    g0, g1, g2, g3 = gw[co], gw[co + step], gw[co + 2 * step], gw[co + 3 * step]
                    for c in range(cig):
                        for i in range(kh):
                            for j in range(kw):
                                off = i * dh * wp + j * dw
                                src = xp[grp * cig + c, off : off + length]
                                if block == 4:
                                    t0, t1, t2, t3 = zero, zero, zero, zero
                                    for q in range(length):
                                        v = src[q]
                                        t0 += g0[q] * v
                                        t1 += g1[q] * v
                                        t2 += g2[q] * v
                                        t3 += g3[q] * v
                                    acc[co, c, i, j] += t0
                                    acc[co + 1, c, i, j] += t1
                                    acc[co + 2, c, i, j] += t2
                                    acc[co + 3, c, i, j] += t3
                                else:
                                    t0 = zero
                                    for q in range(length):
                                        t0 += g0[q] * src[q]
                                    acc[co, c, i, j] += t0
                    co += block
    return part


@njit(**{**_JIT, "parallel": False}, inline="always")
def _first_max(plane, y, s, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """Window ``(y, s)``'s maximum and the flat index in ``plane`` of its first maximum (-1: padding)."""
    h, wd = plane.shape
    r0, c0 = y * sh - ph, s * sw - pw
    nan = False
    if r0 >= 0 and c0 >= 0 and r0 + (kh - 1) * dh < h and c0 + (kw - 1) * dw < wd:
        best, arg = plane[r0, c0], r0 * wd + c0
        for i in range(kh):
            r = r0 + i * dh
            for j in range(kw):
                v = plane[r, c0 + j * dw]
                bigger = v > best  # selects, not branches: which is bigger is unpredictable
                best = v if bigger else best
                arg = r * wd + c0 + j * dw if bigger else arg
                nan |= v != v
    else:  # the window overlaps the padding (-inf)
        best, arg = -np.inf, -1 if r0 < 0 or c0 < 0 else r0 * wd + c0
        for i in range(kh):
            r = r0 + i * dh
            for j in range(kw):
                col = c0 + j * dw
                if 0 <= r < h and 0 <= col < wd:
                    v = plane[r, col]
                    if v > best:
                        best, arg = v, r * wd + col
                    nan |= v != v
    if nan:  # the maximum is NaN; no offset equals it, so the last one takes the gradient
        r, col = r0 + (kh - 1) * dh, c0 + (kw - 1) * dw
        return np.nan, r * wd + col if 0 <= r < h and 0 <= col < wd else -1
    return best, arg


@njit(**_JIT)
def max_pool(x, kh, kw, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - compiled
    n_img, channels = x.shape[0], x.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    for task in prange(n_img * channels):
        n, c = task // channels, task % channels
        plane = x[n, c]
        for y in range(ho):
            for s in range(wo):
                out[n, c, y, s] = _first_max(plane, y, s, kh, kw, sh, sw, ph, pw, dh, dw)[0]
    return out


@njit(**_JIT)
def max_pool_backward(x, g, kh, kw, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - compiled
    # out = 0, then each window's g added at its first maximum (one plane per task: no two write one element)
    n_img, channels = x.shape[0], x.shape[1]
    ho, wo = g.shape[2], g.shape[3]
    for task in prange(n_img * channels):
        n, c = task // channels, task % channels
        plane, target = x[n, c], out[n, c].reshape(-1)
        target[:] = 0
        for y in range(ho):
            for s in range(wo):
                arg = _first_max(plane, y, s, kh, kw, sh, sw, ph, pw, dh, dw)[1]
                if arg >= 0:
                    target[arg] += g[n, c, y, s]
    return out


@njit(**_JIT)
def max_pool_gather(x, h, kh, kw, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - compiled
    # out[window] = h at the window's first maximum (0 where that is padding)
    n_img, channels = x.shape[0], x.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    for task in prange(n_img * channels):
        n, c = task // channels, task % channels
        plane, source = x[n, c], h[n, c].reshape(-1)
        for y in range(ho):
            for s in range(wo):
                arg = _first_max(plane, y, s, kh, kw, sh, sw, ph, pw, dh, dw)[1]
                out[n, c, y, s] = source[arg] if arg >= 0 else 0
    return out
