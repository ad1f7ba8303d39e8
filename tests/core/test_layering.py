"""asg-core's imports go one way, and the Tensor methods are attached by the op families.

The IR is at the bottom and every module imports only from its own layer or below::

    errors, dtypes, shapes, threads, blas  <  registry  <  graph  <  tensor  <  autograd  <  ops.*  <  the rest

Autograd sits below the op families, as JAX's ``ad`` sits below ``lax``: it applies the few ops it
emits by registry name, and the families import it (``layer_norm``'s gradient differentiates a
formula). Function-local imports count; imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import asg.core as ag
from asg.core import tensor as tensor_module

ROOT = Path(ag.__file__).parent
LAYERS = {
    "errors": 0,
    "dtypes": 0,
    "shapes": 0,
    "registry": 1,
    "naming": 0,
    "threads": 0,  # thread counts and the BLAS (numpy only): the kernels of ops.* call them
    "blas": 0,
    "graph": 2,
    "tensor": 3,
    "autograd": 4,
    "ops": 5,
}
TOP = 6


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts)  # "" is asg.core itself


def _is_package(name: str) -> bool:
    return (ROOT.joinpath(*name.split(".")) / "__init__.py").exists() if name else True


def _exists(name: str) -> bool:
    return _is_package(name) or ROOT.joinpath(*name.split(".")).with_suffix(".py").exists()


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imports(name: str, path: Path) -> set[str]:
    """The asg.core modules that ``name`` imports (relative to asg.core; "" is the package)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_blocks(tree)
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("asg.core"):
                target = node.module.removeprefix("asg.core").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("asg.core"):
                    found.add(alias.name.removeprefix("asg.core").lstrip("."))
    found.discard(name)
    return found


GRAPH = {_module_name(p): _imports(_module_name(p), p) for p in sorted(ROOT.rglob("*.py"))}


def _layer(name: str) -> int:
    return LAYERS.get(name.split(".")[0], TOP) if name else TOP + 1


def test_the_import_scan_sees_known_edges():
    assert "tensor" in GRAPH["autograd"] and "registry" in GRAPH["tensor"]
    assert {"ops.elementwise", "ops.shape", "tensor"} <= GRAPH["ops.reduction"]
    assert "autograd" in GRAPH["ops.normalization"]


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _layer(n) < TOP))
def test_module_imports_only_from_its_layer_or_below(name):
    upward = sorted(t for t in GRAPH[name] if _layer(t) > _layer(name))
    assert not upward, f"asg.core.{name} (layer {_layer(name)}) imports from above: {upward}"


def test_tensor_and_autograd_never_import_the_op_families():
    for name in ("tensor", "autograd", "graph", "registry"):
        assert not any(t == "ops" or t.startswith("ops.") for t in GRAPH[name]), name


def test_no_import_cycle_inside_asg_core():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError(
                    "import cycle: " + " -> ".join(f"asg.core.{m}".rstrip(".") for m in cycle)
                )
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


# ----------------------------------------------------------------------------- Tensor methods: one spelling
def test_every_public_tensor_member_has_a_docstring_with_shapes():
    members = {n: getattr(ag.Tensor, n) for n in dir(ag.Tensor) if not n.startswith("_")}
    assert len(members) >= 36
    missing = [n for n, m in members.items() if not (inspect.getdoc(m) or "").strip()]
    assert not missing, f"Tensor members without a docstring: {missing}"
    attached = [n for n in tensor_module.TENSOR_METHODS if not n.startswith("_")]
    no_shapes = [n for n in attached if "(" not in inspect.getdoc(members[n]).splitlines()[0]]
    assert not no_shapes, f"first docstring lines without shapes: {no_shapes}"


def test_tensor_methods_are_the_op_functions_themselves():
    assert ag.Tensor.exp is ag.exp and ag.Tensor.sum is ag.sum and ag.Tensor.reshape is ag.reshape
    assert ag.Tensor.astype is ag.cast and ag.Tensor.expand is ag.broadcast_to
    assert ag.Tensor.__matmul__ is ag.matmul and ag.Tensor.__getitem__ is ag.getitem
    for attr, module in tensor_module.TENSOR_METHODS.items():
        assert module.startswith("asg.core.ops."), (attr, module)
    # tensor.py defines the operators that map one to one onto ops, and no op wrappers.
    tree = ast.parse(Path(tensor_module.__file__).read_text())
    tensor_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tensor")
    defined = {n.name for n in tensor_class.body if isinstance(n, ast.FunctionDef)}
    assert not defined & set(tensor_module.TENSOR_METHODS), defined & set(tensor_module.TENSOR_METHODS)
    assert not defined & {"exp", "sum", "reshape", "softmax", "matmul", "transpose"}
    assert "_ops" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_attaching_a_method_twice_is_an_error():
    with pytest.raises(
        ValueError, match=r"Tensor\.exp is already defined \(by asg\.core\.ops\.elementwise\)"
    ):
        tensor_module.tensor_method(lambda x: x, name="exp")
    with pytest.raises(ValueError, match=r"Tensor\.shape is already defined \(by asg\.core\.tensor\)"):
        tensor_module.tensor_method(lambda x: x, name="shape")


@pytest.mark.parametrize(
    "module",
    [
        "ops.elementwise",
        "ops.reduction",
        "ops.shape",
        "ops.activation",
        "ops.linalg",
        "ops.convolution",
        "ops.pooling",
        "tensor",
        "errors",
        "autograd",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    import numpy as np

    result = doctest.testmod(importlib.import_module(f"asg.core.{module}"), extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0, result
