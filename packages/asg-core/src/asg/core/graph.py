"""The graph IR: :class:`Node`, :class:`Variable` and :class:`Graph`.

A node is one op applied to input nodes, with attributes, an output shape and dtype, an optional
user name and a ``meta`` dict for analyses. Nodes form a DAG; a :class:`Graph` is the part of it
reachable from chosen outputs, in topological order. Graphs print as a readable program (in the
spirit of a jaxpr). JSON reading and writing live in :mod:`asg.core.serialize`, which sits above the
op registry and attaches :meth:`Graph.to_json` and :meth:`Graph.from_json`; this module imports
neither the registry nor the ops.
"""

from __future__ import annotations

import itertools
import keyword
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .naming import _GRAD_OF, _SCOPE, Namespace, sanitize
from .shapes import Shape, format_shape

LEAF_OPS = frozenset({"input", "parameter", "constant"})
_SHORT_DTYPE = {
    "float16": "f16",
    "float32": "f32",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ids = itertools.count()
_rename_count = itertools.count(1)  # next() on a count is atomic: safe when threads rename nodes at once
_renames = [0]  # the latest rename's number; cached printed names are recomputed when it changes


class Variable:
    """Storage of a parameter or of optimizer state: a numpy array updated in place by plans.

    A Variable loaded from graph JSON without data (``structure_only=True``) has no value until one
    is assigned; reading ``value`` before that raises ``ValueError`` naming it.

    >>> v = Variable(np.zeros(3, "float32"), name="b")
    >>> v.value.shape, v.has_value
    ((3,), True)
    """

    __slots__ = ("_home", "_stored", "_value", "name", "trainable")

    def __init__(self, value: np.ndarray | None, name: str | None = None, trainable: bool = True) -> None:
        self._value = value
        self.name = name
        self.trainable = trainable
        # The backend storage holding the current value (asg.core.storage), or None: the numpy array.
        self._home: Any = None
        # {storage: dtype} where a backend's plans run the value narrower than the host array
        # (asg.core.storage.store_as: an int64 counter as int32 without 64-bit integers), else None.
        self._stored: dict[Any, str] | None = None

    @property
    def value(self) -> np.ndarray:
        """The current array (plans update it in place; a backend's copy is read back first)."""
        if self._home is not None:
            self._home.sync_to_host(self)
        if self._value is None:
            raise ValueError(
                f"parameter {self.name!r} has no value: its graph was loaded from JSON without data; "
                "pass parameter_values= to asg.core.serialize.graph_from_json, or assign node.data.value"
            )
        return self._value

    @value.setter
    def value(self, array: np.ndarray) -> None:
        self._value = array
        if self._home is not None:
            self._home.write(self)

    @property
    def has_value(self) -> bool:
        """False for a parameter loaded without data and not given a value yet."""
        return self._value is not None

    def __repr__(self) -> str:
        if self._value is None:
            return f"Variable({self.name!r}, no value)"
        return f"Variable({self.name!r}, {format_shape(self._value.shape)}, {self._value.dtype})"


_outside_package: dict[str, bool] = {}


def _user_source() -> str | None:
    """``file:line`` of the innermost frame outside the ASG packages: where the user built the node.

    Frames of asg.core and of the packages above it (``asg.nn`` layers, ``asg.zoo`` models) are skipped,
    so an error points at the user's line (a module's ``forward``, a script), not at library code.
    """
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        outside = _outside_package.get(filename)
        if outside is None:
            module = str(frame.f_globals.get("__name__", ""))
            inside = os.path.abspath(filename).startswith(_PACKAGE_DIR) or module.startswith("asg.")
            outside = _outside_package[filename] = not inside
        if outside:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _new_meta() -> dict[str, Any]:
    meta: dict[str, Any] = {"source": _user_source()}
    current = _SCOPE.get()
    if current:
        meta["scope"] = current
    grad_of = _GRAD_OF.get()
    if grad_of is not None:
        meta["grad_of"] = grad_of
    return meta


class Node:
    """One op applied to input nodes.

    Attributes:
        op: registered op name, or ``"input"``, ``"parameter"``, ``"constant"`` for leaves.
        inputs: the nodes whose values this op reads.
        attrs: op attributes (ints, floats, strings, bools, None and tuples of those).
        shape, dtype: the output type, inferred when the node was built.
        name: the user's name for the value, if any (any string: the printout sanitises it).
        data: a :class:`Variable` for parameters, a numpy array for constants, else ``None``.
        meta: analysis results and provenance: ``meta["source"]`` is where the node was built and
            ``meta["scope"]`` the :func:`~asg.core.scope` it was built under (absent outside every scope);
            ``meta["grad_of"]`` the id of the forward node whose gradient rule built it (gradient nodes only).
    """

    __slots__ = ("_name", "attrs", "data", "dtype", "id", "inputs", "meta", "op", "shape")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Node],
        attrs: Mapping[str, Any],
        shape: Shape,
        dtype: str,
        name: str | None = None,
        data: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.shape = tuple(shape)
        self.dtype = dtype
        self._name = name
        self.data = data
        self.id = next(_ids)
        self.meta = meta if meta is not None else _new_meta()

    @property
    def name(self) -> str | None:
        """The user's name of the value (``Tensor.named``), or ``None``; setting it renames the node."""
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value
        _renames[0] = next(_rename_count)

    @property
    def ndim(self) -> int:
        """The number of axes, ``len(self.shape)``."""
        return len(self.shape)

    @property
    def label(self) -> str:
        """The user's name, or ``<op>_<id>`` for an unnamed value."""
        return self._name if self._name else f"{self.op}_{self.id}"

    def type_str(self) -> str:
        """Short type such as ``f32[B,784]``."""
        return f"{_SHORT_DTYPE[self.dtype]}[{','.join(str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        ins = ", ".join(n.label for n in self.inputs)
        return f"<Node {self.label}: {self.type_str()} = {self.op}({ins})>"


def topological_order(outputs: Iterable[Node]) -> list[Node]:
    """Every node the outputs depend on, inputs before users (iterative, any depth)."""
    order: list[Node] = []
    state: dict[int, bool] = {}  # id -> finished
    for root in outputs:
        if root.id in state:
            continue
        stack: list[tuple[Node, Iterator[Node]]] = [(root, iter(root.inputs))]
        state[root.id] = False
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                state[node.id] = True
                order.append(node)
            elif child.id not in state:
                state[child.id] = False
                stack.append((child, iter(child.inputs)))
    return order


def _literal(node: Node) -> str | None:
    """A scalar constant prints inline, as jaxprs print literals."""
    if node.op == "constant" and node.ndim == 0:
        return f"{node.data.item()!r}:{_SHORT_DTYPE[node.dtype]}"
    return None


def _letters() -> Iterator[str]:
    for size in itertools.count(1):
        for chars in itertools.product("abcdefghijklmnopqrstuvwxyz", repeat=size):
            yield "".join(chars)


def _format_attr(value: Any) -> str:
    if isinstance(value, tuple):
        inner = ",".join(_format_attr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


class _NodeList(list):  # type: ignore[type-arg]
    """A graph's node list: counts its changes, so names cached for the graph are recomputed after one."""

    __slots__ = ("version",)

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        super().__init__(nodes)
        self.version = 0


def _counting(name: str) -> Any:
    method = getattr(list, name)

    def changed(self: _NodeList, *args: Any) -> Any:
        self.version += 1
        return method(self, *args)

    changed.__name__ = name
    return changed


for _method in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "extend",
    "insert",
    "pop",
    "remove",
    "clear",
    "sort",
    "reverse",
):
    setattr(_NodeList, _method, _counting(_method))
del _method


class Graph:
    """The nodes reachable from ``outputs``, in topological order.

    Args:
        outputs: the values the graph computes.
        inputs: the graph's input nodes, in call order; by default every ``input`` node reached,
            in creation order. Two inputs may not share a name (they are fed by name).

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 3))
        >>> g = ag.Graph([(x * 2.0).node])
        >>> print(g)
        { lambda ; x:f32[B,3]. let
            a:f32[B,3] = mul x 2.0:f32
          in (a) }
    """

    def __init__(self, outputs: Sequence[Node], inputs: Sequence[Node] | None = None) -> None:
        self.outputs = list(outputs)
        reached = topological_order([*self.outputs, *(inputs or ())])
        if inputs is None:
            inputs = sorted((n for n in reached if n.op == "input"), key=lambda n: n.id)
        self.inputs = list(inputs)
        self.nodes = reached
        _check_input_names(self.inputs)

    @property
    def nodes(self) -> list[Node]:
        """The nodes in topological order (a list: passes and tests may edit it)."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Iterable[Node]) -> None:
        self._nodes = _NodeList(nodes)
        self._names: dict[int, str] | None = None
        self._names_key: tuple[int, int] = (-1, -1)

    @property
    def parameters(self) -> list[Node]:
        """The parameter nodes, in creation order."""
        return sorted((n for n in self.nodes if n.op == "parameter"), key=lambda n: n.id)

    def users(self) -> dict[int, list[Node]]:
        """Map from node id to the nodes that read it."""
        out: dict[int, list[Node]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i.id].append(n)
        return out

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op the graph holds."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def scopes(self) -> dict[str, list[Node]]:
        """The nodes built under each :func:`~asg.core.scope`, scopes in order of first appearance.

        Nodes built outside every scope are left out.

        >>> import asg.core as ag
        >>> x = ag.input("x", (2,))
        >>> with ag.scope("h.0"):
        ...     y = (x * 2.0).relu()
        >>> {k: [n.op for n in v] for k, v in ag.Graph([(y + 1.0).node]).scopes().items()}
        {'h.0': ['constant', 'mul', 'relu']}
        """
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            where = n.meta.get("scope")
            if where:
                out.setdefault(where, []).append(n)
        return out

    def __len__(self) -> int:
        return len(self.nodes)

    # ---------------------------------------------------------------- printing
    def names(self) -> dict[int, str]:
        """Printable, unique names by node id, deterministic for a given graph.

        A user name is kept, sanitised to an identifier (``h.0.attn.c_attn.weight`` prints as
        ``h_0_attn_c_attn_weight``); a name given twice gets a suffix (``w``, ``w_1``); unnamed values
        get ``a``, ``b``, ``c``... skipping every user name; scalar constants print as literals
        (``2.0:f32``). Leaves are named first, then the other nodes in graph order. The names are
        cached on the graph and recomputed after its node list or a node's name changes.

        >>> import asg.core as ag
        >>> w = ag.parameter(np.ones(2, "float32"), name="h.0.w")
        >>> v = ag.parameter(np.ones(2, "float32"), name="h.0.w")
        >>> sorted(ag.Graph([(w * v + 1.0).node]).names().values())
        ['1.0:f32', 'a', 'b', 'h_0_w', 'h_0_w_1']
        """
        key = (self._nodes.version, _renames[0])
        if self._names is not None and self._names_key == key:
            return self._names
        leaves = [n for n in self._nodes if n.op in LEAF_OPS]
        others = [n for n in self._nodes if n.op not in LEAF_OPS]
        taken = {sanitize(n.name) for n in self._nodes if n.name}
        fresh = (s for s in _letters() if s not in taken and not keyword.iskeyword(s))
        namespace = Namespace()
        names: dict[int, str] = {}
        for n in itertools.chain(leaves, others):
            lit = _literal(n)
            if lit is not None:
                names[n.id] = lit
            elif n.name:
                names[n.id] = namespace.create_name(n.name)
            else:
                letter = next(fresh)
                namespace.reserve(letter)
                names[n.id] = letter
        self._names, self._names_key = names, key
        return names

    def format(self, show_scopes: bool = False) -> str:
        """The printout; with ``show_scopes=True`` a ``# scope`` comment opens each run of nodes of one scope.

        ``str(graph)`` is ``graph.format()``.

        >>> import asg.core as ag
        >>> x = ag.input("x", (2,))
        >>> with ag.scope("h.0.mlp"):
        ...     y = (x * 2.0).relu()
        >>> print(ag.Graph([(y + 1.0).node]).format(show_scopes=True))
        { lambda ; x:f32[2]. let
            # h.0.mlp
            a:f32[2] = mul x 2.0:f32
            b:f32[2] = relu a
            # (no scope)
            c:f32[2] = add b 1.0:f32
          in (c) }
        """
        names = self.names()
        typed = lambda n: f"{names[n.id]}:{n.type_str()}"  # noqa: E731
        params = [n for n in self.nodes if n.op == "parameter"]
        consts = [n for n in self.nodes if n.op == "constant" and _literal(n) is None]
        head = " ".join(typed(n) for n in self.inputs)
        consts_part = " ".join(typed(n) for n in params + consts)
        lines = [f"{{ lambda {consts_part}; {head}. let"]
        shown = ""  # nodes before the first scope get no comment
        for n in self.nodes:
            if n.op in LEAF_OPS:
                continue
            if show_scopes:
                where = n.meta.get("scope") or ""
                if where != shown:
                    lines.append(f"    # {where or '(no scope)'}")
                    shown = where
            lines.append(f"    {self._line(n, names)}")
        lines.append(f"  in ({', '.join(names[n.id] for n in self.outputs)}) }}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    @staticmethod
    def _line(node: Node, names: Mapping[int, str]) -> str:
        attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in sorted(node.attrs.items()))
        op = f"{node.op}[{attrs}]" if attrs else node.op
        args = " ".join(names[i.id] for i in node.inputs)
        return f"{names[node.id]}:{node.type_str()} = {op} {args}".rstrip()

    def format_node(self, node: Node) -> str:
        """One line of the printout, for error messages (names are cached, so this is cheap per call)."""
        names = self.names()
        args = " ".join(names[i.id] for i in node.inputs)
        return f"{names[node.id]}:{node.type_str()} = {node.op} {args}".rstrip()

    if TYPE_CHECKING:  # attached by asg.core.serialize, which sits above the op registry

        def to_json(self, include_data: bool = True) -> str:
            """The graph as JSON (``asg.core.serialize.graph_to_json``)."""

        @classmethod
        def from_json(
            cls,
            text: str | bytes | Mapping[str, Any],
            parameter_values: Mapping[int | str, np.ndarray] | None = None,
            structure_only: bool = False,
        ) -> Graph:
            """A graph read from JSON (``asg.core.serialize.graph_from_json``), every node re-checked."""


def _check_input_names(inputs: Sequence[Node]) -> None:
    seen: dict[str, Node] = {}
    for n in inputs:
        if n.name is None:
            continue
        other = seen.setdefault(n.name, n)
        if other is not n:
            raise ValueError(
                f"two graph inputs are named {n.name!r}: {format_shape(other.shape)} {other.dtype} and "
                f"{format_shape(n.shape)} {n.dtype}; inputs are fed by name, so give each a distinct name"
            )
