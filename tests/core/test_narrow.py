"""Dtype passes for limited backends: int64 index values narrowed to int32, unsupported dtypes refused."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import base
from asg.core.errors import DTypeError
from asg.core.graph import LEAF_OPS, Variable
from asg.core.passes import DEFAULT_PASSES, PASSES, run_passes
from asg.core.passes.narrow import (
    UnsupportedDTypeError,
    check_supported_dtypes,
    narrow_index_dtypes,
    random_keys,
)
from asg.core.registry import KEY, RANDOM, TensorType, ops_with
from asg.core.schedule import Schedule
from asg.core.storage import Storage, claim_all
from asg.core.testing import scratch_ops
from asg.core.testing.references import fold_in as fold_in_spec

WGSL = frozenset({"float32", "int32", "bool"})
THIS_FILE = __file__


def run(graph: ag.Graph, *feeds: np.ndarray) -> list[np.ndarray]:
    """Run a graph as it is (no passes) with the numpy backend."""
    f = ag.compile(
        [ag.Tensor(n) for n in graph.outputs], inputs=[ag.Tensor(n) for n in graph.inputs], passes=[]
    )
    return [np.asarray(v) for v in f(*feeds)]


def int64_nodes(graph: ag.Graph) -> list[str]:
    return [graph.format_node(n) for n in graph.nodes if n.dtype == "int64"]


def check_same_values(before: ag.Graph, after: ag.Graph, *feeds: np.ndarray) -> list[np.ndarray]:
    """Both graphs verify and compute the same values, each in the dtype its graph declares."""
    ag.verify(after)
    old, new = run(before, *feeds), run(after, *feeds)
    for node, narrowed, a, b in zip(before.outputs, after.outputs, old, new, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=before.format_node(node))
        assert (a.dtype.name, b.dtype.name) == (node.dtype, narrowed.dtype)
    return new


def line_of(marker: str) -> int:
    with open(THIS_FILE) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line)


# ----------------------------------------------------------------------------- narrow_index_dtypes
def test_embedding_argmax_and_loss_graph():
    ids = ag.input("ids", ("B", "T"), "int64")
    labels = ag.input("labels", ("B",), "int64")
    table = ag.parameter(np.random.default_rng(0).standard_normal((10, 4)).astype("float32"), name="wte")
    h = ag.embedding(ids, table).sum(axis=1)  # (B, 4)
    loss = ag.cross_entropy(h, labels)
    pred = h.argmax(axis=1)
    correct = (pred == labels).sum()  # a bool sum: int64
    g = ag.Graph([loss.node, pred.node, correct.node])
    before = str(g)
    assert len(int64_nodes(g)) >= 4

    n = narrow_index_dtypes(g)
    assert int64_nodes(n) == []
    assert str(g) == before  # the pass is pure
    assert [(x.name, x.dtype, x.meta["narrowed_from"]) for x in n.inputs] == [
        ("ids", "int32", "int64"),
        ("labels", "int32", "int64"),
    ]
    assert n.parameters[0].data is table.node.data  # the same storage
    argmax = next(x for x in n.nodes if x.op == "argmax")
    assert argmax.attrs["index_dtype"] == "int32"
    feeds = (np.array([[1, 2, 9], [0, 0, 3]], "int64"), np.array([3, 1], "int64"))
    _loss_v, pred_v, correct_v = check_same_values(g, n, *feeds)
    assert pred_v.dtype.name == "int32" and correct_v.dtype.name == "int32"


def test_int64_arrays_fed_to_a_narrowed_input_are_cast_with_a_range_check():
    ids = ag.input("ids", (3,), "int64")
    table = ag.parameter(np.arange(8, dtype="float32").reshape(4, 2), name="table")
    g = narrow_index_dtypes(ag.Graph([ag.embedding(ids, table).node]))
    f = ag.compile([ag.Tensor(g.outputs[0])], inputs=[ag.Tensor(g.inputs[0])], passes=[])
    assert f(np.array([3, 0, 1], "int64"))[0].tolist() == [[6.0, 7.0], [0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(
        ag.ShapeError, match=r"input 'ids' is int32, but the array holds values outside its range"
    ):
        f(np.array([0, 2**40, 1], "int64"))


def test_constants_are_cast_after_a_range_check():
    x = ag.input("x", (5, 2))
    rows = ag.constant(np.array([4, 0, 2], "int64"), name="rows")
    g = ag.Graph([ag.index_select(x, rows).node])
    n = narrow_index_dtypes(g)
    (const,) = [c for c in n.nodes if c.op == "constant"]
    assert const.dtype == "int32" and const.data.dtype == np.int32 and const.data.tolist() == [4, 0, 2]
    assert not const.data.flags.writeable and const.name == "rows"
    assert rows.node.data.dtype == np.int64  # the original constant is untouched
    check_same_values(g, n, np.arange(10, dtype="float32").reshape(5, 2))


def test_a_constant_outside_int32_is_an_error_naming_it():
    x = ag.input("x", (3,), "int64")
    offsets = ag.constant(np.array([1, 3_000_000_000, 2], "int64"), name="offsets")  # marker: big constant
    g = ag.Graph([(x + offsets).node])
    with pytest.raises(UnsupportedDTypeError) as err:
        narrow_index_dtypes(g)
    text = str(err.value)
    assert text.startswith("narrow_index_dtypes: offsets:i64[3] = constant (named 'offsets', built at ")
    assert f"{THIS_FILE}:{line_of('marker: big constant')}" in text
    assert "holds values outside int32 (1..3000000000; int32 holds -2147483648..2147483647)" in text


def test_ops_producing_int64():
    x = ag.input("x", ("B", 5))
    mask = x > 0.0
    positions = ag.arange(x.shape[1])  # dtype attribute int64
    counts = mask.sum(axis=1)  # bool -> int64
    both = mask + mask  # bool + bool -> int64
    as_int = (x * 10.0).astype("int64")  # cast(dtype=int64)
    fives = ag.full((2,), 5.0, "int64")  # full(dtype=int64)
    best = x.argmax(axis=1)
    hot = ag.one_hot(best, 5)  # float32 from int64 indices
    running = mask.cumsum(axis=1)  # cumsum of bool -> int64
    outs = [positions, counts, both, as_int, fives, best, hot, running, positions + counts.sum()]
    g = ag.Graph([t.node for t in outs])
    n = narrow_index_dtypes(g)
    assert int64_nodes(n) == []
    assert [o.dtype for o in n.outputs] == ["int32"] * 6 + ["float32", "int32", "int32"]
    data = np.random.default_rng(1).standard_normal((3, 5)).astype("float32")
    check_same_values(g, n, data)


def test_nothing_to_narrow_returns_the_graph_itself():
    x = ag.input("x", (3,))
    idx = ag.input("idx", (2,), "int32")
    g = ag.Graph([ag.index_select(x.exp(), idx).node])
    assert narrow_index_dtypes(g) is g


@pytest.mark.parametrize("input_dtype", ["float32", "int64"])  # int64: its input is narrowed first
def test_an_op_with_no_int32_form_is_an_error_naming_the_node(input_dtype: str):
    with scratch_ops():
        ag.define_op(
            "narrow_test_bucket",
            infer=lambda t: TensorType(t.shape, "int64"),
            kernel=lambda a: np.floor(a).astype(np.int64),
        )
        x = ag.input("x", (4,), input_dtype)
        buckets = ag.apply("narrow_test_bucket", x).named("buckets")
        g = ag.Graph([buckets.node])
        with pytest.raises(UnsupportedDTypeError) as err:
            narrow_index_dtypes(g)
    text = str(err.value)
    short = "f32" if input_dtype == "float32" else "i64"
    assert g.format_node(buckets.node) == "buckets:i64[4] = narrow_test_bucket x" and short in str(g)
    assert text.startswith(
        "narrow_index_dtypes: buckets:i64[4] = narrow_test_bucket x (named 'buckets', built at "
    )
    assert "op 'narrow_test_bucket' has no int32 form" in text


def test_an_op_that_refuses_int32_inputs_is_an_error_naming_the_node():
    with scratch_ops():

        def only_int64(t: TensorType) -> TensorType:
            if t.dtype != "int64":
                raise ValueError(f"needs int64, got {t.dtype}")
            return TensorType(t.shape, "float32")

        ag.define_op("narrow_test_wide_only", infer=only_int64, kernel=lambda a: a.astype(np.float32))
        ids = ag.input("ids", (2,), "int64")
        y = ag.apply("narrow_test_wide_only", ids).named("y")
        with pytest.raises(UnsupportedDTypeError) as err:
            narrow_index_dtypes(ag.Graph([y.node]))
    text = str(err.value)
    assert text.startswith("narrow_index_dtypes: y:f32[2] = narrow_test_wide_only ids (named 'y', built at ")
    assert (
        "does not take its inputs as int32: narrow_test_wide_only: ids (2,): needs int64, got int32" in text
    )


def test_an_int64_state_becomes_an_int32_node_of_the_same_variable():
    step = ag.state(np.array(4, "int64"), name="step")
    ids = ag.input("ids", (3,), "int64")
    g = ag.Graph([(ids + step).node, (step + 1).node])
    n = narrow_index_dtypes(g)
    assert int64_nodes(n) == []
    (param,) = n.parameters
    assert (param.dtype, param.meta["narrowed_from"], param.name) == ("int32", "int64", "step")
    assert param.data is step.node.data and step.node.dtype == "int64"  # the same Variable, untouched
    assert step.numpy().dtype.name == "int64" and int(step.numpy()) == 4


def test_random_keys_and_their_state_stay_int64():
    rng = ag.RNG(seed=3)
    x = ag.input("x", ("B", 64))
    ids = ag.input("ids", ("B",), "int64")
    table = ag.parameter(np.random.default_rng(0).standard_normal((7, 64)).astype("float32"), name="table")
    h = ag.dropout(x + ag.embedding(ids, table), 0.5, rng.next_key())
    updates = list(rng.updates().items())
    counter, next_counter = updates[0]
    g = ag.Graph([h.node, next_counter.node])
    keys = random_keys(g)
    assert counter.node.id in keys and next_counter.node.id in keys and ids.node.id not in keys
    n = narrow_index_dtypes(g)
    assert n.inputs[1].dtype == "int32"  # ids are narrowed
    kept = [x for x in n.nodes if x.dtype == "int64"]
    assert {x.op for x in kept} == {"parameter", "constant", "fold_in", "add"}  # seed, counter, keys, update
    assert all(x.id in keys for x in kept)  # the very same nodes
    feeds = (np.ones((2, 64), "float32"), np.array([6, 1], "int64"))
    out, new_counter = check_same_values(g, n, *feeds)  # the same random numbers
    assert sorted(set(np.round(out / (np.ones((2, 64)) + table.node.data.value[[6, 1]]), 5).ravel())) == [
        0.0,
        2.0,
    ]
    assert new_counter.dtype.name == "int64"


def test_a_constant_key_stays_int64_beside_a_counter_and_ids():
    key = ag.constant(np.int64(-1234567890123), name="key")  # outside int32: narrowing it would fail
    x = ag.input("x", (2, 16))
    ids = ag.input("ids", (2,), "int64")
    h = ag.dropout(x, 0.25, key) + (ids * 3).astype("float32").reshape((2, 1))
    g = ag.Graph([h.node])
    n = narrow_index_dtypes(g)
    assert [c.dtype for c in n.nodes if c.op == "constant" and c.name == "key"] == ["int64"]
    assert n.inputs[1].dtype == "int32"
    check_same_values(g, n, np.ones((2, 16), "float32"), np.array([4, -1], "int64"))


def test_a_key_that_no_random_op_reads_stays_int64_as_a_graph_output():
    # fold_in gives a key (the KEY trait): as an output it is not narrowed, or the hash would change
    assert "fold_in" in ops_with(KEY) and not ops_with(KEY) & ops_with(RANDOM)
    key = ag.input("key", (3, 1), "int64")
    data = ag.input("data", (4,), "int64")
    ids = ag.input("ids", (4,), "int64")
    folded = ag.fold_in(key, data)
    g = ag.Graph([folded.node, ag.fold_in(folded, 7).node, (ids * 2).node])
    n = narrow_index_dtypes(g)
    assert [i.dtype for i in n.inputs] == ["int64", "int64", "int32"]  # key and data kept, ids narrowed
    assert [o.dtype for o in n.outputs] == ["int64", "int64", "int32"]
    assert {x.op for x in n.nodes if x.dtype == "int64"} == {"input", "constant", "fold_in"}
    feeds = (np.array([[1], [-3], [-1234567890123]], "int64"), np.array([0, 2**40, -7, 3]), np.arange(4))
    keys, again, _ = check_same_values(g, n, *feeds)
    assert np.abs(keys).max() > np.iinfo("int32").max  # 64-bit hashes: int32 could not hold them
    np.testing.assert_array_equal(keys[2, 1], fold_in_spec(-1234567890123, 2**40))
    np.testing.assert_array_equal(again[0, 0], fold_in_spec(fold_in_spec(1, 0), 7))
    check_supported_dtypes(n, WGSL | {"int64"}, "wgpu")


@pytest.mark.parametrize(
    "build, op",
    [
        (lambda keys: ag.random_uniform(keys[1, 2], (3,)), "slice"),  # a slice of an array of keys
        (lambda keys: ag.fold_in(keys + 1, 3), "add"),  # arithmetic on keys, then folded again
        (lambda keys: keys * 2, "mul"),  # as a graph output too
    ],
)
def test_an_int64_value_computed_from_a_fold_in_hash_is_an_error_naming_it(build, op):
    # a backend without int64 computes it on the low 32 bits of the hash: the numbers would be wrong
    key = ag.input("key", (3, 1), "int64")
    keys = ag.fold_in(key, ag.arange(4)).named("keys")
    g = ag.Graph([build(keys).node])
    with pytest.raises(UnsupportedDTypeError) as err:
        narrow_index_dtypes(g)
    text = str(err.value)
    bad = next(n for n in g.nodes if n.op == op and n.dtype == "int64")
    assert text.startswith(f"narrow_index_dtypes: {g.format_node(bad)} (built at {THIS_FILE}:")
    assert f"from the random key {g.format_node(keys.node)} (named 'keys'" in text
    assert f"op {op!r} would keep its low 32 bits" in text and "ag.fold_in(key, i)" in text


def test_registered_as_a_pass_that_is_not_default():
    assert PASSES["narrow_index_dtypes"] is narrow_index_dtypes
    assert "narrow_index_dtypes" not in DEFAULT_PASSES
    ids = ag.input("ids", (2,), "int64")
    g = run_passes(ag.Graph([(ids * 2).node]), ["narrow_index_dtypes"])
    assert int64_nodes(g) == []


# ----------------------------------------------------------------------------- int64 state on a backend without int64
class Int32Storage(Storage):
    """Device copies in a dict, converted by the base class (to_device at upload and write, to_host at readback)."""

    def __init__(self) -> None:
        self.copies: dict[Variable, np.ndarray] = {}
        self.newer: set[Variable] = set()

    def upload(self, var: Variable) -> None:
        self.copies[var] = np.array(self.to_device(var))
        self.newer.discard(var)

    def sync_to_host(self, var: Variable) -> None:
        if var in self.newer:
            self.to_host(var, self.copies[var])
            self.newer.discard(var)

    def write(self, var: Variable) -> None:
        self.upload(var)

    def release(self, var: Variable) -> None:
        del self.copies[var]


class Int32Plan:
    """Runs the numpy kernels on the storage's copies; every value it holds must have its node's dtype."""

    def __init__(self, schedule: Schedule, kernels: Sequence[Any], backend: Int32Backend) -> None:
        self.schedule, self.kernels, self.storage = schedule, kernels, backend.storage
        self.runs = backend.capabilities.dtypes
        self.dtypes = {n.id: n.dtype for n in schedule.graph.nodes}

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.run_traced(feeds, lambda *_: None)

    def run_traced(self, feeds: Sequence[np.ndarray], on_step: Any, update: bool = True) -> list[np.ndarray]:
        s = self.schedule
        claim_all([n.data for n in s.parameters], self.storage)
        env: dict[int, np.ndarray] = {n.id: a for n, a in zip(s.inputs, feeds, strict=True)}
        env.update({n.id: self.storage.copies[n.data] for n in s.parameters})
        env.update({n.id: n.data for n in s.constants})
        for node_id, value in env.items():  # what a backend without int64 is handed
            assert value.dtype.name == self.dtypes[node_id] and value.dtype.name in self.runs, value.dtype
        for step, kernel in zip(s.steps, self.kernels, strict=True):
            out = kernel(*[env[i] for i in step.inputs])
            env[step.output] = np.asarray(out).astype(self.dtypes[step.output], copy=False)
            on_step(step, env[step.output], 0.0)
        if update:
            for p, v in s.updates:
                self.storage.copies[p.data] = np.array(env[v.id])
                self.storage.newer.add(p.data)
        return [np.array(env[n.id]) for n in s.outputs]


class Int32Backend(ag.Backend):
    def __init__(self, storage: Storage | None, capabilities: ag.Capabilities) -> None:
        self.storage, self.capabilities = storage, capabilities  # type: ignore[misc]

    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Any) -> Int32Plan:
        return Int32Plan(schedule, [k.fn for k in kernels], self)


@pytest.fixture
def int32_backend(monkeypatch):
    """``no-int64``: numpy kernels, float32/int32/bool only, index dtypes narrowed, its own storage."""

    def register(storage: Storage | None, dtypes: frozenset[str] = WGSL) -> Storage | None:
        backend = Int32Backend(storage, ag.Capabilities(dtypes=dtypes, narrow_index=True))
        monkeypatch.setitem(base._BACKENDS, "no-int64", backend)
        monkeypatch.setitem(base._INSTANCES, "no-int64", backend)
        return storage

    with scratch_ops():
        for name in ag.OPS:
            ag.register_lowering(name, "no-int64", lambda ctx: ctx.op.kernels["numpy"].bind(ctx.attrs).fn)
        yield register


def test_an_int64_counter_is_stored_as_int32_and_read_back_as_int64(int32_backend, tmp_path, counter_step):
    storage = int32_backend(Int32Storage())
    x = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    want, want_w, want_n = counter_step("numpy")
    f, w, n = counter_step("no-int64")
    (param,) = [p for p in f._run_graph.parameters if p.name == "n"]
    assert param.dtype == "int32" and n.node.dtype == "int64"
    for step in range(3):
        (loss, twice), (want_loss, want_twice) = f(x), want(x)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        assert twice.dtype.name == "int32" and twice.tolist() == want_twice.tolist() == 2 * (5 + step)
        assert storage.copies[n.node.data].dtype.name == "int32"  # the device copy
        value = n.numpy()  # read back: the user's dtype
        assert value.dtype.name == "int64" and int(value) == int(want_n.numpy()) == 6 + step
    np.testing.assert_allclose(w.numpy(), want_w.numpy(), rtol=1e-6)
    assert f.state_dict()["n"].dtype.name == "int64" and int(f.state_dict()["n"]) == 8
    f.save(tmp_path / "step.asg")
    loaded = ag.load(tmp_path / "step.asg")  # on numpy: the saved graph and value are int64
    assert loaded.state_dict()["n"].dtype.name == "int64" and int(loaded.state_dict()["n"]) == 8
    n.assign(np.array(41))  # written through as int32
    assert f(x)[1].tolist() == 82 and int(n.numpy()) == 42


def test_function_to_a_backend_without_int64_moves_the_counter_as_int32(int32_backend, counter_step):
    storage = int32_backend(Int32Storage())
    x = np.ones((2, 3), "float32")
    f, _, n = counter_step("numpy")
    f(x)
    g = f.to("no-int64")  # uploads n (as int64: no plan says otherwise yet), then its first plan narrows it
    assert g(x)[1].tolist() == 12 and g(x)[1].tolist() == 14
    assert storage.copies[n.node.data].dtype.name == "int32" and int(n.numpy()) == 8
    assert f(x)[1].tolist() == 16 and int(n.numpy()) == 9  # back on numpy: int64 throughout
    assert n.node.data._value.dtype.name == "int64"


def test_a_counter_outside_int32_is_an_error_naming_it_at_upload_and_write(int32_backend, counter_step):
    int32_backend(Int32Storage())
    x = np.ones((2, 3), "float32")
    f, _, n = counter_step("no-int64", start=2**31)
    with pytest.raises(
        UnsupportedDTypeError,
        match=re.escape(
            "Int32Storage: parameter 'n' (int64) is stored as int32 on this backend (it has no 64-bit "
            "integers), but it holds values outside int32 (2147483648..2147483648; int32 holds"
        ),
    ):
        f(x)
    n.assign(np.array(7))
    assert f(x)[1].tolist() == 14
    with pytest.raises(
        UnsupportedDTypeError, match=r"parameter 'n' \(int64\) is stored as int32.*-3000000000"
    ):
        n.assign(np.array(-3_000_000_000))


def test_a_narrowing_backend_without_storage_is_refused_naming_the_parameter(int32_backend, counter_step):
    int32_backend(None)
    f, _, _ = counter_step("no-int64")
    with pytest.raises(
        UnsupportedDTypeError, match=r"runs n:i32\[\] = parameter \(named 'n'\) as int32 instead of int64"
    ):
        f(np.ones((1, 3), "float32"))


def test_a_variable_run_as_a_key_and_as_a_counter_on_one_backend_is_an_error(int32_backend):
    int32_backend(Int32Storage(), WGSL | {"int64"})  # int64 for random keys only, as on wgpu
    n = ag.state(np.array(3, "int64"), name="n")
    keyed = ag.compile(ag.random_uniform(ag.fold_in(9, n), (2,)), updates={n: n + 1}, backend="no-int64")
    counted = ag.compile(n * 2, updates={n: n + 1}, backend="no-int64")
    assert [p.dtype for p in keyed._run_graph.parameters] == ["int64"]  # a key: never narrowed
    with pytest.raises(
        UnsupportedDTypeError,
        match="runs parameter 'n' as int64 in one compiled function and as int32 in another",
    ):
        keyed(), counted()


def test_a_counter_sharing_its_constant_with_a_random_key_counter_is_still_narrowed(int32_backend):
    storage = int32_backend(Int32Storage(), WGSL | {"int64"})  # int64 for random keys only, as on wgpu

    def build(backend: str):
        rng = ag.RNG(seed=3)
        n = ag.state(np.array(0, "int64"), name="n")
        x = ag.input("x", (2, 8))
        y = ag.dropout(x, 0.5, rng.next_key()) * (n + 1).astype("float32")
        f = ag.compile([y, n + 1], inputs=[x], updates={**rng.updates(), n: n + 1}, backend=backend)
        (counter,) = [p.data for p in f.graph.parameters if p.data is not n.node.data]
        return f, counter, n

    want, want_counter, _ = build("numpy")
    f, counter, n = build("no-int64")
    ones = [c for c in f.graph.nodes if c.op == "constant" and c.dtype == "int64" and c.data.tolist() == 1]
    assert len(ones) == 1  # CSE gave both counters' updates the same constant 1
    run_dtypes = {p.data: p.dtype for p in f._run_graph.parameters}
    assert run_dtypes == {counter: "int64", n.node.data: "int32"}
    x = np.random.default_rng(2).standard_normal((2, 8)).astype("float32")
    for _ in range(3):  # a new mask each step, as on numpy
        (y, count), (want_y, want_count) = f(x), want(x)
        np.testing.assert_array_equal(y, want_y)
        assert count.dtype.name == "int32" and count.tolist() == want_count.tolist()
    assert storage.copies[n.node.data].dtype.name == "int32" and storage.copies[counter].dtype.name == "int64"
    assert int(n.numpy()) == 3 and int(counter.value) == int(want_counter.value) == 3


# ----------------------------------------------------------------------------- check_supported_dtypes
def test_a_float64_input_is_refused_with_what_to_do():
    x = ag.input("x", (3,), "float64")  # marker: float64 input
    g = ag.Graph([(x * 2.0).node])
    with pytest.raises(UnsupportedDTypeError) as err:
        check_supported_dtypes(g, WGSL, "wgpu")
    assert str(err.value) == (
        "backend 'wgpu' does not support float64 (it runs bool, float32, int32): "
        f"x:f64[3] = input (named 'x', built at {THIS_FILE}:{line_of('marker: float64 input')}) is float64; "
        "declare the input as float32 (ag.input(name, shape, 'float32')); arrays fed to it are cast "
        "(2 more nodes are float64)"
    )
    assert isinstance(err.value, DTypeError) and isinstance(err.value, TypeError)


def test_the_first_float64_node_is_named_with_its_line_and_source():
    x = ag.input("x", (2, 3))
    h = (x * 2.0).astype("float64").named("h")  # marker: float64 cast
    y = (h + 1.0).sum()
    g = ag.Graph([y.node])
    with pytest.raises(UnsupportedDTypeError) as err:
        check_supported_dtypes(g, WGSL, "wgpu")
    text = str(err.value)
    assert text.startswith(
        "backend 'wgpu' does not support float64 (it runs bool, float32, int32): "
        "h:f64[2,3] = cast a (named 'h', built at "
    )
    assert f"{THIS_FILE}:{line_of('marker: float64 cast')}) is float64" in text
    assert "cast to float32 with .astype('float32') where it is built" in text


def test_int64_is_refused_with_the_narrowing_hint_and_keys_with_their_own():
    ids = ag.input("ids", (3,), "int64")
    g = ag.Graph([(ids + 1).node])
    with pytest.raises(
        UnsupportedDTypeError, match=re.escape("narrow index values with asg.core.passes.narrow")
    ):
        check_supported_dtypes(g, WGSL, "wgpu")
    check_supported_dtypes(narrow_index_dtypes(g), WGSL, "wgpu")  # narrowed: accepted

    key = ag.input("key", (), "int64")
    noise = ag.random_uniform(key, (4,))
    g = narrow_index_dtypes(ag.Graph([noise.node]))
    with pytest.raises(UnsupportedDTypeError, match=r"key:i64\[\] = input .* it is a random key"):
        check_supported_dtypes(g, WGSL, "wgpu")


def test_a_graph_of_supported_dtypes_passes():
    x = ag.input("x", (3,))
    idx = ag.input("idx", (2,), "int32")
    check_supported_dtypes(ag.Graph([ag.index_select(x, idx).node, (x > 0.0).node]), WGSL, "wgpu")


def test_narrowed_graphs_of_every_leaf_kind_have_no_leaf_left_int64():
    ids = ag.input("ids", (4,), "int64")
    const = ag.constant(np.array([1, 2, 3, 0], "int64"))
    g = narrow_index_dtypes(ag.Graph([(ids * const).node]))
    assert [(x.op, x.dtype) for x in g.nodes if x.op in LEAF_OPS] == [
        ("input", "int32"),
        ("constant", "int32"),
    ]


def test_docstring_examples():
    import doctest

    import asg.core.passes.narrow as narrow

    result = doctest.testmod(narrow)
    assert result.attempted >= 15 and result.failed == 0
