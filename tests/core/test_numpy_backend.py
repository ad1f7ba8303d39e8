"""The numpy executor: generated plans, error reporting, parameter updates and output aliasing."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import scratch_ops


def test_plan_runs_as_generated_code_after_a_checked_first_run():
    x = ag.input("x", ("B", 3))
    y = (x * 2.0 + 1.0).relu().sum(axis=1)
    f = ag.compile(y)
    data = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -9.0]], np.float32)
    first = f(data)
    plan = f.plan_for(data)
    assert plan._fast is not None and "def plan(feeds, params):" in plan.source
    np.testing.assert_allclose(f(data), first)
    np.testing.assert_allclose(first, np.maximum(data * 2 + 1, 0).sum(axis=1))


def test_plan_source_names_kernels_by_op_with_graph_lines_before_the_first_call():
    x = ag.input("x", ("B", 4))
    w = ag.parameter(np.ones((4, 3), np.float32), name="h.0.attn.w")
    h = (x @ w).named("h")
    f = ag.compile(ag.relu(h).sum(axis=1))
    plan = f.plan_for(np.ones((2, 4), np.float32))  # built, never run
    assert plan.source.splitlines() == [
        "def plan(feeds, params):",
        "    x, = feeds",
        "    h_0_attn_w, = params",
        "    h = matmul_0(x, h_0_attn_w)  # h:f32[B,3] = matmul x h_0_attn_w",
        "    del x, h_0_attn_w",
        "    a = relu_1(h)  # a:f32[B,3] = relu h",
        "    del h",
        "    b = sum_2(a)  # b:f32[B] = sum a",
        "    del a",
        "    return (b, ), ()",
    ]
    assert f(np.ones((2, 4), np.float32)).tolist() == [12.0, 12.0]


def test_kernel_failure_names_the_node_in_both_paths():
    table = ag.parameter(np.zeros((4, 2), np.float32), name="table")
    idx = ag.input("idx", (3,), "int64")
    f = ag.compile(ag.index_select(table, idx, 0).named("rows"))
    f(np.array([0, 1, 3]))  # builds and validates the plan
    for _ in range(2):  # the second time the generated fast path fails and is re-run step by step
        with pytest.raises(ag.ExecutionError) as info:
            f(np.array([0, 7, 1]))
        message = str(info.value)
        assert "while executing rows:f32[3,2] = index_select table idx" in message
        assert "index 7 is out of range for axis 0 of size 4" in message
        assert "test_numpy_backend.py" in message  # where the node was built


def test_updates_read_old_values_even_when_they_swap_parameters():
    a = ag.parameter(np.array([1.0, 2.0], np.float32), name="a")
    b = ag.parameter(np.array([3.0, 4.0], np.float32), name="b")
    step = ag.compile((a * b).sum(), updates={a: b, b: a})
    assert float(step()) == 11.0
    np.testing.assert_array_equal(a.numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(b.numpy(), [1.0, 2.0])


def test_outputs_never_alias_parameters_or_reused_buffers():
    w = ag.parameter(np.ones(3, np.float32), name="w")
    x = ag.input("x", (3,))
    h = (x + 1.0) * 2.0
    step = ag.compile([w, h.reshape((3, 1)), h], updates={w: w + h})
    held_w, held_view, held_h = step(np.zeros(3, np.float32))
    step(np.full(3, 5.0, np.float32))
    np.testing.assert_array_equal(held_w, np.ones(3))
    np.testing.assert_array_equal(held_view.ravel(), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(held_h, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(w.numpy(), [1 + 2 + 12] * 3)


def test_update_values_that_are_read_later_are_not_overwritten_before_the_copy():
    # m_new feeds both its own update and a later computation: its buffer must survive to the end.
    p = ag.parameter(np.full(4, 1.0, np.float32), name="p")
    m = ag.state(np.zeros(4, np.float32), name="m")
    g = ag.input("g", (4,))
    m_new = 0.5 * m + g
    tmp = (m_new * 3.0 + 1.0) * 2.0
    p_new = p - 0.1 * tmp
    step = ag.compile([], updates={m: m_new, p: p_new})
    step(np.full(4, 2.0, np.float32))
    np.testing.assert_allclose(m.numpy(), 2.0)
    np.testing.assert_allclose(p.numpy(), 1.0 - 0.1 * (2.0 * 3.0 + 1.0) * 2.0, rtol=1e-6)


def test_memory_planning_off_gives_the_same_training_trajectory():
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(16, 5)).astype(np.float32)
    yb = rng.integers(0, 3, 16)
    losses = []
    for planning in (True, False):
        x, y = ag.input("x", ("B", 5)), ag.input("y", ("B",), "int64")
        w = ag.parameter(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32), name="w")
        loss = ag.cross_entropy(ag.tanh(x @ w) * 2.0, y)
        (gw,) = ag.grad(loss, [w])
        step = ag.compile(loss, updates={w: w - 0.3 * gw}, memory_planning=planning)
        losses.append([float(step(xb, yb)) for _ in range(5)])
    np.testing.assert_array_equal(losses[0], losses[1])
    assert losses[0][-1] < losses[0][0]


def test_mixed_dtype_arithmetic_computes_in_the_inferred_dtype():
    i = ag.input("i", (3,), "int64")
    x = ag.input("x", (3,), "float32")
    f = ag.compile(i + x)
    for _ in range(2):
        out = f(np.array([1, 2, 3]), np.ones(3, np.float32))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [2, 3, 4])


def test_a_kernel_returning_the_wrong_dtype_is_an_error_naming_the_node():
    # The executor used to cast such results silently; a wrong dtype is a kernel bug.
    with scratch_ops():
        ag.define_op("test_widen", infer=lambda t: t, kernel=lambda a: a.astype(np.float64))
        x = ag.input("x", (2,))
        f = ag.compile(ag.apply("test_widen", x).named("wide") * 2.0)
        with pytest.raises(ag.ExecutionError) as info:
            f(np.ones(2, np.float32))
    assert str(info.value).startswith("while executing wide:f32[2] = test_widen x\n  built at ")
    assert str(info.value).endswith(
        "TypeError: the 'test_widen' kernel returned float64, but the dtype rule says float32 "
        "(a kernel bug: kernels must return the dtype their rule infers)"
    )


@pytest.mark.parametrize("memory_planning", [True, False])
def test_a_scalar_output_is_a_0d_array_on_every_call(memory_planning):
    x = ag.input("x", (3,))
    f = ag.compile([x.sum(), (x * 2.0).sum()], memory_planning=memory_planning)
    for call in range(3):  # the first call runs step by step, the others the generated code
        for out in f(np.arange(3, dtype=np.float32)):
            assert type(out) is np.ndarray and out.shape == () and out.dtype == np.float32, (call, type(out))
    assert [float(v) for v in f(np.ones(3, np.float32))] == [3.0, 6.0]


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"no backend named 'nope'; available: .*numpy"):
        ag.compile(ag.input("x", (1,)) * 2.0, backend="nope")


def test_threaded_elementwise_blocks_match_the_serial_result(monkeypatch):
    from asg.core.backends import numpy_backend

    monkeypatch.setattr(numpy_backend, "PARALLEL_MIN_ELEMENTS", 16)
    monkeypatch.setattr(numpy_backend, "_workers", lambda: 3)
    monkeypatch.setattr(numpy_backend, "_pool", None)
    x, y = ag.input("x", ("B", 8)), ag.input("y", (8,))
    h = x * y + x  # broadcast second operand, in-place chain
    z = ag.sigmoid(h) - h.T.T + ag.transpose(h.reshape((8, -1)))[:1, :1]
    f = ag.compile(z)
    rng = np.random.default_rng(0)
    xb, yb = rng.normal(size=(7, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    hb = xb * yb + xb
    want = 1 / (1 + np.exp(-hb)) - hb + hb.reshape(8, -1).T[:1, :1]
    for _ in range(2):
        np.testing.assert_allclose(f(xb, yb), want, rtol=1e-5, atol=1e-6)


def test_an_output_listed_twice_comes_back_as_two_arrays():
    x = ag.input("x", (2,))
    y = x * 2.0
    a, b = ag.compile([y, y])(np.ones(2, np.float32))
    a[0] = 100.0
    np.testing.assert_array_equal(b, [2.0, 2.0])


def test_integer_feeds_are_range_checked_when_narrowed():
    j = ag.input("j", (1,), "int32")
    f = ag.compile(j * 1)
    np.testing.assert_array_equal(f(np.array([7])), [7])
    with pytest.raises(ag.ShapeError, match="'j' is int32, but the array holds values outside its range"):
        f(np.array([2**40]))


def test_calling_a_function_without_inputs_with_arguments_explains_inputs():
    x = ag.input("x", (2,))
    (gx,) = ag.grad((x * 3.0).sum(), [x])  # constant gradient: no input reached
    with pytest.raises(TypeError, match=r"depend on no input; list the inputs to accept with compile"):
        ag.compile(gx)(np.ones(2, np.float32))
    np.testing.assert_array_equal(ag.compile(gx, inputs=[x])(np.ones(2, np.float32)), [3.0, 3.0])


def _optimizer_step(kind: str):
    """A one-parameter step of a fused optimizer op with several outputs; returns (step, state, names)."""
    from asg.core.ops import optim

    rng = np.random.default_rng(3)
    p = ag.parameter(rng.normal(size=(5, 4)).astype(np.float32), name="p")
    g = ag.input("g", (5, 4))
    lr = ag.state(np.float32(0.05), name="lr")
    t = ag.state(np.float32(3.0), name="t")
    state = {"param": p}
    if kind == "sgd":
        state["momentum_buffer"] = ag.state(rng.normal(size=(5, 4)).astype(np.float32), name="buf")
        new = optim.sgd_update(p, g, state["momentum_buffer"], t, lr=lr, momentum=0.9, nesterov=True)
    elif kind == "adam":
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            state[name] = ag.state(rng.uniform(0.1, 1.0, size=(5, 4)).astype(np.float32), name=name)
        new = optim.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], t, lr=lr, weight_decay=0.1,
                                decoupled_weight_decay=True, max_exp_avg_sq=state["max_exp_avg_sq"])  # fmt: skip
    else:
        for name, low, high in (
            ("square_avg", 0.5, 1.0),
            ("grad_avg", -0.3, 0.3),
            ("momentum_buffer", -1, 1),
        ):
            state[name] = ag.state(rng.uniform(low, high, size=(5, 4)).astype(np.float32), name=name)
        new = optim.rmsprop_update(p, g, state["square_avg"], state["grad_avg"], state["momentum_buffer"],
                                   lr=lr, momentum=0.5, centered=True, weight_decay=0.01)  # fmt: skip
    step = ag.compile([], inputs=[g], updates={state[k]: v for k, v in new.items()})
    return step, state, list(new)


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
def test_the_outputs_of_one_optimizer_op_come_from_one_kernel_call(kind, monkeypatch):
    from asg.core.registry import Kernel, get_op

    op = get_op(f"{kind}_update")
    original = op.kernels["numpy"]
    calls = []

    def spy(*arrays, **attrs):
        calls.append(attrs["output"])
        return original.fn(*arrays, **attrs)

    monkeypatch.setitem(op.kernels, "numpy", Kernel(spy, out_arg=original.out_arg))
    step, state, names = _optimizer_step(kind)
    before = {k: v.numpy().copy() for k, v in state.items()}
    grad = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    # the reference: the numpy kernel once per output, on the old values
    node = next(n for n in step.graph.nodes if n.op == f"{kind}_update")
    arrays = [grad if n.op == "input" else n.data.value.copy() for n in node.inputs]
    want = {name: original.fn(*arrays, **{**node.attrs, "output": name}) for name in names}
    calls.clear()
    for _ in range(2):  # the checked first run, then the generated code
        for k, v in state.items():
            v.assign(before[k])
        step(grad)
        assert calls == [tuple(names)]  # one call computing every output
        calls.clear()
        for name in names:
            np.testing.assert_array_equal(state[name].numpy(), want[name], err_msg=name)


def test_optimizer_updates_are_written_into_the_parameters_arrays_with_the_copying_path_s_values():
    step, state, names = _optimizer_step("adam")
    held = {k: v.numpy() for k, v in state.items()}  # the arrays users hold stay the parameters'
    grad = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)
    source = step.plan_for(grad).source
    assert "out=(p, exp_avg, exp_avg_sq, max_exp_avg_sq,)" in source  # written in place, no copy after
    twin, twin_state, _ = _optimizer_step("adam")
    for _ in range(3):
        step(grad)  # the first call is the checked run, then the generated code writing in place
        twin.profile(grad, update=True)  # step by step, each update copied into its parameter
    for name in names:
        assert state[name].numpy() is held[name]
        np.testing.assert_array_equal(held[name], twin_state[name].numpy(), err_msg=name)


def test_a_parameter_read_after_its_new_value_is_computed_is_not_written_in_place():
    p = ag.parameter(np.ones(3, np.float32), name="p")
    g = ag.input("g", (3,))
    p_new = p - 0.5 * g
    both = (p_new + p * 10.0).named("both")  # reads the old p after p_new's step
    f = ag.compile(both, updates={p: p_new})
    assert "out=" not in f.plan_for(np.ones(3, np.float32)).source
    for _ in range(2):
        out = f(np.ones(3, np.float32))
    np.testing.assert_array_equal(out, [0.5 * 1 - 0.5 + 5.0] * 3)  # p was 0.5 before the second call
    np.testing.assert_array_equal(p.numpy(), [0.0] * 3)


def test_a_failure_after_an_in_place_update_names_the_node_and_says_what_was_written():
    p = ag.parameter(np.ones(3, np.float32), name="p")
    g = ag.input("g", (3,))
    idx = ag.input("idx", (2,), "int64")
    p_new = p - 0.5 * g
    late = ag.index_select(p_new * 3.0, idx, 0).named("late")  # runs after p_new's step
    f = ag.compile(late, inputs=[g, idx], updates={p: p_new})
    assert "out=p)" in f.plan_for(np.ones(3, np.float32), np.array([0, 1])).source
    f(np.ones(3, np.float32), np.array([0, 1]))  # the checked first run
    with pytest.raises(ag.ExecutionError) as info:
        f(np.ones(3, np.float32), np.array([0, 9]))
    message = str(info.value)
    assert "while executing late:f32[2] = index_select" in message
    assert "the updates of p were already written in place" in message
    np.testing.assert_array_equal(p.numpy(), [0.0] * 3)  # updated once per call that got that far
