"""Readers (and writers, for test fixtures) of dataset file formats: IDX (MNIST), CIFAR binary, image folders.

>>> from asg.data.formats import read_idx, write_idx, read_cifar_binary, ImageFolder
"""

from __future__ import annotations

from .cifar import CIFAR10_CLASSES, read_cifar_binary, write_cifar_binary
from .idx import read_idx, write_idx
from .imagefolder import IMAGE_EXTENSIONS, ImageFolder

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "read_cifar_binary",
    "read_idx",
    "write_cifar_binary",
    "write_idx",
]
