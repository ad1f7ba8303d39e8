"""The backend boundary: lowering, schedule, storage, capabilities and options, through a toy backend.

``numpy-copy`` is a second backend registered only for these tests: its lowerings wrap the numpy
kernels, its plans run the core schedule with their own loop, and its storage keeps its own copies
of parameters, so every read and write of a parameter must go through the storage interface.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import base
from asg.core.graph import Variable
from asg.core.schedule import Schedule
from asg.core.storage import Storage, claim_all
from asg.core.testing import scratch_ops


class CopyStorage(Storage):
    """Parameters live in this object's own arrays; the host array is refreshed only when asked."""

    def __init__(self) -> None:
        self.arrays: dict[Variable, np.ndarray] = {}
        self.newer: set[Variable] = set()
        self.log: list[tuple[str, str | None]] = []

    def upload(self, var: Variable) -> None:
        self.log.append(("upload", var.name))
        self.arrays[var] = np.array(var._value)

    def sync_to_host(self, var: Variable) -> None:
        if var in self.newer:
            self.log.append(("download", var.name))
            np.copyto(var._value, self.arrays[var])
            self.newer.discard(var)

    def write(self, var: Variable) -> None:
        self.log.append(("write", var.name))
        self.arrays[var] = np.array(var._value)
        self.newer.discard(var)

    def release(self, var: Variable) -> None:
        self.log.append(("release", var.name))
        del self.arrays[var]


class CopyPlan:
    def __init__(self, schedule: Schedule, kernels: Sequence[Any], storage: CopyStorage) -> None:
        self.schedule, self.kernels, self.storage = schedule, kernels, storage

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.run_traced(feeds, lambda *_: None)

    def run_traced(self, feeds: Sequence[np.ndarray], on_step: Any, update: bool = True) -> list[np.ndarray]:
        s = self.schedule
        claim_all([n.data for n in s.parameters], self.storage)
        env: dict[int, Any] = {n.id: a for n, a in zip(s.inputs, feeds, strict=True)}
        env.update({n.id: self.storage.arrays[n.data] for n in s.parameters})
        env.update({n.id: n.data for n in s.constants})
        for step, kernel in zip(s.steps, self.kernels, strict=True):
            start = time.perf_counter()
            env[step.output] = np.asarray(kernel.fn(*[env[i] for i in step.inputs]))
            on_step(step, env[step.output], time.perf_counter() - start)
        outputs = [np.array(env[n.id]) for n in s.outputs]
        if update:
            new = [(p.data, np.array(env[v.id])) for p, v in s.updates]
            for var, value in new:
                self.storage.arrays[var] = value
                self.storage.newer.add(var)
        return outputs


class CopyBackend(ag.Backend):
    capabilities = ag.Capabilities(dtypes=frozenset({"float32", "int64", "int32", "bool"}))
    options: ClassVar[Mapping[str, Any]] = {"label": "copy"}

    def __init__(self) -> None:
        self.storage = CopyStorage()
        self.compiled: list[Mapping[str, Any]] = []

    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]) -> CopyPlan:
        self.compiled.append(dict(options))
        return CopyPlan(schedule, kernels, self.storage)


@pytest.fixture
def copy_backend(monkeypatch):
    """Registers ``numpy-copy`` (lowerings for every op, recording their contexts) for one test."""
    backend = CopyBackend()
    contexts: list[ag.LoweringContext] = []

    def lower(ctx: ag.LoweringContext) -> Any:
        contexts.append(ctx)
        return ctx.op.kernels["numpy"].bind(ctx.attrs).fn  # a bare callable: a flagless Kernel

    with scratch_ops():
        for name in ag.OPS:
            ag.register_lowering(name, "numpy-copy", lower)
        monkeypatch.setitem(base._BACKENDS, "numpy-copy", backend)
        monkeypatch.setitem(base._INSTANCES, "numpy-copy", backend)
        backend.contexts = contexts
        yield backend
    assert all("numpy-copy" not in op.lowerings for op in ag.OPS.values())


def sgd_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = ag.parameter(rng.standard_normal((5, 3)).astype(np.float32) * 0.5, name="fc.w")
    x, y = ag.input("x", ("B", 5)), ag.input("y", ("B",), "int64")
    loss = ag.cross_entropy(ag.tanh(x @ w) * 2.0, y)
    (gw,) = ag.grad(loss, [w])
    data = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    return w, loss, {w: w - 0.3 * gw}, data


def test_a_second_backend_trains_bit_identically_with_values_in_its_own_storage(copy_backend):
    losses = {}
    for name in ("numpy", "numpy-copy"):
        w, loss, updates, data = sgd_problem()
        step = ag.compile(loss, updates=updates, backend=name)
        losses[name] = [float(step(*data)) for _ in range(4)]
        if name == "numpy-copy":
            storage = copy_backend.storage
            assert w.node.data._home is storage and storage.log == [("upload", "fc.w")]
            host = w.node.data._value.copy()
            assert not np.array_equal(host, storage.arrays[w.node.data])  # the host copy is stale ...
            read = w.numpy()  # ... until read through the storage
            assert storage.log[-1] == ("download", "fc.w")
            np.testing.assert_array_equal(read, storage.arrays[w.node.data])
            w.numpy()
            assert (
                storage.log.count(("download", "fc.w")) == 1
            )  # read back only when the device copy is newer
        final = w.numpy().copy()
        losses[name + " w"] = final
    assert losses["numpy"] == losses["numpy-copy"] and losses["numpy"][-1] < losses["numpy"][0]
    np.testing.assert_array_equal(losses["numpy w"], losses["numpy-copy w"])


def test_assign_writes_through_the_storage(copy_backend):
    w, loss, updates, data = sgd_problem()
    step = ag.compile(loss, updates=updates, backend="numpy-copy")
    step(*data)
    w.assign(np.zeros((5, 3), np.float32))
    assert copy_backend.storage.log[-1] == ("write", "fc.w")
    np.testing.assert_array_equal(copy_backend.storage.arrays[w.node.data], 0.0)
    assert float(ag.compile(loss, backend="numpy-copy")(*data)) == pytest.approx(np.log(3.0), rel=1e-6)


def test_function_to_moves_the_values_and_both_functions_keep_working(copy_backend):
    w, loss, updates, data = sgd_problem()
    reference = sgd_problem()
    ref_step = ag.compile(reference[1], updates=reference[2])
    want = [float(ref_step(*reference[3])) for _ in range(6)]

    step = ag.compile(loss, updates=updates)
    got = [float(step(*data)) for _ in range(2)]
    moved = step.to("numpy-copy")
    assert moved.backend_name == "numpy-copy" and moved.graph is step.graph
    assert w.node.data._home is copy_backend.storage  # moved at once, before any call
    got += [float(moved(*data)) for _ in range(2)]
    assert w.node.data._home is copy_backend.storage
    got += [float(step(*data)) for _ in range(2)]  # the numpy function takes the values back
    assert w.node.data._home is None and ("release", "fc.w") in copy_backend.storage.log
    assert got == want


def test_each_node_is_lowered_once_per_plan_with_concrete_types_name_and_scope(copy_backend):
    x = ag.input("x", ("B", 4))
    with ag.scope("h.0.attn"):
        q = (x * 2.0).named("h.0.attn.q")
        s = q.sum(axis=1)
    f = ag.compile(s, backend="numpy-copy")
    for batch in (3, 3, 5):
        np.testing.assert_array_equal(f(np.ones((batch, 4), np.float32)), np.full(batch, 8.0))
    assert [c.op_name for c in copy_backend.contexts] == ["mul", "sum", "mul", "sum"]  # two plans
    mul, total = copy_backend.contexts[:2]
    assert mul.in_types == (ag.TensorType((3, 4), "float32"), ag.TensorType((), "float32"))
    assert mul.out_type == ag.TensorType((3, 4), "float32")
    assert mul.name == "h_0_attn_q" and mul.scope == "h.0.attn" and mul.node.name == "h.0.attn.q"
    assert dict(total.attrs) == {"axes": (1,), "keepdims": False} and total.out_type.shape == (3,)
    assert copy_backend.contexts[2].in_types[0].shape == (5, 4)


def test_a_missing_lowering_is_an_error_at_compile_time_naming_op_and_backend(copy_backend):
    del ag.get_op("tanh").lowerings["numpy-copy"]
    x = ag.input("x", (3,))
    with pytest.raises(ag.MissingRuleError) as info:
        ag.compile(ag.tanh(x) + ag.tanh(x * 2.0), backend="numpy-copy")
    assert str(info.value).startswith(
        "backend 'numpy-copy' has no lowering or kernel for op 'tanh' (used by 2 nodes, first tanh_"
    )
    assert str(info.value).endswith("register one with register_lowering('tanh', 'numpy-copy', rule)")
    assert copy_backend.compiled == []


def test_float64_on_a_backend_without_it_is_refused_at_compile_time_naming_the_node(copy_backend):
    x = ag.input("x", (3,), "float64")
    with pytest.raises(TypeError) as info:
        ag.compile((x * 2.0).named("double"), backend="numpy-copy")
    message = str(info.value)
    assert "float64" in message and "numpy-copy" in message and "x:f64[3]" in message


def test_a_backend_asking_for_narrow_indices_gets_int32_ids_and_trains_like_numpy(copy_backend, monkeypatch):
    monkeypatch.setattr(
        CopyBackend,
        "capabilities",
        ag.Capabilities(dtypes=frozenset({"float32", "int32", "bool"}), narrow_index=True),
    )
    results = {}
    for name in ("numpy", "numpy-copy"):
        table = ag.parameter(np.arange(15, dtype=np.float32).reshape(5, 3) / 10, name="wte")
        ids, y = ag.input("ids", ("B",), "int64"), ag.input("y", ("B",), "int64")
        logits = ag.embedding(ids, table)
        loss = ag.cross_entropy(logits, y)
        (g,) = ag.grad(loss, [table])
        step = ag.compile([loss, logits.argmax(axis=1)], updates={table: table - 0.5 * g}, backend=name)
        feeds = np.array([4, 0, 2, 4]), np.array([0, 1, 2, 2])
        results[name] = [step(*feeds) for _ in range(3)] + [table.numpy().copy()]
        if name == "numpy-copy":
            run = step.plan_for(*feeds).schedule.graph
            assert {n.dtype for n in run.nodes} <= {"float32", "int32", "bool"}
            assert [n.dtype for n in run.inputs] == ["int32", "int32"] and step.inputs[0].dtype == "int64"
            with pytest.raises(
                ag.ShapeError, match="'ids' is int32, but the array holds values outside its range"
            ):
                step(np.array([2**40, 0, 0, 0]), feeds[1])
    for (loss_a, arg_a), (loss_b, arg_b) in zip(results["numpy"][:3], results["numpy-copy"][:3], strict=True):
        assert loss_a == loss_b and arg_a.tolist() == arg_b.tolist() and arg_b.dtype == np.int32
    np.testing.assert_array_equal(results["numpy"][3], results["numpy-copy"][3])


def test_options_are_validated_per_backend_and_passed_to_it(copy_backend):
    x = ag.input("x", (3,))
    with pytest.raises(ValueError) as info:
        ag.compile(x * 2.0, options={"memory_plan": False})
    assert str(info.value) == (
        "compile: unknown option 'memory_plan' for backend 'numpy'; known options: check_numerics, decompose, memory_planning"
    )
    with pytest.raises(
        ValueError, match=r"known options: check_numerics, decompose, label, memory_planning$"
    ):
        ag.compile(x * 2.0, backend="numpy-copy", options={"lable": "x"})
    f = ag.compile(x * 2.0, backend="numpy-copy", options={"label": "mine"})
    f(np.ones(3, np.float32))
    assert copy_backend.compiled == [
        {"memory_planning": True, "check_numerics": False, "decompose": None, "label": "mine"}
    ]
    assert f.options == copy_backend.compiled[0]


def test_memory_planning_argument_is_a_shorthand_for_the_option():
    x = ag.input("x", (8,))
    y = ag.exp(ag.exp(x) * 2.0) + 1.0
    data = np.linspace(-1, 1, 8, dtype=np.float32)
    planned = ag.compile(y)
    off = ag.compile(y, memory_planning=False)
    off2 = ag.compile(y, options={"memory_planning": False})
    assert planned.plan_for(data).memory.buffers and off.options["memory_planning"] is False
    assert off.plan_for(data).memory.buffers == [] and off2.plan_for(data).memory.buffers == []
    np.testing.assert_array_equal(planned(data), off(data))


def test_one_function_called_from_eight_threads_matches_single_threaded_results():
    # Calls share one plan (and its reused buffers) and a state counter updated by every call.
    rng = np.random.default_rng(1)
    w = ag.parameter(rng.standard_normal((16, 16)).astype(np.float32), name="w")
    calls = ag.state(np.zeros((), np.float32), name="calls")
    x = ag.input("x", (32, 16))
    h = ag.tanh(x @ w)
    out = (ag.exp(h * 0.5) * h + h).sum(axis=1)
    f = ag.compile(out, updates={calls: calls + 1.0})
    feeds = [rng.standard_normal((32, 16)).astype(np.float32) for _ in range(16)]
    want = [f(a) for a in feeds]
    errors: list[int] = []

    def worker(t: int) -> None:
        for i in range(200):
            k = (t * 7 + i) % len(feeds)
            if not np.array_equal(f(feeds[k]), want[k]):
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"threaded calls: 8 threads x 200 calls, {len(errors)} wrong results")
    assert errors == []
    assert float(calls.numpy()) == len(feeds) + 8 * 200  # no update lost


# ----------------------------------------------------------------------------- schedule
def test_schedule_buffer_table_has_sizes_and_lifetimes_and_peak_is_computed():
    x = ag.input("x", (4, 8))
    a = ag.exp(x)  # step 0: buffer 0
    b = a * 2.0  # step 1: in place over a
    c = b.reshape((8, 4))  # step 2: a view of b
    d = ag.tanh(c)  # step 3: a new buffer (b is alive: its view is read at step 4)
    e = (d + b.reshape((8, 4))).sum()  # steps 4-6: add runs in place over d
    f = ag.compile(e, passes=[])
    plan = f.plan_for(np.ones((4, 8), np.float32))
    s = plan.schedule
    assert [st.node.op for st in s.steps] == ["exp", "mul", "reshape", "tanh", "reshape", "add", "sum"]
    assert [st.buffer for st in s.steps] == [0, 0, None, 1, None, 1, None]
    add = s.steps[5].output
    mem = s.memory
    assert mem.in_place_of == {b.node.id: a.node.id, add: d.node.id}
    assert mem.alias_of == {c.node.id: b.node.id, s.steps[4].output: b.node.id}
    assert [(buf.shape, buf.nbytes, buf.first, buf.last) for buf in mem.buffers] == [
        ((4, 8), 128, 0, 5),  # a, b and b's views, last read by add
        ((8, 4), 128, 3, 6),  # d, then add's result, read by sum
    ]
    assert s.steps[3].frees == (c.node.id,) and s.steps[6].frees == (add,)
    assert s.peak_bytes() == 256 + 4  # the buffer table, and the sum's own 4 bytes at the end
    assert s.bytes_by_family() == {"elementwise": 128 * 4, "reduction": 4}
    assert float(f(np.ones((4, 8), np.float32))) == pytest.approx(
        32 * (np.tanh(2 * np.e) + 2 * np.e), rel=1e-6
    )


# ----------------------------------------------------------------------------- inspection
def scoped_model():
    rng = np.random.default_rng(2)
    x = ag.input("x", ("B", 6))
    with ag.scope("h.0.attn"):
        wq = ag.parameter(rng.standard_normal((6, 6)).astype(np.float32), name="h.0.attn.wq")
        q = (x @ wq).named("h.0.attn.q")
        att = ag.softmax(q, axis=-1)
    with ag.scope("head"):
        out = ag.log(att.sum(axis=1)).named("head.out")
    return SimpleNamespace(x=x, wq=wq, q=q, att=att, out=out)


def test_profile_gives_per_node_timings_with_scopes_and_memory_figures():
    m = scoped_model()
    wq, out = m.wq, m.out
    (gw,) = ag.grad(out.sum(), [wq])
    step = ag.compile(out, updates={wq: wq - 0.1 * gw})
    data = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    before = wq.numpy().copy()
    p = step.profile(data)
    np.testing.assert_array_equal(wq.numpy(), before)  # profiling does not train
    plan = step.plan_for(data)
    assert [t.op for t in p.nodes] == [st.node.op for st in plan.schedule.steps]
    assert {t.scope for t in p.nodes} >= {"h.0.attn", "head"}
    q_row = next(t for t in p.nodes if t.name == "h_0_attn_q")
    assert (
        q_row.op == "matmul"
        and q_row.scope == "h.0.attn"
        and q_row.line.startswith("h_0_attn_q:f32[B,6] = matmul")
    )
    assert all(t.seconds >= 0 for t in p.nodes) and sum(t.share for t in p.nodes) == pytest.approx(1.0)
    assert p.kernel_seconds == pytest.approx(sum(t.seconds for t in p.nodes))
    assert p.memory.planned_bytes == plan.memory.bytes() and p.memory.peak_bytes == plan.schedule.peak_bytes()
    assert p.memory.planned_bytes < p.memory.peak_bytes <= p.memory.unplanned_bytes
    assert sum(p.memory.bytes_by_family.values()) == p.memory.unplanned_bytes
    assert {op for op, *_ in p.by_op()} == {t.op for t in p.nodes}
    table = str(p)
    assert table.startswith(f"numpy: {len(p.nodes)} kernels, ")
    assert "memory: planned buffers" in table and "h_0_attn_q:f32[B,6] = matmul" in table
    step.profile(data, update=True)
    assert not np.array_equal(wq.numpy(), before)


def test_profile_on_another_backend_fills_the_same_structure(copy_backend):
    out = scoped_model().out
    p = ag.compile(out, backend="numpy-copy").profile(np.ones((2, 6), np.float32))
    assert p.backend == "numpy-copy" and [t.op for t in p.nodes][:2] == ["matmul", "softmax"]


def test_capture_returns_named_values_by_user_or_printed_name():
    m = scoped_model()
    wq, out = m.wq, m.out
    f = ag.compile(out)
    data = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    got = f.capture(["h.0.attn.q", "head_out", "h.0.attn.wq", "x"], data)
    want_q = data @ wq.numpy()
    np.testing.assert_allclose(got["h.0.attn.q"], want_q, rtol=1e-6)
    e = np.exp(want_q - want_q.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        got["head_out"], np.log((e / e.sum(axis=1, keepdims=True)).sum(axis=1)), atol=1e-6
    )
    np.testing.assert_array_equal(got["h.0.attn.wq"], wq.numpy())
    np.testing.assert_array_equal(got["x"], data)
    np.testing.assert_array_equal(f(data), got["head_out"])  # a captured buffer is a copy, not reused storage
    with pytest.raises(KeyError, match=r"capture: no node named 'h\.0\.attn\.k' in the compiled graph"):
        f.capture(["h.0.attn.k"], data)


def test_check_numerics_names_the_first_node_making_a_nan_and_does_not_update():
    m = scoped_model()
    wq, out = m.wq, m.out
    h = ag.sqrt(out - 10.0).named("root")  # out <= log(6) < 10: NaN here first
    (gw,) = ag.grad(h.sum(), [wq])
    step = ag.compile(h, updates={wq: wq - 0.1 * gw})
    data = np.ones((2, 6), np.float32)
    before = wq.numpy().copy()
    with pytest.raises(ag.NonFiniteError) as info:
        step.check_numerics(data)
    message = str(info.value)
    assert message.startswith("check_numerics: the first non-finite value is made by root:f32[B] = sqrt ")
    assert "op 'sqrt', scope None, built at " in message and "test_backend_boundary.py:" in message
    assert message.endswith("it holds 2 NaN of 2 values; its inputs were finite")
    np.testing.assert_array_equal(wq.numpy(), before)
    checked = ag.compile(h, updates={wq: wq - 0.1 * gw}, options={"check_numerics": True})
    with pytest.raises(ag.NonFiniteError, match="made by root:f32"):
        checked(data)
    assert np.isnan(step(data)).all()  # unchecked calls run as usual
    with pytest.raises(ag.NonFiniteError, match="check_numerics: input 'x' holds 1 \\+inf of 12 values"):
        ag.compile(out).check_numerics(np.where(np.eye(2, 6) * np.arange(12).reshape(2, 6) == 7, np.inf, 1.0))


def test_check_numerics_reports_the_scope_of_the_node():
    att = scoped_model().att
    with ag.scope("head"):
        bad = ag.log(att - 1.0).named("head.bad")  # softmax < 1: log of negatives
    with pytest.raises(ag.NonFiniteError) as info:
        ag.compile(bad.sum()).check_numerics(np.ones((2, 6), np.float32))
    assert "head_bad:f32[B,6] = log" in str(info.value) and "scope 'head'" in str(info.value)


@pytest.mark.parametrize("module", ["lowering", "schedule", "storage", "function", "registry", "inspection"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"asg.core.{module}")
    result = doctest.testmod(mod, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 or module == "inspection"
    assert result.failed == 0


def readme_block(section: str) -> str:
    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    text = readme.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("section", ["Backends", "Profiling and inspection"])
def test_readme_examples_run_and_print_what_they_say(section, capsys, monkeypatch):
    code = readme_block(section)
    with scratch_ops(), monkeypatch.context() as patch:  # the toy backend is removed afterwards
        patch.setattr(base, "_BACKENDS", dict(base._BACKENDS))
        patch.setattr(base, "_INSTANCES", dict(base._INSTANCES))
        exec(compile(code, "README.md", "exec"), {})
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert capsys.readouterr().out.splitlines() == expected
    assert "toy" not in base.available_backends()
