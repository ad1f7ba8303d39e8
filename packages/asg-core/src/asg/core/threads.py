"""How many threads ASG's CPU kernels use: numba's fused kernels and the BLAS under numpy.

The default is the number of cores this process may run on (``os.sched_getaffinity``), or
``ASG_NUM_THREADS`` when it is set; :func:`set_num_threads` changes it at run time. It applies to:

- the ``"numpy-jit"`` backend's numba kernels (``numba.set_num_threads``);
- numpy's BLAS (OpenBLAS, MKL ...), through ``threadpoolctl`` when it is installed, once
  ``ASG_NUM_THREADS`` or :func:`set_num_threads` asked for a number (otherwise the BLAS keeps its own
  default);
- oneMKL, when :mod:`asg.core.blas` does the GEMMs on it (numpy's OpenBLAS then keeps 1 thread).

Sharing the process with another threaded library (PyTorch, a second BLAS) on few cores: idle
OpenMP and OpenBLAS threads busy-wait for a while after each parallel region and take cores from the
other library's threads. Tell them to sleep instead, in the environment before the process starts::

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_THREAD_TIMEOUT=1 python train.py

(``"numpy-jit"`` sets ``OMP_WAIT_POLICY=PASSIVE`` itself, unless it is set, before numba starts its
OpenMP threads: within ASG's own process its kernels alternate with OpenBLAS's threads. numba uses
its OpenMP layer where libgomp is present, else its ``workqueue`` layer, which does not spin.) Or give each library
fewer threads than cores: ``asg.core.set_num_threads(1)`` next to ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["default_num_threads", "get_num_threads", "set_num_threads"]

log = logging.getLogger("asg.core.threads")
_requested: int | None = None  # set_num_threads' value
# Called with the new count by set_num_threads; asg.core.blas adds MKL's setter when it is imported, so
# this module (below blas) does not import it.
_thread_count_listeners: list[Callable[[int], None]] = []


def on_thread_count_change(listener: Callable[[int], None]) -> None:
    """Call ``listener(n)`` whenever the BLAS thread count is set (by :func:`set_num_threads` or
    ``ASG_NUM_THREADS``); a library with its own thread pool (:mod:`asg.core.blas`'s MKL) follows it."""
    _thread_count_listeners.append(listener)


_numba = threading.local()  # numba's thread count is per calling thread: the value given to this one
_blas_from_env = False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _env_threads() -> int | None:
    value = os.environ.get("ASG_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"ASG_NUM_THREADS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"ASG_NUM_THREADS must be a positive integer, got {value!r}")
    return n


def default_num_threads() -> int:
    """``ASG_NUM_THREADS`` when set, else the cores this process may run on.

    >>> default_num_threads() >= 1
    True
    """
    return _env_threads() or _cores()


def get_num_threads() -> int:
    """The thread count ASG's kernels use now (see :func:`set_num_threads`).

    >>> import asg.core as ag
    >>> ag.get_num_threads() >= 1
    True
    """
    return _requested or default_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in numba's kernels and in numpy's BLAS from now on.

    Args:
        n: a positive int; numba caps it at the ``NUMBA_NUM_THREADS`` it started with (the cores).

    Example:
        >>> import asg.core as ag
        >>> before = ag.get_num_threads()
        >>> ag.set_num_threads(1)
        >>> ag.get_num_threads()
        1
        >>> ag.set_num_threads(before)
    """
    global _requested
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _requested = n
    _set_blas(n)
    if "numba" in sys.modules:
        apply_num_threads()


def _set_blas(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: the BLAS keeps its own thread count")
    else:
        threadpool_limits(limits=n, user_api="blas")
    for listener in _thread_count_listeners:  # MKL, when asg.core.blas does the GEMMs on it
        listener(n)


def apply_num_threads() -> int:
    """Give numba the current thread count in the calling thread (numba keeps one per thread); returns it.

    The ``"numpy-jit"`` plans call it before each step, so a step run from any thread uses the count.
    """
    global _blas_from_env
    n = get_num_threads()
    if getattr(_numba, "count", None) == n:
        return n
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    _numba.count = n
    if not _blas_from_env and _requested is None and _env_threads() is not None:
        _blas_from_env = True
        _set_blas(n)
    return n
