"""numba kernels of ``"numpy-jit"``'s convolution and max pooling (lowered in :mod:`.conv`).

Imported only when numba is available. The direct convolutions work on one image per task, its planes
padded into a task-local buffer of width ``wp``: output pixel ``(y, x)`` of a stride-1 convolution is
flat position ``q = y*wp + x``, and kernel offset ``(i, j)`` reads the padded plane at ``q + i*dh*wp + j*dw``,
so every kernel offset is one long contiguous loop over ``q`` (columns ``x >= wo`` are computed and dropped).
That avoids im2col's columns (25x the input for a 5x5 kernel) where the channel counts are too small for
a GEMM to pay for them. The forward convolution and the weight gradient run register tiles over those
shifted windows (:mod:`.tiles`); the transposed convolution adds g's planes, shifted per kernel offset,
in tiles of the same kind.

The max-pool kernels find each window's first maximum in one pass per plane, as the numpy kernels' rule
does (the first offset equal to the window's maximum, the last one when that maximum is NaN; padding
reads as -inf and takes no gradient).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .tiles import (
    DOT_CHANNELS,
    DOT_TERMS,
    LANES,
    TILE,
    dot_tile,
    fma_tile_1,
    fma_tile_4,
    fma_tile_6,
    max_pool_2x2_backward_rows,
)

_JIT = {"parallel": True, "cache": True, "nogil": True, "error_model": "numpy"}


@njit(**{**_JIT, "parallel": False})
def _pad_image(x, n, top, left, hp, wp, xp):  # pragma: no cover - compiled
    """Image ``n`` of ``x`` placed at ``(top, left)`` in the zero planes ``xp`` (C, hp*wp); negative offsets crop."""
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        for r in range(max(0, -top), min(h, hp - top)):
            dst = xp[c, (r + top) * wp : (r + top + 1) * wp]
            src = x[n, c, r]
            for s in range(max(0, -left), min(wd, wp - left)):
                dst[s + left] = src[s]


@njit(**{**_JIT, "parallel": False}, inline="always")
def _channel_block(count):  # pragma: no cover - compiled
    """Output channels per register tile for a group of ``count``: 6 where that divides it and 4 does
    not (LeNet's first convolution), 1 for depthwise, else 4 (the last tile 0-padded)."""
    return 1 if count == 1 else 6 if count % 6 == 0 and count % 4 != 0 else 4


@njit(**{**_JIT, "parallel": False}, inline="always")
def _fma_tile(block, add, source, starts, weights, terms, q0, acc, at0):  # pragma: no cover - compiled
    """The ``tiles.fma_tile_<block>`` call (``add``: added into ``acc``, else stored)."""
    if block == 6:
        fma_tile_6(source, starts, weights, terms, q0, acc, at0, add)
    elif block == 4:
        fma_tile_4(source, starts, weights, terms, q0, acc, at0, add)
    else:
        fma_tile_1(source, starts, weights, terms, q0, acc, at0, add)


@njit(**_JIT)
def conv_direct(x, w, top, left, hp, wp, dh, dw, out):  # pragma: no cover - compiled
    # out[n, co, y, x] = sum_{c, i, j} w[co, c, i, j] * xpad[n, grp*cig + c, y + i*dh, x + j*dw], stride 1;
    # xpad is x placed at (top, left) in an (hp, wp) zero plane. A block of a group's output channels
    # times TILE flat positions at a time, accumulated in registers over every (c, i, j) (tiles.fma_tile).
    n_img, channels = x.shape[0], x.shape[1]
    c_out, cig, kh, kw = w.shape
    groups = channels // cig
    cog = c_out // groups
    ho, wo = out.shape[2], out.shape[3]
    tiles = ((ho - 1) * wp + wo + TILE - 1) // TILE
    plane = hp * wp
    terms = cig * kh * kw
    block = _channel_block(cog)
    blocks = (cog + block - 1) // block
    stacked = np.zeros(groups * blocks * terms * block, x.dtype)  # [group, block, term, channel], 0-padded
    flat_w = w.reshape(c_out, terms)
    for co in range(c_out):
        k = co % cog
        first = ((co // cog) * blocks + k // block) * terms * block + k % block
        for t in range(terms):
            stacked[first + t * block] = flat_w[co, t]
    starts = _term_starts(cig, kh, kw, plane, wp, dh, dw, terms)
    size = max(channels * plane, (groups - 1) * cig * plane + starts[terms - 1] + tiles * TILE)
    for n in prange(n_img):
        xp = np.zeros(size, x.dtype)  # the padded planes, then zeros the last tiles may read
        _pad_image(x, n, top, left, hp, wp, xp[: channels * plane].reshape(channels, plane))
        acc = np.empty((block, tiles * TILE), x.dtype)
        for grp in range(groups):
            source = xp[grp * cig * plane :]
            for b in range(blocks):
                weights = stacked[(grp * blocks + b) * terms * block : (grp * blocks + b + 1) * terms * block]
                for tile in range(tiles):
                    _fma_tile(block, False, source, starts, weights, terms, tile * TILE, acc, 0)
                for k in range(min(block, cog - b * block)):
                    co = grp * cog + b * block + k
                    for y in range(ho):
                        out[n, co, y] = acc[k, y * wp : y * wp + wo]
    return out


@njit(**{**_JIT, "parallel": False})
def _term_starts(cig, kh, kw, plane, wp, dh, dw, count):  # pragma: no cover - compiled
    """Where term ``(c, i, j)`` starts reading a group's planes; ``count`` may exceed the terms (those
    extra starts are 0: a tile padded with terms that read the first plane, and whose sums are dropped)."""
    starts = np.zeros(count, np.int64)
    for c in range(cig):
        for i in range(kh):
            for j in range(kw):
                starts[(c * kh + i) * kw + j] = c * plane + i * dh * wp + j * dw
    return starts


@njit(**_JIT)
def conv_transpose_direct(g, w, top, left, hp, wp, dh, dw, out):  # pragma: no cover - compiled
    # conv_transpose2d at stride 1: xpad[n, grp*cox + c, y + i*dh, x + j*dw] += w[grp*cgg + k, c, i, j] * g[n, k, y, x]
    # over an (hp, wp) plane, then out is xpad from (top, left). g is read at width wp (zeros past its
    # width): for each kernel offset (i, j), a block of a group's planes gets the sum over the group's
    # channels k of g's planes shifted by (i*dh, j*dw), TILE positions at a time (tiles.fma_tile_*, adding).
    n_img, c_g, hg, wg = g.shape
    _, cox, kh, kw = w.shape
    c_x, h, wd = out.shape[1], out.shape[2], out.shape[3]
    groups = c_x // cox
    cgg = c_g // groups
    tiles = ((hg - 1) * wp + wg + TILE - 1) // TILE
    span = tiles * TILE  # g's flat positions, rounded up to whole tiles (zeros past its last row)
    block = _channel_block(cox)
    blocks = (cox + block - 1) // block
    # weights[group, block, i, j, k, channel]: the terms (channels k of g) of one offset, 0-padded
    stacked = np.zeros(groups * blocks * kh * kw * cgg * block, w.dtype)
    for grp in range(groups):
        for c in range(cox):
            for i in range(kh):
                for j in range(kw):
                    first = (((grp * blocks + c // block) * kh + i) * kw + j) * cgg * block + c % block
                    for k in range(cgg):
                        stacked[first + k * block] = w[grp * cgg + k, c, i, j]
    starts = np.arange(cgg) * span
    width = max(hp * wp, (kh - 1) * dh * wp + (kw - 1) * dw + span)  # the last tiles' writes fit
    for n in prange(n_img):
        gw = np.zeros((c_g, span), g.dtype)
        for k in range(c_g):
            for y in range(hg):
                gw[k, y * wp : y * wp + wg] = g[n, k, y]
        flat = gw.reshape(-1)
        xp = np.zeros((groups * blocks * block, width), g.dtype)  # a block's rows padded to whole tiles
        for grp in range(groups):
            source = flat[grp * cgg * span :]
            for b in range(blocks):
                row = (grp * blocks + b) * block
                for i in range(kh):
                    for j in range(kw):
                        at = row * width + i * dh * wp + j * dw
                        first = (((grp * blocks + b) * kh + i) * kw + j) * cgg * block
                        weights = stacked[first : first + cgg * block]
                        for tile in range(tiles):
                            _fma_tile(block, True, source, starts, weights, cgg, tile * TILE, xp, at)
        for c in range(c_x):
            plane = xp[(c // cox) * blocks * block + c % cox]
            for r in range(h):
                out[n, c, r] = plane[(r + top) * wp + left : (r + top) * wp + left + wd]
    return out


DOT_IMAGES, DOT_STEPS = 8, 512
"""The weight gradient's tiles sum over up to DOT_IMAGES images of a thread's chunk in one call, as many
as take about DOT_STEPS vectors of positions (small planes: LeNet's conv2 has 17 a image)."""


@njit(**_JIT)
def conv_weight_direct(x, g, top, left, hp, wp, dh, dw, part):  # pragma: no cover - compiled
    # part[t, co, c, i, j] = sum over the images of chunk t, and (y, x), of
    # g[n, co, y, x] * xpad[n, grp*cig + c, y + i*dh, x + j*dw]  (stride 1; conv2d's weight gradient),
    # as tiles of DOT_CHANNELS output channels x DOT_TERMS terms, each a dot product over the flat
    # positions of a few images at a time (tiles.dot_tile); a group's channels and the terms are padded up
    # to whole tiles.
    n_img, channels = x.shape[0], x.shape[1]
    chunks, c_out, cig, kh, kw = part.shape
    groups = channels // cig
    cog = c_out // groups
    ho, wo = g.shape[2], g.shape[3]
    steps = ((ho - 1) * wp + wo + LANES - 1) // LANES
    plane = hp * wp
    terms = cig * kh * kw
    padded_terms = (terms + DOT_TERMS - 1) // DOT_TERMS * DOT_TERMS
    padded_cog = (cog + DOT_CHANNELS - 1) // DOT_CHANNELS * DOT_CHANNELS
    rows = groups * padded_cog
    starts = _term_starts(cig, kh, kw, plane, wp, dh, dw, padded_terms)
    size = max(channels * plane, (groups - 1) * cig * plane + starts[terms - 1] + steps * LANES)
    few = max(1, min(DOT_IMAGES, DOT_STEPS // steps))
    for t in prange(chunks):
        acc = np.zeros((rows, padded_terms), x.dtype)
        xp = np.zeros((few, size), x.dtype)
        gw = np.zeros((few, rows, steps * LANES), x.dtype)  # g at width wp; the rest stays 0
        first, last = t * n_img // chunks, (t + 1) * n_img // chunks
        for n0 in range(first, last, few):
            count = min(few, last - n0)
            for m in range(count):
                _pad_image(x, n0 + m, top, left, hp, wp, xp[m, : channels * plane].reshape(channels, plane))
                for co in range(c_out):
                    row = (co // cog) * padded_cog + co % cog
                    for y in range(ho):
                        gw[m, row, y * wp : y * wp + wo] = g[n0 + m, co, y]
            for grp in range(groups):
                source = xp[0, grp * cig * plane :]
                for c0 in range(grp * padded_cog, (grp + 1) * padded_cog, DOT_CHANNELS):
                    for t0 in range(0, padded_terms, DOT_TERMS):
                        dot_tile(source, gw[0], starts, t0, c0, steps, acc, count, size, rows * steps * LANES)
        sums = part[t].reshape(c_out, terms)
        for co in range(c_out):
            row = (co // cog) * padded_cog + co % cog
            for k in range(terms):
                sums[co, k] = acc[row, k]
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
                bigger = v > best  # a select, not a branch: which is bigger is unpredictable
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


@njit(**{**_JIT, "parallel": False}, inline="always")
def _first_max_2x2(plane, y, s):  # pragma: no cover - compiled
    """``_first_max`` of a 2x2 window at stride 2 without padding, as offset 0..3 of the window: constant
    strides let the loop over ``s`` vectorise (the pool most networks use)."""
    r, c = 2 * y, 2 * s
    v0, v1, v2, v3 = plane[r, c], plane[r, c + 1], plane[r + 1, c], plane[r + 1, c + 1]
    best, arg = v0, 0
    arg = 1 if v1 > best else arg
    best = v1 if v1 > best else best
    arg = 2 if v2 > best else arg
    best = v2 if v2 > best else best
    arg = 3 if v3 > best else arg
    best = v3 if v3 > best else best
    nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
    return (np.nan if nan else best), (3 if nan else arg)


@njit(**{**_JIT, "parallel": False}, inline="always")
def _is_2x2(plane, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    fits = 2 * ho <= plane.shape[0] and 2 * wo <= plane.shape[1]
    return kh == kw == sh == sw == 2 and ph == pw == 0 and dh == dw == 1 and fits


FORWARD, BACKWARD, GATHER = 0, 1, 2  # what max_pool computes


@njit(**_JIT)
def max_pool(mode, x, other, kh, kw, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - compiled
    # FORWARD: out = each window's maximum (other unused); BACKWARD: out = 0, then other (pooled-shaped)
    # added at each window's first maximum; GATHER: out = other (input-shaped) read there (0 in padding).
    # One kernel for the three (one compile); one plane per task, so no two tasks write one element.
    n_img, channels, wd = x.shape[0], x.shape[1], x.shape[3]
    ho, wo = (other.shape[2], other.shape[3]) if mode == BACKWARD else (out.shape[2], out.shape[3])
    for task in prange(n_img * channels):
        n, c = task // channels, task % channels
        plane, result, values = x[n, c], out[n, c], other[n, c]
        two = _is_2x2(plane, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
        if mode == FORWARD and two:  # the loops over s vectorise
            for y in range(ho):
                for s in range(wo):
                    result[y, s] = _first_max_2x2(plane, y, s)[0]
            continue
        if mode == BACKWARD and two:
            # every element of the 2*ho x 2*wo corner is written once; the rest (odd sizes) stays 0
            result[2 * ho :] = 0
            result[:, 2 * wo :] = 0
            vectors = wo // LANES  # windows LANES at a time, then one at a time
            for y in range(ho):
                max_pool_2x2_backward_rows(plane, values, result, y, vectors)
                for s in range(vectors * LANES, wo):
                    k = _first_max_2x2(plane, y, s)[1]
                    v = values[y, s]
                    result[2 * y, 2 * s] = v if k == 0 else 0
                    result[2 * y, 2 * s + 1] = v if k == 1 else 0
                    result[2 * y + 1, 2 * s] = v if k == 2 else 0
                    result[2 * y + 1, 2 * s + 1] = v if k == 3 else 0
            continue
        flat, source = result.reshape(-1), values.reshape(-1)
        if mode == BACKWARD:
            flat[:] = 0
        for y in range(ho):
            for s in range(wo):
                if two:
                    best, k = _first_max_2x2(plane, y, s)
                    arg = (2 * y + k // 2) * wd + 2 * s + k % 2
                else:
                    best, arg = _first_max(plane, y, s, kh, kw, sh, sw, ph, pw, dh, dw)
                if mode == FORWARD:
                    result[y, s] = best
                elif mode == GATHER:
                    result[y, s] = source[arg] if arg >= 0 else 0
                elif arg >= 0:
                    flat[arg] += values[y, s]
    return out
