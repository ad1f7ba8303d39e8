"""A size-class buffer pool: plans take their buffers from it and give them back when dropped.

Sizes are rounded up to a class (four classes per power of two, so at most 25% is wasted); a
released buffer waits on its class's free list for the next plan. :meth:`BufferPool.trim` destroys
the free ones explicitly: wgpu frees dropped buffers only at garbage collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def size_class(nbytes: int) -> int:
    """The pooled size for a request of ``nbytes`` (at least 256, a multiple of 256).

    >>> size_class(1), size_class(1000), size_class(5000), size_class(1 << 20)
    (256, 1024, 5120, 1048576)
    """
    n = max(256, (nbytes + 255) // 256 * 256)
    if n <= 4096:
        return n
    step = 1 << (n.bit_length() - 3)  # a quarter of the power of two below n
    return (n + step - 1) // step * step


@dataclass
class PoolStats:
    """Bytes and buffers held by the pool: ``in_use`` by plans and storage, ``free`` waiting for reuse."""

    in_use_bytes: int
    free_bytes: int
    in_use_buffers: int
    free_buffers: int
    created: int

    @property
    def total_bytes(self) -> int:
        return self.in_use_bytes + self.free_bytes


class BufferPool:
    """Buffers of a :class:`~asg.gpu.device.GpuDevice`, reused by size class."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._free: dict[int, list[Any]] = {}
        self._in_use: dict[int, int] = {}  # id(buffer) -> size class
        self.created = 0

    def acquire(self, nbytes: int) -> Any:
        """A buffer of at least ``nbytes`` (STORAGE | COPY_SRC | COPY_DST)."""
        size = size_class(nbytes)
        free = self._free.get(size)
        buf = free.pop() if free else None
        if buf is None:
            buf = self.device.create_buffer(size)
            self.created += 1
        self._in_use[id(buf)] = size
        return buf

    def release(self, buf: Any) -> None:
        """Give ``buf`` back for reuse."""
        size = self._in_use.pop(id(buf), None)
        if size is None:
            raise ValueError("BufferPool.release: this buffer is not in use (released twice?)")
        self._free.setdefault(size, []).append(buf)

    def trim(self) -> int:
        """Destroy every free buffer; return the bytes freed."""
        freed = 0
        for size, bufs in self._free.items():
            for b in bufs:
                b.destroy()
                freed += size
        self._free.clear()
        return freed

    def stats(self) -> PoolStats:
        """Current figures (see :class:`PoolStats`)."""
        return PoolStats(
            in_use_bytes=sum(self._in_use.values()),
            free_bytes=sum(size * len(b) for size, b in self._free.items()),
            in_use_buffers=len(self._in_use),
            free_buffers=sum(len(b) for b in self._free.values()),
            created=self.created,
        )
