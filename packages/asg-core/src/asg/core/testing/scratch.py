"""Throwaway ops for tests, removed from the registry afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..registry import OPS


@contextmanager
def scratch_ops() -> Iterator[None]:
    """Ops defined inside the block are removed at its end; the kernels, lowerings and traits of the
    other ops are restored. Use it for every op a test defines only to exercise the machinery; import
    packages that define ops of their own (asg-nn) before entering it, or their ops would go too.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> with scratch_ops():
        ...     _ = ag.define_op("doc_scratch_double", infer=lambda t: t, kernel=lambda a: 2 * a)
        ...     float(ag.compile(ag.apply("doc_scratch_double", ag.input("x", ())))(np.float32(3)))
        6.0
        >>> "doc_scratch_double" in ag.OPS
        False
    """
    before = dict(OPS)
    kernels = {name: dict(op.kernels) for name, op in before.items()}
    traits = {name: op.traits for name, op in before.items()}
    lowerings = {name: dict(getattr(op, "lowerings", {})) for name, op in before.items()}
    try:
        yield
    finally:
        for name in [n for n in OPS if n not in before]:
            del OPS[name]
        for name, op in before.items():
            OPS[name] = op
            op.kernels.clear()
            op.kernels.update(kernels[name])
            op.traits = traits[name]
            if hasattr(op, "lowerings"):
                op.lowerings.clear()
                op.lowerings.update(lowerings[name])
