"""asg-core's per-op cases (forward and gradients) on the wgpu backend, against numpy."""

import pytest

import asg.core.testing as agt
from asg.gpu.kernels import IMPLEMENTED

# Ops (or case ids) not run on wgpu yet, with the reason. Shrink this list as kernels land.
NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize("case", agt.op_case_params(skip=NOT_YET))
def test_op_on_wgpu(case):
    case.check(backend="wgpu")


def test_skip_list_only_names_missing_kernels():
    # An op that gained a kernel must leave NOT_YET (so the list stays honest).
    assert not (set(NOT_YET) & IMPLEMENTED), sorted(set(NOT_YET) & IMPLEMENTED)
