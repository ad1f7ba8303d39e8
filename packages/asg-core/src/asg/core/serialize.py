"""Graph JSON: :func:`graph_to_json` and :func:`graph_from_json` (also :meth:`Graph.to_json` / ``from_json``).

The document is plain JSON: nodes in topological order, each with its op, input indices, attributes,
type, name and scope, parameter and constant arrays base64-encoded (little-endian). Loading executes no
code and unpickles nothing. It treats the text as hostile: every field's type is checked, every node's
recorded type must be what its op's shape rule gives, symbolic dimensions are parsed in bounded time,
and no array larger than the data actually present is allocated. A malformed document raises
``ValueError`` naming the node (its index and op) and the field.

Format version 2 records ``scope`` and, for gradient nodes, ``grad_of`` (the index of the forward node
they differentiate); version 1 documents still load.

Parameters without data (``include_data=False``, or a bundle that keeps values in a safetensors file)
get their values from ``parameter_values`` when loaded, checked against each node's shape and dtype.
A parameter left without a value is an error unless ``structure_only=True`` (for viewers): then it
loads as a :class:`~asg.core.graph.Variable` with no value, and nothing is allocated for it; reading
its value raises, naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .dtypes import dtype_of
from .graph import LEAF_OPS, Graph, Node, Variable
from .registry import get_op, infer_type
from .shapes import MAX_DIM_CHARS, Shape, format_shape, normalize_dim

FORMAT = "asg-graph"
VERSION = 2
READS_VERSIONS = (1, 2)
MAX_NDIM = 64  # numpy's limit
MAX_DIM = 2**63 - 1
MAX_ATTR_DEPTH = 16  # nesting of tuples inside one attribute value


def graph_to_json(graph: Graph, include_data: bool = True) -> str:
    """Serialise ``graph``; parameter and constant arrays are stored base64-encoded.

    With ``include_data=False`` parameter values are left out (constants are kept: they are part of
    the program); load such a document with ``parameter_values=`` or ``structure_only=True``.

    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", 3))
    >>> with ag.scope("head"):
    ...     y = x * 2.0
    >>> text = graph_to_json(ag.Graph([y.node]))
    >>> [n.meta.get("scope") for n in graph_from_json(text).nodes]
    [None, 'head', 'head']
    """
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    records = []
    for n in graph.nodes:
        rec: dict[str, Any] = {
            "op": n.op,
            "inputs": [index[i.id] for i in n.inputs],
            "attrs": {k: _encode_attr(v) for k, v in n.attrs.items()},
            "shape": list(n.shape),
            "dtype": n.dtype,
        }
        if n.name is not None:
            rec["name"] = n.name
        if n.meta.get("scope"):
            rec["scope"] = n.meta["scope"]
        if n.meta.get("grad_of") in index:
            rec["grad_of"] = index[n.meta["grad_of"]]
        if n.op == "parameter":
            rec["trainable"] = n.data.trainable
            if include_data and n.data.has_value:
                rec["data"] = _encode_array(n.data.value)
        elif n.op == "constant":
            rec["data"] = _encode_array(n.data)
        records.append(rec)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "nodes": records,
        "inputs": [index[n.id] for n in graph.inputs],
        "outputs": [index[n.id] for n in graph.outputs],
    }
    return json.dumps(doc, indent=1)


def graph_from_json(
    text: str | bytes | Mapping[str, Any],
    parameter_values: Mapping[int | str, np.ndarray] | None = None,
    structure_only: bool = False,
) -> Graph:
    """Load a graph written by :func:`graph_to_json` (no code is executed, nothing is unpickled).

    Args:
        text: the JSON text, or the document already decoded (for formats that embed it).
        parameter_values: values for parameters, keyed by the node's index in the document's
            ``"nodes"`` list or by the parameter's name (a name two parameters share must be given by
            index). Each must have the node's shape and dtype; it is copied. A value given for a
            parameter that has data in the document replaces that data.
        structure_only: load parameters that have no data and no entry in ``parameter_values`` as
            Variables without a value (for viewers and analyses), instead of raising.

    Every node is checked as it is read: the type of each field, its inputs must come before it,
    its op must be registered, and its recorded shape and dtype must be what the op's shape rule
    gives. A malformed document raises ``ValueError`` naming the node and the field.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> w = ag.parameter(np.ones((2, 2), "float32"), name="w")
    >>> text = ag.Graph([(w * 2.0).node]).to_json(include_data=False)
    >>> g = graph_from_json(text, parameter_values={"w": np.eye(2, dtype="float32")})
    >>> g.parameters[0].data.value.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    doc = _decode_document(text)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not an ASG graph JSON document (missing 'format': {FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int or version not in READS_VERSIONS:
        raise ValueError(
            f"unsupported ASG graph JSON version {version!r}; this reader knows "
            f"{', '.join(map(str, READS_VERSIONS))}"
        )
    try:
        records, input_ids, output_ids = doc["nodes"], doc["inputs"], doc["outputs"]
    except KeyError as err:
        raise ValueError(f"ASG graph JSON lacks the {err.args[0]!r} field") from None
    for what, value in (("nodes", records), ("inputs", input_ids), ("outputs", output_ids)):
        if not isinstance(value, list):
            raise ValueError(f"ASG graph JSON field {what!r} must be a list, not a {type(value).__name__}")
    values = _values_by_index(records, parameter_values or {})
    nodes: list[Node] = []
    for i, rec in enumerate(records):
        try:
            nodes.append(_node_from_record(rec, nodes, values.get(i), structure_only))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as err:
            what = f"missing field {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"ASG graph JSON node {i} ({_describe_record(rec)}): {what}") from None
    for i, node in enumerate(nodes):
        if "grad_of" in node.meta:
            j = node.meta["grad_of"]
            if type(j) is not int or not 0 <= j < len(nodes):
                raise ValueError(
                    f"ASG graph JSON node {i} ({_describe_record(records[i])}): field 'grad_of' must be the index "
                    f"of a node of the document, not {_short(j)}"
                )
            node.meta["grad_of"] = nodes[j].id
    for what, ids in (("inputs", input_ids), ("outputs", output_ids)):
        for j in ids:
            if type(j) is not int or not 0 <= j < len(nodes):
                raise ValueError(
                    f"ASG graph JSON {what} refer to node {j!r}, but there are {len(nodes)} nodes"
                )
    for j in input_ids:
        if nodes[j].op != "input":
            raise ValueError(f"ASG graph JSON inputs list node {j}, a {nodes[j].op!r} node, not an input")
    try:
        return Graph([nodes[i] for i in output_ids], [nodes[i] for i in input_ids])
    except ValueError as err:
        raise ValueError(f"ASG graph JSON: {err}") from None


def _decode_document(text: str | bytes | Mapping[str, Any]) -> Any:
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(f"graph_from_json takes JSON text or a decoded document, not a {type(text).__name__}")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("ASG graph JSON is nested too deeply to be a graph document") from None
    except ValueError as err:  # json.JSONDecodeError, or an int too long to convert
        raise ValueError(f"not valid JSON: {err}") from None


def _values_by_index(records: list[Any], given: Mapping[int | str, np.ndarray]) -> dict[int, np.ndarray]:
    """``parameter_values`` keyed by node index; a name must pick exactly one parameter."""
    params = [i for i, r in enumerate(records) if isinstance(r, dict) and r.get("op") == "parameter"]
    by_name: dict[str, list[int]] = {}
    for i in params:
        name = records[i].get("name")
        if isinstance(name, str):
            by_name.setdefault(name, []).append(i)
    out: dict[int, np.ndarray] = {}
    for key, value in given.items():
        if type(key) is int:
            if key not in params:
                raise ValueError(
                    f"parameter_values[{key}]: node {key} is not a parameter of this document "
                    f"(parameters are nodes {params})"
                )
            index = key
        elif isinstance(key, str):
            found = by_name.get(key, [])
            if len(found) != 1:
                raise ValueError(
                    f"parameter_values[{key!r}]: "
                    + (
                        f"{len(found)} parameters are named {key!r} (nodes {found}); key them by node index"
                        if found
                        else f"no parameter is named {key!r}; names: {sorted(by_name)}"
                    )
                )
            index = found[0]
        else:
            raise TypeError(f"parameter_values keys are node indices or names, not {type(key).__name__}")
        if index in out:
            raise ValueError(f"parameter_values gives node {index} twice (by index and by name)")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"parameter_values[{key!r}] must be a numpy array, not a {type(value).__name__}")
        out[index] = value
    return out


def _describe_record(rec: Any) -> str:
    if isinstance(rec, dict):
        name = rec.get("name")
        return f"op {_short(rec.get('op'))}" + (f", name {_short(name)}" if name else "")
    return f"a {type(rec).__name__}, not an object"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _field(rec: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = rec[key]
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be {what}, not {_short(value)}")
    return value


def _shape(value: Any, field: str, symbolic: bool) -> Shape:
    """A recorded shape: non-negative ints (or, for node shapes, symbolic dims), at most 64 of them."""
    if not isinstance(value, list):
        raise ValueError(f"field {field!r} must be a list of dimensions, not {_short(value)}")
    if len(value) > MAX_NDIM:
        raise ValueError(f"field {field!r} has {len(value)} dimensions; at most {MAX_NDIM} are allowed")
    dims = []
    for d in value:
        if type(d) is int:
            if d < 0:
                raise ValueError(f"field {field!r} holds the negative dimension {d}")
            if d > MAX_DIM:
                raise ValueError(f"field {field!r}: dimension {d} is larger than {MAX_DIM} (2**63-1)")
            dims.append(d)
        elif symbolic and isinstance(d, str):
            if len(d) > MAX_DIM_CHARS:
                raise ValueError(
                    f"field {field!r}: symbolic dimension {_short(d)} is longer than {MAX_DIM_CHARS} characters"
                )
            try:
                dims.append(normalize_dim(d))
            except ValueError as err:
                raise ValueError(f"field {field!r}: {err}") from None
        else:
            kind = "an int or a symbolic dimension" if symbolic else "an int"
            raise ValueError(f"field {field!r}: each dimension must be {kind}, not {_short(d)}")
    return tuple(dims)


def _node_from_record(rec: Any, nodes: list[Node], value: np.ndarray | None, structure_only: bool) -> Node:
    if not isinstance(rec, dict):
        raise ValueError("each node must be a JSON object")
    op = _field(rec, "op", str, "a string")
    input_ids = _field(rec, "inputs", list, "a list of node indices")
    for j in input_ids:
        if type(j) is not int or not 0 <= j < len(nodes):
            raise ValueError(
                f"it reads node {_short(j)}, which does not come before it (the JSON must be in topological order)"
            )
    inputs = [nodes[j] for j in input_ids]
    raw_attrs = _field(rec, "attrs", dict, "an object of attribute values")
    attrs = {k: _decode_attr(v, f"attrs.{k}") for k, v in raw_attrs.items()}
    shape = _shape(rec["shape"], "shape", symbolic=op not in ("parameter", "constant"))
    dtype = dtype_of(_field(rec, "dtype", str, "a dtype name"))
    name = rec.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"field 'name' must be a string or null, not {_short(name)}")
    meta: dict[str, Any] = {}
    where = rec.get("scope")
    if where is not None:
        if not isinstance(where, str) or not where or len(where) > 1024:
            raise ValueError(
                f"field 'scope' must be a non-empty string of at most 1024 characters, not {_short(where)}"
            )
        meta["scope"] = where
    if "grad_of" in rec:
        meta["grad_of"] = rec["grad_of"]  # a document index until every node is read
    data: Any = None
    if op in LEAF_OPS:
        if inputs or attrs:
            raise ValueError(f"a {op} node has no inputs or attributes")
        if op == "parameter":
            trainable = rec.get("trainable", True)
            if not isinstance(trainable, bool):
                raise ValueError(f"field 'trainable' must be true or false, not {_short(trainable)}")
            if value is not None:
                array = _checked_value(value, shape, dtype)
            elif "data" in rec:
                array = _decode_array(rec["data"], shape, dtype)
            elif structure_only:
                array = None
            else:
                raise ValueError(
                    "the parameter has no data; pass its value in parameter_values (by node index or name), "
                    "or structure_only=True to load the graph without parameter values"
                )
            data = Variable(array, name, trainable)
        elif op == "constant":
            data = _decode_array(rec["data"], shape, dtype)
            data.setflags(write=False)
    else:
        try:
            definition = get_op(op)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        try:
            result = infer_type(definition, inputs, attrs)
        except ValueError:
            raise
        except Exception as err:  # hostile attributes may break a shape rule in any way
            raise ValueError(
                f"the shape rule of {op!r} rejects its attributes: {type(err).__name__}: {err}"
            ) from None
        recorded = tuple(normalize_dim(d) for d in result.shape)
        if recorded != shape or result.dtype != dtype:
            raise ValueError(
                f"it records type {format_shape(shape)} {dtype}, but the shape rule of {op!r} gives "
                f"{format_shape(recorded)} {result.dtype}"
            )
    return Node(op, inputs, attrs, shape, dtype, name, data, meta)


def _checked_value(value: np.ndarray, shape: Shape, dtype: str) -> np.ndarray:
    if value.shape != shape or value.dtype.name != dtype:
        raise ValueError(
            f"the value given in parameter_values is {format_shape(value.shape)} {value.dtype.name}, "
            f"but the node says {format_shape(shape)} {dtype}"
        )
    return np.array(value, order="C", copy=True)


def _encode_attr(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [_encode_attr(v) for v in value]}
    return value


def _decode_attr(value: Any, field: str, depth: int = 0) -> Any:
    """An attribute value: null, bool, int, float, str, or ``{"tuple": [...]}`` of those (bounded depth)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and set(value) == {"tuple"} and isinstance(value["tuple"], list):
        if depth >= MAX_ATTR_DEPTH:
            raise ValueError(f"field {field!r} nests tuples more than {MAX_ATTR_DEPTH} deep")
        return tuple(_decode_attr(v, field, depth + 1) for v in value["tuple"])
    raise ValueError(
        f"field {field!r} must be null, a bool, a number, a string or {{'tuple': [...]}}, not {_short(value)}"
    )


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array) if array.ndim else np.asarray(array)
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "base64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
    }


def _decode_array(rec: Any, node_shape: Shape, node_dtype: str) -> np.ndarray:
    """Decode ``data``; its declared size is checked against the node and the text before anything is allocated."""
    if not isinstance(rec, dict):
        raise ValueError(f"field 'data' must be an object with dtype, shape and base64, not {_short(rec)}")
    dtype_name = dtype_of(_field(rec, "dtype", str, "a dtype name"))
    shape = _shape(rec["shape"], "data.shape", symbolic=False)
    text = _field(rec, "base64", str, "a base64 string")
    if shape != node_shape or dtype_name != node_dtype:
        raise ValueError(
            f"its data is {format_shape(shape)} {dtype_name}, but the node says {format_shape(node_shape)} {node_dtype}"
        )
    dtype = np.dtype(dtype_name).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    stripped = text.rstrip("=")
    holds = len(stripped) * 3 // 4
    if holds != expected or len(text) % 4:
        raise ValueError(
            f"array data holds {holds} bytes, but shape {format_shape(shape)} {dtype.name} needs {expected}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("field 'data.base64' is not valid base64") from None
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _to_json(self: Graph, include_data: bool = True) -> str:
    """Serialise to JSON (see :func:`asg.core.serialize.graph_to_json`)."""
    return graph_to_json(self, include_data)


def _from_json(
    cls: type[Graph],
    text: str | bytes | Mapping[str, Any],
    parameter_values: Mapping[int | str, np.ndarray] | None = None,
    structure_only: bool = False,
) -> Graph:
    """Load a graph from JSON, checking every node (see :func:`asg.core.serialize.graph_from_json`)."""
    return graph_from_json(text, parameter_values, structure_only)


# Graph sits below the registry, so its JSON methods are attached from here (as JAX attaches array methods).
Graph.to_json = _to_json  # type: ignore[method-assign]
Graph.from_json = classmethod(_from_json)  # type: ignore[method-assign,assignment]
