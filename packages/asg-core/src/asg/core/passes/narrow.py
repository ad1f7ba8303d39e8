"""Dtype passes for backends with limited dtypes (WGSL has no float64 and no 64-bit integers).

- :func:`narrow_index_dtypes` rewrites int64 index values to int32: inputs, constants, and the ops
  that produce them (argmax, arange, comparisons summed to counts ...), re-running every shape rule.
- :func:`check_supported_dtypes` refuses a graph holding a dtype the backend cannot run, naming the
  first such node and saying what to do.

A backend that declares ``narrow_index`` in its capabilities gets both from
:func:`asg.core.compile`; they can also be run alone (graph in, graph out).

What narrowing means for the caller:

- an int64 graph input becomes an int32 input (``node.meta["narrowed_from"] = "int64"``); the
  caller still feeds int64 arrays: compile's feed coercion casts them, raising if a value does
  not fit in int32;
- an int64 constant is cast, after checking that its values fit (an error names it otherwise);
- an int64 graph output becomes int32: the caller gets int32 arrays (the values are the same);
- computed values are not range-checked (as on the backend): index arithmetic must fit in int32;
- random keys stay int64. A key (the first input of a :data:`~asg.core.registry.RANDOM` op, the
  output of a :data:`~asg.core.registry.KEY` op such as ``fold_in`` even when no random op reads it,
  the int64 values derived from one, and everything it is computed from) is a 64-bit hash state, not
  an index: narrowing it would change the random numbers. A key that is a graph output stays an int64
  output. A backend without int64 must store keys as two 32-bit words; :func:`check_supported_dtypes`
  says so when it meets one. Only ``fold_in`` and the random ops read both words, so an int64 value
  moved or computed from a ``fold_in`` result (``keys[1]``, ``key + 1``) is an error naming it;
- an int64 parameter or state that is not a key (a step counter, BatchNorm's ``num_batches_tracked``)
  becomes an int32 parameter node of the same :class:`~asg.core.graph.Variable`, whose host array
  stays int64: the backend's storage keeps an int32 copy (:func:`asg.core.storage.store_as`), range-checked
  at upload (an error names the variable), and ``numpy()``, ``state_dict()`` and saved files still
  give int64. Its update (``n + 1``) is computed in int32.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from ..dtypes import DTYPES, FLOAT_DTYPES, INT_DTYPES
from ..errors import DTypeError
from ..graph import Graph, Node
from ..registry import KEY, RANDOM, op_has
from .base import register_pass
from .rewrite import copy_node, make_node, rewrite

WIDE, NARROW = "int64", "int32"
_INFO = np.iinfo(NARROW)


class UnsupportedDTypeError(DTypeError, TypeError):
    """A graph holds a value whose dtype the backend cannot run, or a value int32 cannot hold.

    The message shows the node's printed line, its user name, scope and source line, and what to do.
    """


def describe_node(graph: Graph, node: Node) -> str:
    """``x:i64[B] = input (named 'ids', built at train.py:12)``: a node as errors show it.

    >>> import asg.core as ag
    >>> x = ag.input("ids", (3,), "int64")
    >>> describe_node(ag.Graph([x.node]), x.node).split(", built at")[0]
    "ids:i64[3] = input (named 'ids'"
    """
    facts = []
    if node.name:
        facts.append(f"named {node.name!r}")
    if node.meta.get("scope"):
        facts.append(f"in scope {node.meta['scope']!r}")
    if node.meta.get("source"):
        facts.append(f"built at {node.meta['source']}")
    where = f" ({', '.join(facts)})" if facts else ""
    return f"{graph.format_node(node)}{where}"


def random_keys(graph: Graph) -> set[int]:
    """Ids of the random-key values of ``graph``: int64 values a random op's key is computed from or with.

    They are the first input of each :data:`~asg.core.registry.RANDOM` op (the key), the output of each
    :data:`~asg.core.registry.KEY` op (``fold_in``: a key whether or not a random op reads it), every
    int64 value they are computed from (seeds, step counters, the data folded in), and every int64
    value computed from one of those but a constant (the counter's update ``counter + 1``, the next
    key: not another counter's ``n + 1`` that shares the constant 1). Narrowing never changes them, nor
    anything they are computed from.

    >>> import asg.core as ag
    >>> key = ag.input("key", (), "int64")
    >>> noise = ag.random_uniform(ag.fold_in(key, 3), (3,))
    >>> ids = ag.input("ids", (3,), "int64")
    >>> g = ag.Graph([noise.node, ids.node])
    >>> sorted(n.op for n in g.nodes if n.id in random_keys(g))  # the key, the 3 folded in, fold_in
    ['constant', 'fold_in', 'input']
    >>> g = ag.Graph([ag.fold_in(key, ids).node])  # a key as a graph output: no random op reads it
    >>> sorted(n.name or n.op for n in g.nodes if n.id in random_keys(g))
    ['fold_in', 'ids', 'key']
    """
    keys = {n.inputs[0].id for n in graph.nodes if op_has(n.op, RANDOM) and n.inputs}
    keys |= {n.id for n in graph.nodes if op_has(n.op, KEY)}
    while True:
        upstream = _ancestors(graph, keys)
        grown = {n.id for n in graph.nodes if n.id in upstream and n.dtype == WIDE}
        grown |= {
            n.id
            for n in graph.nodes
            if n.dtype == WIDE
            and any(i.id in keys or i.id in grown for i in n.inputs if i.dtype == WIDE and i.op != "constant")
        }
        if grown <= keys:
            return keys
        keys |= grown


def _check_no_op_computes_on_a_hash(graph: Graph) -> None:
    """Refuse an int64 value moved or computed from a :data:`~asg.core.registry.KEY` op's 64-bit hash.

    Such a value stays int64 (it is derived from a key), but a backend without 64-bit integers computes
    it on the low word (only ``fold_in`` and the random ops read a key's two 32-bit words), so it would be
    wrong, and so would the numbers drawn from it. Keys that are inputs or state are not refused: their
    values are not known here (a seed or a step counter fits in 32 bits).
    """
    hashes: set[int] = set()
    for node in graph.nodes:  # graph order: inputs before their users
        if op_has(node.op, KEY):
            hashes.add(node.id)
            continue
        read = next((i for i in node.inputs if i.id in hashes), None)
        if read is None or node.dtype != WIDE or op_has(node.op, RANDOM):
            continue
        raise UnsupportedDTypeError(
            f"narrow_index_dtypes: {describe_node(graph, node)} computes an int64 value from the random "
            f"key {describe_node(graph, read)}: a key is a 64-bit hash and this backend has no 64-bit "
            f"integers (only fold_in and the random ops read all of a key, op {node.op!r} would keep its "
            "low 32 bits), so derive each key with ag.fold_in(key, i) or ag.split_key(key, n) instead of "
            "slicing, reshaping or computing on keys"
        )


def _ancestors(graph: Graph, roots: set[int]) -> set[int]:
    """``roots`` and every node they are computed from."""
    by_id = {n.id: n for n in graph.nodes}
    seen = set(roots)
    stack = [by_id[i] for i in roots if i in by_id]
    while stack:
        for i in stack.pop().inputs:
            if i.id not in seen:
                seen.add(i.id)
                stack.append(i)
    return seen


def range_error(values: np.ndarray, dtype: str = NARROW) -> str | None:
    """``"(lo..hi; int32 holds ...)"`` when some of the integer ``values`` do not fit in ``dtype``, else None.

    >>> range_error(np.array([1, 3_000_000_000])), range_error(np.array([-5, 7]))
    ('(1..3000000000; int32 holds -2147483648..2147483647)', None)
    """
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        return f"({values.min()}..{values.max()}; {dtype} holds {info.min}..{info.max})"
    return None


def _check_range(graph: Graph, node: Node, values: np.ndarray) -> None:
    bad = range_error(values)
    if bad:
        raise UnsupportedDTypeError(
            f"narrow_index_dtypes: {describe_node(graph, node)} holds values outside int32 "
            f"{bad}, so it cannot be narrowed for this backend; keep such values off the graph, or store "
            "them as float32"
        )


def _narrowed_constant(graph: Graph, node: Node) -> Node:
    """An int32 copy of the int64 constant ``node``, after checking that its values fit."""
    _check_range(graph, node, node.data)
    data = node.data.astype(NARROW)
    data.setflags(write=False)
    meta = {**node.meta, "narrowed_from": WIDE}
    return Node("constant", (), {}, node.shape, NARROW, node.name, data, meta)


def _check_attrs(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and not _INFO.min <= value <= _INFO.max:
            raise UnsupportedDTypeError(
                f"narrow_index_dtypes: {describe_node(graph, node)}: attribute {key}={value!r} does not "
                f"fit in int32 ({_INFO.min}..{_INFO.max}), so the op cannot compute in int32"
            )


def _narrowed_op(graph: Graph, node: Node, original: Node) -> Node:
    """``node`` (``original`` with its inputs narrowed) rebuilt to give int32, or an error naming it."""
    attempts: list[tuple[list[Node], dict[str, Any]]] = [(list(node.inputs), dict(node.attrs))]
    if WIDE in node.attrs.values():  # a dtype attribute: full(dtype=), arange(dtype=), cast(dtype=) ...
        attrs = {k: NARROW if v == WIDE else v for k, v in node.attrs.items()}
        _check_attrs(graph, original, attrs)
        attempts.append((list(node.inputs), attrs))
    if any(i.dtype == "bool" for i in node.inputs):  # bool promotes to int64 (sum of a mask, bool + bool)
        cast = [
            make_node("cast", [i], {"dtype": NARROW}, like=i) if i.dtype == "bool" else i for i in node.inputs
        ]
        attempts.append((cast, dict(node.attrs)))
    for inputs, attrs in attempts:
        try:
            new = make_node(node.op, inputs, attrs, like=node)
        except (ValueError, TypeError):
            continue
        if new.dtype == NARROW:
            new.meta["narrowed_from"] = WIDE
            return new
    raise UnsupportedDTypeError(
        f"narrow_index_dtypes: {describe_node(graph, original)} gives int64 and op {node.op!r} has no int32 "
        "form (no dtype attribute, no bool input to give as int32); this backend has no 64-bit "
        "integers, so compute the value another way, or run the graph on the numpy backend"
    )


@register_pass("narrow_index_dtypes", default=False)
def narrow_index_dtypes(graph: Graph) -> Graph:
    """The graph with its int64 index values as int32, for backends without 64-bit integers.

    See :mod:`asg.core.passes.narrow` for what changes for the caller (int64 outputs become int32;
    random keys stay int64). Returns ``graph`` itself when it holds no int64 value to narrow.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> ids = ag.input("ids", ("B",), "int64")
        >>> table = ag.parameter(np.arange(12, dtype="float32").reshape(4, 3), name="table")
        >>> rows = ag.embedding(ids, table)
        >>> best = rows.argmax(axis=1)
        >>> g = narrow_index_dtypes(ag.Graph([rows.node, best.node]))
        >>> [n.dtype for n in g.inputs], g.outputs[1].dtype
        (['int32'], 'int32')
        >>> f = ag.compile(
        ...     [ag.Tensor(n) for n in g.outputs], inputs=[ag.Tensor(n) for n in g.inputs], passes=[]
        ... )
        >>> out, idx = f(np.array([3, 0], "int64"))  # int64 arrays are cast (and range-checked)
        >>> out[:, 0].tolist(), idx.tolist(), idx.dtype.name
        ([9.0, 0.0], [2, 2], 'int32')
    """
    _check_no_op_computes_on_a_hash(graph)
    keep = _ancestors(graph, random_keys(graph))
    originals = iter(graph.nodes)  # with retype=True, rewrite offers every node once, in graph order

    def narrow(node: Node) -> Node | None:
        original = next(originals)
        if original.id in keep:  # keys and what they are computed from: nothing upstream changed
            return None
        if node.op == "input":
            if node.dtype != WIDE:
                return None
            meta = {**node.meta, "narrowed_from": WIDE}
            return Node("input", (), {}, node.shape, NARROW, node.name, None, meta)
        if node.op == "constant":
            return _narrowed_constant(graph, node) if node.dtype == WIDE else None
        if node.op == "parameter":  # the same Variable: its storage keeps it as int32 (asg.core.storage)
            if node.dtype != WIDE:
                return None
            meta = {**node.meta, "narrowed_from": WIDE}
            return Node("parameter", (), {}, node.shape, NARROW, node.name, node.data, meta)
        retyped = node.dtype == WIDE or any(
            a.dtype != b.dtype for a, b in zip(node.inputs, original.inputs, strict=True)
        )
        if retyped and any(i.id in keep and i.op == "constant" and i.dtype == WIDE for i in node.inputs):
            # index arithmetic reading a constant shared with a key's computation (CSE merges every 1):
            # it gets its own int32 copy (a random op reading a constant key is not retyped: it keeps it)
            inputs = [
                _narrowed_constant(graph, i) if i.id in keep and i.op == "constant" and i.dtype == WIDE else i
                for i in node.inputs
            ]
            node = copy_node(node, inputs)  # retyped below, as for any narrowed input
        if node.dtype == WIDE:
            return _narrowed_op(graph, node, original)
        if any(new.dtype != old.dtype for new, old in zip(node.inputs, original.inputs, strict=True)):
            try:  # re-run the rule on the int32 inputs
                new = make_node(node.op, node.inputs, node.attrs, like=node)
            except (ValueError, TypeError) as err:
                raise UnsupportedDTypeError(
                    f"narrow_index_dtypes: {describe_node(graph, original)} does not take its inputs as "
                    f"int32: {err}"
                ) from None
            if new.dtype != node.dtype:
                raise UnsupportedDTypeError(
                    f"narrow_index_dtypes: {describe_node(graph, original)} gives {new.dtype} instead of "
                    f"{node.dtype} once its int64 inputs are int32"
                )
        return None

    return rewrite(graph, narrow, "narrow_index_dtypes", retype=True)


def _advice(graph: Graph, node: Node, supported: frozenset[str], keys: set[int]) -> str:
    if node.dtype in FLOAT_DTYPES:
        floats = [d for d in DTYPES if d in FLOAT_DTYPES and d in supported]
        target = "float32" if "float32" in supported else (floats[0] if floats else None)
        if target is None:
            return "this backend runs no floating-point dtype"
        if node.op == "input":
            return f"declare the input as {target} (ag.input(name, shape, {target!r})); arrays fed to it are cast"
        if node.op == "parameter":
            return f"create the parameter from a {target} array (np.asarray(value, {target!r}))"
        return f"cast to {target} with .astype({target!r}) where it is built"
    if node.dtype in INT_DTYPES:
        if node.id in keys:
            return (
                "it is a random key (a 64-bit hash state, never narrowed); a backend without int64 "
                "must store keys as two 32-bit words to run random ops"
            )
        if NARROW in supported:
            return (
                "narrow index values with asg.core.passes.narrow.narrow_index_dtypes (compile does it for "
                "backends declaring narrow_index), or cast with .astype('int32')"
            )
    usable = ", ".join(repr(d) for d in DTYPES if d in supported)
    return f"cast it with .astype(...) to one of {usable}"


def check_supported_dtypes(graph: Graph, supported: Collection[str], backend: str) -> None:
    """Raise :class:`UnsupportedDTypeError` at the first node whose dtype ``backend`` does not support.

    The message shows the node's printed line, its user name and source line, and what to do.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,), "float64")
        >>> check_supported_dtypes(
        ...     ag.Graph([(x * 2.0).node]), {"float32", "int32", "bool"}, "wgpu"
        ... )  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asg.core.passes.narrow.UnsupportedDTypeError: backend 'wgpu' does not support float64 (it runs bool, float32, int32): x:f64[3] = input (named 'x', built at ...) is float64; declare the input as float32 (ag.input(name, shape, 'float32')); arrays fed to it are cast (2 more nodes are float64)
    """
    allowed = frozenset(supported)
    bad = [n for n in graph.nodes if n.dtype not in allowed]
    if not bad:
        return
    first = bad[0]
    rest = sum(1 for n in bad[1:] if n.dtype == first.dtype)
    more = f" ({rest} more node{'s are' if rest > 1 else ' is'} {first.dtype})" if rest else ""
    advice = _advice(graph, first, allowed, random_keys(graph))
    raise UnsupportedDTypeError(
        f"backend {backend!r} does not support {first.dtype} (it runs {', '.join(sorted(allowed))}): "
        f"{describe_node(graph, first)} is {first.dtype}; {advice}{more}"
    )
