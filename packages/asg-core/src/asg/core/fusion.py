"""Fusion analysis: which nodes of a graph a backend may compute in one kernel.

:func:`find_fusion_groups` is an analysis, not a rewrite: the graph is unchanged and each
:class:`FusionGroup` lists nodes of it. A backend may lower each group as one kernel (asg-gpu, the
fused CPU executor) or ignore the groups (the numpy executor). Which ops fuse is read from the
registry's traits, never from lists of op names.

Kinds of group, each over one *iteration space* (a shape):

- ``"elementwise"``: ops with the :data:`~asg.core.registry.ELEMENTWISE` trait that all have the
  same output shape, which is the iteration space. Their external inputs may broadcast to it.
- ``"matmul_epilogue"``: an anchor that is a contraction (a :data:`~asg.core.registry.BILINEAR` op
  that is not elementwise: matmul, convolution) followed by elementwise ops over the anchor's output
  shape (bias, activation, residual add: ``relu(x @ w + b)``). Contractions take no prologue.
- ``"reduction_prologue"``: a :data:`~asg.core.registry.REDUCTION` anchor with the elementwise ops,
  over the shape of its input, that compute that input (``sum(exp(x - m))``). Every non-anchor node
  is an ancestor of the anchor. Reductions take no epilogue: the ops after a reduction run over the
  reduced shape, so they form groups of their own.
- ``"residual_norm"``: a :data:`~asg.core.registry.NORMALIZATION` anchor (layer_norm) with the
  elementwise prologue of its first input, typically the residual add (``layer_norm(x + r)``).

A group's *outputs* are its values read by a node outside the group, or that are graph outputs;
a backend writes each of them to memory (a value used inside and outside the group is computed once
and also stored). Every other value of the group lives only inside the kernel. A group's *inputs*
are the values outside it that its nodes read (leaves included), in order of first use.

Guarantees: groups are disjoint and hold at least two nodes; they never hold leaves, random or
effectful ops; no group holds nodes on both sides of an effectful op (in graph order); and the groups
never form a cycle: no external input of a group depends on one of its outputs, so the graph
contracted to groups stays acyclic and :func:`fused_steps` orders it.

Groups are grown greedily, producer into consumer, walking the graph in topological order: each
node joins the group of each of its inputs in turn when the kinds allow it and no cycle results.
A merge is refused when a path leaves the producer's group and re-enters the consumer's group
through another group or an unfused node.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .graph import LEAF_OPS, Graph, Node
from .registry import BILINEAR, EFFECTFUL, ELEMENTWISE, NORMALIZATION, RANDOM, REDUCTION, get_op
from .shapes import Shape

__all__ = ["FusionGroup", "annotate_fusion", "find_fusion_groups", "fused_steps"]

# Roles a node can play in a group.
_ELEMENTWISE = "elementwise"
_CONTRACTION = "contraction"
_REDUCTION = "reduction"
_NORM = "norm"
_KIND = {
    None: "elementwise",
    _CONTRACTION: "matmul_epilogue",
    _REDUCTION: "reduction_prologue",
    _NORM: "residual_norm",
}


def _role(node: Node) -> str | None:
    """What ``node`` can be in a group, from its op's traits; ``None`` when it is never fused."""
    if node.op in LEAF_OPS:
        return None
    op = get_op(node.op)
    if op.has(RANDOM) or op.has(EFFECTFUL):
        return None
    if op.has(ELEMENTWISE):
        return _ELEMENTWISE
    if op.has(BILINEAR):
        return _CONTRACTION
    if op.has(REDUCTION) and node.inputs:
        return _REDUCTION
    if op.has(NORMALIZATION) and node.inputs:
        return _NORM
    return None


def _space(anchor: Node | None, member: Node) -> Shape:
    """The iteration space of a group with ``anchor`` (or none) holding ``member``: the shape of its
    elementwise nodes (a contraction's output, a reduction's or normalisation's input)."""
    if anchor is None:
        return member.shape
    return anchor.shape if _role(anchor) == _CONTRACTION else anchor.inputs[0].shape


@dataclass(eq=False)
class FusionGroup:
    """Nodes of ``graph`` that one kernel can compute.

    Attributes:
        index: position in the list :func:`find_fusion_groups` returns (an execution order).
        kind: ``"elementwise"``, ``"matmul_epilogue"``, ``"reduction_prologue"`` or ``"residual_norm"``.
        nodes: the group's nodes in graph order (inputs before users).
        inputs: values outside the group that its nodes read, in order of first use.
        outputs: the group's values read outside it or returned by the graph, in graph order.
        anchor: the contraction, reduction or normalisation the group is built around (``None`` for
            ``"elementwise"``).
        graph: the graph the nodes belong to.

    ``str(group)`` shows the nodes as lines of the graph's printout.
    """

    index: int
    kind: str
    nodes: tuple[Node, ...]
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    anchor: Node | None
    graph: Graph = field(repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, node: object) -> bool:
        return any(n is node for n in self.nodes)

    @property
    def space(self) -> Shape:
        """The iteration space: the shape every elementwise node of the group has."""
        return _space(self.anchor, self.nodes[0])

    def __str__(self) -> str:
        names = self.graph.names()
        anchor = f", anchor {names[self.anchor.id]}" if self.anchor is not None else ""
        ins = " ".join(names[n.id] for n in self.inputs)
        outs = ", ".join(names[n.id] for n in self.outputs)
        lines = [f"fusion group {self.index} ({self.kind}{anchor}): {ins} -> ({outs})"]
        lines += [f"    {self.graph.format_node(n)}" for n in self.nodes]
        return "\n".join(lines)

    def subgraph(self) -> Graph:
        """The group as a graph of its own: an ``input`` node for each external value, the group's outputs.

        Each external input becomes an ``input`` node of the same shape and dtype, named as the
        whole graph prints it (so names are unique and feeding by name works); constants stay
        constants. The inputs come in :attr:`inputs` order, constants left out.

        Example:
            >>> import numpy as np
            >>> import asg.core as ag
            >>> x = ag.input("x", ("B", 4))
            >>> w = ag.parameter(np.ones((4, 3), "float32"), name="w")
            >>> y = (x @ w + 1.0).relu()
            >>> (group,) = find_fusion_groups(ag.Graph([y.node]))
            >>> print(group.subgraph())
            { lambda ; x:f32[B,4] w:f32[4,3]. let
                a:f32[B,3] = matmul x w
                b:f32[B,3] = add a 1.0:f32
                c:f32[B,3] = relu b
              in (c) }
        """
        from .passes.rewrite import copy_node

        names = self.graph.names()
        mapping: dict[int, Node] = {}
        inputs: list[Node] = []
        for value in self.inputs:
            if value.op == "constant":
                mapping[value.id] = value
                continue
            node = Node("input", (), {}, value.shape, value.dtype, names[value.id], None, dict(value.meta))
            mapping[value.id] = node
            inputs.append(node)
        for node in self.nodes:
            mapping[node.id] = copy_node(node, [mapping[i.id] for i in node.inputs])
        return Graph([mapping[n.id] for n in self.outputs], inputs)


class _Groups:
    """Union-find over the graph's nodes; each root carries its group's members and anchor."""

    def __init__(self, graph: Graph) -> None:
        self.nodes = graph.nodes
        self.position = {n.id: i for i, n in enumerate(graph.nodes)}
        self.users = graph.users()
        self.parent = {n.id: n.id for n in graph.nodes}
        self.members: dict[int, list[Node]] = {n.id: [n] for n in graph.nodes}
        # Members read by nodes outside the group: the only ones a path can leave the group through.
        self.frontier: dict[int, list[Node]] = {n.id: [n] if self.users[n.id] else [] for n in graph.nodes}
        self.role = {n.id: _role(n) for n in graph.nodes}
        self.anchor: dict[int, Node | None] = {
            n.id: n if self.role[n.id] not in (None, _ELEMENTWISE) else None for n in graph.nodes
        }
        # Effectful ops are barriers: a group holds nodes of one "epoch" (between two effectful ops).
        self.epoch: dict[int, int] = {}
        epoch = 0
        for n in graph.nodes:
            if n.op not in LEAF_OPS and get_op(n.op).has(EFFECTFUL):
                epoch += 1
            self.epoch[n.id] = epoch

    def find(self, node_id: int) -> int:
        root = node_id
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node_id] != root:  # path compression
            self.parent[node_id], node_id = root, self.parent[node_id]
        return root

    def space(self, root: int) -> Shape:
        """The shape every elementwise member of the group has."""
        return _space(self.anchor[root], self.members[root][0])

    def merge(self, p: Node, c: Node) -> None:
        """Join the group of producer ``p`` and that of its consumer ``c`` when that is allowed."""
        if self.role[p.id] is None or self.role[c.id] is None:
            return
        gp, gc = self.find(p.id), self.find(c.id)
        if gp == gc or self.epoch[p.id] != self.epoch[c.id] or not self._kinds_allow(gp, gc, p, c):
            return
        if self._path_around(gp, gc):
            return
        frontier = [
            n
            for n in self.frontier[gp] + self.frontier[gc]
            if any(self.find(u.id) not in (gp, gc) for u in self.users[n.id])
        ]
        small, big = sorted((gp, gc), key=lambda r: len(self.members[r]))
        self.parent[small] = big
        self.members[big] += self.members.pop(small)
        del self.frontier[small]
        self.frontier[big] = frontier
        self.anchor[big] = self.anchor[big] or self.anchor[small]
        del self.anchor[small]

    def _kinds_allow(self, gp: int, gc: int, p: Node, c: Node) -> bool:
        ap, ac = self.anchor[gp], self.anchor[gc]
        if ap is not None and ac is not None:
            return False  # one anchor per group
        if ap is None and ac is None:
            return self.space(gp) == self.space(gc)
        if ap is not None:  # the consumer's elementwise group joins after the anchor: an epilogue
            return self.role[ap.id] == _CONTRACTION and self.space(gc) == ap.shape
        role = self.role[ac.id]
        if role == _CONTRACTION:  # elementwise producers of epilogue values (not of the anchor)
            return c is not ac and self.space(gp) == ac.shape
        # a reduction or normalisation: the producer's group becomes (part of) its prologue
        if self.space(gp) != ac.inputs[0].shape or (c is ac and p is not ac.inputs[0]):
            return False
        return self._all_feed(gp, p)

    def _all_feed(self, root: int, p: Node) -> bool:
        """True when every member of group ``root`` is ``p`` or an ancestor of ``p`` inside the group."""
        members = {n.id for n in self.members[root]}
        seen = {p.id}
        stack = [p]
        while stack:
            for i in stack.pop().inputs:
                if i.id in members and i.id not in seen:
                    seen.add(i.id)
                    stack.append(i)
        return len(seen) == len(members)

    def _path_around(self, gp: int, gc: int) -> bool:
        """True when a path leads from group ``gp`` to group ``gc`` through some other group or node."""
        visited = {gp, gc}
        stack: list[int] = []
        for n in self.frontier[gp]:
            for u in self.users[n.id]:
                g = self.find(u.id)
                if g not in visited:
                    visited.add(g)
                    stack.append(g)
        while stack:
            g = stack.pop()
            for n in self.frontier[g]:
                for u in self.users[n.id]:
                    h = self.find(u.id)
                    if h == gc:
                        return True
                    if h not in visited:
                        visited.add(h)
                        stack.append(h)
        return False


def find_fusion_groups(graph: Graph) -> list[FusionGroup]:
    """The fusible groups of ``graph`` (see :mod:`asg.core.fusion`), in an order that can execute them.

    The graph is not changed. Nodes in no group run as single ops.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 4))
        >>> w = ag.parameter(np.ones((4, 3), "float32"), name="w")
        >>> b = ag.parameter(np.zeros(3, "float32"), name="bias")
        >>> h = (x @ w + b).relu()
        >>> m = h.max(axis=1, keepdims=True)
        >>> loss = (h - m).exp().sum()
        >>> g = ag.Graph([loss.node])
        >>> for group in find_fusion_groups(g):
        ...     print(group)
        fusion group 0 (matmul_epilogue, anchor a): x w bias -> (c)
            a:f32[B,3] = matmul x w
            b:f32[B,3] = add a bias
            c:f32[B,3] = relu b
        fusion group 1 (reduction_prologue, anchor g): c d -> (g)
            e:f32[B,3] = sub c d
            f:f32[B,3] = exp e
            g:f32[] = sum f
    """
    groups = _Groups(graph)
    for node in graph.nodes:
        for i in dict.fromkeys(node.inputs):  # each distinct input once, in order
            groups.merge(i, node)
    return _collect(graph, groups)


def unit_boundary(
    nodes: Sequence[Node], users: Mapping[int, list[Node]], graph_outputs: set[int]
) -> tuple[list[Node], list[Node]]:
    """What a unit of ``nodes`` computed together reads and writes: ``(inputs, outputs)``.

    ``inputs`` are the distinct values from outside the unit its nodes read, in first-use order;
    ``outputs`` are its nodes whose value is a graph output (ids in ``graph_outputs``) or is used
    outside the unit (``users``: node id to the nodes that read it, as ``Graph.users()`` gives).
    The fusion groups here and the jit backend's kernels both take their boundary from it.
    """
    inside = {n.id for n in nodes}
    inputs: dict[int, Node] = {}
    for n in nodes:
        for i in n.inputs:
            if i.id not in inside:
                inputs.setdefault(i.id, i)
    outputs = [n for n in nodes if n.id in graph_outputs or any(u.id not in inside for u in users[n.id])]
    return list(inputs.values()), outputs


def _collect(graph: Graph, groups: _Groups) -> list[FusionGroup]:
    users = groups.users
    graph_outputs = {n.id for n in graph.outputs}
    roots = [r for r in _execution_order(graph, groups.find) if len(groups.members[r]) > 1]
    result = []
    for index, root in enumerate(roots):
        members = sorted(groups.members[root], key=lambda n: groups.position[n.id])
        inputs, outputs = unit_boundary(members, users, graph_outputs)
        anchor = groups.anchor[root]
        kind = _KIND[None if anchor is None else groups.role[anchor.id]]
        result.append(FusionGroup(index, kind, tuple(members), tuple(inputs), tuple(outputs), anchor, graph))
    return result


def _execution_order(graph: Graph, unit_of: Callable[[int], int]) -> list[int]:
    """The units (groups, or single nodes) that ``unit_of`` maps node ids to, in a topological order
    of the graph contracted to units; among ready units, the one holding the earliest node comes first.
    """
    first: dict[int, int] = {}
    successors: dict[int, set[int]] = {}
    indegree: dict[int, int] = {}
    for position, n in enumerate(graph.nodes):
        u = unit_of(n.id)
        if u not in first:
            first[u], successors[u], indegree[u] = position, set(), 0
        for i in n.inputs:
            v = unit_of(i.id)
            if v != u and u not in successors[v]:
                successors[v].add(u)
                indegree[u] += 1
    ready = [(first[u], u) for u in first if indegree[u] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, u = heapq.heappop(ready)
        order.append(u)
        for s in successors[u]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, (first[s], s))
    if len(order) != len(first):  # merges that would close a cycle are refused, so this cannot happen
        raise AssertionError("fusion groups form a cycle")
    return order


def fused_steps(graph: Graph, groups: Sequence[FusionGroup] | None = None) -> list[Node | FusionGroup]:
    """The graph as the steps a backend runs, in order: each group once, every other non-leaf node alone.

    Every step comes after the steps computing its inputs. ``groups`` defaults to
    :func:`find_fusion_groups` of the graph.

    >>> import asg.core as ag
    >>> x = ag.input("x", (3,))
    >>> y = (x * 2.0 + 1.0).exp().sum().sqrt()
    >>> [s.kind if isinstance(s, FusionGroup) else s.op for s in fused_steps(ag.Graph([y.node]))]
    ['reduction_prologue', 'sqrt']
    """
    groups = find_fusion_groups(graph) if groups is None else list(groups)
    owner = {n.id: -1 - g.index for g in groups for n in g.nodes}  # groups as negative unit keys
    by_key = {-1 - g.index: g for g in groups}
    node_of = {n.id: n for n in graph.nodes}
    steps: list[Node | FusionGroup] = []
    for unit in _execution_order(graph, lambda i: owner.get(i, i)):
        if unit in by_key:
            steps.append(by_key[unit])
        elif node_of[unit].op not in LEAF_OPS:
            steps.append(node_of[unit])
    return steps


def annotate_fusion(graph: Graph) -> list[FusionGroup]:
    """Find the groups and record ``node.meta["fusion_group"] = index`` on their nodes.

    The annotation is written in place (an analysis, like torch.fx's ``ShapeProp``); nodes in no
    group lose any stale ``"fusion_group"`` entry. Returns the groups.

    >>> import asg.core as ag
    >>> x = ag.input("x", (3,))
    >>> y = (x * 2.0).exp()
    >>> _ = annotate_fusion(ag.Graph([y.node]))
    >>> y.node.meta["fusion_group"], y.node.inputs[0].meta["fusion_group"]
    (0, 0)
    """
    groups = find_fusion_groups(graph)
    for n in graph.nodes:
        n.meta.pop("fusion_group", None)
    for g in groups:
        for n in g.nodes:
            n.meta["fusion_group"] = g.index
    return groups
