"""A size-class buffer pool: plans take their buffers from it and give them back when dropped; :func:`pack`
shares a plan's buffers between values of disjoint lifetimes.

Sizes are rounded up to a class (four classes per power of two, so at most 25% is wasted); a
released buffer waits on its class's free list for the next plan. :meth:`BufferPool.trim` destroys
the free ones explicitly: wgpu frees dropped buffers only at garbage collection.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
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
        """``in_use_bytes + free_bytes``: all the pool holds on the device."""
        return self.in_use_bytes + self.free_bytes


class BufferPool:
    """Buffers of a :class:`~asg.gpu.device.GpuDevice`, reused by size class.

    Free buffers wait for reuse up to ``max_free_bytes`` in all (default 256 MiB); past that the
    oldest are destroyed, so memory a dropped plan held does not stay taken for good. A request
    takes a free buffer of its class, else the smallest free one at most twice its size.
    """

    def __init__(self, device: Any, max_free_bytes: int = 256 << 20) -> None:
        self.device = device
        self.max_free_bytes = max_free_bytes
        self._free: dict[int, list[Any]] = {}
        self._in_use: dict[int, int] = {}  # id(buffer) -> size class
        self._free_bytes = 0
        self._order: list[Any] = []  # free buffers, oldest first
        self.created = 0
        self.destroyed = 0

    def acquire(self, nbytes: int) -> Any:
        """A buffer of at least ``nbytes`` (STORAGE | COPY_SRC | COPY_DST)."""
        size = size_class(nbytes)
        found = size if self._free.get(size) else None
        if found is None:
            larger = [c for c, bufs in self._free.items() if bufs and size < c <= 2 * size]
            found = min(larger) if larger else None
        if found is None:
            buf = self.device.create_buffer(size)
            self.created += 1
            self._in_use[id(buf)] = size
            return buf
        buf = self._free[found].pop()
        self._order.remove(buf)
        self._free_bytes -= found
        self._in_use[id(buf)] = found
        return buf

    def release(self, buf: Any) -> None:
        """Give ``buf`` back for reuse (the oldest free buffers past ``max_free_bytes`` are destroyed)."""
        size = self._in_use.pop(id(buf), None)
        if size is None:
            raise ValueError("BufferPool.release: this buffer is not in use (released twice?)")
        self._free.setdefault(size, []).append(buf)
        self._order.append(buf)
        self._free_bytes += size
        while self._free_bytes > self.max_free_bytes and self._order:
            old = self._order.pop(0)
            old_size = old.size
            for c, bufs in self._free.items():
                if any(b is old for b in bufs):
                    bufs.remove(old)
                    old_size = c
                    break
            old.destroy()
            self._free_bytes -= old_size
            self.destroyed += 1

    def trim(self) -> int:
        """Destroy every free buffer; return the bytes freed."""
        freed = 0
        for size, bufs in self._free.items():
            for b in bufs:
                b.destroy()
                freed += size
                self.destroyed += 1
        self._free.clear()
        self._order.clear()
        self._free_bytes = 0
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


@dataclass(frozen=True)
class Lifetime:
    """A value to place: its bytes and the steps from its first write to its last read (inclusive).

    ``over``: the key of a value whose slot it may take although that value's last read is this
    value's first step (an elementwise kernel written in place over its dying input).
    """

    key: int
    nbytes: int
    first: int
    last: int
    over: int | None = None


def pack(values: Sequence[Lifetime]) -> tuple[dict[int, int], list[int]]:
    """Share buffers between values whose lifetimes do not overlap, whatever their shapes.

    Largest first, each value goes to the slot where it overlaps no value already there and leaves
    the least idle time around it (then the smallest such slot; a slot's size is that of its first,
    largest value), else to a new slot. Two passes, values of one size taken by first step or
    longest lifetime first: the one whose slots take fewer bytes in size classes
    (:func:`size_class`) wins. Returns (key -> slot, slot sizes). Core's buffer table shares a
    buffer only between values of one shape and dtype.

    >>> v = [
    ...     Lifetime(0, 400, 0, 1),
    ...     Lifetime(1, 100, 1, 2),
    ...     Lifetime(2, 300, 2, 3),
    ...     Lifetime(3, 300, 3, 3, over=2),
    ... ]
    >>> pack(v)  # 2 takes 0's slot (0 died before); 3 is written in place over 2
    ({0: 0, 2: 0, 3: 0, 1: 1}, [400, 100])
    """
    passes = [
        _pack_greedy(sorted(values, key=lambda v: (-v.nbytes, v.first))),
        _pack_greedy(sorted(values, key=lambda v: (-v.nbytes, v.first - v.last, v.first))),
    ]
    return min(passes, key=lambda p: sum(size_class(n) for n in p[1]))


def _pack_greedy(values: Sequence[Lifetime]) -> tuple[dict[int, int], list[int]]:
    """:func:`pack`'s placement of ``values`` in their order."""
    slot_of: dict[int, int] = {}
    sizes: list[int] = []
    spans: list[list[tuple[int, int, int]]] = []  # per slot: (first, last, key), disjoint, by first
    never = 1 << 62

    def idle(slot: int, v: Lifetime) -> int | None:
        """Steps the slot would sit unused right before and after ``v``, or None when ``v`` overlaps it."""
        span = spans[slot]
        at = bisect.bisect_left(span, (v.first, -1, -1))
        after = span[at][0] if at < len(span) else never
        if after <= v.last:
            return None
        before = -1
        if at:
            _, before, key = span[at - 1]
            if before >= v.first and not (key == v.over and before == v.first):
                return None
        return (v.first - before) + (after - v.last)

    for v in values:
        best, best_key = None, None
        for s in range(len(sizes)):
            gap = idle(s, v)
            if gap is not None and (best_key is None or (gap, sizes[s]) < best_key):
                best, best_key = s, (gap, sizes[s])
        if best is None:
            best = len(sizes)
            sizes.append(v.nbytes)
            spans.append([])
        bisect.insort(spans[best], (v.first, v.last, v.key))
        slot_of[v.key] = best
    return slot_of, sizes
