"""GPU storage of parameters and state: each Variable's value lives in one pooled buffer.

Plans bind these buffers directly and write updates into them on the GPU; the host copy
(``var._value``) is refreshed only when someone reads it (``Tensor.numpy()``, ``Variable.value``).
"""

from __future__ import annotations

from typing import Any

from asg.core.graph import Variable
from asg.core.storage import Storage

from .codegen import from_gpu, nbytes, to_gpu


class WgpuStorage(Storage):
    """Variables living in GPU buffers of one device (see :class:`asg.core.storage.Storage`)."""

    def __init__(self, device: Any, pool: Any) -> None:
        self.device = device
        self.pool = pool
        self._records: dict[int, list[Any]] = {}  # id(var) -> [var, buffer, nbytes, device copy newer]

    def buffer(self, var: Variable) -> Any:
        """The buffer holding ``var`` (it must have been uploaded)."""
        return self._records[id(var)][1]

    def mark_written(self, var: Variable) -> None:
        """A plan wrote ``var``'s buffer: the host copy is stale."""
        self._records[id(var)][3] = True

    def upload(self, var: Variable) -> None:
        """Copy ``var``'s host value into a new pooled buffer (int64 state narrowed by ``to_device``)."""
        value = var._value
        if value is None:
            raise ValueError(f"parameter {var.name!r} has no value to upload to the GPU")
        value = self.to_device(var)  # an int64 counter narrowed to int32 (asg.core.storage.store_as)
        size = nbytes(value.shape, value.dtype.name)
        buf = self.pool.acquire(size)
        self.device.write(buf, to_gpu(value, value.dtype.name))
        self._records[id(var)] = [var, buf, size, False]

    def sync_to_host(self, var: Variable) -> None:
        """Read ``var`` back into its host array when a plan wrote the buffer since (else nothing)."""
        rec = self._records.get(id(var))
        if rec is None or not rec[3]:
            return
        value = var._value
        data = self.device.read(rec[1], rec[2])
        self.to_host(var, from_gpu(data, value.shape, self.stored_dtype(var)))
        rec[3] = False

    def write(self, var: Variable) -> None:
        """Write ``var``'s host value (after ``assign``) to its buffer, a new one if its size changed."""
        rec = self._records.get(id(var))
        value = self.to_device(var)
        size = nbytes(value.shape, value.dtype.name)
        if rec is None or rec[2] != size:
            if rec is not None:
                self.pool.release(rec[1])
            self.upload(var)
            return
        self.device.write(rec[1], to_gpu(value, value.dtype.name))
        rec[3] = False

    def release(self, var: Variable) -> None:
        """Give ``var``'s buffer back to the pool (the caller reads it back first: :meth:`sync_to_host`)."""
        rec = self._records.pop(id(var), None)
        if rec is not None:
            self.pool.release(rec[1])

    def __len__(self) -> int:
        return len(self._records)
