"""Decomposition: fused ops replaced by their formulas in simpler ops, for backends that run those faster.

A fused op such as ``attention`` saves memory by never storing its ``(*, L, S)`` scores, and its
gradient ops recompute them. On a GPU that is the point; on the CPU, numpy's fused kernels recompute
the probabilities once per gradient op, which costs more than keeping them. A backend lists such ops
in ``Capabilities.decompose``; before lowering, each of them is replaced by its
:attr:`~asg.core.registry.OpDef.decomposition` and CSE merges what the formulas share (the scores and
the probabilities of the forward op and of its three gradient ops are then computed once).
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import ShapeError
from ..graph import LEAF_OPS, Graph, Node
from ..registry import OPS
from ..tensor import Tensor
from .cse import common_subexpression_elimination as cse
from .dce import dead_code_elimination as dce
from .rewrite import rewrite


def decomposable_ops() -> frozenset[str]:
    """The registered ops that declare a decomposition.

    >>> "attention" in decomposable_ops()
    True
    """
    return frozenset(name for name, op in OPS.items() if op.decomposition is not None)


def decompose(graph: Graph, ops: Collection[str]) -> Graph:
    """``graph`` with every node of ``ops`` replaced by its op's formula, then CSE and DCE.

    Returns ``graph`` itself when it holds none of them. The formula's nodes take the replaced node's
    name and scope, so printouts and profiles still point at the user's code. A node whose formula
    cannot be built for its shapes (attention over zero keys: a max over an empty axis) stays fused.

    >>> import asg.core as ag
    >>> q = ag.input("q", (2, 4, 8))
    >>> g = ag.Graph([ag.attention(q, q, q, causal=True).node])
    >>> ops = decompose(g, {"attention"}).op_counts()
    >>> "attention" in ops, ops["matmul"], ops["exp"]
    (False, 2, 2)
    """
    wanted = {name for name in ops if name not in LEAF_OPS and OPS[name].decomposition is not None}
    if not any(n.op in wanted for n in graph.nodes):
        return graph

    def replace(node: Node) -> Node | None:
        if node.op not in wanted:
            return None
        formula = OPS[node.op].decomposition
        assert formula is not None
        try:
            result = formula(*(Tensor(i) for i in node.inputs), **node.attrs).node
        except ShapeError:
            return None  # an edge the formula cannot express (a reduction over no keys): stay fused
        if result.shape != node.shape or result.dtype != node.dtype:
            raise AssertionError(
                f"decompose: the formula of {node.op} gives {result.type_str()}, the op {node.type_str()}"
            )
        _label_formula(result, node, stop={i.id for i in node.inputs})
        return result

    return dce(cse(rewrite(graph, replace, what="decompose")))


def _label_formula(result: Node, like: Node, stop: set[int]) -> None:
    """Give the formula's new nodes the replaced node's name (on the result) and scope."""
    scope = like.meta.get("scope")
    grad_of = like.meta.get("grad_of")
    seen: set[int] = set()
    todo = [result]
    while todo:
        n = todo.pop()
        if n.id in seen or n.id in stop or n.op in LEAF_OPS:
            continue
        seen.add(n.id)
        if scope is not None:
            n.meta.setdefault("scope", scope)
        if grad_of is not None:
            n.meta.setdefault("grad_of", grad_of)
        todo.extend(n.inputs)
    if like.name and not result.name:
        result.name = like.name
