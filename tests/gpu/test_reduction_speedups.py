"""The reductions' parallel layouts against numpy: column sums whose second pass shares each
column's chunks among several invocations (bias and layer_norm weight gradients), and short rows
reduced several to a workgroup (sum, mean, max, min, argmax, argmin; fused prologues; float16).
Each result is also checked to be the same bits on a second run; a short row's sum is the one-row
kernel's tree of additions, so its bits too."""

import numpy as np
import pytest

import asg.core as ag
import asg.gpu.kernels.reduction as reduction
from asg.gpu.device import get_device
from asg.gpu.kernels.reduction import SHORT_WG, _tree_schedule, column_sum, column_sum_grids, short_layout

RNG = np.random.default_rng(11)


def _dispatches(f, *data):
    """(WGSL, grid) of each dispatch a step runs."""
    plan = f.plan_for(*data)
    return list(zip(plan.dispatch_sources(), plan.dispatch_grids(), strict=True))


@pytest.mark.parametrize(
    "shape",
    [(8192, 512), (8192, 1536), (1000, 77), (64, 2048), (3, 40), (70000, 33)],
    ids=["gpt-512", "gpt-1536", "odd", "few-rows", "tiny", "many-chunks"],
)
def test_column_sums_with_many_chunks_match_numpy_and_repeat_bitwise(shape):
    x = ag.input("x", shape)
    data = RNG.standard_normal(shape).astype(np.float32)
    f = ag.compile(ag.sum_to(x, shape[1:]), backend="wgpu")
    got = f(data)
    np.testing.assert_allclose(
        got, data.astype(np.float64).sum(0), rtol=1e-5, atol=2e-4 * np.sqrt(shape[0]) / 10
    )
    np.testing.assert_array_equal(f(data), got)  # a fixed order of additions: the same bits again
    (_, g1), (second, g2) = _dispatches(f, data)
    lanes = int(second.split("@workgroup_size(")[1].split(")")[0].split(",")[1])
    assert g2[0] * g2[1] * 256 // lanes >= shape[1]  # every column has its lanes
    assert lanes == 1 or lanes * 4 >= g1[1] > lanes * 2 or lanes == 64  # about 4 chunks a lane


def test_the_second_pass_shares_a_columns_chunks_among_lanes():
    # the GPT bias gradient: 8192 rows, 512 columns, 128 chunks of 64 rows
    (_, second), chunks = column_sum(8192, 512, ["in0[off]"], [("in0", "float32")], "float32")
    assert chunks == 128
    assert "@workgroup_size(8, 32)" in second  # 8 columns x 32 lanes, 4 chunks a lane
    assert second.count("workgroupBarrier()") == 2  # one before the tree, one per level (in its loop)
    _, g2 = column_sum_grids(512, chunks)
    assert g2 == (64, 1, 1)
    (_, second), chunks = column_sum(3, 40, ["in0[off]"], [("in0", "float32")], "float32")
    assert chunks == 1 and "workgroupBarrier" not in second  # one chunk: nothing to combine


@pytest.mark.parametrize(("lead", "feat"), [((32, 256), 512), ((3, 700), 96), ((5,), 80)])
def test_bias_gradients_through_sum_to_match_numpy(lead, feat):
    x = ag.input("x", (*lead, 24))
    w = ag.parameter(RNG.standard_normal((24, feat)).astype(np.float32) * 0.2, name="w")
    b = ag.parameter(RNG.standard_normal(feat).astype(np.float32), name="b")
    cot = RNG.standard_normal((*lead, feat)).astype(np.float32)
    loss = (ag.tanh(x @ w + b) * ag.constant(cot)).sum()
    grads = ag.grad(loss, [w, b])
    data = RNG.standard_normal((*lead, 24)).astype(np.float32)
    f = ag.compile(grads, inputs=[x], backend="wgpu")
    got, want = f(data), ag.compile(grads, inputs=[x])(data)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-3)
    for g, again in zip(got, f(data), strict=True):
        np.testing.assert_array_equal(g, again)


@pytest.mark.parametrize("rows", [4096, 37])
def test_layer_norm_weight_and_bias_gradients_with_many_chunks(rows):
    x = ag.input("x", (rows, 512))
    w = ag.parameter(RNG.standard_normal(512).astype(np.float32), name="w")
    b = ag.parameter(RNG.standard_normal(512).astype(np.float32), name="b")
    y = ag.layer_norm(x, (512,), weight=w, bias=b)
    loss = (y * ag.constant(RNG.standard_normal((rows, 512)).astype(np.float32))).sum()
    grads = ag.grad(loss, [w, b])
    data = RNG.standard_normal((rows, 512)).astype(np.float32)
    f = ag.compile(grads, inputs=[x], backend="wgpu")
    got, want = f(data), ag.compile(grads, inputs=[x])(data)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-3)
    for g, again in zip(got, f(data), strict=True):
        np.testing.assert_array_equal(g, again)
    if rows > 1000:  # the bias gradient summed in the weight gradient's column pass
        assert "layer_norm_weight_grad+sum_to" in [ops for _, ops in f.plan_for(data).dispatch_labels()]


REDUCERS = {
    "sum": (lambda x, a: ag.sum(x, axis=a), lambda d, a: d.astype(np.float64).sum(a)),
    "mean": (lambda x, a: ag.mean(x, axis=a), lambda d, a: d.astype(np.float64).mean(a)),
    "max": (lambda x, a: ag.max(x, axis=a), lambda d, a: d.max(a)),
    "min": (lambda x, a: ag.min(x, axis=a), lambda d, a: d.min(a)),
    "argmax": (lambda x, a: ag.argmax(x, axis=a), lambda d, a: d.argmax(a)),
    "argmin": (lambda x, a: ag.argmin(x, axis=a), lambda d, a: d.argmin(a)),
}


@pytest.mark.parametrize("kind", sorted(REDUCERS))
@pytest.mark.parametrize(
    ("shape", "axis"),
    [((32, 8, 16, 64), 3), ((6, 64, 24), 1), ((50, 61), 1), ((9, 100, 3), 1), ((40, 3), 1), ((7, 128), 1)],
    ids=["last-64", "middle-64", "last-61", "middle-100", "last-3", "last-128"],
)
def test_short_rows_match_numpy(kind, shape, axis):
    ours, theirs = REDUCERS[kind]
    x = ag.input("x", shape)
    data = RNG.standard_normal(shape).astype(np.float32)
    if kind.startswith("arg"):  # ties: the first index wins
        data[..., :2] = np.round(data[..., :2])
        data = np.round(data * 2) / 2
    f = ag.compile(ours(x, axis), backend="wgpu")
    got = f(data)
    if kind.startswith("arg"):
        np.testing.assert_array_equal(got, theirs(data, axis))
    else:
        np.testing.assert_allclose(got, theirs(data, axis), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(f(data), got)


@pytest.mark.parametrize("kind", ["max", "min", "argmax", "argmin"])
def test_short_rows_with_nans_follow_numpy(kind):
    ours, theirs = REDUCERS[kind]
    data = RNG.standard_normal((20, 64)).astype(np.float32)
    data[3, 17] = data[3, 40] = np.nan
    data[5, 63] = np.nan
    data[7, :] = np.nan
    x = ag.input("x", data.shape)
    got = ag.compile(ours(x, 1), backend="wgpu")(data)
    np.testing.assert_array_equal(got, theirs(data, 1))


@pytest.mark.parametrize("kind", ["sum", "max", "min", "argmax"])
def test_short_int32_rows_match_numpy(kind):
    ours, theirs = REDUCERS[kind]
    data = RNG.integers(-1000, 1000, (33, 45)).astype(np.int32)
    x = ag.input("x", data.shape, "int32")
    got = ag.compile(ours(x, 1), backend="wgpu")(data)
    np.testing.assert_array_equal(got, theirs(data, 1).astype(got.dtype))


@pytest.mark.skipif("shader-f16" not in get_device().features, reason="the adapter has no shader-f16")
@pytest.mark.parametrize("kind", ["sum", "max", "argmax"])
def test_short_float16_rows(kind):
    ours, theirs = REDUCERS[kind]
    data = RNG.standard_normal((16, 8, 64)).astype(np.float16)
    x = ag.input("x", data.shape, "float16")
    got = ag.compile(ours(x, -1), backend="wgpu")(data)
    want = theirs(data.astype(np.float32), -1)
    if kind == "argmax":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-2)


def test_attention_rowsum_is_one_fused_kernel_of_several_rows_a_workgroup():
    # D = rowsum(dO * O) of attention's backward, smaller: (2, 4, 256, 64) -> (2, 4, 256)
    shape = (2, 4, 256, 64)
    a, b = ag.input("a", shape), ag.input("b", shape)
    f = ag.compile(ag.sum(a * b, axis=-1), inputs=[a, b], backend="wgpu")
    da, db = (RNG.standard_normal(shape).astype(np.float32) for _ in range(2))
    got = f(da, db)
    want = (da.astype(np.float64) * db).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(f(da, db), got)
    assert [ops for _, ops in f.plan_for(da, db).dispatch_labels()] == ["mul+sum"]
    ((wgsl, grid),) = _dispatches(f, da, db)
    lanes, per_wg = short_layout(shape, (3,))
    assert (lanes, per_wg) == (16, 16)
    assert f"@workgroup_size({SHORT_WG})" in wgsl
    assert grid == (2 * 4 * 256 // per_wg, 1, 1)


@pytest.mark.parametrize("reduce", ["sum", "max", "argmin", "mean"])
def test_fused_prologue_of_a_short_row_stores_its_other_outputs(reduce):
    # the product is an output too: the prologue stores it as it computes each element
    x, y = ag.input("x", (12, 5, 48)), ag.input("y", (12, 5, 48))
    h = ag.tanh(x * y - 0.5)
    out = getattr(ag, reduce)(h, axis=2)
    f = ag.compile([h, out], inputs=[x, y], backend="wgpu")
    dx, dy = (RNG.standard_normal((12, 5, 48)).astype(np.float32) for _ in range(2))
    got, want = f(dx, dy), ag.compile([h, out], inputs=[x, y])(dx, dy)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-6, atol=1e-6)
    if reduce.startswith("arg"):
        np.testing.assert_array_equal(got[1], want[1])
    else:
        np.testing.assert_allclose(got[1], want[1], rtol=2e-6, atol=2e-6)
    assert f.plan_for(dx, dy).dispatch_count == 1


def test_a_strided_short_row_gets_one_invocation_a_row():
    assert short_layout((6, 64, 24), (1,)) == (1, SHORT_WG)
    assert short_layout((32, 8, 256, 64), (3,)) == (16, SHORT_WG // 16)
    assert short_layout((40, 3), (1,)) == (1, SHORT_WG)
    assert short_layout((7, 128), (1,)) == (32, SHORT_WG // 32)


def _stride_tree(per: int):
    """The one-row kernel's tree over ``per`` values (slot j + P/2 into j, then j + P/4 ...), as nested
    pairs, commutation ignored (a + b and b + a are the same float)."""
    size = 1 << max(0, (per - 1).bit_length())
    q = [f"v{j}" if j < per else None for j in range(size)]
    s = size // 2
    while s:
        for j in range(s):
            a, b = q[j], q[j + s]
            q[j] = a if b is None else b if a is None else frozenset([a, b])
        s //= 2
    return q[0]


@pytest.mark.parametrize("per", [*range(1, 41), 64, 100, 128])
def test_a_lanes_sum_is_the_one_row_kernels_tree(per):
    names: dict[str, object] = {}
    total = None
    loaded = set()
    for batch, adds in _tree_schedule(per):
        assert len(batch) <= reduction.BATCH
        loaded.update(batch)
        for line in adds:
            if line.startswith("acc = "):
                total = line.removeprefix("acc = ").removesuffix(";")
                continue
            dst, rhs = line.removeprefix("let ").removesuffix(";").split(" = ")
            a, b = rhs.split(" + ")
            for v in (a, b):  # every operand already loaded or computed
                assert v in names or int(v[1:]) in loaded
            names[dst] = frozenset([names.get(a, a), names.get(b, b)])
    assert loaded == set(range(per))
    assert names.get(total, total) == _stride_tree(per)


SHORT_SUMS = [
    ((2, 64, 4, 4), (0, 2, 3)),  # batch-norm statistics: strided, one lane a row
    ((2, 16, 2, 2), (0, 2, 3)),
    ((9, 100, 30), (1,)),
    ((4, 128, 64), (1,)),
    ((3, 7, 33), (0, 2)),
    ((300, 61), (1,)),  # contiguous: several lanes a row
    ((300, 128), (1,)),
    ((300, 32), (1,)),
    ((30, 5), (1,)),
    ((40, 127), (1,)),
]


@pytest.mark.parametrize("kind", ["sum", "mean"])
@pytest.mark.parametrize(("shape", "axes"), SHORT_SUMS, ids=[str(s) for s, _ in SHORT_SUMS])
def test_short_row_sums_are_the_one_row_kernels_bits(monkeypatch, kind, shape, axes):
    # the same order of additions as a workgroup a row, hence the same bits (and the same accuracy)
    data = (RNG.standard_normal(shape) * 10.0 ** RNG.uniform(-3, 3, shape)).astype(np.float32)
    x = ag.input("x", shape)
    got = ag.compile(getattr(ag, kind)(x, axis=axes), backend="wgpu")(data)
    monkeypatch.setattr(reduction, "SHORT", 0)
    want = ag.compile(getattr(ag, kind)(x, axis=axes), backend="wgpu")(data)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_strided_short_row_sum_is_more_accurate_than_a_running_sum():
    # (9, 100, 30) over the 100: the running sum's error grows with the count, the tree's with its log
    data = (RNG.standard_normal((9, 100, 30)) + 0.5).astype(np.float32)
    x = ag.input("x", data.shape)
    got = ag.compile(ag.sum(x, axis=1), backend="wgpu")(data).astype(np.float64)
    exact = data.astype(np.float64).sum(1)
    running = np.cumsum(data, axis=1, dtype=np.float32)[:, -1].astype(np.float64)
    assert np.abs(got - exact).mean() < 0.5 * np.abs(running - exact).mean()
