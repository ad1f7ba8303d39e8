import pytest

import asg.core as ag


@pytest.fixture(autouse=True, scope="module")
def _registry_is_left_as_found(request: pytest.FixtureRequest):
    """A test module must not leave ops in the global registry: throwaway ops belong inside
    ``asg.core.testing.scratch_ops()``. Leaked ops are removed, and the module's last test errors."""
    before = set(ag.OPS)
    yield
    leaked = sorted(set(ag.OPS) - before)
    for name in leaked:
        del ag.OPS[name]
    if leaked:
        pytest.fail(
            f"{request.module.__name__} left ops in asg.core.OPS: {', '.join(leaked)}; "
            "define throwaway ops inside `with asg.core.testing.scratch_ops():`",
            pytrace=False,
        )
