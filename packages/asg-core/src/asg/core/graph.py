"""The graph IR: :class:`Node`, :class:`Variable` and :class:`Graph`.

A node is one op applied to input nodes, with attributes, an output shape and dtype, an optional
user name and a ``meta`` dict for analyses. Nodes form a DAG; a :class:`Graph` is the part of it
reachable from chosen outputs, in topological order. Graphs print as a readable program (in the
spirit of a jaxpr) and serialise to JSON that loads back exactly.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .dtypes import dtype_of
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


class Variable:
    """Storage of a parameter or of optimizer state: a numpy array updated in place by plans.

    >>> v = Variable(np.zeros(3, "float32"), name="b")
    >>> v.value.shape
    (3,)
    """

    __slots__ = ("name", "trainable", "value")

    def __init__(self, value: np.ndarray, name: str | None = None, trainable: bool = True) -> None:
        self.value = value
        self.name = name
        self.trainable = trainable

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, {format_shape(self.value.shape)}, {self.value.dtype})"


def _user_source() -> str | None:
    """``file:line`` of the innermost frame outside asg.core: where the user built the node."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class Node:
    """One op applied to input nodes.

    Attributes:
        op: registered op name, or ``"input"``, ``"parameter"``, ``"constant"`` for leaves.
        inputs: the nodes whose values this op reads.
        attrs: op attributes (ints, floats, strings, bools, None and tuples of those).
        shape, dtype: the output type, inferred when the node was built.
        name: the user's name for the value, if any.
        data: a :class:`Variable` for parameters, a numpy array for constants, else ``None``.
        meta: analysis results and provenance (``meta["source"]`` is where the node was built).
    """

    __slots__ = ("attrs", "data", "dtype", "id", "inputs", "meta", "name", "op", "shape")

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
        self.name = name
        self.data = data
        self.id = next(_ids)
        self.meta = meta if meta is not None else {"source": _user_source()}

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def label(self) -> str:
        """The user's name, or ``<op>_<id>`` for an unnamed value."""
        return self.name if self.name else f"{self.op}_{self.id}"

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


class Graph:
    """The nodes reachable from ``outputs``, in topological order.

    Args:
        outputs: the values the graph computes.
        inputs: the graph's input nodes, in call order; by default every ``input`` node reached,
            in creation order.

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

    def __len__(self) -> int:
        return len(self.nodes)

    # ---------------------------------------------------------------- printing
    def names(self) -> dict[int, str]:
        """Printable, unique names: the user's where given, else a, b, c..."""
        taken = {n.name for n in self.nodes if n.name}
        fresh = (s for s in _letters() if s not in taken)
        names: dict[int, str] = {}
        used: set[str] = set()
        for n in sorted(self.nodes, key=lambda n: (n.op not in LEAF_OPS, self.nodes.index(n))):
            lit = _literal(n)
            if lit is not None:
                names[n.id] = lit
                continue
            name = n.name if n.name and n.name.isidentifier() and n.name not in used else next(fresh)
            used.add(name)
            names[n.id] = name
        return names

    def __str__(self) -> str:
        names = self.names()
        typed = lambda n: f"{names[n.id]}:{n.type_str()}"  # noqa: E731
        params = [n for n in self.nodes if n.op == "parameter"]
        consts = [n for n in self.nodes if n.op == "constant" and _literal(n) is None]
        head = " ".join(typed(n) for n in self.inputs)
        consts_part = " ".join(typed(n) for n in params + consts)
        lines = [f"{{ lambda {consts_part}; {head}. let"]
        for n in self.nodes:
            if n.op in LEAF_OPS:
                continue
            attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in sorted(n.attrs.items()))
            op = f"{n.op}[{attrs}]" if attrs else n.op
            args = " ".join(names[i.id] for i in n.inputs)
            lines.append(f"    {typed(n)} = {op} {args}".rstrip())
        lines.append(f"  in ({', '.join(names[n.id] for n in self.outputs)}) }}")
        return "\n".join(lines)

    def format_node(self, node: Node) -> str:
        """One line of the printout, for error messages."""
        names = self.names()
        args = " ".join(names[i.id] for i in node.inputs)
        return f"{names[node.id]}:{node.type_str()} = {node.op} {args}".rstrip()

    # ---------------------------------------------------------------- JSON
    def to_json(self, include_data: bool = True) -> str:
        """Serialise to JSON; parameter and constant arrays are stored base64-encoded."""
        index = {n.id: i for i, n in enumerate(self.nodes)}
        records = []
        for n in self.nodes:
            rec: dict[str, Any] = {
                "op": n.op,
                "inputs": [index[i.id] for i in n.inputs],
                "attrs": {k: _encode_attr(v) for k, v in n.attrs.items()},
                "shape": list(n.shape),
                "dtype": n.dtype,
            }
            if n.name is not None:
                rec["name"] = n.name
            if n.op == "parameter":
                rec["trainable"] = n.data.trainable
                if include_data:
                    rec["data"] = _encode_array(n.data.value)
            elif n.op == "constant":
                rec["data"] = _encode_array(n.data)
            records.append(rec)
        doc = {
            "format": "asg-graph",
            "version": 1,
            "nodes": records,
            "inputs": [index[n.id] for n in self.inputs],
            "outputs": [index[n.id] for n in self.outputs],
        }
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """Load a graph written by :meth:`to_json` (no code is executed, nothing is unpickled).

        Every node is checked as it is read: its inputs must come before it, its op must be
        registered, and its recorded shape and dtype must be what the op's shape rule gives.
        A malformed document raises ``ValueError`` naming the node.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != "asg-graph":
            raise ValueError("not an ASG graph JSON document (missing 'format': 'asg-graph')")
        if doc.get("version") != 1:
            raise ValueError(
                f"unsupported ASG graph JSON version {doc.get('version')!r}; this reader knows 1"
            )
        try:
            records, input_ids, output_ids = doc["nodes"], doc["inputs"], doc["outputs"]
        except KeyError as err:
            raise ValueError(f"ASG graph JSON lacks the {err.args[0]!r} field") from None
        nodes: list[Node] = []
        for i, rec in enumerate(records):
            try:
                nodes.append(_node_from_record(rec, nodes))
            except (KeyError, TypeError, ValueError, IndexError) as err:
                what = f"missing field {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
                raise ValueError(f"ASG graph JSON node {i} ({_describe_record(rec)}): {what}") from None
        for what, ids in (("inputs", input_ids), ("outputs", output_ids)):
            for j in ids:
                if not isinstance(j, int) or not 0 <= j < len(nodes):
                    raise ValueError(
                        f"ASG graph JSON {what} refer to node {j!r}, but there are {len(nodes)} nodes"
                    )
        return cls([nodes[i] for i in output_ids], [nodes[i] for i in input_ids])


def _describe_record(rec: Any) -> str:
    if isinstance(rec, dict):
        return f"op {rec.get('op')!r}" + (f", name {rec['name']!r}" if rec.get("name") else "")
    return f"a {type(rec).__name__}, not an object"


def _node_from_record(rec: Mapping[str, Any], nodes: list[Node]) -> Node:
    from .registry import get_op, infer_type
    from .shapes import normalize_shape

    op = rec["op"]
    for j in rec["inputs"]:
        if not isinstance(j, int) or not 0 <= j < len(nodes):
            raise ValueError(
                f"it reads node {j!r}, which does not come before it (the JSON must be in topological order)"
            )
    inputs = [nodes[j] for j in rec["inputs"]]
    shape = normalize_shape(rec["shape"])
    dtype = dtype_of(rec["dtype"])
    attrs = {k: _decode_attr(v) for k, v in rec["attrs"].items()}
    data: Any = None
    if op in LEAF_OPS:
        if inputs or attrs:
            raise ValueError(f"a {op} node has no inputs or attributes")
        if op == "parameter":
            value = _decode_array(rec["data"]) if "data" in rec else np.zeros(shape, dtype)
            data = Variable(value, rec.get("name"), bool(rec.get("trainable", True)))
        elif op == "constant":
            data = _decode_array(rec["data"])
        if data is not None:
            array = data.value if op == "parameter" else data
            if array.shape != shape or array.dtype.name != dtype:
                raise ValueError(
                    f"its data is {format_shape(array.shape)} {array.dtype.name}, but the node says "
                    f"{format_shape(shape)} {dtype}"
                )
    else:
        try:
            result = infer_type(get_op(op), inputs, attrs)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if normalize_shape(result.shape) != shape or result.dtype != dtype:
            raise ValueError(
                f"it records type {format_shape(shape)} {dtype}, but the shape rule of {op!r} gives "
                f"{format_shape(result.shape)} {result.dtype}"
            )
    return Node(op, inputs, attrs, shape, dtype, rec.get("name"), data, {})


def _encode_attr(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [_encode_attr(v) for v in value]}
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode_attr(v) for v in value["tuple"])
    return value


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.array(array, order="C", copy=False) if array.flags.c_contiguous else np.array(array, order="C")
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "base64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
    }


def _decode_array(rec: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(dtype_of(rec["dtype"])).newbyteorder("<")
    raw = base64.b64decode(rec["base64"])
    shape = tuple(rec["shape"])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"array data holds {len(raw)} bytes, but shape {shape} {dtype.name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)
