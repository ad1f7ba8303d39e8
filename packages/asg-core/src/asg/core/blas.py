"""The BLAS behind ASG's CPU matmul: Intel oneMKL when the ``mkl`` package is installed, else numpy's.

:func:`matmul` is ``np.matmul`` for operands of 2 or more dims. With the ``mkl`` wheel installed
(``pip install asg-core[mkl]``) it calls oneMKL's ``cblas_?gemm`` (2-d, and ``(..., m, k) @ (k, n)``
folded into one GEMM), ``cblas_?gemm_batch_strided`` (batched, broadcast batch) and, for a batch
that no single stride reaches (attention heads viewed in a fused qkv tensor), ``cblas_?gemm_batch``
over the matrices' addresses, through ctypes; one MKL call for each product:

- float32 and float64 only; other dtypes and products under ``_MIN_WORK`` multiply-adds (where the
  ctypes call costs more than it saves) go to numpy;
- a transposed view is passed as a transpose flag, not copied; other strided operands are copied,
  a batch whose matrices no single stride reaches too (attention heads viewed in a fused qkv tensor:
  the copy and one strided batched call cost less than the grouped call over their addresses);
- an ``out`` that overlaps an operand, or that no GEMM can write directly, gets the result through a
  temporary, as ``np.matmul`` does.

``ASG_BLAS=numpy`` or ``ASG_BLAS=mkl`` forces one (``mkl`` raises when it cannot be loaded);
:func:`use` does the same at run time. ``ASG_MKL_LIBRARY=/path/to/libmkl_rt.so.3`` names an MKL
outside the ``mkl`` wheel (a conda or oneAPI install; its other ``libmkl_*`` files beside it).

Threads. MKL runs ``asg.core.get_num_threads()`` threads (:func:`asg.core.set_num_threads` sets
it), on MKL's GNU OpenMP threading layer: the libgomp that numba's ``"numpy-jit"`` kernels use, so
the GEMMs and the fused kernels share one pool of threads, and no two pools wait for cores:

- that pool spins briefly before it sleeps (libgomp's default, ``GOMP_SPINCOUNT=300000``, set when
  asg.core is imported unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set). Waking sleeping
  threads for every mid-size GEMM (``OMP_WAIT_POLICY=PASSIVE``, which ``"numpy-jit"`` sets for
  numba alone) cost MKL a third of its speed at GPT's shapes;
- numpy's OpenBLAS keeps 1 thread while MKL does the GEMMs (it still runs the products too small
  for MKL, and code that calls numpy directly): its idle threads would spin against that pool.

Sharing the process with PyTorch or another threaded library on few cores, set
``OMP_WAIT_POLICY=PASSIVE`` (all OpenMP threads sleep when idle). ``MKL_THREADING_LAYER`` picks
another layer: INTEL (libiomp5, a second pool, started with ``KMP_BLOCKTIME=0`` unless set, so it
does not spin against numba's) or SEQUENTIAL (one thread).

Example:
    >>> import numpy as np
    >>> from asg.core import blas
    >>> a, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32)
    >>> bool((blas.matmul(a, b) == 32).all())
    True
    >>> blas.info()["blas"] in ("mkl", "numpy")
    True
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import sys
import threading
from typing import Any

import numpy as np

from . import threads

__all__ = ["info", "matmul", "set_num_threads", "use"]

log = logging.getLogger("asg.core.blas")

# Below this many multiply-adds (m*n*k*batch) numpy's call is as fast: the MKL path spends about
# 5 µs in Python and ctypes and MKL 2 more before the GEMM starts; on one thread 64^3 took 12 µs
# against numpy's 4, 96^3 19 against 11, 128^3 33 against 33 (2 threads move the crossover down).
_MIN_WORK = 1 << 20

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_LAYERS = {"INTEL": 0, "SEQUENTIAL": 1, "GNU": 3, "TBB": 4}
_DEFAULT_LAYER = "GNU"

_lock = threading.Lock()
_forced: str | None = None  # use()'s choice; None: ASG_BLAS, else MKL when it loads
_env = ""  # ASG_BLAS, read at import and by use() (os.environ.get costs more than a small GEMM's setup)
_mkl: _MKL | None = None  # the loaded library
_failed: str | None = None  # why MKL did not load, once it was tried


class _MKL:
    """oneMKL's ``libmkl_rt`` through ctypes: gemm, batched gemm and the thread count."""

    def __init__(self, path: str) -> None:
        env = os.environ.get("MKL_THREADING_LAYER", "").strip().upper()
        self.layer = env or _DEFAULT_LAYER
        if self.layer == "GNU":
            # MKL's GNU layer calls libgomp's GOMP_* functions without linking libgomp itself: they
            # must be global. numba's OpenMP kernels use this same libgomp (one pool of threads).
            ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
        elif self.layer == "INTEL":
            os.environ.setdefault("KMP_BLOCKTIME", "0")  # libiomp5's idle threads spin 200 ms otherwise
        self.path = path
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        if lib.MKL_Set_Interface_Layer(0) != 0:  # LP64: 32-bit MKL_INT
            raise OSError(f"{path} was already set to the ILP64 interface by someone else in this process")
        if not env and lib.MKL_Set_Threading_Layer(_LAYERS[self.layer]) != _LAYERS[self.layer]:
            raise OSError(f"{path}: could not select MKL's {self.layer} threading layer")
        buffer = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buffer, len(buffer))
        self.version = buffer.value.decode(errors="replace").strip()
        int_, ptr = ctypes.c_int, ctypes.c_void_p
        head = [int_] * 6  # layout, transa, transb, m, n, k
        for name, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            grouped = getattr(lib, f"cblas_{name}gemm_batch")  # pointer arrays: any batch layout
            grouped.argtypes = [int_, *[ptr] * 13, int_, ptr]
            grouped.restype = None
            setattr(self, f"{name}gemm_grouped", grouped)
            gemm = getattr(lib, f"cblas_{name}gemm")
            gemm.argtypes = [*head, real, ptr, int_, ptr, int_, real, ptr, int_]
            gemm.restype = None
            batch = getattr(lib, f"cblas_{name}gemm_batch_strided")
            batch.argtypes = [*head, real, ptr, int_, int_, ptr, int_, int_, real, ptr, int_, int_, int_]
            batch.restype = None
            setattr(self, f"{name}gemm", gemm)
            setattr(self, f"{name}gemm_batch", batch)
        lib.MKL_Set_Num_Threads.argtypes = [int_]
        lib.MKL_Get_Max_Threads.restype = int_
        self.lib = lib

    def set_num_threads(self, n: int) -> None:
        self.lib.MKL_Set_Num_Threads(n)

    def num_threads(self) -> int:
        return int(self.lib.MKL_Get_Max_Threads())


def _find_mkl_rt() -> str | None:
    """The path of ``libmkl_rt.so*``: ``ASG_MKL_LIBRARY``, else the installed ``mkl`` distribution's, or None."""
    override = os.environ.get("ASG_MKL_LIBRARY", "").strip()
    if override:
        return override  # loading it says what is wrong with it, naming the path
    candidates = []
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        name = entry.name
        if name.startswith("libmkl_rt.so") or name in ("libmkl_rt.dylib", "mkl_rt.2.dll"):
            candidates.append(str(entry.locate()))
    libdir = os.path.join(sys.prefix, "lib")
    if os.path.isdir(libdir):
        candidates += sorted(
            os.path.join(libdir, f) for f in os.listdir(libdir) if f.startswith("libmkl_rt.so")
        )
    # the versioned file (libmkl_rt.so.3), not a development symlink that may be missing
    existing = sorted({os.path.realpath(c) for c in candidates if os.path.exists(c)}, key=len, reverse=True)
    return existing[0] if existing else None


def _load() -> _MKL | None:
    """The MKL library, loaded once; None (and the reason in ``_failed``) when it cannot be."""
    global _mkl, _failed
    if _mkl is not None or _failed is not None:
        return _mkl
    with _lock:
        if _mkl is not None or _failed is not None:
            return _mkl
        path = _find_mkl_rt()
        if path is None:
            _failed = "the mkl package is not installed (pip install asg-core[mkl])"
            log.info("%s: matmul uses numpy's BLAS", _failed)
            return None
        try:
            lib = _MKL(path)
        except (OSError, AttributeError) as err:
            named = " (ASG_MKL_LIBRARY)" if os.environ.get("ASG_MKL_LIBRARY", "").strip() else ""
            _failed = f"could not load {path}{named}: {err}"
            log.warning("%s: matmul uses numpy's BLAS", _failed)
            return None
        lib.set_num_threads(threads.get_num_threads())
        _limit_numpy_openblas()
        log.info("matmul uses %s (%s layer, %d threads)", lib.version, lib.layer, lib.num_threads())
        _mkl = lib
    return _mkl


def _choice() -> str:
    choice = _forced or _env or "auto"
    if choice not in ("auto", "mkl", "numpy"):
        raise ValueError(f"ASG_BLAS must be 'numpy' or 'mkl', got {choice!r}")
    return choice


def _active() -> _MKL | None:
    choice = _choice()
    if choice == "numpy":
        return None
    lib = _load()
    if lib is None and choice == "mkl":
        raise RuntimeError(f"ASG_BLAS=mkl, but {_failed}")
    return lib


def use(name: str | None) -> str | None:
    """Route matmul to ``"mkl"`` or ``"numpy"`` from now on (``None``: ``ASG_BLAS``, read again now,
    else MKL when installed); returns the previous setting.

    >>> from asg.core import blas
    >>> before = blas.use("numpy")
    >>> blas.info()["blas"]
    'numpy'
    >>> _ = blas.use(before)
    """
    global _forced, _env
    if name not in (None, "mkl", "numpy"):
        raise ValueError(f"blas.use: name must be 'mkl', 'numpy' or None, got {name!r}")
    previous, _forced = _forced, name
    _env = os.environ.get("ASG_BLAS", "").strip().lower()
    _active()  # a forced "mkl" that cannot load raises here, not in the first kernel
    return previous


def set_num_threads(n: int) -> None:
    """Give MKL ``n`` threads and numpy's OpenBLAS 1, if MKL is loaded (:func:`asg.core.set_num_threads`
    calls this)."""
    if _mkl is not None:
        _mkl.set_num_threads(n)
        _limit_numpy_openblas()


def _limit_numpy_openblas() -> None:
    """numpy's OpenBLAS to 1 thread (through threadpoolctl, when installed): see the module docstring."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        log.info("threadpoolctl is not installed: numpy's OpenBLAS keeps its threads next to MKL's")
        return
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    controller = ThreadpoolController().select(internal_api="openblas")
    ours = [c.filepath for c in controller.lib_controllers if _under(c.filepath, numpy_dir)]
    if ours:
        controller.select(filepath=ours).limit(limits=1)


def _under(path: str, root: str) -> bool:
    """True for numpy's own OpenBLAS (numpy.libs/ or numpy/.libs/ beside numpy's package)."""
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    return relative.split(os.sep)[0] in ("numpy.libs", "numpy")


def _mkl_rt_in_prefix() -> bool:
    """A cheap look for ``libmkl_rt``: ``ASG_MKL_LIBRARY``, or ``sys.prefix/lib``, where the mkl wheel puts it."""
    if os.environ.get("ASG_MKL_LIBRARY", "").strip():
        return True
    try:
        return any(f.startswith("libmkl_rt.so") for f in os.listdir(os.path.join(sys.prefix, "lib")))
    except OSError:
        return False


def _prepare_openmp() -> None:
    """Before any OpenMP runtime has read its settings (asg.core's import): when MKL will do the GEMMs
    on the GNU layer, keep libgomp's short spin unless the user chose a policy (module docstring)."""
    try:
        choice = _choice()
    except ValueError:
        return  # the first matmul says why
    layer = os.environ.get("MKL_THREADING_LAYER", "").strip().upper() or _DEFAULT_LAYER
    if choice == "numpy" or layer != "GNU" or not _mkl_rt_in_prefix():
        return
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "300000"


def info() -> dict[str, Any]:
    """Which BLAS matmul uses now: ``{"blas": "mkl", "version", "layer", "threads", "path"}`` or
    ``{"blas": "numpy", "why"}``.

    >>> from asg.core import blas
    >>> sorted(blas.info())[0]
    'blas'
    """
    lib = _active()
    if lib is None:
        why = "ASG_BLAS=numpy" if _choice() == "numpy" else _failed
        return {"blas": "numpy", "why": why}
    return {
        "blas": "mkl",
        "version": lib.version,
        "layer": lib.layer,
        "threads": lib.num_threads(),
        "path": lib.path,
    }


# ============================================================================= matmul
def _numpy_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        # (..., m, k) @ (k, n) is one (M, k) @ (k, n) BLAS call, not a loop of small ones.
        rows = a.reshape(-1, a.shape[-1])
        if out is None:
            return np.matmul(rows, b).reshape((*a.shape[:-1], b.shape[-1]))
        np.matmul(rows, b, out=out.reshape(rows.shape[0], b.shape[-1]))
        return out
    return np.matmul(a, b, out=out)


def _fold(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A view of ``x`` with ``shape`` (consecutive dims of ``x`` merged), or None when that needs a copy.

    Decided from the strides: numpy's failed in-place reshape (``view.shape = shape``) cost 40 µs a
    call, about 2 ms of a GPT-tiny training step, whose attention heads are views that do not fold.
    """
    dims = [(n, st) for n, st in zip(x.shape, x.strides, strict=True) if n != 1]
    at = 0
    for n in shape:
        if n == 1 or x.size == 0:
            continue
        size, last = 1, None
        while size < n and at < len(dims):
            d, st = dims[at]
            if last is not None and last != st * d:  # the dims merged must be one stride apart
                return None
            size, last, at = size * d, st, at + 1
        if size != n:
            return None
    if at != len(dims) and x.size:
        return None
    view = x.reshape(shape)
    return view if view.size == 0 or np.may_share_memory(view, x) else None


# A batched operand whose matrices no single stride reaches (attention's heads, viewed in the fused qkv
# tensor) is copied into a contiguous batch for one cblas_?gemm_batch_strided call, rather than passed
# to cblas_?gemm_batch by address: at GPT-tiny's heads (64 of 64x32 @ 32x64, 2 threads of a Zen 5) the
# copy and the strided call took about 0.15 ms against the grouped call's 0.22; the 24 attention GEMMs
# of a GPT-tiny training step 7.0-7.3 ms against 7.7-9.0.
# False: the grouped call (a broadcast operand always takes it).
_COPY_STRIDED = True
_INT_MAX = 2**31 - 1  # MKL's LP64 interface takes 32-bit dims, leading dims and strides


def _layout(r: int, c: int, s0: int, s1: int, item: int) -> tuple[int, int] | None:
    """``(trans, ld)`` of an ``(r, c)`` matrix with byte strides ``(s0, s1)`` for a row-major GEMM
    operand: row-major itself, or the transpose of one; None when it is neither."""
    if s0 % item or s1 % item:
        return None
    if c == 1 or s1 == item:
        ld = s0 // item if r > 1 else c
        if c <= ld <= _INT_MAX:
            return _NO_TRANS, ld
    if r == 1 or s0 == item:
        ld = s1 // item if c > 1 else r
        if r <= ld <= _INT_MAX:
            return _TRANS, ld
    return None


def _operand(x: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """``(trans, ld, batch_stride, array)`` of a 3-d ``(batch, rows, cols)`` operand for MKL, in
    elements; the array is a contiguous copy when its strides are neither row-major nor a transpose."""
    item = x.itemsize
    count, r, c = x.shape
    sb, s0, s1 = x.strides
    sb = sb if count > 1 else 0
    if x.flags.aligned and 0 <= sb <= _INT_MAX * item and sb % item == 0:
        found = _layout(r, c, s0, s1, item)
        if found is not None:
            return found[0], found[1], sb // item, x
    return _NO_TRANS, c, r * c, np.ascontiguousarray(x)


def _batch_copy(x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``x`` copied into one contiguous ``shape`` (batch, rows, cols) batch: row-major, or the transpose
    of a row-major batch when ``x``'s matrices are transposed views (k^T), so the copy reads memory in order."""
    if x.strides[-1] > x.strides[-2]:
        swapped = np.ascontiguousarray(np.swapaxes(x, -1, -2)).reshape(shape[0], shape[2], shape[1])
        return np.swapaxes(swapped, -1, -2)
    return np.ascontiguousarray(x).reshape(shape)


def _result(out: np.ndarray, shape: tuple[int, int, int], *operands: np.ndarray) -> np.ndarray | None:
    """``out`` as the ``(batch, m, n)`` C operand of one MKL call, or None when MKL cannot write it
    directly: it overlaps an operand, is read-only or unaligned, or its rows are not one stride apart."""
    if not out.flags.writeable or not out.flags.aligned or any(np.may_share_memory(out, x) for x in operands):
        return None
    c3 = _fold(out, shape)
    if c3 is None:
        return None
    item = c3.itemsize
    count, m, n = shape
    sc, s0, s1 = c3.strides
    found = _layout(m, n, s0, s1, item)
    if found is None or found[0] != _NO_TRANS:
        return None
    apart = count == 1 or (sc % item == 0 and m * found[1] <= sc // item <= _INT_MAX)
    return c3 if apart else None


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, alpha: float = 1.0) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for arrays of 2 or more dims, on MKL where that applies.

    Args:
        a: ``(..., m, k)``.
        b: ``(..., k, n)``; the batch dims broadcast as in numpy.
        out: optional ``(..., m, n)`` array of the result dtype to write into; may overlap ``a`` or ``b``.
        alpha: the product scaled by ``alpha`` (GEMM's alpha on MKL: no pass of its own; on numpy, the
            product multiplied in place afterwards, as ``np.matmul(a, b) * alpha`` rounds).

    >>> import numpy as np
    >>> from asg.core import blas
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> blas.matmul(x, x.T)
    array([[ 5., 14.],
           [14., 50.]])
    """
    lib = _active()
    if lib is None or a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype.char not in "fd":
        return _scaled(_numpy_matmul(a, b, out), alpha)
    if a.ndim == 2 and b.ndim == 2:
        return _matmul_2d(lib, a, b, out, alpha)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = a.shape[:-2]
    if b.shape[:-2] != batch:
        try:
            batch = np.broadcast_shapes(batch, b.shape[:-2])
        except ValueError:
            return _numpy_matmul(a, b, out)  # numpy's error
    count = 1
    for d in batch:
        count *= d
    shape = (*batch, m, n)
    if (
        b.shape[-2] != k
        or m * n * k * count < _MIN_WORK
        or max(m, n, k, count) > _INT_MAX
        or (out is not None and (out.shape != shape or out.dtype != a.dtype))
    ):
        return _scaled(_numpy_matmul(a, b, out), alpha)
    rows = _fold(a, (1, count * m, k)) if b.ndim == 2 and count > 1 else None
    if rows is not None:
        # (..., m, k) @ (k, n) with a's rows one stride apart: one GEMM over all count*m rows
        a3, b3, m, count = rows, b[None], count * m, 1
    else:
        a3 = _fold(a if a.shape[:-2] == batch else np.broadcast_to(a, (*batch, m, k)), (count, m, k))
        b3 = _fold(b if b.shape[:-2] == batch else np.broadcast_to(b, (*batch, k, n)), (count, k, n))
        if (a3 is None or b3 is None) and _COPY_STRIDED:
            if a3 is None and a.shape[:-2] == batch:
                a3 = _batch_copy(a, (count, m, k))
            if b3 is None and b.shape[:-2] == batch:
                b3 = _batch_copy(b, (count, k, n))
        if a3 is None or b3 is None:
            # no single batch stride (attention's heads of a (B, T, 3, H, hs) tensor): one grouped call
            return _matmul_pointers(lib, a, b, out, batch, m, n, k, alpha)
    c3 = None if out is None else _result(out, (count, m, n), a, b)
    direct = c3 is not None
    if c3 is None:
        c3 = np.empty((count, m, n), a.dtype)
    ta, lda, sa, a3 = _operand(a3)
    tb, ldb, sb, b3 = _operand(b3)
    ldc = c3.strides[1] // c3.itemsize if m > 1 else n
    sc = c3.strides[0] // c3.itemsize if count > 1 else 0
    pa, pb, pc = a3.ctypes.data, b3.ctypes.data, c3.ctypes.data
    if a.dtype.char == "f":
        gemm, gemm_batch = lib.sgemm, lib.sgemm_batch
    else:
        gemm, gemm_batch = lib.dgemm, lib.dgemm_batch
    if count == 1:
        gemm(_ROW_MAJOR, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, 0.0, pc, ldc)
    else:
        gemm_batch(_ROW_MAJOR, ta, tb, m, n, k, alpha, pa, lda, sa, pb, ldb, sb, 0.0, pc, ldc, sc, count)
    if direct:
        return out
    if out is None:
        return c3.reshape(shape)
    np.copyto(out, c3.reshape(shape))
    return out


def _matmul_2d(
    lib: _MKL, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, alpha: float = 1.0
) -> np.ndarray:
    """:func:`matmul` of two matrices: the same rules, fewer Python steps (the common case)."""
    (m, k), (k2, n) = a.shape, b.shape
    item = a.itemsize
    if k2 != k or m * n * k < _MIN_WORK or max(m, n, k) > _INT_MAX:
        return _scaled(np.matmul(a, b, out=out), alpha)
    if out is not None and (out.shape != (m, n) or out.dtype != a.dtype):
        return _scaled(np.matmul(a, b, out=out), alpha)  # numpy's error, or its casting
    fa = _layout(m, k, *a.strides, item) if a.flags.aligned else None
    if fa is None:
        a = np.ascontiguousarray(a)
        fa = (_NO_TRANS, k)
    fb = _layout(k, n, *b.strides, item) if b.flags.aligned else None
    if fb is None:
        b = np.ascontiguousarray(b)
        fb = (_NO_TRANS, n)
    c, ldc = _result_buffer(out, a, b, (m, n), item)
    gemm = lib.sgemm if a.dtype.char == "f" else lib.dgemm
    gemm(
        _ROW_MAJOR,
        fa[0],
        fb[0],
        m,
        n,
        k,
        alpha,
        a.ctypes.data,
        fa[1],
        b.ctypes.data,
        fb[1],
        0.0,
        c.ctypes.data,
        ldc,
    )
    if out is None or c is out:
        return c
    np.copyto(out, c)
    return out


def _pointers(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """The address of each matrix of ``x`` broadcast to ``batch``, in C order (uint64 array)."""
    strides = np.broadcast_to(x, (*batch, *x.shape[-2:])).strides[: len(batch)]
    offsets = np.zeros(1, np.int64)
    for size, stride in zip(batch, strides, strict=True):
        offsets = (offsets[:, None] + np.arange(size, dtype=np.int64) * stride).ravel()
    return (offsets + x.ctypes.data).astype(np.uint64)


def _matmul_pointers(
    lib: _MKL,
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray | None,
    batch: tuple[int, ...],
    m: int,
    n: int,
    k: int,
    alpha: float = 1.0,
) -> np.ndarray:
    """A batch whose matrices no single stride reaches: one ``cblas_?gemm_batch`` over their addresses."""
    item = a.itemsize
    fa = _layout(m, k, *a.strides[-2:], item) if a.flags.aligned and min(a.strides) >= 0 else None
    if fa is None:
        a = np.ascontiguousarray(a)
        fa = (_NO_TRANS, k)
    fb = _layout(k, n, *b.strides[-2:], item) if b.flags.aligned and min(b.strides) >= 0 else None
    if fb is None:
        b = np.ascontiguousarray(b)
        fb = (_NO_TRANS, n)
    shape = (*batch, m, n)
    c, ldc = _result_buffer(out, a, b, shape, item)
    pa, pb, pc = _pointers(a, batch), _pointers(b, batch), _pointers(c, batch)
    ints = np.array([fa[0], fb[0], m, n, k, fa[1], fb[1], ldc, len(pc)], np.int32)
    ones = np.array([alpha, 0.0], a.dtype)  # alpha, beta
    at = ints.ctypes.data
    grouped = lib.sgemm_grouped if a.dtype.char == "f" else lib.dgemm_grouped
    i4, f = 4, ones.ctypes.data
    grouped(
        _ROW_MAJOR, at, at + i4, at + 2 * i4, at + 3 * i4, at + 4 * i4, f, pa.ctypes.data, at + 5 * i4,
        pb.ctypes.data, at + 6 * i4, f + item, pc.ctypes.data, at + 7 * i4, 1, at + 8 * i4,
    )  # fmt: skip
    if out is None or c is out:
        return c
    np.copyto(out, c)
    return out


def _scaled(product: np.ndarray, alpha: float) -> np.ndarray:
    """``product * alpha`` in place (the numpy paths of :func:`matmul`); ``product`` itself for 1."""
    if alpha != 1.0:
        np.multiply(product, product.dtype.type(alpha), out=product)
    return product


def _result_buffer(
    out: np.ndarray | None, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...], item: int
) -> tuple[np.ndarray, int]:
    """Where MKL writes ``shape`` (``(..., m, n)``) and its leading dimension: ``out`` itself when its
    matrices are row-major, writable and overlap neither operand, else a new array (copied by the caller)."""
    m, n = shape[-2:]
    if out is not None and out.flags.writeable and out.flags.aligned and min(out.strides, default=0) >= 0:
        fc = _layout(m, n, *out.strides[-2:], item)
        if (
            fc is not None
            and fc[0] == _NO_TRANS
            and not np.may_share_memory(out, a)
            and not np.may_share_memory(out, b)
        ):
            return out, fc[1]
    return np.empty(shape, a.dtype), n


_env = os.environ.get("ASG_BLAS", "").strip().lower()
_prepare_openmp()


threads.on_thread_count_change(set_num_threads)
