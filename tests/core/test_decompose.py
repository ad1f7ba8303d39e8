"""Decomposing fused ops into their formulas (passes/decompose.py) for backends that run those faster."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.passes import run_passes
from asg.core.passes.decompose import decomposable_ops, decompose

ATTENTION_FAMILY = {"attention", "attention_lse", "attention_grad_q", "attention_grad_k", "attention_grad_v"}


def _attention_step(dtype: str = "float32", causal: bool = True, masked: bool = False):  # type: ignore[no-untyped-def]
    q, k, v = (ag.input(n, (2, 3, 6, 4), dtype) for n in "qkv")
    mask = ag.input("mask", (2, 1, 1, 6), "bool") if masked else None
    out = ag.attention(q, k, v, mask, causal=causal)
    loss = ag.sum(ag.cast(out, "float32") ** 2)
    grads = ag.grad(loss, [q, k, v])
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return [out, *grads], inputs


def _feeds(inputs, dtype: str):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    feeds = [rng.normal(size=t.shape).astype(dtype) for t in inputs[:3]]
    if len(inputs) > 3:
        mask = np.ones(inputs[3].shape, bool)
        mask[0, ..., 4:] = False
        mask[1, ..., :] = False  # batch entry 1 attends nothing: outputs and gradients 0
        feeds.append(mask)
    return feeds


def test_every_attention_op_declares_its_formula() -> None:
    assert decomposable_ops() >= ATTENTION_FAMILY


def test_the_decomposed_graph_shares_one_copy_of_the_scores_and_probabilities() -> None:
    outs, _ = _attention_step()
    graph = run_passes(ag.Graph([t.node for t in outs]))
    counts = decompose(graph, ATTENTION_FAMILY).op_counts()
    assert not ATTENTION_FAMILY & set(counts)
    # q k^T once, then P v, dout v^T, dS k, dS^T q, P^T dout: the unfused formula's six products
    assert counts["matmul"] == 6
    assert counts["exp"] == 2  # exp(s - max) for the log-sum-exp, exp(s - lse) for P
    assert decompose(graph, set()) is graph
    assert decompose(graph, {"add"}) is graph  # ops without a formula are left alone


@pytest.mark.parametrize(
    ("dtype", "causal", "masked"),
    [("float32", True, False), ("float32", False, True), ("float64", True, True), ("float16", True, False)],
)
def test_decomposed_and_fused_give_the_same_values(dtype: str, causal: bool, masked: bool) -> None:
    outs, inputs = _attention_step(dtype, causal, masked)
    feeds = _feeds(inputs, dtype)
    fused = ag.compile(outs, inputs=inputs, options={"decompose": ()})(*feeds)
    unfused = ag.compile(outs, inputs=inputs, passes=[lambda g: decompose(run_passes(g), ATTENTION_FAMILY)])(
        *feeds
    )
    tol = {"float16": 2e-3, "float32": 2e-5, "float64": 1e-12}[dtype]
    for a, b in zip(fused, unfused, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol)
    if masked:
        for r in unfused:
            assert not np.any(r[1]), "a batch entry with no key gives 0 and zero gradients"


def test_formula_nodes_keep_the_name_and_scope_of_the_fused_node() -> None:
    q = ag.input("q", (1, 4, 8))
    with ag.scope("block.attn"):
        out = ag.attention(q, q, q, causal=True).named("context")
    graph = decompose(ag.Graph([out.node]), {"attention"})
    (result,) = graph.outputs
    assert result.name == "context"
    made = [n for n in graph.nodes if n.op not in ("input", "constant")]
    assert made and all(n.meta.get("scope") == "block.attn" for n in made)
