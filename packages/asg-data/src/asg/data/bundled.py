"""Real data shipped inside the package (see _bundled/SOURCES.md for sources and licences).

>>> images, labels = load_digits()
>>> images.shape, images.dtype.name, labels[:5].tolist()
((1797, 8, 8), 'uint8', [0, 1, 2, 3, 4])
>>> load_shakespeare()[:6]
'HAMLET'
"""

from __future__ import annotations

import gzip
import io
from importlib import resources

import numpy as np

__all__ = ["SHAKESPEARE_PLAYS", "load_digits", "load_shakespeare"]

SHAKESPEARE_PLAYS = ("Hamlet", "Macbeth", "King Lear", "Othello", "Romeo and Juliet", "Julius Caesar")


def _bundled(name: str) -> bytes:
    return resources.files(__package__).joinpath("_bundled", name).read_bytes()


def load_digits(as_float: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: 1,797 images of 8x8 pixels, classes 0..9 (CC BY 4.0, Alpaydin & Kaynak).

    Returns images (1797, 8, 8), uint8 with values 0..16 (or float32 scaled to [0, 1] with ``as_float``),
    and labels int64 (1797,).
    """

    with np.load(io.BytesIO(_bundled("digits.npz")), allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"].astype(np.int64)
    if as_float:
        return images.astype(np.float32) / np.float32(16.0), labels
    return images, labels


def load_shakespeare() -> str:
    """Six tragedies by Shakespeare (public domain), about 840,000 characters of plain ASCII text.

    The plays, in order, are `SHAKESPEARE_PLAYS`, separated by blank lines.
    """
    return gzip.decompress(_bundled("shakespeare.txt.gz")).decode("ascii")
