"""numpy-jit's CPU training-step paths (issue #12) against float64 references and the numpy backend:
``softmax(x + mask)`` and softmax's gradient as one row kernel each, the row kernels writing into
planned buffers, and the second output of a fused group (GELU's derivative) into a buffer of its own."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import jit

ag.get_backend("numpy-jit")
needs_numba = pytest.mark.skipif(not jit.enabled(), reason="numba is not installed (or ASG_JIT=0)")


def _labels(f, *feeds) -> list[str]:
    return [s.node.meta.get("jit", "") for s in f.plan_for(*feeds).schedule.steps]


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- softmax(x + bias)
@needs_numba
@pytest.mark.parametrize(
    ("shape", "bias_shape", "bias_left"),
    [
        ((4, 3, 16, 16), (16, 16), False),  # attention's causal mask over (B, H)
        ((4, 3, 16, 16), (1, 1, 16, 16), True),  # leading 1s, mask + scores
        ((2, 3, 5, 7), (3, 5, 7), False),  # per head
        ((6, 9), (6, 9), False),  # same shape
        ((5, 33), (33,), True),  # one row broadcast
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_of_a_biased_input_is_one_kernel_and_matches(shape, bias_shape, bias_left, dtype) -> None:
    rng = np.random.default_rng(0)
    bias = rng.standard_normal(bias_shape).astype(dtype)
    bias[..., -1] = -1e9  # a masked key, as the additive causal mask
    x = ag.input("x", shape, dtype)
    s = (ag.constant(bias) + x if bias_left else x + ag.constant(bias)).softmax(axis=-1)
    f = ag.compile(s, backend="numpy-jit")
    xs = [rng.standard_normal(shape).astype(dtype) * 3 for _ in range(2)]
    assert any(label.startswith("softmax_bias kernel") for label in _labels(f, xs[0]))
    ref = ag.compile(s)
    tol = 1e-6 if dtype == "float32" else 1e-13
    for a in xs:
        got = f(a)
        assert got.dtype == np.dtype(dtype) and got.shape == shape
        np.testing.assert_allclose(got, _softmax64(a + bias), rtol=tol * 10, atol=tol)
        np.testing.assert_allclose(got, ref(a), rtol=tol * 10, atol=tol)
    assert np.all(got[..., -1] == 0)


@needs_numba
def test_softmax_bias_not_a_trailing_broadcast_stays_unfused_and_correct() -> None:
    rng = np.random.default_rng(1)
    bias = rng.standard_normal((8, 1)).astype(np.float32)  # broadcasts along the row: not one row per row
    x = ag.input("x", (3, 8, 12))
    s = (x + bias).softmax(axis=-1)
    f = ag.compile(s, backend="numpy-jit")
    a = rng.standard_normal((3, 8, 12)).astype(np.float32)
    assert not any(label.startswith("softmax_bias") for label in _labels(f, a))
    np.testing.assert_allclose(f(a), _softmax64(a + bias), rtol=1e-5, atol=1e-6)


@needs_numba
def test_softmax_bias_stays_unfused_where_the_sum_is_read_elsewhere() -> None:
    rng = np.random.default_rng(2)
    x = ag.input("x", (4, 16))
    z = x + rng.standard_normal((16,)).astype(np.float32)
    f = ag.compile([z.softmax(axis=-1), z * 2.0], backend="numpy-jit")
    a = rng.standard_normal((4, 16)).astype(np.float32)
    assert not any(label.startswith("softmax_bias") for label in _labels(f, a))
    s, _ = f(a)
    np.testing.assert_allclose(s, ag.compile(z.softmax(axis=-1))(a), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- softmax's gradient
def _attention_loss(shape: tuple[int, ...], dtype: str, seed: int = 0):
    """sum(w * (softmax(scale * q k^T + mask) @ v)) for random v, w: its gradient runs softmax's rule
    with dP = w v^T. Returns the loss, [q, k], the mask and (v, w)."""
    t = shape[-2]
    rng = np.random.default_rng(seed)
    q, k = ag.input("q", shape, dtype), ag.input("k", shape, dtype)
    mask = np.triu(np.full((t, t), -1e9, dtype), 1)
    v, w = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    att = ((q * 0.25) @ k.transpose(-2, -1) + mask).softmax(axis=-1)
    loss = ((att @ ag.constant(v)) * ag.constant(w)).sum()
    return loss, [q, k], mask, (v, w)


def _reference_grads(q: np.ndarray, k: np.ndarray, mask: np.ndarray, vw: tuple) -> list[np.ndarray]:
    """The gradients of the loss above in float64 (dS = P * (dP - rowsum(dP * P)))."""
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    v, w = (a.astype(np.float64) for a in vw)
    p = _softmax64(0.25 * q64 @ np.swapaxes(k64, -1, -2) + mask)
    dp = w @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return [0.25 * ds @ k64, 0.25 * np.swapaxes(ds, -1, -2) @ q64]


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_gradient_is_one_kernel_and_matches_float64(dtype: str) -> None:
    shape = (2, 3, 16, 8)
    loss, (q, k), mask, w = _attention_loss(shape, dtype)
    grads = ag.grad(loss, [q, k])
    f = ag.compile([loss, *grads], backend="numpy-jit")
    rng = np.random.default_rng(5)
    feeds = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
    labels = _labels(f, *feeds)
    assert any(label.startswith("softmax_backward kernel over 4 nodes") for label in labels), labels
    assert any(label.startswith("softmax_bias kernel") for label in labels), labels
    tol = 2e-5 if dtype == "float32" else 1e-12
    ref = ag.compile([loss, *grads])
    for _ in range(2):  # a second call reuses the planned buffers
        got = f(*feeds)
        want = _reference_grads(*feeds, mask, w)
        for g, r, n in zip(got[1:], want, ref(*feeds)[1:], strict=True):
            assert g.dtype == np.dtype(dtype)
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
            np.testing.assert_allclose(g, n, rtol=tol, atol=tol)


@needs_numba
def test_softmax_gradient_matches_finite_differences() -> None:
    shape = (1, 2, 6, 4)
    loss, (q, k), _, _ = _attention_loss(shape, "float64", seed=3)
    f = ag.compile([loss, *ag.grad(loss, [q, k])], backend="numpy-jit")
    rng = np.random.default_rng(4)
    qs, ks = (rng.standard_normal(shape) for _ in range(2))
    assert any(label.startswith("softmax_backward") for label in _labels(f, qs, ks))
    _, gq, _ = f(qs, ks)
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (0, 1, 5, 3), (0, 0, 3, 2)]:
        up, down = qs.copy(), qs.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric = (float(f(up, ks)[0]) - float(f(down, ks)[0])) / (2 * eps)
        assert abs(gq[idx] - numeric) <= 1e-6 * max(1.0, abs(numeric))


@needs_numba
def test_softmax_gradient_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    shape = (2, 2, 12, 8)
    loss, (q, k), mask, w = _attention_loss(shape, "float32", seed=6)
    f = ag.compile([loss, *ag.grad(loss, [q, k])], backend="numpy-jit")
    rng = np.random.default_rng(7)
    qs, ks = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    _, gq, gk = f(qs, ks)
    tq, tk = (torch.tensor(a, requires_grad=True) for a in (qs, ks))
    att = torch.softmax((tq * 0.25) @ tk.transpose(-2, -1) + torch.from_numpy(mask), dim=-1)
    v, w = (torch.from_numpy(a) for a in w)
    ((att @ v) * w).sum().backward()
    np.testing.assert_allclose(gq, tq.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, tk.grad.numpy(), rtol=1e-4, atol=1e-5)


@needs_numba
def test_softmax_gradient_pattern_left_alone_when_an_inner_value_is_read_elsewhere() -> None:
    rng = np.random.default_rng(8)
    g, y = ag.input("g", (8, 10)), ag.input("y", (8, 10))
    total = (g * y).sum(axis=-1, keepdims=True)
    out = y * (g - total)
    f = ag.compile([out, total], backend="numpy-jit")  # the row sum is an output too
    a, b = (rng.standard_normal((8, 10)).astype(np.float32) for _ in range(2))
    assert not any(label.startswith("softmax_backward") for label in _labels(f, a, b))
    got, _ = f(a, b)
    np.testing.assert_allclose(got, b * (a - (a * b).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    # the same expression alone is fused (any y, not only a softmax's output), in either operand order
    f2 = ag.compile((g - (y * g).sum(axis=-1, keepdims=True)) * y, backend="numpy-jit")
    assert any(label.startswith("softmax_backward") for label in _labels(f2, a, b))
    want = b.astype(np.float64) * (a - (a.astype(np.float64) * b).sum(-1, keepdims=True))
    np.testing.assert_allclose(f2(a, b), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- planned buffers
@needs_numba
def test_row_kernels_write_into_planned_buffers_and_stay_correct() -> None:
    """layer_norm, softmax and layer_norm's backward take the plan's buffers (``out=``): values of the
    first call returned to the caller are not overwritten by the second call."""
    rng = np.random.default_rng(9)
    x = ag.input("x", (64, 96))
    w = ag.parameter(rng.standard_normal(96).astype(np.float32), name="w")
    b = ag.parameter(rng.standard_normal(96).astype(np.float32), name="b")
    h = ag.layer_norm(x, (96,), w, b)
    s = (h * 2.0).softmax(axis=-1)
    loss = (ag.layer_norm(s, (96,)) * h).sum()
    gx = ag.grad(loss, [x])[0]
    f = ag.compile([s, gx], backend="numpy-jit")
    ref = ag.compile([s, gx])
    xs = [rng.standard_normal((64, 96)).astype(np.float32) for _ in range(3)]
    steps = f.plan_for(xs[0]).schedule.steps
    planned = {st.node.op for st in steps if st.buffer is not None}
    assert {"layer_norm", "layer_norm_backward"} <= planned, planned
    results = [f(a) for a in xs]
    for a, (got_s, got_g) in zip(xs, results, strict=True):
        want_s, want_g = ref(a)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5)


@needs_numba
def test_a_fused_groups_second_output_has_a_buffer_of_its_own() -> None:
    """GELU's forward group stores the value and the derivative; the derivative (read in the backward,
    steps later) is written into a buffer of its own on every call, and the gradients stay right."""
    rng = np.random.default_rng(10)
    x = ag.input("x", (64, 128))
    w1 = ag.parameter(rng.standard_normal((128, 256)).astype(np.float32) * 0.1, name="w1")
    b1 = ag.parameter(rng.standard_normal(256).astype(np.float32), name="b1")
    w2 = ag.parameter(rng.standard_normal((256, 128)).astype(np.float32) * 0.1, name="w2")
    h = ag.gelu(x @ w1 + b1) @ w2
    loss = (ag.gelu(h + 0.5) * h).sum()
    grads = ag.grad(loss, [x, w1, b1])
    f = ag.compile([loss, *grads], backend="numpy-jit")
    ref = ag.compile([loss, *grads])
    xs = [rng.standard_normal((64, 128)).astype(np.float32) for _ in range(2)]
    owned = [s.node for s in f.plan_for(xs[0]).schedule.steps if s.node.meta.get("jit_own_buffer")]
    assert owned, "no second output of a fused group got its own buffer"
    for a in xs + xs:
        for got, want in zip(f(a), ref(a), strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@needs_numba
def test_a_second_output_that_is_a_graph_output_is_never_reused() -> None:
    """A fused group's second output returned to the caller gets a fresh array per call."""
    x = ag.input("x", (64, 128))
    y = ag.gelu(x * 1.5)
    gx = ag.grad((y * y).sum(), [x])[0]
    f = ag.compile([y, gx], backend="numpy-jit")
    rng = np.random.default_rng(11)
    a, b = (rng.standard_normal((64, 128)).astype(np.float32) for _ in range(2))
    first = f(a)
    kept = [np.array(v) for v in first]
    f(b)
    for held, copy in zip(first, kept, strict=True):
        np.testing.assert_array_equal(held, copy)


# ----------------------------------------------------------------------------- layer_norm backward + add
def _pre_norm_blocks(dtype: str, weight: bool, seed: int = 12):
    """Two pre-norm residual blocks x + f(layer_norm(x)): the residual stream's gradient is
    ``dy + layer_norm_backward(...)`` at each norm."""
    rng = np.random.default_rng(seed)
    x = ag.input("x", (4, 16, 32), dtype)
    params = []
    h = x
    for i in range(2):
        w = ag.parameter(rng.uniform(0.5, 1.5, 32).astype(dtype), name=f"w{i}") if weight else None
        m = ag.parameter(rng.standard_normal((32, 32)).astype(dtype) * 0.2, name=f"m{i}")
        params += [p for p in (w, m) if p is not None]
        h = h + ag.tanh(ag.layer_norm(h, (32,), w) @ m)
    loss = (h * h).sum()
    return loss, x, params


@needs_numba
@pytest.mark.parametrize(("dtype", "weight"), [("float32", True), ("float64", True), ("float32", False)])
def test_layer_norm_backward_and_residual_add_are_one_kernel(dtype: str, weight: bool) -> None:
    loss, x, params = _pre_norm_blocks(dtype, weight)
    grads = ag.grad(loss, [x, *params])
    f = ag.compile([loss, *grads], backend="numpy-jit")
    ref = ag.compile([loss, *grads])
    rng = np.random.default_rng(13)
    xs = [rng.standard_normal((4, 16, 32)).astype(dtype) for _ in range(2)]
    labels = _labels(f, xs[0])
    assert sum(label.startswith("norm_backward_add kernel") for label in labels) >= 2, labels
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a in xs + xs:
        for got, want in zip(f(a), ref(a), strict=True):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@needs_numba
def test_layer_norm_backward_and_residual_add_match_finite_differences() -> None:
    loss, x, _ = _pre_norm_blocks("float64", True, seed=14)
    f = ag.compile([loss, ag.grad(loss, [x])[0]], backend="numpy-jit")
    a = np.random.default_rng(15).standard_normal((4, 16, 32))
    assert any(label.startswith("norm_backward_add") for label in _labels(f, a))
    _, gx = f(a)
    eps = 1e-6
    for idx in [(0, 0, 0), (3, 15, 31), (2, 7, 11)]:
        up, down = a.copy(), a.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric = (float(f(up)[0]) - float(f(down)[0])) / (2 * eps)
        assert abs(gx[idx] - numeric) <= 1e-6 * max(1.0, abs(numeric))


# ----------------------------------------------------------------------------- GEMM alpha
def _mkl_available() -> bool:
    from asg.core import blas

    return blas._find_mkl_rt() is not None


@pytest.mark.parametrize("path", ["2d", "batched", "folded", "grouped", "out", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_matmul_alpha_matches_float64(path: str, dtype, monkeypatch) -> None:
    from asg.core import blas

    if path != "numpy":
        if not _mkl_available():
            pytest.skip("the mkl package is not installed")
        monkeypatch.setattr(blas, "_MIN_WORK", 1)
    before = blas.use("mkl" if path != "numpy" else "numpy")
    try:
        rng = np.random.default_rng(16)
        if path == "2d":
            a, b = rng.standard_normal((33, 17)), rng.standard_normal((19, 17)).T  # b a transposed view
        elif path == "folded":
            a, b = rng.standard_normal((3, 11, 17)), rng.standard_normal((17, 9))
        elif path == "grouped":  # heads of one (B, T, 3d) tensor, no single batch stride
            monkeypatch.setattr(blas, "_COPY_STRIDED", False)
            qkv = rng.standard_normal((4, 12, 3 * 16))
            a = qkv[:, :, :16].reshape(4, 12, 2, 8).transpose(0, 2, 1, 3)
            b = np.swapaxes(qkv[:, :, 16:32].reshape(4, 12, 2, 8).transpose(0, 2, 1, 3), -1, -2)
        else:
            a, b = rng.standard_normal((2, 3, 10, 7)), rng.standard_normal((2, 3, 7, 5))
        a, b = a.astype(dtype), b.astype(dtype)
        out = np.empty((*a.shape[:-1], b.shape[-1]), dtype)
        out = out if path == "out" else None
        got = blas.matmul(a, b, out, alpha=0.3)
        if out is not None:
            assert got is out
        want = 0.3 * np.matmul(a.astype(np.float64), b.astype(np.float64))
        tol = 3e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10)
        np.testing.assert_allclose(blas.matmul(a, b), want / 0.3, rtol=tol, atol=tol * 10)  # alpha 1
    finally:
        blas.use(before)


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("left", [False, True])
def test_a_scaled_product_is_one_gemm_and_matches(dtype: str, left: bool) -> None:
    """``(a @ b) * c`` (attention's query gradient times the scale) is one GEMM with alpha c."""
    rng = np.random.default_rng(17)
    a, b = ag.input("a", (8, 4, 64, 64), dtype), ag.input("b", (8, 4, 64, 32), dtype)
    prod = a @ b
    y = 0.125 * prod if left else prod * 0.125
    z = ag.tanh(y)
    f = ag.compile(z, backend="numpy-jit")
    feeds = [
        rng.standard_normal((8, 4, 64, 64)).astype(dtype),
        rng.standard_normal((8, 4, 64, 32)).astype(dtype),
    ]
    labels = _labels(f, *feeds)
    assert any(label.startswith("scaled_matmul kernel over 2 nodes: matmul, mul") for label in labels), labels
    want = np.tanh(0.125 * np.matmul(*(x.astype(np.float64) for x in feeds)))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for _ in range(2):
        np.testing.assert_allclose(f(*feeds), want, rtol=tol, atol=tol)
    # the product read elsewhere too: left as a GEMM and a multiply, still right
    g = ag.compile([z, prod.sum()], backend="numpy-jit")
    assert not any(label.startswith("scaled_matmul") for label in _labels(g, *feeds))
    np.testing.assert_allclose(g(*feeds)[0], want, rtol=tol, atol=tol)
