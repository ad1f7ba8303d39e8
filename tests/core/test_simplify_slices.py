"""simplify: a sum of the gradients of pieces of one tensor (split, chunk, slicing) becomes one concat.

Each case compares the rewritten graph with the original bit for bit (``check_pass``) and checks the
graph's structure: one concat of the piece gradients, no full-size zeros or adds.
"""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.graph import Graph, Node
from asg.core.passes.fold import constant_folding
from asg.core.passes.simplify import simplify

from .test_passes import check_pass, graph_of, rand


def optimize(graph: Graph) -> Graph:
    return simplify(constant_folding(graph))


def weighted(pieces: list[ag.Tensor], w: ag.Tensor) -> ag.Tensor:
    """A loss reading every piece through its own nonlinearity (each piece gradient differs)."""
    total = ag.tanh(pieces[0] * w[..., : pieces[0].shape[-1]]).sum()
    for k, p in enumerate(pieces[1:], 2):
        total = total + (p * p * float(k)).sum()
    return total


def ops(graph: Graph, shape: tuple[int, ...]) -> list[str]:
    """The ops of ``graph``'s nodes of ``shape`` (the full-size tensor's)."""
    return [n.op for n in graph.nodes if n.shape == shape and n.op not in ("input", "parameter")]


def the_concat(graph: Graph) -> Node:
    (out,) = graph.outputs
    assert out.op == "concat", f"not one concat:\n{graph}"
    return out


@pytest.mark.parametrize("chunks", [3, 4])
def test_the_gradient_of_chunk_is_one_concat_of_the_pieces(chunks: int) -> None:
    shape = (2, 3, 4 * chunks)
    x, w = ag.input("x", shape), ag.input("w", (2, 3, 4))
    (gx,) = ag.grad(weighted(ag.chunk(x, chunks, axis=2), w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(*shape), rand(2, 3, 4))
    out = the_concat(after)
    assert out.attrs["axis"] == 2 and [i.shape for i in out.inputs] == [(2, 3, 4)] * chunks
    assert ops(after, shape) == ["concat"]  # no zeros, no adds of the full size


def test_uneven_split_along_the_first_axis() -> None:
    x, w = ag.input("x", (12, 5)), ag.input("w", (2, 5))
    pieces = ag.split(x, [2, 5, 1, 4], axis=0)
    (gx,) = ag.grad(weighted(pieces, w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(12, 5), rand(2, 5))
    out = the_concat(after)
    assert out.attrs["axis"] == 0 and [i.shape[0] for i in out.inputs] == [2, 5, 1, 4]
    assert ops(after, (12, 5)) == ["concat"]


def test_a_piece_without_gradient_is_zeros_of_its_own_shape() -> None:
    x, w = ag.input("x", (2, 3, 12)), ag.input("w", (2, 3, 4))
    q, _, v = ag.chunk(x, 3, axis=2)
    (gx,) = ag.grad(weighted([q, v], w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(2, 3, 12), rand(2, 3, 4))
    out = the_concat(after)
    assert [i.op for i in out.inputs][1] == "full" and out.inputs[1].shape == (2, 3, 4)
    assert ops(after, (2, 3, 12)) == ["concat"]


def test_pieces_not_covering_the_axis_leave_zeros_of_the_gaps() -> None:
    x, w = ag.input("x", (4, 12)), ag.input("w", (4, 3))
    pieces = [x[:, 0:3], x[:, 5:9], x[:, 9:10]]  # slicing: slice_backward gradients
    (gx,) = ag.grad(weighted(pieces, w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(4, 12), rand(4, 3))
    out = the_concat(after)
    assert [i.shape[1] for i in out.inputs] == [3, 2, 4, 1, 2]
    assert [i.op == "full" for i in out.inputs] == [False, True, False, False, True]


@pytest.mark.parametrize(
    "parts", [[(0, 6), (4, 12)], [(0, 4), (0, 4)], [(0, 4), (2, 3)]], ids=["overlap", "same", "inside"]
)
def test_overlapping_pieces_keep_their_adds(parts) -> None:
    x, w = ag.input("x", (4, 12)), ag.input("w", (4, 6))
    (gx,) = ag.grad(weighted([x[:, a:b] for a, b in parts], w), [x])
    graph = graph_of(gx, inputs=[x, w])
    after = optimize(graph)
    assert "concat" not in [n.op for n in after.nodes] and "add" in ops(after, (4, 12)), str(after)
    check_pass(optimize, graph, rand(4, 12), rand(4, 6), removes=len(graph) - len(after))


def test_pieces_tiling_two_axes() -> None:
    # x[:2, :3], x[:2, 3:], x[2:]: the two on the first rows are one concat along axis 1, that and the
    # last rows one along axis 0
    x, w = ag.input("x", (4, 6)), ag.input("w", (2, 3))
    (gx,) = ag.grad(weighted([x[:2, :3], x[:2, 3:], x[2:]], w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(4, 6), rand(2, 3))
    out = the_concat(after)
    assert out.attrs["axis"] == 0 and [i.shape for i in out.inputs] == [(2, 6), (2, 6)]
    top = out.inputs[0]
    assert top.op == "concat" and top.attrs["axis"] == 1 and [i.shape for i in top.inputs] == [(2, 3)] * 2
    assert ops(after, (4, 6)) == ["concat"]


def test_chunks_of_chunks() -> None:
    x, w = ag.input("x", (4, 6, 8)), ag.input("w", (2, 3, 4))
    pieces = [p for half in ag.chunk(x, 2, axis=2) for p in ag.chunk(half, 2, axis=0)]
    (gx,) = ag.grad(weighted([ag.chunk(p, 2, axis=1)[0] for p in pieces], w), [x])
    after = check_pass(optimize, graph_of(gx, inputs=[x, w]), rand(4, 6, 8), rand(2, 3, 4))
    assert ops(after, (4, 6, 8)) == ["concat"], str(after)
    assert {
        n.shape for n in after.nodes if n.op in ("add", "full", "constant") and n.shape and 0 not in n.shape
    } == {(2, 3, 4)}


def test_strided_pieces_and_symbolic_axes_are_left_alone() -> None:
    x, w = ag.input("x", (4, 12)), ag.input("w", (4, 6))
    (gx,) = ag.grad(weighted([x[:, 0::2], x[:, 1::2]], w), [x])
    assert "concat" not in [n.op for n in optimize(graph_of(gx, inputs=[x, w])).nodes]
    y = ag.input("y", ("B", 12))
    (gy,) = ag.grad(weighted(ag.chunk(y, 3, axis=1), ag.input("v", ("B", 4))), [y])
    after = optimize(graph_of(gy))  # a symbolic batch axis: the pieces still tile axis 1
    assert after.outputs[0].op == "concat", str(after)


def test_grad_of_grad_through_the_rewritten_concat() -> None:
    x, w = ag.input("x", (2, 9)), ag.input("w", (2, 3))
    (gx,) = ag.grad(weighted(ag.chunk(x, 3, axis=1), w), [x])
    data = [rand(2, 9).astype(np.float64), rand(2, 3).astype(np.float64)]
    x64, w64 = ag.input("x", (2, 9), "float64"), ag.input("w", (2, 3), "float64")
    (g64,) = ag.grad(weighted(ag.chunk(x64, 3, axis=1), w64), [x64])
    rewritten = ag.Tensor(the_concat(optimize(graph_of(g64, inputs=[x64, w64]))))
    (hx,) = ag.grad((rewritten * rewritten).sum(), [x64])  # differentiate the concat itself
    (want,) = ag.grad((g64 * g64).sum(), [x64])
    got_f, want_f = (ag.compile(h, inputs=[x64, w64], passes=[]) for h in (hx, want))
    np.testing.assert_allclose(got_f(*data), want_f(*data), rtol=1e-12, atol=1e-12)
    # and the default pipeline on the second-order graph of the float32 one matches no passes, bitwise
    (h32,) = ag.grad((gx * gx).sum(), [x])
    fast, plain = (ag.compile(h32, inputs=[x, w], passes=p) for p in (None, []))
    data32 = [d.astype(np.float32) for d in data]
    np.testing.assert_array_equal(fast(*data32), plain(*data32))
