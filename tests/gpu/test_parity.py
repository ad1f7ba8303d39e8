"""asg-core's per-op cases (forward and gradients) on the wgpu backend, against numpy."""

import pytest

import asg.core.testing as agt
from asg.core.registry import KEY, RANDOM, ops_with
from asg.gpu.kernels import IMPLEMENTED

# Ops (or case ids) not run on wgpu yet, with the reason. Shrink this list as kernels land.
NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize("case", agt.op_case_params(skip=NOT_YET))
def test_op_on_wgpu(case):
    case.check(backend="wgpu")


@pytest.mark.parametrize("case", agt.op_case_params(sorted(ops_with(KEY) | ops_with(RANDOM))))
def test_key_and_random_op_cases_run_on_wgpu_without_a_dtype_skip(case):
    # int64 keys (fold_in's output too, as a graph output) live on wgpu as two 32-bit words: a case
    # the backend's dtypes "cannot run" raises here instead of being skipped
    case.run(backend="wgpu")


def test_skip_list_only_names_missing_kernels():
    # An op that gained a kernel must leave NOT_YET (so the list stays honest).
    assert not (set(NOT_YET) & IMPLEMENTED), sorted(set(NOT_YET) & IMPLEMENTED)
