"""The GPT-step fast paths of numpy-jit and asg.core.blas against the numpy backend and a float64
reference: the embedding gradient's scatter-add kernel (index_select_backward) and the attention heads'
batched GEMMs (a batch no single stride reaches, copied for one strided MKL call)."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core import blas
from asg.core.backends import jit

from .test_blas import spy_gemm

HAVE_NUMBA = jit.enabled()
ag.get_backend("numpy-jit")
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (or ASG_JIT=0)")
HAVE_MKL = blas._find_mkl_rt() is not None
needs_mkl = pytest.mark.skipif(not HAVE_MKL, reason="the mkl package is not installed")


def _embedding_grads(backend: str, table: tuple[int, ...], idx: np.ndarray, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    w = ag.parameter(rng.standard_normal(table).astype(np.float32), name="w")
    i = ag.input("i", idx.shape, str(idx.dtype))
    out = ag.index_select(w, i, axis=0)
    up = ag.constant(rng.standard_normal(out.shape).astype(np.float32))
    loss = (out * up).sum()
    f = ag.compile(ag.grad(loss, [w])[0], inputs=[i], backend=backend)
    return [f(idx) for _ in range(2)], f


@needs_numba
@pytest.mark.parametrize(
    ("table", "idx"),
    [
        ((65, 128), np.random.default_rng(1).integers(0, 65, (16, 64))),  # GPT-tiny's token table
        ((7, 3), np.array([[0, 6, 6], [1, 0, 6]])),  # repeated rows, rows never picked
        ((9, 200), np.array([-1, 3, -9, 3, 8], dtype=np.int32)),  # negative, int32, > 1 column task
        ((5,), np.array([4, 4, 0, 2])),  # a 1-d table
        ((6, 2, 3), np.array([5, 1, 5])),  # rows of more than one dim
    ],
)
def test_index_select_backward_matches_numpy(table: tuple[int, ...], idx: np.ndarray) -> None:
    want, _ = _embedding_grads("numpy", table, idx)
    got, f = _embedding_grads("numpy-jit", table, idx)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    ops = [s.node.op for s in f.plan_for(idx).schedule.steps]
    assert "index_select_backward" in ops


@needs_numba
def test_index_select_backward_kernel_is_the_numba_one() -> None:
    rule = ag.get_op("index_select_backward").lowerings[jit.BACKEND]
    assert rule is not jit._as_numpy


def _heads(i: int, j: int, transpose: bool, dtype=np.float32):
    """Two of q, k, v as (B, H, T, hs) views of one (B, T, 3d) tensor (GPT's qkv layout)."""
    qkv = np.random.default_rng(0).standard_normal((4, 24, 3 * 3 * 8)).astype(dtype)
    parts = [qkv[:, :, p * 24 : (p + 1) * 24].reshape(4, 24, 3, 8).transpose(0, 2, 1, 3) for p in range(3)]
    second = np.swapaxes(parts[j], -1, -2) if transpose else parts[j]
    return parts[i], second


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if not HAVE_MKL:
        pytest.skip("the mkl package is not installed")
    monkeypatch.setattr(blas, "_MIN_WORK", 1)
    before = blas.use("mkl")
    yield spy_gemm(monkeypatch)
    blas.use(before)


def _check(a, b, out=None):
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    got = blas.matmul(a, b, out)
    if out is not None:
        assert got is out
    tol = 2e-5 if a.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(a.shape[-1]) * 4)
    return got


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("copy", [True, False])
def test_attention_heads_copied_or_grouped_match_the_reference(calls, monkeypatch, dtype, copy) -> None:
    monkeypatch.setattr(blas, "_COPY_STRIDED", copy)
    q, kt = _heads(0, 1, True, dtype)
    s = _check(q, kt)  # q @ k^T: both strided heads, the second a transposed view
    _, v = _heads(0, 2, False, dtype)
    _check(s, v)  # p @ v: a contiguous batch times strided heads
    o = np.empty((4, 3, 24, 8), dtype)
    _check(np.swapaxes(s, -1, -2), v, out=o)  # into out
    o2 = np.empty((4, 24, 3, 8), dtype).transpose(0, 2, 1, 3)  # out itself in heads layout
    _check(s, v, out=o2)
    kind = "sgemm" if dtype == np.float32 else "dgemm"
    want = f"{kind}_batch" if copy else f"{kind}_grouped"
    assert calls == [want] * 4


@needs_mkl
def test_a_broadcast_batch_without_one_stride_stays_grouped(calls) -> None:
    a = np.random.default_rng(0).standard_normal((2, 1, 16, 8)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((1, 3, 8, 16)).astype(np.float32)
    _check(a, b)
    assert calls == ["sgemm_grouped"]


def _units(f, *feeds) -> list:
    plan = f.plan_for(*feeds)
    return [s.node.meta["jit"] for s in plan.schedule.steps if "jit" in s.node.meta]


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scalar_constants_become_literals_and_match_numpy(dtype: str, monkeypatch) -> None:
    from asg.core.backends.jit import NumpyJitBackend

    monkeypatch.setattr(NumpyJitBackend, "options", {**NumpyJitBackend.options, "min_elements": 0})
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 96)).astype(dtype)
    x = ag.input("x", xs.shape, dtype)
    # finite scalars (literals), an infinite one and a full array (both read from memory)
    big = ag.constant(rng.standard_normal((64, 96)).astype(dtype))
    y = ag.gelu(x * 0.5 + 0.25) + ag.minimum(x, np.array(np.inf, dtype)) * big
    seen = []
    real = jit.codegen.kernel_source

    def spy(*args, **kwargs):
        source = real(*args, **kwargs)
        seen.append((args[6] if len(args) > 6 else kwargs.get("literals")) or {})
        return source

    monkeypatch.setattr(jit.codegen, "kernel_source", spy)
    got = ag.compile(y, backend="numpy-jit")(xs)
    want = ag.compile(y, backend="numpy")(xs)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert seen and any(0.5 in lit.values() and 0.25 in lit.values() for lit in seen)
    assert not any(np.isinf(v) for lit in seen for v in lit.values())


@needs_numba
def test_gelu_backward_matches_numpy_with_literal_constants() -> None:
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((16, 64, 512)).astype(np.float32)
    w = ag.parameter(rng.standard_normal(512).astype(np.float32), name="b")
    x = ag.input("x", xs.shape)
    loss = (ag.gelu(x + w) * 1.5).sum()
    g = ag.grad(loss, [w])[0]
    got = ag.compile(g, inputs=[x], backend="numpy-jit")(xs)
    want = ag.compile(g, inputs=[x], backend="numpy")(xs)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-3)
