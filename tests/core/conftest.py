import pytest

import asg.core as ag


def _registry_state() -> dict[str, tuple]:
    return {
        name: (op, dict(op.kernels), dict(getattr(op, "lowerings", {})), op.traits)
        for name, op in ag.OPS.items()
    }


@pytest.fixture(autouse=True, scope="module")
def _registry_is_left_as_found(request: pytest.FixtureRequest):
    """A test module must leave the global op registry as it found it: throwaway ops, and kernels or
    lowerings for made-up backends or traits added to existing ops, belong inside
    ``asg.core.testing.scratch_ops()``. What leaked is undone, and the module's last test errors.

    Kernels and lowerings of installed backends may appear (a backend may lower ops that another
    package defined after it was imported, on first use); they stay.
    """
    before = _registry_state()
    yield
    backends = set(ag.available_backends())
    leaked = sorted(set(ag.OPS) - set(before))
    for name in leaked:
        del ag.OPS[name]
    changed = []
    for name, (op, kernels, lowerings, traits) in before.items():
        if ag.OPS.get(name) is not op:
            ag.OPS[name] = op
            changed.append(name)
            continue
        for now, then in ((op.kernels, kernels), (getattr(op, "lowerings", {}), lowerings)):
            for backend in [
                b for b in set(now) | set(then) if b not in backends and now.get(b) is not then.get(b)
            ]:
                changed.append(name)
                if backend in then:
                    now[backend] = then[backend]
                else:
                    del now[backend]
        if op.traits != traits:
            op.traits = traits
            changed.append(name)
    changed = sorted(set(changed))
    if leaked or changed:
        parts = [f"left ops in asg.core.OPS: {', '.join(leaked)}"] if leaked else []
        parts += [f"changed the kernels, lowerings or traits of {', '.join(changed)}"] if changed else []
        pytest.fail(
            f"{request.module.__name__} {'; '.join(parts)}; "
            "define throwaway ops (and register test kernels) inside `with asg.core.testing.scratch_ops():`",
            pytrace=False,
        )
