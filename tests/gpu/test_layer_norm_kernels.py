"""layer_norm's kernels on wgpu against float64 numpy: the forward (alone and fused behind an add),
the input gradient (with and without weight, storing the residual stream's gradient too) and the
weight and bias gradients, for rows held in registers (vec4 and scalar, a workgroup that does or
does not divide the row) and rows too wide for them (the looping kernels)."""

import numpy as np
import pytest

import asg.core as ag
from asg.gpu.kernels.normalization import _layout

RNG = np.random.default_rng(11)
EPS = 1e-5

# (rows, feat): vec4 rows (512 as in GPT, 768: 96 invocations, 2048: 256), scalar rows (77 does
# not fill its 3 units per invocation, 3, 1), a row wider than the registers hold (40,000) and
# more rows than one grid dimension holds (70,000: a 2-d grid, its last workgroups past the rows)
SHAPES = [(8192, 512), (1000, 768), (1000, 77), (1000, 3), (1000, 2048), (5, 1), (3, 40000), (70000, 8)]
IDS = [f"{r}x{f}" for r, f in SHAPES]


def _data(rows: int, feat: int) -> np.ndarray:
    # an offset mean and a spread scale per row: the centred variance is what keeps this accurate
    x = RNG.standard_normal((rows, feat)) * RNG.uniform(0.5, 3.0, (rows, 1)) + RNG.uniform(-4, 4, (rows, 1))
    return x.astype(np.float32)


def _forward64(x, w, b):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    xhat = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + EPS)
    return xhat * (1.0 if w is None else w.astype(np.float64)) + (0.0 if b is None else b.astype(np.float64))


def _backward64(g, x, w):
    g, x = g.astype(np.float64), x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + EPS)
    xhat = (x - mean) * rstd
    gh = g * (1.0 if w is None else w.astype(np.float64))
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    return dx, (g * xhat).sum(0), g.sum(0)


def _close(got, want, feat):
    # rows of a few values are ill-conditioned in float32 (a small variance, a large rstd): the
    # CPU backend's float32 misses float64 by as much there
    rtol = 1e-5 if feat >= 8 else 1e-4
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _held(feat: int) -> bool:
    return _layout(feat) is not None


@pytest.mark.parametrize(("rows", "feat"), SHAPES, ids=IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_forward_matches_float64(rows, feat, affine):
    x = ag.input("x", (rows, feat))
    w = RNG.standard_normal(feat).astype(np.float32) if affine else None
    b = RNG.standard_normal(feat).astype(np.float32) if affine else None
    pw = ag.parameter(w, name="w") if affine else None
    pb = ag.parameter(b, name="b") if affine else None
    f = ag.compile(ag.layer_norm(x, (feat,), pw, pb, eps=EPS), inputs=[x], backend="wgpu")
    data = _data(rows, feat)
    _close(f(data), _forward64(data, w, b), feat)
    (source,) = f.plan_for(data).dispatch_sources()
    assert ("s_mean_a" in source) == _held(feat)
    assert ("vec4<f32>>" in source) == (_held(feat) and feat % 4 == 0)


@pytest.mark.parametrize(("rows", "feat"), SHAPES, ids=IDS)
def test_gradients_match_float64(rows, feat):
    """dx (with the weight), dw and db (the bias gradient merged into the weight gradient's column
    pass where the plan merges them) of ``sum(layer_norm(x) * c)``: ``c`` is the incoming gradient."""
    x = ag.input("x", (rows, feat))
    w = RNG.standard_normal(feat).astype(np.float32)
    pw = ag.parameter(w, name="w")
    pb = ag.parameter(RNG.standard_normal(feat).astype(np.float32), name="b")
    c = RNG.standard_normal((rows, feat)).astype(np.float32)
    loss = (ag.layer_norm(x, (feat,), pw, pb, eps=EPS) * ag.constant(c)).sum()
    f = ag.compile(ag.grad(loss, [x, pw, pb]), inputs=[x], backend="wgpu")
    data = _data(rows, feat)
    dx, dw, db = f(data)
    want_dx, want_dw, want_db = _backward64(c, data, w)
    _close(dx, want_dx, feat)
    _close(dw, want_dw, feat)
    _close(db, want_db, feat)
    plan = f.plan_for(data)
    backward = [s for s in plan.dispatch_sources() if "dx" in s]
    assert backward and all(("s_1_a" in s) == _held(feat) for s in backward)


@pytest.mark.parametrize(("rows", "feat"), SHAPES, ids=IDS)
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no-weight"])
def test_backward_stores_the_residual_gradient(rows, feat, weighted):
    """``h = x + layer_norm(x)``: the residual stream's gradient ``c + dx`` comes from the backward
    kernel itself (``layer_norm_backward+add``)."""
    x = ag.input("x", (rows, feat))
    w = RNG.standard_normal(feat).astype(np.float32) if weighted else None
    pw = ag.parameter(w, name="w") if weighted else None
    c = RNG.standard_normal((rows, feat)).astype(np.float32)
    h = x + ag.layer_norm(x, (feat,), pw, eps=EPS)
    (gx,) = ag.grad((h * ag.constant(c)).sum(), [x])
    f = ag.compile(gx, inputs=[x], backend="wgpu")
    data = _data(rows, feat)
    _close(f(data), c.astype(np.float64) + _backward64(c, data, w)[0], feat)
    assert "layer_norm_backward+add" in [ops for _, ops in f.plan_for(data).dispatch_labels()]


@pytest.mark.parametrize(("rows", "feat"), [(8192, 512), (1000, 77), (3, 40000)], ids=["512", "77", "wide"])
def test_fused_residual_add_computes_each_input_once(rows, feat):
    """``layer_norm(x + r)`` in one kernel that also stores ``x + r``; held rows evaluate the
    prologue once per element (scalar units, so its loads and stores stay contiguous)."""
    x, r = ag.input("x", (rows, feat)), ag.input("r", (rows, feat))
    w = RNG.standard_normal(feat).astype(np.float32)
    b = RNG.standard_normal(feat).astype(np.float32)
    h = x + r
    y = ag.layer_norm(h, (feat,), ag.parameter(w, name="w"), ag.parameter(b, name="b"), eps=EPS)
    f = ag.compile([y, h], inputs=[x, r], backend="wgpu")
    xs, rs = _data(rows, feat), _data(rows, feat)
    got_y, got_h = f(xs, rs)
    _close(got_y, _forward64(xs + rs, w, b), feat)
    np.testing.assert_array_equal(got_h, xs + rs)
    plan = f.plan_for(xs, rs)
    assert plan.dispatch_count == 1
    assert [n.op for n in plan.fused_groups[0].nodes] == ["add", "layer_norm"]
    (source,) = plan.dispatch_sources()
    if _held(feat):
        assert source.count("prologue_store(") == 1 + _layout(feat, vec=False).per
        assert "prologue(" not in source.split("fn main")[1]
