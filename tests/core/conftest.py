import pytest

import asg.core as ag
from asg.core.testing import scratch_ops


def _registry_state() -> dict[str, tuple]:
    return {
        name: (op, frozenset(op.kernels), frozenset(getattr(op, "lowerings", {})), op.traits)
        for name, op in ag.OPS.items()
    }


@pytest.fixture(autouse=True, scope="module")
def _registry_is_left_as_found(request: pytest.FixtureRequest):
    """A test module must leave the global op registry as it found it: throwaway ops, and kernels,
    lowerings or traits added to existing ops, belong inside ``asg.core.testing.scratch_ops()``.
    What leaked is undone, and the module's last test errors."""
    before = _registry_state()
    with scratch_ops():
        yield
        after = _registry_state()
    leaked = sorted(set(after) - set(before))
    changed = sorted(n for n in before if n in after and after[n] != before[n])
    if leaked or changed:
        parts = [f"left ops in asg.core.OPS: {', '.join(leaked)}"] if leaked else []
        parts += [f"changed the kernels, lowerings or traits of {', '.join(changed)}"] if changed else []
        pytest.fail(
            f"{request.module.__name__} {'; '.join(parts)}; "
            "define throwaway ops (and register test kernels) inside `with asg.core.testing.scratch_ops():`",
            pytrace=False,
        )
