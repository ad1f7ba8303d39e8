"""The fused attention ops (asg.core.ops.attention): forward, log-sum-exp and the three backward ops
against the unfused softmax formula in float64 and PyTorch's scaled_dot_product_attention; gradients
against float64 finite differences to second order; rows with no key; blocking; float16; errors;
the numpy-jit backend; ONNX export; and the memory the schedule plans against the unfused graph."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.testing.op_cases.attention import allowed_ref, attention_grads_ref, attention_ref, lse_ref

RNG = np.random.default_rng(0)
# ``asg.core.ops.attention`` is the function: the module is reached by its full name.
attention_module = importlib.import_module("asg.core.ops.attention")


def qkv(lead: tuple[int, ...], length_q: int, length_k: int, e: int = 8, ev: int = 5, dtype: str = "float64"):
    return tuple(
        RNG.standard_normal(shape).astype(dtype)
        for shape in ((*lead, length_q, e), (*lead, length_k, e), (*lead, length_k, ev))
    )


def inputs_like(*arrays: np.ndarray) -> list[ag.Tensor]:
    return [
        ag.input(name, a.shape, a.dtype) for name, a in zip(("q", "k", "v", "mask"), arrays, strict=False)
    ]


def unfused(q: ag.Tensor, k: ag.Tensor, v: ag.Tensor, mask=None, causal=False, scale=None) -> ag.Tensor:
    """The formula in ordinary core ops (the graph ag.attention replaces)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = ag.matmul(q, ag.swapaxes(k, -1, -2)) * scale
    allowed = attention_module.causal_allowed(q.shape[-2], k.shape[-2]) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        s = ag.where(allowed, s, -math.inf)
    return ag.matmul(ag.softmax(s, -1), v)


def padding(batch: int, length_k: int, seed: int = 1) -> np.ndarray:
    """A bool (B, 1, 1, S) padding mask keeping a prefix of each sequence (at least one key)."""
    lengths = np.random.default_rng(seed).integers(1, length_k + 1, batch)
    return (np.arange(length_k)[None, :] < lengths[:, None]).reshape(batch, 1, 1, length_k)


CONFIGS = {
    "plain_L_ne_S": dict(lead=(2, 3), length_q=5, length_k=9, causal=False, mask=None),
    "causal_square": dict(lead=(2, 3), length_q=7, length_k=7, causal=True, mask=None),
    "causal_L_lt_S": dict(lead=(2,), length_q=4, length_k=9, causal=True, mask=None),
    "causal_L_gt_S": dict(lead=(2,), length_q=9, length_k=4, causal=True, mask=None),
    "padding": dict(lead=(3, 2), length_q=6, length_k=8, causal=False, mask="padding"),
    "broadcast_causal": dict(lead=(2, 2), length_q=6, length_k=8, causal=True, mask="shared"),
    "two_dims": dict(lead=(), length_q=5, length_k=6, causal=False, mask="shared"),
}


def make_mask(kind: str | None, lead: tuple[int, ...], length_q: int, length_k: int) -> np.ndarray | None:
    if kind == "padding":
        return padding(lead[0], length_k)
    if kind == "shared":  # (1, ..., 1, L, S)
        return RNG.random((*(1,) * len(lead), length_q, length_k)) > 0.3
    return None


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_lse_match_the_float64_unfused_formula(name: str) -> None:
    c = CONFIGS[name]
    arrays = qkv(c["lead"], c["length_q"], c["length_k"])
    mask = make_mask(c["mask"], c["lead"], c["length_q"], c["length_k"])
    arrays = arrays if mask is None else (*arrays, mask)
    xs = inputs_like(*arrays)
    out = ag.attention(*xs, causal=c["causal"])
    lse = ag.apply("attention_lse", *xs, causal=c["causal"], scale=1.0 / math.sqrt(8))
    got_out, got_lse = ag.compile([out, lse], inputs=xs)(*arrays)
    np.testing.assert_allclose(got_out, attention_ref(*arrays, causal=c["causal"]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        got_lse, lse_ref(*arrays[:2], mask, causal=c["causal"]), rtol=1e-12, atol=1e-12
    )
    assert out.shape == (*c["lead"], c["length_q"], 5) and lse.shape == (*c["lead"], c["length_q"])


def test_symbolic_dims_one_function_for_every_length() -> None:
    q, k, v = (ag.input(n, ("B", 2, "T", 4)) for n in "qkv")
    out = ag.attention(q, k, v, causal=True)
    assert out.shape == ("B", 2, "T", 4)
    f = ag.compile(out)
    for b, t in ((1, 3), (2, 7)):
        arrays = qkv((b, 2), t, t, e=4, ev=4, dtype="float32")
        np.testing.assert_allclose(f(*arrays), attention_ref(*arrays, causal=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("budget", "sizes"),
    [(29 * 16, {(1, 16), (1, 5)}), (37 * 29 * 4, {(4, 37), (3, 37)})],
    ids=["16_rows_per_block", "4_entries_per_block"],
)
def test_blocks_over_rows_and_heads_give_the_unblocked_result(
    monkeypatch: pytest.MonkeyPatch, budget: int, sizes: set
) -> None:
    """A small block budget splits the query rows (37 = 16 + 16 + 5) or the 15 (B, H) entries
    (4 + 4 + 4 + 3); the ragged edges, the mask rows and the causal offsets must line up."""
    arrays = qkv((3, 5), 37, 29)
    mask = np.random.default_rng(3).random((3, 1, 37, 29)) > 0.2
    cot = RNG.standard_normal((3, 5, 37, 5))

    def run() -> list[np.ndarray]:
        xs = inputs_like(*arrays, mask)
        out = ag.attention(*xs, causal=True)
        return ag.compile([out, *ag.grad((out * cot).sum(), xs[:3])], inputs=xs)(*arrays, mask)

    whole = run()
    monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", budget)
    blocks = list(attention_module._Blocks(*arrays, [mask], causal=True, scale=1.0))
    assert {(ns.stop - ns.start, rs.stop - rs.start) for ns, rs, _ in blocks} == sizes
    assert all(ks.stop == min(29, rs.stop + 29 - 37) for _, rs, ks in blocks)  # keys up to the diagonal
    blocked = run()
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(whole[0], attention_ref(*arrays, mask, causal=True), rtol=1e-12, atol=1e-12)


def test_causal_blocks_skip_the_keys_above_the_diagonal_and_rows_with_none() -> None:
    q, k, v = qkv((1,), 200, 150)  # L > S: the first 50 rows see no key
    blocks = list(attention_module._Blocks(q, k, v, [], causal=True, scale=1.0))
    assert [(rs.start, rs.stop, ks.stop) for _, rs, ks in blocks] == [
        (0, 64, 14),
        (64, 128, 78),
        (128, 192, 142),
        (192, 200, 150),
    ]
    blocks = list(attention_module._Blocks(k, q, q, [], causal=True, scale=1.0))  # L = 150 < S = 200
    assert [ks.stop for _, _, ks in blocks] == [114, 178, 200]


# ----------------------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("name", ["plain_L_ne_S", "causal_square", "padding", "broadcast_causal"])
def test_forward_and_gradients_match_torch_sdpa(name: str) -> None:
    torch = agt.torch_or_skip
    c = CONFIGS[name]
    arrays = qkv(c["lead"], c["length_q"], c["length_k"], dtype="float32")
    mask = make_mask(c["mask"], c["lead"], c["length_q"], c["length_k"])
    xs = inputs_like(*arrays) + ([] if mask is None else [ag.input("mask", mask.shape, "bool")])
    out = ag.attention(*xs, causal=c["causal"])
    cot = RNG.standard_normal(out.shape).astype(np.float32)
    f = ag.compile([out, *ag.grad((out * cot).sum(), xs[:3])], inputs=xs)
    got = f(*arrays) if mask is None else f(*arrays, mask)

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays)
    t_mask = None if mask is None else torch.tensor(mask)
    is_causal = c["causal"] and t_mask is None  # torch's is_causal is ours when L == S
    if c["causal"] and t_mask is not None:
        t_mask = t_mask & torch.tensor(allowed_ref(c["length_q"], c["length_k"], causal=True))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=t_mask, is_causal=is_causal)
    (want * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(got[0], want.detach().numpy(), rtol=1e-5, atol=1e-6)
    for g, t in zip(got[1:], (tq, tk, tv), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_to_second_order_against_finite_differences(causal: bool, masked: bool) -> None:
    arrays = qkv((2, 1), 3, 4, e=3, ev=2)
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 0]], bool).reshape(2, 1, 1, 4) if masked else None

    def fn(q, k, v):
        return ag.attention(q, k, v, None if mask is None else ag.constant(mask), causal=causal)

    ag.check_grads(fn, arrays, order=2, rtol=1e-5, atol=1e-7)


def test_the_gradient_builds_the_fused_backward_ops_and_no_scores() -> None:
    xs = inputs_like(*qkv((2, 2), 6, 6, dtype="float32"))
    out = ag.attention(*xs, causal=True)
    grads = ag.grad((out * out).sum(), xs)
    nodes = ag.Graph([t.node for t in [out, *grads]]).nodes
    assert {"attention_lse", "attention_grad_q", "attention_grad_k", "attention_grad_v"} <= {
        n.op for n in nodes
    }
    assert not [n for n in nodes if n.shape[-2:] == (6, 6)], "no (L, S) value in the fused graph"


def test_backward_ops_equal_the_formulas_with_any_lse_and_delta() -> None:
    q, k, v = qkv((2, 2), 5, 7)
    dout, lse, delta = (RNG.standard_normal(s) for s in ((2, 2, 5, 5), (2, 2, 5), (2, 2, 5)))
    mask = padding(2, 7)
    arrays = (q, k, v, dout, lse, delta, mask)
    xs = [ag.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = [ag.apply(f"attention_grad_{w}", *xs, causal=True, scale=0.4) for w in "qkv"]
    got = ag.compile(outs, inputs=xs)(*arrays)
    for g, want in zip(got, attention_grads_ref(*arrays, causal=True, scale=0.4), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- rows with no key
def test_a_fully_masked_row_gives_zero_output_zero_gradients_and_lse_minus_inf() -> None:
    q, k, v = qkv((2, 2), 4, 5)
    mask = np.ones((2, 1, 4, 5), bool)
    mask[0, 0, 1] = False  # batch 0, query row 1 sees no key
    mask[1] = False  # batch 1 sees nothing
    xs = inputs_like(q, k, v, mask)
    out = ag.attention(*xs)
    lse = ag.apply("attention_lse", *xs, causal=False, scale=0.5)
    got = ag.compile([out, lse, *ag.grad((out * out).sum(), xs[:3])], inputs=xs)(q, k, v, mask)
    assert all(np.isfinite(g).all() for i, g in enumerate(got) if i != 1)
    np.testing.assert_array_equal(got[0][0, :, 1], 0.0)
    np.testing.assert_array_equal(got[0][1], 0.0)
    assert np.isneginf(got[1][0, :, 1]).all() and np.isneginf(got[1][1]).all()
    assert np.isfinite(got[1][0, :, [0, 2, 3]]).all()
    np.testing.assert_array_equal(got[2][0, :, 1], 0.0)  # dq of the row with no key
    for g in got[2:]:
        np.testing.assert_array_equal(g[1], 0.0)  # nothing flows where nothing is attended
    np.testing.assert_allclose(got[0], attention_ref(q, k, v, mask), rtol=1e-12, atol=1e-12)
    ag.check_grads(lambda a, b, c: ag.attention(a, b, c, ag.constant(mask)), [q, k, v], order=2)


# ----------------------------------------------------------------------------- float16
def test_float16_computes_in_float32_and_returns_float16() -> None:
    arrays = qkv((2, 2), 16, 24, dtype="float16")
    mask = padding(2, 24)
    xs = inputs_like(*arrays, mask)
    out = ag.attention(*xs, causal=True)
    lse = ag.apply("attention_lse", *xs, causal=True, scale=1 / math.sqrt(8))
    grads = ag.grad((ag.cast(out, "float32") ** 2.0).sum(), xs[:3])
    assert out.dtype == "float16" and lse.dtype == "float32" and [g.dtype for g in grads] == ["float16"] * 3
    got = ag.compile([out, lse, *grads], inputs=xs)(*arrays, mask)
    wide = [a.astype(np.float64) for a in arrays]
    np.testing.assert_allclose(got[0], attention_ref(*wide, mask, causal=True), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(got[1], lse_ref(*wide[:2], mask, causal=True), rtol=1e-5, atol=1e-5)
    xs64 = inputs_like(*wide, mask)
    out64 = ag.attention(*xs64, causal=True)
    want = ag.compile(ag.grad((out64 * out64).sum(), xs64[:3]), inputs=xs64)(*wide, mask)
    for g, w in zip(got[2:], want, strict=True):
        np.testing.assert_allclose(g.astype(np.float64), w, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------- errors
def _q(shape=(2, 3, 4, 8), dtype="float32", name="q") -> ag.Tensor:
    return ag.input(name, shape, dtype)


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (
            lambda: ag.attention(_q(), _q(name="k"), _q((2, 3, 5, 8), name="v")),
            ag.ShapeError,
            ["S = 4 and 5"],
        ),
        (
            lambda: ag.attention(_q(), _q((2, 3, 4, 6), name="k"), _q(name="v")),
            ag.ShapeError,
            ["E = 8 and 6"],
        ),
        (
            lambda: ag.attention(_q(), _q((2, 2, 4, 8), name="k"), _q(name="v")),
            ag.ShapeError,
            ["leading dims"],
        ),
        (lambda: ag.attention(_q(), _q((3, 4, 8), name="k"), _q(name="v")), ag.ShapeError, ["same number"]),
        (lambda: ag.attention(_q(), _q(name="k", dtype="float64"), _q(name="v")), ag.DTypeError, ["float64"]),
        (lambda: ag.attention(_q(dtype="int64"), _q(name="k"), _q(name="v")), ag.DTypeError, ["floating"]),
        (
            lambda: ag.attention(_q(), _q(name="k"), _q(name="v"), ag.input("m", (2, 1, 1, 4), "float32")),
            ag.DTypeError,
            ["must be bool"],
        ),
        (
            lambda: ag.attention(_q(), _q(name="k"), _q(name="v"), ag.input("m", (2, 1, 3, 4), "bool")),
            ag.ShapeError,
            ["does not broadcast", "(2, 3, 4, 4)"],
        ),
        (
            lambda: ag.attention(_q(("B", "T", "E")), _q(name="k"), _q(name="v")),
            ag.ShapeError,
            ["pass scale="],
        ),
    ],
    ids=["S", "E", "lead", "ndim", "dtype", "int", "float_mask", "mask_shape", "symbolic_E"],
)
def test_bad_inputs_are_refused_at_build_time_naming_the_op_and_tensors(build, error, words) -> None:
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    assert message.startswith("attention") and "q (" in message, message
    for word in words:
        assert word in message, message


def test_backward_op_refuses_an_lse_of_the_wrong_dtype() -> None:
    q, k, v = _q(dtype="float16"), _q(name="k", dtype="float16"), _q(name="v", dtype="float16")
    dout = _q(name="dout", dtype="float16")
    bad = ag.input("lse", (2, 3, 4), "float16")
    with pytest.raises(ag.DTypeError, match=r"attention_grad_q: .*lse has dtype float16, expected float32"):
        ag.apply("attention_grad_q", q, k, v, dout, bad, bad, causal=False, scale=1.0)


# ----------------------------------------------------------------------------- other backends and export
def test_numpy_jit_backend_runs_the_ops_and_matches_numpy() -> None:
    arrays = qkv((2, 2), 6, 9, dtype="float32")
    mask = padding(2, 9)

    def fn(q, k, v, m):
        return ag.gelu(ag.attention(q, k, v, m, causal=True) * 2.0 + 1.0)

    agt.check_op(fn, *arrays, mask, order=0, backend="numpy-jit", backend_rtol=1e-6, backend_atol=1e-6)


def test_onnx_export_runs_in_onnxruntime_at_two_lengths(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from asg.core.export import to_onnx

    q, k, v = (ag.input(n, ("B", 2, "T", 4)) for n in "qkv")
    mask = ag.input("mask", ("B", 1, 1, "T"), "bool")
    f = ag.compile(ag.attention(q, k, v, mask, causal=True), inputs=[q, k, v, mask])
    to_onnx(f, tmp_path / "attention.onnx")
    session = ort.InferenceSession(str(tmp_path / "attention.onnx"), providers=["CPUExecutionProvider"])
    for b, t in ((1, 3), (2, 6)):
        arrays = qkv((b, 2), t, t, e=4, ev=4, dtype="float32")
        m = padding(b, t, seed=t)
        m[0, ..., 0] = False  # row 0 of batch 0 then sees no key: 0, as ASG
        (got,) = session.run(None, dict(zip("qkv", arrays, strict=True), mask=m))
        np.testing.assert_allclose(got, f(*arrays, m), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- memory
def test_the_fused_training_graph_plans_less_memory_than_the_unfused_one() -> None:
    """GPT-like attention (B=8, H=4, T=256, E=32): the unfused graph keeps (B, H, T, T) scores and
    probabilities for the backward pass; the fused one keeps only (B, H, T) row statistics. (The numpy
    backend decomposes the fused ops by default, for speed: ``decompose=()`` keeps them fused.)"""
    shape = (8, 4, 256, 32)
    arrays = [RNG.standard_normal(shape).astype(np.float32) for _ in range(3)]
    figures = {}
    for name, build in (("fused", ag.attention), ("unfused", unfused)):
        xs = inputs_like(*arrays)
        out = build(*xs, causal=True)
        f = ag.compile([out, *ag.grad((out * out).sum(), xs)], inputs=xs, options={"decompose": ()})
        figures[name] = f.plan_for(*arrays).schedule
    scores = 8 * 4 * 256 * 256 * 4  # one (B, H, T, T) float32 value
    assert figures["fused"].peak_bytes() < scores <= figures["unfused"].peak_bytes()
    assert figures["fused"].memory.bytes() < figures["unfused"].memory.bytes()


@pytest.mark.parametrize(("length", "keys"), [(0, 4), (3, 0), (0, 0)])
def test_empty_lengths_give_empty_or_zero_results(length: int, keys: int) -> None:
    # no queries: empty outputs; no keys: every row attends nothing, so 0 and zero gradients
    q, k, v = ag.input("q", (2, length, 8)), ag.input("k", (2, keys, 8)), ag.input("v", (2, keys, 5))
    out = ag.attention(q, k, v)
    step = ag.compile([out, *ag.grad(out.sum(), [q, k, v])], inputs=[q, k, v])
    rng = np.random.default_rng(0)
    values = step(*(rng.normal(size=t.shape).astype(np.float32) for t in (q, k, v)))
    assert [r.shape for r in values] == [(2, length, 5), (2, length, 8), (2, keys, 8), (2, keys, 5)]
    for r in values:
        np.testing.assert_array_equal(r, np.zeros_like(r))
