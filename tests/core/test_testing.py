"""asg.core.testing: the parity harness finds wrong forwards, wrong gradients (first and second order),
PyTorch mismatches and backends that disagree with numpy; scratch ops leave the registry as found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.backends import base
from asg.core.backends.base import Capabilities
from asg.core.backends.numpy_backend import NumpyBackend
from asg.core.testing import check as check_module

X = agt.rand(2, 3, seed=5)


# ----------------------------------------------------------------------------- check_op on numpy
def test_check_op_passes_a_correct_op_and_finds_a_wrong_reference():
    agt.check_op(ag.tanh, X, ref=np.tanh, torch_fn=agt.torch_or_skip.tanh)
    with pytest.raises(AssertionError, match="forward against the numpy reference"):
        agt.check_op(ag.tanh, X, ref=lambda x: np.tanh(x) + 1e-4)
    with pytest.raises(AssertionError, match=r"shape \(2, 3\) != expected \(3, 2\)"):
        agt.check_op(ag.tanh, X, ref=lambda x: np.tanh(x).T)


def test_check_op_finds_a_wrong_first_order_gradient_rule():
    with agt.scratch_ops():
        ag.define_op(
            "test_testing_bad_square", infer=lambda t: t, kernel=np.square, grad=lambda g, out, x: (g * x,)
        )
        with pytest.raises(AssertionError, match="first-order gradient of input 0 differs"):
            agt.check_op(lambda x: ag.apply("test_testing_bad_square", x), X, ref=np.square)


def test_check_op_finds_a_gradient_rule_that_is_right_only_to_first_order():
    # d/dx x^2 = 2x, but written with stop_gradient the second derivative comes out 0 instead of 2.
    with agt.scratch_ops():
        ag.define_op(
            "test_testing_square_no_second_order",
            infer=lambda t: t,
            kernel=np.square,
            grad=lambda g, out, x: (g * 2.0 * ag.stop_gradient(x),),
        )

        def fn(x):
            return ag.apply("test_testing_square_no_second_order", x)

        agt.check_op(fn, X, ref=np.square, order=1)
        with pytest.raises(AssertionError, match="second-order gradient of input 0 differs"):
            agt.check_op(fn, X, ref=np.square, order=2)


def test_check_op_compares_forward_and_gradients_with_torch():
    pytest.importorskip("torch")
    agt.check_op(lambda x: x * x, X, torch_fn=lambda t: t * t)
    with pytest.raises(AssertionError, match="forward against PyTorch"):
        agt.check_op(lambda x: x * x, X, torch_fn=lambda t: t * t + 1e-3)
    # Same values, different gradient: PyTorch sees x * detach(x), whose gradient is x, not 2x.
    with pytest.raises(AssertionError, match="gradient of float input 0 against PyTorch"):
        agt.check_op(lambda x: x * x, X, torch_fn=lambda t: t * t.detach(), order=0)


def test_check_op_passes_integer_inputs_unchanged_and_compares_non_float_outputs_exactly():
    idx = np.array([2, 0, 2])
    agt.check_op(lambda x, i: ag.index_select(x, i, 0), agt.rand(3, 2), idx, ref=lambda x, i: x[i])
    agt.check_op(lambda a, b: a < b, X, X.T.reshape(2, 3), ref=np.less)
    with pytest.raises(AssertionError, match="forward against the numpy reference"):
        agt.check_op(lambda a, b: a < b, X, X.T.reshape(2, 3), ref=np.less_equal)


def test_check_op_without_torch_skips_inside_pytest_after_the_other_checks(monkeypatch):
    monkeypatch.setattr(check_module, "_torch", lambda: None)
    with pytest.raises(AssertionError, match="forward against the numpy reference"):
        agt.check_op(ag.exp, X, ref=np.tanh, torch_fn=lambda t: t.exp())  # the reference still fails it
    with pytest.raises(pytest.skip.Exception, match="PyTorch is not installed"):
        agt.check_op(ag.exp, X, ref=np.exp, torch_fn=lambda t: t.exp())


def test_module_imports_and_runs_without_pytest_and_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['pytest'] = None\n"
        "import numpy as np, asg.core as ag, asg.core.testing as agt\n"
        "agt.check_op(ag.exp, np.ones(3), ref=np.exp, torch_fn=lambda t: t.exp())\n"
        "print(agt.check_backend('numpy', ['exp', 'add', 'conv2d']).passed[:2], agt.torch_available())\n"
        "try:\n"
        "    agt.op_case_params()\n"
        "except ImportError:\n"
        "    print('op_case_params needs pytest')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['exp', 'add-2x3-2x3'] False", "op_case_params needs pytest"]


# ----------------------------------------------------------------------------- check_op on another backend
class _Wrapped:
    """Runs numpy's plan and then lets ``corrupt`` change the results (a stand-in for a buggy backend)."""

    def __init__(self, plan: Any, corrupt: Any) -> None:
        self._plan, self._corrupt = plan, corrupt

    def __call__(self, feeds: Any) -> list[np.ndarray]:
        return self._corrupt([np.array(r) for r in self._plan(feeds)])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plan, name)


class FakeBackend(NumpyBackend):
    """numpy's kernels under another name; ``dtypes`` (and ``narrow_index``) are its declared
    capabilities; ``corrupt`` edits what its plans return."""

    def __init__(
        self, name: str, dtypes: set[str] | None = None, corrupt: Any = None, narrow_index: bool = False
    ) -> None:
        super().__init__()
        self.name = name
        if dtypes is not None:
            self.capabilities = Capabilities(dtypes=frozenset(dtypes), narrow_index=narrow_index)
        self._corrupt = corrupt or (lambda results: results)

    def compile(self, *args: Any, **kwargs: Any) -> _Wrapped:
        return _Wrapped(super().compile(*args, **kwargs), self._corrupt)


@pytest.fixture
def add_backend(monkeypatch):
    """Registers fake backends, each with numpy's kernels and lowerings, for one test."""

    def add(backend: FakeBackend) -> str:
        for op in ag.OPS.values():
            op.kernels[backend.name] = op.kernels["numpy"]
            if "numpy" in op.lowerings:
                op.lowerings[backend.name] = op.lowerings["numpy"]
        monkeypatch.setitem(base._BACKENDS, backend.name, backend)
        monkeypatch.setitem(base._INSTANCES, backend.name, backend)
        return backend.name

    agt.backend_supports.cache_clear()
    with agt.scratch_ops():
        yield add
    agt.backend_supports.cache_clear()


def _shift(index: int, by: float) -> Any:
    def corrupt(results: list[np.ndarray]) -> list[np.ndarray]:
        results[index] = results[index] + by
        return results

    return corrupt


def test_backend_that_agrees_with_numpy_passes_every_check(add_backend):
    name = add_backend(FakeBackend("test_same"))
    agt.check_op(ag.tanh, X, ref=np.tanh, backend=name)
    assert agt.backend_supports(name, "float64")  # no declaration: it ran a float64 graph


def test_backend_with_a_wrong_forward_or_gradient_is_caught(add_backend):
    wrong_value = add_backend(FakeBackend("test_wrong_value", {"float32", "bool"}, _shift(0, 1e-2)))
    wrong_grad = add_backend(FakeBackend("test_wrong_grad", {"float32", "bool"}, _shift(2, 1e-2)))
    with pytest.raises(AssertionError, match="forward on 'test_wrong_value' against numpy"):
        agt.check_op(ag.tanh, X, ref=np.tanh, backend=wrong_value)
    with pytest.raises(AssertionError, match="gradient of float input 1 on 'test_wrong_grad' against numpy"):
        agt.check_op(lambda a, b: a * b, X, X + 1, ref=np.multiply, backend=wrong_grad)


def test_backend_returning_another_dtype_is_caught(add_backend):
    def to_float64(results):
        return [r.astype(np.float64) for r in results]

    name = add_backend(FakeBackend("test_dtype", None, to_float64))
    with pytest.raises(AssertionError, match="forward on 'test_dtype': dtype float64, numpy gives float32"):
        agt.check_op(ag.exp, X, order=0, backend=name)


def test_backend_without_float64_skips_the_float64_checks(add_backend):
    f32 = add_backend(FakeBackend("test_f32", {"float32", "int32", "int64", "bool"}))
    assert not agt.backend_supports(f32, "float64") and agt.backend_supports(f32, "float32")
    wrong_ref = lambda x: np.tanh(x) + 1  # noqa: E731 - a reference only the float64 run would compare
    agt.check_op(ag.tanh, X, ref=wrong_ref, backend=f32)
    with pytest.raises(AssertionError, match="forward against the numpy reference"):
        agt.check_op(ag.tanh, X, ref=wrong_ref)


def test_backend_with_float64_runs_the_finite_differences_there(add_backend):
    # Off in every float64 array but right in scalars: the finite differences (of a scalar) then
    # disagree with the analytic gradients, and the forward with the reference.
    def shift_f64_arrays(results):
        return [r + 1e-3 if r.dtype == np.float64 and r.ndim else r for r in results]

    name = add_backend(FakeBackend("test_f64", None, shift_f64_arrays))
    with pytest.raises(AssertionError, match="gradient of input 0 differs from finite differences"):
        agt.check_op(ag.tanh, X, backend=name)
    with pytest.raises(AssertionError, match="forward against the numpy reference"):
        agt.check_op(ag.tanh, X, ref=np.tanh, backend=name)


def test_a_backend_mismatch_names_the_first_value_that_differs(add_backend):
    name = add_backend(FakeBackend("test_bad_tanh", {"float32", "bool"}))
    ag.register_kernel(name, "tanh", lambda x: np.tanh(x) + np.float32(0.01))  # a wrong kernel
    with pytest.raises(AssertionError) as info:
        agt.check_op(lambda x: ag.tanh(x * 2.0) + 1.0, X, backend=name)
    message = str(info.value)
    assert message.startswith("forward on 'test_bad_tanh' against numpy:")
    assert message.endswith("\n  the first value that differs: check_op_1:f32[2,3] = tanh check_op_0")


WGSL_LIKE = {"float32", "int32", "bool"}


def test_a_backend_that_narrows_index_dtypes_may_return_int32_for_int64(add_backend):
    name = add_backend(FakeBackend("test_narrow", WGSL_LIKE, narrow_index=True))
    for op in ("argmax", "index_select", "gather", "arange", "one_hot"):
        for case in agt.OP_CASES[op]:
            case.check(backend=name)
    # Without the declaration, an int32 result where numpy gives int64 is a dtype mismatch.
    to_int32 = add_backend(FakeBackend("test_int32", None, lambda rs: [r.astype(np.int32) for r in rs]))
    with pytest.raises(
        AssertionError, match="forward against the numpy reference: dtype int32 != expected int64"
    ):
        agt.OP_CASES["argmax"][0].check(backend=to_int32)  # its float64 run meets the reference first
    with pytest.raises(AssertionError, match="forward on 'test_int32': dtype int32, numpy gives int64"):
        agt.check_op(lambda x: x.argmax(0), agt.rand(3, 2), backend=to_int32)  # no reference: numpy's result


def test_cases_a_backend_cannot_hold_are_skipped_with_the_reason(add_backend):
    name = add_backend(FakeBackend("test_wgsl", WGSL_LIKE, narrow_index=True))
    case = next(c for c in agt.OP_CASES["cast"] if c.name == "float16_round_trip")
    with pytest.raises(
        agt.UnsupportedCase, match=r"backend 'test_wgsl' cannot run this case's dtypes: .*float16"
    ):
        case.run(backend=name)
    with pytest.raises(pytest.skip.Exception, match="float16"):
        case.check(backend=name)
    report = agt.check_backend(name, ["cast", "random_uniform", "bernoulli", "exp"])
    assert sorted(report.skipped) == [
        "bernoulli",
        "cast-float16_round_trip",
        "random_uniform",
        "random_uniform-low_high",
    ]
    assert "random key" in report.skipped["bernoulli"]
    assert report.passed == [c.id for c in agt.OP_CASES["cast"] if c.name != "float16_round_trip"] + ["exp"]


def test_check_backend_lists_every_failing_case(add_backend):
    name = add_backend(FakeBackend("test_broken", {"float32", "bool", "int64"}, _shift(0, 1.0)))
    with pytest.raises(AssertionError) as info:
        agt.check_backend(name, ["exp", "add"])
    message = str(info.value)
    total = len(agt.OP_CASES["exp"]) + len(agt.OP_CASES["add"])
    assert message.startswith(f"{total} of {total} op cases fail on backend 'test_broken' (0 skipped")
    assert "\nexp: AssertionError: forward on 'test_broken' against numpy" in message
    assert "\nadd-3x1x4-2x4: AssertionError" in message
    assert agt.check_backend("numpy", ["exp", "add"]).passed == [c.id for c in agt.cases(["exp", "add"])]
    with pytest.raises(KeyError, match="no cases for no_such_op"):
        agt.check_backend("numpy", ["no_such_op"])


# ----------------------------------------------------------------------------- the table as pytest parameters
def test_op_case_params_have_unique_ids_and_mark_skips():
    params = agt.op_case_params()
    ids = [p.id for p in params]
    assert len(ids) == len(set(ids)) == sum(len(v) for v in agt.OP_CASES.values())
    some = agt.op_case_params(
        ["matmul", "exp"], skip={"matmul-3-3": "dot products not lowered yet", "exp": "no"}
    )
    marked = {p.id: [m.kwargs["reason"] for m in p.marks] for p in some}
    assert marked["matmul-3-3"] == ["dot products not lowered yet"]
    assert marked["exp"] == ["no"]
    assert marked["matmul-2x3-3x4"] == []


def test_case_arrays_are_fresh_copies():
    case = agt.OP_CASES["add"][0]
    a = case.arrays()[0]
    a += 1
    np.testing.assert_array_equal(case.arrays()[0], a - 1)


# ----------------------------------------------------------------------------- scratch_ops
def test_scratch_ops_removes_new_ops_and_restores_kernels_and_traits_even_on_error():
    exp = ag.get_op("exp")
    kernels, traits = dict(exp.kernels), exp.traits
    with pytest.raises(RuntimeError, match="inside"), agt.scratch_ops():
        ag.define_op("test_testing_scratch", infer=lambda t: t, kernel=lambda a: a)
        ag.register_kernel("test_backend", "exp", np.exp)
        exp.traits = exp.traits | {"effectful"}
        assert "test_testing_scratch" in ag.OPS and "test_backend" in exp.kernels
        raise RuntimeError("inside")
    assert "test_testing_scratch" not in ag.OPS
    assert exp.kernels == kernels and exp.traits == traits
    assert ag.get_op("exp") is exp


def test_readme_testing_section_runs():
    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    section = readme.read_text().split("## Testing a backend", 1)[1].split("\n## ", 1)[0]
    first, second = (block.split("```", 1)[0] for block in section.split("```python\n")[1:3])
    namespace: dict[str, Any] = {}
    exec(compile(first, "README.md", "exec"), namespace)
    assert namespace["report"].passed == [c.id for c in agt.cases(["matmul", "softmax"])]
    assert "# ['matmul-2x3-3x4', 'matmul-2x2x3-2x3x4'] {}" in first
    # The backend package's test module, pointed at numpy so that it runs here.
    exec(compile(second.replace('"wgpu"', '"numpy"'), "README.md", "exec"), namespace)
    params = namespace["test_op"].pytestmark[0].args[1]
    assert [p.id for p in params] == [c.id for c in agt.cases()]
    assert [m.kwargs["reason"] for p in params if p.id.startswith("cumsum") for m in p.marks] == [
        "no WGSL scan kernel yet"
    ] * len(agt.OP_CASES["cumsum"])
    for param in params[:5]:
        namespace["test_op"](*param.values)


def test_conftest_fails_a_module_that_leaves_an_op_in_the_registry(tmp_path):
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_leaky.py").write_text(
        "import asg.core as ag\n\n"
        "def test_defines():\n"
        "    ag.define_op('test_leaky_op', infer=lambda t: t, kernel=lambda a: a)\n\n"
        "def test_after():\n"
        "    assert 'test_leaky_op' in ag.OPS\n"
    )
    (tmp_path / "test_kernel.py").write_text(
        "import numpy as np\nimport asg.core as ag\n\n"
        "def test_registers():\n    ag.register_kernel('test_leaky_backend', 'exp', np.exp)\n"
    )
    (tmp_path / "test_later.py").write_text(
        "import asg.core as ag\n\ndef test_clean():\n"
        "    assert 'test_leaky_op' not in ag.OPS and 'test_leaky_backend' not in ag.get_op('exp').kernels\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout
    assert (
        "test_leaky left ops in asg.core.OPS: test_leaky_op; define throwaway ops (and register"
        in done.stdout
    )
    assert "test_kernel changed the kernels, lowerings or traits of exp; define throwaway ops" in done.stdout
    assert "4 passed, 2 errors" in done.stdout  # the leaks are undone: the next module sees a clean registry


@pytest.mark.parametrize("module", ["__init__", "check", "cases", "scratch"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module("asg.core.testing" + ("" if module == "__init__" else f".{module}"))
    result = doctest.testmod(mod, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 2
