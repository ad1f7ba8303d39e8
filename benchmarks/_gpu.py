"""What the GPU benchmarks (gpu_attention, gpu_matmul, gpu_gpt_step) share.

Importing it sets ``XDG_RUNTIME_DIR`` (Mesa warns without it) and registers the wgpu backend when
the scripts run from the source tree (PYTHONPATH) without asg-gpu installed. :func:`pass_timer`
times dispatches by timestamp queries; :func:`cuda_torch` is PyTorch on CUDA with TF32 off, the
reference the tables compare against.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))

import numpy as np

from asg.core.backends import available_backends, register_backend
from asg.gpu.backend import WgpuBackend

if "wgpu" not in available_backends():  # run from the source tree (PYTHONPATH), asg-gpu not installed
    register_backend("wgpu", WgpuBackend)

Dispatch = tuple[Any, Any, tuple[int, int, int]]  # (pipeline, bind group, workgroup grid)


def pass_timer(dev: Any) -> Callable[[int, Sequence[Dispatch]], float]:
    """``timed(count, dispatches)``: seconds, by timestamp queries, of one compute pass on the
    :class:`asg.gpu.device.GpuDevice` ``dev`` recording ``dispatches`` ``count`` times over (the
    pipeline and bind group set where they change)."""
    import wgpu

    qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
    qbuf = dev.device.create_buffer(
        size=256, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
    )

    def timed(count: int, dispatches: Sequence[Dispatch]) -> float:
        enc = dev.device.create_command_encoder()
        writes = {"query_set": qs, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1}
        cpass = enc.begin_compute_pass(timestamp_writes=writes)
        bound: tuple[Any, Any] = (None, None)
        for _ in range(count):
            for pipe, bg, grid in dispatches:
                if pipe is not bound[0] or bg is not bound[1]:
                    cpass.set_pipeline(pipe)
                    cpass.set_bind_group(0, bg)
                    bound = (pipe, bg)
                cpass.dispatch_workgroups(*grid)
        cpass.end()
        enc.resolve_query_set(qs, 0, 2, qbuf, 0)
        dev.queue.submit([enc.finish()])
        t = np.frombuffer(dev.read(qbuf, 16), np.uint64)
        return float(int(t[1]) - int(t[0])) * 1e-9

    return timed


def cuda_torch() -> Any | None:
    """The ``torch`` module with TF32 off (fp32 products in fp32, as the wgpu kernels), or None
    without torch or without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch
