"""Default collate: turn a list of samples into one batch.

Arrays are stacked on a new axis 0, Python and numpy numbers become a 1-D array, tuples, lists and
dicts are collated field by field (keeping their structure), strings and ``None`` are kept as a list.

>>> import numpy as np
>>> batch = default_collate([{"x": np.zeros(2), "y": 1}, {"x": np.ones(2), "y": 0}])
>>> batch["x"].shape, batch["y"].tolist()
((2, 2), [1, 0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["default_collate"]


def default_collate(samples: Sequence[Any]) -> Any:
    """Collate ``samples`` (all of the same structure) into a batch; see the module docstring.

    >>> default_collate([(1, 2.0), (3, 4.0)])
    (array([1, 3]), array([2., 4.]))
    """
    if len(samples) == 0:
        raise ValueError("default_collate got an empty list of samples")
    first = samples[0]
    if isinstance(first, np.ndarray):
        shapes = {s.shape for s in samples if isinstance(s, np.ndarray)}
        if len(shapes) != 1 or not all(isinstance(s, np.ndarray) for s in samples):
            raise ValueError(
                f"default_collate cannot stack arrays of different shapes {sorted(shapes)}; "
                "resize them in a transform or pass a collate_fn"
            )
        return np.stack(samples)
    if isinstance(first, (bool, int, float, complex, np.generic)):
        return np.asarray(samples)
    if isinstance(first, (str, bytes)) or first is None:
        return list(samples)
    if isinstance(first, Mapping):
        keys = list(first.keys())
        for s in samples:
            if not isinstance(s, Mapping) or set(s.keys()) != set(keys):
                raise ValueError(f"default_collate: dict samples must share the keys {keys}")
        return {k: default_collate([s[k] for s in samples]) for k in keys}
    if isinstance(first, (tuple, list)):
        width = len(first)
        for s in samples:
            if not isinstance(s, (tuple, list)) or len(s) != width:
                raise ValueError(f"default_collate: sequence samples must all have length {width}")
        columns = [default_collate([s[k] for s in samples]) for k in range(width)]
        if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
            return type(first)(*columns)
        return tuple(columns) if isinstance(first, tuple) else columns
    if hasattr(first, "__array__"):
        return np.stack([np.asarray(s) for s in samples])
    raise TypeError(
        f"default_collate does not know how to batch {type(first).__name__}; "
        "use arrays, numbers, tuples, lists or dicts of them, or pass a collate_fn"
    )
