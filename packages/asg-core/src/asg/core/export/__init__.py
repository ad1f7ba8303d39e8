"""Export: ONNX models, and inference-only function bundles.

- :func:`to_onnx` writes a compiled inference function as an ONNX model (needs ``pip install
  asg-core[onnx]``; the ``onnx`` package is imported only when it is called). :data:`ONNX_MAPPING`
  lists every asg op that maps and the ONNX ops it becomes.
- :func:`inference_function` / :func:`save_inference` keep only the forward graph (dropout removed,
  no updates, no optimizer state) and write it as a bundle that :func:`asg.core.load` reads.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg.core import export
    >>> x = ag.input("x", ("B", 3))
    >>> f = ag.compile(ag.softmax(x * 2.0))
    >>> model = export.to_onnx(f)
    >>> [n.op_type for n in model.graph.node]
    ['Mul', 'Softmax', 'Identity']
"""

from .inference import inference_function, remove_dropout, save_inference
from .onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    NOT_EXPORTED,
    ONNX_MAPPING,
    ONNX_OPS,
    ExportError,
    to_onnx,
)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "NOT_EXPORTED",
    "ONNX_MAPPING",
    "ONNX_OPS",
    "ExportError",
    "inference_function",
    "remove_dropout",
    "save_inference",
    "to_onnx",
]
