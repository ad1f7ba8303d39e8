"""The real data bundled in the package: UCI digits and the Shakespeare corpus."""

from __future__ import annotations

import hashlib
import io
import zipfile
from importlib import resources

import numpy as np

from asg.data import (
    SHAKESPEARE_PLAYS,
    DataLoader,
    InMemoryDataset,
    load_digits,
    load_shakespeare,
    train_test_split,
)

# The first image of the UCI digits test set (a zero), as in sklearn's digits.csv.gz.
FIRST_DIGIT = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]


def test_digits_shape_values_and_known_counts() -> None:
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert images[0].tolist() == FIRST_DIGIT and labels[0] == 0
    assert labels[-5:].tolist() == [9, 0, 8, 9, 8] and int(images.sum(dtype=np.int64)) == 561718


def test_digits_as_float() -> None:
    images, _ = load_digits(as_float=True)
    assert images.dtype == np.float32 and images.max() == 1.0
    np.testing.assert_allclose(images[0], np.array(FIRST_DIGIT) / 16)


def test_digits_file_is_plain_arrays_without_pickle() -> None:
    raw = resources.files("asg.data").joinpath("_bundled", "digits.npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert sorted(archive.namelist()) == ["images.npy", "labels.npy"]
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        assert {k: arrays[k].dtype.name for k in arrays.files} == {"images": "uint8", "labels": "uint8"}


def test_digits_train_end_to_end_through_the_loader() -> None:
    images, labels = load_digits(as_float=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, seed=0, stratify=labels
    )
    # Nearest class mean on the training part classifies the held-out digits well: the data is real.
    sums, counts = np.zeros((10, 64)), np.zeros(10)
    for x, y in DataLoader(
        InMemoryDataset(x_train.reshape(-1, 64), y_train), batch_size=64, shuffle=True, seed=0
    ):
        np.add.at(sums, y, x)
        counts += np.bincount(y, minlength=10)
    means = sums / counts[:, None]
    distances = ((x_test.reshape(-1, 1, 64) - means[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == y_test).mean()
    assert accuracy > 0.85, accuracy


def test_shakespeare_corpus() -> None:
    text = load_shakespeare()
    assert isinstance(text, str) and len(text) == 841_754
    assert hashlib.sha256(text.encode()).hexdigest().startswith("0f1a5b2f22b52556")
    assert text.startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")
    assert "To be, or not to be" in text and "Out, damned spot" in text and "Et tu, Brute" in text
    assert "gutenberg" not in text.lower() and text.isascii() and "\r" not in text
    assert len(SHAKESPEARE_PLAYS) == 6
    assert text.index("HAMLET") < text.index("MACBETH\n\nby") < text.index("JULIUS CAESAR")


def test_bundled_data_stays_small_and_has_its_licence_note() -> None:
    folder = resources.files("asg.data").joinpath("_bundled")
    sizes = {p.name: len(p.read_bytes()) for p in folder.iterdir() if p.is_file()}
    assert sum(sizes.values()) < 1_500_000, sizes
    note = folder.joinpath("SOURCES.md").read_text()
    assert "CC BY 4.0" in note and "Alpaydin" in note and "public domain" in note
