"""The wgpu attention kernels (asg.gpu.kernels.attention) against asg-core's numpy kernels.

The op cases (tests/gpu/test_parity.py) use one block of rows; these shapes cross the kernels' 64-row
blocks, leave partial blocks (L, S, E not multiples of 16 or 64), skip causal blocks and read masks
with broadcast strides. check_op on wgpu compares the forward and the gradients of sum(out * c) with
respect to q, k and v, which run attention_lse and attention_grad_q/k/v. Shapes stay small: lavapipe
compiles every distinct kernel (about 0.3-0.7 s each). Every kernel variant ($ASG_WGPU_ATTN_VARIANT)
runs one case with odd sizes, causal rows that see no key and a fully masked entry; the two-output
kernels are run directly and compared with numpy, and the plan's merge of sibling key and value
gradients into one of them is checked.
"""

import numpy as np
import pytest

import asg.core as ag
from asg.core.lowering import LoweringContext
from asg.core.registry import OPS, TensorType
from asg.core.tensor import apply
from asg.core.testing import check_op
from asg.core.testing.op_cases.attention import attention_ref
from asg.gpu.backend import WgpuBackend, WgpuPlan
from asg.gpu.kernels import attention as attention_kernels
from asg.gpu.kernels.attention import (
    DEFAULT_VARIANT,
    FALLBACK_VARIANT,
    FUSED,
    INPUTS,
    ROLES,
    VARIANT_ENV,
    VARIANTS,
    Shapes,
    attention_wgsl,
    chunk_rows,
    default_variant,
    merged_attention,
    selected_variant,
    subgroup_size,
)


def _qkv(lead, length_q, length_k, e, ev, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((*lead, length_q, e)),
        rng.standard_normal((*lead, length_k, e)),
        rng.standard_normal((*lead, length_k, ev)),
    )


@pytest.mark.parametrize(
    ("length_q", "length_k", "e", "scale"), [(70, 70, 64, 0.2), (5, 9, 8, None), (9, 5, 8, None)]
)
def test_causal(length_q, length_k, e, scale):
    # L == S over two query and key blocks with GPT's head size; L < S; L > S, where the first L - S
    # rows see no key (0).
    q, k, v = _qkv((1, 2), length_q, length_k, e, e, seed=length_q)
    check_op(lambda q, k, v: ag.attention(q, k, v, causal=True, scale=scale), q, k, v, backend="wgpu")


def test_padding_mask_and_fully_masked_entry():
    # (B, 1, 1, S): each batch entry keeps other keys; entry 1 keeps none (its rows give 0).
    q, k, v = _qkv((2, 2), 6, 11, 16, 12, seed=1)
    mask = np.random.default_rng(2).random((2, 1, 1, 11)) > 0.4
    mask[1] = False
    check_op(ag.attention, q, k, v, mask, backend="wgpu")
    x = [ag.input(n, a.shape) for n, a in zip("qkv", (q, k, v), strict=True)]
    m = ag.input("m", mask.shape, "bool")
    f = ag.compile(ag.attention(*x, m), inputs=[*x, m], backend="wgpu")
    out = f(*(a.astype(np.float32) for a in (q, k, v)), mask)
    assert np.all(out[1] == 0.0)
    np.testing.assert_allclose(out[0], attention_ref(q, k, v, mask)[0], rtol=1e-4, atol=1e-5)


def test_odd_sizes_with_shared_mask_and_causal():
    # L=37, S=53, E=24, Ev=20: no size is a multiple of a block; the (L, S) mask broadcasts over (B, H).
    q, k, v = _qkv((2, 1), 37, 53, 24, 20, seed=3)
    mask = np.random.default_rng(4).random((37, 53)) > 0.3
    check_op(ag.attention, q, k, v, backend="wgpu")
    check_op(lambda q, k, v, m: ag.attention(q, k, v, m, causal=True), q, k, v, mask, backend="wgpu")


def test_head_dim_256_streams_fewer_rows():
    # E = Ev = 256 would pass 32 KiB of workgroup memory streaming 16 rows of v (k, q, dout): they take 8.
    sh = Shapes((1,), 40, 40, 256, 256, None)
    assert {chunk_rows(sh, ROLES[op]) for op in ROLES} == {8, 16}  # the lse kernel streams no rows
    q, k, v = _qkv((1,), 40, 40, 256, 256, seed=6)
    check_op(lambda q, k, v: ag.attention(q, k, v, causal=True), q, k, v, backend="wgpu")


def test_tiny_gpt_forward_and_backward():
    # Embedding, layer norm, fused qkv projection, causal attention over heads, output projection,
    # MLP and the next-token loss: the loss and every parameter gradient on wgpu match numpy.
    rng = np.random.default_rng(7)
    batch, length, width, heads, vocab = 2, 12, 32, 4, 17
    names = ("wte", "wpe", "w_qkv", "w_o", "w_fc", "w_proj")
    shapes = [
        (vocab, width),
        (length, width),
        (width, 3 * width),
        (width, width),
        (width, 4 * width),
        (4 * width, width),
    ]
    params = [
        ag.parameter((0.2 * rng.standard_normal(s)).astype(np.float32), name=n)
        for n, s in zip(names, shapes, strict=True)
    ]
    wte, wpe, w_qkv, w_o, w_fc, w_proj = params
    tokens = ag.input("tokens", (batch, length), "int32")
    targets = ag.input("targets", (batch, length), "int32")
    x = ag.embedding(tokens, wte) + wpe  # (B, T, C)
    q, k, v = ag.split(ag.layer_norm(x, width) @ w_qkv, width, axis=-1)  # 3 x (B, T, C)
    q, k, v = (ag.swapaxes(ag.reshape(t, (batch, length, heads, width // heads)), 1, 2) for t in (q, k, v))
    y = ag.attention(q, k, v, causal=True)  # (B, H, T, C / H)
    x = x + ag.reshape(ag.swapaxes(y, 1, 2), (batch, length, width)) @ w_o
    x = x + ag.gelu(ag.layer_norm(x, width) @ w_fc) @ w_proj
    logits = ag.layer_norm(x, width) @ ag.swapaxes(wte, 0, 1)  # (B, T, V), tied head
    loss = ag.cross_entropy(
        ag.reshape(logits, (batch * length, vocab)), ag.reshape(targets, (batch * length,))
    )
    outputs = [loss, *ag.grad(loss, params)]
    data = [rng.integers(0, vocab, (batch, length)).astype(np.int32) for _ in range(2)]
    want = ag.compile(outputs, inputs=[tokens, targets], backend="numpy")(*data)
    got = ag.compile(outputs, inputs=[tokens, targets], backend="wgpu")(*data)
    for name, g, w in zip(("loss", *names), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("length_q", "length_k"), [(0, 4), (4, 0)])
def test_empty_lengths(length_q, length_k):
    # No keys: every row gives 0 and zero gradients; no queries: the key and value gradients are 0.
    # (Against exact zeros: asg-core's numpy kernels cannot reshape these yet.)
    shapes = {"q": (2, length_q, 8), "k": (2, length_k, 8), "v": (2, length_k, 5)}
    q, k, v = (ag.input(n, s) for n, s in shapes.items())
    out = ag.attention(q, k, v)
    grads = ag.grad((out * out).sum() + out.sum(), [q, k, v])
    f = ag.compile([out, *grads], inputs=[q, k, v], backend="wgpu")
    rng = np.random.default_rng(8)
    got = f(*(rng.standard_normal(s).astype(np.float32) for s in shapes.values()))
    for g, shape in zip(got, [(2, length_q, 5), *shapes.values()], strict=True):
        assert g.shape == shape
        assert not np.any(g)


def test_too_wide_rows_are_refused_when_the_plan_is_built():
    q = ag.input("q", (1, 4, 600))
    f = ag.compile(ag.attention(q, q, q), backend="wgpu")
    with pytest.raises(ValueError, match=r"attention: query/key features E = 600 .*\(at most 576\)"):
        f(np.zeros((1, 4, 600), np.float32))


def test_default_variant_follows_the_subgroup_size(monkeypatch):
    # Subgroups of at least 16 invocations (the H200's 32) take sg-pf-k32; lavapipe's are 8 wide, where
    # its shuffles would fall back anyway, so the lowering takes pf-k32 there.
    monkeypatch.delenv(VARIANT_ENV, raising=False)
    size = subgroup_size()
    if "llvmpipe" in WgpuBackend().device().summary:
        assert size == 8
    assert default_variant() == (DEFAULT_VARIANT if size >= 16 else FALLBACK_VARIANT)
    assert selected_variant() == VARIANTS[default_variant()]
    monkeypatch.setenv(VARIANT_ENV, "base")
    assert selected_variant() == VARIANTS["base"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants(variant, monkeypatch):
    # L=53 > S=37 (causal: the first 16 rows see no key), E=24 and Ev=20 fill no block or slice, and
    # the (B, 1, 1, S) padding mask keeps no key of entry 1.
    monkeypatch.setenv(VARIANT_ENV, variant)
    q, k, v = _qkv((2, 2), 53, 37, 24, 20, seed=9)
    mask = np.random.default_rng(10).random((2, 1, 1, 37)) > 0.3
    mask[1] = False
    check_op(lambda q, k, v, m: ag.attention(q, k, v, m, causal=True), q, k, v, mask, backend="wgpu")


def _run(wgsl, grid, inputs, out_sizes):
    """The float32 outputs (of ``out_sizes`` elements) of one dispatch of ``wgsl`` binding
    ``inputs`` (arrays) and then the outputs."""
    dev = WgpuBackend().device()
    bufs = [dev.create_buffer(a.nbytes) for a in inputs] + [dev.create_buffer(4 * n) for n in out_sizes]
    for buf, a in zip(bufs, inputs, strict=False):
        dev.write(buf, a)
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    cpass.set_pipeline(dev.pipeline(wgsl, len(bufs)))
    cpass.set_bind_group(0, dev.bind_group(len(bufs), [(b, 0, b.size) for b in bufs]))
    cpass.dispatch_workgroups(*grid)
    cpass.end()
    dev.queue.submit([enc.finish()])
    outs = bufs[len(inputs) :]
    return [np.frombuffer(dev.read(b, 4 * n), np.float32) for b, n in zip(outs, out_sizes, strict=True)]


def _scaled_ds(q, k, v, g, scale=0.3):
    """float64 ``scale * dS`` of causal attention (``dS = P * (g v^T - delta)``; zero where masked)."""
    q, k, v, g = (a.astype(np.float64) for a in (q, k, v, g))
    s = scale * q @ np.swapaxes(k, -1, -2)
    seen = np.arange(k.shape[-2]) <= np.arange(q.shape[-2])[:, None] + k.shape[-2] - q.shape[-2]
    s = np.where(seen, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    delta = (g * out).sum(-1, keepdims=True)
    return scale * p * (g @ np.swapaxes(v, -1, -2) - delta)


def _reference(sh, seed):
    """q, k, v, dout (float32) and numpy's out, lse, delta, grad_k, grad_v, grad_q (causal, scale 0.3)."""
    q, k, v = _qkv(sh.batch, sh.L, sh.S, sh.E, sh.Ev, seed=seed)
    g = np.random.default_rng(seed + 1).standard_normal((*sh.batch, sh.L, sh.Ev))
    xs = [ag.input(n, a.shape) for n, a in zip("qkvg", (q, k, v, g), strict=True)]
    out = apply("attention", *xs[:3], causal=True, scale=0.3)
    lse = apply("attention_lse", *xs[:3], causal=True, scale=0.3)
    delta = (xs[3] * out).sum(-1)
    grads = [apply(f"attention_grad_{n}", *xs, lse, delta, causal=True, scale=0.3) for n in "kvq"]
    want = ag.compile([out, lse, delta, *grads], inputs=xs, backend="numpy")(q, k, v, g)
    return [a.astype(np.float32) for a in (q, k, v, g)], want


@pytest.mark.parametrize("variant", ["base", "regs-k32", "sg-pf-k32"])
def test_two_output_kernels(variant):
    # attention+lse writes the forward and its lse, attention_grad_kv the key and value gradients,
    # as numpy's attention, attention_lse, attention_grad_k and attention_grad_v give them;
    # attention_grad_kv+ds also scale * dS (zero where causal masking hides a key; S = 52 is a
    # multiple of 4, L = 37 > 16 rows see no key of the second block).
    sh = Shapes((2,), 37, 52, 24, 20, None)
    qkvg, want = _reference(sh, seed=11)
    arrays = dict(zip(INPUTS, (*qkvg, *want[1:3]), strict=True))
    ds = _scaled_ds(*qkvg)
    assert set(FUSED) == {"attention+lse", "attention_grad_kv", "attention_grad_kv+ds"}
    cases = [
        ("attention+lse", want[:2]),
        ("attention_grad_kv", want[3:5]),
        ("attention_grad_kv+ds", [*want[3:5], ds]),
    ]
    for op, expected in cases:
        wgsl, names, grid = attention_wgsl(op, sh, True, 0.3, VARIANTS[variant])
        outs = ["out", "out2", "out3"][: len(expected)]
        assert names[-len(outs) :] == outs
        got = _run(wgsl, grid, [arrays[n] for n in names[: -len(outs)]], [w.size for w in expected])
        for a, w in zip(got, expected, strict=True):
            np.testing.assert_allclose(a.reshape(w.shape), w, rtol=1e-4, atol=1e-5, err_msg=op)


def _run_program(prog, inputs, out_sizes):
    """The float32 outputs of a :class:`Program` whose dispatches bind ``("in", k)`` of ``inputs``,
    ``("out", j)`` (``out_sizes[j]`` elements) and its scratch buffers ``("tmp", t)``."""
    dev = WgpuBackend().device()
    bufs = {("in", k): dev.create_buffer(a.nbytes) for k, a in enumerate(inputs)}
    bufs |= {("out", j): dev.create_buffer(4 * n) for j, n in enumerate(out_sizes)}
    bufs |= {("tmp", t): dev.create_buffer(nb) for t, nb in enumerate(prog.temps)}
    for k, a in enumerate(inputs):
        dev.write(bufs["in", k], a)
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    for d in prog.dispatches:
        used = [bufs[a] for a in d.args]
        cpass.set_pipeline(dev.pipeline(d.wgsl, len(used)))
        cpass.set_bind_group(0, dev.bind_group(len(used), [(b, 0, b.size) for b in used]))
        cpass.dispatch_workgroups(*d.grid)
    cpass.end()
    dev.queue.submit([enc.finish()])
    return [np.frombuffer(dev.read(bufs["out", j], 4 * n), np.float32) for j, n in enumerate(out_sizes)]


@pytest.mark.parametrize("order", [(0, 1), (1, 0), (2, 3), (3, 2), (4, 2, 3), (3, 4, 2)])
def test_merged_attention(order, monkeypatch):
    # The helper the plan's merge of sibling nodes calls: the outputs, in the nodes' order, from the
    # inputs they bind (the query gradient with the others through the stored dS and a matmul); no
    # merged form for other sets, nor for all three gradients when dS would not fit the binding.
    sh = Shapes((2,), 37, 52, 24, 20, None)
    qkvg, want = _reference(sh, seed=13)
    inputs = (*qkvg, *want[1:3])
    ops = ["attention", "attention_lse", "attention_grad_k", "attention_grad_v", "attention_grad_q"]
    outs = dict(zip(ops, (want[0], want[1], want[3], want[4], want[5]), strict=True))
    order = [ops[k] for k in order]
    n_in = 3 if order[0].startswith("attention_lse") or order[0] == "attention" else 6
    types = tuple(TensorType(a.shape, "float32") for a in inputs[:n_in])
    ctxs = [
        LoweringContext(
            None,
            OPS[op],
            "wgpu",
            types,
            TensorType(outs[op].shape, "float32"),
            {"causal": True, "scale": 0.3},
            op,
            None,
        )
        for op in order
    ]
    prog = merged_attention(ctxs)
    assert len(prog.dispatches) == (2 if len(order) == 3 else 1)  # the kernel, then dq = dS @ k
    assert prog.temps == ([4 * 2 * 37 * 52] if len(order) == 3 else [])
    got = _run_program(prog, inputs[:n_in], [outs[op].size for op in order])
    for a, op in zip(got, order, strict=True):
        np.testing.assert_allclose(a.reshape(outs[op].shape), outs[op], rtol=1e-4, atol=1e-5, err_msg=op)
    assert merged_attention([ctxs[0], ctxs[0]]) is None
    if len(order) == 3:
        assert merged_attention(ctxs, max_binding=4 * 2 * 37 * 52 - 1) is None
        monkeypatch.setattr(attention_kernels, "DQ_MATMUL", False)
        assert merged_attention(ctxs) is None


def test_sibling_attention_nodes_run_as_one_dispatch(monkeypatch):
    # A causal attention and a masked one (L != S, sizes off the blocks), loss sum(out * c) over both:
    # each forward stores its lse for the backward (one dispatch at the forward's step), each pair of
    # key and value gradients is one dispatch at the later step (nothing reads them before), with the
    # query gradient as a matmul of the dS it stores where S is a multiple of 4 (the causal one's 40;
    # the masked one's 45 is not: its query gradient keeps its own kernel), and the loss and
    # gradients equal numpy's.
    rng = np.random.default_rng(14)
    qkv = [*_qkv((2, 2), 37, 40, 24, 20, seed=15), *_qkv((2, 2), 21, 45, 16, 12, seed=16)]
    params = [ag.parameter(a.astype(np.float32), name=f"p{k}") for k, a in enumerate(qkv)]
    mask = ag.input("mask", (2, 1, 1, 45), "bool")
    c0, c1 = (
        ag.constant(rng.standard_normal(s).astype(np.float32)) for s in [(2, 2, 37, 20), (2, 2, 21, 12)]
    )
    out0 = ag.attention(*params[:3], causal=True)
    out1 = ag.attention(*params[3:], mask, scale=0.4)
    loss = (out0 * c0).sum() + (out1 * c1).sum()
    outputs = [loss, *ag.grad(loss, params)]
    data = rng.random((2, 1, 1, 45)) > 0.3
    want = ag.compile(outputs, inputs=[mask], backend="numpy")(data)
    f = ag.compile(outputs, inputs=[mask], backend="wgpu")
    for name, g, w in zip(("loss", *(p.name for p in params)), f(data), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
    plan = f.plan_for(data)
    labels = [ops for _, ops in plan.dispatch_labels()]
    assert sum("attention_grad_k" in ops and "attention_grad_v" in ops for ops in labels) == 3
    assert sum(all(f"attention_grad_{n}" in ops for n in "qkv") for ops in labels) == 2  # kernel, matmul
    assert "attention_grad_k" not in labels and "attention_grad_v" not in labels
    assert labels.count("attention_grad_q") == 1
    assert labels.count("attention+attention_lse") == 2 and "attention_lse" not in labels
    merged_at = {index for index, ops in plan.dispatch_labels() if "attention_grad_k" in ops}
    merged_fwd = {index for index, ops in plan.dispatch_labels() if ops == "attention+attention_lse"}
    steps = {s.node.op: [] for s in plan.schedule.steps}
    for s in plan.schedule.steps:
        steps[s.node.op].append(s)
    firsts = {life.key: life.first for life in plan.lifetimes}
    for gk, gv in zip(steps["attention_grad_k"], steps["attention_grad_v"], strict=True):
        assert gk.inputs == gv.inputs
        assert max(gk.index, gv.index) in merged_at  # nothing reads either gradient before
        assert (firsts[gk.output], firsts[gv.output]) == (gk.index, gv.index)  # as run_traced writes them
    lse_of = {s.inputs: s for s in steps["attention_lse"]}
    assert len(lse_of) == len(steps["attention"]) == 2
    for fwd in steps["attention"]:
        assert fwd.index in merged_fwd
        assert firsts[lse_of[fwd.inputs].output] == fwd.index  # stored by the forward, read by the backward
    monkeypatch.setattr(WgpuPlan, "_merge_attention", lambda self, fused_at, skipped: set())
    unmerged = ag.compile(outputs, inputs=[mask], backend="wgpu").plan_for(data)
    assert unmerged.dispatch_count == plan.dispatch_count + 4


def test_the_query_gradient_matmul_with_a_by_subgroup_shuffles_reads_and_stores_in_place(monkeypatch):
    # the query gradient's matmul (dS @ K: A zero past the causal diagonal, K read in the qkv
    # projection, dQ stored into its gradient) with A's values passed by subgroup shuffles, as it runs
    # by default where subgroups are 16 wide or more; here at the device's size (lavapipe: 8)
    if attention_kernels.subgroup_size() == 0:
        pytest.skip("the device has no subgroup feature")
    monkeypatch.setenv("ASG_WGPU_MATMUL_SUBGROUPS", "1")
    test_heads_of_a_fused_projection_are_read_in_place(12)
    b, t, h, hs = 2, 40, 2, 12
    x = ag.input("x", (b, t, 3 * h * hs))
    q, k, v = (ag.reshape(z, (b, t, h, hs)).transpose(1, 2) for z in ag.chunk(x, 3, axis=2))
    loss = ag.attention(q, k, v, causal=True).sum()
    f = ag.compile(ag.grad(loss, [x]), inputs=[x], backend="wgpu")
    sources = f.plan_for(np.zeros((b, t, 3 * h * hs), np.float32)).dispatch_sources()
    assert any(src.startswith("// matmul") and " sg" in src.splitlines()[0] for src in sources)


@pytest.mark.parametrize("hs", [12, 6], ids=["vec4-heads", "odd-heads"])
def test_heads_of_a_fused_projection_are_read_in_place(hs):
    # GPT's split of one qkv projection into heads (chunk, reshape, transpose): the merged attention
    # kernels and the query gradient's matmul read q, k and v where the projection stored them, so
    # the heads' copies are not run, and store their gradients where the concatenation of the heads'
    # gradients puts them, so that does not run either; loss and gradients equal numpy's. Heads of 6 (offsets and
    # strides not multiples of 4) keep their copies.
    b, t, h = 2, 40, 2
    c = h * hs
    rng = np.random.default_rng(21)
    x = ag.parameter(rng.standard_normal((b, t, c)).astype(np.float32), name="x")
    w = ag.parameter((rng.standard_normal((c, 3 * c)) / np.sqrt(c)).astype(np.float32), name="w")
    weights = ag.constant(rng.standard_normal((b, h, t, hs)).astype(np.float32))
    q, k, v = (ag.reshape(z, (b, t, h, hs)).transpose(1, 2) for z in ag.chunk(x @ w, 3, axis=2))
    loss = (ag.attention(q, k, v, causal=True) * weights).sum()
    outputs = [loss, *ag.grad(loss, [x, w])]
    want = ag.compile(outputs, backend="numpy")()
    f = ag.compile(outputs, backend="wgpu")
    for name, got, expected in zip(("loss", "x", "w"), f(), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    plan = f.plan_for()
    labels = [ops for _, ops in plan.dispatch_labels()]
    copies = sum("slice_range" in ops and "transpose" in ops for ops in labels)
    assert copies == (0 if hs % 4 == 0 else 3)
    # the gradients of q, k and v are stored into their places in the projection's gradient
    assert sum("concat" in ops for ops in labels) == (0 if hs % 4 == 0 else 1)
    assert sum(all(f"attention_grad_{n}" in ops for n in "qkv") for ops in labels) == 2
    if hs % 4 == 0:  # the projection's output is bound by the forward kernel for q, k and v
        (qkv,) = [s.output for s in plan.schedule.steps if s.node.op == "matmul"][:1]
        fwd = plan.dispatch_labels().index(
            next(x for x in plan.dispatch_labels() if x[1] == "attention+attention_lse")
        )
        refs = [ref for kind, ref, _ in plan._dispatches[fwd][4] if kind == "value"]
        assert refs[:3] == [qkv] * 3
