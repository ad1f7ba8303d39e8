"""Backend storage: where the values of parameters and state live between steps.

A parameter's :class:`~asg.core.graph.Variable` has one *home* at a time: the host (its numpy
array; every numpy plan works there) or a backend's :class:`Storage` (a GPU's buffers). A plan moves
the variables it uses to its backend's home before it runs (:func:`claim`), so values never
round-trip through numpy between steps of the same backend. Reading ``Tensor.numpy()`` /
``Variable.value`` asks the home for the current value (``sync_to_host``: a download when the
device copy is newer); ``Tensor.assign()`` and setting ``Variable.value`` write through
(``write``). Changing an array returned by ``numpy()`` in place is not seen by a device home: use
``assign``.

A backend without 64-bit integers runs an int64 parameter that is not a random key (a step counter,
BatchNorm's ``num_batches_tracked``) as int32 (:func:`asg.core.passes.narrow.narrow_index_dtypes`).
Its storage then keeps an int32 copy (:func:`store_as`, set when a plan is built) while the host array,
and so ``numpy()``, ``state_dict()`` and saved files, stay int64: :meth:`Storage.to_device` narrows the
value at upload and write (an error names the variable if a value does not fit in int32),
:meth:`Storage.to_host` widens it at readback. Values computed on the device wrap around as int32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np

from .graph import Variable
from .passes.narrow import UnsupportedDTypeError, range_error


class Storage(ABC):
    """The memory of one backend: the four operations core needs on a variable's device copy.

    A backend keeps its own record per variable (a device buffer); ``var._value`` is the host copy.
    A storage reads the host copy with :meth:`to_device` and writes it with :meth:`to_host`, so
    variables its plans run narrower than their host arrays (:func:`store_as`) are converted.
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

    def stored_dtype(self, var: Variable) -> str:
        """The dtype of ``var``'s copy here: its host array's, or the narrower one set by :func:`store_as`."""
        stored = var._stored
        if stored is not None and self in stored:
            return stored[self]
        if var._value is None:
            raise ValueError(f"parameter {var.name!r} has no value to store")
        return var._value.dtype.name

    def to_device(self, var: Variable) -> np.ndarray:
        """The host value as this storage keeps it: ``var._value`` itself, or a narrowed copy.

        Raises :class:`~asg.core.passes.narrow.UnsupportedDTypeError` naming ``var`` if a value does
        not fit in the narrower dtype.
        """
        value = var._value
        if value is None:
            raise ValueError(f"parameter {var.name!r} has no value to store")
        dtype = self.stored_dtype(var)
        if value.dtype.name == dtype:
            return value
        bad = range_error(value, dtype)
        if bad:
            raise UnsupportedDTypeError(
                f"{type(self).__name__}: parameter {var.name!r} ({value.dtype.name}) is stored as {dtype} on "
                f"this backend (it has no 64-bit integers), but it holds values outside {dtype} {bad}; keep "
                "it within that range, or run this graph on the numpy backend"
            )
        return value.astype(dtype)

    def to_host(self, var: Variable, value: np.ndarray) -> None:
        """Copy ``value`` (the device copy, in :meth:`stored_dtype`) into the host array ``var._value``, in place."""
        np.copyto(var._value, value, casting="safe")


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


def store_as(var: Variable, home: Storage, dtype: str, backend: str = "") -> None:
    """From now on, ``home`` keeps ``var`` as ``dtype`` (the dtype the backend's plans run it as).

    Called when a plan is built, for every int64 parameter of a backend that narrows index dtypes: the
    narrowed ones as int32, the random keys as int64. A value already in ``home`` in another dtype goes
    back to the host first (the next :func:`claim` uploads it again). Two plans of one backend that run
    the same variable in different dtypes (a random key in one graph, a counter in another) are an
    :class:`~asg.core.passes.narrow.UnsupportedDTypeError` naming it.

    >>> import numpy as np
    >>> class Host(Storage):  # keeps the device copy in a dict
    ...     def __init__(self):
    ...         self.copies = {}
    ...
    ...     def upload(self, var):
    ...         self.copies[var] = self.to_device(var).copy()
    ...
    ...     def sync_to_host(self, var):
    ...         self.to_host(var, self.copies[var])
    ...
    ...     def write(self, var):
    ...         self.upload(var)
    ...
    ...     def release(self, var):
    ...         del self.copies[var]
    >>> home, n = Host(), Variable(np.array(7, "int64"), "n")
    >>> store_as(n, home, "int32")
    >>> claim(n, home)
    >>> home.copies[n].dtype.name, n.value.dtype.name
    ('int32', 'int64')
    >>> n.value = np.array(2**40)
    Traceback (most recent call last):
    ...
    asg.core.passes.narrow.UnsupportedDTypeError: Host: parameter 'n' (int64) is stored as int32 on this backend (it has no 64-bit integers), but it holds values outside int32 (1099511627776..1099511627776; int32 holds -2147483648..2147483647); keep it within that range, or run this graph on the numpy backend
    """
    stored = var._stored or {}
    current = stored.get(home)
    if current == dtype:
        return
    if current is not None:
        raise UnsupportedDTypeError(
            f"backend {backend!r} runs parameter {var.name!r} as {current} in one compiled function and as "
            f"{dtype} in another (a random key, kept int64, in one graph; a narrowed int32 value in the other); "
            "use separate variables for the key and the counter"
        )
    if var._home is home and home.stored_dtype(var) != dtype:
        claim(var, None)
    var._stored = {**stored, home: dtype}


def claim_all(variables: Iterable[Variable], home: Storage | None) -> None:
    """:func:`claim` each variable (the check per variable is one attribute read when already home)."""
    for var in variables:
        if var._home is not home:
            claim(var, home)
