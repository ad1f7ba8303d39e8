"""Hostile graph JSON: each document below once hung the loader, crashed it or made it allocate without bound.

Every one must now raise ``ValueError`` naming the node (index and op) and the field, quickly, allocating
nothing beyond the data actually present.
"""

from __future__ import annotations

import contextlib
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import asg.core as ag
from asg.core import shapes
from asg.core.verify import GraphVerificationError


def _input(shape: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "op": "input",
        "inputs": [],
        "attrs": {},
        "shape": shape,
        "dtype": "float32",
        "name": "x",
        **extra,
    }


def _doc(*nodes: dict[str, Any], outputs: list[int] | None = None) -> dict[str, Any]:
    return {
        "format": "asg-graph",
        "version": 2,
        "nodes": list(nodes),
        "inputs": [i for i, n in enumerate(nodes) if n.get("op") == "input"],
        "outputs": outputs if outputs is not None else [len(nodes) - 1],
    }


def _rejects(doc: dict[str, Any] | str, message: str, seconds: float = 1.0, **kwargs: Any) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        ag.graph_from_json(text, **kwargs)
    took = time.perf_counter() - start
    assert took < seconds, f"rejecting took {took:.2f} s"


def _peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    with contextlib.suppress(ValueError):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


# ----------------------------------------------------------------------------- symbolic dimensions
# Found by hostile testing: 307 characters kept asg-core 0.1 busy for over 30 s (the product of sums
# expands to 2**38 terms).
HOSTILE_307 = "*".join(f"({chr(65 + 2 * i % 26)}{i}+{chr(66 + 2 * i % 26)}{i})" for i in range(40))[:307]
HOSTILE_307 = HOSTILE_307[: HOSTILE_307.rindex(")") + 1]
HOSTILE_307 += "+00" * ((307 - len(HOSTILE_307)) % 2) + "+0" * ((307 - len(HOSTILE_307)) // 2)


def test_a_product_of_sums_is_rejected_in_bounded_time():
    assert len(HOSTILE_307) == 307
    _rejects(
        _doc(_input(["B", HOSTILE_307])),
        r"node 0 \(op 'input', name 'x'\): field 'shape': symbolic dimension .* expands to more than 64 terms",
    )


@pytest.mark.parametrize(
    "dim",
    ["+".join(["B"] * 20_000), "(" * 100_000 + "B" + ")" * 100_000, "-" * 100_000 + "B", "B" * 100_000],
    ids=["20000_terms", "nested_100000", "negations_100000", "long_symbol"],
)
def test_huge_dimension_texts_are_rejected_without_recursion(dim):
    _rejects(
        _doc(_input([dim])),
        r"node 0 \(op 'input', name 'x'\): field 'shape': symbolic dimension .* is longer than 512 characters",
    )


def test_the_dimension_parser_itself_is_iterative(monkeypatch):
    # Past the length cap too: the parser holds no recursion, so only the cap keeps such texts out.
    monkeypatch.setattr(shapes, "MAX_DIM_CHARS", 10**6)
    assert shapes.normalize_dim("+".join(["B"] * 20_000)) == "20000*B"
    assert shapes.normalize_dim("(" * 100_000 + "B-1" + ")" * 100_000) == "(B-1)"
    assert shapes.normalize_dim("-" * 100_001 + "B+B") == 0
    assert shapes.resolve_dim("(" * 100_000 + "B//2" + ")" * 100_000, {"B": 9}) == 4


@pytest.mark.parametrize(
    ("dim", "reason"),
    [
        ("B+", "it ends without a value"),
        ("(B", r"unbalanced '\('"),
        ("B)", r"unbalanced '\)'"),
        ("B T", "a value follows a value"),
        ("B**2", r"'\*' lacks its left operand"),
        ("B/2", r"unexpected '/2'"),
        ("__import__('os')", r"'\(' follows a value"),
        ("", "it ends without a value"),
    ],
)
def test_malformed_dimensions_are_rejected_with_the_reason(dim, reason):
    with pytest.raises(ValueError, match=f"malformed symbolic dimension .*: {reason}"):
        shapes.normalize_dim(dim)
    _rejects(_doc(_input([dim])), rf"node 0 \(op 'input', name 'x'\): field 'shape': malformed .*{reason}")


def test_dimensions_within_the_limits_keep_their_meaning():
    nested = "(" * 200 + "B+1" + ")" * 200  # deeper than Python's parser accepts
    assert shapes.normalize_dim(nested) == "(B+1)"
    assert shapes.normalize_dim("(B+T)*(B-T)") == "(B*B-T*T)"
    assert shapes.normalize_dim("-B*-2") == "2*B"
    assert shapes.resolve_dim("(((H-1)//2)+1)", {"H": 28}) == 14
    assert shapes.resolve_dim("-7//2", {}) == -4  # floor division, as numpy's shapes compute it
    with pytest.raises(ValueError, match=r"symbolic dimension '\(B//T\)' divides by zero"):
        shapes.resolve_dim(shapes.normalize_dim("B//T"), {"B": 4, "T": 0})
    loaded = ag.graph_from_json(_doc(_input(["B", nested])))
    assert loaded.inputs[0].shape == ("B", "(B+1)")


# ----------------------------------------------------------------------------- field types
def _mul_doc() -> dict[str, Any]:
    x = ag.input("x", (2, 3))
    with ag.scope("blk"):
        y = (x * 2.0).sum(axis=1)
    return json.loads(ag.Graph([y.node]).to_json())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d["nodes"][2].update(attrs=[1]), r"node 2 \(op 'mul'\): field 'attrs' must be an object"),
        (lambda d: d["nodes"][2].update(op=5), r"node 2 \(op 5\): field 'op' must be a string, not 5"),
        (lambda d: d["nodes"][2].update(inputs="01"), r"node 2 \(op 'mul'\): field 'inputs' must be a list"),
        (lambda d: d["nodes"][2].update(inputs=[True, 1]), r"node 2 \(op 'mul'\): it reads node True"),
        (
            lambda d: d["nodes"][0].update(shape="B"),
            r"node 0 \(op 'input', name 'x'\): field 'shape' must be a list",
        ),
        (
            lambda d: d["nodes"][0].update(shape=[2.0, 3]),
            r"field 'shape': each dimension must be an int or a symbolic",
        ),
        (
            lambda d: d["nodes"][0].update(shape=[2, -3]),
            r"node 0 .*field 'shape' holds the negative dimension -3",
        ),
        (lambda d: d["nodes"][0].update(shape=[1] * 65), r"field 'shape' has 65 dimensions; at most 64"),
        (
            lambda d: d["nodes"][0].update(shape=[2**64]),
            r"field 'shape': dimension 18446744073709551616 is larger",
        ),
        (
            lambda d: d["nodes"][2].update(dtype=["float32"]),
            r"node 2 \(op 'mul'\): field 'dtype' must be a dtype name",
        ),
        (
            lambda d: d["nodes"][2].update(name=7),
            r"node 2 \(op 'mul', name 7\): field 'name' must be a string or null",
        ),
        (
            lambda d: d["nodes"][2].update(scope=["blk"]),
            r"node 2 \(op 'mul'\): field 'scope' must be a non-empty string",
        ),
        (
            lambda d: d["nodes"][3]["attrs"].update(axes=[1]),
            r"node 3 \(op 'sum'\): field 'attrs.axes' must be null, a bool",
        ),
        (
            lambda d: d["nodes"][3]["attrs"].update(axes={"tuple": 1}),
            r"node 3 \(op 'sum'\): field 'attrs.axes' must be null",
        ),
        (
            lambda d: d["nodes"][3]["attrs"].update(axes=json.loads('{"tuple": [' * 20 + "1" + "]}" * 20)),
            r"field 'attrs.axes' nests tuples more than 16 deep",
        ),
        (lambda d: d["nodes"][3]["attrs"].update(axes="x"), r"node 3 \(op 'sum'\): sum: .*"),
        (lambda d: d["nodes"][3]["attrs"].update(bogus=1), r"node 3 \(op 'sum'\): sum: .*bogus"),
        (
            lambda d: d["nodes"][1].update(data=[]),
            r"node 1 \(op 'constant'\): field 'data' must be an object",
        ),
        (
            lambda d: d["nodes"][1]["data"].update(base64=5),
            r"node 1 \(op 'constant'\): field 'base64' must be a base64",
        ),
        (
            lambda d: d["nodes"][1]["data"].update(base64="!!!!!!=="),
            r"node 1 \(op 'constant'\): field 'data.base64' is not",
        ),
        (
            lambda d: d["nodes"][1]["data"].update(shape=[-1]),
            r"field 'data.shape' holds the negative dimension -1",
        ),
        (
            lambda d: d["nodes"][1]["data"].update(shape=["B"]),
            r"field 'data.shape': each dimension must be an int",
        ),
        (
            lambda d: d["nodes"][1].update(shape=["B"]),
            r"node 1 \(op 'constant'\): field 'shape': each dimension must be an int",
        ),
        (lambda d: d["nodes"][1]["data"].pop("dtype"), r"node 1 \(op 'constant'\): missing field 'dtype'"),
        (
            lambda d: d["nodes"][1].update(attrs={"value": 1}),
            r"node 1 \(op 'constant'\): a constant node has no inputs or attributes",
        ),
        (lambda d: d.update(nodes={"0": 1}), r"ASG graph JSON field 'nodes' must be a list, not a dict"),
        (lambda d: d.update(version="2"), r"unsupported ASG graph JSON version '2'"),
        (lambda d: d.update(version=True), r"unsupported ASG graph JSON version True"),
        (lambda d: d.update(outputs=[True]), r"ASG graph JSON outputs refer to node True"),
        (lambda d: d.update(inputs=[2]), r"ASG graph JSON inputs list node 2, a 'mul' node, not an input"),
    ],
)
def test_every_field_is_type_checked(corrupt, message):
    doc = _mul_doc()
    corrupt(doc)
    _rejects(doc, message)


def test_parameter_records_are_type_checked():
    w = ag.parameter(np.ones(2, "float32"), name="w")
    doc = json.loads(ag.Graph([(w * 2.0).node]).to_json())
    doc["nodes"][0]["trainable"] = "yes"
    _rejects(doc, r"node 0 \(op 'parameter', name 'w'\): field 'trainable' must be true or false")


def test_json_nested_too_deeply_and_non_json_are_value_errors():
    _rejects("[" * 100_000 + "]" * 100_000, "ASG graph JSON is nested too deeply")
    _rejects('{"format": "asg-graph", "version": 2, "nodes": [' + "1" * 5000 + "]}", "not valid JSON")
    with pytest.raises(TypeError, match="graph_from_json takes JSON text or a decoded document, not a int"):
        ag.graph_from_json(5)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- allocation
def _parameter(shape: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "op": "parameter",
        "inputs": [],
        "attrs": {},
        "shape": shape,
        "dtype": "float32",
        "name": "w",
        **extra,
    }


def test_a_parameter_without_data_is_never_allocated():
    # Found by hostile testing: asg-core 0.1 allocated zeros, 149 GiB for this node.
    doc = _doc(_parameter([200_000, 200_000]))
    message = (
        r"node 0 \(op 'parameter', name 'w'\): the parameter has no data; pass its value in parameter_values"
    )
    assert _peak_bytes(lambda: _rejects(doc, message)) < 1 << 20
    holder: list[ag.Graph] = []
    assert (
        _peak_bytes(lambda: holder.append(ag.graph_from_json(json.dumps(doc), structure_only=True))) < 1 << 20
    )
    (w,) = holder[0].parameters
    assert w.shape == (200_000, 200_000) and not w.data.has_value
    with pytest.raises(GraphVerificationError, match="the parameter has no value"):
        ag.verify(holder[0])
    _rejects(
        doc,
        r"node 0 \(op 'parameter', name 'w'\): the value given in parameter_values is \(2, 2\) float32, "
        r"but the node says \(200000, 200000\) float32",
        parameter_values={"w": np.zeros((2, 2), "float32")},
    )


def test_data_larger_or_smaller_than_declared_is_rejected_before_decoding():
    big = "A" * 40_000_000  # 30 MB once decoded, for a one-element array
    doc = _doc(_parameter([1], data={"dtype": "float32", "shape": [1], "base64": big}))
    text = json.dumps(doc)
    message = r"node 0 \(op 'parameter', name 'w'\): array data holds 30000000 bytes, but shape \(1,\) float32 needs 4"
    # Reading the JSON holds its text once; decoding the 30 MB would take more.
    assert _peak_bytes(lambda: _rejects(text, message)) < len(text) + (4 << 20)
    huge = _doc(_parameter([10**12], data={"dtype": "float32", "shape": [10**12], "base64": "AAAAAA=="}))
    assert (
        _peak_bytes(
            lambda: _rejects(huge, r"array data holds 4 bytes, but shape \(1000000000000,\) float32 needs")
        )
        < 1 << 20
    )
    short = _doc(_parameter([3], data={"dtype": "float32", "shape": [3], "base64": "AAAAAA=="}))
    _rejects(short, r"array data holds 4 bytes, but shape \(3,\) float32 needs 12")


def test_parameter_values_fill_a_document_without_data():
    w = ag.parameter(np.ones((2, 3), "float32"), name="h.0.w")
    v = ag.parameter(np.ones((2, 3), "float32"), name="h.0.w")  # the same name twice
    s = ag.state(np.zeros(1, "int64"), name="step")
    graph = ag.Graph([(w * v).node, s.node])
    text = graph.to_json(include_data=False)
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    values = {
        index[w.node.id]: np.full((2, 3), 2.0, "float32"),
        index[v.node.id]: np.full((2, 3), 3.0, "float32"),
        "step": np.array([5], "int64"),
    }
    loaded = ag.graph_from_json(text, parameter_values=values)
    got = [p.data.value for p in loaded.parameters]
    np.testing.assert_array_equal(got[0], values[index[w.node.id]])
    np.testing.assert_array_equal(got[1], values[index[v.node.id]])
    np.testing.assert_array_equal(got[2], [5])
    assert not loaded.parameters[2].data.trainable
    out = ag.compile(ag.Tensor(loaded.outputs[0]))()
    np.testing.assert_array_equal(out, np.full((2, 3), 6.0))
    # A value replaces stored data; wrong keys, dtypes and ambiguous names are errors.
    with_data = ag.graph_from_json(graph.to_json(), parameter_values={"step": np.array([9], "int64")})
    assert with_data.parameters[2].data.value.tolist() == [9]
    _rejects(
        text,
        r"parameter_values\['h.0.w'\]: 2 parameters are named 'h.0.w' \(nodes \[0, 1\]\); key them by node index",
        parameter_values={"h.0.w": got[0]},
    )
    _rejects(
        text,
        r"parameter_values\['nope'\]: no parameter is named 'nope'; names: \['h.0.w', 'step'\]",
        parameter_values={"nope": got[0]},
    )
    _rejects(
        text,
        r"parameter_values\[2\]: node 2 is not a parameter of this document",
        parameter_values={2: got[0]},
    )
    _rejects(
        text,
        r"node 3 \(op 'parameter', name 'step'\): the value given in parameter_values is \(1,\) int32, but the node says \(1,\) int64",
        parameter_values={**values, "step": np.array([5], "int32")},
    )


def test_a_long_chain_loads_quickly():
    y = ag.input("x", ("B", 4))
    for _ in range(10_000):
        y = (y * 1.5).relu()
    text = ag.Graph([y.node]).to_json()
    start = time.perf_counter()
    loaded = ag.graph_from_json(text)
    took = time.perf_counter() - start
    assert len(loaded) == 30_001 and took < 10.0, took
