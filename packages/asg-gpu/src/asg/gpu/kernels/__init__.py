"""The wgpu lowerings, one module per op family (as asg.core.ops): importing this registers them all.

:data:`IMPLEMENTED` holds the names of the ops that have a wgpu lowering.
"""

from . import (  # noqa: F401  (registration side effects)
    attention,
    convolution,
    elementwise,
    linalg,
    normalization,
    optim,
    pooling,
    random,
    reduction,
    shape,
)
from ._base import IMPLEMENTED, gpu_lowering

__all__ = ["IMPLEMENTED", "gpu_lowering"]
