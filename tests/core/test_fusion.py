"""Fusion analysis: the groups, their invariants, and each group run alone against the whole graph."""

from __future__ import annotations

import graphlib
import time

import numpy as np
import pytest

import asg.core as ag
from asg.core.fusion import FusionGroup, annotate_fusion, find_fusion_groups, fused_steps
from asg.core.graph import LEAF_OPS
from asg.core.passes import run_passes
from asg.core.registry import (
    BILINEAR,
    EFFECTFUL,
    ELEMENTWISE,
    NORMALIZATION,
    RANDOM,
    REDUCTION,
    get_op,
)
from asg.core.testing import scratch_ops

ANCHOR_TRAIT = {"matmul_epilogue": BILINEAR, "reduction_prologue": REDUCTION, "residual_norm": NORMALIZATION}


# ----------------------------------------------------------------------------- checks used by every test
def check_invariants(graph: ag.Graph, groups: list[FusionGroup]) -> None:
    """Every property a backend relies on, checked without the analysis' own helpers."""
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    users = graph.users()
    outputs = {n.id for n in graph.outputs}
    owner: dict[int, int] = {}
    for k, group in enumerate(groups):
        assert group.index == k
        assert len(group.nodes) >= 2, group
        ids = [n.id for n in group.nodes]
        assert ids == sorted(ids, key=position.__getitem__), f"not in graph order:\n{group}"
        for n in group.nodes:
            assert n.op not in LEAF_OPS, group
            op = get_op(n.op)
            assert not op.has(RANDOM) and not op.has(EFFECTFUL), group
            assert n.id not in owner, f"{n!r} is in groups {owner[n.id]} and {k}"
            owner[n.id] = k
        inside = set(ids)
        non_elementwise = [n for n in group.nodes if not get_op(n.op).has(ELEMENTWISE)]
        if group.kind == "elementwise":
            assert group.anchor is None and not non_elementwise, group
        else:
            assert non_elementwise == [group.anchor], group
            assert get_op(group.anchor.op).has(ANCHOR_TRAIT[group.kind]), group
        space = group.anchor.shape if group.kind == "matmul_epilogue" else None
        if group.kind in ("reduction_prologue", "residual_norm"):
            space = group.anchor.inputs[0].shape
            ancestors, stack = set(), [group.anchor]
            while stack:
                for i in stack.pop().inputs:
                    if i.id in inside and i.id not in ancestors:
                        ancestors.add(i.id)
                        stack.append(i)
            assert ancestors == inside - {group.anchor.id}, (
                f"a prologue node does not feed the anchor:\n{group}"
            )
        elementwise = [n for n in group.nodes if n is not group.anchor]
        space = space if space is not None else elementwise[0].shape
        assert all(n.shape == space for n in elementwise), f"elementwise nodes over several shapes:\n{group}"
        expected_inputs = list(dict.fromkeys(i for n in group.nodes for i in n.inputs if i.id not in inside))
        assert list(group.inputs) == expected_inputs
        expected_outputs = [
            n for n in group.nodes if n.id in outputs or any(u.id not in inside for u in users[n.id])
        ]
        assert list(group.outputs) == expected_outputs
    # The graph contracted to groups (other nodes stay single) is acyclic, and in the groups' order.
    unit = lambda n: ("g", owner[n.id]) if n.id in owner else ("n", n.id)  # noqa: E731
    deps: dict[tuple, set] = {}
    for n in graph.nodes:
        deps.setdefault(unit(n), set()).update(unit(i) for i in n.inputs if unit(i) != unit(n))
    graphlib.TopologicalSorter(deps).prepare()  # raises CycleError on a cycle
    # fused_steps: every non-leaf node once; each step after the steps computing its inputs.
    computed = {n.id for n in graph.nodes if n.op in LEAF_OPS}
    seen = 0
    for step in fused_steps(graph, groups):
        nodes = step.nodes if isinstance(step, FusionGroup) else (step,)
        ins = step.inputs
        assert all(i.id in computed for i in ins), f"{step} runs before its inputs"
        computed.update(n.id for n in nodes)
        seen += len(nodes)
    assert seen == sum(1 for n in graph.nodes if n.op not in LEAF_OPS)
    positions = [k for k, s in enumerate(fused_steps(graph, groups)) if isinstance(s, FusionGroup)]
    assert [fused_steps(graph, groups)[k].index for k in positions] == list(range(len(groups)))


def tensors(nodes) -> list[ag.Tensor]:
    return [ag.Tensor(n) for n in nodes]


def random_feeds(graph: ag.Graph, bindings: dict[str, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = []
    for n in graph.inputs:
        shape = tuple(bindings.get(d, d) if isinstance(d, str) else d for d in n.shape)
        feeds.append(rng.standard_normal(shape).astype(n.dtype))
    return feeds


def check_subgraphs(graph: ag.Graph, groups: list[FusionGroup], feeds: list[np.ndarray]) -> None:
    """Each group's subgraph, fed the whole graph's values of its inputs, gives exactly its outputs."""
    computed = [i for g in groups for i in g.inputs if i.op not in LEAF_OPS]
    wanted = list(dict.fromkeys([*computed, *(n for g in groups for n in g.outputs)]))
    whole = ag.compile(tensors(wanted), inputs=tensors(graph.inputs), passes=[])
    value = {n.id: np.asarray(v) for n, v in zip(wanted, whole(*feeds), strict=True)}
    value.update({n.id: a for n, a in zip(graph.inputs, feeds, strict=True)})
    value.update({n.id: n.data.value for n in graph.nodes if n.op == "parameter"})
    for group in groups:
        sub = group.subgraph()
        ag.verify(sub)
        assert [n.op for n in sub.nodes if n.op not in LEAF_OPS] == [n.op for n in group.nodes]
        externals = [i for i in group.inputs if i.op != "constant"]
        assert [(n.shape, n.dtype) for n in sub.inputs] == [(i.shape, i.dtype) for i in externals]
        run = ag.compile(tensors(sub.outputs), inputs=tensors(sub.inputs), passes=[])
        results = run(*(value[i.id] for i in externals))
        for node, got in zip(group.outputs, results, strict=True):
            np.testing.assert_array_equal(got, value[node.id], err_msg=f"{node!r} of\n{group}")


def kinds(groups: list[FusionGroup]) -> list[str]:
    return [g.kind for g in groups]


def ops(group: FusionGroup) -> list[str]:
    return [n.op for n in group.nodes]


def rand_param(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> ag.Tensor:
    return ag.parameter((rng.standard_normal(shape) * 0.3).astype("float32"), name=name)


# ----------------------------------------------------------------------------- the patterns
def test_matmul_bias_activation_is_one_epilogue_group():
    x = ag.input("x", ("B", 4))
    w = ag.parameter(np.ones((4, 3), "float32"), name="w")
    b = ag.parameter(np.zeros(3, "float32"), name="b")
    y = (x @ w + b).relu()
    g = ag.Graph([y.node])
    (group,) = find_fusion_groups(g)
    assert group.kind == "matmul_epilogue"
    assert group.anchor is y.node.inputs[0].inputs[0] and group.anchor.op == "matmul"
    assert ops(group) == ["matmul", "add", "relu"]
    assert list(group.inputs) == [x.node, w.node, b.node]
    assert list(group.outputs) == [y.node]
    assert group.space == ("B", 3)
    check_invariants(g, [group])
    check_subgraphs(g, [group], random_feeds(g, {"B": 5}))


def test_reduction_takes_its_elementwise_prologue():
    x = ag.input("x", ("B", 6))
    m = x.max(axis=1, keepdims=True)
    s = (x - m).exp().sum(axis=1)
    g = ag.Graph([s.node])
    (group,) = find_fusion_groups(g)
    assert group.kind == "reduction_prologue" and group.anchor is s.node
    assert ops(group) == ["sub", "exp", "sum"]
    assert list(group.inputs) == [x.node, m.node]  # the max is a reduction of its own, read from outside
    assert group.space == ("B", 6)
    check_invariants(g, [group])
    check_subgraphs(g, [group], random_feeds(g, {"B": 3}))


def test_reduction_takes_no_epilogue_and_the_ops_after_it_group_alone():
    x = ag.input("x", (4, 5))
    total = (x * 2.0).sum(axis=1)
    out = (total * 0.5 + 1.0).tanh()
    g = ag.Graph([out.node])
    groups = find_fusion_groups(g)
    assert kinds(groups) == ["reduction_prologue", "elementwise"]
    assert ops(groups[0]) == ["mul", "sum"] and ops(groups[1]) == ["mul", "add", "tanh"]
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))


def test_residual_add_and_layer_norm():
    x, r = ag.input("x", ("B", "T", 8)), ag.input("r", ("B", "T", 8))
    w = ag.parameter(np.linspace(0.5, 1.5, 8, dtype="float32"), name="ln.w")
    b = ag.parameter(np.linspace(-1, 1, 8, dtype="float32"), name="ln.b")
    h = x + r
    y = ag.layer_norm(h, 8, w, b)
    out = y * h.sigmoid()  # the residual stream is read again: the group writes it out
    g = ag.Graph([out.node])
    groups = find_fusion_groups(g)
    norm = groups[0]
    assert norm.kind == "residual_norm" and norm.anchor is y.node
    assert ops(norm) == ["add", "layer_norm"]
    assert list(norm.inputs) == [x.node, r.node, w.node, b.node]
    assert list(norm.outputs) == [h.node, y.node]
    assert kinds(groups) == ["residual_norm", "elementwise"]  # sigmoid and the product
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {"B": 2, "T": 3}))


def test_layer_norm_weight_is_not_a_prologue():
    x = ag.input("x", (3, 8))
    w = ag.input("w", (8,))
    y = ag.layer_norm(x, 8, w.exp() * 2.0)
    g = ag.Graph([y.node])
    (group,) = find_fusion_groups(g)  # exp and mul over the weight's (8,) fuse; the norm stays alone
    assert group.kind == "elementwise" and ops(group) == ["exp", "mul"]
    check_invariants(g, [group])


def test_elementwise_tree_with_broadcast_inputs():
    a, b, c = ag.input("a", ("B", 8)), ag.input("b", ("B", 8)), ag.input("c", (8,))
    bias = ag.input("bias", (8,)).exp()  # over (8,): not the tree's iteration space
    y = ((a * b + c) * (a - bias)).relu()
    g = ag.Graph([y.node])
    (group,) = find_fusion_groups(g)
    assert group.kind == "elementwise" and group.anchor is None
    assert ops(group) == ["mul", "add", "sub", "mul", "relu"]
    assert list(group.inputs) == [a.node, b.node, c.node, bias.node]
    assert list(group.outputs) == [y.node]
    check_invariants(g, [group])
    check_subgraphs(g, [group], random_feeds(g, {"B": 4}))


def test_a_value_read_outside_becomes_a_group_output():
    x = ag.input("x", (4, 4))
    a = (x * 3.0).exp()
    b = (a + 1.0).log()
    other = ag.softmax(a, axis=1)  # not fusible: reads a from outside the group
    g = ag.Graph([b.node, other.node])
    (group,) = find_fusion_groups(g)
    assert ops(group) == ["mul", "exp", "add", "log"]
    assert list(group.outputs) == [a.node, b.node]
    check_invariants(g, [group])
    check_subgraphs(g, [group], random_feeds(g, {}))


def test_a_group_is_split_where_an_outside_op_reads_it_and_feeds_it_back():
    x = ag.input("x", (4, 4))
    a = (x * 2.0).exp()  # x -> a
    c = ag.softmax(a, axis=1)  # c = f(a), outside any group
    b = (a + c).tanh()  # b reads a and c: {a, b} in one group would need c before and after it
    g = ag.Graph([b.node])
    groups = find_fusion_groups(g)
    assert [ops(gr) for gr in groups] == [["mul", "exp"], ["add", "tanh"]]
    assert list(groups[0].outputs) == [a.node] and c.node in groups[1].inputs
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))
    # Without the op in between, the same chain is one group.
    d = (a + x).tanh()
    (merged,) = find_fusion_groups(ag.Graph([d.node]))
    assert ops(merged) == ["mul", "exp", "add", "tanh"]


def test_the_split_also_holds_through_another_group():
    x = ag.input("x", (4, 4))
    y = ag.input("y", (4, 4, 4))
    a = (x * 2.0).exp()
    c = (a * y).sum(axis=2)  # a reduction group over (4, 4, 4) reads a and feeds b
    b = (a - c).abs()
    g = ag.Graph([b.node])
    groups = find_fusion_groups(g)
    assert kinds(groups) == ["elementwise", "reduction_prologue", "elementwise"]
    assert [ops(gr) for gr in groups] == [["mul", "exp"], ["mul", "sum"], ["sub", "abs"]]
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))


def test_a_consumer_joins_the_group_it_can_join_without_a_cycle():
    x = ag.input("x", (4, 4))
    w = ag.input("w", (4, 4))
    a = (x * 2.0).exp()
    c = (a @ w + 1.0).sigmoid()  # the matmul reads a: b cannot join a's group ...
    b = (a - c).abs()  # ... but it can join the matmul's epilogue
    g = ag.Graph([b.node])
    groups = find_fusion_groups(g)
    assert [ops(gr) for gr in groups] == [["mul", "exp"], ["matmul", "add", "sigmoid", "sub", "abs"]]
    assert a.node in groups[1].inputs
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))


def test_random_ops_stay_outside_and_their_neighbours_still_fuse():
    x = ag.input("x", (16, 8))
    key = ag.input("key", (), "int64")
    keep = ag.apply("bernoulli", key, p=0.75, shape=(16, 8), dtype="float32")
    assert get_op("bernoulli").has(RANDOM)
    y = ((x * 2.0).exp() * keep / 0.75).sum()
    g = ag.Graph([y.node])
    (group,) = find_fusion_groups(g)
    assert keep.node not in group and keep.node in group.inputs
    assert ops(group) == ["mul", "exp", "mul", "div", "sum"]
    check_invariants(g, [group])


def test_effectful_ops_are_barriers():
    def build(op_name: str) -> ag.Graph:
        x = ag.input("x", (3,))
        y = x.exp()
        seen = ag.apply(op_name, y)  # an effectful op, e.g. a debug print
        z = (y * 2.0).tanh()  # after it in graph order, independent of it
        return ag.Graph([seen.node, z.node])

    with scratch_ops():
        for name, traits in (
            ("fusion_test_effect", (ELEMENTWISE, EFFECTFUL)),
            ("fusion_test_pure", (ELEMENTWISE,)),
        ):
            ag.define_op(name, infer=lambda t: t, kernel=lambda a: a, traits=traits)
        g = build("fusion_test_effect")
        groups = find_fusion_groups(g)
        assert [n.op for n in g.nodes if n.op not in LEAF_OPS] == ["exp", "fusion_test_effect", "mul", "tanh"]
        assert [ops(gr) for gr in groups] == [["mul", "tanh"]]  # exp stays before the effect
        check_invariants(g, groups)
        g = build("fusion_test_pure")  # the same graph with a pure op fuses across it
        (group,) = find_fusion_groups(g)
        assert ops(group) == ["exp", "fusion_test_pure", "mul", "tanh"]


def test_no_leaf_and_no_single_node_groups():
    x = ag.input("x", (3, 3))
    y = (x @ x).sum()  # matmul then a reduction: two anchors, nothing between them
    assert find_fusion_groups(ag.Graph([y.node])) == []
    assert find_fusion_groups(ag.Graph([x.node])) == []


def test_printing_shows_the_graph_lines():
    x = ag.input("x", (2, 3))
    y = (x * 2.0).exp().named("y")
    g = ag.Graph([y.node])
    (group,) = find_fusion_groups(g)
    lines = str(group).splitlines()
    names = g.names()
    assert lines[0] == f"fusion group 0 (elementwise): x {names[y.node.inputs[0].inputs[1].id]} -> (y)"
    assert lines[1:] == [f"    {g.format_node(n)}" for n in group.nodes]
    assert lines[2].strip().startswith("y:f32[2,3] = exp ")


def test_annotate_fusion_writes_meta_and_clears_stale_entries():
    x = ag.input("x", (4, 4))
    a = (x * 2.0).exp()
    c = ag.softmax(a, axis=1)
    b = (a + c).tanh()
    g = ag.Graph([b.node])
    c.node.meta["fusion_group"] = 7  # stale
    groups = annotate_fusion(g)
    assert [n.meta.get("fusion_group") for n in g.nodes if n.op not in LEAF_OPS] == [0, 0, None, 1, 1]
    assert len(groups) == 2


def test_the_graph_is_not_changed():
    x = ag.input("x", ("B", 4))
    w = ag.parameter(np.ones((4, 3), "float32"), name="w")
    y = (x @ w + 1.0).relu()
    g = ag.Graph([y.node])
    before = (str(g), [n.id for n in g.nodes])
    find_fusion_groups(g)
    assert (str(g), [n.id for n in g.nodes]) == before


# ----------------------------------------------------------------------------- models
def test_convolution_bias_and_activation_is_a_contraction_epilogue():
    rng = np.random.default_rng(2)
    x = ag.input("x", ("N", 2, 6, 6))
    w = rand_param(rng, (3, 2, 3, 3), "conv.weight")
    b = rand_param(rng, (3,), "conv.bias")
    y = ag.relu(ag.conv2d(x, w) + b.reshape(3, 1, 1))
    g = ag.Graph([y.node])
    groups = find_fusion_groups(g)
    conv = next(gr for gr in groups if gr.anchor is not None)
    assert conv.kind == "matmul_epilogue" and conv.anchor.op == "conv2d"
    assert ops(conv)[-2:] == ["add", "relu"] and conv.outputs == (y.node,)
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {"N": 2}))


def mlp(rng: np.random.Generator) -> tuple[ag.Tensor, ag.Tensor, list[ag.Tensor]]:
    x = ag.input("x", ("B", 12))
    target = ag.input("target", ("B", 4))
    params = [
        rand_param(rng, (12, 16), "fc1.w"),
        rand_param(rng, (16,), "fc1.b"),
        rand_param(rng, (16, 4), "fc2.w"),
        rand_param(rng, (4,), "fc2.b"),
    ]
    w1, b1, w2, b2 = params
    out = (x @ w1 + b1).relu() @ w2 + b2
    loss = ((out - target) ** 2).mean()
    return out, loss, params


def test_mlp_layer():
    out, _loss, _params = mlp(np.random.default_rng(0))
    g = ag.Graph([out.node])
    groups = find_fusion_groups(g)
    assert [ops(gr) for gr in groups] == [["matmul", "add", "relu"], ["matmul", "add"]]
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {"B": 8}))


def test_mlp_training_step():
    _out, loss, params = mlp(np.random.default_rng(1))
    grads = ag.grad(loss, params)
    g = run_passes(ag.Graph([loss.node, *(t.node for t in grads)]))
    groups = find_fusion_groups(g)
    # The forward's two matmul epilogues also compute what the backward reads of their values:
    # relu's mask (from the pre-activation) and the error terms of the squared loss.
    first, second = (
        gr
        for gr in groups
        if gr.anchor is not None and gr.anchor.inputs[1] in (params[0].node, params[2].node)
    )
    assert ops(first)[:3] == ["matmul", "add", "relu"] and "greater" in ops(first)
    assert len(first.outputs) == 2  # the activation and the mask
    assert ops(second)[:4] == ["matmul", "add", "sub", "pow"]
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {"B": 8}))


def gpt_block(B: int = 2, T: int = 4, C: int = 8, H: int = 2) -> tuple[ag.Tensor, ag.Tensor, list[ag.Tensor]]:
    """A pre-LN transformer block (nanoGPT's Block) built from asg.core ops, with a squared loss."""
    rng = np.random.default_rng(0)
    x = ag.input("x", (B, T, C))
    ln1_w, ln1_b = rand_param(rng, (C,), "ln_1.weight"), rand_param(rng, (C,), "ln_1.bias")
    attn_w, attn_b = (
        rand_param(rng, (C, 3 * C), "attn.c_attn.weight"),
        rand_param(rng, (3 * C,), "attn.c_attn.bias"),
    )
    proj_w, proj_b = rand_param(rng, (C, C), "attn.c_proj.weight"), rand_param(rng, (C,), "attn.c_proj.bias")
    ln2_w, ln2_b = rand_param(rng, (C,), "ln_2.weight"), rand_param(rng, (C,), "ln_2.bias")
    fc_w, fc_b = rand_param(rng, (C, 4 * C), "mlp.c_fc.weight"), rand_param(rng, (4 * C,), "mlp.c_fc.bias")
    fc2_w, fc2_b = rand_param(rng, (4 * C, C), "mlp.c_proj.weight"), rand_param(rng, (C,), "mlp.c_proj.bias")
    hs = C // H

    def heads(t: ag.Tensor) -> ag.Tensor:
        return t.reshape(B, T, H, hs).permute((0, 2, 1, 3))  # (B, nh, T, hs)

    qkv = ag.layer_norm(x, C, ln1_w, ln1_b) @ attn_w + attn_b  # (B, T, 3C)
    q, k, v = heads(qkv[:, :, :C]), heads(qkv[:, :, C : 2 * C]), heads(qkv[:, :, 2 * C :])
    mask = ag.constant(np.triu(np.full((T, T), -1e9, "float32"), 1))
    att = ag.softmax((q @ k.permute((0, 1, 3, 2))) * (1.0 / np.sqrt(hs)) + mask, axis=-1)  # (B, nh, T, T)
    y = (att @ v).permute((0, 2, 1, 3)).reshape(B, T, C)  # (B, T, C)
    x1 = x + (y @ proj_w + proj_b)
    out = x1 + ag.gelu(ag.layer_norm(x1, C, ln2_w, ln2_b) @ fc_w + fc_b) @ fc2_w + fc2_b
    loss = (out * out).mean()
    params = [ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b]
    return out, loss, params


def test_gpt_block_forward():
    out, _loss, _params = gpt_block()
    g = run_passes(ag.Graph([out.node]))
    groups = find_fusion_groups(g)
    # qkv + bias; scores * scale + mask; proj + bias + residual; fc + bias + gelu; fc2 + bias + residual
    assert [ops(gr) for gr in groups] == [
        ["matmul", "add"],
        ["matmul", "mul", "add"],
        ["matmul", "add", "add"],
        ["matmul", "add", "gelu"],
        ["matmul", "add", "add"],
    ]
    assert kinds(groups) == ["matmul_epilogue"] * 5
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))


def test_gpt_block_training_graph():
    _out, loss, params = gpt_block()
    grads = ag.grad(loss, params)
    g = run_passes(ag.Graph([loss.node, *(t.node for t in grads)]))
    groups = find_fusion_groups(g)
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}))
    covered = sum(len(gr) for gr in groups)
    computed = sum(1 for n in g.nodes if n.op not in LEAF_OPS)
    fusible = sum(1 for n in g.nodes if n.op not in LEAF_OPS and get_op(n.op).has(ELEMENTWISE))
    in_groups = sum(1 for gr in groups for n in gr.nodes if get_op(n.op).has(ELEMENTWISE))
    print(
        f"GPT block training graph: {len(groups)} groups cover {covered} of {computed} computed nodes "
        f"({in_groups} of its {fusible} elementwise nodes)"
    )
    # Every forward group is still there, and the gelu's gradient (an elementwise tree over the
    # pre-activation) joins the fc matmul's epilogue, which writes both the gelu and its derivative.
    gelu_group = next(gr for gr in groups if "gelu" in ops(gr))
    assert gelu_group.kind == "matmul_epilogue" and {"erf", "exp"} <= set(ops(gelu_group))
    assert len(gelu_group.outputs) == 2
    assert kinds(groups).count("matmul_epilogue") >= 5
    assert in_groups >= 0.6 * fusible


def test_gpt_block_training_groups_print():
    _out, loss, params = gpt_block()
    grads = ag.grad(loss, params)
    g = run_passes(ag.Graph([loss.node, *(t.node for t in grads)]))
    groups = find_fusion_groups(g)
    for group in groups:
        lines = str(group).splitlines()
        assert lines[0].startswith(f"fusion group {group.index} ({group.kind}")
        assert lines[1:] == [f"    {g.format_node(n)}" for n in group.nodes]


# ----------------------------------------------------------------------------- random graphs
def random_graph(seed: int) -> ag.Graph:
    """A random DAG of elementwise ops, matmuls, reductions, softmax and layer norms over (4, 4) values."""
    rng = np.random.default_rng(seed)
    values = [ag.input(f"x{i}", (4, 4)) for i in range(3)]
    for _ in range(int(rng.integers(8, 20))):
        pick = lambda: values[int(rng.integers(len(values)))]  # noqa: E731
        kind = rng.integers(8)
        if kind == 0:
            new = pick() @ pick()
        elif kind == 1:
            new = pick().sum(axis=1, keepdims=True) + pick()
        elif kind == 2:
            new = ag.softmax(pick(), axis=1)
        elif kind == 3:
            new = ag.layer_norm(pick(), 4)
        elif kind == 4:
            new = pick().tanh()
        elif kind == 5:
            new = pick() * pick()
        elif kind == 6:
            new = pick() - pick().exp()
        else:
            new = (pick() + 1.0).sigmoid()
        values.append(new)
    outputs = [values[-1], values[int(rng.integers(3, len(values)))]]
    return ag.Graph(list(dict.fromkeys(t.node for t in outputs)), [v.node for v in values[:3]])


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_keep_every_invariant(seed: int):
    g = random_graph(seed)
    groups = find_fusion_groups(g)
    check_invariants(g, groups)
    check_subgraphs(g, groups, random_feeds(g, {}, seed))


def test_docstring_examples():
    import doctest

    import asg.core.fusion as fusion

    result = doctest.testmod(fusion)
    assert result.attempted >= 20 and result.failed == 0


def test_time_is_linear_in_a_long_chain():
    x = ag.input("x", (3,))
    y = x
    for i in range(20_000):
        y = y * 1.5 if i % 2 else y.tanh()
    g = ag.Graph([y.node])
    start = time.perf_counter()
    (group,) = find_fusion_groups(g)
    elapsed = time.perf_counter() - start
    assert len(group) == 20_000
    assert elapsed < 5.0, f"{elapsed:.1f} s for a 20,000-node chain"  # 0.25 s here; quadratic took 74 s


def test_readme_section_runs_and_prints_what_it_says(capsys):
    from pathlib import Path

    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    text = readme.read_text().split("## Fusion groups and dtype narrowing\n", 1)[1].split("\n## ", 1)[0]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert capsys.readouterr().out.splitlines() == expected
