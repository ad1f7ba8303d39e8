"""The cases of each op family, one module per family of :mod:`asg.core.ops`; importing this package
adds them all to :data:`asg.core.testing.OP_CASES`."""

from . import (  # noqa: F401 - each module adds its family's cases
    activation,
    attention,
    convolution,
    elementwise,
    linalg,
    normalization,
    optim,
    random,
    reduction,
    shape,
)
