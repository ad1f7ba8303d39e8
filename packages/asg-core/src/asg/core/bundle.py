"""Save a compiled :class:`~asg.core.Function` to one file and load it back, without its code.

``f.save(path)`` writes a *bundle*: the optimised graph, which nodes are the inputs and outputs,
which parameter each update writes, and the current value of every parameter and state variable.
:func:`load` returns a :class:`~asg.core.Function` that runs exactly like the original, in any
process that imports ``asg.core``: a training step saved mid-run continues bit for bit.
:func:`state_dict` reads the values a function holds now.

Example:
    >>> import os, tempfile
    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", 2))
    >>> w = ag.parameter(np.ones((2, 1), "float32"), name="w")
    >>> loss = ((x @ w) ** 2).mean()
    >>> (gw,) = ag.grad(loss, [w])
    >>> step = ag.compile(loss, updates={w: w - 0.1 * gw})
    >>> path = os.path.join(tempfile.mkdtemp(), "step.asg")
    >>> step.save(path)
    >>> again = ag.load(path)
    >>> float(again(x=np.ones((4, 2), "float32"))), float(step(np.ones((4, 2), "float32")))
    (4.0, 4.0)
    >>> again.state_dict()["w"].ravel().tolist() == w.numpy().ravel().tolist()
    True

File format (version 1). A bundle is one safetensors file (suffix ``.asg`` by convention):

- every parameter and state value is a tensor named ``param.<i>`` or ``param.<i>.<name>``, where
  ``<i>`` is the node's index in the graph JSON and ``<name>`` its user name: the index makes the key
  unique and stable, the name makes it readable;
- the safetensors metadata holds one entry, ``"asg-function"``, a JSON document
  ``{"format": "asg-function", "version": 1, "graph": <graph JSON without data>, "function":
  {"num_outputs", "single", "updates": [[parameter index, value index], ...], "backend",
  "options"}}``.

Why one safetensors file rather than a zip of JSON + safetensors: safetensors' reader already checks
everything a hostile file could get wrong in the data part (the header is valid JSON of at most
100,000,000 bytes, dtypes are known, offsets are in order, do not overlap and cover the file
exactly), and it maps the file instead of reading it; a zip would add a second container format to
harden (member names, compression bombs) for no gain. The price is safetensors' header limit
(``MAX_HEADER_SIZE = 100_000_000`` in ``safetensors/src/tensor.rs``): the graph JSON takes about 100
bytes a node (the 128-node MLP + Adam step of the tests takes 12 KB), so some 900,000 nodes fit.
Constants stay in the graph JSON (base64), as :func:`~asg.core.serialize.graph_to_json` keeps them:
they are part of the program and small in practice (scalars, masks). :func:`save` raises before
writing a header that would not load. The metadata is a single entry because safetensors writes its
metadata map in an order that changes from process to process: with one entry, saving the same
function gives the same bytes.

Loading never unpickles and never executes anything from the file. It checks the header's fields,
matches every tensor to its graph node by key (missing and unexpected keys are listed), compares
each tensor's shape and dtype with its node's before reading its data (so memory stays bounded by the
file's size), then rebuilds the graph with :func:`~asg.core.serialize.graph_from_json`, which checks
every field and re-runs every op's shape rule. Any problem raises ``ValueError`` naming the file and
the field.

``bundle`` sits above ``function`` and attaches :meth:`Function.save` and :meth:`Function.state_dict`
to it (as the op families attach the Tensor methods), so no import goes back down-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .dtypes import DTYPES
from .function import Function
from .graph import Graph, Node
from .serialize import graph_from_json, graph_to_json

__all__ = ["load", "save", "state_dict"]

FORMAT = "asg-function"
VERSION = 1
METADATA_KEY = "asg-function"
# safetensors refuses to read a header larger than this (MAX_HEADER_SIZE in safetensors/src/tensor.rs).
MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_DTYPE = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int32": "I32",
    "int64": "I64",
    "bool": "BOOL",
}


# ----------------------------------------------------------------------------- save
def save(function: Function, path: str | os.PathLike[str]) -> None:
    """Write ``function`` (graph, inputs, outputs, updates, parameter and state values) to ``path``.

    The write is atomic: the bundle goes to a temporary file in the same directory, is flushed to
    disk, then renamed over ``path``, so a crash leaves either the old file or the new one. Read it
    back with :func:`load`; the format is described in this module's docstring.

    Example:
        >>> import os, tempfile
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,))
        >>> f = ag.compile(x * ag.parameter(np.full(3, 2.0, "float32"), name="scale"))
        >>> path = os.path.join(tempfile.mkdtemp(), "f.asg")
        >>> f.save(path)
        >>> ag.load(path)(np.ones(3, "float32")).tolist()
        [2.0, 2.0, 2.0]
    """
    graph: Graph = function.graph
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    doc = json.loads(graph_to_json(graph, include_data=False))
    tensors: dict[str, np.ndarray] = {}
    for i, (node, rec) in enumerate(zip(graph.nodes, doc["nodes"], strict=True)):
        if node.op == "parameter":
            tensors[_tensor_key(i, rec)] = np.asarray(node.data.value, order="C")  # 0-d stays 0-d
    updates = []
    for param, value in function.updates:
        if param.id not in index:
            raise ValueError(
                f"save: parameter {param.label!r} is updated, but the optimised graph never reads it; "
                "a bundle can only restore parameters its graph holds (read it in an output, or drop the update)"
            )
        updates.append([index[param.id], index[value.id]])
    options = function.options
    header = {
        "format": FORMAT,
        "version": VERSION,
        "graph": doc,
        "function": {
            "num_outputs": function.num_outputs,
            "single": function.single,
            "updates": updates,
            "backend": function.backend_name,
            "options": dict(options),
        },
    }
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"save: the function's options {options!r} cannot be stored as JSON ({err}); "
            "a bundle holds only JSON-compatible options"
        ) from None
    # The safetensors header: the metadata entry (JSON-escaped once more) plus ~80 bytes a tensor.
    header_bytes = len(json.dumps(text)) + sum(len(k) + 80 for k in tensors)
    if header_bytes > MAX_HEADER_BYTES:
        raise ValueError(
            f"save: the graph of {len(graph.nodes)} nodes needs a header of about {header_bytes:,} bytes, "
            f"more than the {MAX_HEADER_BYTES:,} that safetensors reads back; split the function"
        )
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: text}))


def _tensor_key(i: int, rec: dict[str, Any]) -> str:
    """The stable name of parameter ``i``'s tensor: ``param.<i>`` or ``param.<i>.<name>``."""
    name = rec.get("name")
    return f"param.{i}.{name}" if name else f"param.{i}"


def _atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a fresh file beside ``path``, fsync it and rename it over ``path``.

    Writes through a symlink to its target; an existing file keeps its permission bits, a new one
    gets the usual ``0o666 & ~umask``. The temporary file is removed if anything fails.
    """
    target = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(target).st_mode)
        write(tmp)
        os.chmod(tmp, mode)  # after the write: safetensors may replace the file it is given
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (not possible on every platform, hence the suppress).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ----------------------------------------------------------------------------- load
def load(path: str | os.PathLike[str]) -> Function:
    """Load a function saved by :meth:`Function.save`; it takes the same inputs (by position or name).

    Nothing from the file is executed or unpickled: the graph is rebuilt from JSON with every op's
    shape rule re-run, and values are read as safetensors after their shapes and dtypes have been
    checked against the graph. A malformed, truncated or hostile file raises ``ValueError`` naming
    the file and the field.

    Example:
        >>> import os, tempfile
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B",))
        >>> path = os.path.join(tempfile.mkdtemp(), "f.asg")
        >>> ag.compile(x + 1.0).save(path)
        >>> ag.load(path)(x=np.zeros(2, "float32")).tolist()
        [1.0, 1.0]
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"load: no such file {where!r}")
    try:
        with safe_open(where, framework="numpy") as file:
            header = _read_header(file.metadata(), where)
            records = header["graph"]["nodes"]
            values = _read_values(file, records, where)
    except SafetensorError as err:
        raise ValueError(
            f"load {where!r}: not a readable safetensors file ({err}); a bundle is written by Function.save"
        ) from None
    try:
        graph = graph_from_json(header["graph"], parameter_values=values)
    except ValueError as err:
        raise ValueError(f"load {where!r}: field 'graph': {err}") from None
    nodes = sorted(graph.nodes, key=lambda n: n.id)  # from_json creates the nodes in record order
    if len(nodes) != len(records):
        raise ValueError(
            f"load {where!r}: field 'graph': {len(records) - len(nodes)} of its {len(records)} nodes are "
            "not reachable from its inputs or outputs (a bundle written by Function.save has none)"
        )
    meta = header["function"]
    updates = _read_updates(meta, nodes, graph, where)
    try:
        return Function.from_graph(
            graph, meta["num_outputs"], updates, meta["backend"], meta["options"], single=meta["single"]
        )
    except (ValueError, TypeError, KeyError) as err:  # an unknown backend or option, a graph it cannot run
        raise ValueError(f"load {where!r}: field 'function': {err}") from None


def _field_error(where: str, field: str, problem: str) -> ValueError:
    return ValueError(f"load {where!r}: field {field!r}: {problem}")


def _read_header(metadata: dict[str, str] | None, where: str) -> dict[str, Any]:
    """The bundle's JSON header, with the type of every field this module reads checked."""
    if not metadata or METADATA_KEY not in metadata:
        raise ValueError(
            f"load {where!r}: a safetensors file, but not an ASG function bundle (its metadata has no "
            f"{METADATA_KEY!r} entry); save one with Function.save"
        )
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as err:
        raise _field_error(where, METADATA_KEY, f"not valid JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _field_error(where, "format", f"expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise _field_error(
            where, "version", f"this reader knows version {VERSION}, the file says {header.get('version')!r}"
        )
    graph = header.get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise _field_error(where, "graph", "expected a graph JSON object with a 'nodes' list")
    for i, rec in enumerate(graph["nodes"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("op"), str):
            raise _field_error(where, f"graph.nodes[{i}]", "expected an object with a string 'op'")
        if rec["op"] == "parameter":
            _check_parameter(rec, f"graph.nodes[{i}]", where)
    meta = header.get("function")
    if not isinstance(meta, dict):
        raise _field_error(where, "function", "expected an object")
    for field, types in (
        ("num_outputs", int),
        ("single", bool),
        ("updates", list),
        ("backend", str),
        ("options", dict),
    ):
        value = meta.get(field)
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise _field_error(where, f"function.{field}", f"expected {types.__name__}, got {value!r:.80}")
    return header


def _check_parameter(rec: dict[str, Any], field: str, where: str) -> None:
    """A parameter record: concrete shape, known dtype, optional string name, and no data of its own."""
    shape = rec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _field_error(
            where, f"{field}.shape", f"a parameter needs a list of non-negative ints, got {shape!r:.80}"
        )
    if rec.get("dtype") not in DTYPES:
        raise _field_error(
            where, f"{field}.dtype", f"expected one of {', '.join(DTYPES)}, got {rec.get('dtype')!r:.40}"
        )
    if not isinstance(rec.get("name", ""), str | None):
        raise _field_error(where, f"{field}.name", f"expected a string, got {rec['name']!r:.80}")
    if "data" in rec:
        raise _field_error(where, f"{field}.data", "values belong in the safetensors tensors, not the header")


def _read_values(file: Any, records: list[dict[str, Any]], where: str) -> dict[int, np.ndarray]:
    """Each parameter's tensor, matched by key, its shape and dtype checked before its data is read."""
    expected = {_tensor_key(i, rec): i for i, rec in enumerate(records) if rec["op"] == "parameter"}
    present = set(file.keys())
    missing = sorted(expected.keys() - present, key=expected.__getitem__)
    unexpected = sorted(present - expected.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise _field_error(where, "tensors", f"they do not match the graph's parameters: {'; '.join(parts)}")
    values: dict[int, np.ndarray] = {}
    for key, i in expected.items():
        rec = records[i]
        view = file.get_slice(key)
        shape, dtype = list(view.get_shape()), view.get_dtype()
        if shape != rec["shape"] or dtype != _SAFETENSORS_DTYPE[rec["dtype"]]:
            raise _field_error(
                where,
                f"tensors.{key}",
                f"it is {dtype}{shape}, but graph node {i} (parameter {rec.get('name')!r}) is "
                f"{rec['dtype']}{rec['shape']} ({_SAFETENSORS_DTYPE[rec['dtype']]}{rec['shape']})",
            )
        values[i] = file.get_tensor(key)
    return values


def _some(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_updates(
    meta: dict[str, Any], nodes: list[Node], graph: Graph, where: str
) -> list[tuple[Node, Node]]:
    """The (parameter, new value) pairs; the graph's outputs must end with the new values, in order."""
    num_outputs, pairs = meta["num_outputs"], meta["updates"]
    if not 0 <= num_outputs <= len(graph.outputs) or num_outputs + len(pairs) != len(graph.outputs):
        raise _field_error(
            where,
            "function.num_outputs",
            f"{num_outputs} outputs and {len(pairs)} updates, but the graph has {len(graph.outputs)} outputs "
            "(the results followed by one new value per update)",
        )
    updates = []
    seen: set[int] = set()
    for k, pair in enumerate(pairs):
        field = f"function.updates[{k}]"
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(j) is int and 0 <= j < len(nodes) for j in pair)
        ):
            raise _field_error(
                where, field, f"expected [parameter index, value index] of nodes, got {pair!r:.80}"
            )
        param, value = nodes[pair[0]], nodes[pair[1]]
        if param.op != "parameter" or pair[0] in seen:
            raise _field_error(
                where, field, f"node {pair[0]} is a {param.op} or already updated, not a parameter"
            )
        seen.add(pair[0])
        if graph.outputs[num_outputs + k] is not value:
            raise _field_error(where, field, f"node {pair[1]} is not graph output {num_outputs + k}")
        if value.shape != param.shape or value.dtype != param.dtype:
            raise _field_error(
                where,
                field,
                f"parameter {param.label!r} is {param.type_str()}, its new value {value.type_str()}; they must match",
            )
        updates.append((param, value))
    return updates


# ----------------------------------------------------------------------------- values
def state_dict(function: Function) -> dict[str, np.ndarray]:
    """A copy of every parameter and state value ``function`` holds now, keyed by user name.

    A parameter without a name, or one whose name another parameter shares, is keyed
    ``<name or "param">#<i>`` with ``<i>`` its index in the graph (the bundle's tensor index).

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (2,))
        >>> b = ag.parameter(np.zeros(2, "float32"), name="b")
        >>> f = ag.compile(x + b, updates={b: b + 1.0})
        >>> _ = f(np.zeros(2, "float32"))
        >>> f.state_dict()
        {'b': array([1., 1.], dtype=float32)}
    """
    params = [(i, n) for i, n in enumerate(function.graph.nodes) if n.op == "parameter"]
    counts: dict[str | None, int] = {}
    for _, n in params:
        counts[n.name] = counts.get(n.name, 0) + 1
    out = {}
    for i, n in params:
        key = n.name if n.name and counts[n.name] == 1 else f"{n.name or 'param'}#{i}"
        out[key] = np.array(n.data.value, copy=True)
    return out


def _save_method(self: Function, path: str | os.PathLike[str]) -> None:
    """Write this function and its current parameter/state values to one file (atomically).

    :func:`asg.core.load` reads it back in any process, without the code that built it; the
    format is described in :mod:`asg.core.bundle`.

    Example:
        >>> import os, tempfile
        >>> import asg.core as ag
        >>> path = os.path.join(tempfile.mkdtemp(), "f.asg")
        >>> ag.compile(ag.input("x", (2,)) * 3.0).save(path)
        >>> ag.load(path)(np.ones(2, "float32")).tolist()
        [3.0, 3.0]
    """
    save(self, path)


def _state_dict_method(self: Function) -> dict[str, np.ndarray]:
    """A copy of every parameter and state value, keyed by user name (see :func:`state_dict`)."""
    return state_dict(self)


_save_method.__name__, _state_dict_method.__name__ = "save", "state_dict"
Function.save = _save_method  # type: ignore[method-assign]
Function.state_dict = _state_dict_method  # type: ignore[method-assign]
