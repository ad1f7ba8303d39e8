"""Printed names (sanitised, unique, deterministic), name scopes, and printing in linear time."""

from __future__ import annotations

import asyncio
import doctest
import importlib
import keyword
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import asg.core as ag
from asg.core.passes.rewrite import rewrite
from asg.core.verify import GraphVerificationError


def test_dotted_names_print_sanitised_never_as_letters():
    x = ag.input("x", ("B", 4))
    w = ag.parameter(np.ones((4, 3), "float32"), name="h.0.attn.c_attn.weight")
    b = ag.parameter(np.zeros(3, "float32"), name="h.0.attn.c_attn.bias")
    y = (x @ w + b).named("h.0.attn.out")
    assert str(ag.Graph([y.node])) == (
        "{ lambda h_0_attn_c_attn_weight:f32[4,3] h_0_attn_c_attn_bias:f32[3]; x:f32[B,4]. let\n"
        "    a:f32[B,3] = matmul x h_0_attn_c_attn_weight\n"
        "    h_0_attn_out:f32[B,3] = add a h_0_attn_c_attn_bias\n"
        "  in (h_0_attn_out) }"
    )


def test_two_values_with_one_name_print_distinct_names():
    w1 = ag.parameter(np.ones(2, "float32"), name="w")
    w2 = ag.parameter(np.ones(2, "float32"), name="w")
    w3 = ag.parameter(np.ones(2, "float32"), name="w_1")  # the suffix a duplicate would take
    digit = ag.parameter(np.ones(2, "float32"), name="0.weight")
    y = (w1 * w2 + w3 * digit).named("in")  # a keyword
    assert str(ag.Graph([y.node])) == (
        "{ lambda w:f32[2] w_1:f32[2] w_2:f32[2] _0_weight:f32[2]; . let\n"
        "    a:f32[2] = mul w w_1\n"
        "    b:f32[2] = mul w_2 _0_weight\n"
        "    in_1:f32[2] = add a b\n"
        "  in (in_1) }"
    )


def test_letters_skip_user_names_and_keywords_and_every_name_is_a_unique_identifier():
    x = ag.input("a", (2,))
    y = (x * 2.0).named("c")
    for _ in range(80):  # past 'z': aa, ab ... 'as', 'if', 'in', 'is', 'or' are keywords
        y = y.relu()
    graph = ag.Graph([y.node])
    names = [v for v in graph.names().values() if ":" not in v]
    assert len(names) == len(set(names)) == 82
    assert all(n.isidentifier() and not keyword.iskeyword(n) for n in names)
    letters = [graph.names()[n.id] for n in graph.nodes if n.op == "relu"]
    assert letters[:3] == ["b", "d", "e"]
    assert "as" not in letters and "at" in letters


def test_printout_is_deterministic_for_random_names():
    rng = np.random.default_rng(0)
    pool = ["w", "w_1", "h.0.w", "h_0_w", "0", "", "x y", "lambda", "a", "b"]

    def build() -> str:
        picks = rng.permutation(len(pool) * 3) % len(pool)
        y = ag.input("x", (2,))
        for k in picks:
            y = (y * 2.0).named(pool[k] or None)
        return str(ag.Graph([y.node]))

    state = rng.bit_generator.state
    first = build()
    rng.bit_generator.state = state
    assert build() == first
    lines = [line.split(":")[0].strip() for line in first.splitlines()[1:-1]]
    assert len(lines) == len(set(lines)) == 30
    assert all(n.isidentifier() and not keyword.iskeyword(n) for n in lines)


def test_cached_names_follow_renames_and_edits_of_the_node_list():
    x = ag.input("x", (2,))
    y = x * 2.0
    graph = ag.Graph([y.node])
    assert graph.format_node(y.node) == "a:f32[2] = mul x 2.0:f32"
    y.named("double")
    assert graph.format_node(y.node) == "double:f32[2] = mul x 2.0:f32"
    extra = y.relu().node
    graph.nodes.append(extra)
    assert graph.format_node(extra) == "a:f32[2] = relu double"
    graph.nodes[-1] = y.exp().node
    assert graph.format_node(graph.nodes[-1]) == "a:f32[2] = exp double"
    assert str(graph).splitlines()[2] == "    a:f32[2] = exp double"


# ----------------------------------------------------------------------------- scopes
def test_scopes_nest_with_dots_and_are_recorded_in_meta():
    x = ag.input("x", (2, 3))
    assert ag.current_scope() is None and "scope" not in x.node.meta
    with ag.scope("h"):
        a = x * 2.0
        with ag.scope("0") as inner:
            assert inner == "h.0" == ag.current_scope()
            with ag.scope("attn.c_attn"):
                b = a.relu()
        c = b + 1.0
    d = c.sum()
    assert a.node.meta["scope"] == "h" and a.node.inputs[1].meta["scope"] == "h"
    assert b.node.meta["scope"] == "h.0.attn.c_attn"
    assert c.node.meta["scope"] == "h"
    assert "scope" not in d.node.meta and ag.current_scope() is None
    with ag.scope("root"), ag.scope(""):  # an empty name (a root module's path) adds no level
        assert ag.current_scope() == "root"


def test_scope_is_restored_after_an_error_and_rejects_bad_names():
    with pytest.raises(ag.ShapeError), ag.scope("block"):
        ag.input("x", (2,)) @ ag.input("y", (3,))
    assert ag.current_scope() is None
    with pytest.raises(ValueError, match=r"scope name 'h\.\.0' has an empty component"), ag.scope("h..0"):
        pass
    with pytest.raises(TypeError, match="a scope name must be a str, got int 3"), ag.scope(3):  # type: ignore[arg-type]
        pass


def test_scopes_are_per_thread():
    barrier = threading.Barrier(2)
    seen: dict[str, list[str | None]] = {}

    def build(path: str) -> None:
        x = ag.input("x", (2,))
        with ag.scope(path):
            barrier.wait()  # both threads are inside their scopes at once
            nodes = [(x * float(k)).node for k in range(200)]
            barrier.wait()
        seen[path] = [n.meta.get("scope") for n in nodes]

    threads = [threading.Thread(target=build, args=(p,)) for p in ("enc.0", "dec.1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"enc.0": ["enc.0"] * 200, "dec.1": ["dec.1"] * 200}


def test_scopes_are_per_asyncio_task():
    async def build(path: str) -> list[str | None]:
        with ag.scope(path):
            x = ag.input("x", (2,))
            out = []
            for _ in range(5):
                out.append((x * 2.0).node.meta.get("scope"))
                await asyncio.sleep(0)
            return out

    async def main() -> list[list[str | None]]:
        return list(await asyncio.gather(build("a"), build("b")))

    assert asyncio.run(main()) == [["a"] * 5, ["b"] * 5]


def test_passes_keep_scopes_on_the_nodes_they_copy():
    x = ag.input("x", (3,))
    with ag.scope("blk.0"):
        negated = -x
        y = (-negated) * 3.0
    graph = ag.Graph([y.node])
    unwrap = lambda n: n.inputs[0].inputs[0] if n.op == "neg" and n.inputs[0].op == "neg" else None  # noqa: E731
    rewritten = rewrite(graph, unwrap)
    (mul,) = [n for n in rewritten.nodes if n.op == "mul"]
    assert mul is not y.node and mul.meta["scope"] == "blk.0"
    optimised = ag.passes.run_passes(graph)  # the default pipeline (simplify removes the double negation)
    assert [n.op for n in optimised.nodes if n.op != "input"] == ["constant", "mul"]
    assert all(n.meta["scope"] == "blk.0" for n in optimised.nodes if n.op != "input")


def test_scopes_and_the_scoped_printout():
    x = ag.input("x", (2,))
    with ag.scope("h.0.mlp"):
        y = (x * 2.0).relu()
    with ag.scope("h.1"):
        z = y.exp()
    graph = ag.Graph([(z + y).node])
    assert {k: [n.op for n in v] for k, v in graph.scopes().items()} == {
        "h.0.mlp": ["constant", "mul", "relu"],
        "h.1": ["exp"],
    }
    assert graph.format(show_scopes=True) == (
        "{ lambda ; x:f32[2]. let\n"
        "    # h.0.mlp\n"
        "    a:f32[2] = mul x 2.0:f32\n"
        "    b:f32[2] = relu a\n"
        "    # h.1\n"
        "    c:f32[2] = exp b\n"
        "    # (no scope)\n"
        "    d:f32[2] = add c b\n"
        "  in (d) }"
    )
    assert graph.format() == str(graph) and "#" not in str(graph)


# ----------------------------------------------------------------------------- linear time
def _chain(n_ops: int) -> ag.Tensor:
    """``n_ops`` elementwise ops on one (B, 4) value, every 100th named with a dotted path."""
    y = ag.input("x", ("B", 4))
    one = ag.constant(np.ones(4, "float32"), name="one")
    for i in range(n_ops):
        y = y.relu() if i % 2 else y + one
        if i % 100 == 0:
            y = y.named(f"h.{i // 100}.out")
    return y


def test_printing_and_errors_take_linear_time_on_a_20000_node_graph():
    y = _chain(20_000)
    graph = ag.Graph([y.node])
    assert len(graph) == 20_002
    start = time.perf_counter()
    text = str(graph)
    printed = time.perf_counter() - start
    assert printed < 2.0, f"printing took {printed:.2f} s"
    assert text.count("\n") == 20_001 and "    h_199_out:f32[B,4] = add" in text

    start = time.perf_counter()
    lines = [graph.format_node(n) for n in graph.nodes]
    every_line = time.perf_counter() - start
    assert every_line < 2.0, f"formatting every node took {every_line:.2f} s"
    assert lines[-1].endswith("= relu " + graph.names()[y.node.inputs[0].id])

    w = ag.input("w", (5, 5))
    start = time.perf_counter()
    with pytest.raises(ag.ShapeError, match=r"matmul: relu_\d+ \(B, 4\) @ w \(5, 5\)"):
        y @ w
    raised = time.perf_counter() - start
    assert raised < 0.5, f"the shape error took {raised:.2f} s"

    fresh = ag.Graph([y.node])  # names not computed yet: an executor's error line pays for them once
    fresh.nodes[-1].shape = ("B", 5)
    start = time.perf_counter()
    with pytest.raises(
        GraphVerificationError, match=r"verify: [a-z]+:f32\[B,5\] = relu [a-z]+: the shape rule"
    ):
        ag.verify(fresh)
    verified = time.perf_counter() - start
    fresh.nodes[-1].shape = ("B", 4)
    assert verified < 2.0, f"verify's error took {verified:.2f} s"


@pytest.mark.parametrize(
    "module", ["asg.core.naming", "asg.core.graph", "asg.core.serialize", "asg.core.shapes"]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0


def test_readme_names_section_runs(capsys):
    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    section = readme.read_text().split("## Names, scopes and graph JSON", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert printed.splitlines() == expected


def test_scoped_printout_of_a_graph_without_scopes_is_the_plain_printout():
    x = ag.input("x", (2,))
    graph = ag.Graph([(x * 2.0).relu().node])
    assert graph.format(show_scopes=True) == str(graph)
