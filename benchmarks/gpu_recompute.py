"""What recomputing a matmul's left operand as it loads costs: the GPT step's four products that do it.

With the wgpu option ``recompute="all"`` the MLP's ``gelu(h) @ W_out`` and its weight gradient
``gelu(h)^T @ dY`` read h and apply gelu per loaded vec4, and attention's projection and its weight
gradient read attention's (B, h, T, hs) output through an index map instead of a transposed copy
(:func:`asg.gpu.fusion.matmul_operands`). This times each product both ways (GPU time by timestamp
queries, median of ``--repeat`` passes of ``--count`` dispatches) and, for the stored variant, the
dispatch it needs first (the gelu store is part of the fc product's epilogue: its 64 MiB write;
the transpose is a dispatch of its own). On the lent GPU machine::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-nn/src:packages/asg-gpu/src \\
        python3 benchmarks/gpu_recompute.py
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import pass_timer

from asg.gpu.codegen import elementwise_kernel, grid
from asg.gpu.device import get_device
from asg.gpu.fusion import transpose_index
from asg.gpu.kernels.elementwise import emit
from asg.gpu.kernels.linalg import ALoad, matmul_program


def dispatches(dev: Any, a_shape: tuple, b_shape: tuple, a_bytes: int, **options: Any) -> list:
    """(pipeline, bind group, grid) of ``matmul_program(a_shape, b_shape, ...)`` over fresh buffers
    (A's buffer ``a_bytes`` long: the value an A recomputed from is bound whole)."""
    m, out_shape = a_shape[0], (a_shape[0], b_shape[-1])
    prog = matmul_program(a_shape, b_shape, out_shape, "bench", **options)
    values = {
        ("in", 0): dev.create_buffer(a_bytes),
        ("in", 1): dev.create_buffer(4 * int(np.prod(b_shape))),
        ("out", 0): dev.create_buffer(4 * m * b_shape[-1]),
    }
    values.update({("tmp", j): dev.create_buffer(nb) for j, nb in enumerate(prog.temps)})
    return [
        (
            dev.pipeline(d.wgsl, len(d.args)),
            dev.bind_group(len(d.args), [(values[r], 0, values[r].size) for r in d.args]),
            d.grid,
        )
        for d in prog.dispatches
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8192, help="batch x T (T = 256)")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    a = parser.parse_args()
    dev = get_device()
    timed = pass_timer(dev)
    d, bt, hs = a.d, a.tokens, a.d // a.heads
    gelu = emit("gelu", {"approximate": "tanh"}, ["float32"], "float32", [("x", "f32")])
    prologue = ALoad(prologue=f"fn prologue(x: f32) -> f32 {{\n    return {gelu};\n}}")
    moved = ALoad(index=transpose_index((bt // 256, a.heads, 256, hs), (0, 2, 1, 3)))
    h_bytes, y_bytes = 4 * bt * 4 * d, 4 * bt * d
    products = [  # name, A shape, B shape, A bytes, options; a_transposed: A holds (k, m)
        ("gelu(h) @ W_out", (bt, 4 * d), (4 * d, d), h_bytes, {"a_load": prologue}),
        ("gelu(h)^T @ dY", (4 * d, bt), (bt, d), h_bytes, {"a_transposed": True, "a_load": prologue}),
        ("y^T-copy @ W_proj", (bt, d), (d, d), y_bytes, {"a_load": moved}),
        ("y^T-copy^T @ dY", (d, bt), (bt, d), y_bytes, {"a_transposed": True, "a_load": moved}),
    ]
    print(f"{dev.summary}; median GPU ms per product over {a.repeat} passes of {a.count}")
    print(f"{'product':24} {'stored A':>10} {'recomputed':>11} {'change':>8}")
    for name, a_shape, b_shape, nb, options in products:
        ms = []
        for opts in ({k: v for k, v in options.items() if k != "a_load"}, options):
            ds = dispatches(dev, a_shape, b_shape, nb, **opts)
            timed(2, ds)  # pipelines compiled and warm
            ms.append(float(np.median([timed(a.count, ds) for _ in range(a.repeat)])) / a.count * 1e3)
        print(f"{name:24} {ms[0]:10.3f} {ms[1]:11.3f} {100 * (ms[1] / ms[0] - 1):+7.1f}%")
    n = y_bytes // 4  # the stored variant's transposed copy of y, a dispatch before the projection
    wgsl = elementwise_kernel([("src", "float32"), ("out", "float32")], n, ["out[i] = src[i];"])
    bufs = [dev.create_buffer(y_bytes), dev.create_buffer(y_bytes)]
    ds = [(dev.pipeline(wgsl, 2), dev.bind_group(2, [(b, 0, b.size) for b in bufs]), grid(n))]
    timed(2, ds)
    copy = float(np.median([timed(a.count, ds) for _ in range(a.repeat)])) / a.count * 1e3
    print(
        f"the stored variant's {y_bytes / 2**20:.0f} MiB copy of y, per layer (a lower bound of a transpose): {copy:.3f} ms"
    )


if __name__ == "__main__":
    main()
