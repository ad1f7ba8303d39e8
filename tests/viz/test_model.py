"""asg-viz without Qt: edges, groups, forward/gradient roles, search, layout, SVG, loading, run data."""

from __future__ import annotations

import itertools
import re
import time

import numpy as np
import pytest

import asg.core as ag
from asg.viz import GraphModel, RunData, compute_layout, load_path, to_svg
from asg.viz.drawing import NONFINITE, build_drawing
from asg.viz.examples import gpt_training_step
from asg.viz.model import family_of
from asg.viz.sources import shown_ids


def _all_edges(graph: ag.Graph) -> set[tuple[int, int, int]]:
    return {(x.id, n.id, i) for n in graph.nodes for i, x in enumerate(n.inputs)}


def _svg_edges(svg: str) -> set[tuple[int, int, int]]:
    found = set()
    for refs in re.findall(r'data-edges="([^"]*)"', svg):
        for ref in refs.split():
            src, rest = ref.split(">")
            dst, index = rest.split("#")
            found.add((int(src), int(dst), int(index)))
    return found


def test_every_input_of_every_node_is_an_edge_drawn_in_the_svg(gpt):
    step, _ = gpt
    graph = step.graph
    model = GraphModel(graph)
    expected = _all_edges(graph)
    assert len(model.edges) == sum(len(n.inputs) for n in graph.nodes) == len(expected)
    ops = {n.op for n in graph.nodes}
    assert {"embedding", "layer_norm", "matmul", "softmax", "gelu", "masked_fill", "take_along_axis"} & ops
    visible = model.visible("both", set(model.groups))
    assert set(visible.items) == {n.id for n in graph.nodes}  # all expanded: every node is a box
    assert {(e.src, e.dst, e.index) for es in visible.edges.values() for e in es} == expected
    layout = compute_layout(visible)
    assert set(layout.routes) == set(visible.edges)
    svg = to_svg(build_drawing(model, visible, layout))
    assert _svg_edges(svg) == expected
    assert svg.count('class="edge"') == len(expected)  # one path per input, x * x gives two
    assert svg.count('class="node"') == len(graph.nodes)


def test_roles_follow_grad_of_and_modes_split_them(gpt):
    step, _ = gpt
    model = GraphModel(step.graph)
    roles = {k: n.role for k, n in model.nodes.items()}
    grads = [n for n in step.graph.nodes if "grad_of" in n.meta]
    assert grads and all(roles[n.id] == "gradient" for n in grads)
    assert all(model.nodes[n.id].grad_of == n.meta["grad_of"] for n in grads)
    # one SGD update per parameter: update nodes read gradients and are not gradient nodes
    updates = [k for k, r in roles.items() if r == "update" and model.nodes[k].op == "sub"]
    assert len(updates) == len(step.graph.parameters)
    fwd = model.visible("forward", set(model.groups))
    bwd = model.visible("gradient", set(model.groups))
    assert all(roles[k] == "forward" for k in fwd.rep)
    assert all(roles[k] != "forward" for k in bwd.rep)
    assert set(fwd.rep) | set(bwd.rep) == set(roles)
    both = model.visible("both", set(model.groups))
    # gradient nodes are linked to the forward nodes they differentiate
    expected = {(k, n.grad_of) for k, n in model.nodes.items() if n.grad_of is not None}
    assert len(expected) > 100 and both.grad_links == expected
    assert all(isinstance(a, int) and roles[b] == "forward" for a, b in both.grad_links)


def test_scopes_become_groups_with_one_box_per_block(gpt):
    step, _ = gpt
    model = GraphModel(step.graph)
    scopes = step.graph.scopes()
    forward_scopes = {s for s, nodes in scopes.items() if any("grad_of" not in n.meta for n in nodes)}
    assert {"transformer.h.0", "transformer.h.1", "transformer.h.0.attn"} <= forward_scopes
    visible = model.visible("forward", {"f:transformer", "f:transformer.h"})
    blocks = [k for k, it in visible.items.items() if it.is_group and str(k).startswith("f:transformer.h.")]
    assert blocks == ["f:transformer.h.0", "f:transformer.h.1"]
    n_block0 = sum(
        1
        for n in step.graph.nodes
        if (n.meta.get("scope") or "").startswith("transformer.h.0") and "grad_of" not in n.meta
    )
    assert visible.items["f:transformer.h.0"].lines == ("h.0", f"{n_block0} nodes")
    # the edges into a collapsed block stand for the graph edges entering it
    into = [e for (a, b), es in visible.edges.items() if b == "f:transformer.h.0" for e in es]
    inside = {
        n.id
        for n in step.graph.nodes
        if (n.meta.get("scope") or "").startswith("transformer.h.0.")
        or n.meta.get("scope") == "transformer.h.0"
    }
    assert into and all(e.dst in inside and e.src not in inside for e in into)
    assert ("f:transformer.h.0", "f:transformer.h.1") in visible.edges  # the residual stream


def test_module_weights_join_their_users_scope_and_optimizer_state_joins_the_updates():
    # asg-nn makes a weight before the module is called (no scope) and its optimizer state outside any
    # module: the zoo GPT's step opened with ~150 loose boxes in one row (a 16000 x 281 PNG).
    w = ag.parameter(np.ones((3, 2), "float32"), name="fc.weight")
    shared = ag.parameter(np.ones((2,), "float32"), name="shared")
    x = ag.input("x", ("B", 3))
    with ag.scope("net"):
        with ag.scope("fc"):
            h = (x @ w).relu()
        with ag.scope("out"):
            loss = (h * shared).sum()
    with ag.scope("other"):
        z = shared * 2.0
    (gw,) = ag.grad(loss, [w])
    m = ag.parameter(np.zeros((3, 2), "float32"), name="optim.fc.weight.exp_avg")
    step = ag.parameter(np.zeros((), "float32"), name="optim.fc.weight.step")
    m_new = m * 0.9 + gw
    step_new = step + 1.0
    w_new = w - m_new / step_new
    model = GraphModel(ag.Graph([loss.node, z.node, w_new.node, m_new.node, step_new.node]))
    info = model.nodes
    assert info[w.node.id].group == "f:net.fc" and info[w.node.id].role == "forward"
    assert info[shared.node.id].group is None  # read in net.out and in other: no common scope
    for t in (m, step, step_new, m_new, w_new):
        assert info[t.node.id].role == "update" and info[t.node.id].group == "u:", t.name
    assert info[x.node.id].group is None and info[x.node.id].role == "forward"


def test_ancestors_descendants_and_search():
    x = ag.input("x", (3,))
    w = ag.parameter(np.ones(3, "float32"), name="w")
    with ag.scope("blk"):
        h = (x * w).named("h")
        y = h.relu().named("y")
    z = (y + 1.0).named("z")
    other = (x * 3.0).named("other")
    model = GraphModel(ag.Graph([z.node, other.node]))
    assert model.ancestors(y.node.id) == {x.node.id, w.node.id, h.node.id}
    assert model.descendants(h.node.id) == {y.node.id, z.node.id}
    assert model.search("h")[0] == h.node.id  # the exact name first
    assert model.search("relu") == [y.node.id]
    assert set(model.search("BLK")) == {h.node.id, y.node.id}
    assert model.search("nothing-like-it") == []
    assert family_of("matmul") == "linalg" and family_of("layer_norm") == "normalization"


def test_layout_places_inputs_above_their_users(gpt):
    step, _ = gpt
    model = GraphModel(step.graph)
    for expanded in (set(), model.default_expanded(mode="both"), set(model.groups)):
        visible = model.visible("both", expanded)
        layout = compute_layout(visible)
        assert set(layout.boxes) == set(visible.items) | set(visible.frames)
        for a, b in visible.edges:
            assert layout.boxes[a].y + layout.boxes[a].h <= layout.boxes[b].y + 1e-6, (a, b)
        # boxes in one frame never overlap
        boxes = [(k, layout.boxes[k]) for k in visible.items]
        by_row: dict[float, list] = {}
        for _k, box in boxes:
            by_row.setdefault(round(box.y + box.h / 2, 3), []).append(box)
        for row in by_row.values():
            row.sort(key=lambda b: b.x)
            assert all(p.x + p.w <= q.x + 1e-6 for p, q in itertools.pairwise(row))


def test_a_graph_of_5000_nodes_opens_collapsed_and_lays_out_fast():
    step, _ = gpt_training_step(n_layer=30, n_embd=8, n_head=2, vocab=11, block=4)
    graph = step.graph
    assert len(graph.nodes) > 5000
    start = time.perf_counter()
    model = GraphModel(graph)
    expanded = model.default_expanded(mode="both")
    visible = model.visible("both", expanded)
    layout = compute_layout(visible)
    seconds = time.perf_counter() - start
    assert len(visible.items) <= 100
    assert any(str(k) == "f:transformer.h.29" for k in visible.items)  # one box per block
    assert len(layout.boxes) == len(visible.items) + len(visible.frames)
    assert seconds < 10.0, seconds


def test_graph_json_and_bundle_load_with_scopes_and_gradient_links(gpt, tmp_path):
    step, _ = gpt
    path = tmp_path / "gpt.json"
    path.write_text(step.graph.to_json(include_data=False))
    graph, function = load_path(path)
    assert function is None
    original, loaded = GraphModel(step.graph), GraphModel(graph)
    assert len(loaded.edges) == len(original.edges)
    assert sorted(loaded.groups) == sorted(original.groups)
    assert sorted(n.role for n in loaded.nodes.values()) == sorted(n.role for n in original.nodes.values())
    assert sum(n.grad_of is not None for n in loaded.nodes.values()) == sum(
        n.grad_of is not None for n in original.nodes.values()
    )
    bundle = tmp_path / "step.asg"
    step.save(bundle)
    graph2, function2 = load_path(bundle)
    assert function2 is not None and len(graph2.nodes) == len(step.graph.nodes)
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"format": "asg-graph", "version": 2, "nodes": [{"op": "nope"}], "inputs": [], "outputs": []}'
    )
    with pytest.raises(ValueError, match=r"bad\.json.*node 0"):
        load_path(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_path(tmp_path / "missing.json")
    (tmp_path / "runs").mkdir()  # a checkpoint folder of asg-zoo train
    with pytest.raises(FileNotFoundError, match=r"is a folder; give a graph JSON file .*--bundle model\.asg"):
        load_path(tmp_path / "runs")


def test_shown_ids_match_a_rewritten_run_graph_by_printed_name():
    from asg.core.passes.narrow import narrow_index_dtypes

    ids = ag.input("ids", ("B",), "int64")
    table = ag.parameter(np.arange(12, dtype="float32").reshape(4, 3), name="table")
    rows = (ag.embedding(ids, table) * 2.0).named("rows")
    shown = ag.Graph([rows.sum().node])
    ran = narrow_index_dtypes(shown)  # what a backend without int64 runs: new nodes, new ids
    assert ran is not shown and {n.id for n in ran.nodes} != {n.id for n in shown.nodes}
    mapping = shown_ids(ran, shown)
    by_id = {n.id: n for n in shown.nodes}
    assert sorted(mapping) == sorted(n.id for n in ran.nodes)
    for n in ran.nodes:
        assert by_id[mapping[n.id]].op == n.op and by_id[mapping[n.id]].shape == n.shape
    assert shown_ids(shown, shown) == {n.id: n.id for n in shown.nodes}


def test_run_data_profiles_captures_and_finds_the_first_nonfinite_node():
    x = ag.input("x", (4,))
    h = (x * 2.0).named("h")
    bad = ag.log(h).named("logh")
    f = ag.compile((bad * 3.0).sum())
    run = RunData.collect(f, np.array([1.0, -1.0, 2.0, 3.0], "float32"))
    assert abs(sum(run.share_by_id.values()) - 1.0) < 1e-6
    model = GraphModel(f.graph)
    h_key, key = model.by_printed()["h"], model.by_printed()["logh"]
    assert set(run.share_by_id) == {
        n.id for n in f.graph.nodes if n.op not in ("input", "parameter", "constant")
    }
    assert run.stats[h_key].min == -2.0 and run.stats[h_key].max == 6.0 and run.stats[h_key].nan == 0
    assert run.stats[key].nan == 1
    assert run.nonfinite == key and "logh" in run.nonfinite_message
    visible = model.visible("both", set(model.groups))
    drawing = build_drawing(model, visible, compute_layout(visible), nonfinite=key)
    assert [b.stroke for b in drawing.boxes if b.key == key] == [NONFINITE]
