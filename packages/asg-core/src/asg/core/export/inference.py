"""Inference-only functions and bundles: the forward graph alone, without dropout, updates or state.

:func:`inference_function` takes a compiled inference function and returns one over the forward graph
only: dropout masks removed (:func:`remove_dropout`), and refused if anything an inference graph must
not hold remains (updates, gradient nodes, random ops, batch_norm's batch statistics).
:func:`save_inference` writes it as an ordinary function bundle, which :func:`asg.core.load` reads with
asg-core alone, without the code that built the model.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..function import Function
from ..graph import Graph, Node
from ..passes.rewrite import rewrite
from .onnx_export import check_inference_graph, refuse_updates, resolve_function


def _dropout_input(node: Node) -> Node | None:
    """``x`` when ``node`` is ``(x * bernoulli(key, keep)) * (1 / keep)``, dropout's form in the graph."""
    if node.op != "mul":
        return None
    for scaled, scale in (node.inputs, node.inputs[::-1]):
        if scale.op != "constant" or scale.ndim != 0 or scaled.op != "mul":
            continue
        for x, mask in (scaled.inputs, scaled.inputs[::-1]):
            if mask.op != "bernoulli" or mask.dtype != node.dtype:
                continue
            keep = float(mask.attrs["p"])
            if (
                keep > 0.0
                and np.isclose(float(scale.data), 1.0 / keep, rtol=1e-6)
                and x.shape == node.shape
                and x.dtype == node.dtype
            ):
                return x
    return None


def remove_dropout(graph: Graph) -> Graph:
    """The graph with every dropout ``(x * bernoulli(key, 1 - p)) * (1 / (1 - p))`` replaced by ``x``.

    That is how :func:`asg.core.dropout` (and asg-nn's ``Dropout``, ``Dropout2d`` and attention
    dropout) appear in a graph; the masks, their keys and the RNG counters they read disappear with
    them. Other random ops are left for the caller to refuse. Returns ``graph`` itself if it holds no
    dropout.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> x, key = ag.input("x", ("B", 4)), ag.input("key", (), "int64")
        >>> g = ag.Graph([ag.dropout(x, 0.5, key).relu().node])
        >>> sorted(remove_dropout(g).op_counts())
        ['input', 'relu']
    """
    return rewrite(graph, _dropout_input, what="remove_dropout")


def inference_function(
    function: Function | Graph | Any, *, backend: str | None = None, allow_batch_statistics: bool = False
) -> Function:
    """The forward graph of an inference function alone: dropout removed, nothing updated, no state.

    Refuses a training step (a function with updates), gradient nodes, random ops other than dropout
    and batch_norm in training mode (``mean`` over the batch axis per channel), naming the node and how
    to build the function instead (asg-nn: ``model.eval()`` / ``nn.compile_inference(model)``).

    Args:
        function: a compiled :class:`~asg.core.Function` without updates, a :class:`~asg.core.Graph`
            (all its outputs), or an object holding one in ``.function`` (asg-nn's ``compile_inference``).
        backend: run the result there (default: the function's backend, numpy for a Graph).
        allow_batch_statistics: accept ``mean`` over the batch axis per channel.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 4))
        >>> w = ag.parameter(np.ones((4, 4), "float32"), name="fc.weight")
        >>> h = ag.dropout(ag.linear(x, w), 0.5, ag.RNG(0).next_key())
        >>> f = inference_function(ag.compile(h))
        >>> f(np.ones((2, 4), "float32")).tolist()  # no element dropped
        [[4.0, 4.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]]
        >>> [p.name for p in f.graph.parameters]  # the dropout RNG's counter is gone
        ['fc.weight']
    """
    target = resolve_function(function, "inference_function")
    if isinstance(target, Graph):
        graph, num_outputs, updates = target, len(target.outputs), []
        single, options, where = len(target.outputs) == 1, None, backend or "numpy"
    else:
        graph, num_outputs, updates = target.graph, target.num_outputs, target.updates
        single, options, where = target.single, dict(target.options), backend or target.backend_name
    refuse_updates(updates, "inference_function")
    graph = remove_dropout(graph)
    check_inference_graph(graph, [], "inference_function", allow_batch_statistics)
    return Function.from_graph(graph, num_outputs, [], where, options, single=single)


def save_inference(
    function: Function | Graph | Any,
    path: str | os.PathLike[str],
    *,
    allow_batch_statistics: bool = False,
) -> Function:
    """Write the inference-only bundle of ``function`` (see :func:`inference_function`) to ``path``.

    The bundle is an ordinary function bundle (:meth:`asg.core.Function.save`): graph JSON plus the
    parameters as safetensors, holding the forward graph only. :func:`asg.core.load` reads it with
    asg-core alone. Returns the inference function that was saved.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 2))
        >>> w = ag.parameter(np.eye(2, dtype="float32"), name="fc.weight")
        >>> path = os.path.join(tempfile.mkdtemp(), "model.asg")
        >>> _ = save_inference(ag.compile(ag.linear(x, w) * 3.0), path)
        >>> ag.load(path)(np.ones((1, 2), "float32")).tolist()
        [[3.0, 3.0]]
    """
    inference = inference_function(function, allow_batch_statistics=allow_batch_statistics)
    inference.save(path)
    return inference
