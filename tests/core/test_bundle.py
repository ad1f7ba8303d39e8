"""Function.save / asg.core.load: a training step saved, loaded in a fresh process and continued bit for
bit; byte-identical re-saves; atomic writes; hostile and corrupt bundles rejected naming the file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import asg.core as ag
from asg.core import bundle

BATCH, FEATURES, HIDDEN, CLASSES = 16, 8, 32, 3
SAVED_AFTER, CONTINUED = 3, 6


def _batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The data of training step ``step``: the same in every process (the subprocess repeats this)."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=BATCH).astype(np.int64)
    return x, y


def _adam(params: list[ag.Tensor], grads: list[ag.Tensor], lr: float = 1e-2) -> dict[ag.Tensor, ag.Tensor]:
    """Adam (torch.optim.Adam) as graph updates, with an int64 step counter as state."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = ag.state(np.int64(0), name="adam.step")
    t_int = step + 1
    t = ag.cast(t_int, "float32")
    step_size = lr / (1.0 - ag.pow(beta1, t))
    sqrt_bc2 = ag.sqrt(1.0 - ag.pow(beta2, t))
    updates: dict[ag.Tensor, ag.Tensor] = {step: t_int}
    for p, g in zip(params, grads, strict=True):
        m = ag.state(np.zeros(p.shape, np.float32), name=f"adam.exp_avg.{p.name}")
        v = ag.state(np.zeros(p.shape, np.float32), name=f"adam.exp_avg_sq.{p.name}")
        m_new = beta1 * m + (1.0 - beta1) * g
        v_new = beta2 * v + (1.0 - beta2) * (g * g)
        updates[m], updates[v] = m_new, v_new
        updates[p] = p - step_size * m_new / (ag.sqrt(v_new) / sqrt_bc2 + eps)
    return updates


def _training_step() -> ag.Function:
    """An MLP with dropout (keys from an ag.RNG, a state counter) trained by Adam: one compiled step."""
    rng = np.random.default_rng(0)
    x = ag.input("x", ("B", FEATURES))
    y = ag.input("y", ("B",), "int64")
    with ag.scope("fc1"):
        w1 = ag.parameter(rng.normal(0, 0.3, (FEATURES, HIDDEN)).astype(np.float32), name="fc1.weight")
        b1 = ag.parameter(np.zeros(HIDDEN, np.float32), name="fc1.bias")
        h = (x @ w1 + b1).relu()
    keys = ag.RNG(seed=7)
    h = ag.dropout(h, 0.25, keys.next_key())
    with ag.scope("fc2"):
        w2 = ag.parameter(rng.normal(0, 0.3, (HIDDEN, CLASSES)).astype(np.float32), name="fc2.weight")
        b2 = ag.parameter(np.zeros(CLASSES, np.float32), name="fc2.bias")
        logits = h @ w2 + b2
    loss = ag.cross_entropy(logits, y).named("loss")
    params = [w1, b1, w2, b2]
    updates = _adam(params, ag.grad(loss, params)) | keys.updates()
    return ag.compile(loss, inputs=[x, y], updates=updates)


# The whole program of the fresh process: asg.core and numpy, no model code.
CONTINUE_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import asg.core as ag

    src, dst, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    step = ag.load(src)
    losses = []
    for k in range(first, first + count):
        rng = np.random.default_rng(1000 + k)
        x = rng.normal(size=({batch}, {features})).astype(np.float32)
        y = rng.integers(0, {classes}, size={batch}).astype(np.int64)
        losses.append(float(step(y=y, x=x)))
    step.save(dst)
    print(json.dumps(losses))
    """
).format(batch=BATCH, features=FEATURES, classes=CLASSES)


def test_training_step_continues_bit_identically_in_a_fresh_process(tmp_path):
    step = _training_step()
    for k in range(SAVED_AFTER):
        step(*_batch(k))
    saved = tmp_path / "step.asg"
    step.save(saved)
    before = step.state_dict()

    result = subprocess.run(
        [sys.executable, "-c", CONTINUE_IN_FRESH_PROCESS, str(saved), str(tmp_path / "continued.asg"),
         str(SAVED_AFTER), str(CONTINUED)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded_losses = json.loads(result.stdout)

    original_losses = [float(step(*_batch(k))) for k in range(SAVED_AFTER, SAVED_AFTER + CONTINUED)]
    print("original  ", original_losses)
    print("continued ", loaded_losses)
    assert loaded_losses == original_losses
    assert len(set(original_losses)) == CONTINUED  # it trains: every step's loss differs

    after_original = step.state_dict()
    after_loaded = ag.load(tmp_path / "continued.asg").state_dict()
    assert sorted(after_loaded) == sorted(after_original) == sorted(before)
    for key, value in after_original.items():
        assert after_loaded[key].dtype == value.dtype, key
        assert np.array_equal(after_loaded[key], value), key
        if key not in ("adam.step", "rng.counter"):
            assert not np.array_equal(value, before[key]), f"{key} was not trained"
    assert int(after_loaded["adam.step"]) == SAVED_AFTER + CONTINUED
    assert int(after_loaded["rng.counter"]) == SAVED_AFTER + CONTINUED


def test_the_rng_counter_is_saved_state(tmp_path):
    step = _training_step()
    step(*_batch(0))
    step.save(tmp_path / "s.asg")
    same, reset = ag.load(tmp_path / "s.asg"), ag.load(tmp_path / "s.asg")
    (counter,) = [p for p, _ in reset.updates if p.name == "rng.counter"]
    assert int(counter.data.value) == 1
    # As if the counter had not been saved: the first step's dropout mask again.
    counter.data.value = np.zeros((), np.int64)
    x, y = _batch(1)
    restored, original, with_reset_counter = float(same(x, y)), float(step(x, y)), float(reset(x, y))
    assert restored == original
    assert with_reset_counter != restored  # same weights, another dropout mask


def test_load_restores_a_callable_like_the_original(tmp_path):
    step = _training_step()
    step(*_batch(0))
    step.save(tmp_path / "s.asg")
    loaded = ag.load(tmp_path / "s.asg")
    assert isinstance(loaded, ag.Function)
    assert [n.name for n in loaded.inputs] == ["x", "y"]
    assert loaded.num_outputs == 1 and loaded.single
    assert len(loaded.updates) == len(step.updates) == 14  # 4 params, 8 moments, adam.step, rng.counter
    assert [(p.name, v.shape) for p, v in loaded.updates] == [(p.name, v.shape) for p, v in step.updates]
    x, y = _batch(1)
    by_name = loaded(y=y, x=x)
    assert isinstance(by_name, np.ndarray) and by_name.shape == ()
    assert by_name == step(x, y)
    # The same printout: user names, ops, attrs and types all came back.
    assert str(loaded.graph) == str(step.graph)


def test_names_and_scopes_survive(tmp_path):
    step = _training_step()
    step.save(tmp_path / "s.asg")
    loaded = ag.load(tmp_path / "s.asg")
    original = [(n.op, n.name, n.meta.get("scope")) for n in step.graph.nodes]
    assert [(n.op, n.name, n.meta.get("scope")) for n in loaded.graph.nodes] == original
    scopes = {s for _, _, s in original}
    assert {"fc1", "fc2"} <= scopes


def test_state_dict_keys_values_and_duplicate_names():
    x = ag.input("x", (2,))
    a = ag.parameter(np.ones(2, "float32"), name="w")
    b = ag.parameter(np.full(2, 2.0, "float32"), name="w")
    c = ag.parameter(np.full(2, 3.0, "float32"))
    f = ag.compile(x * a + x * b + c, updates={c: c + 1.0})
    f(np.zeros(2, "float32"))
    state = f.state_dict()
    index = {n.id: i for i, n in enumerate(f.graph.nodes)}
    assert sorted(state) == sorted(
        [f"w#{index[a.node.id]}", f"w#{index[b.node.id]}", f"param#{index[c.node.id]}"]
    )
    assert state[f"param#{index[c.node.id]}"].tolist() == [4.0, 4.0]
    state[f"param#{index[c.node.id]}"][0] = 99.0  # a copy: the function's value is unchanged
    assert c.numpy().tolist() == [4.0, 4.0]


def test_save_load_save_gives_identical_bytes(tmp_path):
    step = _training_step()
    step(*_batch(0))
    first, second, third = tmp_path / "a.asg", tmp_path / "b.asg", tmp_path / "c.asg"
    step.save(first)
    ag.load(first).save(second)
    assert first.read_bytes() == second.read_bytes()
    # In another process too (safetensors' metadata map order changes per process; one entry is stable).
    code = f"import asg.core as ag; ag.load({str(second)!r}).save({str(third)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path)
    assert third.read_bytes() == first.read_bytes()


def test_bundle_layout_is_documented_safetensors(tmp_path):
    x = ag.input("x", ("B", 2))
    w = ag.parameter(np.arange(4, dtype="float32").reshape(2, 2), name="lin.w")
    mask = ag.constant(np.array([1.0, 0.0], "float32"))
    f = ag.compile([x @ w * mask], memory_planning=False)
    f.save(tmp_path / "f.asg")
    with safe_open(str(tmp_path / "f.asg"), framework="numpy") as file:
        header = json.loads(file.metadata()["asg-function"])
        keys = sorted(file.keys())
        index = {n.id: i for i, n in enumerate(f.graph.nodes)}
        assert f"param.{index[w.node.id]}.lin.w" in keys
        assert np.array_equal(file.get_tensor(f"param.{index[w.node.id]}.lin.w"), w.numpy())
        assert list(file.metadata()) == ["asg-function"]
    assert header["format"] == "asg-function" and header["version"] == 1
    assert header["function"] == {
        "num_outputs": 1, "single": False, "updates": [], "backend": "numpy",
        "options": f.options,
    }  # fmt: skip
    assert f.options["memory_planning"] is False
    records = header["graph"]["nodes"]
    assert keys == [f"param.{index[w.node.id]}.lin.w"]  # parameter values live in the tensors only
    assert [rec["op"] for rec in records if "data" in rec] == ["constant"]  # constants stay in the JSON
    loaded = ag.load(tmp_path / "f.asg")
    assert loaded.options == f.options and not loaded.single
    out = loaded(np.ones((3, 2), "float32"))
    assert isinstance(out, list) and out[0].tolist() == [[2.0, 0.0]] * 3


# ----------------------------------------------------------------------------- atomic writes
def _tiny() -> ag.Function:
    x = ag.input("x", (2,))
    return ag.compile(x * ag.parameter(np.full(2, 3.0, "float32"), name="s"))


def test_save_is_atomic_and_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "f.asg"
    f = _tiny()
    f.save(path)
    good = path.read_bytes()

    def broken_write(tensors, filename, metadata):
        with open(filename, "wb") as out:
            out.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(bundle, "save_file", broken_write)
    with pytest.raises(OSError, match="disk full"):
        f.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.asg"]


def test_save_keeps_the_mode_and_writes_through_a_symlink(tmp_path):
    target, link = tmp_path / "real.asg", tmp_path / "link.asg"
    f = _tiny()
    f.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    target.chmod(0o640)
    link.symlink_to(target)
    f.save(link)
    assert link.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert ag.load(link)(np.ones(2, "float32")).tolist() == [3.0, 3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.asg", "real.asg"]


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_save_refuses_an_update_of_a_parameter_the_graph_never_reads(tmp_path):
    x = ag.input("x", (2,))
    counter = ag.state(np.float32(0), name="counter")
    f = ag.compile(x * 2.0, updates={counter: ag.constant(np.float32(1))})
    with pytest.raises(
        ValueError, match="parameter 'counter' is updated, but the optimised graph never reads it"
    ):
        f.save(tmp_path / "f.asg")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- hostile bundles
def _saved(tmp_path) -> tuple[str, dict, dict[str, np.ndarray]]:
    path = tmp_path / "good.asg"
    step = _training_step()
    step.save(path)
    with safe_open(str(path), framework="numpy") as file:
        header = json.loads(file.metadata()["asg-function"])
        tensors = {k: file.get_tensor(k) for k in list(file.keys())}
    return str(path), header, tensors


def _write(tmp_path, header: dict, tensors: dict[str, np.ndarray], name: str = "bad.asg") -> str:
    path = str(tmp_path / name)
    save_file(tensors, path, metadata={"asg-function": json.dumps(header)})
    return path


def _key_of(header: dict, name: str) -> str:
    (i,) = [i for i, rec in enumerate(header["graph"]["nodes"]) if rec.get("name") == name]
    return f"param.{i}.{name}"


def test_unknown_op_is_named(tmp_path):
    _, header, tensors = _saved(tmp_path)
    rec = next(r for r in header["graph"]["nodes"] if r["op"] == "relu")
    rec["op"] = "my_custom_relu"
    path = _write(tmp_path, header, tensors)
    with pytest.raises(ValueError, match=r"load '.*bad\.asg': field 'graph': .*my_custom_relu") as err:
        ag.load(path)
    print(err.value)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[: len(b) - 5], "not a readable safetensors file .*incomplete metadata"),
        (lambda b: b[:6], "not a readable safetensors file .*header too small"),
        (lambda b: b"\xff" * 8 + b[8:], "not a readable safetensors file .*header too large"),
        (lambda b: b[:8] + b"[" + b[9:], "not a readable safetensors file .*(JSON|header)"),
        (lambda b: b"", "not a readable safetensors file"),
    ],
    ids=["truncated", "short", "huge-header-length", "bad-header-json", "empty"],
)
def test_corrupt_files_raise_naming_the_file(tmp_path, mangle, message):
    path, _, _ = _saved(tmp_path)
    bad = tmp_path / "corrupt.asg"
    bad.write_bytes(mangle(Path(path).read_bytes()))
    with pytest.raises(ValueError, match=rf"load '.*corrupt\.asg': {message}"):
        ag.load(bad)


def test_missing_file_and_plain_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load: no such file '.*nothing\.asg'"):
        ag.load(tmp_path / "nothing.asg")
    plain = str(tmp_path / "weights.safetensors")
    save_file({"w": np.zeros(2, np.float32)}, plain)
    with pytest.raises(
        ValueError, match=r"weights\.safetensors'.*not an ASG function bundle.*'asg-function'"
    ):
        ag.load(plain)


def test_tensor_with_the_wrong_shape_or_dtype(tmp_path):
    _, header, tensors = _saved(tmp_path)
    key = _key_of(header, "fc1.weight")
    wrong_shape = dict(tensors, **{key: np.zeros((HIDDEN, FEATURES), np.float32)})
    with pytest.raises(
        ValueError,
        match=rf"bad\.asg': field 'tensors\.{key}': it is F32\[{HIDDEN}, {FEATURES}\], but graph node \d+ "
        rf"\(parameter 'fc1\.weight'\) is float32\[{FEATURES}, {HIDDEN}\]",
    ):
        ag.load(_write(tmp_path, header, wrong_shape))
    wrong_dtype = dict(tensors, **{key: tensors[key].astype(np.float64)})
    with pytest.raises(ValueError, match=rf"field 'tensors\.{key}': it is F64\[{FEATURES}, {HIDDEN}\]"):
        ag.load(_write(tmp_path, header, wrong_dtype))


def test_extra_and_missing_tensors_are_listed(tmp_path):
    _, header, tensors = _saved(tmp_path)
    key = _key_of(header, "fc2.bias")
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ValueError, match=rf"field 'tensors': .*: missing '{key}'$"):
        ag.load(_write(tmp_path, header, missing))
    extra = dict(tensors, sneaky=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"field 'tensors': .*: unexpected 'sneaky'$"):
        ag.load(_write(tmp_path, header, extra))


def test_huge_declared_shape_is_refused_before_any_allocation(tmp_path):
    _, header, tensors = _saved(tmp_path)
    key = _key_of(header, "fc1.bias")
    rec = next(r for r in header["graph"]["nodes"] if r.get("name") == "fc1.bias")
    rec["shape"] = [200000, 200000]  # 149 GiB if anything allocated it
    with pytest.raises(
        ValueError, match=rf"field 'tensors\.{key}': it is F32\[{HIDDEN}\], but .* float32\[200000, 200000\]"
    ):
        ag.load(_write(tmp_path, header, tensors))


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda h: h.update(format="onnx"), "format", "expected 'asg-function'"),
        (lambda h: h.update(version=2), "version", "this reader knows version 1, the file says 2"),
        (lambda h: h.update(graph=[1]), "graph", "expected a graph JSON object with a 'nodes' list"),
        (lambda h: h["graph"]["nodes"].__setitem__(0, 5), r"graph.nodes\[0\]", "expected an object"),
        (lambda h: h["function"].update(num_outputs="1"), "function.num_outputs", "expected int"),
        (lambda h: h["function"].update(num_outputs=True), "function.num_outputs", "expected int"),
        (lambda h: h["function"].update(options=None), "function.options", "expected dict"),
        (lambda h: h["function"].update(num_outputs=2), "function.num_outputs", "2 outputs and 14 updates"),
        (lambda h: h["function"]["updates"].__setitem__(0, [0]), r"function.updates\[0\]", r"expected \[parameter"),
        (lambda h: h["function"]["updates"].__setitem__(0, [10**9, 0]), r"function.updates\[0\]", "expected"),
        (
            lambda h: h["function"]["updates"].reverse(),
            r"function.updates\[0\]",
            "is not graph output 1|must match",
        ),
    ],
    ids=["format", "version", "graph", "node", "num-outputs-str", "num-outputs-bool", "options",
         "num-outputs", "update-pair", "update-index", "update-order"],
)  # fmt: skip
def test_bad_header_fields_are_named(tmp_path, edit, field, message):
    _, header, tensors = _saved(tmp_path)
    edit(header)
    with pytest.raises(ValueError, match=rf"load '.*bad\.asg': field '{field}': .*({message})"):
        ag.load(_write(tmp_path, header, tensors))


def test_leaf_record_fields_are_checked(tmp_path):
    _, header, tensors = _saved(tmp_path)
    i, rec = next((i, r) for i, r in enumerate(header["graph"]["nodes"]) if r["op"] == "parameter")
    for field, value, message in [
        ("shape", [3, "B"], "a parameter needs a list of non-negative ints"),
        ("shape", [-1], "a parameter needs a list of non-negative ints"),
        ("dtype", "complex64", "expected one of float16"),
        ("name", 7, "expected a string"),
        ("data", {"base64": ""}, "values belong in the safetensors tensors"),
    ]:
        bad = json.loads(json.dumps(header))
        bad["graph"]["nodes"][i][field] = value
        with pytest.raises(ValueError, match=rf"field 'graph\.nodes\[{i}\]\.{field}': {message}"):
            ag.load(_write(tmp_path, bad, tensors))
    assert rec["op"] == "parameter"


def test_deeply_nested_header_is_a_value_error(tmp_path):
    path = str(tmp_path / "deep.asg")
    save_file({}, path, metadata={"asg-function": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match=r"deep\.asg': field 'asg-function': not valid JSON"):
        ag.load(path)


def test_unreachable_nodes_are_refused(tmp_path):
    _, header, tensors = _saved(tmp_path)
    nodes = header["graph"]["nodes"]
    nodes.append(
        {"op": "neg", "inputs": [0], "attrs": {}, "shape": nodes[0]["shape"], "dtype": nodes[0]["dtype"]}
    )
    with pytest.raises(ValueError, match=r"field 'graph': 1 of its \d+ nodes are not reachable"):
        ag.load(_write(tmp_path, header, tensors))


# ----------------------------------------------------------------------------- documentation
def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(bundle, extraglobs={"np": np})
    assert result.failed == 0 and result.attempted >= 20
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(ag.Function.save, "Function.save", globs={"np": np}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_readme_save_section_runs():
    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    section = readme.read_text().split("## Save and load a compiled function", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
