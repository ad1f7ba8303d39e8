"""Backend storage: where the values of parameters and state live between steps.

A parameter's :class:`~asg.core.graph.Variable` has one *home* at a time: the host (its numpy
array; every numpy plan works there) or a backend's :class:`Storage` (a GPU's buffers). A plan moves
the variables it uses to its backend's home before it runs (:func:`claim`), so values never
round-trip through numpy between steps of the same backend. Reading ``Tensor.numpy()`` /
``Variable.value`` asks the home for the current value (``sync_to_host``: a download when the
device copy is newer); ``Tensor.assign()`` and setting ``Variable.value`` write through
(``write``). Changing an array returned by ``numpy()`` in place is not seen by a device home: use
``assign``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from .graph import Variable


class Storage(ABC):
    """The memory of one backend: the four operations core needs on a variable's device copy.

    A backend keeps its own record per variable (a device buffer); ``var._value`` is the host copy.
    """

    @abstractmethod
    def upload(self, var: Variable) -> None:
        """Take ``var`` in: allocate its device copy and fill it from the host array ``var._value``."""

    @abstractmethod
    def sync_to_host(self, var: Variable) -> None:
        """Make ``var._value`` current (copy the device value into it, in place) if the device copy is newer."""

    @abstractmethod
    def write(self, var: Variable) -> None:
        """The host array ``var._value`` was replaced or assigned: copy it to the device."""

    @abstractmethod
    def release(self, var: Variable) -> None:
        """Give ``var`` up: after :meth:`sync_to_host`, free its device copy."""


def claim(var: Variable, home: Storage | None) -> None:
    """Move ``var``'s current value to ``home`` (``None``: the host numpy array), if it is not there.

    >>> import numpy as np
    >>> v = Variable(np.ones(2, "float32"), "w")
    >>> claim(v, None)  # already on the host: nothing moves
    >>> v._home is None
    True
    """
    old = var._home
    if old is home:
        return
    if old is not None:
        old.sync_to_host(var)
        old.release(var)
        var._home = None
    if home is not None:
        home.upload(var)
        var._home = home


def claim_all(variables: Iterable[Variable], home: Storage | None) -> None:
    """:func:`claim` each variable (the check per variable is one attribute read when already home)."""
    for var in variables:
        if var._home is not home:
            claim(var, home)
