"""asg.core.blas: matmul on MKL (when the mkl package is installed) and on numpy, against a float64
np.matmul reference, for every operand layout the kernels hand it; the routing and the thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import asg.core as ag
from asg.core import blas

HAVE_MKL = blas._find_mkl_rt() is not None
NO_MKL = "the mkl package is not installed (pip install asg-core[mkl])"
PATHS = [pytest.param("mkl", marks=pytest.mark.skipif(not HAVE_MKL, reason=NO_MKL)), "numpy"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Each path; on MKL every product goes to MKL (the small ones here would go to numpy)."""
    monkeypatch.setattr(blas, "_MIN_WORK", 1)
    before = blas.use(request.param)
    yield request.param
    blas.use(before)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The MKL gemm entry points called (names), through counting wrappers."""
    if not HAVE_MKL:
        pytest.skip(NO_MKL)
    return spy_gemm(monkeypatch)


def spy_gemm(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap MKL's gemm entry points to record the name of each one called; returns that list."""
    lib = blas._load()
    seen: list[str] = []
    for name in ("sgemm", "dgemm", "sgemm_batch", "dgemm_batch", "sgemm_grouped", "dgemm_grouped"):
        real = getattr(lib, name)

        def spy(*args, _real=real, _name=name):
            seen.append(_name)
            return _real(*args)

        monkeypatch.setattr(lib, name, spy)
    return seen


def _rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _t(x):
    """A transposed view (not a copy) of a contiguous array of the swapped shape."""
    return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)


def _check(a, b, out=None):
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    got = blas.matmul(a, b, out)
    if out is not None:
        assert got is out
    assert got.shape == ref.shape and got.dtype == a.dtype
    tol = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}.get(a.dtype, 2e-3)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(a.shape[-1]) * 4)
    return got


def _heads(dt, i, j, transpose_second):
    """Two of q, k, v as attention heads: (B, H, T, hs) views of one (B, T, 3, H, hs) tensor, whose
    (B, H) batch no single stride reaches; the second one transposed (k^T) or not."""
    qkv = _rand((4, 16, 3, 3, 8), dt).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hs)
    second = np.swapaxes(qkv[j], -1, -2) if transpose_second else qkv[j]
    return qkv[i], second


LAYOUTS = {
    "2-d": lambda dt: (_rand((40, 33), dt), _rand((33, 50), dt, 1)),
    "a transposed": lambda dt: (_t(_rand((40, 33), dt)), _rand((33, 50), dt, 1)),
    "b transposed": lambda dt: (_rand((40, 33), dt), _t(_rand((33, 50), dt, 1))),
    "both transposed": lambda dt: (_t(_rand((40, 33), dt)), _t(_rand((33, 50), dt, 1))),
    "a.T of a weight": lambda dt: (_rand((33, 40), dt).T, _rand((33, 50), dt, 1)),
    "row slice": lambda dt: (_rand((80, 33), dt)[::2], _rand((33, 50), dt, 1)),
    "column slice": lambda dt: (_rand((40, 66), dt)[:, ::2], _rand((66, 50), dt, 1)[::2]),
    "padded rows": lambda dt: (_rand((40, 64), dt)[:, :33], _rand((33, 64), dt, 1)[:, :50]),
    "negative strides": lambda dt: (_rand((40, 33), dt)[::-1], _rand((33, 50), dt, 1)[:, ::-1]),
    "3-d batched": lambda dt: (_rand((5, 20, 17), dt), _rand((5, 17, 30), dt, 1)),
    "3-d transposed": lambda dt: (_rand((5, 20, 17), dt), _t(_rand((5, 17, 30), dt, 1))),
    "3-d batch slice": lambda dt: (_rand((10, 20, 17), dt)[::2], _rand((5, 17, 30), dt, 1)),
    "4-d batched": lambda dt: (_rand((2, 3, 20, 17), dt), _rand((2, 3, 17, 30), dt, 1)),
    "(..., m, k) @ (k, n)": lambda dt: (_rand((4, 6, 20, 17), dt), _rand((17, 30), dt, 1)),
    "strided (..., m, k) @ (k, n)": lambda dt: (_rand((4, 20, 34), dt)[..., ::2], _rand((17, 30), dt, 1)),
    "(m, k) @ (b, k, n)": lambda dt: (_rand((20, 17), dt), _rand((6, 17, 30), dt, 1)),
    "broadcast batch 1": lambda dt: (_rand((1, 20, 17), dt), _rand((6, 17, 30), dt, 1)),
    "broadcast both ways": lambda dt: (_rand((2, 1, 20, 17), dt), _rand((1, 3, 17, 30), dt, 1)),
    "attention heads q @ k^T": lambda dt: _heads(dt, 0, 1, True),
    "attention heads p @ v": lambda dt: (_rand((4, 3, 16, 16), dt), _heads(dt, 2, 2, False)[1]),
    "rank-1 dims": lambda dt: (_rand((1, 1, 300), dt), _rand((1, 300, 1), dt, 1)),
    "m = 1 row": lambda dt: (_rand((7, 1, 200), dt), _rand((7, 200, 40), dt, 1)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_float64_reference(path, layout, dtype, request):
    a, b = LAYOUTS[layout](dtype)
    seen = request.getfixturevalue("calls") if path == "mkl" else []
    _check(a, b)
    assert len(seen) == (0 if path == "numpy" else 1)  # every layout is one MKL call


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_into_out(path, dtype):
    a, b = _rand((4, 30, 20), dtype), _rand((4, 20, 25), dtype, 1)
    _check(a, b, np.empty((4, 30, 25), dtype))
    wide = np.full((4, 30, 40), 7, dtype)  # out with padded rows: the padding stays as it was
    _check(a, b, wide[..., :25])
    assert (wide[..., 25:] == 7).all()
    _check(a, b, np.empty((4, 25, 30), dtype).transpose(0, 2, 1))  # a transposed out
    _check(a[0], b[0], np.empty((30, 25), dtype))
    q, kt = _heads(dtype, 0, 1, True)  # a batch that no single stride reaches, into out
    _check(q, kt, np.empty((4, 3, 16, 16), dtype))
    _check(q, kt, np.empty((16, 4, 3, 16), dtype).transpose(1, 2, 3, 0))


def test_out_may_alias_an_operand(path):
    a, b = _rand((48, 48), np.float32), _rand((48, 48), np.float32, 1)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    got = blas.matmul(a, b, a)  # the result replaces a, as np.matmul allows
    assert got is a
    np.testing.assert_allclose(a, expected, rtol=2e-5, atol=1e-4)
    stack = _rand((3, 32, 32), np.float64)
    copy = stack.copy()
    blas.matmul(stack[:2], stack[1:], stack[1:])  # overlapping, shifted by one matrix
    np.testing.assert_allclose(stack[1:], copy[:2] @ copy[1:], rtol=1e-12)


def test_errors_and_other_dtypes_as_numpy(path):
    a, b = _rand((8, 6), np.float32), _rand((5, 4), np.float32)
    with pytest.raises(ValueError):
        blas.matmul(a, b)
    with pytest.raises(ValueError):
        blas.matmul(_rand((30, 20), np.float32), _rand((20, 30), np.float32), np.empty((30, 31), np.float32))
    for dtype in (np.float16, np.int64):
        x, y = (
            (np.arange(600) % 7).reshape(20, 30).astype(dtype),
            (np.arange(600) % 5).reshape(30, 20).astype(dtype),
        )
        np.testing.assert_array_equal(blas.matmul(x, y), np.matmul(x, y))
    x = _rand((20, 30), np.float32)
    np.testing.assert_allclose(blas.matmul(x, _rand((30, 20), np.float64)), x @ _rand((30, 20), np.float64))


def test_mkl_runs_the_products_it_should(calls):
    blas.use("mkl")
    try:
        f32, f64 = _rand((128, 128), np.float32), _rand((128, 128), np.float64)
        _check(f32, f32.T)
        _check(f64, f64)
        _check(_rand((4, 128, 64), np.float32), _rand((4, 64, 128), np.float32))
        _check(_rand((4, 64, 128), np.float32), f32)  # folded into one sgemm
        assert calls == ["sgemm", "dgemm", "sgemm_batch", "sgemm"]
        calls.clear()
        _check(_rand((2, 1, 64, 128), np.float32), _rand((1, 3, 128, 64), np.float32))
        assert calls == ["sgemm_grouped"]  # no single batch stride: one call over the matrices' addresses
        calls.clear()
        _check(_rand((64, 64), np.float32), _rand((64, 64), np.float32))  # under _MIN_WORK: numpy
        _check(f32.astype(np.float16), f32.astype(np.float16))
        assert calls == []
    finally:
        blas.use(None)


def test_numpy_path_calls_no_mkl(calls):
    blas.use("numpy")
    try:
        _check(_rand((64, 64), np.float32), _rand((64, 64), np.float32))
        assert calls == [] and blas.info() == {"blas": "numpy", "why": "ASG_BLAS=numpy"}
    finally:
        blas.use(None)


def test_asg_blas_environment(monkeypatch):
    before = blas.use(None)
    try:
        monkeypatch.setenv("ASG_BLAS", "numpy")
        blas.use(None)  # reads ASG_BLAS again (asg.core's import read it first)
        assert blas.info()["blas"] == "numpy"
        monkeypatch.setenv("ASG_BLAS", "mkl")
        if HAVE_MKL:
            blas.use(None)
            assert blas.info()["blas"] == "mkl"
        monkeypatch.setenv("ASG_BLAS", "openblas")
        with pytest.raises(ValueError, match="ASG_BLAS must be 'numpy' or 'mkl', got 'openblas'"):
            blas.use(None)
        with pytest.raises(ValueError, match="ASG_BLAS must be 'numpy' or 'mkl', got 'openblas'"):
            blas.matmul(_rand((4, 4), np.float32), _rand((4, 4), np.float32))
        monkeypatch.delenv("ASG_BLAS")
        blas.use(None)
        assert blas.info()["blas"] == ("mkl" if HAVE_MKL else "numpy")
    finally:
        blas.use(before)
    with pytest.raises(ValueError, match=r"blas\.use"):
        blas.use("openblas")


def test_forced_mkl_without_the_library_says_why(monkeypatch):
    monkeypatch.setattr(blas, "_mkl", None)
    monkeypatch.setattr(blas, "_failed", "the mkl package is not installed (pip install asg-core[mkl])")
    before = blas.use("numpy")
    monkeypatch.setenv("ASG_BLAS", "mkl")
    try:
        with pytest.raises(RuntimeError, match=r"ASG_BLAS=mkl, but the mkl package is not installed"):
            blas.use(None)
        with pytest.raises(RuntimeError, match=r"ASG_BLAS=mkl, but the mkl package is not installed"):
            blas.matmul(_rand((64, 64), np.float32), _rand((64, 64), np.float32))
        monkeypatch.delenv("ASG_BLAS")
        blas.use(None)
    finally:
        monkeypatch.delenv("ASG_BLAS", raising=False)
        blas.use(before)
    assert blas.info() == {
        "blas": "numpy",
        "why": "the mkl package is not installed (pip install asg-core[mkl])",
    }
    _check(_rand((64, 64), np.float32), _rand((64, 64), np.float32))


def _blas_info_in_a_fresh_process(**env: str) -> str:
    code = "from asg.core import blas; import numpy as np; blas.matmul(np.ones((128, 128), 'f'), np.ones((128, 128), 'f')); print(blas.info())"
    run = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    return run.stdout + run.stderr


def test_asg_mkl_library_names_the_library(tmp_path):
    bogus = tmp_path / "libmkl_rt.so.3"
    bogus.write_bytes(b"not a shared library")
    out = _blas_info_in_a_fresh_process(ASG_MKL_LIBRARY=str(bogus), ASG_BLAS="mkl")
    assert f"ASG_BLAS=mkl, but could not load {bogus} (ASG_MKL_LIBRARY)" in out
    if HAVE_MKL:  # the wheel's own library, named explicitly, is the one loaded
        path = blas._find_mkl_rt()
        out = _blas_info_in_a_fresh_process(ASG_MKL_LIBRARY=path)
        assert "'blas': 'mkl'" in out and repr(path) in out


@pytest.mark.skipif(not HAVE_MKL, reason=NO_MKL)
def test_thread_count_follows_set_num_threads():
    before = blas.use("mkl")
    n = ag.get_num_threads()
    if blas.info()["layer"] == "SEQUENTIAL":
        blas.use(before)
        pytest.skip("MKL_THREADING_LAYER=SEQUENTIAL runs one thread")
    try:
        assert blas.info()["threads"] == n
        ag.set_num_threads(1)
        assert blas.info()["threads"] == 1
        ag.set_num_threads(2)
        assert blas.info()["threads"] == 2
        threadpoolctl = pytest.importorskip("threadpoolctl")
        numpy_openblas = [
            p["num_threads"]
            for p in threadpoolctl.threadpool_info()
            if p["internal_api"] == "openblas" and "numpy" in p["filepath"]
        ]
        if not numpy_openblas:
            pytest.skip("numpy's BLAS is not OpenBLAS")
        assert numpy_openblas == [1] * len(numpy_openblas)  # MKL does the GEMMs: OpenBLAS keeps 1 thread
        _check(_rand((200, 100), np.float32), _rand((100, 150), np.float32))
        ag.set_num_threads(n)
        assert blas.info()["threads"] == n
    finally:
        ag.set_num_threads(n)
        blas.use(before)


@pytest.mark.parametrize("backend", ["numpy", "numpy-jit"])
def test_matmul_and_conv_kernels_go_through_blas(path, backend, monkeypatch):
    seen = []
    real = blas.matmul

    def spy(a, b, out=None):
        seen.append((a.shape, b.shape))
        return real(a, b, out)

    monkeypatch.setattr(blas, "matmul", spy)
    # 12 x 24 channels: over numpy-jit's DIRECT_MAX_CHANNELS (backends/jit/conv.py), so a GEMM there too
    x = ag.input("x", (4, 12, 12, 12), dtype="float64")
    w = ag.parameter(_rand((24, 12, 3, 3), np.float64), name="w")
    v = ag.parameter(_rand((24 * 10 * 10, 16), np.float64, 1), name="v")
    y = ag.conv2d(x, w).reshape((4, -1)) @ v
    loss = (y * y).sum()
    fn = ag.compile([loss, *ag.grad(loss, [w, v])], backend=backend)
    xs = _rand((4, 12, 12, 12), np.float64, 2)
    got = fn(xs)
    assert len(seen) >= 5  # conv forward, weight grad; matmul forward and both grads
    seen.clear()
    before = blas.use("numpy")
    try:
        monkeypatch.setattr(blas, "matmul", real)
        want = ag.compile([loss, *ag.grad(loss, [w, v])], backend="numpy")(xs)
    finally:
        blas.use(before)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12 * np.abs(r).max())


def test_fold_views_exactly_where_numpy_reshapes_without_a_copy():
    # _fold decides from the strides; it must give a view exactly where numpy's reshape would, and
    # that view must be numpy's (same data, same values), or None
    from asg.core.blas import _fold

    base = np.arange(4 * 6 * 10 * 8, dtype=np.float32).reshape(4, 6, 10, 8)
    views = [
        base,
        base.transpose(0, 2, 1, 3),  # heads seen in a (B, T, H, D) tensor
        base[:, :3],
        base[:, :, ::2],
        base.transpose(1, 0, 2, 3),
        base[:1],
        base[:, :1],
        np.broadcast_to(base[:1], (3, 6, 10, 8)),
        base[:0],
        base.transpose(0, 1, 3, 2),
        base.reshape(24, 10, 8)[::2].reshape(3, 4, 10, 8),
    ]
    for x in views:
        lead = int(np.prod(x.shape[:-2]))
        for shape in [(lead, *x.shape[-2:]), (1, lead * x.shape[-2], x.shape[-1]), x.shape]:
            view = x.view()
            try:
                view.shape = shape  # numpy's in-place reshape: fails where a copy is needed
            except AttributeError:
                view = None
            got = _fold(x, shape)
            assert (got is None) == (view is None), (x.shape, x.strides, shape)
            if got is not None:
                assert got.shape == shape and np.array_equal(got, view)
                assert got.size == 0 or np.shares_memory(got, x)
