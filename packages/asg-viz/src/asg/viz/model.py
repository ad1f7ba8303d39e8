"""What the viewer shows, without Qt: nodes, edges, module groups, the forward/gradient split, and the
part of the graph visible for a given mode and set of expanded groups.

A :class:`GraphModel` is built once from an :class:`asg.core.Graph`. Every input of every node is an
:class:`Edge` (``x * x`` gives two). Nodes are grouped by core's name scopes (``node.meta["scope"]``):
scope ``transformer.h.0.attn`` nests in ``transformer.h.0``, in ``transformer.h``, in ``transformer``.
Gradient nodes (``node.meta["grad_of"]``, set by core's autograd) are grouped in a mirrored tree under
``∇``, so the forward and backward passes stay two readable, acyclic halves; nodes computed from
gradients outside every gradient rule (optimizer updates) are grouped under ``updates``.

:meth:`GraphModel.visible` gives a :class:`Visible` graph: the items on screen (nodes, and collapsed
groups drawn as one box) inside the expanded groups' frames, and the edges between items.

Example:
    >>> import asg.core as ag
    >>> x = ag.input("x", (2,))
    >>> with ag.scope("block"):
    ...     y = (x * 2.0).relu()
    >>> m = GraphModel(ag.Graph([y.node]))
    >>> sorted(m.groups), m.groups["f:block"].title
    (['f:block'], 'block')
    >>> v = m.visible("forward", expanded=set())
    >>> [item.title for item in v.items.values()]
    ['x', 'block']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from asg.core import Graph, Node
from asg.core.registry import OPS

Mode = Literal["forward", "gradient", "both"]
MODES: tuple[Mode, ...] = ("forward", "gradient", "both")
Role = Literal["forward", "gradient", "update"]

# One colour per op family (asg.core's op modules) and per leaf kind.
FAMILY_COLORS: dict[str, str] = {
    "input": "#4c9be8",
    "parameter": "#f2b134",
    "constant": "#b9b9b9",
    "elementwise": "#8fd18a",
    "activation": "#57b85a",
    "linalg": "#e8734c",
    "layers": "#e8734c",
    "convolution": "#d95f8e",
    "pooling": "#c78fd6",
    "normalization": "#5fc4c4",
    "reduction": "#9c89e0",
    "shape": "#d8d39a",
    "random": "#a3a3e8",
    "optim": "#e0a080",
    "other": "#cccccc",
}
GROUP_COLOR = "#eef1f6"
GRAD_GROUP_COLOR = "#f7eef3"
LEAF_FAMILIES = ("input", "parameter", "constant")


def family_of(op: str) -> str:
    """The op family that colours a node: the op module's short name, or the leaf kind.

    >>> family_of("matmul"), family_of("softmax"), family_of("parameter")
    ('linalg', 'activation', 'parameter')
    """
    if op in LEAF_FAMILIES:
        return op
    opdef = OPS.get(op)
    family = opdef.family.rsplit(".", 1)[-1] if opdef is not None else ""
    return family if family in FAMILY_COLORS else "other"


@dataclass
class NodeInfo:
    """One graph node as the viewer knows it.

    Attributes:
        key: the node's id (``node.id``).
        index: position in the graph's topological order.
        printed: the node's name in the graph printout (unique).
        role: ``"forward"``, ``"gradient"`` (built by a gradient rule) or ``"update"`` (computed from
            gradients outside every rule, such as an optimizer update).
        grad_of: key of the forward node whose gradient rule built this node, or ``None``.
        group: key of the innermost group holding it, or ``None`` at the top level.
    """

    key: int
    index: int
    op: str
    name: str | None
    printed: str
    shape: str
    dtype: str
    type_str: str
    family: str
    scope: str | None
    role: Role
    grad_of: int | None
    source: str | None
    attrs: dict[str, Any]
    line: str
    inputs: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    group: str | None = None
    is_output: bool = False

    @property
    def title(self) -> str:
        """The first label line: the op, and the user's name when there is one."""
        if self.op in LEAF_FAMILIES:
            return self.name or self.printed
        return f"{self.op} {self.name}" if self.name else self.op


@dataclass(frozen=True)
class Edge:
    """Input ``index`` of node ``dst`` reads node ``src``."""

    src: int
    dst: int
    index: int


@dataclass
class Group:
    """A module (name scope): ``key`` is ``"f:<scope>"`` for forward nodes, ``"g:<scope>"`` for their
    gradient nodes (``"g:"`` is the root of the gradient tree), ``"u:<scope>"`` for updates."""

    key: str
    title: str
    path: str
    parent: str | None
    children: list[str] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    size: int = 0  # nodes in it and in its subgroups

    @property
    def kind(self) -> str:
        """``"forward"``, ``"gradient"`` or ``"update"``, from the key's prefix."""
        return {"f": "forward", "g": "gradient", "u": "update"}[self.key[0]]


@dataclass
class Item:
    """One box on screen: a node (``key`` is its id) or a collapsed group (``key`` is the group key)."""

    key: int | str
    title: str
    lines: tuple[str, ...]
    family: str
    is_group: bool
    container: str | None  # the expanded group whose frame holds it, None at the top level


@dataclass
class Visible:
    """The part of a model on screen for one mode and one set of expanded groups.

    Attributes:
        items: the boxes (nodes and collapsed groups) by key.
        frames: the expanded groups (drawn as frames around their items), by key, with their container.
        edges: ``(src item, dst item) -> [model edges]`` for edges between two different items.
        rep: node key -> the key of the item that shows it (itself, or a collapsed group).
        grad_links: ``(gradient item, forward item)`` pairs: gradient nodes linked to what they differentiate.
    """

    mode: Mode
    items: dict[int | str, Item]
    frames: dict[str, str | None]
    edges: dict[tuple[int | str, int | str], list[Edge]]
    rep: dict[int, int | str]
    grad_links: set[tuple[int | str, int | str]]

    def children(self, container: str | None) -> list[int | str]:
        """Keys of the items and frames directly inside ``container`` (``None``: the top level)."""
        out: list[int | str] = [k for k, it in self.items.items() if it.container == container]
        out += [k for k, parent in self.frames.items() if parent == container]
        return out


class GraphModel:
    """Nodes, edges and groups of one graph, and the queries the viewer needs.

    Args:
        graph: the graph to show; gradient nodes are recognised by ``meta["grad_of"]``.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> w = ag.parameter(np.ones(3, "float32"), name="w")
        >>> loss = (w * w).sum()
        >>> (gw,) = ag.grad(loss, [w])
        >>> m = GraphModel(ag.Graph([loss.node, gw.node]))
        >>> sorted({n.role for n in m.nodes.values()})
        ['forward', 'gradient']
        >>> len(m.edges_into(loss.node.inputs[0].id))  # the mul reads w twice: two edges
        2
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        names = graph.names()
        output_ids = {n.id for n in graph.outputs}
        self.nodes: dict[int, NodeInfo] = {}
        self.edges: list[Edge] = []
        for index, n in enumerate(graph.nodes):
            self.nodes[n.id] = self._info(n, index, names, graph, n.id in output_ids)
        for n in graph.nodes:
            for i, x in enumerate(n.inputs):
                self.edges.append(Edge(x.id, n.id, i))
                self.nodes[n.id].inputs.append(x.id)
                self.nodes[x.id].users.append(n.id)
        self._assign_roles()
        self.groups: dict[str, Group] = {}
        for info in self.nodes.values():
            info.group = self._group_for(info)
            if info.group is not None:
                self.groups[info.group].members.append(info.key)
        for g in self.groups.values():
            g.size = len(g.members)
        for g in sorted(self.groups.values(), key=lambda g: -g.key.count(".")):
            if g.parent is not None:
                self.groups[g.parent].size += g.size

    # ------------------------------------------------------------------ building
    @staticmethod
    def _info(n: Node, index: int, names: Mapping[int, str], graph: Graph, is_output: bool) -> NodeInfo:
        grad_of = n.meta.get("grad_of")
        return NodeInfo(
            key=n.id,
            index=index,
            op=n.op,
            name=n.name,
            printed=names[n.id],
            shape="(" + ", ".join(str(d) for d in n.shape) + ("," if len(n.shape) == 1 else "") + ")",
            dtype=n.dtype,
            type_str=n.type_str(),
            family=family_of(n.op),
            scope=n.meta.get("scope") or None,
            role="gradient" if isinstance(grad_of, int) else "forward",
            grad_of=grad_of if isinstance(grad_of, int) else None,
            source=n.meta.get("source"),
            attrs=dict(n.attrs),
            line=graph.format_node(n),
            is_output=is_output,
        )

    def _assign_roles(self) -> None:
        # A non-gradient node reading a gradient or update value (an optimizer step) is an update;
        # topological order means every input's role is final when a node is reached.
        for info in self.nodes.values():
            if info.role == "forward" and any(self.nodes[i].role != "forward" for i in info.inputs):
                info.role = "update"
        for info in self.nodes.values():
            if info.grad_of is not None and info.grad_of not in self.nodes:
                info.grad_of = None  # the forward node is not in this graph (optimised away)
        # A constant or other leaf read only by gradient nodes belongs to the gradient side.
        for info in self.nodes.values():
            if not info.inputs and info.users and info.op == "constant":
                roles = {self.nodes[u].role for u in info.users}
                if "forward" not in roles:
                    info.role = "gradient" if "gradient" in roles else "update"
        # Optimizer state outside any scope (Adam's exp_avg, a step counter and its increment) is read
        # only by updates: it is part of the update too. Reverse order settles a chain's users first.
        for info in reversed(self.nodes.values()):
            users = [self.nodes[u].role for u in info.users]
            if info.role == "forward" and info.scope is None and users and set(users) == {"update"}:
                info.role = "update"

    def _group_for(self, info: NodeInfo) -> str | None:
        prefix = {"forward": "f", "gradient": "g", "update": "u"}[info.role]
        if info.role == "gradient" and info.scope is None:
            return self._ensure_group("g", "")
        if info.role == "update" and info.scope is None:
            return self._ensure_group("u", "")
        scope = info.scope
        if scope is None and info.op == "parameter" and info.role == "forward":
            scope = self._users_scope(info)  # an nn.Module's weight is made before the module is called
        if scope is None:
            return None
        return self._ensure_group(prefix, scope)

    def _users_scope(self, info: NodeInfo) -> str | None:
        """The innermost scope holding every forward user of ``info`` (None when one has no scope)."""
        scopes = [self.nodes[u].scope for u in info.users if self.nodes[u].role == "forward"]
        if not scopes or any(s is None for s in scopes):
            return None
        common = [s.split(".") for s in scopes if s is not None]
        parts: list[str] = []
        for level in zip(*common, strict=False):
            if len(set(level)) > 1:
                break
            parts.append(level[0])
        return ".".join(parts) or None

    def _ensure_group(self, prefix: str, path: str) -> str:
        key = f"{prefix}:{path}"
        if key in self.groups:
            return key
        if path:
            head, _, last = path.rpartition(".")
            if last.isdigit() and head:  # "h.0" reads better than "0"
                last = f"{head.rpartition('.')[2]}.{last}"
            parent: str | None
            if head:
                parent = self._ensure_group(prefix, head)
            else:
                parent = None if prefix == "f" else self._ensure_group(prefix, "")
            title = last if prefix == "f" else f"∇ {last}" if prefix == "g" else last
        else:  # the roots of the gradient and update trees
            parent = None
            title = "∇ gradient" if prefix == "g" else "updates"
        self.groups[key] = Group(key, title, path, parent)
        if parent is not None:
            self.groups[parent].children.append(key)
        return key

    # ------------------------------------------------------------------ queries
    def in_mode(self, key: int, mode: Mode) -> bool:
        """True when node ``key`` is shown in ``mode``."""
        role = self.nodes[key].role
        return mode == "both" or (role == "forward") == (mode == "forward")

    def edges_into(self, key: int) -> list[Edge]:
        """The edges into node ``key``, one per input, in input order."""
        info = self.nodes[key]
        return [Edge(src, key, i) for i, src in enumerate(info.inputs)]

    def group_chain(self, key: int) -> list[str]:
        """The groups holding node ``key``, outermost first."""
        chain: list[str] = []
        group = self.nodes[key].group
        while group is not None:
            chain.append(group)
            group = self.groups[group].parent
        return chain[::-1]

    def ancestors(self, key: int) -> set[int]:
        """Every node that node ``key`` depends on (not itself)."""
        return self._reach(key, lambda info: info.inputs)

    def descendants(self, key: int) -> set[int]:
        """Every node that depends on node ``key`` (not itself)."""
        return self._reach(key, lambda info: info.users)

    def _reach(self, key: int, step: Any) -> set[int]:
        seen: set[int] = set()
        stack = list(step(self.nodes[key]))
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(step(self.nodes[k]))
        return seen

    def search(self, text: str) -> list[int]:
        """Nodes whose name, printed name, op or scope contains ``text`` (case-insensitive), in graph order.

        An exact name or printed-name match comes first.
        """
        needle = text.strip().lower()
        if not needle:
            return []
        exact, partial = [], []
        for info in sorted(self.nodes.values(), key=lambda i: i.index):
            fields = [info.name or "", info.printed, info.op, info.scope or ""]
            if needle in ((info.name or "").lower(), info.printed.lower()):
                exact.append(info.key)
            elif any(needle in f.lower() for f in fields):
                partial.append(info.key)
        return exact + partial

    def by_printed(self) -> dict[str, int]:
        """Printed name -> node key."""
        return {info.printed: key for key, info in self.nodes.items()}

    def default_expanded(self, budget: int = 60, mode: Mode = "forward") -> set[str]:
        """Groups to open at first: breadth first, while the number of boxes stays within ``budget``.

        A group holding a single subgroup and nothing else is always opened (it adds no box), and a group
        holding only subgroups (``h`` holding ``h.0`` ... ``h.11``) is opened when they alone fit the budget,
        so a model opens with one box per block.
        """
        expanded: set[str] = set()
        count = len(self.visible(mode, expanded).items)
        queue = [k for k, g in self.groups.items() if g.parent is None]
        while queue:
            key = queue.pop(0)
            g = self.groups[key]
            shown = [c for c in g.children if self._group_in_mode(c, mode)]
            members = [m for m in g.members if self.in_mode(m, mode)]
            if not shown and not members:
                continue
            grows = len(shown) + len(members) - 1
            if count + grows <= budget or (not members and (len(shown) == 1 or len(shown) <= budget // 2)):
                expanded.add(key)
                count += grows
                queue.extend(shown)
        return expanded

    def _group_in_mode(self, key: str, mode: Mode) -> bool:
        kind = self.groups[key].kind
        return mode == "both" or (kind == "forward") == (mode == "forward")

    # ------------------------------------------------------------------ what is on screen
    def visible(self, mode: Mode, expanded: Iterable[str]) -> Visible:
        """The items, frames and edges on screen in ``mode`` with the ``expanded`` groups open."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        opened = set(expanded)
        items: dict[int | str, Item] = {}
        frames: dict[str, str | None] = {}
        rep: dict[int, int | str] = {}
        counts: dict[str, int] = {}
        for key, info in self.nodes.items():
            if not self.in_mode(key, mode):
                continue
            container: str | None = None
            shown: int | str = key
            for g in self.group_chain(key):
                if g in opened:
                    frames.setdefault(g, container)
                    container = g
                else:
                    shown = g
                    break
            rep[key] = shown
            if shown == key:
                items[key] = Item(key, info.title, (info.title, info.type_str), info.family, False, container)
            else:
                counts[shown] = counts.get(shown, 0) + 1  # type: ignore[index]
                if shown not in items:
                    group = self.groups[shown]  # type: ignore[index]
                    items[shown] = Item(shown, group.title, (), "group", True, container)
        for key, n in counts.items():
            group = self.groups[key]
            items[key].lines = (group.title, f"{n} nodes")
        edges: dict[tuple[int | str, int | str], list[Edge]] = {}
        for e in self.edges:
            a, b = rep.get(e.src), rep.get(e.dst)
            if a is None or b is None or a == b:
                continue
            edges.setdefault((a, b), []).append(e)
        links: set[tuple[int | str, int | str]] = set()
        for key, info in self.nodes.items():
            if info.grad_of is not None and key in rep and info.grad_of in rep:
                a, b = rep[key], rep[info.grad_of]
                if a != b:
                    links.add((a, b))
        return Visible(mode, items, frames, edges, rep, links)
