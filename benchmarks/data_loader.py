"""Throughput of asg.data.DataLoader on an MNIST-sized in-memory set (60,000 x 28 x 28 uint8 + labels).

Each configuration runs a few shuffled epochs at batch 128 with ToFloat(1/255) on the images and reports
images/s (best epoch), next to a plain-numpy reference measured in the same run: gather a shuffled
batch with ``x[perm[i:i+128]]`` and scale it to float32, in a loop.

    python benchmarks/data_loader.py [--epochs 5] [--real-mnist DIR]

``--real-mnist`` uses the real MNIST training set (load_mnist) instead of random pixels.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from asg.data import DataLoader, InMemoryDataset, MapDataset, ToFloat, load_mnist

BATCH = 128


def numpy_reference(x: np.ndarray, y: np.ndarray, epochs: int, with_scaling: bool) -> float:
    rng = np.random.default_rng(0)
    scale = np.float32(1 / 255)
    best = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        perm = rng.permutation(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            images, _labels = x[idx], y[idx]
            if with_scaling:
                images = images.astype(np.float32) * scale
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def loader_throughput(loader: DataLoader, n: int, epochs: int) -> float:
    best = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        seen = 0
        for images, _labels in loader:
            seen += len(images)
        assert seen == n and images.dtype == np.float32
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--real-mnist", default=os.environ.get("ASG_MNIST_DIR"))
    args = parser.parse_args()
    if args.real_mnist:
        x, y = load_mnist(args.real_mnist, "train")
        source = f"real MNIST train ({args.real_mnist})"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(60_000, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=60_000).astype(np.int64)
        source = "random uint8 pixels"
    n = len(x)
    to_float = ToFloat(scale=1 / 255)
    fast = InMemoryDataset(x, y, transform=to_float)
    per_item = MapDataset(InMemoryDataset(x, y), lambda item: (to_float(item[0]), item[1]))

    rows: list[tuple[str, float]] = []
    raw = numpy_reference(x, y, args.epochs, with_scaling=False)
    raw_scaled = numpy_reference(x, y, args.epochs, with_scaling=True)
    rows.append(("numpy x[perm[i:i+128]] (gather only)", raw))
    rows.append(("numpy gather + astype(float32) * 1/255", raw_scaled))
    for workers in (0, 2):
        loader = DataLoader(fast, batch_size=BATCH, shuffle=True, seed=0, num_workers=workers)
        kind = " threads" if workers else ""
        rows.append(
            (
                f"DataLoader InMemoryDataset, num_workers={workers}{kind}",
                loader_throughput(loader, n, args.epochs),
            )
        )
    # Worker processes: the first epoch starts them (spawn) and is not the best one.
    with DataLoader(
        fast, batch_size=BATCH, shuffle=True, seed=0, num_workers=2, worker_type="process"
    ) as loader:
        rows.append(
            (
                "DataLoader InMemoryDataset, num_workers=2 processes",
                loader_throughput(loader, n, args.epochs + 1),
            )
        )
    per_item_loader = DataLoader(per_item, batch_size=BATCH, shuffle=True, seed=0, num_workers=0)
    rows.append(
        (
            "DataLoader per-item MapDataset + collate, num_workers=0",
            loader_throughput(per_item_loader, n, min(args.epochs, 2)),
        )
    )

    print(
        f"asg.data DataLoader benchmark: {n} x 28 x 28 uint8 ({source}), batch {BATCH}, shuffle, "
        f"ToFloat(1/255); best of {args.epochs} epochs; Python {platform.python_version()}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs"
    )
    print()
    width = max(len(name) for name, _ in rows)
    print(f"| {'configuration':<{width}} | {'images/s':>12} | {'vs numpy gather+scale':>21} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 23}|")
    for name, rate in rows:
        print(f"| {name:<{width}} | {rate:>12,.0f} | {rate / raw_scaled:>20.2f}x |")


if __name__ == "__main__":
    main()
