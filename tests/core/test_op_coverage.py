"""Every registered op, of every family, has a numpy kernel, a gradient rule (or is not differentiable)
and parity cases in asg.core.testing.OP_CASES, which all pass on the numpy backend."""

from __future__ import annotations

import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.registry import ELEMENTWISE


def test_every_registered_op_has_a_numpy_kernel_and_a_gradient_rule_or_none_needed():
    for name, op in ag.OPS.items():
        assert "numpy" in op.kernels, f"{name} ({op.family}) has no numpy kernel"
        assert not op.differentiable or op.grad is not None, (
            f"{name} ({op.family}) is differentiable but has no gradient rule: give it one, "
            "or define it with differentiable=False"
        )


def test_every_registered_op_has_a_case_or_is_an_internal_op_of_one():
    missing = agt.registered_ops_without_cases()
    assert missing == [], (
        f"ops without parity cases: {', '.join(missing)}; add cases to the family's module in asg/core/testing/op_cases/ "
        "(or, for a backward op built only by gradients, to INTERNAL_OPS with its forward op)"
    )
    for internal, forward in agt.INTERNAL_OPS.items():
        assert internal in ag.OPS, f"INTERNAL_OPS lists {internal}, which is not a registered op"
        assert forward in agt.OP_CASES, f"INTERNAL_OPS: {internal}'s forward op {forward} has no cases"
        assert internal not in agt.OP_CASES, f"{internal} has its own cases: remove it from INTERNAL_OPS"


def test_every_family_is_covered():
    families = {op.family.rsplit(".", 1)[-1] for op in ag.OPS.values() if op.family.startswith("asg.core.")}
    covered = {ag.get_op(name).family.rsplit(".", 1)[-1] for name in agt.OP_CASES if name in ag.OPS}
    assert families <= covered
    assert {
        "elementwise",
        "reduction",
        "shape",
        "linalg",
        "convolution",
        "pooling",
        "normalization",
        "random",
        "activation",
        "optim",
    } <= covered


@pytest.mark.parametrize("name", sorted(n for n in agt.OP_CASES if n in ag.OPS))
def test_cases_of_an_op_build_that_op(name):
    for case in agt.OP_CASES[name]:
        assert name in case.graph_ops(order=0), f"case {case.id} does not build a {name} node"
        for other in case.covers:
            assert other in case.graph_ops(order=2), (
                f"case {case.id} says it covers {other}, but neither its graph nor its gradients build one"
            )


@pytest.mark.parametrize(("internal", "forward"), sorted(agt.INTERNAL_OPS.items()))
def test_internal_ops_are_built_by_the_gradients_of_their_forward_op(internal, forward):
    built = [c.id for c in agt.OP_CASES[forward] if internal in c.graph_ops(order=2)]
    assert built, f"no case of {forward} builds {internal} in its first or second-order gradient"


def test_every_elementwise_op_with_several_inputs_has_broadcasting_cases():
    """For each elementwise op that some case applies to two or more tensors, one case has operands of
    different shapes (broadcasting) and one has operands of one shape."""
    operand_shapes: dict[str, list[set[tuple]]] = {}
    for cases in agt.OP_CASES.values():
        for case in cases:
            for n in case.nodes(order=0):
                if ag.registry.op_has(n.op, ELEMENTWISE) and len(n.inputs) >= 2:
                    operand_shapes.setdefault(n.op, []).append({i.shape for i in n.inputs})
    assert {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "less", "logical_and"} <= set(
        operand_shapes
    )
    for name, shapes in sorted(operand_shapes.items()):
        assert any(len(s) > 1 for s in shapes), f"{name} has no case with operands of different shapes"
        assert any(len(s) == 1 for s in shapes), f"{name} has no case with operands of one shape"


@pytest.mark.parametrize("case", agt.op_case_params())
def test_op_case_on_numpy(case):
    case.check(backend="numpy")
