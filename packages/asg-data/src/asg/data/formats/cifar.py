"""The official binary versions of CIFAR-10 and CIFAR-100 (not the pickled Python version).

CIFAR-10 record: 1 label byte, then 3072 pixel bytes (the red, green and blue 32x32 planes).
CIFAR-100 record: 1 coarse label byte, 1 fine label byte, then the same 3072 pixel bytes.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "test_batch.bin"
>>> images = np.zeros((2, 3, 32, 32), np.uint8)
>>> write_cifar_binary(path, images, [np.array([7, 1], np.uint8)])
>>> x, (labels,) = read_cifar_binary(path, label_bytes=1)
>>> x.shape, labels.tolist()
((2, 3, 32, 32), [7, 1])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes
from ..errors import DataFormatError

__all__ = ["CIFAR10_CLASSES", "IMAGE_BYTES", "read_cifar_binary", "write_cifar_binary"]

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def read_cifar_binary(
    path: str | os.PathLike[str],
    label_bytes: int,
    label_limits: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read one CIFAR binary file: images uint8 (N, 3, 32, 32) and ``label_bytes`` label arrays.

    ``label_limits[k]`` (the number of classes) makes label ``k`` range-checked. Raises
    `DataFormatError` if the file length is not a whole number of records.
    """
    path = Path(path)
    record = label_bytes + IMAGE_BYTES
    size = path.stat().st_size
    if size == 0 or size % record:
        whole, extra = divmod(size, record)
        labels_desc = "1 label byte" if label_bytes == 1 else f"{label_bytes} label bytes"
        raise DataFormatError(
            f"{path}: size {size} bytes is not a whole number of {record}-byte CIFAR records "
            f"({labels_desc} + {IMAGE_BYTES} pixel bytes): {whole} records and {extra} bytes left over; "
            "the file is truncated or not the CIFAR binary version"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    images = raw[:, label_bytes:].reshape((-1, *IMAGE_SHAPE))
    labels = [raw[:, k].astype(np.int64) for k in range(label_bytes)]
    for k, limit in enumerate(label_limits or ()):
        if labels[k].size and labels[k].max() >= limit:
            row = int(np.argmax(labels[k] >= limit))
            raise DataFormatError(
                f"{path}: record {row} has label byte {k} = {int(labels[k][row])}, expected 0..{limit - 1}; "
                "is this the right CIFAR version (10 vs 100)?"
            )
    return np.ascontiguousarray(images), labels


def write_cifar_binary(
    path: str | os.PathLike[str], images: np.ndarray, labels: Sequence[np.ndarray]
) -> None:
    """Write records ``labels[0][i], labels[1][i], ..., pixels of images[i]`` atomically (for fixtures)."""
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"CIFAR images must be uint8 of shape (N, 3, 32, 32), got {imgs.dtype} {imgs.shape}")
    columns = [np.asarray(lab).reshape(-1, 1) for lab in labels]
    for col in columns:
        if len(col) != len(imgs) or col.min(initial=0) < 0 or col.max(initial=0) > 255:
            raise ValueError("each label array needs one value in 0..255 per image")
    records = np.concatenate([*(c.astype(np.uint8) for c in columns), imgs.reshape(len(imgs), -1)], axis=1)
    atomic_write_bytes(path, records.tobytes())
