"""The dtypes ASG knows, their numpy equivalents and the promotion rule.

A dtype is named by a plain string (``"float32"``); numpy dtypes and Python types are accepted
wherever a dtype is expected and normalised by :func:`dtype_of`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

float16 = "float16"
float32 = "float32"
float64 = "float64"
int32 = "int32"
int64 = "int64"
bool_ = "bool"

DTYPES: tuple[str, ...] = (float16, float32, float64, int32, int64, bool_)
FLOAT_DTYPES: frozenset[str] = frozenset({float16, float32, float64})
INT_DTYPES: frozenset[str] = frozenset({int32, int64})

# Promotion order: bool < int32 < int64 < float16 < float32 < float64 (as numpy, except that an
# integer tensor meeting a float16 one gives float16, not float64).
_RANK = {bool_: 0, int32: 1, int64: 2, float16: 3, float32: 4, float64: 5}


def dtype_of(value: Any) -> str:
    """Normalise a dtype given as a string, numpy dtype or Python type.

    >>> dtype_of(np.float32), dtype_of("int64"), dtype_of(bool)
    ('float32', 'int64', 'bool')
    """
    if isinstance(value, str) and value in _RANK:
        return value
    if value is float:
        return float32
    if value is int:
        return int64
    name = np.dtype(value).name
    if name not in _RANK:
        raise TypeError(f"unsupported dtype {value!r}: ASG supports {', '.join(DTYPES)}")
    return name


def is_float(dtype: str) -> bool:
    """True for the floating-point dtypes."""
    return dtype in FLOAT_DTYPES


def promote(*dtypes: str) -> str:
    """The dtype two or more operands are computed in.

    >>> promote("int64", "float32")
    'float32'
    """
    return max(dtypes, key=_RANK.__getitem__)


def to_numpy(dtype: str) -> np.dtype:
    """The numpy dtype for an ASG dtype name."""
    return np.dtype(dtype)
