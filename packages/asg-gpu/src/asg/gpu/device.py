"""The GPU device: adapter choice, features, limits, pipeline and layout caches, uploads and readback.

One :class:`GpuDevice` per process (:func:`get_device`). The adapter is chosen by the ``adapter``
argument or the ``ASG_WGPU_ADAPTER`` environment variable (a case-insensitive substring of the
adapter's summary, e.g. ``"llvmpipe"`` or ``"NVIDIA"``), else wgpu's high-performance choice. An
OpenGL adapter is refused unless named explicitly: it lacks f16 and subgroups, and on a machine
without Vulkan it is what wgpu silently falls back to. ``NAME#K`` picks the K-th (from 0) of
:func:`adapter_candidates` ``(NAME)``: two identical GPUs have the same summary, so one process per GPU
(a data-parallel rank) picks its own by index, e.g. ``ASG_WGPU_ADAPTER=NVIDIA#1`` or ``#1``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

OPTIONAL_FEATURES = (
    "shader-f16",
    "timestamp-query",
    "timestamp-query-inside-passes",
    "subgroup",
    "immediates",
)
STORAGE = 0x0080  # wgpu.BufferUsage values (kept numeric so this module imports without wgpu)
COPY_SRC = 0x0004
COPY_DST = 0x0008
MAP_READ = 0x0001
STAGING_CHUNK = 16 << 20  # readback goes through one reused MAP_READ buffer in chunks of this size


class NoAdapterError(RuntimeError):
    """No usable WebGPU adapter (install a Vulkan driver: ``apt-get install mesa-vulkan-drivers``)."""


def _wgpu() -> Any:
    try:
        import wgpu
    except ImportError as err:  # pragma: no cover - wgpu is a dependency of asg-gpu
        raise NoAdapterError(
            f"the wgpu package cannot be imported ({err}); pip install 'wgpu>=0.32,<0.33'"
        ) from err
    return wgpu


def list_adapters() -> list[str]:
    """Summaries of the adapters wgpu can see (``"llvmpipe (...) (CPU) via Vulkan"``, ...).

    >>> isinstance(list_adapters(), list)
    True
    """
    try:
        return [a.summary for a in _wgpu().gpu.enumerate_adapters_sync()]
    except Exception:
        return []


def _candidates(adapters: list[Any], pattern: str) -> list[Any]:
    if pattern:  # the adapters whose summary contains it; OpenGL ones only when no other matches
        matches = [a for a in adapters if pattern.lower() in a.summary.lower()]
        return [a for a in matches if a.info.get("backend_type") != "OpenGL"] or matches
    usable = [a for a in adapters if a.info.get("backend_type") != "OpenGL"]
    return sorted(usable, key=lambda a: a.info.get("adapter_type") == "CPU")  # GPUs first


def adapter_candidates(name: str | None = None) -> list[str]:
    """Summaries of the adapters ``NAME#K`` indexes, in order (``name``: NAME; empty: all but OpenGL, GPUs first).

    >>> n = len(adapter_candidates())  # local rank r of a data-parallel job takes f"#{r % n}"
    """
    return [a.summary for a in _candidates(list(_wgpu().gpu.enumerate_adapters_sync()), name or "")]


def _choose_adapter(name: str | None) -> Any:
    wgpu = _wgpu()
    adapters = list(wgpu.gpu.enumerate_adapters_sync())
    pattern, by_index, index = (name or "").partition("#")
    if by_index:
        found = _candidates(adapters, pattern)
        if not index.isdigit() or int(index) >= len(found):
            raise NoAdapterError(
                f"adapter {name!r} (from the adapter argument or ASG_WGPU_ADAPTER): #K must be 0 to "
                f"{len(found) - 1} of the adapters {[a.summary for a in found]}"
            )
        return found[int(index)]
    if name:
        matches = _candidates(adapters, name)
        if not matches:
            raise NoAdapterError(
                f"no WebGPU adapter matches {name!r} (from the adapter argument or ASG_WGPU_ADAPTER); "
                f"adapters found: {[a.summary for a in adapters] or 'none'}"
            )
        return matches[0]
    usable = [a for a in adapters if a.info.get("backend_type") != "OpenGL"]
    if not usable:
        raise NoAdapterError(
            "no WebGPU adapter (Vulkan, Metal or DX12) found"
            + (f"; only OpenGL ones: {[a.summary for a in adapters]}" if adapters else "")
            + ". On Linux without a GPU install Mesa's lavapipe: apt-get install -y mesa-vulkan-drivers "
            "(name an OpenGL adapter in ASG_WGPU_ADAPTER to use it anyway)"
        )
    try:
        preferred = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if preferred is not None and preferred.info.get("backend_type") != "OpenGL":
            return preferred
    except Exception:
        pass
    return usable[0]


class GpuDevice:
    """A wgpu device with the caches a plan needs.

    Attributes:
        adapter, device, queue: the wgpu objects.
        summary: the adapter's summary string.
        features: the optional features that were requested (``OPTIONAL_FEATURES`` the adapter has).
        limits: the device's limits (wgpu-py fills them with the adapter's values).
    """

    def __init__(self, adapter: str | None = None) -> None:
        self.adapter = _choose_adapter(adapter if adapter is not None else os.environ.get("ASG_WGPU_ADAPTER"))
        self.summary: str = self.adapter.summary
        self.features = frozenset(f for f in OPTIONAL_FEATURES if f in self.adapter.features)
        self.device = self.adapter.request_device_sync(required_features=sorted(self.features))
        self.queue = self.device.queue
        self.limits: dict[str, int] = dict(self.device.limits)
        self.max_binding = int(self.limits["max-storage-buffer-binding-size"])
        self.max_bindings = int(self.limits["max-storage-buffers-per-shader-stage"])
        self._pipelines: dict[str, Any] = {}
        self._layouts: dict[int, tuple[Any, Any]] = {}
        self._staging: Any = None
        self.lock = threading.RLock()
        self.pipelines_created = 0

    def __repr__(self) -> str:
        return f"GpuDevice({self.summary!r}, features={sorted(self.features)})"

    # ------------------------------------------------------------------ pipelines
    def layout(self, nbindings: int) -> tuple[Any, Any]:
        """(bind group layout, pipeline layout) with ``nbindings`` read-write storage buffers.

        Every binding is ``read_write``: a dispatch may bind one buffer twice (in place, or an input
        repeated), which WebGPU allows only between read-write bindings.
        """
        found = self._layouts.get(nbindings)
        if found is None:
            wgpu = _wgpu()
            entries = [
                {
                    "binding": i,
                    "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": wgpu.BufferBindingType.storage},
                }
                for i in range(nbindings)
            ]
            bgl = self.device.create_bind_group_layout(entries=entries)
            found = self._layouts[nbindings] = (
                bgl,
                self.device.create_pipeline_layout(bind_group_layouts=[bgl]),
            )
        return found

    def pipeline(self, wgsl: str, nbindings: int) -> Any:
        """The compute pipeline of ``wgsl`` (entry point ``main``), created once per process per text."""
        found = self._pipelines.get(wgsl)
        if found is None:
            _, layout = self.layout(nbindings)
            code = "enable f16;\n" + wgsl if "f16" in wgsl and not wgsl.startswith("enable f16;") else wgsl
            try:
                module = self.device.create_shader_module(code=code)
                found = self.device.create_compute_pipeline(
                    layout=layout, compute={"module": module, "entry_point": "main"}
                )
            except Exception as err:
                numbered = "\n".join(f"{i + 1:4d}  {line}" for i, line in enumerate(wgsl.splitlines()))
                raise RuntimeError(f"WGSL kernel failed to compile: {err}\n{numbered}") from err
            self._pipelines[wgsl] = found
            self.pipelines_created += 1
        return found

    def bind_group(self, nbindings: int, buffers: Sequence[tuple[Any, int, int]]) -> Any:
        """A bind group of (buffer, offset, size) windows for a layout of ``nbindings``."""
        bgl, _ = self.layout(nbindings)
        entries = [
            {"binding": i, "resource": {"buffer": b, "offset": off, "size": size}}
            for i, (b, off, size) in enumerate(buffers)
        ]
        return self.device.create_bind_group(layout=bgl, entries=entries)

    # ------------------------------------------------------------------ memory
    def create_buffer(self, nbytes: int) -> Any:
        """A new storage buffer of ``nbytes`` rounded up to 16 (at least 16), copyable both ways."""
        wgpu = _wgpu()
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        return self.device.create_buffer(size=max(16, _align(nbytes, 16)), usage=usage)

    def write(self, buffer: Any, data: np.ndarray, offset: int = 0) -> None:
        """Stage ``data`` for ``buffer`` (it lands at the next submit)."""
        data = np.ascontiguousarray(data)
        if data.nbytes:
            if data.nbytes % 4:
                data = np.frombuffer(data.tobytes() + b"\0" * (4 - data.nbytes % 4), np.uint8)
            self.queue.write_buffer(buffer, offset, data)

    def staging(self, nbytes: int) -> Any:
        """The reused MAP_READ staging buffer, at least ``min(nbytes, STAGING_CHUNK)`` bytes."""
        want = _align(max(256, min(nbytes, STAGING_CHUNK)), 256)
        if self._staging is None or self._staging.size < want:
            if self._staging is not None:
                self._staging.destroy()
            wgpu = _wgpu()
            size = max(want, 1 << 16)
            self._staging = self.device.create_buffer(
                size=size, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST
            )
        return self._staging

    def read(self, buffer: Any, nbytes: int, offset: int = 0) -> bytes:
        """``nbytes`` of ``buffer`` from ``offset``, copied through the staging buffer in chunks."""
        return self.read_many([(buffer, offset, nbytes)])[0]

    def read_many(self, windows: Sequence[tuple[Any, int, int]], encoder: Any = None) -> list[bytes]:
        """Read several (buffer, offset, nbytes) windows through the staging buffer.

        Windows are cut into pieces of at most ``STAGING_CHUNK`` bytes; pieces that fit together share
        one copy, one submit and one map. With ``encoder`` (not yet finished), the first batch's
        copies are recorded into it, so a step and the readback of its outputs are one submission.
        """
        pieces: list[tuple[int, Any, int, int]] = []
        for i, (buf, off, n) in enumerate(windows):
            while n > STAGING_CHUNK:
                pieces.append((i, buf, off, STAGING_CHUNK))
                off, n = off + STAGING_CHUNK, n - STAGING_CHUNK
            if n:
                pieces.append((i, buf, off, n))
        parts: list[list[bytes]] = [[] for _ in windows]
        with self.lock:
            staging = self.staging(sum(_align(p[3], 256) for p in pieces))
            batches: list[list[tuple[int, Any, int, int]]] = []
            used = staging.size
            for p in pieces:
                if used + _align(p[3], 256) > staging.size:
                    batches.append([])
                    used = 0
                batches[-1].append(p)
                used += _align(p[3], 256)
            if not batches and encoder is not None:
                self.queue.submit([encoder.finish()])
            for batch in batches:
                enc = encoder if encoder is not None else self.device.create_command_encoder()
                encoder = None
                at, placed = 0, []
                for i, buf, off, n in batch:
                    enc.copy_buffer_to_buffer(buf, off, staging, at, _align(n, 4))
                    placed.append((i, at, n))
                    at += _align(n, 256)
                self.queue.submit([enc.finish()])
                size = _align(at, 4)
                staging.map_sync(_wgpu().MapMode.READ, 0, size)
                try:
                    view = staging.read_mapped(0, size, copy=False)
                    for i, start, n in placed:
                        parts[i].append(bytes(view[start : start + n]))
                finally:
                    staging.unmap()
        return [b"".join(p) for p in parts]

    def wait(self) -> None:
        """Block until the queue is idle (``on_submitted_work_done_sync`` is broken in wgpu 0.32)."""
        self.device._poll_wait()


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


_DEVICE: GpuDevice | None = None
_DEVICE_LOCK = threading.Lock()


def get_device(adapter: str | None = None) -> GpuDevice:
    """The process's :class:`GpuDevice`, created on first use (``adapter``: a summary substring).

    Asking for another adapter than the one in use is an error: one device per process.

    >>> dev = get_device()  # doctest: +SKIP
    >>> dev.summary  # doctest: +SKIP
    'llvmpipe (LLVM 15.0.6, 256 bits) (CPU) via Vulkan'
    """
    global _DEVICE
    with _DEVICE_LOCK:
        if _DEVICE is None:
            _DEVICE = GpuDevice(adapter)
        elif adapter and adapter.partition("#")[0].lower() not in _DEVICE.summary.lower():
            raise ValueError(
                f"the wgpu device of this process is {_DEVICE.summary!r}; it cannot switch to {adapter!r} "
                "(set ASG_WGPU_ADAPTER before the first GPU call)"
            )
        return _DEVICE


def adapter_available() -> bool:
    """True when :func:`get_device` can make a device (used by tests to skip)."""
    try:
        get_device()
    except NoAdapterError:
        return False
    return True
