"""Executors. A backend turns a specialised graph into a :class:`~asg.core.backends.base.Plan`.

Backends are plug-ins: asg-core ships ``"numpy"`` and ``"numpy-jit"`` (numpy with fused numba
kernels where numba is installed: :mod:`asg.core.backends.jit`); other packages register theirs under the
``asg.backends`` entry-point group (or call :func:`register_backend`).
"""

from .base import Backend, Capabilities, Plan, available_backends, build_plan, get_backend, register_backend

__all__ = [
    "Backend",
    "Capabilities",
    "NumpyBackend",
    "Plan",
    "available_backends",
    "build_plan",
    "get_backend",
    "register_backend",
]

from .numpy_backend import NumpyBackend

register_backend("numpy", NumpyBackend)

from .jit import NumpyJitBackend  # noqa: E402  (numba itself is imported only when a plan is built)

register_backend("numpy-jit", NumpyJitBackend)
